//! Rootfs builds as labelled, detached containers of the rootfs-builder image, driven
//! through [`Engine`] (the Docker API; a fake in unit tests). A container outlives kci-build: Ctrl-C or a kill leaves it
//! running, and the next run finds it by its name (derived from the key and the store),
//! re-attaches to its log, and collects `/out` once it has exited 0.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use futures_util::StreamExt;

use super::plan::RootfsJob;
use crate::engine::DaemonError;
use crate::engine::{ContainerSpec, Engine};

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

use crate::engine::ContainerState;

/// Creates the container (unless an earlier run did), uploads `/kci/` and starts it. With
/// CAP_SYS_ADMIN and no seccomp or AppArmor profile: mmdebstrap mounts /proc, /sys and /dev
/// in the chroot and the ext4 step mounts a tmpfs. (Not `--privileged`: it needs every
/// capability in the daemon's bounding set, which sandboxed hosts do not have.) Host
/// network: the Debian mirror is reached the way the host reaches it.
pub async fn start<E: Engine>(
    engine: &E,
    name: &str,
    job: &RootfsJob,
    image_id: &str,
    env: Vec<String>,
    inputs_tar: Vec<u8>,
) -> Result<(), DaemonError> {
    let spec = ContainerSpec {
        image: image_id.to_owned(),
        cmd: vec!["sh".into(), "/kci/build.sh".into()],
        env,
        labels: HashMap::from([
            (LABEL.to_owned(), job.label()),
            (LABEL_KEY.to_owned(), job.key.as_str().to_owned()),
        ]),
        hostname: "kci-rootfs".into(),
        // /out on an anonymous volume: the daemon's own filesystem, not the container's
        // (fuse-)overlay, which made writing and collecting 1.4 GB the slowest part.
        // (Not a tmpfs: that is gone when the container stops, before collection.)
        volumes: vec!["/out".into()],
        tmpfs: vec!["/work".into()],
        memory: job.memory,
    };
    if engine.state(name).await? == ContainerState::Missing {
        engine.create(name, &spec).await?;
    }
    engine.upload(name, inputs_tar).await?;
    engine.start(name).await
}

/// Follows the container's whole log (from its start, so a re-attach rewrites the same
/// file) into `log_path`, calling `on_phase` for each `kci-phase:` line, until it exits.
/// Returns the exit code.
pub async fn follow<E: Engine>(
    engine: &E,
    name: &str,
    log_path: &Path,
    mut on_phase: impl FnMut(&str),
) -> Result<i64, DaemonError> {
    let io = |context: String| move |source| DaemonError::Io { context, source };
    let mut log = std::io::BufWriter::new(
        std::fs::File::create(log_path).map_err(io(format!("creating {}", log_path.display())))?,
    );
    let mut stream = engine.logs(name);
    let mut pending = Vec::new();
    while let Some(chunk) = stream.next().await {
        let bytes = chunk?;
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
    engine.wait(name).await?;
    match engine.state(name).await? {
        ContainerState::Exited(code) => Ok(code),
        other => Err(DaemonError::BuildFailed(format!(
            "{name} stopped logging but is {other:?}"
        ))),
    }
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
            memory: None,
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
