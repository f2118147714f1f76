//! Docker Swarm as the place rootfs builds run (`rootfs --swarm`): one *replicated job*
//! service per (config, arch), placed, restarted and rescheduled by Swarm itself.
//! kci-build only describes the job ([`JobSpec`], turned into the Engine API's service spec
//! by the pure [`service_spec`]), asks how its tasks are doing ([`job_state`], pure, from
//! the task list) and reads its log. No cluster manager of our own.

use std::collections::HashMap;

use bollard::models::{
    Mount, MountType, NetworkAttachmentConfig, ResourceObject, SecretSpec, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicatedJob, Task, TaskSpec, TaskSpecContainerSpec,
    TaskSpecContainerSpecFile, TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListNodesOptions, ListTasksOptionsBuilder, LogsOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;

use super::DaemonError;

/// Where a task finds the registry credentials (a Swarm secret, never the environment).
pub const SECRET_FILE: &str = "/run/secrets/kci-registry";

/// How many times Swarm starts a job's task before the job counts as failed: a node that
/// disappears or a task that fails gets one more try elsewhere.
pub const MAX_ATTEMPTS: u64 = 2;

/// One rootfs build as a Swarm job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    pub name: String,
    /// `host/repo@sha256:…`: the task image, by digest.
    pub image: String,
    /// The task's whole command line.
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// A placement constraint (`node.platform.arch == aarch64`), when a node of the
    /// build's platform exists.
    pub constraint: Option<String>,
    pub memory: Option<u64>,
    /// The registry credentials' secret: `(id, name)`.
    pub secret: Option<(String, String)>,
}

/// The service spec of a job: a replicated job of one completion, on the host's network
/// (the build reaches its apt proxy on the node's loopback), CAP_SYS_ADMIN for the chroot's
/// mounts (and the task's own `/work` tmpfs: a service's tmpfs mount is `noexec` before API
/// 1.46, and a chroot must exec), `/out` the job's own named volume (the daemon's file system,
/// removed with the job), a bounded restart policy, and one CPU reserved.
pub fn service_spec(job: &JobSpec) -> ServiceSpec {
    let mounts = vec![Mount {
        target: Some("/out".into()),
        source: Some(job.name.clone()),
        typ: Some(MountType::VOLUME),
        ..Default::default()
    }];
    let secrets = job.secret.as_ref().map(|(id, name)| {
        vec![TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some("kci-registry".into()),
                uid: Some("0".into()),
                gid: Some("0".into()),
                mode: Some(0o400),
            }),
            secret_id: Some(id.clone()),
            secret_name: Some(name.clone()),
        }]
    });
    ServiceSpec {
        name: Some(job.name.clone()),
        labels: Some(job.labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(job.image.clone()),
                labels: Some(job.labels.clone()),
                command: Some(job.command.clone()),
                env: Some(job.env.clone()),
                hostname: Some("kci-rootfs".into()),
                mounts: Some(mounts),
                capability_add: Some(vec!["CAP_SYS_ADMIN".into()]),
                secrets,
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: job.memory.map(|m| bollard::models::Limit {
                    memory_bytes: Some(m as i64),
                    ..Default::default()
                }),
                reservations: Some(ResourceObject {
                    nano_cpus: Some(1_000_000_000),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
                max_attempts: Some(MAX_ATTEMPTS as i64 - 1),
                delay: Some(1_000_000_000),
                ..Default::default()
            }),
            placement: job.constraint.as_ref().map(|c| TaskSpecPlacement {
                constraints: Some(vec![c.clone()]),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some("host".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob {
                max_concurrent: Some(1),
                total_completions: Some(1),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// No such service.
    Missing,
    /// Waiting for a node, starting, or running (`attempt` of [`MAX_ATTEMPTS`]).
    Running {
        attempt: usize,
        node: Option<String>,
    },
    /// A task exited 0.
    Complete,
    /// Every attempt failed: the last one's error.
    Failed { attempts: usize, error: String },
}

/// The job's state from its tasks (any order).
pub fn job_state(tasks: &[Task]) -> JobState {
    let state = |t: &Task| t.status.as_ref().and_then(|s| s.state);
    if tasks.iter().any(|t| state(t) == Some(TaskState::COMPLETE)) {
        return JobState::Complete;
    }
    let failed: Vec<&Task> = tasks
        .iter()
        .filter(|t| {
            matches!(
                state(t),
                Some(TaskState::FAILED | TaskState::REJECTED | TaskState::ORPHANED)
            )
        })
        .collect();
    let live = tasks.iter().any(|t| {
        !matches!(
            state(t),
            Some(
                TaskState::FAILED
                    | TaskState::REJECTED
                    | TaskState::ORPHANED
                    | TaskState::SHUTDOWN
                    | TaskState::REMOVE
                    | TaskState::COMPLETE
            )
        )
    });
    if failed.len() as u64 >= MAX_ATTEMPTS && !live {
        let last = failed
            .iter()
            .max_by_key(|t| t.created_at.clone().unwrap_or_default())
            .and_then(|t| t.status.as_ref())
            .map(|s| {
                let exit = s
                    .container_status
                    .as_ref()
                    .and_then(|c| c.exit_code)
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default();
                format!("{}{exit}", s.err.clone().unwrap_or_else(|| "failed".into()))
            })
            .unwrap_or_default();
        return JobState::Failed {
            attempts: failed.len(),
            error: last,
        };
    }
    let node = tasks
        .iter()
        .filter(|t| state(t).is_some_and(|s| s == TaskState::RUNNING))
        .find_map(|t| t.node_id.clone());
    JobState::Running {
        attempt: failed.len() + 1,
        node,
    }
}

/// The Debian arch's name in `node.platform.arch` (the kernel's `uname -m`).
pub fn node_arch(debian: &str) -> Option<&'static str> {
    Some(match debian {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "armhf" | "armel" => "armv7l",
        "i386" => "i686",
        "riscv64" => "riscv64",
        "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        "mips64el" => "mips64",
        _ => return None,
    })
}

/// A swarm manager's Engine API.
#[derive(Clone)]
pub struct Swarm {
    docker: Docker,
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

impl Swarm {
    /// The swarm of `engine`'s daemon; an error naming `docker swarm init` when the daemon
    /// is not a manager of one.
    pub async fn of(engine: &super::DockerEngine) -> Result<Swarm, DaemonError> {
        let docker = engine.client().clone();
        let info = docker.info().await.map_err(api("asking the daemon"))?;
        let manager = info
            .swarm
            .as_ref()
            .and_then(|s| s.control_available)
            .unwrap_or(false);
        if !manager {
            return Err(DaemonError::Unreachable(crate::error::EnvironmentError {
                message: "--swarm: this Docker daemon is not a manager of a swarm".into(),
                hint: "run `docker swarm init` here (and `docker swarm join` on the other \
                       nodes), or point DOCKER_HOST at a manager"
                    .into(),
            }));
        }
        Ok(Swarm { docker })
    }

    /// The architectures (`uname -m`) of the nodes that are ready and active.
    pub async fn node_arches(&self) -> Result<Vec<String>, DaemonError> {
        let nodes = self
            .docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(api("listing the swarm's nodes"))?;
        Ok(nodes
            .into_iter()
            .filter(|n| {
                let ready = n.status.as_ref().and_then(|s| s.state)
                    == Some(bollard::models::NodeState::READY);
                let active = n.spec.as_ref().and_then(|s| s.availability)
                    == Some(bollard::models::NodeSpecAvailabilityEnum::ACTIVE);
                ready && active
            })
            .filter_map(|n| n.description?.platform?.architecture)
            .collect())
    }

    /// The secret holding `data`, made when missing: its name is `kci-registry-<sha256>`, so
    /// the same credentials are one secret and new ones another. Returns `(id, name)`.
    pub async fn secret(
        &self,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(String, String), DaemonError> {
        use base64::Engine as _;
        let name = format!(
            "kci-registry-{}",
            &crate::core::names::Digest::of(data).hex()[..16]
        );
        if let Ok(s) = self.docker.inspect_secret(&name).await {
            if let Some(id) = s.id {
                return Ok((id, name));
            }
        }
        let spec = SecretSpec {
            name: Some(name.clone()),
            data: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            labels: Some(labels),
            ..Default::default()
        };
        let id = self
            .docker
            .create_secret(spec)
            .await
            .map_err(api(format!("creating the swarm secret {name}")))?
            .id;
        Ok((id, name))
    }

    /// Creates the job (the daemon pulls its image with `auth`).
    pub async fn create(
        &self,
        job: &JobSpec,
        auth: Option<bollard::auth::DockerCredentials>,
    ) -> Result<(), DaemonError> {
        self.docker
            .create_service(service_spec(job), auth)
            .await
            .map_err(api(format!("creating the swarm job {}", job.name)))?;
        Ok(())
    }

    pub async fn state(&self, name: &str) -> Result<JobState, DaemonError> {
        match self.docker.inspect_service(name, None).await {
            Err(e) if is_404(&e) => return Ok(JobState::Missing),
            Err(e) => return Err(api(format!("inspecting the swarm job {name}"))(e)),
            Ok(_) => {}
        }
        let filters = HashMap::from([("service".to_owned(), vec![name.to_owned()])]);
        let tasks = self
            .docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .map_err(api(format!("listing the tasks of {name}")))?;
        Ok(job_state(&tasks))
    }

    /// The job's whole log so far (every attempt's, stdout and stderr).
    pub async fn log(&self, name: &str) -> Result<Vec<u8>, DaemonError> {
        self.log_tail(name, "all").await
    }

    /// The last `lines` lines of the job's log (`"all"`: all of it).
    pub async fn log_tail(&self, name: &str, lines: &str) -> Result<Vec<u8>, DaemonError> {
        let mut stream = self.docker.service_logs(
            name,
            Some(
                LogsOptionsBuilder::new()
                    .stdout(true)
                    .stderr(true)
                    .follow(false)
                    .tail(lines)
                    .build(),
            ),
        );
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(
                &chunk
                    .map_err(api(format!("reading the log of {name}")))?
                    .into_bytes(),
            );
        }
        Ok(out)
    }

    /// Removes the job, its task containers on this node (Swarm keeps an ended task's
    /// container as history, for a minute or more after its service is gone) and its `/out`
    /// volume.
    pub async fn remove(&self, name: &str) -> Result<(), DaemonError> {
        match self.docker.delete_service(name).await {
            Err(e) if !is_404(&e) => return Err(api(format!("removing the swarm job {name}"))(e)),
            _ => {}
        }
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("com.docker.swarm.service.name={name}")],
        )]);
        let tasks = self
            .docker
            .list_containers(Some(
                bollard::query_parameters::ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(api(format!("listing the containers of {name}")))?;
        for c in tasks.into_iter().filter_map(|c| c.id) {
            let force = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                .force(true)
                .build();
            match self.docker.remove_container(&c, Some(force)).await {
                Err(e) if !is_404(&e) => {
                    return Err(api(format!("removing a task container of {name}"))(e))
                }
                _ => {}
            }
        }
        for _ in 0..60 {
            match self
                .docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if is_404(&e) => return Ok(()),
                // In use until Swarm has removed the task's container.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
            }
        }
        tracing::warn!("the volume {name} is still in use; left behind");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::TaskStatus;

    fn task(state: TaskState, created: &str) -> Task {
        Task {
            created_at: Some(created.into()),
            status: Some(TaskStatus {
                state: Some(state),
                err: Some(format!("{state:?}")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_is_complete_failed_or_running_by_its_tasks() {
        use TaskState::*;
        assert_eq!(job_state(&[task(COMPLETE, "1")]), JobState::Complete);
        assert_eq!(
            job_state(&[task(FAILED, "1"), task(COMPLETE, "2")]),
            JobState::Complete
        );
        // One failure with a retry left: the next attempt is pending.
        assert!(matches!(
            job_state(&[task(FAILED, "1"), task(PENDING, "2")]),
            JobState::Running { attempt: 2, .. }
        ));
        assert!(matches!(
            job_state(&[task(FAILED, "1")]),
            JobState::Running { attempt: 2, .. }
        ));
        // Every attempt failed: the newest task's error.
        match job_state(&[task(FAILED, "2"), task(REJECTED, "1")]) {
            JobState::Failed { attempts, error } => {
                assert_eq!(attempts, 2);
                assert_eq!(error, "FAILED");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            job_state(&[]),
            JobState::Running { attempt: 1, .. }
        ));
    }

    #[test]
    fn the_service_is_a_bounded_replicated_job_with_the_secret_as_a_file() {
        let job = JobSpec {
            name: "kci-rootfs-tiny-arm64-0123-abcd".into(),
            image: "127.0.0.1:5000/rootfs-task@sha256:00".into(),
            command: vec!["/usr/local/bin/kci-build".into(), "rootfs-task".into()],
            env: vec!["A=1".into()],
            labels: HashMap::from([("l".into(), "v".into())]),
            constraint: Some("node.platform.arch == aarch64".into()),
            memory: Some(1 << 30),
            secret: Some(("id1".into(), "kci-registry-x".into())),
        };
        let spec = serde_json::to_value(service_spec(&job)).unwrap();
        assert_eq!(spec["Mode"]["ReplicatedJob"]["TotalCompletions"], 1);
        let task = &spec["TaskTemplate"];
        assert_eq!(task["RestartPolicy"]["MaxAttempts"], MAX_ATTEMPTS - 1);
        assert_eq!(task["Networks"][0]["Target"], "host");
        assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 1 << 30);
        assert_eq!(
            task["Placement"]["Constraints"][0],
            "node.platform.arch == aarch64"
        );
        let c = &task["ContainerSpec"];
        assert_eq!(c["CapabilityAdd"][0], "CAP_SYS_ADMIN");
        assert_eq!(c["Secrets"][0]["File"]["Name"], "kci-registry");
        assert_eq!(c["Secrets"][0]["SecretID"], "id1");
        // Credentials never ride in the environment or the arguments.
        assert_eq!(c["Env"], serde_json::json!(["A=1"]));
        assert_eq!(c["Mounts"][0]["Source"], job.name);
        assert_eq!(node_arch("arm64"), Some("aarch64"));
        assert_eq!(node_arch("nope"), None);
    }
}
