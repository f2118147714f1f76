//! Stages "plan" and the builder: each selected recipe's mirror and input files are checked
//! before anything is built (a bad recipe fails at once); the builder image is built like
//! any image target; then every arch of every selected config gets its key, its builder
//! environment, and the config its version directory.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::core::apt::{SuiteId, SuiteSource};
use crate::core::gitsource::LockedSource;
use crate::core::names::{Digest, TargetName};
use crate::core::rootfs_lock::config_version;
use crate::core::rootfs_recipe::{KERNELCI_CORE, KERNELCI_CORE_DEBOS_DIR};
use crate::core::urlsource::LockedUrl;
use crate::gitpins;
use crate::gitstore::GitStore;
use crate::ops::Workspace;
use crate::rootfs::plan::{self, RootfsJob};
use crate::rootfs::recipes::mirror_of;
use crate::rootfs::{artifact, inputs, RootfsRecipe, BUILDER_TARGET};
use crate::urlpins;

/// A selected recipe with what its keys need besides the builder image.
pub(super) struct Scanned {
    recipe: RootfsRecipe,
    mirror: String,
    /// The suite it installs from, pinned in the rootfs lockfile.
    pub suite: SuiteSource,
    inputs: inputs::RecipeInputs,
    /// The pinned kernelci-core's files, exported for this run (removed when dropped).
    _tree: Option<tempfile::TempDir>,
}

/// Where the recipes that name kernelci-core get it from in this run.
#[derive(Clone, Copy)]
pub(super) enum CoreTree<'a> {
    /// The commit the lockfile pins, from the store.
    Pinned(&'a GitStore, &'a BTreeMap<String, LockedSource>),
    /// A kernelci-core checkout (`--kernelci-core PATH`, for development): its files are
    /// the key facts, and the lockfile is not written.
    Local(&'a Path),
}

/// A selected config, planned.
pub(super) struct Prepared {
    pub recipe: RootfsRecipe,
    /// The version directory's name (the config's directory holds it).
    pub version: String,
    /// Every arch of the recipe (the version depends on all of them).
    pub jobs: Vec<RootfsJob>,
    /// The arches this run builds (`--arch`, or all).
    pub selected: Vec<String>,
    /// Arch → the builder container's environment.
    pub env: BTreeMap<String, Vec<String>>,
    /// The recipe's input files, as sent to the builder.
    pub tar: Arc<Vec<u8>>,
}

impl Prepared {
    /// `<config>/<version>`: where the files are uploaded.
    pub fn dir(&self) -> String {
        format!("{}/{}", self.recipe.name, self.version)
    }

    pub fn selected_jobs(&self) -> impl Iterator<Item = &RootfsJob> {
        self.jobs.iter().filter(|j| self.selected.contains(&j.arch))
    }
}

/// Every selected recipe's mirror and inputs, checked before the builder image is built.
pub(super) fn scan(
    ws: &Workspace,
    recipes_dir: &Path,
    selected: Vec<RootfsRecipe>,
    core: CoreTree<'_>,
) -> anyhow::Result<Vec<Scanned>> {
    selected
        .into_iter()
        .map(|recipe| {
            let mirror = mirror_of(recipes_dir, &recipe, ws.env.debian_mirror.as_deref())?;
            let suite = crate::aptpins::rootfs_suite(&mirror, &recipe)?;
            let mut exported = None;
            let local;
            let tree = match (recipe.uses_kernelci_core(), core) {
                (false, _) => inputs::Tree::Dir(recipes_dir),
                (true, CoreTree::Local(checkout)) => {
                    local = checkout.join(KERNELCI_CORE_DEBOS_DIR);
                    inputs::Tree::Dir(&local)
                }
                (true, CoreTree::Pinned(store, pins)) => {
                    let pin = pins
                        .get(KERNELCI_CORE)
                        .expect("the recipe's sources are pinned before the scan");
                    let dir = tempfile::tempdir()?;
                    store.export(KERNELCI_CORE, pin, KERNELCI_CORE_DEBOS_DIR, dir.path())?;
                    inputs::Tree::Pinned(exported.insert(dir).path())
                }
            };
            let inputs = inputs::scan(recipes_dir, tree, &recipe)?;
            Ok(Scanned {
                recipe,
                mirror,
                suite,
                inputs,
                _tree: exported,
            })
        })
        .collect()
}

/// The builder target's name.
pub fn builder_name() -> TargetName {
    BUILDER_TARGET.parse().expect("valid target name")
}

/// Every pin a run's builds see, and where their served copies come from.
pub(super) struct RunPins<'a> {
    pub apt: &'a BTreeMap<SuiteId, Digest>,
    pub git_store: &'a GitStore,
    pub git: &'a BTreeMap<String, LockedSource>,
    pub urls: &'a BTreeMap<String, LockedUrl>,
    /// The certificate of the store's download authority ([`crate::mitm`]).
    pub ca_pem: &'a str,
}

/// Keys, environments, input tars and version directories of every scanned recipe.
pub(super) fn plan(
    scanned: Vec<Scanned>,
    builder_manifest: &Digest,
    arches: &[String],
    pins: &RunPins<'_>,
) -> anyhow::Result<Vec<Prepared>> {
    scanned
        .into_iter()
        .map(|s| plan_one(s, builder_manifest, arches, pins))
        .collect()
}

fn plan_one(
    s: Scanned,
    builder: &Digest,
    arches: &[String],
    pins: &RunPins<'_>,
) -> anyhow::Result<Prepared> {
    let Scanned {
        recipe: r,
        mirror,
        suite,
        inputs,
        _tree,
    } = s;
    let mut git = crate::core::gitsource::pins_for(&r.git_source, pins.git);
    let urls = crate::core::urlsource::pins_for(&r.url_source, pins.urls);
    if !inputs.pinned {
        // A kernelci-core checkout's files are the facts, not a pin.
        git.remove(KERNELCI_CORE);
    }
    let source = plan::Source {
        mirror: &mirror,
        apt_index: pins.apt.get(&suite.id),
        git: &git,
        urls: &urls,
    };
    let files = inputs.key_files();
    let mut jobs = Vec::new();
    let mut env = BTreeMap::new();
    for arch in &r.arch_list {
        let facts = plan::facts(
            &r,
            arch,
            builder,
            &source,
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
            memory: r.memory_bytes(),
        });
    }
    let selected = r
        .arch_list
        .iter()
        .filter(|a| arches.is_empty() || arches.contains(a))
        .cloned()
        .collect();
    // The served copies of the git sources its script clones go into the build with its
    // files (kernelci-core's files are already there), and the git configuration that
    // sends every other URL nowhere, even when there are none; and the certificate its
    // tools trust for pinned https downloads (served by the proxy).
    let mut cloned = git;
    cloned.remove(KERNELCI_CORE);
    let served = match r.script.is_none() {
        true => None,
        false => {
            let dir = tempfile::tempdir()?;
            gitpins::serve(pins.git_store, &cloned, dir.path())?;
            urlpins::serve(pins.ca_pem, dir.path())?;
            Some(dir)
        }
    };
    let served = served.as_ref().map(|d| d.path());
    let tar = Arc::new(inputs::pack_with(&inputs, r.source_date_epoch, served)?);
    let keys: BTreeMap<String, Digest> = jobs
        .iter()
        .map(|j| (j.arch.clone(), j.key.clone()))
        .collect();
    Ok(Prepared {
        version: config_version(r.source_date_epoch, &keys),
        recipe: r,
        jobs,
        selected,
        env,
        tar,
    })
}
