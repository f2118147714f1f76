//! One module per command, one contract: `ops::<cmd>::run(&Context, &<Cmd>Options) ->
//! Result<<Cmd>Report>`. A command loads what it needs through [`Context::workspace`], says
//! how it is going on stderr through [`Context::printer`], and returns a serialisable
//! [`Report`]; the runner (one floor up) owns locks, Ctrl-C, `--json` and the exit code, so
//! a driver (the Monday procedure) can call any command as a function and journal its report.
//! Commands do not call each other: what two share lives on a floor below.

pub mod apt_proxy;
pub mod build;
pub mod check;
pub mod deploy;
pub mod diff;
pub mod fetch;
pub mod gc;
pub mod import;
pub mod load;
pub mod lock;
pub mod plan;
pub mod prod;
pub mod push;
pub mod rootfs;
pub mod rootfs_task;
pub mod store;
pub mod why;

use crate::fsutil;
use crate::printer::Printer;
pub use crate::settings::Settings;
pub use crate::workspace::{lock_lockfile, Paths, Workspace};

/// What every command is given: where things are, how to talk to people, and the images
/// lockfile's lock when the runner took it for this command.
pub struct Context {
    pub paths: Paths,
    /// The environment's settings, resolved once.
    pub settings: Settings,
    pub printer: Printer,
    /// `-v`: stream build logs.
    pub verbose: bool,
    images_lock: std::sync::Mutex<Option<fsutil::LockfileLock>>,
    /// Other lockfiles the command writes, locked for all of it.
    held: std::sync::Mutex<Vec<fsutil::LockfileLock>>,
    store_lock: std::sync::Mutex<Option<crate::store::StoreLock>>,
}

impl Context {
    pub fn new(paths: Paths, settings: Settings, printer: Printer, verbose: bool) -> Context {
        Context {
            paths,
            settings,
            printer,
            verbose,
            images_lock: std::sync::Mutex::new(None),
            held: std::sync::Mutex::new(Vec::new()),
            store_lock: std::sync::Mutex::new(None),
        }
    }

    /// Takes the store-wide lock shared, for all of the command: builds, pushes and loads
    /// run side by side, and a sweep of the store (`gc`) waits for them (and they for it).
    /// The store's lock in `mode`, held by the caller (`gc`, `store verify`), saying so
    /// while it waits.
    pub fn lock_store(
        &self,
        mode: crate::store::LockMode,
    ) -> anyhow::Result<crate::store::StoreLock> {
        let store = crate::store::Store::at(&self.paths.store);
        Ok(store.lock(mode, || {
            self.printer.status(
                "Blocking",
                format!(
                    "waiting for the commands using the store {} to finish",
                    self.paths.store.display()
                ),
            )
        })?)
    }

    pub fn share_store(&self) -> anyhow::Result<()> {
        let store = crate::store::Store::at(&self.paths.store);
        let lock = store.lock(crate::store::LockMode::Shared, || {
            self.printer.status(
                "Blocking",
                format!(
                    "waiting for the sweep of the store {} to finish",
                    self.paths.store.display()
                ),
            )
        })?;
        *self.store_lock.lock().expect("not poisoned") = Some(lock);
        Ok(())
    }

    /// Takes the lock of another lockfile the command writes (the rootfs one), for all of it.
    pub fn lock_lockfile(&self, lockfile: &std::path::Path) -> anyhow::Result<()> {
        let lock = lock_lockfile(&self.paths.store, lockfile, &self.printer)?;
        self.held.lock().expect("not poisoned").push(lock);
        Ok(())
    }

    /// Takes the images lockfile's lock (waiting, and saying so, while another kci-build
    /// holds it); held until [`Context::release_images_lock`] or the end of the command.
    pub fn lock_images_lockfile(&self) -> anyhow::Result<()> {
        let lock = lock_lockfile(&self.paths.store, &self.paths.lockfile, &self.printer)?;
        *self.images_lock.lock().expect("not poisoned") = Some(lock);
        Ok(())
    }

    /// Lets other kci-builds at the images lockfile (rootfs does, once its builder is built).
    pub fn release_images_lock(&self) {
        self.images_lock.lock().expect("not poisoned").take();
    }

    /// Recipes, lockfile and store, loaded.
    pub fn workspace(&self) -> anyhow::Result<Workspace> {
        Workspace::load(&self.paths, &self.settings)
    }
}

/// What a command hands back: data for `--json`, a view for people, and a verdict.
pub trait Report: serde::Serialize {
    /// What people read when `--json` is not given (stdout for data such as a plan or a
    /// diff, stderr for status tables).
    fn show(&self, printer: &Printer);
    /// `Ok` when the command did what was asked; otherwise the error the exit code comes from.
    fn verdict(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A command whose result is text on stdout (`plan`, `why`, `diff`).
#[derive(Debug, serde::Serialize)]
pub struct TextReport {
    pub text: String,
}

impl Report for TextReport {
    fn show(&self, _: &Printer) {
        print!("{}", self.text);
    }
}

/// A command that reports through status lines only (`import`, `load`).
#[derive(Debug, Default, serde::Serialize)]
pub struct Done {}

impl Report for Done {
    fn show(&self, _: &Printer) {}
}

/// The exit code of a command's error: the services' typed errors ([`crate::exit`]) and the
/// procedure's (`prod`: git, commands, the site file), each asked its fault.
pub fn exit_code(err: &anyhow::Error) -> crate::error::ExitCode {
    crate::error::classify(err, |cause| {
        crate::exit::fault_of(cause).or_else(|| ops_fault_of(cause))
    })
}

fn ops_fault_of(cause: &(dyn std::error::Error + 'static)) -> Option<crate::error::Fault> {
    if let Some(e) = cause.downcast_ref::<crate::prod::git::GitError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::prod::commands::CommandError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<crate::prod::site::SiteLoadError>() {
        return Some(e.fault());
    }
    if let Some(e) = cause.downcast_ref::<rootfs::RootfsFailed>() {
        return Some(e.fault());
    }
    None
}
