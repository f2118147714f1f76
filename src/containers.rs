//! What a rootfs build needs of a container engine — create, upload, start, follow the log,
//! wait, copy a file out, list, remove — as one trait, [`Containers`], with the Docker
//! implementation here (bollard) and an in-memory fake ([`fake`]) for unit tests of the
//! rootfs job runner. The image-build half of the engine is [`crate::docker::Engine`].

use std::collections::HashMap;
use std::future::Future;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use crate::docker::{DaemonError, DockerEngine};

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
/// per `tmpfs` entry (see `crate::rootfs::builder::start` for why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub image: String,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub hostname: String,
    pub volumes: Vec<String>,
    pub tmpfs: Vec<String>,
}

/// The container operations of a rootfs build.
pub trait Containers: Clone + Send + Sync + 'static {
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
    /// Returns once the daemon has recorded the container's exit.
    fn wait(&self, name: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// The archive stream of `path` in the (stopped) container; nothing is requested until
    /// it is polled.
    fn archive(&self, name: &str, path: &str) -> ArchiveStream;
    /// Removes the container and its anonymous volumes; a missing one is fine.
    fn remove(&self, name: &str) -> impl Future<Output = Result<(), DaemonError>> + Send;
    /// `(name, label value)` of every container carrying `label`, running or not.
    fn list(
        &self,
        label: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, DaemonError>> + Send;
}

fn api(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Api { context, source }
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

impl Containers for DockerEngine {
    async fn state(&self, name: &str) -> Result<ContainerState, DaemonError> {
        match self.api().inspect_container(name, None).await {
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
                ..Default::default()
            }),
            ..Default::default()
        };
        self.api()
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(api(format!("creating container {name}")))?;
        Ok(())
    }

    async fn upload(&self, name: &str, tar: Vec<u8>) -> Result<(), DaemonError> {
        self.api()
            .upload_to_container(
                name,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(tar.into()),
            )
            .await
            .map_err(api(format!("uploading /kci to {name}")))
    }

    async fn start(&self, name: &str) -> Result<(), DaemonError> {
        self.api()
            .start_container(name, None)
            .await
            .map_err(api(format!("starting {name}")))
    }

    fn logs(&self, name: &str) -> LogStream {
        let context = format!("reading the log of {name}");
        self.api()
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
        let mut waits = self.api().wait_container(name, None);
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
        self.api()
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

    async fn remove(&self, name: &str) -> Result<(), DaemonError> {
        // v: its anonymous volumes go with it.
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self.api().remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(e) => Err(api(format!("removing {name}"))(e)),
        }
    }

    async fn list(&self, label: &str) -> Result<Vec<(String, String)>, DaemonError> {
        let filters = HashMap::from([("label".to_owned(), vec![label.to_owned()])]);
        let cs = self
            .api()
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

/// An in-memory [`Containers`]: a container "runs" its script the moment it starts — its
/// log is the script's lines, it exits with the script's code, and its `/out` holds the
/// script's files. Records every call, for assertions.
#[cfg(test)]
pub mod fake {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// What a started container does.
    #[derive(Debug, Clone, Default)]
    pub struct Script {
        pub log: Vec<String>,
        pub exit: i64,
        /// `/out/<name>` → bytes.
        pub out: BTreeMap<String, Vec<u8>>,
    }

    #[derive(Debug, Clone)]
    pub struct Container {
        pub spec: Option<ContainerSpec>,
        pub state: ContainerState,
        pub uploaded: usize,
        pub script: Script,
    }

    #[derive(Clone, Default)]
    pub struct FakeContainers {
        pub containers: Arc<Mutex<BTreeMap<String, Container>>>,
        /// What every container started from now on does.
        pub script: Arc<Mutex<Script>>,
        /// `create`, `start`, `remove`… with the container's name, in order.
        pub calls: Arc<Mutex<Vec<String>>>,
    }

    impl FakeContainers {
        /// A container an earlier run left, in `state`, whose log so far is `script.log`.
        pub fn leave(&self, name: &str, state: ContainerState, script: Script) {
            let c = Container {
                spec: None,
                state,
                uploaded: 1,
                script,
            };
            self.containers.lock().unwrap().insert(name.to_owned(), c);
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn call(&self, what: &str, name: &str) {
            self.calls.lock().unwrap().push(format!("{what} {name}"));
        }

        fn missing(name: &str) -> DaemonError {
            DaemonError::BuildFailed(format!("no container {name}"))
        }
    }

    impl Containers for FakeContainers {
        async fn state(&self, name: &str) -> Result<ContainerState, DaemonError> {
            Ok(self
                .containers
                .lock()
                .unwrap()
                .get(name)
                .map(|c| c.state.clone())
                .unwrap_or(ContainerState::Missing))
        }

        async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<(), DaemonError> {
            self.call("create", name);
            let c = Container {
                spec: Some(spec.clone()),
                state: ContainerState::Created,
                uploaded: 0,
                script: Script::default(),
            };
            self.containers.lock().unwrap().insert(name.to_owned(), c);
            Ok(())
        }

        async fn upload(&self, name: &str, _tar: Vec<u8>) -> Result<(), DaemonError> {
            let mut all = self.containers.lock().unwrap();
            let c = all.get_mut(name).ok_or_else(|| Self::missing(name))?;
            c.uploaded += 1;
            Ok(())
        }

        async fn start(&self, name: &str) -> Result<(), DaemonError> {
            self.call("start", name);
            let script = self.script.lock().unwrap().clone();
            let mut all = self.containers.lock().unwrap();
            let c = all.get_mut(name).ok_or_else(|| Self::missing(name))?;
            c.state = ContainerState::Exited(script.exit);
            c.script = script;
            Ok(())
        }

        fn logs(&self, name: &str) -> LogStream {
            let mut all = self.containers.lock().unwrap();
            let lines = match all.get_mut(name) {
                Some(c) => {
                    // A container left running finishes as its log ends.
                    if c.state == ContainerState::Running {
                        c.state = ContainerState::Exited(c.script.exit);
                    }
                    c.script.log.clone()
                }
                None => Vec::new(),
            };
            futures_util::stream::iter(lines.into_iter().map(|l| Ok(Bytes::from(format!("{l}\n")))))
                .boxed()
        }

        async fn wait(&self, _name: &str) -> Result<(), DaemonError> {
            Ok(())
        }

        fn archive(&self, name: &str, path: &str) -> ArchiveStream {
            let file = path.trim_start_matches("/out/").to_owned();
            let bytes = self
                .containers
                .lock()
                .unwrap()
                .get(name)
                .and_then(|c| c.script.out.get(&file).cloned());
            let item = match bytes {
                Some(data) => {
                    let mut b = tar::Builder::new(Vec::new());
                    let mut h = tar::Header::new_gnu();
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, &file, data.as_slice())
                        .expect("in memory");
                    Ok(Bytes::from(b.into_inner().expect("in memory")))
                }
                None => Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message: format!("Could not find the file {path} in container {name}"),
                }),
            };
            futures_util::stream::iter([item]).boxed()
        }

        async fn remove(&self, name: &str) -> Result<(), DaemonError> {
            self.call("remove", name);
            self.containers.lock().unwrap().remove(name);
            Ok(())
        }

        async fn list(&self, label: &str) -> Result<Vec<(String, String)>, DaemonError> {
            let all = self.containers.lock().unwrap();
            Ok(all
                .iter()
                .filter_map(|(n, c)| {
                    let v = c.spec.as_ref()?.labels.get(label)?.clone();
                    Some((n.clone(), v))
                })
                .collect())
        }
    }
}
