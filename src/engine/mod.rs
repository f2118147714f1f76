//! The container engine behind one seam: everything an image build and a rootfs build ask
//! of it — build, save (export), load, tag, remove an image; create, upload into, start
//! (run), follow the log (attach), wait for, copy a file out of, list and remove a
//! container — as one trait, [`Engine`].
//!
//! [`docker`] is the real implementation (bollard, the Docker Engine API; never the docker
//! CLI); the integration tests run it against the real daemon. [`fake`] is an in-memory
//! engine for unit tests of the image scheduler and the rootfs job runner: its builds make
//! real `docker save` archives, so everything above the seam runs as it does on Docker.
//! [`pool`] spreads builds over several engines, named as Docker [`contexts`].

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::error::{EnvironmentError, Fault};

pub mod contexts;
pub mod docker;
#[cfg(test)]
pub mod fake;
pub mod pool;
pub mod swarm;

pub use docker::DockerEngine;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Unreachable(#[from] EnvironmentError),
    /// A build step failed: the recipe's problem, not the machine's.
    #[error("the build failed: {0}")]
    BuildFailed(String),
    #[error("Docker API: {context}: {source}")]
    Api {
        context: String,
        source: bollard::errors::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl DaemonError {
    /// A failed build step is the recipe's; everything else is the daemon's or the disk's.
    pub fn fault(&self) -> Fault {
        match self {
            DaemonError::BuildFailed(_) => Fault::BadInput,
            DaemonError::Unreachable(_) | DaemonError::Api { .. } | DaemonError::Io { .. } => {
                Fault::Environment
            }
        }
    }
}

/// What a build asks of the daemon.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub context_tar: Vec<u8>,
    pub dockerfile: String,
    pub tag: String,
    pub build_args: HashMap<String, String>,
}

/// One download's bytes: what the archive endpoint sends, a tar of one entry.
pub type ArchiveStream = BoxStream<'static, Result<Bytes, bollard::errors::Error>>;

/// A container's log, as it is written, until the container stops.
pub type LogStream = BoxStream<'static, Result<Bytes, DaemonError>>;

/// Where a container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Missing,
    /// Created (inputs uploaded or not) but never started.
    Created,
    Running,
    Exited(i64),
}

/// What a builder container is made of. Every one runs with CAP_SYS_ADMIN, no seccomp or
/// AppArmor profile, the host's network, an anonymous volume per `volumes` entry and a tmpfs
/// per `tmpfs` entry (the rootfs builder says why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub hostname: String,
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
    /// Memory limit in bytes (tmpfs pages count), none when `None`.
    pub memory: Option<u64>,
}

/// What kci-build needs of a container engine.
pub trait Engine: Clone + Send + Sync + 'static {
    /// The engine's CPU, as OCI names architectures (`amd64`, `arm64`…).
    fn arch(&self) -> impl Future<Output = Result<String, DaemonError>> + Send;
    /// Whether the engine still answers (a pool retires one that does not).
    fn ping(&self) -> impl Future<Output = Result<(), DaemonError>> + Send;

    // Images: the image build loop.
    fn has_image(&self, id: &str) -> impl Future<Output = Result<bool, DaemonError>> + Send;
    /// Loads a `docker load` archive from a file.
    fn load(&self, archive: &Path) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// Builds and returns the image id; every output line goes to `log`.
    fn build(
        &self,
        req: BuildRequest,
        log: impl FnMut(&str) + Send,
    ) -> impl Future<Output = Result<String, DaemonError>> + Send;
    /// Writes `docker save <id>` to `dest`.
    fn save(&self, id: &str, dest: &Path) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// Removes an image (or one tag of it); a missing one is fine.
    fn remove_image(&self, id: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// Tags image `id` as `repo:tag`.
    fn tag(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<(), DaemonError>> + Send;

    // Containers: the rootfs builds.
    fn state(&self, name: &str)
        -> impl Future<Output = Result<ContainerState, DaemonError>> + Send;
    fn create(
        &self,
        name: &str,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// Unpacks `tar` at `/` of the container.
    fn upload(
        &self,
        name: &str,
        tar: Vec<u8>,
    ) -> impl Future<Output = Result<(), DaemonError>> + Send;
    fn start(&self, name: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// The whole log from the container's start, following it until it stops.
    fn logs(&self, name: &str) -> LogStream;
    /// Returns once the engine has recorded the container's exit.
    fn wait(&self, name: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// The archive stream of `path` in the (stopped) container; nothing is requested until
    /// it is polled.
    fn archive(&self, name: &str, path: &str) -> ArchiveStream;
    /// Removes the container and its anonymous volumes; a missing one is fine.
    fn remove_container(&self, name: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// `(name, label value)` of every container carrying `label`, running or not.
    fn list(
        &self,
        label: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, DaemonError>> + Send;
}
