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
use crate::engine::{DockerEngine, Engine};
use crate::image;
use crate::printer::Printer;
use crate::registry::Registry;
use crate::settings::EngineSettings;
use crate::store::{Store, StoredImage};
use crate::workspace::Workspace;

/// How a target that is neither stored nor an index gets made: pulled from the registry
/// cache (with `--registry`), else built by the engine, connected on first use (a build
/// whose targets are all stored or cached never needs Docker). The unit tests give it the
/// in-memory engine.
#[derive(Clone)]
pub(super) struct EngineMaker<E> {
    engine: Arc<OnceCell<E>>,
    connect: Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<E>> + Send + Sync>,
    registry: Option<Registry>,
    prefix: String,
}

impl EngineMaker<DockerEngine> {
    pub fn docker(settings: EngineSettings, registry: Option<Registry>, prefix: String) -> Self {
        EngineMaker {
            engine: Arc::new(OnceCell::new()),
            connect: Arc::new(move || {
                let settings = settings.clone();
                Box::pin(async move { Ok(DockerEngine::connect(&settings).await?) })
            }),
            registry,
            prefix,
        }
    }
}

impl<E: Engine> EngineMaker<E> {
    /// A maker over an engine already at hand (the unit tests' fake).
    #[cfg(test)]
    pub fn with(engine: E, prefix: String) -> Self {
        EngineMaker {
            engine: Arc::new(OnceCell::new_with(Some(engine))),
            connect: Arc::new(|| Box::pin(async { anyhow::bail!("the engine was given") })),
            registry: None,
            prefix,
        }
    }
}

impl<E: Engine> EngineMaker<E> {
    pub async fn make(&self, job: Job) -> anyhow::Result<(StoredImage, TargetAction)> {
        let name = &job.recipe.name;
        if let Some(reg) = &self.registry {
            if let Some(img) = push::fetch(reg, &job.store, &self.prefix, name, &job.key).await? {
                return Ok((img, TargetAction::Pulled));
            }
        }
        let engine = self
            .engine
            .get_or_try_init(|| (self.connect)())
            .await?
            .clone();
        job.run(&engine).await.map(|img| (img, TargetAction::Built))
    }
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
pub(super) type TaskResult = (
    TargetName,
    KeyInputs,
    anyhow::Result<(StoredImage, TargetAction)>,
    f64,
);

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
            self.succeed(t.name.clone(), inputs, img, TargetAction::Cached, 0.0);
            return Ok(true);
        }
        if let TargetKind::Index { members } = &t.kind {
            let img = self.write_index(t, &key, members)?;
            self.succeed(t.name.clone(), inputs, img, TargetAction::Built, 0.0);
            return Ok(true);
        }
        if self.running.len() < self.opts.jobs.max(1) {
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
        result: anyhow::Result<(StoredImage, TargetAction)>,
        secs: f64,
    ) -> anyhow::Result<()> {
        match result {
            Ok((img, action)) => {
                let verb = if action == TargetAction::Pulled {
                    "Pulled"
                } else {
                    "Built"
                };
                let took = human_secs(secs);
                self.printer
                    .status(verb, format!("{name} → {} in {took}", img.manifest.short()));
                if action == TargetAction::Built {
                    self.store.record_duration(&format!("image:{name}"), secs);
                }
                self.succeed(name, inputs, img, action, secs);
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
    ) {
        self.progress.started.insert(name.clone());
        self.progress.done.insert(name.clone());
        self.out.outcomes.push(Outcome {
            name: name.to_string(),
            key: img.key.to_string(),
            manifest: img.manifest.to_string(),
            action,
            seconds,
        });
        self.out.done.insert(name, (inputs, img));
    }

    fn fail(&mut self, name: &TargetName, why: String) {
        self.progress.failed.insert(name.clone());
        self.out.failed.insert(name.clone(), why);
    }
}
