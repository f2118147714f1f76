//! Pinned git sources through the real binary, the real daemon and real git repositories
//! made here: the tiny rootfs config's script clones a test-suite repository by its URL.
//! The build gets the pinned commit from kci-build's copy with the upstream gone, twice with
//! the same bytes; a moved upstream branch changes nothing until `lock --refresh`, whose
//! rebuild gets the new commit and whose diff says `source suite: <old> -> <new>`; and a
//! script cloning a URL no recipe pins fails, naming the URL and how to pin it.

mod common;

use std::path::Path;

use common::git::git;
use common::*;

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

/// Commits `VERSION = version` in the work tree and pushes `main` to the bare upstream;
/// returns the commit.
fn release(work: &Path, version: &str) -> String {
    std::fs::write(work.join("VERSION"), format!("{version}\n")).unwrap();
    git(work, &["add", "VERSION"]);
    git(work, &["commit", "-q", "-m", version]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

fn rootfs(ws: &Workspace, config: &str) -> Run {
    ws.kci(&[
        "--images", IMAGES, "rootfs", config, "--arch", "amd64", "--json",
    ])
}

/// `etc/kci-suite` of the stored rootfs.cpio.gz of `report`'s build.
fn suite_version(ws: &Workspace, report: &serde_json::Value) -> String {
    let key = report["builds"][0]["key"].as_str().unwrap();
    let cpio = ws
        .store()
        .join("rootfs")
        .join(key.strip_prefix("sha256:").unwrap())
        .join("rootfs.cpio.gz");
    sh(&format!(
        "zcat {} | cpio -i --quiet --to-stdout etc/kci-suite",
        cpio.display()
    ))
    .trim()
    .to_owned()
}

#[test]
fn a_pinned_git_source_is_served_from_the_store_and_moves_only_on_refresh() {
    let _g = daemon_lock();
    let up = tempfile::tempdir().unwrap();
    let bare = up.path().join("suite.git");
    let work = up.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    git(
        up.path(),
        &["init", "-q", "--bare", "-b", "main", "suite.git"],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    let first_commit = release(&work, "one");
    let url = format!("file://{}", bare.display());

    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    let recipe = ws.path().join("recipes/tiny.toml");
    let text = std::fs::read_to_string(&recipe).unwrap().replace(
        "extra-packages = [\"netbase\"]",
        "extra-packages = [\"netbase\", \"git\"]",
    );
    std::fs::write(
        &recipe,
        format!("{text}\n[git-source.suite]\nurl = \"{url}\"\nref = \"main\"\n"),
    )
    .unwrap();
    let script = ws.path().join("recipes/scripts/tiny.sh");
    let mut s = std::fs::read_to_string(&script).unwrap();
    s.push_str(&format!(
        "git clone -q {url} /tmp/suite\ncp /tmp/suite/VERSION /etc/kci-suite\nrm -rf /tmp/suite\n"
    ));
    std::fs::write(&script, s).unwrap();

    // 1. The first build pins today's main and clones it.
    let first = rootfs(&ws, "tiny").ok();
    assert!(
        first.stderr.contains("Pinned") && first.stderr.contains("git source suite"),
        "{}",
        first.stderr
    );
    let first = first.json();
    assert_eq!(suite_version(&ws, &first), "one");
    let lock_path = ws.path().join("lockfiles/rootfs.lock");
    let lock1 = std::fs::read_to_string(&lock_path).unwrap();
    assert!(
        lock1.contains(&format!(
            "[git-source.\"suite\"]\nurl = \"{url}\"\nref = \"main\"\ncommit = \"{first_commit}\"\n"
        )),
        "{lock1}"
    );

    // 2. The upstream is gone: the same key, built again from the store's copy, gives the
    //    same bytes.
    std::fs::rename(&bare, up.path().join("away.git")).unwrap();
    let key = first["builds"][0]["key"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(
        ws.store()
            .join("rootfs")
            .join(key.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let again = rootfs(&ws, "tiny").ok().json();
    assert_eq!(again["builds"][0]["action"], "built", "{again}");
    assert_eq!(again["builds"][0]["key"], first["builds"][0]["key"]);
    assert_eq!(rootfs_sums(&again), rootfs_sums(&first));
    std::fs::rename(up.path().join("away.git"), &bare).unwrap();

    // 3. The upstream branch moves: nothing changes until a refresh.
    let second_commit = release(&work, "two");
    let same = rootfs(&ws, "tiny").ok().json();
    assert_eq!(same["builds"][0]["key"], first["builds"][0]["key"]);
    assert_ne!(same["builds"][0]["action"], "built", "{same}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock1);

    // 4. `lock --refresh` moves the pin; the rebuild clones the new commit; the diff says so.
    let refreshed = ws
        .kci(&["--images", IMAGES, "lock", "--refresh", "--json"])
        .ok()
        .json();
    assert_eq!(refreshed["git_sources"][0]["old"], first_commit.as_str());
    assert_eq!(refreshed["git_sources"][0]["new"], second_commit.as_str());
    let moved = rootfs(&ws, "tiny").ok().json();
    assert_ne!(moved["builds"][0]["key"], first["builds"][0]["key"]);
    assert_eq!(suite_version(&ws, &moved), "two");
    let old_lock = ws.path().join("rootfs.lock.old");
    std::fs::write(&old_lock, &lock1).unwrap();
    let diff = ws.kci(&[
        "diff",
        old_lock.to_str().unwrap(),
        lock_path.to_str().unwrap(),
    ]);
    assert!(
        diff.stdout
            .contains(&format!("source suite: {first_commit} -> {second_commit}")),
        "{}\n{}",
        diff.stdout,
        diff.stderr
    );

    // 5. A script cloning a URL no recipe pins fails at once, naming it and how to pin it.
    let loose_url = format!("file://{}/other.git", up.path().display());
    ws.write(
        "recipes/loose.toml",
        &std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("name = \"tiny\"", "name = \"loose\"")
            .replace("scripts/tiny.sh", "scripts/loose.sh"),
    );
    ws.write(
        "recipes/scripts/loose.sh",
        &format!("#!/bin/sh\nset -e\ngit clone -q {url} /tmp/suite\nrm -rf /tmp/suite\ngit clone -q {loose_url} /tmp/other\n"),
    );
    let r = rootfs(&ws, "loose");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("the script cloned {loose_url}"))
            && r.stderr.contains("[git-source.other]")
            && r.stderr.contains("recipes/loose.toml"),
        "{}",
        r.stderr
    );
}

/// `--locked` refuses a git source the lockfile does not pin, before anything is built.
#[test]
fn locked_refuses_an_unpinned_git_source() {
    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    let recipe = ws.path().join("recipes/tiny.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        format!("{text}\n[git-source.suite]\nurl = \"https://git.example.org/suite.git\"\nref = \"main\"\n"),
    )
    .unwrap();
    let r = ws.kci(&["--images", IMAGES, "rootfs", "tiny", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no pin for git source `suite`")
            && r.stderr.contains("https://git.example.org/suite.git"),
        "{}",
        r.stderr
    );
}
