//! The workspace a command works in: where things are ([`Paths`]), and the recipes,
//! images lockfile, contexts and store loaded from there once ([`Workspace`]). Below the
//! commands: every command and every engine under them (image builds, rootfs) shares it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::context::{self, ContextEntry};
use crate::core::apt::SuiteId;
use crate::core::graph::Graph;
use crate::core::lockfile::Lockfile;
use crate::core::names::{Digest, TargetName};
use crate::core::plan::{self as core_plan, ContextFingerprint, PlannedTarget, Sources};
use crate::core::recipe::{self, Settings, TargetRecipe};
use crate::fsutil;
use crate::printer::Printer;
use crate::store::Store;

/// Where things are: the recipe tree, the lockfile and the store.
#[derive(Debug, Clone)]
pub struct Paths {
    pub images: PathBuf,
    pub lockfile: PathBuf,
    pub store: PathBuf,
}

/// Takes the [`fsutil::LockfileLock`] of `lockfile` (kept under `store`), saying on stderr
/// when another kci-build holds it and this one waits.
pub fn lock_lockfile(
    store: &Path,
    lockfile: &Path,
    printer: &Printer,
) -> anyhow::Result<fsutil::LockfileLock> {
    fsutil::LockfileLock::acquire(&Store::at(store).locks_dir(), lockfile, || {
        printer.status(
            "Blocking",
            format!(
                "waiting for {}: another kci-build is updating it",
                lockfile.display()
            ),
        )
    })
    .with_context(|| format!("locking {}", lockfile.display()))
}

/// Recipes, lockfile, contexts and store, loaded once per command.
pub struct Workspace {
    pub paths: Paths,
    pub settings: Settings,
    pub graph: Graph,
    pub lock: Lockfile,
    /// The lockfile's text as read (None when it does not exist yet).
    pub lock_text: Option<String>,
    /// What the environment gave: engine, Debian mirror, registry settings.
    pub env: crate::settings::Settings,
    pub store: Store,
    /// The apt index pins keys are computed with: the lockfile's, plus any
    /// [`crate::aptpins`] resolved for this run.
    pub pins: BTreeMap<SuiteId, Digest>,
}

impl Workspace {
    pub fn load(paths: &Paths, env: &crate::settings::Settings) -> anyhow::Result<Workspace> {
        let config_path = paths.images.join("config.toml");
        let text = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "cannot read {}: is --images pointing at a recipe tree?",
                config_path.display()
            )
        })?;
        let settings = Settings::parse(&config_path, &text)?;
        let mut targets = Vec::new();
        for file in image_files(&paths.images)? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            targets.extend(recipe::parse_image_file(&file, &text)?);
        }
        let graph = Graph::new(targets)?;
        let lock_text = fsutil::read_optional(&paths.lockfile)
            .with_context(|| format!("reading {}", paths.lockfile.display()))?;
        let lock = match &lock_text {
            Some(t) => Lockfile::parse(&paths.lockfile, t)?,
            None => Lockfile::default(),
        };
        let store = Store::at(&paths.store);
        let pins = lock.pins();
        Ok(Workspace {
            pins,
            paths: paths.clone(),
            settings,
            graph,
            lock,
            lock_text,
            env: env.clone(),
            store,
        })
    }

    /// What decides keys beyond the recipes: the machine's mirror and the pins.
    pub fn sources(&self) -> Sources<'_> {
        Sources {
            mirror: self.env.debian_mirror.as_deref(),
            apt_index: &self.pins,
        }
    }

    /// The requested targets and their ancestors, in dependency order.
    pub fn selection(&self, requested: &[TargetName]) -> anyhow::Result<Vec<&TargetRecipe>> {
        Ok(self.graph.closure(requested)?)
    }

    /// Scans the build contexts of `targets` (each directory once).
    pub fn scan_contexts(
        &self,
        targets: &[&TargetRecipe],
    ) -> anyhow::Result<BTreeMap<TargetName, Vec<ContextEntry>>> {
        let mut by_dir: BTreeMap<&Path, Vec<ContextEntry>> = BTreeMap::new();
        for t in targets {
            if !by_dir.contains_key(t.context_dir.as_path()) {
                by_dir.insert(&t.context_dir, context::scan(&t.context_dir)?);
            }
        }
        Ok(targets
            .iter()
            .map(|t| (t.name.clone(), by_dir[t.context_dir.as_path()].clone()))
            .collect())
    }

    pub fn plan<'w>(
        &'w self,
        targets: &[&'w TargetRecipe],
        contexts: &BTreeMap<TargetName, Vec<ContextEntry>>,
    ) -> anyhow::Result<Vec<PlannedTarget<'w>>> {
        let fps: BTreeMap<TargetName, ContextFingerprint> = contexts
            .iter()
            .map(|(n, e)| (n.clone(), context::fingerprint(e)))
            .collect();
        Ok(core_plan::plan(
            targets,
            &self.settings,
            &fps,
            self.sources(),
            &self.lock,
            |k| self.store.lookup(k).map(|i| i.manifest),
        )?)
    }
}

impl Workspace {
    /// The plan of the requested targets and their dependencies (all when none are given).
    pub fn plan_for(&self, requested: &[TargetName]) -> anyhow::Result<Vec<PlannedTarget<'_>>> {
        let sel = self.selection(requested)?;
        let contexts = self.scan_contexts(&sel)?;
        self.plan(&sel, &contexts)
    }

    /// The stored image of a planned target, or an error saying to build it first.
    pub fn stored(&self, p: &PlannedTarget<'_>) -> anyhow::Result<crate::store::StoredImage> {
        p.key
            .as_ref()
            .and_then(|k| self.store.lookup(k))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} is not built for its current inputs: run `kci-build build` first",
                    p.recipe.name
                )
            })
    }
}

/// `images/*/image.toml`, sorted.
fn image_files(images: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir(images).with_context(|| format!("reading {}", images.display()))?;
    for e in dir {
        let p = e?.path().join(context::RECIPE_FILE);
        if p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}
