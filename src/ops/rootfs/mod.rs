//! `kci-build rootfs [CONFIG…]`: the Friday job. Builds KernelCI's Debian rootfs files for
//! every (config, arch) whose key is not in the store yet, each in a detached, labelled
//! builder container; turns the builder's raw trees into the five canonical files; uploads
//! them to storage under a key-derived version directory; writes `lockfiles/rootfs.lock`.
//!
//! [`run`] is a pipeline of stages, each a module returning data: [`select`] → [`prepare`]
//! (scan, the builder image, keys) → [`classify`] (made already?) → [`jobs`] (build, collect,
//! pack) → [`publish`] (upload) → lock ([`crate::core::rootfs_merge`], a pure function,
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};

use super::build::{self, BuildOptions, LockMode};
use super::Workspace;
use crate::core::lockdiff::{self, LockKind};
use crate::core::names::Digest;
use crate::core::rootfs_lock::RootfsLockfile;
use crate::core::rootfs_merge::{self, ArchRun, ConfigRun};
use crate::docker::DockerEngine;
use crate::fsutil;
use crate::lockedit::{LockfileEdit, Written};
use crate::printer::Printer;
use crate::rootfs::pack;
use crate::rootfs::{artifact, plan, RootfsRecipe};
use crate::storage::Storage;

use classify::Made;
use prepare::Prepared;
pub use report::{table, RootfsAction, RootfsFailed, RootfsOutcome, RootfsReport};
pub use select::load_recipes;

/// The image target every rootfs is built in.
pub const BUILDER_TARGET: &str = "rootfs-builder";

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
    pub jobs: usize,
    pub locked: bool,
    pub storage: Option<StorageArgs>,
    pub verbose: bool,
    /// Download rules and the xz memory budget of the packing step.
    pub packing: pack::PackSettings,
}

/// `images_lock` is the images lockfile's lock, taken before `ws` was loaded: it is released
/// once the builder target is built, so a `kci-build build` does not wait for every rootfs.
pub async fn run(
    ws: &Workspace,
    opts: &RootfsOptions,
    images_lock: Option<fsutil::LockfileLock>,
    printer: &Printer,
) -> anyhow::Result<RootfsReport> {
    let recipes = load_recipes(&opts.recipes)?;
    let selected = select::select(&recipes, &opts.recipes, &opts.configs, &opts.arches)?;
    // Held until the new lockfile is written: a concurrent run waits instead of racing.
    let _lockfile_lock = super::lock_lockfile(&ws.paths.store, &opts.lockfile, printer)?;
    let edit = LockfileEdit::read(&opts.lockfile)?;
    let old_lock = edit.rootfs()?;
    let scanned = prepare::scan(ws, &opts.recipes, selected)?;
    build_builder(ws, opts, printer).await?;
    drop(images_lock);
    let builder_image = prepare::stored_builder(ws)?;
    let prepared = prepare::plan(scanned, &builder_image.manifest, &opts.arches)?;

    std::fs::create_dir_all(store_dir(ws))
        .with_context(|| format!("creating {}", store_dir(ws).display()))?;
    let storage = open_storage(opts.storage.as_ref())?;
    let mut c = classify::classify(&store_dir(ws), &prepared, storage.as_ref(), printer).await?;
    if !c.todo.is_empty() {
        let engine = DockerEngine::connect().await?;
        build::ensure_loaded(&engine, &ws.store, &builder_image).await?;
        let ctx = jobs::JobCtx {
            engine,
            image_id: builder_image.config.as_str().to_owned(),
            store_root: store_dir(ws),
            logs: ws.store.root().join("logs"),
            printer: printer.clone(),
            packing: Arc::new(opts.packing.resolve()),
        };
        jobs::run_all(ctx, c.todo, opts.jobs, &mut c.outcomes, &mut c.made).await?;
    }
    c.outcomes
        .sort_by(|a, b| (&a.config, &a.arch).cmp(&(&b.config, &b.arch)));

    let published = match &storage {
        Some(s) => publish::publish(&store_dir(ws), &prepared, &c.made, s, printer).await?,
        None => publish::Published::default(),
    };
    let new_lock = lock(&old_lock, &recipes, &prepared, &c.made, &published.urls);
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
        lockfile_changed: written == Written::Written,
    })
}

/// The builder image, built (or found) like any other target.
async fn build_builder(
    ws: &Workspace,
    opts: &RootfsOptions,
    printer: &Printer,
) -> anyhow::Result<()> {
    let build_opts = BuildOptions {
        targets: vec![prepare::builder_name()],
        jobs: 1,
        lock: if opts.locked {
            LockMode::Locked
        } else {
            LockMode::Update
        },
        verbose: opts.verbose,
        registry: None,
        push: false,
    };
    build::run(ws, &build_opts, printer)
        .await?
        .into_result()
        .context("building the rootfs builder image")?;
    Ok(())
}

fn open_storage(args: Option<&StorageArgs>) -> anyhow::Result<Option<Storage>> {
    Ok(match args {
        Some(s) => Some(Storage::open(
            &s.dest,
            s.public_url.as_deref(),
            s.prefix.as_deref(),
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

/// What `kci-build why CONFIG/ARCH` reports: the key of one (config, arch) as it would be
/// built now, whether the store has it, and the key facts that differ from the lockfile.
pub struct RootfsWhy {
    pub label: String,
    /// `None` while the builder image is not built: its digest enters the key.
    pub key: Option<Digest>,
    pub stored: Option<PathBuf>,
    /// `None`: the lockfile has no entry for it.
    pub changes: Option<Vec<crate::core::key::FactChange>>,
}

/// The placeholder for the builder image's digest before it is built.
const BUILDER_NOT_BUILT: &str = "(rootfs-builder not built yet)";

/// Computes [`RootfsWhy`] for `config/arch`; builds and downloads nothing.
pub fn why(
    ws: &Workspace,
    recipes_dir: &Path,
    lockfile: &Path,
    config: &str,
    arch: &str,
) -> anyhow::Result<RootfsWhy> {
    let recipes = load_recipes(recipes_dir)?;
    let r = select::find_recipe(&recipes, recipes_dir, config)?;
    if !r.arch_list.iter().any(|a| a == arch) {
        bail!(
            "{}: arch-list has no `{arch}` (it has: {})",
            recipes_dir.join(format!("{config}.toml")).display(),
            r.arch_list.join(", ")
        );
    }
    let (mirror, inputs) = prepare::mirror_and_inputs(ws, recipes_dir, r)?;
    let builder_name = prepare::builder_name();
    let planned = ws.plan_for(std::slice::from_ref(&builder_name))?;
    let builder = planned
        .iter()
        .find(|p| p.recipe.name == builder_name)
        .and_then(|p| p.stored.clone());
    // Facts with a placeholder while the builder is not built, so the others still compare.
    let placeholder = Digest::of(BUILDER_NOT_BUILT.as_bytes());
    let mut facts = plan::facts(
        r,
        arch,
        builder.as_ref().unwrap_or(&placeholder),
        &mirror,
        &inputs.key_files(),
        artifact::ROOTFS_OUTPUT_FORMAT,
    );
    let key = builder.as_ref().map(|_| plan::key(&facts));
    if builder.is_none() {
        facts.insert(plan::BUILDER_FACT.into(), BUILDER_NOT_BUILT.into());
    }
    let stored = key
        .as_ref()
        .map(|k| store_dir(ws).join(k.hex()))
        .filter(|d| classify::read_manifest(&d.join(MANIFEST)).is_some());
    let lock = LockfileEdit::read(lockfile)?.rootfs()?;
    let changes = lock
        .configs
        .get(config)
        .and_then(|c| c.arch.get(arch))
        .map(|l| crate::core::key::diff_facts(&l.input, &facts));
    Ok(RootfsWhy {
        label: format!("{config}/{arch}"),
        key,
        stored,
        changes,
    })
}

fn store_dir(ws: &Workspace) -> PathBuf {
    ws.store.root().join("rootfs")
}
