//! The Docker Engine, reached through its HTTP API with bollard (never the docker CLI).
//!
//! The daemon only *runs* builds. kci-build hands it a normalised context, gets the result
//! back with `docker save`, and loads canonical images from its own store with
//! `docker load` when a child needs its parent.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, ImportImageOptionsBuilder, RemoveImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::error::{EnvironmentError, Fault};

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

/// The engine operations kci-build needs; the Docker implementation is below, and the
/// integration tests run it against the real daemon.
pub trait Engine: Clone + Send + Sync + 'static {
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
    fn remove(&self, id: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// Tags image `id` as `repo:tag`.
    fn tag(
        &self,
        id: &str,
        repo: &str,
        tag: &str,
    ) -> impl Future<Output = Result<(), DaemonError>> + Send;
}

#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
}

fn api(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Api { context, source }
}

impl DockerEngine {
    /// Connects to `$DOCKER_HOST` (default: the local socket), negotiates the API version
    /// and pings, so an unreachable daemon is reported before any work starts.
    pub async fn connect() -> Result<DockerEngine, EnvironmentError> {
        let host = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |e: bollard::errors::Error| {
            EnvironmentError {
            message: format!("cannot reach the Docker daemon at {host}: {e}"),
            hint: "start it (`systemctl start docker`, or `dockerd &` as root), or point DOCKER_HOST at a running daemon".into(),
        }
        };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let mut docker = docker.negotiate_version().await.map_err(unreachable)?;
        // How long a request may wait for the daemon's answer (not for a stream's end).
        if let Some(secs) = std::env::var("KCI_BUILD_DOCKER_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            docker.set_timeout(std::time::Duration::from_secs(secs.max(1)));
        }
        docker.ping().await.map_err(unreachable)?;
        tracing::debug!(version = %docker.client_version(), "connected to the Docker daemon");
        Ok(DockerEngine { docker })
    }

    /// The same connection, waiting at most `timeout` for the daemon to answer a request.
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> DockerEngine {
        self.docker.set_timeout(timeout);
        self
    }

    /// The raw API, for the rootfs builder's container calls.
    pub fn api(&self) -> &Docker {
        &self.docker
    }
}

impl Engine for DockerEngine {
    async fn has_image(&self, id: &str) -> Result<bool, DaemonError> {
        match self.docker.inspect_image(id).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(api(format!("inspecting {id}"))(e)),
        }
    }

    async fn load(&self, archive: &Path) -> Result<(), DaemonError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| DaemonError::Io {
                context: format!("opening {}", archive.display()),
                source,
            })?;
        let body = tokio_util_like::chunks(file);
        let mut s = self.docker.import_image_stream(
            ImportImageOptionsBuilder::default().quiet(true).build(),
            body,
            None,
        );
        while let Some(item) = s.next().await {
            item.map_err(api("loading an image"))?;
        }
        Ok(())
    }

    async fn build(
        &self,
        req: BuildRequest,
        mut log: impl FnMut(&str) + Send,
    ) -> Result<String, DaemonError> {
        let opts = BuildImageOptionsBuilder::default()
            .dockerfile(&req.dockerfile)
            .t(&req.tag)
            .nocache(true)
            .rm(true)
            .forcerm(true)
            .networkmode("host")
            .buildargs(&req.build_args)
            .build();
        let mut stream =
            self.docker
                .build_image(opts, None, Some(bollard::body_full(req.context_tar.into())));
        let mut pending = String::new();
        let mut id = None;
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    flush_lines(&mut pending, &mut log, true);
                    return Err(DaemonError::BuildFailed(error.trim().to_owned()));
                }
                Err(e) => return Err(api("building")(e)),
            };
            if let Some(s) = info.stream {
                pending.push_str(&s);
                flush_lines(&mut pending, &mut log, false);
            }
            if let Some(aux) = info.aux.and_then(|a| a.id) {
                id = Some(aux);
            }
        }
        flush_lines(&mut pending, &mut log, true);
        match id {
            Some(id) => Ok(id),
            None => {
                let img = self
                    .docker
                    .inspect_image(&req.tag)
                    .await
                    .map_err(api(format!("inspecting {}", req.tag)))?;
                img.id.ok_or_else(|| {
                    DaemonError::BuildFailed("the daemon reported no image id".into())
                })
            }
        }
    }

    async fn save(&self, id: &str, dest: &Path) -> Result<(), DaemonError> {
        let io = |source| DaemonError::Io {
            context: format!("writing {}", dest.display()),
            source,
        };
        let mut f = tokio::fs::File::create(dest).await.map_err(io)?;
        let mut s = self.docker.export_image(id);
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(api(format!("saving {id}")))?;
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.flush().await.map_err(io)?;
        Ok(())
    }

    async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), DaemonError> {
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        self.docker
            .tag_image(id, Some(opts))
            .await
            .map_err(api(format!("tagging {id} as {repo}:{tag}")))
    }

    async fn remove(&self, id: &str) -> Result<(), DaemonError> {
        match self
            .docker
            .remove_image(
                id,
                Some(RemoveImageOptionsBuilder::default().force(true).build()),
                None,
            )
            .await
        {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(api(format!("removing {id}"))(e)),
        }
    }
}

/// The build log's `stream` field is not line-aligned: emit complete lines only.
fn flush_lines(pending: &mut String, log: &mut impl FnMut(&str), all: bool) {
    while let Some(i) = pending.find('\n') {
        let line: String = pending.drain(..=i).collect();
        log(&strip_ansi(line.trim_end_matches(['\n', '\r'])));
    }
    if all && !pending.is_empty() {
        log(&strip_ansi(pending));
        pending.clear();
    }
}

/// Drops terminal colour sequences (`ESC [ … m`) the daemon puts around stderr output.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

mod tokio_util_like {
    //! A file as a stream of `Bytes` chunks, without pulling in tokio-util.
    use bytes::Bytes;
    use futures_util::Stream;
    use tokio::io::AsyncReadExt;

    pub fn chunks(
        file: tokio::fs::File,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(Some(file), |state| async move {
            let mut file = state?;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_reassembled() {
        let mut got = Vec::new();
        let mut pending = String::new();
        for part in [
            "Step 1/2 : FR",
            "OM scratch\n ---> abc\n\x1b[91mSte",
            "p 2/2\x1b[0m",
        ] {
            pending.push_str(part);
            super::flush_lines(&mut pending, &mut |l: &str| got.push(l.to_owned()), false);
        }
        super::flush_lines(&mut pending, &mut |l: &str| got.push(l.to_owned()), true);
        assert_eq!(got, ["Step 1/2 : FROM scratch", " ---> abc", "Step 2/2"]);
    }
}
