//! The download rules on streams made here: a stream that stalls, one cut short, one that
//! is slow but moving, and an error the daemon means.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::Path;

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

/// [`fetch`] with `open(n)` for the n-th attempt (from 0); also returns how many were made.
async fn fetch_counted(
    open: impl Fn(u32) -> ArchiveStream,
    what: &str,
    dest: &Path,
    transfer: &Transfer,
) -> (anyhow::Result<u64>, u32) {
    let opened = Arc::new(AtomicU32::new(0));
    let o = opened.clone();
    let r = fetch(
        move || open(o.fetch_add(1, Ordering::SeqCst)),
        what,
        dest,
        transfer,
    )
    .await;
    (r, opened.load(Ordering::SeqCst))
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
    let b = archive("rootfs.ext4", &payload);
    let dest = tmp.path().join("rootfs.ext4");
    let open = |n| match n {
        0 => stalls_after(&b, b.len() / 2),
        _ => futures_util::stream::iter(chunks(&b, 65536)).boxed(),
    };
    let (n, opened) = fetch_counted(open, "/out/rootfs.ext4", &dest, &quick(3)).await;
    assert_eq!((n.unwrap(), opened), (payload.len() as u64, 2));
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
}

#[tokio::test]
async fn a_stream_cut_short_is_downloaded_again() {
    let (payload, tmp) = (data(), tempfile::tempdir().unwrap());
    let b = archive("small.tar", &payload);
    let dest = tmp.path().join("small.tar");
    let open = |n| {
        let upto = if n == 0 { b.len() / 3 } else { b.len() };
        futures_util::stream::iter(chunks(&b[..upto], 8192)).boxed()
    };
    let (n, opened) = fetch_counted(open, "/out/small.tar", &dest, &quick(2)).await;
    assert_eq!((n.unwrap(), opened), (payload.len() as u64, 2));
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
    let (r, opened) = fetch_counted(
        |_| stalls_after(&bytes, 1000),
        "/out/initrd.img of kci-rootfs-x",
        &tmp.path().join("initrd.img"),
        &quick(3),
    )
    .await;
    let err = r.unwrap_err().to_string();
    assert_eq!(opened, 3);
    assert!(err.contains("/out/initrd.img of kci-rootfs-x"), "{err}");
    assert!(err.contains("no data for 0.2s"), "{err}");
    assert!(err.contains("attempt 3 of 3"), "{err}");
}

#[tokio::test]
async fn a_missing_file_fails_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, opened) = fetch_counted(
        |_| daemon_error(404, "Could not find the file /out/nope in container x"),
        "/out/nope",
        &tmp.path().join("nope"),
        &quick(4),
    )
    .await;
    let err = r.unwrap_err().to_string();
    assert_eq!(opened, 1, "{err}");
    assert!(err.contains("Could not find the file /out/nope"), "{err}");
}

#[tokio::test]
async fn a_daemon_error_5xx_is_retried() {
    let (payload, tmp) = (data(), tempfile::tempdir().unwrap());
    let b = archive("f", &payload);
    let dest = tmp.path().join("f");
    let open = |n| match n {
        0 => daemon_error(500, "mount failed"),
        _ => futures_util::stream::iter(chunks(&b, 65536)).boxed(),
    };
    let (n, opened) = fetch_counted(open, "/out/f", &dest, &quick(2)).await;
    assert_eq!((n.unwrap(), opened), (payload.len() as u64, 2));
    assert_eq!(std::fs::read(&dest).unwrap(), payload);
}

/// The daemon's answer `status` with `message`, as bollard reports it.
fn daemon_error(status: u16, message: &str) -> ArchiveStream {
    futures_util::stream::iter([Err(bollard::errors::Error::DockerResponseServerError {
        status_code: status,
        message: message.into(),
    })])
    .boxed()
}

/// The builder's `/out` files come as one regular file each: a symlink, a device node or a
/// hard link in their place (a hostile or broken builder) is refused and nothing is written
/// through it.
#[test]
fn only_a_regular_file_is_taken_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("full.tar");
    for kind in [
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Char,
        tar::EntryType::Block,
        tar::EntryType::Directory,
    ] {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o644);
        if matches!(kind, tar::EntryType::Symlink | tar::EntryType::Link) {
            h.set_link_name("/etc/shadow").unwrap();
        }
        h.set_cksum();
        b.append_data(&mut h, "full.tar", std::io::empty()).unwrap();
        let bytes = b.into_inner().unwrap();
        match unwrap_single_file(bytes.as_slice(), &dest) {
            Err(Failed::Invalid(m)) => assert_eq!(m, "not a regular file", "{kind:?}"),
            other => panic!("{kind:?}: {:?}", other.map_err(|_| "another error")),
        }
        assert!(!dest.exists(), "{kind:?}: something was written");
    }
    let n = unwrap_single_file(archive("full.tar", b"data").as_slice(), &dest).unwrap();
    assert_eq!((n, std::fs::read(&dest).unwrap()), (4, b"data".to_vec()));
}
