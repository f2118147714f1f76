//! The download rules on streams made here: a stream that stalls, one cut short, one that
//! is slow but moving, and an error the daemon means.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// What the archive endpoint sends for a file `name` holding `data`.
fn archive(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

fn data() -> Vec<u8> {
    (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect()
}

fn chunks(bytes: &[u8], size: usize) -> Vec<Result<Bytes, bollard::errors::Error>> {
    bytes
        .chunks(size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

/// The first `n` bytes of `bytes`, then nothing, ever.
fn stalls_after(bytes: &[u8], n: usize) -> ArchiveStream {
    futures_util::stream::iter(chunks(&bytes[..n], 4096))
        .chain(futures_util::stream::pending())
        .boxed()
}

fn quick(attempts: u32) -> Transfer {
    Transfer {
        stall: Duration::from_millis(200),
        attempts,
        backoff: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn a_stalled_stream_is_abandoned_and_the_file_downloaded_again() {
    let (payload, tmp) = (data(), tempfile::tempdir().unwrap());
    let bytes = archive("rootfs.ext4", &payload);
    let opened = Arc::new(AtomicU32::new(0));
    let dest = tmp.path().join("rootfs.ext4");
    let (b, o) = (bytes.clone(), opened.clone());
    let n = fetch(
        move || match o.fetch_add(1, Ordering::SeqCst) {
            0 => stalls_after(&b, b.len() / 2),
            _ => futures_util::stream::iter(chunks(&b, 65536)).boxed(),
        },
        "/out/rootfs.ext4",
        &dest,
        &quick(3),
    )
    .await
    .unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(n, payload.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
}

#[tokio::test]
async fn a_stream_cut_short_is_downloaded_again() {
    let (payload, tmp) = (data(), tempfile::tempdir().unwrap());
    let bytes = archive("small.tar", &payload);
    let opened = Arc::new(AtomicU32::new(0));
    let dest = tmp.path().join("small.tar");
    let (b, o) = (bytes.clone(), opened.clone());
    fetch(
        move || {
            let upto = if o.fetch_add(1, Ordering::SeqCst) == 0 {
                b.len() / 3
            } else {
                b.len()
            };
            futures_util::stream::iter(chunks(&b[..upto], 8192)).boxed()
        },
        "/out/small.tar",
        &dest,
        &quick(2),
    )
    .await
    .unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
}

#[tokio::test]
async fn a_slow_stream_that_keeps_moving_never_times_out() {
    // 40 chunks 30 ms apart: 1.2 s in all, six times the stall limit.
    let (payload, tmp) = (data(), tempfile::tempdir().unwrap());
    let bytes = archive("full.tar", &payload);
    let size = bytes.len().div_ceil(40);
    let dest = tmp.path().join("full.tar");
    let started = Instant::now();
    fetch(
        move || {
            futures_util::stream::iter(chunks(&bytes, size))
                .then(|c| async move {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    c
                })
                .boxed()
        },
        "/out/full.tar",
        &dest,
        &quick(1),
    )
    .await
    .unwrap();
    assert!(started.elapsed() > Duration::from_millis(1000));
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
}

#[tokio::test]
async fn a_stream_that_always_stalls_fails_after_its_attempts_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = archive("initrd.img", &data());
    let opened = Arc::new(AtomicU32::new(0));
    let o = opened.clone();
    let err = fetch(
        move || {
            o.fetch_add(1, Ordering::SeqCst);
            stalls_after(&bytes, 1000)
        },
        "/out/initrd.img of kci-rootfs-x",
        &tmp.path().join("initrd.img"),
        &quick(3),
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(opened.load(Ordering::SeqCst), 3);
    assert!(err.contains("/out/initrd.img of kci-rootfs-x"), "{err}");
    assert!(err.contains("no data for 0.2s"), "{err}");
    assert!(err.contains("attempt 3 of 3"), "{err}");
}

#[tokio::test]
async fn a_missing_file_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let opened = Arc::new(AtomicU32::new(0));
    let o = opened.clone();
    let err = fetch(
        move || {
            o.fetch_add(1, Ordering::SeqCst);
            futures_util::stream::iter([Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message: "Could not find the file /out/nope in container x".into(),
            })])
            .boxed()
        },
        "/out/nope",
        &tmp.path().join("nope"),
        &quick(4),
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(opened.load(Ordering::SeqCst), 1, "{err}");
    assert!(err.contains("Could not find the file /out/nope"), "{err}");
}

#[tokio::test]
async fn a_daemon_error_5xx_is_retried() {
    let (payload, tmp) = (data(), tempfile::tempdir().unwrap());
    let bytes = archive("f", &payload);
    let opened = Arc::new(AtomicU32::new(0));
    let (b, o) = (bytes.clone(), opened.clone());
    let dest = tmp.path().join("f");
    fetch(
        move || {
            if o.fetch_add(1, Ordering::SeqCst) == 0 {
                futures_util::stream::iter([Err(
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 500,
                        message: "mount failed".into(),
                    },
                )])
                .boxed()
            } else {
                futures_util::stream::iter(chunks(&b, 65536)).boxed()
            }
        },
        "/out/f",
        &dest,
        &quick(2),
    )
    .await
    .unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
}
