//! The signed apt repository fixture (tests/common/aptrepo.rs) itself: what it publishes
//! verifies with `gpgv`, indexes what is in the pool, and its packages are reproducible.

mod common;

use std::fs;
use std::process::Command;

use common::aptrepo::{sha256, AptRepo};

const GREETING: &str = "/usr/share/kci-hello/greeting";

fn hello(repo: &AptRepo, version: &str) {
    let content = format!("hello {version}\n");
    repo.add_package("kci-hello", version, &[(GREETING, &content)]);
}

fn packages(repo: &AptRepo) -> String {
    fs::read_to_string(repo.packages_path("amd64")).unwrap()
}

fn assert_gpgv_accepts(repo: &AptRepo) {
    let out = Command::new("gpgv")
        .arg("--keyring")
        .arg(&repo.keyring)
        .arg(repo.dists().join("InRelease"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "gpgv rejected InRelease: {stderr}");
}

#[test]
fn publishes_a_signed_index_that_follows_the_pool_and_debs_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let repo = AptRepo::new(dir.path());
    hello(&repo, "1.0");
    repo.publish();

    assert_gpgv_accepts(&repo);
    let index = packages(&repo);
    let deb = fs::read(repo.deb_path("kci-hello", "1.0")).unwrap();
    assert!(index.contains("Package: kci-hello\n"), "{index}");
    assert!(index.contains("Version: 1.0\n"), "{index}");
    let hex = sha256(&deb).trim_start_matches("sha256:").to_owned();
    assert!(index.contains(&format!("SHA256: {hex}\n")), "{index}");
    assert_eq!(
        index,
        fs::read_to_string(repo.packages_path("arm64")).unwrap()
    );

    let first = repo.inrelease_sha256();
    hello(&repo, "1.1");
    repo.remove_package("kci-hello", "1.0");
    repo.publish();
    assert_gpgv_accepts(&repo);
    assert_ne!(repo.inrelease_sha256(), first);
    let index = packages(&repo);
    assert!(index.contains("Version: 1.1\n"), "{index}");
    assert!(!index.contains("Version: 1.0\n"), "{index}");

    let twice: Vec<Vec<u8>> = (0..2)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let fresh = AptRepo::new(dir.path());
            hello(&fresh, "1.0");
            fs::read(fresh.deb_path("kci-hello", "1.0")).unwrap()
        })
        .collect();
    assert_eq!(twice[0], twice[1], "the same package built twice differs");
    assert_eq!(
        twice[0], deb,
        "the same package built in another repo differs"
    );
}
