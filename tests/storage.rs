//! Storage backends against a real HTTP server speaking KernelCI's storage API, and against
//! the real filesystem.

mod common;

use std::path::{Path, PathBuf};

use common::storage_server::StorageServer;
use kci_build::storage::{Storage, StorageError, SyncReport, UploadFile};

const TOKEN: &str = "test-token-4f9c2b7e";
const DIR: &str = "bookworm/20240601.0";

/// Deterministic bytes that do not compress, so sizes stay honest.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Writes the artifacts under `src/<name>` and describes them.
fn artifacts(src: &Path, contents: &[(&str, Vec<u8>)]) -> Vec<UploadFile> {
    contents
        .iter()
        .map(|(name, bytes)| {
            let path = src.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, bytes).unwrap();
            UploadFile::from_file(name, &path).unwrap()
        })
        .collect()
}

fn three_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("arm64/rootfs.cpio.gz", noise(6 * 1024 * 1024 + 123, 1)),
        ("arm64/full.rootfs.tar.xz", noise(70_000, 2)),
        ("amd64/initrd.cpio.gz", noise(4096, 3)),
    ]
}

fn names(files: &[UploadFile]) -> Vec<String> {
    files.iter().map(|f| f.name.clone()).collect()
}

fn api(server: &StorageServer, token: &str) -> Storage {
    Storage::open_with_token(
        &server.url(),
        Some(&format!("{}/images/rootfs/debian", server.url())),
        None,
        Some(token.to_owned()),
    )
    .unwrap()
}

fn stored(root: &Path, name: &str) -> PathBuf {
    root.join("images/rootfs/debian").join(DIR).join(name)
}

#[tokio::test]
async fn api_uploads_once_then_skips_then_uploads_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, root) = (tmp.path().join("src"), tmp.path().join("root"));
    let server = StorageServer::start(&root, TOKEN);
    let storage = api(&server, TOKEN);
    let contents = three_files();
    let mut files = artifacts(&src, &contents);

    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(
        report,
        SyncReport {
            uploaded: names(&files),
            skipped: vec![]
        }
    );
    assert_eq!(server.uploads(), 1, "all files go in one upload");
    assert_eq!(server.files_written(), 3);
    for (name, bytes) in &contents {
        assert_eq!(
            &std::fs::read(stored(&root, name)).unwrap(),
            bytes,
            "{name}"
        );
    }
    assert_eq!(
        storage.url(DIR, "arm64/rootfs.cpio.gz"),
        format!(
            "{}/images/rootfs/debian/{DIR}/arm64/rootfs.cpio.gz",
            server.url()
        )
    );

    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(
        report,
        SyncReport {
            uploaded: vec![],
            skipped: names(&files)
        }
    );
    assert_eq!(server.upload_requests(), 1, "nothing sent the second time");
    assert_eq!(server.files_written(), 3);

    // Same size, one byte different: only the sha256 can tell.
    let mut changed = contents[1].1.clone();
    changed[100] ^= 1;
    let path = src.join(contents[1].0);
    std::fs::write(&path, &changed).unwrap();
    files[1] = UploadFile::from_file(contents[1].0, &path).unwrap();
    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(report.uploaded, vec![contents[1].0.to_string()]);
    assert_eq!(
        report.skipped,
        vec![contents[0].0.to_string(), contents[2].0.to_string()]
    );
    assert_eq!(server.uploads(), 2);
    assert_eq!(server.files_written(), 4);
    assert_eq!(
        std::fs::read(stored(&root, contents[1].0)).unwrap(),
        changed
    );
}

#[tokio::test]
async fn api_wrong_token_is_refused_without_showing_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, root) = (tmp.path().join("src"), tmp.path().join("root"));
    let server = StorageServer::start(&root, TOKEN);
    let wrong = "wrong-token-a81d66f0";
    let storage = api(&server, wrong);
    let files = artifacts(&src, &[("arm64/rootfs.cpio.gz", noise(300_000, 9))]);

    let err = storage.sync(DIR, &files).await.unwrap_err();
    let text = format!("{err} / {err:?} / {storage:?}");
    assert!(
        matches!(err, StorageError::Refused { status: 401, .. }),
        "{text}"
    );
    assert!(text.contains("401") && text.contains("refused"), "{text}");
    assert!(!text.contains(wrong), "token leaked: {text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert_eq!(server.upload_requests(), 1, "401 is not retried");
    assert_eq!(server.files_written(), 0);
}

#[tokio::test]
async fn api_corrupted_upload_fails_verification_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, root) = (tmp.path().join("src"), tmp.path().join("root"));
    let server = StorageServer::start(&root, TOKEN);
    let storage = api(&server, TOKEN);
    let files = artifacts(&src, &[("riscv64/rootfs.cpio.gz", noise(50_000, 5))]);

    server.corrupt_next_upload();
    let err = storage.sync(DIR, &files).await.unwrap_err();
    let text = err.to_string();
    match &err {
        StorageError::Mismatch {
            file,
            expected_sha256,
            actual_sha256,
            expected_size,
            actual_size,
            ..
        } => {
            assert_eq!(file, "riscv64/rootfs.cpio.gz");
            assert_eq!(expected_sha256, &files[0].sha256);
            assert_ne!(expected_sha256, actual_sha256);
            assert_eq!((*expected_size, *actual_size), (50_000, 50_000));
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert!(text.contains("riscv64/rootfs.cpio.gz"), "{text}");
    assert!(text.contains(files[0].sha256.as_str()), "{text}");

    // The next sync sees the bad copy and replaces it.
    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(report.uploaded, names(&files));
    assert_eq!(
        std::fs::read(stored(&root, "riscv64/rootfs.cpio.gz")).unwrap(),
        noise(50_000, 5)
    );
}

#[tokio::test]
async fn api_retries_an_upload_answered_503() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, root) = (tmp.path().join("src"), tmp.path().join("root"));
    let server = StorageServer::start(&root, TOKEN);
    let storage = api(&server, TOKEN);
    let files = artifacts(&src, &[("arm64/rootfs.cpio.gz", noise(200_000, 7))]);

    server.fail_next_uploads(1);
    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(report.uploaded, names(&files));
    assert_eq!(server.upload_requests(), 2);
    assert_eq!(server.uploads(), 1);

    server.fail_next_uploads(5);
    let mut files2 = files.clone();
    files2[0] = artifacts(&src, &[("arm64/rootfs.cpio.gz", noise(1000, 8))]).remove(0);
    let err = storage.sync(DIR, &files2).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Status { status: 503, .. }),
        "{err}"
    );
    assert_eq!(server.upload_requests(), 5, "three attempts, then give up");
}

#[tokio::test]
async fn local_sync_writes_atomically_and_skips_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    let storage = Storage::open_with_token(out.to_str().unwrap(), None, None, None).unwrap();
    let contents = three_files();
    let files = artifacts(&src, &contents);

    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(report.uploaded, names(&files));
    assert!(report.skipped.is_empty());
    for (name, bytes) in &contents {
        assert_eq!(&std::fs::read(out.join(DIR).join(name)).unwrap(), bytes);
    }
    assert_eq!(
        storage.url(DIR, "amd64/initrd.cpio.gz"),
        format!("file://{}/{DIR}/amd64/initrd.cpio.gz", out.display())
    );

    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(report.skipped, names(&files));
    assert!(report.uploaded.is_empty());

    // A damaged copy in the destination is noticed and replaced.
    let victim = out.join(DIR).join(contents[2].0);
    std::fs::write(&victim, noise(4096, 99)).unwrap();
    let report = storage.sync(DIR, &files).await.unwrap();
    assert_eq!(report.uploaded, vec![contents[2].0.to_string()]);
    assert_eq!(std::fs::read(&victim).unwrap(), contents[2].1);

    let mut all: Vec<String> = walkdir::WalkDir::new(&out)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(out.join(DIR))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    all.sort();
    let mut expected = names(&files);
    expected.sort();
    assert_eq!(all, expected, "no temp files or strays left behind");
}

#[tokio::test]
async fn local_sync_refuses_a_source_that_changed_and_keeps_the_old_copy() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, out) = (tmp.path().join("src"), tmp.path().join("out"));
    let storage = Storage::open_with_token(out.to_str().unwrap(), None, None, None).unwrap();
    let files = artifacts(&src, &[("arm64/rootfs.cpio.gz", noise(10_000, 1))]);
    storage.sync(DIR, &files).await.unwrap();

    // Described one way, then changed on disk before the sync reads it.
    let described = artifacts(&src, &[("arm64/rootfs.cpio.gz", noise(10_000, 2))]);
    std::fs::write(&files[0].path, noise(10_000, 3)).unwrap();
    let err = storage.sync(DIR, &described).await.unwrap_err();
    assert!(matches!(err, StorageError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("arm64/rootfs.cpio.gz"), "{err}");
    let target = out.join(DIR).join("arm64/rootfs.cpio.gz");
    assert_eq!(std::fs::read(&target).unwrap(), noise(10_000, 1));
    let leftovers: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["rootfs.cpio.gz"]);
}

/// A server that answers HEAD with 200 and the right length but serves other bytes: `served`
/// hashes what a lab would download, so `rootfs` does not take the file for its own.
#[tokio::test]
async fn served_hashes_the_bytes_not_the_head_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, root) = (tmp.path().join("src"), tmp.path().join("root"));
    let server = StorageServer::start(&root, TOKEN);
    let files = artifacts(&src, &[("amd64/rootfs.ext4.xz", noise(300_000, 7))]);
    let (name, want) = (&files[0].name, (files[0].size, files[0].sha256.clone()));
    for storage in [
        api(&server, TOKEN),
        Storage::open_with_token(
            root.join("images/rootfs/debian").to_str().unwrap(),
            None,
            None,
            None,
        )
        .unwrap(),
    ] {
        assert_eq!(storage.served(DIR, name).await.unwrap(), None);
        storage.sync(DIR, &files).await.unwrap();
        assert_eq!(storage.served(DIR, name).await.unwrap(), Some(want.clone()));

        // Same length, other bytes: HEAD cannot tell, the hash does.
        std::fs::write(stored(&root, name), noise(300_000, 8)).unwrap();
        assert_eq!(storage.size(DIR, name).await.unwrap(), Some(300_000));
        let (size, sha) = storage.served(DIR, name).await.unwrap().unwrap();
        assert_eq!(size, 300_000);
        assert_ne!(
            sha, want.1,
            "the other bytes must not hash to the recorded sha256"
        );
        assert_eq!(sha, kci_build::core::names::Digest::of(&noise(300_000, 8)));
        std::fs::remove_file(stored(&root, name)).unwrap();
    }
}
