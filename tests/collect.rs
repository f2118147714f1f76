//! Collecting a stopped build container's files from the real Docker daemon while slow
//! consumers work on them (issue 10). The daemon answers one archive request of a
//! container at a time, and kci-build used to hand each stream straight to its compressor:
//! a request queued behind a stream held open by a slow xz timed out. Here the daemon's
//! request timeout is cut to one second and every consumer takes three: the files must
//! still arrive whole, byte for byte what the container wrote.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kci_build::engine::DockerEngine;
use kci_build::rootfs::collect::{fetch_each, Transfer};
use sha2::{Digest as _, Sha256};

use common::sh;

/// A container that wrote four 6 MB files into its `/out` volume and exited, and the
/// sha256 of each as the container computed it.
fn finished_container(name: &str) -> Vec<(String, String)> {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox"))
        .expect("/bin/busybox: install Debian's busybox-static (.ci/run does)");
    let image = "kci-build-test/collect-busybox:1";
    sh(&format!(
        "tar -C {} -c bin | docker import - {image} >/dev/null",
        root.path().display()
    ));
    sh(&format!("docker rm -f -v {name} >/dev/null 2>&1 || true"));
    let script = "cd /out && for f in a b c d; do \
        /bin/busybox yes \"$f kci-build collect\" | /bin/busybox head -c 6000000 > $f; done && \
        /bin/busybox sha256sum a b c d";
    sh(&format!(
        "docker create --name {name} -v /out {image} /bin/busybox sh -c '{script}' >/dev/null"
    ));
    sh(&format!("docker start -a {name}"))
        .lines()
        .map(|l| {
            let (sum, file) = l.split_once("  ").unwrap();
            (file.to_owned(), sum.to_owned())
        })
        .collect()
}

/// Reads `path` in 64 KiB pieces over about three seconds and returns its sha256.
fn slow_sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let pause = Duration::from_secs(3) / (f.metadata().unwrap().len() / 65536 + 1) as u32;
    let (mut h, mut buf) = (Sha256::new(), vec![0u8; 65536]);
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return hex::encode(h.finalize());
        }
        h.update(&buf[..n]);
        std::thread::sleep(pause);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_arrive_whole_while_consumers_are_slower_than_the_request_timeout() {
    let name = format!("kci-build-test-collect-{}", std::process::id());
    let want = finished_container(&name);
    let env = kci_build::settings::Env::from_process();
    let settings = kci_build::settings::Settings::resolve(None, &env).unwrap();
    let engine = DockerEngine::connect(&settings.engine)
        .await
        .unwrap()
        .with_request_timeout(Duration::from_secs(1));
    // One attempt: a retry must not hide a request that waited.
    let transfer = Transfer {
        stall: Duration::from_secs(20),
        attempts: 1,
        backoff: Duration::ZERO,
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut consumers: Vec<(String, std::thread::JoinHandle<String>)> = Vec::new();
    let collected = fetch_each(
        &engine,
        &name,
        &["a", "b", "c", "d"],
        dir.path(),
        &transfer,
        |file, path: PathBuf| {
            consumers.push((
                file.to_owned(),
                std::thread::spawn(move || slow_sha256(&path)),
            ))
        },
    )
    .await;
    let got: Vec<(String, String)> = consumers
        .into_iter()
        .map(|(f, h)| (f, h.join().unwrap()))
        .collect();
    sh(&format!("docker rm -f -v {name} >/dev/null"));
    assert_eq!(collected.unwrap(), 4 * 6_000_000);
    assert_eq!(got, want);
    // The consumers overlapped the downloads and each other (4 × 3 s one after another
    // would be 12 s); the point is that none of them made a request wait.
    assert!(started.elapsed() >= Duration::from_secs(3));
}
