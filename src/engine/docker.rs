//! The Docker Engine as an [`Engine`], through its HTTP API with bollard.
//!
//! The daemon only *runs* builds. kci-build hands it a normalised context, gets the result
//! back with `docker save`, and loads canonical images from its own store with
//! `docker load` when a child needs its parent; rootfs builds are containers it creates,
//! feeds, follows and empties.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ImportImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{
    ArchiveStream, BuildRequest, ContainerSpec, ContainerState, DaemonError, Engine, LogStream,
};
use crate::error::EnvironmentError;
use crate::settings::EngineSettings;

#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
}

fn api(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Api { context, source }
}

impl DockerEngine {
    /// Connects to the daemon of `settings` (`DOCKER_HOST`; default: the local socket),
    /// negotiates the API version and pings, so an unreachable daemon is reported before any
    /// work starts.
    pub async fn connect(settings: &EngineSettings) -> Result<DockerEngine, EnvironmentError> {
        let host = settings
            .host
            .clone()
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |e: bollard::errors::Error| {
            EnvironmentError {
            message: format!("cannot reach the Docker daemon at {host}: {e}"),
            hint: "start it (`systemctl start docker`, or `dockerd &` as root), or point DOCKER_HOST at a running daemon".into(),
        }
        };
        let docker = match host.split_once("://") {
            Some(("unix", path)) => {
                Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
            }
            Some(("tcp" | "http", _)) => {
                Docker::connect_with_http(&host, 120, bollard::API_DEFAULT_VERSION)
            }
            _ => Err(bollard::errors::Error::UnsupportedURISchemeError { uri: host.clone() }),
        }
        .map_err(unreachable)?;
        let mut docker = docker.negotiate_version().await.map_err(unreachable)?;
        // How long a request may wait for the daemon's answer (not for a stream's end).
        if let Some(timeout) = settings.request_timeout {
            docker.set_timeout(timeout);
        }
        docker.ping().await.map_err(unreachable)?;
        tracing::debug!(version = %docker.client_version(), "connected to the Docker daemon");
        Ok(DockerEngine { docker })
    }

    /// The bollard client, for the Swarm API ([`super::swarm`]).
    pub(crate) fn client(&self) -> &Docker {
        &self.docker
    }

    /// The same connection, waiting at most `timeout` for the daemon to answer a request.
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> DockerEngine {
        self.docker.set_timeout(timeout);
        self
    }
}

impl Engine for DockerEngine {
    async fn arch(&self) -> Result<String, DaemonError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(api("asking the engine its platform"))?;
        Ok(super::pool::oci_arch(
            info.architecture.as_deref().unwrap_or("x86_64"),
        ))
    }

    async fn ping(&self) -> Result<(), DaemonError> {
        self.docker.ping().await.map_err(api("ping"))?;
        Ok(())
    }

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

    async fn remove_image(&self, id: &str) -> Result<(), DaemonError> {
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

    async fn state(&self, name: &str) -> Result<ContainerState, DaemonError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                Ok(if s.running.unwrap_or(false) {
                    ContainerState::Running
                } else if matches!(
                    s.status,
                    Some(bollard::models::ContainerStateStatusEnum::CREATED)
                ) {
                    ContainerState::Created
                } else {
                    ContainerState::Exited(s.exit_code.unwrap_or(-1))
                })
            }
            Err(e) if is_404(&e) => Ok(ContainerState::Missing),
            Err(e) => Err(api(format!("inspecting container {name}"))(e)),
        }
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<(), DaemonError> {
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(spec.cmd.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            hostname: Some(spec.hostname.clone()),
            working_dir: Some("/".into()),
            volumes: Some(spec.volumes.clone()),
            host_config: Some(HostConfig {
                cap_add: Some(vec!["SYS_ADMIN".into()]),
                security_opt: Some(vec![
                    "seccomp=unconfined".into(),
                    "apparmor=unconfined".into(),
                ]),
                network_mode: Some("host".into()),
                tmpfs: Some(
                    spec.tmpfs
                        .iter()
                        .map(|p| (p.clone(), "rw,exec,dev,suid,mode=0755".to_owned()))
                        .collect(),
                ),
                memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(api(format!("creating container {name}")))?;
        Ok(())
    }

    async fn upload(&self, name: &str, tar: Vec<u8>) -> Result<(), DaemonError> {
        self.docker
            .upload_to_container(
                name,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(tar.into()),
            )
            .await
            .map_err(api(format!("uploading /kci to {name}")))
    }

    async fn start(&self, name: &str) -> Result<(), DaemonError> {
        self.docker
            .start_container(name, None)
            .await
            .map_err(api(format!("starting {name}")))
    }

    fn logs(&self, name: &str) -> LogStream {
        let context = format!("reading the log of {name}");
        self.docker
            .logs(
                name,
                Some(
                    LogsOptionsBuilder::new()
                        .follow(true)
                        .stdout(true)
                        .stderr(true)
                        .build(),
                ),
            )
            .map(move |chunk| chunk.map(|c| c.into_bytes()).map_err(api(context.clone())))
            .boxed()
    }

    async fn wait(&self, name: &str) -> Result<(), DaemonError> {
        let mut waits = self.docker.wait_container(name, None);
        while let Some(r) = waits.next().await {
            match r {
                Ok(_) => {}
                // bollard reports a non-zero exit as an error; the state has the code.
                Err(bollard::errors::Error::DockerContainerWaitError { .. }) => {}
                Err(e) => return Err(api(format!("waiting for {name}"))(e)),
            }
        }
        Ok(())
    }

    fn archive(&self, name: &str, path: &str) -> ArchiveStream {
        self.docker
            .download_from_container(
                name,
                Some(
                    DownloadFromContainerOptionsBuilder::new()
                        .path(path)
                        .build(),
                ),
            )
            .boxed()
    }

    async fn remove_container(&self, name: &str) -> Result<(), DaemonError> {
        // v: its anonymous volumes go with it.
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(e) => Err(api(format!("removing {name}"))(e)),
        }
    }

    async fn list(&self, label: &str) -> Result<Vec<(String, String)>, DaemonError> {
        let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        let cs = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(api("listing rootfs build containers"))?;
        Ok(cs
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                let value = c.labels?.get(label)?.clone();
                Some((name, value))
            })
            .collect())
    }
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
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
