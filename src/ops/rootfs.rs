//! `kci-build rootfs [CONFIG…]`: the Friday job. Builds KernelCI's Debian rootfs files for
//! every (config, arch) whose key is not in the store yet, each in a detached, labelled
//! builder container; turns the builder's raw trees into the five canonical files; uploads
//! them to storage under a key-derived version directory; writes `lockfiles/rootfs.lock`.
//!
//! A rerun (or `--resume`) re-attaches to containers still running, collects finished ones
//! and starts only what is missing. Files enter the store by renaming a complete directory,
//! so a killed run never leaves a half-written artifact under a key.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::build::{self, BuildOptions, LockMode};
use super::Workspace;
use crate::core::names::{Digest, TargetName};
use crate::core::rootfs_lock::{
    config_version, LockedArtifact, LockedConfig, LockedRootfs, RootfsLockfile,
};
use crate::docker::DockerEngine;
use crate::fsutil;
use crate::printer::Printer;
use crate::rootfs::pack::{self, Packing};
use crate::rootfs::plan::{self, RootfsJob};
use crate::rootfs::{artifact, binfmt, builder, inputs, RootfsRecipe};
use crate::storage::{Storage, UploadFile};

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

/// What a (config, arch) ended as.
#[derive(Debug, Serialize)]
pub struct RootfsOutcome {
    pub config: String,
    pub arch: String,
    pub key: String,
    /// `built`, `cached` (in the store), `on-storage`, `resumed` or `failed`.
    pub action: &'static str,
    pub seconds: f64,
    pub artifacts: BTreeMap<String, ArtifactInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last lines of the build log of a failed build.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct RootfsReport {
    pub builds: Vec<RootfsOutcome>,
    /// Config → version directory.
    pub versions: BTreeMap<String, String>,
    pub uploaded: usize,
    pub upload_skipped: usize,
    pub lockfile_changed: bool,
}

/// Some (config, arch) failed; the others were still built, uploaded and locked.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} rootfs builds failed: {}", failed.len(), failed.join(", "))]
pub struct RootfsFailed {
    pub failed: Vec<String>,
    pub total: usize,
}

/// Reads every `recipes/*.toml`; the file stem must be the recipe's name.
pub fn load_recipes(dir: &Path) -> anyhow::Result<Vec<RootfsRecipe>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading recipes from {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "config.toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let r: RootfsRecipe = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.to_string().trim_end()))?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if r.name != stem {
            bail!(
                "{}: name: `{}` must match the file name `{stem}`",
                f.display(),
                r.name
            );
        }
        if r.xz_preset() > 9 {
            bail!(
                "{}: xz-preset: {} is not an xz level (0–9)",
                f.display(),
                r.xz_preset()
            );
        }
        if !crate::core::rootfs_lock::valid_config_name(&r.name) {
            bail!(
                "{}: name: `{}` is not a plain config name",
                f.display(),
                r.name
            );
        }
        for a in &r.arch_list {
            if !crate::rootfs::DEBIAN_ARCHES.contains(&a.as_str()) {
                bail!(
                    "{}: arch-list: `{a}` is not a Debian architecture",
                    f.display()
                );
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// The recipe named `config`, or an error listing the known ones.
fn find_recipe<'r>(
    recipes: &'r [RootfsRecipe],
    recipes_dir: &Path,
    config: &str,
) -> anyhow::Result<&'r RootfsRecipe> {
    recipes.iter().find(|r| r.name == config).with_context(|| {
        format!(
            "no rootfs recipe `{config}` in {} (known: {})",
            recipes_dir.display(),
            recipes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The rootfs lockfile's text (to write only when it changes) and its parsed model; an
/// empty one when the file does not exist.
fn read_lockfile(path: &Path) -> anyhow::Result<(Option<String>, RootfsLockfile)> {
    let text =
        fsutil::read_optional(path).with_context(|| format!("reading {}", path.display()))?;
    let lock = match &text {
        Some(t) => RootfsLockfile::parse(path, t)?,
        None => RootfsLockfile::default(),
    };
    Ok((text, lock))
}

/// A recipe's Debian mirror (`auto`: the machine's) and its scanned input files: what its
/// keys need besides the builder image.
fn mirror_and_inputs(
    ws: &Workspace,
    recipes_dir: &Path,
    r: &RootfsRecipe,
) -> anyhow::Result<(String, inputs::RecipeInputs)> {
    let mirror = if r.mirror == "auto" {
        ws.mirror.clone().with_context(|| {
            format!(
                "{}: mirror = \"auto\" but no Debian mirror is configured: set KCI_DEBIAN_MIRROR",
                recipes_dir.join(format!("{}.toml", r.name)).display()
            )
        })?
    } else {
        r.mirror.clone()
    };
    Ok((mirror, inputs::scan(recipes_dir, r)?))
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
    let r = find_recipe(&recipes, recipes_dir, config)?;
    if !r.arch_list.iter().any(|a| a == arch) {
        bail!(
            "{}: arch-list has no `{arch}` (it has: {})",
            recipes_dir.join(format!("{config}.toml")).display(),
            r.arch_list.join(", ")
        );
    }
    let (mirror, inputs) = mirror_and_inputs(ws, recipes_dir, r)?;
    let builder_name: TargetName = BUILDER_TARGET.parse().expect("valid target name");
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
        .map(|k| key_dir(ws, k))
        .filter(|d| read_manifest(&d.join(MANIFEST)).is_some());
    let (_, lock) = read_lockfile(lockfile)?;
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

fn key_dir(ws: &Workspace, key: &Digest) -> PathBuf {
    store_dir(ws).join(key.hex())
}

fn read_manifest(path: &Path) -> Option<RootfsManifest> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

struct Prepared {
    recipe: RootfsRecipe,
    /// The version directory, `<config>/<version>`.
    dir: String,
    /// Every arch of the recipe (the version directory depends on all of them).
    jobs: Vec<RootfsJob>,
    selected: Vec<String>,
    env: BTreeMap<String, Vec<String>>,
    tar: Arc<Vec<u8>>,
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
    let mut selected: Vec<RootfsRecipe> = if opts.configs.is_empty() {
        recipes.clone()
    } else {
        let mut v = Vec::new();
        for c in &opts.configs {
            v.push(find_recipe(&recipes, &opts.recipes, c)?.clone());
        }
        v
    };
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    for a in &opts.arches {
        if !selected.iter().any(|r| r.arch_list.contains(a)) {
            bail!("--arch {a}: no selected config builds for {a}");
        }
    }
    // Held until the new lockfile is written: a concurrent run waits instead of racing.
    let _lockfile_lock = super::lock_lockfile(&ws.paths.store, &opts.lockfile, printer)?;
    // Read once: parsed for the merge, compared as text to write only when it changes.
    let (old_text, old_lock) = read_lockfile(&opts.lockfile)?;

    // Every selected recipe's mirror and input files, checked before anything is built: a
    // bad recipe fails at once, not after the builder image.
    let mut scanned = Vec::new();
    for r in selected {
        let (mirror, inputs) = mirror_and_inputs(ws, &opts.recipes, &r)?;
        scanned.push((r, mirror, inputs));
    }

    // The builder image, built (or found) like any other target.
    let builder_name: TargetName = BUILDER_TARGET.parse().expect("valid target name");
    let build_opts = BuildOptions {
        targets: vec![builder_name.clone()],
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
    drop(images_lock);
    let planned = ws.plan_for(std::slice::from_ref(&builder_name))?;
    let builder_plan = planned
        .iter()
        .find(|p| p.recipe.name == builder_name)
        .expect("the builder is in its own plan");
    let builder_image = ws.stored(builder_plan)?;

    let mut prepared = Vec::new();
    for (r, mirror, inputs) in scanned {
        let files = inputs.key_files();
        let mut jobs = Vec::new();
        let mut env = BTreeMap::new();
        for arch in &r.arch_list {
            let facts = plan::facts(
                &r,
                arch,
                &builder_image.manifest,
                &mirror,
                &files,
                artifact::ROOTFS_OUTPUT_FORMAT,
            );
            let key = plan::key(&facts);
            env.insert(arch.clone(), plan::environment(&r, arch, &mirror, &key));
            jobs.push(RootfsJob {
                config: r.name.clone(),
                arch: arch.clone(),
                key,
                facts,
                source_date_epoch: r.source_date_epoch,
                xz_preset: r.xz_preset(),
            });
        }
        let sel: Vec<String> = r
            .arch_list
            .iter()
            .filter(|a| opts.arches.is_empty() || opts.arches.contains(a))
            .cloned()
            .collect();
        let tar = Arc::new(inputs::pack(&inputs, r.source_date_epoch)?);
        let keys: BTreeMap<String, Digest> = jobs
            .iter()
            .map(|j| (j.arch.clone(), j.key.clone()))
            .collect();
        let dir = format!("{}/{}", r.name, config_version(r.source_date_epoch, &keys));
        prepared.push(Prepared {
            dir,
            recipe: r,
            jobs,
            selected: sel,
            env,
            tar,
        });
    }

    std::fs::create_dir_all(store_dir(ws))
        .with_context(|| format!("creating {}", store_dir(ws).display()))?;
    let storage = match &opts.storage {
        Some(s) => Some(Arc::new(Storage::open(
            &s.dest,
            s.public_url.as_deref(),
            s.prefix.as_deref(),
        )?)),
        None => None,
    };

    // What is missing, and what is there.
    let mut todo: Vec<(RootfsJob, Vec<String>, Arc<Vec<u8>>)> = Vec::new();
    let mut outcomes: Vec<RootfsOutcome> = Vec::new();
    let mut manifests: BTreeMap<(String, String), RootfsManifest> = BTreeMap::new();
    // Builds whose files are on the storage already (and maybe nowhere else).
    let mut on_storage: BTreeSet<(String, String)> = BTreeSet::new();
    for p in &prepared {
        for job in p.jobs.iter().filter(|j| p.selected.contains(&j.arch)) {
            if let Some(m) = read_manifest(&key_dir(ws, &job.key).join(MANIFEST)) {
                printer.status("Fresh", format!("{} ({})", job.label(), job.key.short()));
                outcomes.push(outcome(job, "cached", 0.0, &m));
                manifests.insert((job.config.clone(), job.arch.clone()), m);
                continue;
            }
            if let Some(storage) = &storage {
                if let Some(m) = stored_remotely(storage, &p.dir, job).await? {
                    printer.status(
                        "Fresh",
                        format!("{} ({}) on the storage", job.label(), job.key.short()),
                    );
                    outcomes.push(outcome(job, "on-storage", 0.0, &m));
                    manifests.insert((job.config.clone(), job.arch.clone()), m);
                    on_storage.insert((job.config.clone(), job.arch.clone()));
                    continue;
                }
            }
            todo.push((job.clone(), p.env[&job.arch].clone(), p.tar.clone()));
        }
    }

    if !todo.is_empty() {
        let engine = DockerEngine::connect().await?;
        build::ensure_loaded(&engine, &ws.store, &builder_image).await?;
        let ctx = Arc::new(JobCtx {
            engine,
            image_id: builder_image.config.as_str().to_owned(),
            store_root: store_dir(ws),
            logs: ws.store.root().join("logs"),
            printer: printer.clone(),
            packing: Arc::new(opts.packing.resolve()),
        });
        let sem = Arc::new(Semaphore::new(opts.jobs.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for (job, env, tar) in todo {
            let (ctx, sem) = (ctx.clone(), sem.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                let started = Instant::now();
                let label = job.label();
                let r = run_job(&ctx, &job, env, &tar).await;
                (job, label, started.elapsed().as_secs_f64(), r)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (job, label, secs, r) = joined.context("a rootfs task panicked")?;
            match r {
                Ok((m, resumed)) => {
                    printer.status(
                        if resumed { "Resumed" } else { "Built" },
                        format!("{label} ({}) in {secs:.1}s", job.key.short()),
                    );
                    outcomes.push(outcome(
                        &job,
                        if resumed { "resumed" } else { "built" },
                        secs,
                        &m,
                    ));
                    manifests.insert((job.config.clone(), job.arch.clone()), m);
                }
                Err(failure) => {
                    printer.error(format!("{label}: {}", failure.error));
                    outcomes.push(RootfsOutcome {
                        config: job.config.clone(),
                        arch: job.arch.clone(),
                        key: job.key.as_str().to_owned(),
                        action: "failed",
                        seconds: secs,
                        artifacts: BTreeMap::new(),
                        error: Some(failure.error),
                        log_tail: failure.log_tail,
                    });
                }
            }
        }
    }
    outcomes.sort_by(|a, b| (&a.config, &a.arch).cmp(&(&b.config, &b.arch)));

    // Versions, uploads and the lockfile.
    let mut versions = BTreeMap::new();
    let mut new_lock = old_lock.clone();
    let (mut uploaded, mut upload_skipped) = (0, 0);
    let recipe_names: Vec<&str> = recipes.iter().map(|r| r.name.as_str()).collect();
    new_lock
        .configs
        .retain(|name, _| recipe_names.contains(&name.as_str()));
    for p in &prepared {
        let dir = p.dir.clone();
        let version = dir
            .rsplit_once('/')
            .map(|(_, v)| v.to_owned())
            .expect("dir is config/version");
        versions.insert(p.recipe.name.clone(), version.clone());
        let mut urls: BTreeMap<(String, String), String> = BTreeMap::new();
        if let Some(storage) = &storage {
            let mut files = Vec::new();
            for job in &p.jobs {
                let id = (job.config.clone(), job.arch.clone());
                let Some(m) = manifests.get(&id) else {
                    continue;
                };
                if on_storage.contains(&id) {
                    for name in m.artifacts.keys().chain([&MANIFEST.to_owned()]) {
                        urls.insert(
                            (job.arch.clone(), name.clone()),
                            storage.url(&dir, &format!("{}/{name}", job.arch)),
                        );
                    }
                    continue;
                }
                let kd = key_dir(ws, &job.key);
                for (name, a) in &m.artifacts {
                    files.push(UploadFile {
                        name: format!("{}/{name}", job.arch),
                        path: kd.join(name),
                        size: a.size,
                        sha256: a.sha256.clone(),
                    });
                }
                let mpath = kd.join(MANIFEST);
                let mbytes = std::fs::read(&mpath)
                    .with_context(|| format!("reading {}", mpath.display()))?;
                files.push(UploadFile {
                    name: format!("{}/{MANIFEST}", job.arch),
                    path: mpath,
                    size: mbytes.len() as u64,
                    sha256: Digest::of(&mbytes),
                });
            }
            if !files.is_empty() {
                let report = storage
                    .sync(&dir, &files)
                    .await
                    .with_context(|| format!("uploading {dir}"))?;
                uploaded += report.uploaded.len();
                upload_skipped += report.skipped.len();
                printer.status(
                    "Uploaded",
                    format!(
                        "{dir}: {} files, {} already there (sizes and sha256 verified)",
                        report.uploaded.len(),
                        report.skipped.len()
                    ),
                );
                for f in &files {
                    if let Some((arch, name)) = f.name.split_once('/') {
                        urls.insert(
                            (arch.to_owned(), name.to_owned()),
                            storage.url(&dir, &f.name),
                        );
                    }
                }
            }
        }
        let old = old_lock.configs.get(&p.recipe.name);
        let entry = new_lock
            .configs
            .entry(p.recipe.name.clone())
            .or_insert_with(|| LockedConfig {
                version: version.clone(),
                arch: BTreeMap::new(),
            });
        entry.version = version.clone();
        entry.arch.retain(|a, _| p.recipe.arch_list.contains(a));
        for job in &p.jobs {
            let Some(m) = manifests.get(&(job.config.clone(), job.arch.clone())) else {
                // Not built this run: keep what the lockfile had only if the key still matches.
                if entry.arch.get(&job.arch).is_some_and(|l| l.key != job.key) {
                    entry.arch.remove(&job.arch);
                }
                continue;
            };
            let old_arch = old.and_then(|c| c.arch.get(&job.arch));
            let artifact = m
                .artifacts
                .iter()
                .map(|(name, a)| {
                    let url = urls
                        .get(&(job.arch.clone(), name.clone()))
                        .cloned()
                        .or_else(|| {
                            // A URL recorded earlier stays valid for the same bytes.
                            old_arch
                                .and_then(|o| o.artifact.get(name))
                                .filter(|o| o.sha256 == a.sha256)
                                .and_then(|o| o.url.clone())
                        });
                    (
                        name.clone(),
                        LockedArtifact {
                            sha256: a.sha256.clone(),
                            size: a.size,
                            url,
                        },
                    )
                })
                .collect();
            entry.arch.insert(
                job.arch.clone(),
                LockedRootfs {
                    key: job.key.clone(),
                    input: job.facts.clone(),
                    package: m.packages.clone(),
                    artifact,
                },
            );
        }
        // A config none of whose arches has been built (all failed) records nothing: no
        // version that no file exists for.
        if entry.arch.is_empty() {
            new_lock.configs.remove(&p.recipe.name);
        }
    }
    let new_text = new_lock.to_text();
    let changed = old_text.as_deref() != Some(new_text.as_str());
    if changed {
        if opts.locked {
            bail!(
                "--locked: {} would change:\n  {}",
                opts.lockfile.display(),
                describe(&old_lock, &new_lock).join("\n  ")
            );
        }
        if let Some(parent) = opts.lockfile.parent() {
            std::fs::create_dir_all(parent)?;
        }
        fsutil::atomic_write(&opts.lockfile, new_text.as_bytes())
            .with_context(|| format!("writing {}", opts.lockfile.display()))?;
        printer.status("Locked", opts.lockfile.display());
    }
    Ok(RootfsReport {
        builds: outcomes,
        versions,
        uploaded,
        upload_skipped,
        lockfile_changed: changed,
    })
}

/// The manifest of `job` on the storage, if it is there for the same key and every file it
/// lists is served with the size it records.
async fn stored_remotely(
    storage: &Storage,
    dir: &str,
    job: &RootfsJob,
) -> anyhow::Result<Option<RootfsManifest>> {
    let Some(bytes) = storage
        .fetch(dir, &format!("{}/{MANIFEST}", job.arch))
        .await?
    else {
        return Ok(None);
    };
    let Ok(m) = serde_json::from_slice::<RootfsManifest>(&bytes) else {
        return Ok(None);
    };
    if m.key != job.key || m.artifacts.len() != ARTIFACTS.len() {
        return Ok(None);
    }
    for (name, a) in &m.artifacts {
        if storage.size(dir, &format!("{}/{name}", job.arch)).await? != Some(a.size) {
            return Ok(None);
        }
    }
    Ok(Some(m))
}

fn describe(old: &RootfsLockfile, new: &RootfsLockfile) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, c) in &new.configs {
        for (arch, r) in &c.arch {
            match old.configs.get(name).and_then(|o| o.arch.get(arch)) {
                None => lines.push(format!("{name}/{arch}: would be added")),
                Some(o) if o != r => {
                    let inputs: Vec<String> = crate::core::key::diff_facts(&o.input, &r.input)
                        .into_iter()
                        .map(|c| c.path)
                        .collect();
                    if inputs.is_empty() {
                        lines.push(format!("{name}/{arch}: outputs or URLs changed"));
                    } else {
                        lines.push(format!(
                            "{name}/{arch}: inputs changed ({})",
                            inputs.join(", ")
                        ));
                    }
                }
                Some(_) => {}
            }
        }
    }
    for (name, c) in &old.configs {
        for arch in c.arch.keys() {
            if !new
                .configs
                .get(name)
                .is_some_and(|n| n.arch.contains_key(arch))
            {
                lines.push(format!("{name}/{arch}: would be removed"));
            }
        }
    }
    if lines.is_empty() {
        lines.push("formatting or versions changed".into());
    }
    lines
}

fn outcome(job: &RootfsJob, action: &'static str, secs: f64, m: &RootfsManifest) -> RootfsOutcome {
    RootfsOutcome {
        config: job.config.clone(),
        arch: job.arch.clone(),
        key: job.key.as_str().to_owned(),
        action,
        seconds: secs,
        artifacts: m.artifacts.clone(),
        error: None,
        log_tail: Vec::new(),
    }
}

struct JobFailure {
    error: String,
    log_tail: Vec<String>,
}

fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// What every job of one run shares.
struct JobCtx {
    engine: DockerEngine,
    image_id: String,
    store_root: PathBuf,
    logs: PathBuf,
    printer: Printer,
    packing: Arc<Packing>,
}

/// One (config, arch): attach to or start its container, wait, collect, make the files,
/// commit them to the store. Returns the manifest and whether an earlier run's container
/// was picked up.
async fn run_job(
    ctx: &JobCtx,
    job: &RootfsJob,
    env: Vec<String>,
    tar: &[u8],
) -> Result<(RootfsManifest, bool), JobFailure> {
    let fail = |error: String| JobFailure {
        error,
        log_tail: Vec::new(),
    };
    let JobCtx {
        engine,
        store_root,
        logs,
        printer,
        packing,
        ..
    } = ctx;
    let name = builder::container_name(job, &builder::store_tag(store_root));
    std::fs::create_dir_all(logs).map_err(|e| fail(format!("creating {}: {e}", logs.display())))?;
    let log_path = logs.join(format!(
        "rootfs-{}-{}-{}.log",
        job.config,
        job.arch,
        job.key.short()
    ));
    let resumed = attach_or_start(ctx, job, &name, env, tar).await?;
    let started = Instant::now();
    let bar = printer.spinner(&job.label());
    let label = job.label();
    let code = builder::follow(engine, &name, &log_path, |phase| {
        let msg = format!("{phase} [{}s]", started.elapsed().as_secs());
        match &bar {
            Some(b) => b.set_message(phase.to_owned()),
            None => tracing::info!("{label}: {msg}"),
        }
        if bar.is_none() {
            printer.status("Running", format!("{label}: {phase}"));
        }
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    if code != 0 {
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let _ = builder::remove(engine, &name).await;
        return Err(JobFailure {
            error: format!(
                "the builder exited with {code} (log: {})",
                log_path.display()
            ),
            log_tail: tail(&log_path, 20),
        });
    }
    remove_stale_temp_dirs(store_root, &job.key);
    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(&job.key))
        .tempdir_in(store_root)
        .map_err(|e| {
            fail(format!(
                "creating a temp dir in {}: {e}",
                store_root.display()
            ))
        })?;
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("out");
    for d in [&raw, &out] {
        std::fs::create_dir(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
    }
    match &bar {
        Some(b) => b.set_message("packing: canonical cpio, tar and ext4, gzip and xz"),
        None => printer.status(
            "Packing",
            format!("{label}: the five files and the manifest"),
        ),
    }
    let made = pack::pack(engine, &name, job, &raw, &out, packing).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let manifest = made.map_err(|e| fail(format!("making the files: {e:#}")))?;
    let final_dir = store_root.join(job.key.hex());
    match std::fs::rename(&out, &final_dir) {
        Ok(()) => {}
        // Another run committed the same key first: same inputs, same bytes.
        Err(_) if final_dir.join(MANIFEST).is_file() => {}
        Err(e) => return Err(fail(format!("storing {}: {e}", final_dir.display()))),
    }
    fsutil::sync_dir(store_root).map_err(|e| fail(e.to_string()))?;
    drop(tmp);
    builder::remove(engine, &name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok((manifest, resumed))
}

/// Picks up the job's container where an earlier run left it (running: attach; exited 0:
/// collect) or starts it afresh. Returns whether an earlier run's container was picked up.
async fn attach_or_start(
    ctx: &JobCtx,
    job: &RootfsJob,
    name: &str,
    env: Vec<String>,
    tar: &[u8],
) -> Result<bool, JobFailure> {
    let fail = |error: String| JobFailure {
        error,
        log_tail: Vec::new(),
    };
    let JobCtx {
        engine,
        image_id,
        printer,
        ..
    } = ctx;
    let state = builder::state(engine, name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let resumed = matches!(
        state,
        builder::ContainerState::Running | builder::ContainerState::Exited(0)
    );
    match state {
        builder::ContainerState::Running => {
            printer.status(
                "Attaching",
                format!("{} (container {name} is still running)", job.label()),
            );
        }
        builder::ContainerState::Exited(0) => {
            printer.status(
                "Collecting",
                format!("{} (container {name} finished)", job.label()),
            );
        }
        other => {
            if let builder::ContainerState::Exited(code) = other {
                printer.warn(format!(
                    "{}: an earlier build exited with {code}; starting it again",
                    job.label()
                ));
            }
            builder::remove(engine, name)
                .await
                .map_err(|e| fail(e.to_string()))?;
            binfmt::ensure(&job.arch).map_err(|e| fail(format!("{}: {}", e.message, e.hint)))?;
            builder::start(engine, name, job, image_id, env, tar.to_vec())
                .await
                .map_err(|e| fail(e.to_string()))?;
            printer.status(
                "Building",
                format!("{} ({}) in {name}", job.label(), job.key.short()),
            );
        }
    }
    Ok(resumed)
}

fn temp_prefix(key: &Digest) -> String {
    format!("tmp-{}-", key.hex())
}

/// Removes what a killed run left while packing `key` (its temp dir under the store): this
/// run is about to pack the same key, and runs on one lockfile do not overlap.
fn remove_stale_temp_dirs(store_root: &Path, key: &Digest) {
    let prefix = temp_prefix(key);
    let Ok(entries) = std::fs::read_dir(store_root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::debug!("removing {} left by an interrupted run", e.path().display());
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!("cannot remove {}: {err}", e.path().display());
            }
        }
    }
}

/// The final table, for stderr.
pub fn table(report: &RootfsReport) -> String {
    let mut rows = vec![[
        "CONFIG/ARCH".to_owned(),
        "STATUS".to_owned(),
        "TIME".to_owned(),
        "KEY".to_owned(),
        "rootfs.cpio.gz".to_owned(),
        "full.rootfs.tar.xz".to_owned(),
    ]];
    for b in &report.builds {
        let size = |n: &str| {
            b.artifacts
                .get(n)
                .map(|a| crate::printer::human_bytes(a.size))
                .unwrap_or_else(|| "-".into())
        };
        rows.push([
            format!("{}/{}", b.config, b.arch),
            b.action.to_owned(),
            format!("{:.1}s", b.seconds),
            b.key.trim_start_matches("sha256:")[..12].to_owned(),
            size("rootfs.cpio.gz"),
            size("full.rootfs.tar.xz"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for (config, v) in &report.versions {
        out.push_str(&format!("version {config}: {v}\n"));
    }
    for b in report.builds.iter().filter(|b| b.action == "failed") {
        out.push_str(&format!(
            "\n{}/{} failed: {}\n",
            b.config,
            b.arch,
            b.error.as_deref().unwrap_or("")
        ));
        for l in &b.log_tail {
            out.push_str(&format!("  | {l}\n"));
        }
    }
    out
}

impl RootfsReport {
    pub fn into_result(&self) -> Result<(), RootfsFailed> {
        let failed: Vec<String> = self
            .builds
            .iter()
            .filter(|b| b.action == "failed")
            .map(|b| format!("{}/{}", b.config, b.arch))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RootfsFailed {
                failed,
                total: self.builds.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temp_dirs_of_the_key_go_and_others_stay() {
        let store = tempfile::tempdir().unwrap();
        let key = Digest::of(b"a");
        let other = Digest::of(b"b");
        let stale = store.path().join(format!("{}x1", temp_prefix(&key)));
        std::fs::create_dir_all(stale.join("raw")).unwrap();
        std::fs::write(stale.join("raw/full.tar"), b"half").unwrap();
        let kept = [
            store.path().join(format!("{}x2", temp_prefix(&other))),
            store.path().join(key.hex()),
        ];
        for k in &kept {
            std::fs::create_dir_all(k).unwrap();
        }
        remove_stale_temp_dirs(store.path(), &key);
        assert!(!stale.exists());
        for k in &kept {
            assert!(k.is_dir(), "{}", k.display());
        }
    }
}
