//! Rootfs builds as labelled, detached containers of the rootfs-builder image, driven
//! through the Docker API. A container outlives kci-build: Ctrl-C or a kill leaves it
//! running, and the next run finds it by its name (derived from the key and the store),
//! re-attaches to its log, and collects `/out` once it has exited 0.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures_util::StreamExt;

use super::plan::RootfsJob;
use crate::docker::{DaemonError, DockerEngine};

pub const LABEL: &str = "org.kernelci.kci-build.rootfs";
pub const LABEL_KEY: &str = "org.kernelci.kci-build.rootfs.key";

/// The container name of a job: stable across runs of one store, unique per key and store.
/// `store` (see [`store_tag`]) keeps two stores on one daemon (a CI checkout beside an
/// operator's) from attaching to, collecting and removing each other's containers.
pub fn container_name(job: &RootfsJob, store: &str) -> String {
    format!(
        "kci-rootfs-{}-{}-{}-{store}",
        job.config,
        job.arch,
        &job.key.hex()[..16]
    )
}

/// Eight hex digits naming the rootfs store at `root` (its canonical path, hashed).
pub fn store_tag(root: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
    crate::core::names::Digest::of(path.as_os_str().as_bytes()).hex()[..8].to_owned()
}

/// Where a job's container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Missing,
    /// Created (inputs uploaded or not) but never started.
    Created,
    Running,
    Exited(i64),
}

fn api(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DaemonError {
    let context = context.into();
    move |source| DaemonError::Api { context, source }
}

pub async fn state(engine: &DockerEngine, name: &str) -> Result<ContainerState, DaemonError> {
    match engine.api().inspect_container(name, None).await {
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
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(ContainerState::Missing),
        Err(e) => Err(api(format!("inspecting container {name}"))(e)),
    }
}

/// Creates the container, uploads `/kci/` and starts it. With CAP_SYS_ADMIN and no seccomp
/// or AppArmor profile: mmdebstrap mounts /proc, /sys and /dev in the chroot and the ext4
/// step mounts a tmpfs. (Not `--privileged`: it needs every capability in the daemon's
/// bounding set, which sandboxed hosts do not have.) Host network: the Debian mirror is
/// reached the way the host reaches it.
pub async fn start(
    engine: &DockerEngine,
    name: &str,
    job: &RootfsJob,
    image_id: &str,
    env: Vec<String>,
    inputs_tar: Vec<u8>,
) -> Result<(), DaemonError> {
    let labels = HashMap::from([
        (LABEL.to_owned(), job.label()),
        (LABEL_KEY.to_owned(), job.key.as_str().to_owned()),
    ]);
    let body = ContainerCreateBody {
        image: Some(image_id.to_owned()),
        cmd: Some(vec!["sh".into(), "/kci/build.sh".into()]),
        env: Some(env),
        labels: Some(labels),
        hostname: Some("kci-rootfs".into()),
        working_dir: Some("/".into()),
        // /out on an anonymous volume: the daemon's own filesystem, not the container's
        // (fuse-)overlay, which made writing and collecting 1.4 GB the slowest part.
        // (Not a tmpfs: that is gone when the container stops, before collection.)
        volumes: Some(vec!["/out".into()]),
        host_config: Some(HostConfig {
            cap_add: Some(vec!["SYS_ADMIN".into()]),
            security_opt: Some(vec![
                "seccomp=unconfined".into(),
                "apparmor=unconfined".into(),
            ]),
            network_mode: Some("host".into()),
            tmpfs: Some(HashMap::from([(
                "/work".to_owned(),
                "rw,exec,dev,suid,mode=0755".to_owned(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let docker = engine.api();
    if state(engine, name).await? == ContainerState::Missing {
        docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map_err(api(format!("creating container {name}")))?;
    }
    docker
        .upload_to_container(
            name,
            Some(UploadToContainerOptionsBuilder::new().path("/").build()),
            bollard::body_full(inputs_tar.into()),
        )
        .await
        .map_err(api(format!("uploading /kci to {name}")))?;
    docker
        .start_container(name, None)
        .await
        .map_err(api(format!("starting {name}")))?;
    Ok(())
}

/// Follows the container's whole log (from its start, so a re-attach rewrites the same
/// file) into `log_path`, calling `on_phase` for each `kci-phase:` line, until it exits.
/// Returns the exit code.
pub async fn follow(
    engine: &DockerEngine,
    name: &str,
    log_path: &Path,
    mut on_phase: impl FnMut(&str),
) -> Result<i64, DaemonError> {
    let io = |context: String| move |source| DaemonError::Io { context, source };
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(log_path).map_err(io(format!("creating {}", log_path.display())))?,
    );
    let mut stream = engine.api().logs(
        name,
        Some(
            LogsOptionsBuilder::new()
                .follow(true)
                .stdout(true)
                .stderr(true)
                .build(),
        ),
    );
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(api(format!("reading the log of {name}")))?;
        let bytes = chunk.into_bytes();
        log.write_all(&bytes)
            .map_err(io(format!("writing {}", log_path.display())))?;
        pending.extend_from_slice(&bytes);
        while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(p) = line.trim_end().strip_prefix("kci-phase: ") {
                on_phase(p);
            }
            tracing::trace!(target: "rootfs", "{name}: {}", line.trim_end());
        }
    }
    log.flush()
        .map_err(io(format!("writing {}", log_path.display())))?;
    // The log ends when the container stops; wait for the daemon to record the exit.
    let mut waits = engine.api().wait_container(name, None);
    while let Some(r) = waits.next().await {
        match r {
            Ok(_) => {}
            // bollard reports a non-zero exit as an error; the state below has the code.
            Err(bollard::errors::Error::DockerContainerWaitError { .. }) => {}
            Err(e) => return Err(api(format!("waiting for {name}"))(e)),
        }
    }
    match state(engine, name).await? {
        ContainerState::Exited(code) => Ok(code),
        other => Err(DaemonError::BuildFailed(format!(
            "{name} stopped logging but is {other:?}"
        ))),
    }
}

/// The archive endpoint's stream of the file at `path` in the (stopped) container: a tar
/// of one entry, read by [`super::collect::fetch`]. Nothing is requested until it is polled.
/// The daemon answers one archive request of a container at a time (it holds the
/// container's lock until the stream is closed): request the next only when one is drained.
pub fn archive_stream(
    engine: &DockerEngine,
    name: &str,
    path: &str,
) -> super::collect::ArchiveStream {
    engine
        .api()
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

pub async fn remove(engine: &DockerEngine, name: &str) -> Result<(), DaemonError> {
    match engine
        .api()
        .remove_container(
            name,
            // v: its anonymous /out volume goes with it.
            Some(
                RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(api(format!("removing {name}"))(e)),
    }
}

/// Names of every rootfs build container on the daemon (running or not).
pub async fn list(engine: &DockerEngine) -> Result<Vec<(String, String)>, DaemonError> {
    let filters = HashMap::from([("label".to_owned(), vec![LABEL.to_owned()])]);
    let cs = engine
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
            let label = c.labels?.get(LABEL)?.clone();
            Some((name, label))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_stable_per_store_and_differ_between_stores() {
        let job = RootfsJob {
            config: "tiny".into(),
            arch: "arm64".into(),
            key: crate::core::names::Digest::of(b"inputs"),
            facts: Default::default(),
            source_date_epoch: 0,
            xz_preset: 1,
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let name_a = container_name(&job, &store_tag(a.path()));
        assert!(name_a.starts_with("kci-rootfs-tiny-arm64-"), "{name_a}");
        // The same store through another spelling of its path: the same container.
        let dotted = a.path().join(".");
        assert_eq!(container_name(&job, &store_tag(&dotted)), name_a);
        assert_ne!(container_name(&job, &store_tag(b.path())), name_a);
        // Docker's rule for names: [a-zA-Z0-9][a-zA-Z0-9_.-]+
        assert!(name_a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
    }
}
