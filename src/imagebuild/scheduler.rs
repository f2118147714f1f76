//! The image build loop: a [`Scheduler`] that starts what [`schedule::next`] says is ready,
//! through an [`EngineMaker`]: the registry cache, then the [`Engine`] (Docker; the in-memory
//! fake in the unit tests).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::anyhow;
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use super::{human_secs, push, BuildOptions, BuildReport, Failure, Job, Outcome, TargetAction};
use crate::context::{self, ContextEntry};
use crate::core::key::KeyInputs;
use crate::core::names::{Digest, Platform, TargetName};
use crate::core::plan::key_inputs;
use crate::core::recipe::{TargetKind, TargetRecipe};
use crate::core::schedule::{self, Next, Progress};
use crate::engine::contexts::NamedEngine;
use crate::engine::pool::{Member, Pool};
use crate::engine::{DockerEngine, Engine};
use crate::image;
use crate::printer::Printer;
use crate::registry::Registry;
use crate::store::{Store, StoredImage};
use crate::workspace::Workspace;

/// How a target that is neither stored nor an index gets made: pulled from the registry
/// cache (with `--registry`), else built on an engine of the pool (`--engines`; the one
/// `DOCKER_HOST` names by default), connected on first use (a build whose targets are all
/// stored or cached never needs Docker). An engine that stops answering mid-build is
/// retired and the build goes to another. The unit tests give it in-memory engines.
#[derive(Clone)]
pub(super) struct EngineMaker<E> {
    pool: Arc<OnceCell<Arc<Pool<E>>>>,
    connect: Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<Pool<E>>> + Send + Sync>,
    /// How many engines were named (the scheduler runs `--jobs` builds on each).
    engines: usize,
    registry: Option<Registry>,
    prefix: String,
    printer: Printer,
}

impl EngineMaker<DockerEngine> {
    /// The engines of `engines` (resolved `--engines`), `slots` builds at once on each.
    pub fn docker(
        engines: Vec<NamedEngine>,
        slots: usize,
        registry: Option<Registry>,
        prefix: String,
        printer: Printer,
    ) -> Self {
        let count = engines.len();
        let warn = printer.clone();
        EngineMaker {
            pool: Arc::new(OnceCell::new()),
            connect: Arc::new(move || {
                let engines = engines.clone();
                let printer = warn.clone();
                Box::pin(async move { connect_pool(engines, slots, &printer).await })
            }),
            engines: count,
            registry,
            prefix,
            printer,
        }
    }
}

/// Connects every engine of the pool at once; one that cannot be reached is left out with a
/// warning when others can (all unreachable: the first one's error).
async fn connect_pool(
    engines: Vec<NamedEngine>,
    slots: usize,
    printer: &Printer,
) -> anyhow::Result<Pool<DockerEngine>> {
    let connected = futures_util::future::join_all(engines.iter().map(|e| async move {
        let engine = DockerEngine::connect(&e.settings).await?;
        let arch = engine.arch().await?;
        anyhow::Ok(Member {
            name: e.name.clone(),
            engine,
            arch,
        })
    }))
    .await;
    let mut members = Vec::new();
    let mut first_error = None;
    for (named, result) in engines.iter().zip(connected) {
        match result {
            Ok(m) => members.push(m),
            Err(e) if engines.len() > 1 => {
                printer.warn(format!(
                    "engine `{}` left out: {}",
                    named.name,
                    crate::error::Rendered(&e)
                ));
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    if members.is_empty() {
        return Err(first_error.expect("engines were named"));
    }
    if members.len() > 1 {
        let list: Vec<String> = members
            .iter()
            .map(|m| format!("{} ({})", m.name, m.arch))
            .collect();
        printer.status(
            "Engines",
            format!("{}, {slots} builds each", list.join(", ")),
        );
    }
    Ok(Pool::new(members, slots))
}

impl<E: Engine> EngineMaker<E> {
    /// A maker over engines already at hand (the unit tests' fakes): `(name, engine)`,
    /// architecture from the engine, `slots` builds at once on each.
    #[cfg(test)]
    pub async fn with_engines(engines: Vec<(&str, E)>, slots: usize, prefix: String) -> Self {
        let mut members = Vec::new();
        for (name, engine) in engines {
            let arch = engine.arch().await.expect("fake arch");
            members.push(Member {
                name: name.into(),
                engine,
                arch,
            });
        }
        let count = members.len();
        EngineMaker {
            pool: Arc::new(OnceCell::new_with(Some(Arc::new(Pool::new(
                members, slots,
            ))))),
            connect: Arc::new(|| Box::pin(async { anyhow::bail!("the engines were given") })),
            engines: count,
            registry: None,
            prefix,
            printer: Printer::new(crate::printer::ColorChoice::Never, true),
        }
    }

    /// How many builds may run at once: `jobs` on each engine named.
    pub fn capacity(&self, jobs: usize) -> usize {
        jobs.max(1) * self.engines.max(1)
    }

    /// Makes `job`'s image; returns it, how it was made, and the engine that built it.
    pub async fn make(&self, job: Job) -> anyhow::Result<Made> {
        let name = job.recipe.name.clone();
        if let Some(reg) = &self.registry {
            if let Some(img) = push::fetch(reg, &job.store, &self.prefix, &name, &job.key).await? {
                return Ok((img, TargetAction::Pulled, None));
            }
        }
        let pool = self
            .pool
            .get_or_try_init(|| async { (self.connect)().await.map(Arc::new) })
            .await?
            .clone();
        let want = job.recipe.platform.architecture.clone();
        loop {
            let lease = pool.lease(&want).await?;
            let member = lease.member().clone();
            match job.clone().run(&member.engine).await {
                Ok(img) => return Ok((img, TargetAction::Built, Some(member.name))),
                Err(e)
                    if pool.len() > 1
                        && engine_fault(&e)
                        && member.engine.ping().await.is_err() =>
                {
                    let why = crate::error::Rendered(&e).to_string();
                    let why = why.lines().next().unwrap_or_default().to_owned();
                    tracing::warn!(engine = %member.name, target = %name, error = %why, "engine retired");
                    lease.retire(why);
                    self.printer.line(
                        crate::printer::Tone::Bad,
                        "Moving",
                        format!(
                            "{name}: engine `{}` stopped answering; building on the others",
                            member.name
                        ),
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A made image, how it was made, and the engine that built it (none when pulled).
pub(super) type Made = (StoredImage, TargetAction, Option<String>);

/// Whether `e` is the machine's fault (an engine that fails this way and then does not
/// answer a ping is gone).
fn engine_fault(e: &anyhow::Error) -> bool {
    crate::exit::exit_code(e) == crate::error::ExitCode::Environment
}

/// What the scheduler ends with.
#[derive(Default)]
pub(super) struct Scheduled {
    pub done: BTreeMap<TargetName, (KeyInputs, StoredImage)>,
    pub failed: BTreeMap<TargetName, String>,
    pub outcomes: Vec<Outcome>,
    /// The selection's targets, dependencies first.
    pub selection: Vec<TargetName>,
    /// What the apt cache served the builds.
    pub apt: crate::aptcache::AptStats,
}

impl Scheduled {
    pub fn report(
        self,
        lockfile_changed: bool,
        push: Option<push::PushReport>,
        started: Instant,
        printer: &Printer,
    ) -> BuildReport {
        let count = |a: TargetAction| self.outcomes.iter().filter(|o| o.action == a).count();
        printer.status(
            "Finished",
            format!(
                "{} built, {} pulled, {} cached, {} failed in {}",
                count(TargetAction::Built),
                count(TargetAction::Pulled),
                count(TargetAction::Cached),
                self.failed.len(),
                human_secs(started.elapsed().as_secs_f64())
            ),
        );
        let apt = self.apt;
        if apt.hits + apt.misses > 0 {
            printer.status(
                "Apt",
                format!(
                    "{} files from the cache, {} fetched upstream ({} files)",
                    apt.hits,
                    crate::printer::human_bytes(apt.upstream_bytes),
                    apt.misses
                ),
            );
        }
        BuildReport {
            apt,
            targets: self.outcomes,
            failed: self
                .failed
                .iter()
                .map(|(n, e)| Failure {
                    name: n.to_string(),
                    error: e.clone(),
                })
                .collect(),
            lockfile_changed,
            total: self.selection.len(),
            push,
        }
    }
}

/// The build loop: starts every target [`schedule::next`] says is ready (at
/// most `--jobs` builds at once; stored targets and indexes are settled on the spot), waits
/// for one build to end, and again, until nothing runs.
pub(super) struct Scheduler<'w, E> {
    pub ws: &'w Workspace,
    pub store: &'w Store,
    pub opts: &'w BuildOptions,
    pub printer: &'w Printer,
    pub contexts: &'w BTreeMap<TargetName, Vec<ContextEntry>>,
    pub sel: &'w [&'w TargetRecipe],
    pub maker: EngineMaker<E>,
    /// Where every build's apt goes: the cache over the store, with the run's pins.
    pub apt: crate::aptcache::AptCache,
    pub progress: Progress,
    pub out: Scheduled,
    pub running: JoinSet<TaskResult>,
    pub build_no: usize,
    pub to_build: usize,
}

/// What a build task hands back: the target, its key inputs, the image and how it was
/// made, and the seconds it took.
pub(super) type TaskResult = (TargetName, KeyInputs, anyhow::Result<Made>, f64);

impl<E: Engine> Scheduler<'_, E> {
    pub async fn run(mut self) -> anyhow::Result<Scheduled> {
        self.out.selection = self.sel.iter().map(|t| t.name.clone()).collect();
        loop {
            self.start_ready()?;
            let Some(joined) = self.running.join_next().await else {
                break;
            };
            let (name, inputs, result, secs) =
                joined.map_err(|e| anyhow!("a build task panicked: {e}"))?;
            self.settle(name, inputs, result, secs)?;
        }
        self.out.apt = self.apt.stats();
        Ok(self.out)
    }

    /// Starts what can start; settling a stored target or an index can make its children
    /// ready at once, so this goes on until a pass starts nothing new.
    fn start_ready(&mut self) -> anyhow::Result<()> {
        loop {
            let mut settled = false;
            for next in schedule::next(self.sel, &self.progress) {
                match next {
                    Next::Blocked { target, dep } => {
                        self.progress.started.insert(target.name.clone());
                        self.fail(&target.name, format!("not built: `{dep}` failed"));
                        settled = true;
                    }
                    Next::Ready(t) => settled |= self.start(t)?,
                }
            }
            if !settled {
                return Ok(());
            }
        }
    }

    /// Settles `t` on the spot (stored, or an index) and returns true, or spawns its build
    /// when a job slot is free.
    fn start(&mut self, t: &TargetRecipe) -> anyhow::Result<bool> {
        let deps = t.kind.deps();
        let done = &self.out.done;
        let dep_manifests: BTreeMap<TargetName, Digest> = deps
            .iter()
            .map(|d| ((*d).clone(), done[*d].1.manifest.clone()))
            .collect();
        let inputs = key_inputs(
            t,
            &self.ws.settings,
            &context::fingerprint(&self.contexts[&t.name]),
            self.ws.sources(),
            &dep_manifests,
        )?;
        let key = inputs.key();
        if let Some(img) = self.store.lookup(&key) {
            tracing::info!(target = %t.name, key = %key.short(), "fresh");
            if self.opts.verbose {
                self.printer
                    .status("Fresh", format!("{} ({})", t.name, key.short()));
            }
            self.succeed(t.name.clone(), inputs, img, TargetAction::Cached, 0.0, None);
            return Ok(true);
        }
        if let TargetKind::Index { members } = &t.kind {
            let img = self.write_index(t, &key, members)?;
            self.succeed(t.name.clone(), inputs, img, TargetAction::Built, 0.0, None);
            return Ok(true);
        }
        if self.running.len() < self.maker.capacity(self.opts.jobs) {
            self.spawn(t, key, inputs);
        }
        Ok(false)
    }

    /// An index is a few hundred bytes of JSON over its members: written here.
    fn write_index(
        &self,
        t: &TargetRecipe,
        key: &Digest,
        members: &[TargetName],
    ) -> anyhow::Result<StoredImage> {
        let members: Vec<(Platform, StoredImage)> = members
            .iter()
            .map(|m| {
                let platform = self.ws.graph.get(m).expect("validated").platform.clone();
                (platform, self.out.done[m].1.clone())
            })
            .collect();
        let img = image::store_index(self.store, &t.name, key, &members)?;
        self.printer.status(
            "Indexed",
            format!(
                "{} → {} ({} platforms)",
                t.name,
                img.manifest.short(),
                members.len()
            ),
        );
        Ok(img)
    }

    fn spawn(&mut self, t: &TargetRecipe, key: Digest, inputs: KeyInputs) {
        self.progress.started.insert(t.name.clone());
        self.build_no += 1;
        let verb = if matches!(t.kind, TargetKind::Bootstrap(_)) {
            "Bootstrapping"
        } else {
            "Building"
        };
        self.printer.status(
            verb,
            format!(
                "{} (key {}) [{}/{}]",
                t.name,
                key.short(),
                self.build_no,
                self.to_build
            ),
        );
        let job = Job {
            recipe: t.clone(),
            key,
            entries: self.contexts[&t.name].clone(),
            parent: t.kind.parent().map(|p| self.out.done[p].1.clone()),
            sde: self.ws.settings.source_date_epoch,
            mirror: self.ws.env.debian_mirror.clone(),
            store: self.store.clone(),
            apt: self.apt.clone(),
            printer: self.printer.clone(),
            verbose: self.opts.verbose,
        };
        let maker = self.maker.clone();
        self.running.spawn(async move {
            let t0 = Instant::now();
            let name = job.recipe.name.clone();
            let result = maker.make(job).await;
            (name, inputs, result, t0.elapsed().as_secs_f64())
        });
    }

    fn settle(
        &mut self,
        name: TargetName,
        inputs: KeyInputs,
        result: anyhow::Result<Made>,
        secs: f64,
    ) -> anyhow::Result<()> {
        match result {
            Ok((img, action, engine)) => {
                let verb = if action == TargetAction::Pulled {
                    "Pulled"
                } else {
                    "Built"
                };
                let took = human_secs(secs);
                let on = match (&engine, self.maker.engines > 1) {
                    (Some(e), true) => format!(" on {e}"),
                    _ => String::new(),
                };
                self.printer.status(
                    verb,
                    format!("{name} → {} in {took}{on}", img.manifest.short()),
                );
                if action == TargetAction::Built {
                    self.store.record_duration(&format!("image:{name}"), secs);
                }
                self.succeed(name, inputs, img, action, secs, engine);
            }
            // The environment failing is not one target's problem: stop here.
            Err(e) if crate::exit::exit_code(&e) == crate::error::ExitCode::Environment => {
                self.running.abort_all();
                return Err(e.context(format!("building {name}")));
            }
            Err(e) => {
                self.printer.line(
                    crate::printer::Tone::Bad,
                    "Failed",
                    format!("{name}: {}", crate::error::Rendered(&e)),
                );
                self.fail(&name, format!("{e:#}"));
            }
        }
        Ok(())
    }

    fn succeed(
        &mut self,
        name: TargetName,
        inputs: KeyInputs,
        img: StoredImage,
        action: TargetAction,
        seconds: f64,
        engine: Option<String>,
    ) {
        self.progress.started.insert(name.clone());
        self.progress.done.insert(name.clone());
        self.out.outcomes.push(Outcome {
            name: name.to_string(),
            key: img.key.to_string(),
            manifest: img.manifest.to_string(),
            action,
            seconds,
            engine,
        });
        self.out.done.insert(name, (inputs, img));
    }

    fn fail(&mut self, name: &TargetName, why: String) {
        self.progress.failed.insert(name.clone());
        self.out.failed.insert(name.clone(), why);
    }
}
