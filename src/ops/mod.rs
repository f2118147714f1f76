//! One module per command. Each loads what it needs through [`Workspace`], runs, and
//! returns data or an error; `main` maps the result to an exit code.

pub mod build;
pub mod check;
pub mod deploy;
pub mod diff;
pub mod import;
pub mod load;
pub mod lock;
pub mod plan;
pub mod push;
pub mod rootfs;
pub mod why;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::context::{self, ContextEntry};
use crate::core::graph::Graph;
use crate::core::lockfile::Lockfile;
use crate::core::names::TargetName;
use crate::core::plan::{self as core_plan, ContextFingerprint, PlannedTarget};
use crate::core::recipe::{self, Settings, TargetRecipe};
use crate::error::{ExitCode, Fault};
use crate::fsutil;
use crate::printer::Printer;
use crate::store::Store;

/// The exit code of a command's error: each typed error in the chain says whose fault it is
/// ([`crate::error::Fault`]); an environment fault anywhere wins.
pub fn exit_code(err: &anyhow::Error) -> ExitCode {
    crate::error::classify(err, fault_of)
}

/// The fault of one error of the chain, when its type is one of kci-build's.
fn fault_of(cause: &(dyn std::error::Error + 'static)) -> Option<Fault> {
    if let Some(e) = cause.downcast_ref::<crate::store::StoreError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::docker::DaemonError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::bootstrap::BootstrapError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::registry::RegistryError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::storage::StorageError>() {
        return Some(e.fault());
    }
    None
}

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
    fsutil::LockfileLock::acquire(&store.join("locks"), lockfile, || {
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
    pub mirror: Option<String>,
    pub store: Store,
}

impl Workspace {
    pub fn load(paths: &Paths) -> anyhow::Result<Workspace> {
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
        Ok(Workspace {
            paths: paths.clone(),
            settings,
            graph,
            lock,
            lock_text,
            mirror: crate::bootstrap::resolve_mirror(),
            store,
        })
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
            self.mirror.as_deref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on: connecting is refused at once.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr.to_string()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn an_unreachable_registry_exits_2() {
        let mut registry = crate::registry::Registry::new(&closed_port()).unwrap();
        registry.max_attempts = 1;
        let digest = crate::core::names::Digest::of(b"x");
        let err = runtime()
            .block_on(registry.blob_exists("kernelci/gcc-12", &digest))
            .unwrap_err();
        assert!(
            matches!(err, crate::registry::RegistryError::Transport { .. }),
            "{err:?}"
        );
        let err = Err::<(), _>(err).context("pushing gcc-12").unwrap_err();
        assert_eq!(exit_code(&err), ExitCode::Environment, "{err:?}");
    }

    #[test]
    fn an_unreachable_storage_api_exits_2() {
        let url = format!("http://{}/", closed_port());
        let storage = crate::storage::Storage::open_with_token(
            &url,
            Some("http://files.invalid/"),
            None,
            Some("secret".into()),
        )
        .unwrap();
        let err = runtime()
            .block_on(storage.fetch("bookworm/20260101.0", "amd64/manifest.json"))
            .unwrap_err();
        let err = anyhow::Error::new(err).context("uploading bookworm/20260101.0");
        assert_eq!(exit_code(&err), ExitCode::Environment, "{err:?}");
    }

    #[test]
    fn refusals_and_bad_recipes_are_bad_input_and_the_environment_wins() {
        let refused = crate::storage::StorageError::Refused {
            url: "http://storage.invalid/".into(),
            status: 403,
        };
        let err = anyhow::Error::new(refused).context("uploading");
        assert_eq!(exit_code(&err), ExitCode::BadInput);
        let failed = crate::docker::DaemonError::BuildFailed("step 3 exited 1".into());
        assert_eq!(exit_code(&anyhow::Error::new(failed)), ExitCode::BadInput);
        let plain = anyhow::anyhow!("recipe images/x/image.toml: unknown field");
        assert_eq!(exit_code(&plain), ExitCode::BadInput);
        // mmdebstrap missing is reported through a transparent variant: still the machine's.
        let missing =
            crate::bootstrap::BootstrapError::Environment(crate::error::EnvironmentError {
                message: "mmdebstrap not found".into(),
                hint: "apt install mmdebstrap".into(),
            });
        assert_eq!(
            exit_code(&anyhow::Error::new(missing).context("bootstrapping")),
            ExitCode::Environment
        );
        let store = crate::store::StoreError {
            root: "/store".into(),
            context: "writing a blob".into(),
            source: std::io::Error::other("No space left on device"),
        };
        let err = anyhow::Error::new(store).context("building gcc-12: the build failed");
        assert_eq!(exit_code(&err), ExitCode::Environment);
    }
}
