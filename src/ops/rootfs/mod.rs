//! `kci-build rootfs [CONFIG…]`: the Friday job. Builds KernelCI's Debian rootfs files for
//! every (config, arch) whose key is not in the store yet, each in a detached, labelled
//! builder container; turns the builder's raw trees into the five canonical files; uploads
//! them to storage under a key-derived version directory; writes `lockfiles/rootfs.lock`.
//!
//! [`run`] is a pipeline of stages, each a module returning data: `select` → `prepare`
//! (scan, the builder image, keys) → `classify` (made already?) → `jobs` (build, collect,
//! pack) → `publish` (upload) → lock ([`crate::core::rootfs_merge`], a pure function,
//! written through [`LockfileEdit`]); [`report`] is what it returns.
//!
//! A rerun (or `--resume`) re-attaches to containers still running, collects finished ones
//! and starts only what is missing. Files enter the store by renaming a complete directory,
//! so a killed run never leaves a half-written artifact under a key.

mod classify;
mod jobs;
mod prepare;
mod publish;
pub mod report;
mod select;
mod swarm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use super::{Context, Report, Workspace};
use crate::aptpins;
use crate::aptproxy;
use crate::core::apt::SuiteSource;
use crate::core::lockdiff::{self, LockKind};
use crate::core::lockfile::pins_of;
use crate::core::names::Digest;
use crate::core::rootfs_lock::RootfsLockfile;
use crate::core::rootfs_merge::{self, ArchRun, ConfigRun};
use crate::core::rootfs_recipe::KERNELCI_CORE;
use crate::core::urlsource;
use crate::engine::DockerEngine;
use crate::gitpins;
use crate::gitstore::GitStore;
use crate::imagebuild::{self as build, BuildOptions, LockMode};
use crate::lockedit::{LockfileEdit, Written};
use crate::printer::Printer;
use crate::rootfs::pack;
use crate::rootfs::RootfsRecipe;
use crate::storage::Storage;
use crate::urlpins::{self, Downloader};

pub use crate::rootfs::recipes::load_recipes;
use classify::Made;
use prepare::Prepared;
pub use report::{table, RootfsAction, RootfsFailed, RootfsOutcome, RootfsReport};

pub use crate::rootfs::BUILDER_TARGET;

/// The files of one rootfs, in the order KernelCI lists them.
pub const ARTIFACTS: &[&str] = &[
    "rootfs.cpio.gz",
    "full.rootfs.tar.xz",
    "full.rootfs.cpio.gz",
    "initrd.cpio.gz",
    "rootfs.ext4.xz",
];
pub use crate::core::rootfs_lock::{ArtifactInfo, RootfsManifest};
pub use crate::rootfs::pack::MANIFEST;

#[derive(Debug, Clone)]
pub struct StorageArgs {
    /// A directory, or the storage API's URL.
    pub dest: String,
    pub public_url: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RootfsOptions {
    pub configs: Vec<String>,
    pub arches: Vec<String>,
    pub recipes: PathBuf,
    pub lockfile: PathBuf,
    /// `--kernelci-core PATH`: a development checkout instead of the pinned kernelci-core.
    pub kernelci_core: Option<PathBuf>,
    pub jobs: usize,
    pub locked: bool,
    /// `--resume`: what a rerun does anyway (pick up an earlier run's containers, start only
    /// what is missing), said out loud: a warning when there was nothing to pick up.
    pub resume: bool,
    pub storage: Option<StorageArgs>,
    /// `--registry`: the OCI registry every machine shares results through — the builder
    /// image and each (config, arch) by key, looked up before building, pushed when missing.
    pub registry: Option<String>,
    /// `--swarm`: build as Swarm jobs of the daemon's swarm (needs `registry`).
    pub swarm: bool,
    /// Download rules and the xz memory budget of the packing step.
    pub packing: pack::PackSettings,
}

impl Report for RootfsReport {
    fn show(&self, printer: &Printer) {
        printer.table(&table(self));
    }

    fn verdict(&self) -> anyhow::Result<()> {
        Ok(self.into_result()?)
    }
}

/// The images lockfile's lock, when the runner took it, is released once the builder target
/// is built, so a `kci-build build` does not wait for every rootfs.
pub async fn run(ctx: &Context, opts: &RootfsOptions) -> anyhow::Result<RootfsReport> {
    let mut ws = ctx.workspace()?;
    let printer = &ctx.printer;
    let recipes = load_recipes(&opts.recipes)?;
    let selected = select::select(&recipes, &opts.recipes, &opts.configs, &opts.arches)?;
    let edit = LockfileEdit::read(&opts.lockfile)?;
    let old_lock = edit.rootfs()?;
    let git_store = GitStore::new(ws.store.root());
    let SourcePins {
        git: git_pins,
        urls: url_pins,
    } = source_pins(
        &ws, &git_store, opts, &old_lock, &recipes, &selected, printer,
    )
    .await?;
    let core = match &opts.kernelci_core {
        Some(checkout) => {
            printer.warn(format!(
                "development build: kernelci-core from {}, not the pinned commit; \
                 nothing is uploaded and {} is left as it is",
                checkout.display(),
                opts.lockfile.display()
            ));
            prepare::CoreTree::Local(checkout)
        }
        None => prepare::CoreTree::Pinned(&git_store, &git_pins),
    };
    let scanned = prepare::scan(&ws, &opts.recipes, selected, core)?;
    let registry = opts
        .registry
        .as_deref()
        .map(|r| crate::registry::Registry::new(r, &ws.env.registry))
        .transpose()?;
    let builder_image = build_builder(ctx, &mut ws, opts.locked, opts.registry.as_deref()).await?;
    ctx.release_images_lock();
    let ws = &ws;
    let suites: Vec<SuiteSource> = scanned.iter().map(|s| s.suite.clone()).collect();
    let pins = aptpins::resolve(
        ws,
        &old_lock.apt_index,
        &suites,
        opts.locked,
        &opts.lockfile,
        printer,
    )
    .await?;
    let authority = crate::mitm::Authority::of_store(ws.store.root())?;
    let prepared = prepare::plan(
        scanned,
        &builder_image.manifest,
        &opts.arches,
        &prepare::RunPins {
            apt: &pins_of(&pins),
            git_store: &git_store,
            git: &git_pins,
            urls: &url_pins,
            ca_pem: &authority.cert_pem(),
        },
    )?;

    std::fs::create_dir_all(store_dir(ws))
        .with_context(|| format!("creating {}", store_dir(ws).display()))?;
    let storage = open_storage(opts.storage.as_ref(), ws.env.storage_token.as_ref())?;
    let prefix = ws.settings.prefix.as_str();
    let shared = registry.as_ref().map(|r| (r, prefix));
    let mut c =
        classify::classify(&store_dir(ws), &prepared, shared, storage.as_ref(), printer).await?;
    if !c.todo.is_empty() {
        let pins = aptproxy::ProxyPins {
            apt: pins_of(&pins),
            downloads: urlsource::served(&url_pins),
        };
        match (&registry, opts.swarm) {
            (Some(reg), true) => {
                build_on_swarm(ws, opts, reg, &builder_image, &pins, &mut c, printer).await?
            }
            _ => build_all(ws, opts, &builder_image, &pins, &mut c, printer).await?,
        }
    }
    if opts.resume && !c.outcomes.iter().any(|o| o.action == RootfsAction::Resumed) {
        printer.warn("--resume: no container of an earlier run was left to pick up");
    }
    c.outcomes
        .sort_by(|a, b| (&a.config, &a.arch).cmp(&(&b.config, &b.arch)));
    let pushed = match &registry {
        Some(reg) => share(reg, prefix, &store_dir(ws), &prepared, &c.made, printer).await?,
        None => 0,
    };

    let published = match &storage {
        Some(s) => publish::publish(&store_dir(ws), &prepared, &c.made, s, printer).await?,
        None => publish::Published::default(),
    };
    // A development build (another kernelci-core) locks nothing.
    let new_lock = match opts.kernelci_core {
        Some(_) => old_lock.clone(),
        None => RootfsLockfile {
            apt_index: pins,
            git_source: git_pins,
            url_source: url_pins,
            ..lock(&old_lock, &recipes, &prepared, &c.made, &published.urls)
        },
    };
    let written = edit.write(&new_lock.to_text(), opts.locked, "", || {
        let entries = |l: &RootfsLockfile| lockdiff::rootfs_entries(l);
        lockdiff::diff_kind(LockKind::Rootfs, &entries(&old_lock), &entries(&new_lock))
            .change_lines()
    })?;
    if written == Written::Written {
        printer.status("Locked", opts.lockfile.display());
    }
    Ok(RootfsReport {
        builds: c.outcomes,
        versions: prepared
            .iter()
            .map(|p| (p.recipe.name.clone(), p.version.clone()))
            .collect(),
        uploaded: published.uploaded,
        upload_skipped: published.skipped,
        pushed,
        lockfile_changed: written == Written::Written,
    })
}

/// Runs every build `c` has to do, each through the leased proxy (its apt and downloads go
/// through the cache: host network, a loopback proxy in a process of its own that outlives
/// this one as long as a container needs it).
async fn build_all(
    ws: &Workspace,
    opts: &RootfsOptions,
    builder_image: &crate::store::StoredImage,
    pins: &aptproxy::ProxyPins,
    c: &mut classify::Classified,
    printer: &Printer,
) -> anyhow::Result<()> {
    let proxy = aptproxy::lease(&ws.store, pins, printer).await?;
    for t in &mut c.todo {
        t.env
            .push(format!("http_proxy={}", proxy.url_for(t.job.key.hex())));
    }
    let engine = DockerEngine::connect(&ws.env.engine).await?;
    build::ensure_loaded(&engine, &ws.store, builder_image).await?;
    let ctx = jobs::JobCtx {
        engine,
        image_id: builder_image.config.as_str().to_owned(),
        store_root: store_dir(ws),
        recipes: opts.recipes.clone(),
        logs: ws.store.logs_dir(),
        apt_served: ws.store.apt_served_dir(),
        printer: printer.clone(),
        packing: Arc::new(opts.packing.resolve()),
        store: ws.store.clone(),
    };
    let todo = std::mem::take(&mut c.todo);
    jobs::run_all(ctx, todo, opts.jobs, &mut c.outcomes, &mut c.made).await
}

/// [`build_all`] as Swarm jobs: the task image (builder + this kci-build) pushed by digest,
/// the registry credentials as a Swarm secret, then every job at once.
async fn build_on_swarm(
    ws: &Workspace,
    opts: &RootfsOptions,
    reg: &crate::registry::Registry,
    builder_image: &crate::store::StoredImage,
    pins: &aptproxy::ProxyPins,
    c: &mut classify::Classified,
    printer: &Printer,
) -> anyhow::Result<()> {
    let engine = DockerEngine::connect(&ws.env.engine).await?;
    let swarm = crate::engine::swarm::Swarm::of(&engine).await?;
    let proxy = aptproxy::lease(&ws.store, pins, printer).await?;
    for t in &mut c.todo {
        // The build's http_proxy, which the task gives its script only (its own requests to
        // the registry must not go through the apt proxy).
        t.env.push(format!(
            "{}={}",
            crate::ops::rootfs_task::BUILD_PROXY_VAR,
            proxy.url_for(t.job.key.hex())
        ));
    }
    let prefix = ws.settings.prefix.as_str();
    let binary = std::env::current_exe().context("finding the kci-build binary")?;
    let image = crate::rootfs::task::push(
        reg,
        &ws.store,
        builder_image,
        &crate::publish::repository(prefix, &builder_image.target),
        &swarm::task_repo(prefix),
        &binary,
    )
    .await
    .with_context(|| format!("pushing the swarm task image to {}", reg.host()))?;
    printer.status("Pushed", format!("the swarm task image {image}"));
    let creds = crate::registry::auth::credentials_for(reg.host(), &ws.env.registry);
    let secret = match &creds {
        Some(c) => Some(
            swarm
                .secret(
                    format!("{}:{}", c.username, c.password.expose()).as_bytes(),
                    std::collections::HashMap::from([(
                        crate::rootfs::builder::LABEL.to_owned(),
                        "registry".to_owned(),
                    )]),
                )
                .await?,
        ),
        None => None,
    };
    let ctx = swarm::SwarmCtx {
        constraint: swarm::task_constraint(&swarm.node_arches().await?)?,
        swarm,
        reg: reg.clone(),
        registry_arg: opts.registry.clone().unwrap_or_default(),
        prefix: prefix.to_owned(),
        image,
        secret,
        auth: creds.map(|c| bollard::auth::DockerCredentials {
            username: Some(c.username),
            password: Some(c.password.expose().to_owned()),
            serveraddress: Some(reg.host().to_owned()),
            ..Default::default()
        }),
        xz_memory: opts.packing.xz_memory,
        store_root: store_dir(ws),
        recipes: opts.recipes.clone(),
        logs: ws.store.logs_dir(),
        apt_served: ws.store.apt_served_dir(),
        printer: printer.clone(),
        store: ws.store.clone(),
    };
    let todo = std::mem::take(&mut c.todo);
    swarm::run_all(ctx, todo, &mut c.outcomes, &mut c.made).await
}

/// Pushes every made (config, arch) whose files are in the store and which the registry
/// lacks; returns how many it pushed.
async fn share(
    reg: &crate::registry::Registry,
    prefix: &str,
    store_dir: &std::path::Path,
    prepared: &[Prepared],
    made: &BTreeMap<(String, String), Made>,
    printer: &Printer,
) -> anyhow::Result<usize> {
    let mut pushed = 0;
    for job in prepared.iter().flat_map(|p| p.selected_jobs()) {
        let dir = store_dir.join(job.key.hex());
        if !made.contains_key(&(job.config.clone(), job.arch.clone()))
            || !dir.join(MANIFEST).is_file()
        {
            continue;
        }
        if crate::rootfs::oci::push(reg, prefix, job, &dir)
            .await
            .with_context(|| format!("pushing {} to {}", job.label(), reg.host()))?
        {
            let (repo, tag) = crate::rootfs::oci::reference(prefix, job);
            printer.status(
                "Pushed",
                format!("{} → {}/{repo}:{tag}", job.label(), reg.host()),
            );
            pushed += 1;
        }
    }
    Ok(pushed)
}

/// The pins of the git sources and downloads a run's recipes name.
struct SourcePins {
    git: BTreeMap<String, crate::core::gitsource::LockedSource>,
    urls: BTreeMap<String, crate::core::urlsource::LockedUrl>,
}

/// The lockfile's pins of every source `recipes` name, plus new pins of those `selected`
/// lacks (refused under `--locked`), each in the store, verified. A development build's
/// kernelci-core is not pinned.
async fn source_pins(
    ws: &Workspace,
    git_store: &GitStore,
    opts: &RootfsOptions,
    old_lock: &RootfsLockfile,
    recipes: &[RootfsRecipe],
    selected: &[RootfsRecipe],
    printer: &Printer,
) -> anyhow::Result<SourcePins> {
    let specs = |recipes: &[RootfsRecipe]| -> anyhow::Result<_> {
        let mut specs = gitpins::specs_of(&opts.recipes, recipes)?;
        if opts.kernelci_core.is_some() {
            specs.remove(KERNELCI_CORE);
        }
        Ok(specs)
    };
    let git = gitpins::resolve(
        git_store,
        &old_lock.git_source,
        &specs(recipes)?,
        &specs(selected)?,
        opts.locked,
        &opts.lockfile,
        printer,
    )?;
    let url_specs = |recipes: &[RootfsRecipe]| urlpins::specs_of(&opts.recipes, recipes);
    let downloader = Downloader {
        store: &ws.store,
        rules: &ws.env.download_from,
    };
    let urls = downloader
        .resolve(
            &old_lock.url_source,
            &url_specs(recipes)?,
            &url_specs(selected)?,
            opts.locked,
            &opts.lockfile,
            printer,
        )
        .await?;
    Ok(SourcePins { git, urls })
}

/// The builder image, built (or found) like any other target, as stored.
/// With a registry it is looked up there by key first and pushed when missing, like
/// `build --push --registry`.
async fn build_builder(
    ctx: &Context,
    ws: &mut Workspace,
    locked: bool,
    registry: Option<&str>,
) -> anyhow::Result<crate::store::StoredImage> {
    let build_opts = BuildOptions {
        targets: vec![prepare::builder_name()],
        jobs: 1,
        lock: if locked {
            LockMode::Locked
        } else {
            LockMode::Update
        },
        verbose: ctx.verbose,
        registry: registry.map(str::to_owned),
        engines: vec!["default".into()],
        push: registry.is_some(),
    };
    let report = build::build(ws, &build_opts, &ctx.printer).await?;
    report
        .into_result()
        .context("building the rootfs builder image")?;
    let name = prepare::builder_name();
    let key = report
        .targets
        .iter()
        .find(|o| o.name == name.as_str())
        .and_then(|o| o.key.parse::<Digest>().ok())
        .ok_or_else(|| anyhow::anyhow!("the build of {name} reported no key"))?;
    ws.store
        .lookup(&key)
        .ok_or_else(|| anyhow::anyhow!("{name} is not in the store after its build"))
}

fn open_storage(
    args: Option<&StorageArgs>,
    token: Option<&crate::settings::Secret>,
) -> anyhow::Result<Option<Storage>> {
    Ok(match args {
        Some(s) => Some(Storage::open_with_token(
            &s.dest,
            s.public_url.as_deref(),
            s.prefix.as_deref(),
            token.map(|t| t.expose().to_owned()),
        )?),
        None => None,
    })
}

/// Stage "lock": the new lockfile, from what this run made and where it is served.
fn lock(
    old: &RootfsLockfile,
    recipes: &[RootfsRecipe],
    prepared: &[Prepared],
    made: &BTreeMap<(String, String), Made>,
    urls: &publish::Urls,
) -> RootfsLockfile {
    let known: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    let runs: Vec<ConfigRun<'_>> = prepared
        .iter()
        .map(|p| ConfigRun {
            name: &p.recipe.name,
            version: &p.version,
            arches: p
                .jobs
                .iter()
                .map(|j| {
                    let id = (j.config.clone(), j.arch.clone());
                    ArchRun {
                        arch: &j.arch,
                        key: &j.key,
                        facts: &j.facts,
                        made: made.get(&id).map(|m| &m.manifest),
                        urls: urls.get(&id).cloned().unwrap_or_default(),
                    }
                })
                .collect(),
        })
        .collect();
    rootfs_merge::merge(old, &known, &runs)
}

fn store_dir(ws: &Workspace) -> PathBuf {
    ws.store.rootfs_dir()
}
