//! Image builds, below the commands (`build`, `check`, `rootfs`'s builder image, `load`):
//! build what the store lacks, in dependency order and in parallel where the graph allows,
//! then record the result in the lockfile.
//!
//! Per target: compute the key from the parent's *actual* output digest; if the store has
//! it, done. Otherwise the daemon runs the build (parent loaded from the store, passed as
//! `PARENT=sha256:<config digest>`), kci-build saves the result, rewrites the new layers
//! canonically into the store, writes its own config and manifest, and records the key.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, LineWriter, Write};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _};
use serde::Serialize;
use tokio::task::JoinSet;

use crate::aptcache::AptCache;
use crate::bootstrap;
use crate::context::{self, ContextEntry};
use crate::core::key::KeyInputs;
use crate::core::lockfile::{LockedOutput, LockedTarget};
use crate::core::names::{Digest, TargetName};
use crate::core::recipe::{TargetKind, TargetRecipe};
use crate::core::schedule::Progress;
use crate::dpkg;
use crate::engine::{BuildRequest, Engine};
use crate::image::{self, HistoryLine};
use crate::layer::Section;
use crate::lockedit::{LockfileEdit, Written};
use crate::printer::Printer;
use crate::publish as push;
use crate::registry::Registry;
use crate::store::{Store, StoredImage};
use crate::workspace::Workspace;

mod scheduler;
use scheduler::{EngineMaker, Scheduled, Scheduler};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub targets: Vec<TargetName>,
    pub jobs: usize,
    pub lock: LockMode,
    /// Stream build logs to stderr.
    pub verbose: bool,
    /// Look targets up in this registry (by key tag) before building them.
    pub registry: Option<String>,
    /// Push every selected target to `registry` after the build.
    pub push: bool,
    /// The engines to build on (`default`, Docker contexts, addresses), `jobs` builds at
    /// once on each: `["default"]` unless `--engines` says otherwise.
    pub engines: Vec<String>,
}

/// What a build does with the lockfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Write it when its content changes.
    Update,
    /// `--locked`: any change is an error.
    Locked,
    /// Leave it alone (`check` builds into a scratch store).
    Leave,
}

/// How a target of the selection was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetAction {
    /// Built by the engine (or, for an index, written).
    Built,
    /// In the store already.
    Cached,
    /// Fetched from the registry cache by its key tag.
    Pulled,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub key: String,
    pub manifest: String,
    pub action: TargetAction,
    pub seconds: f64,
    /// The engine that built it (`--engines` name; `default` without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BuildReport {
    pub targets: Vec<Outcome>,
    pub failed: Vec<Failure>,
    pub lockfile_changed: bool,
    /// What `--push` did.
    pub push: Option<push::PushReport>,
    /// Targets in the selection.
    pub total: usize,
    /// What the apt cache served: files from the cache, bytes fetched upstream.
    pub apt: crate::aptcache::AptStats,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub name: String,
    pub error: String,
}

/// A build failed; the report says which and why.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} targets failed: {}", failed.len(), failed.join(", "))]
pub struct TargetsFailed {
    pub failed: Vec<String>,
    pub total: usize,
}

/// Builds into the workspace's store.
pub async fn build(
    ws: &mut Workspace,
    opts: &BuildOptions,
    printer: &Printer,
) -> anyhow::Result<BuildReport> {
    let store = Store::open(ws.store.root())?;
    run_in(ws, &store, opts, printer).await
}

/// Builds into `store`, which need not be the workspace's.
pub async fn run_in(
    ws: &mut Workspace,
    store: &Store,
    opts: &BuildOptions,
    printer: &Printer,
) -> anyhow::Result<BuildReport> {
    let suites = crate::aptpins::image_suites(ws)?;
    let locked = opts.lock == LockMode::Locked;
    crate::aptpins::pin_missing(ws, &suites, locked, printer).await?;
    let ws = &*ws;
    let registry = opts
        .registry
        .as_deref()
        .map(|r| Registry::new(r, &ws.env.registry))
        .transpose()?;
    let engines = crate::engine::contexts::resolve(
        &opts.engines,
        ws.env.registry.docker_config.as_deref(),
        &ws.env.engine,
    )?;
    let maker = EngineMaker::docker(
        engines,
        opts.jobs,
        registry.clone(),
        ws.settings.prefix.clone(),
        printer.clone(),
    );
    let started = Instant::now();
    let scheduled = schedule(ws, store, opts, printer, maker).await?;
    let changed = record(ws, opts, &scheduled, printer)?;
    let pushed = match (&registry, opts.push && scheduled.failed.is_empty()) {
        (Some(reg), true) => {
            // In selection order: an index's members go up before it.
            let images: Vec<StoredImage> = scheduled
                .selection
                .iter()
                .filter_map(|n| scheduled.done.get(n).map(|(_, img)| img.clone()))
                .collect();
            let prefix = &ws.settings.prefix;
            let jobs = opts.jobs.max(4);
            Some(push::push_images(reg, store, prefix, &images, jobs, printer).await?)
        }
        _ => None,
    };
    Ok(scheduled.report(changed, pushed, started, printer))
}

/// Plans the selection, refuses under `--locked` when the plan already differs from the
/// lockfile, and builds it through `maker`.
async fn schedule<E: Engine>(
    ws: &Workspace,
    store: &Store,
    opts: &BuildOptions,
    printer: &Printer,
    maker: EngineMaker<E>,
) -> anyhow::Result<Scheduled> {
    let sel = ws.selection(&opts.targets)?;
    let contexts = ws.scan_contexts(&sel)?;
    let planned = ws.plan(&sel, &contexts)?;
    if opts.lock == LockMode::Locked {
        refuse_planned_changes(ws, &planned)?;
    }
    let to_build = planned
        .iter()
        .filter(|p| p.status != crate::core::plan::Status::Cached)
        .count();
    let scheduler = Scheduler {
        ws,
        store,
        opts,
        printer,
        contexts: &contexts,
        sel: &sel,
        maker,
        apt: crate::aptpins::cache(ws),
        progress: Progress::default(),
        out: Scheduled::default(),
        running: JoinSet::new(),
        build_no: 0,
        to_build,
    };
    scheduler.run().await
}

/// `--locked`: refuses when a selected target would change the lockfile.
fn refuse_planned_changes(
    ws: &Workspace,
    planned: &[crate::core::plan::PlannedTarget<'_>],
) -> anyhow::Result<()> {
    let drift = crate::core::plan::drift(&ws.lock, planned, false);
    if !drift.is_empty() {
        return Err(crate::lockedit::LockedRefusal {
            path: ws.paths.lockfile.clone(),
            why: "",
            lines: drift.iter().map(ToString::to_string).collect(),
        }
        .into());
    }
    Ok(())
}

/// Records what is done in the lockfile (targets that failed keep their old entries);
/// returns whether the lockfile's text changed (or, with `LockMode::Leave`, would have).
fn record(
    ws: &Workspace,
    opts: &BuildOptions,
    scheduled: &Scheduled,
    printer: &Printer,
) -> anyhow::Result<bool> {
    let mut new_lock = ws.lock.clone();
    if opts.targets.is_empty() {
        new_lock.targets.retain(|n, _| ws.graph.get(n).is_some());
    }
    for (name, (inputs, img)) in &scheduled.done {
        let mut entry = lock_entry(inputs, img);
        // An image pulled from a registry does not carry the list of `.deb`s it was built
        // from: the lockfile's list for the same key still describes it.
        if let Some(locked) = ws.lock.targets.get(name) {
            if entry.deb.is_empty() && locked.key == entry.key {
                entry.deb = locked.deb.clone();
            }
        }
        new_lock.targets.insert(name.clone(), entry);
    }
    new_lock.apt_index = ws.lock.apt_index.clone();
    let text = new_lock.to_text();
    let edit = LockfileEdit::from_text(&ws.paths.lockfile, ws.lock_text.clone());
    let changed = edit.would_change(&text);
    if opts.lock != LockMode::Leave {
        let locked = opts.lock == LockMode::Locked;
        let why = " (the build did not reproduce it)";
        let changes = || crate::core::lockdiff::diff(&ws.lock, &new_lock).change_lines();
        if edit.write(&text, locked, why, changes)? == Written::Written {
            printer.status(
                "Locking",
                format!(
                    "{} ({} targets)",
                    ws.paths.lockfile.display(),
                    new_lock.targets.len()
                ),
            );
        }
    }
    Ok(changed)
}

impl BuildReport {
    /// An error naming the failed targets, if any.
    pub fn into_result(&self) -> Result<(), TargetsFailed> {
        if self.failed.is_empty() {
            return Ok(());
        }
        Err(TargetsFailed {
            failed: self.failed.iter().map(|f| f.name.clone()).collect(),
            total: self.total,
        })
    }
}

pub(crate) fn human_secs(s: f64) -> String {
    let whole = s as u64;
    match whole {
        0..10 => format!("{s:.2}s"),
        10..60 => format!("{whole}s"),
        _ => format!("{}m {:02}s", whole / 60, whole % 60),
    }
}

/// One target to build, with everything it needs owned (cloned when an engine of the pool
/// fails and the build moves to another).
#[derive(Clone)]
pub struct Job {
    recipe: TargetRecipe,
    key: Digest,
    entries: Vec<ContextEntry>,
    parent: Option<StoredImage>,
    sde: u64,
    mirror: Option<String>,
    store: Store,
    apt: AptCache,
    printer: Printer,
    verbose: bool,
}

/// Build output: to the target's log file, to stderr with `-v`, to its spinner on a TTY.
struct LogSink {
    file: LineWriter<File>,
    prefix: String,
    verbose: bool,
    printer: Printer,
    spinner: Option<indicatif::ProgressBar>,
    tail: std::collections::VecDeque<String>,
}

impl LogSink {
    fn line(&mut self, line: &str) {
        let _ = writeln!(self.file, "{line}");
        if self.verbose {
            self.printer.raw(&format!("{}: {line}", self.prefix));
        }
        if let Some(s) = &self.spinner {
            s.set_message(line.to_owned());
        }
        if self.tail.len() == 15 {
            self.tail.pop_front();
        }
        self.tail.push_back(line.to_owned());
    }
    fn tail(&self) -> String {
        self.tail
            .iter()
            .map(|l| format!("    | {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        let _ = self.file.flush();
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }
}

impl Job {
    async fn run<E: Engine>(self, engine: &E) -> anyhow::Result<StoredImage> {
        let log_path = self.store.log_path(&self.recipe.name, &self.key);
        let file =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut log = LogSink {
            file: LineWriter::new(file),
            prefix: self.recipe.name.to_string(),
            verbose: self.verbose,
            printer: self.printer.clone(),
            spinner: self.printer.spinner(self.recipe.name.as_str()),
            tail: Default::default(),
        };
        let proxy = self
            .apt
            .serve()
            .await
            .context("starting the apt cache's proxy")?;
        let result = match &self.recipe.kind {
            TargetKind::Bootstrap(_) => self.bootstrap(&proxy.url(), &mut log).await,
            TargetKind::Dockerfile { .. } => self.dockerfile(engine, &proxy.url(), &mut log).await,
            TargetKind::Index { .. } => unreachable!("indexes are assembled without a job"),
        };
        let errors = proxy.errors();
        let served = proxy.served();
        drop(proxy);
        match result {
            Ok(img) if img.debs != served => {
                let img = StoredImage {
                    debs: served,
                    ..img
                };
                self.store.record(&img)?;
                Ok(img)
            }
            Ok(img) => Ok(img),
            Err(e) => {
                let tail = log.tail();
                let e = e.context(format!("log: {}\n{tail}", log_path.display()));
                Err(match errors.is_empty() {
                    true => e,
                    false => e.context(format!(
                        "the apt cache could not serve:\n  {}",
                        errors.join("\n  ")
                    )),
                })
            }
        }
    }

    async fn bootstrap(&self, proxy: &str, log: &mut LogSink) -> anyhow::Result<StoredImage> {
        let TargetKind::Bootstrap(b) = &self.recipe.kind else {
            unreachable!()
        };
        let mirror = b
            .mirror_url(self.mirror.as_deref())
            .ok_or_else(|| anyhow!("no Debian mirror (set KCI_DEBIAN_MIRROR)"))?;
        let tmp = tempfile::tempdir_in(self.store.tmp_dir())?;
        let tarball = tmp.path().join("rootfs.tar");
        let keyring = b.keyring.as_ref().map(|k| self.recipe.context_dir.join(k));
        let run = bootstrap::Run {
            mirror,
            proxy,
            sde: self.sde,
            out: &tarball,
            keyring: keyring.as_deref(),
        };
        bootstrap::mmdebstrap(b, &self.recipe.platform, &run, |l| log.line(l)).await?;
        let history = vec![HistoryLine {
            created_by: format!(
                "kci-build bootstrap: mmdebstrap --variant={} --include={} {}",
                b.variant,
                b.packages.join(","),
                b.suite
            ),
            empty_layer: false,
        }];
        let runtime: oci_spec::image::Config = serde_json::from_value(serde_json::json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["bash"],
        }))?;
        let (store, sde, platform, name, key) = (
            self.store.clone(),
            self.sde,
            self.recipe.platform.clone(),
            self.recipe.name.clone(),
            self.key.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<StoredImage> {
            let (layer, status) =
                image::store_layer(&store, Section::whole(File::open(&tarball)?)?, sde)?;
            let layers = vec![layer];
            let (config, manifest) =
                image::assemble(&store, &platform, Some(runtime), &layers, &history, sde)?;
            let img = StoredImage {
                target: name,
                key,
                manifest,
                config,
                layers,
                packages: status.map(|s| dpkg::installed(&s)).unwrap_or_default(),
                members: Vec::new(),
                debs: Default::default(),
            };
            store.record(&img)?;
            drop(tmp);
            Ok(img)
        })
        .await?
    }

    async fn dockerfile<E: Engine>(
        &self,
        engine: &E,
        proxy: &str,
        log: &mut LogSink,
    ) -> anyhow::Result<StoredImage> {
        let TargetKind::Dockerfile {
            dockerfile, args, ..
        } = &self.recipe.kind
        else {
            unreachable!()
        };
        let mut build_args: HashMap<String, String> =
            args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        build_args.insert("SOURCE_DATE_EPOCH".into(), self.sde.to_string());
        // One of Docker's predefined proxy arguments: apt reaches the archive through the
        // apt cache, and the value is kept out of the image's history and config.
        build_args.insert("http_proxy".into(), proxy.to_owned());
        if let Some(p) = &self.parent {
            ensure_loaded(engine, &self.store, p).await?;
            build_args.insert("PARENT".into(), p.config.to_string());
        }
        let tag = format!(
            "kci-build.local/{}:build-{}",
            self.recipe.name.image(),
            self.key.short()
        );
        let req = BuildRequest {
            context_tar: context::tar(&self.entries, self.sde)?,
            dockerfile: dockerfile.clone(),
            tag: tag.clone(),
            build_args,
        };
        let id = engine.build(req, |l| log.line(l)).await?;
        let tmp = tempfile::tempdir_in(self.store.tmp_dir())?;
        let saved = tmp.path().join("saved.tar");
        engine.save(&id, &saved).await?;
        engine.remove_image(&tag).await?;
        let (store, sde, platform, name, key, parent) = (
            self.store.clone(),
            self.sde,
            self.recipe.platform.clone(),
            self.recipe.name.clone(),
            self.key.clone(),
            self.parent.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<StoredImage> {
            let img =
                canonical_from_saved(&store, &saved, parent.as_ref(), sde, &platform, name, key)?;
            store.record(&img)?;
            drop(tmp);
            Ok(img)
        })
        .await?
    }
}

/// Makes the daemon hold a stored image under its config digest (its image id).
pub(crate) async fn ensure_loaded<E: Engine>(
    engine: &E,
    store: &Store,
    img: &StoredImage,
) -> anyhow::Result<()> {
    if engine.has_image(img.config.as_str()).await? {
        return Ok(());
    }
    let tmp = tempfile::tempdir_in(store.tmp_dir())?;
    let archive = tmp.path().join("load.tar");
    let tag = format!("kci-build.local/{}:{}", img.target.image(), img.key.short());
    {
        let (store, img, archive) = (store.clone(), img.clone(), archive.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let f = BufWriter::new(File::create(&archive)?);
            image::write_load_archive(&store, &img.config, &img.layers, &tag, f)?;
            Ok(())
        })
        .await??;
    }
    engine.load(&archive).await?;
    if !engine.has_image(img.config.as_str()).await? {
        bail!(
            "the daemon did not keep image {} after loading {}",
            img.config,
            img.target
        );
    }
    Ok(())
}

/// Turns a `docker save` archive into a canonical stored image: the parent's layers are
/// reused as stored, the new ones rewritten.
fn canonical_from_saved(
    store: &Store,
    saved_path: &std::path::Path,
    parent: Option<&StoredImage>,
    sde: u64,
    platform: &crate::core::names::Platform,
    target: TargetName,
    key: Digest,
) -> anyhow::Result<StoredImage> {
    let saved = image::read_saved(saved_path)?;
    let docker_diff_ids: Vec<&str> = saved.config["rootfs"]["diff_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let (mut layers, parent_history, mut packages) = match parent {
        Some(p) => {
            let cfg = image::read_config(store, &p.config)?;
            let history: Vec<HistoryLine> = cfg
                .history()
                .as_ref()
                .map(|h| {
                    h.iter()
                        .map(|h| HistoryLine {
                            created_by: h.created_by().clone().unwrap_or_default(),
                            empty_layer: h.empty_layer().unwrap_or(false),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (p.layers.clone(), history, p.packages.clone())
        }
        None => (Vec::new(), Vec::new(), BTreeMap::new()),
    };
    let n = layers.len();
    let inherited: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    if docker_diff_ids.len() < n || docker_diff_ids[..n] != inherited[..] {
        bail!("the daemon's copy of the parent's layers differs from the store's; remove the image and retry");
    }
    let file = File::open(saved_path)?;
    for &(offset, len) in &saved.layers[n..] {
        let (layer, status) =
            image::store_layer(store, Section::new(file.try_clone()?, offset, len), sde)?;
        if let Some(s) = status {
            packages = dpkg::installed(&s);
        }
        layers.push(layer);
    }
    let mut history = parent_history.clone();
    if let Some(h) = saved.config["history"].as_array() {
        history.extend(h.iter().skip(parent_history.len()).map(|h| HistoryLine {
            created_by: h["created_by"].as_str().unwrap_or_default().to_owned(),
            empty_layer: h["empty_layer"].as_bool().unwrap_or(false),
        }));
    }
    let runtime: Option<oci_spec::image::Config> =
        serde_json::from_value(saved.config["config"].clone()).ok();
    let (config, manifest) = image::assemble(store, platform, runtime, &layers, &history, sde)?;
    Ok(StoredImage {
        target,
        key,
        manifest,
        config,
        layers,
        packages,
        members: Vec::new(),
        debs: Default::default(),
    })
}

/// The lockfile entry for a finished target.
fn lock_entry(inputs: &KeyInputs, img: &StoredImage) -> LockedTarget {
    LockedTarget {
        key: img.key.clone(),
        input: inputs.facts(),
        output: LockedOutput {
            manifest: img.manifest.clone(),
            config: (!img.is_index()).then(|| img.config.clone()),
            layers: img.layers.iter().map(|l| l.digest.clone()).collect(),
            members: img.members.clone(),
        },
        package: img.packages.clone(),
        deb: img.debs.clone(),
    }
}

#[cfg(test)]
mod scheduler_tests;
