//! Pinned git sources through the real binary, the real daemon and real git repositories
//! made here: a kernelci-core repository holds the tiny config's script and overlays (and
//! the steps every rootfs runs), the recipes directory holds none, and the script clones a
//! test-suite repository by its URL. The build gets both pinned commits from kci-build's
//! copies with the upstreams gone, twice with the same bytes; moved upstream branches change
//! nothing until `lock --refresh`, whose rebuild gets the new commits and whose diff says
//! `source suite: <old> -> <new>`; and a script that clones a URL no recipe pins, or
//! downloads past the pinned archive, fails naming what it fetched — even when the script
//! itself carries on and exits 0, as KernelCI's install-bootrr.sh would.

mod common;

use std::path::Path;

use common::git::git;
use common::*;

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

/// A bare upstream `<name>.git` under `dir` with a work tree `<name>` pushing to it.
fn upstream(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let bare = dir.join(format!("{name}.git"));
    let work = dir.join(name);
    std::fs::create_dir_all(&work).unwrap();
    git(
        dir,
        &["init", "-q", "--bare", "-b", "main", &format!("{name}.git")],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    (bare, work)
}

/// Writes `files` in the work tree, commits and pushes `main` to the bare upstream; returns
/// the commit.
fn push(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// Commits `VERSION = version` and pushes it; returns the commit.
fn release(work: &Path, version: &str) -> String {
    push(work, &[("VERSION", &format!("{version}\n"))], version)
}

/// The test's kernelci-core: tests/data/rootfs-tiny's scripts and overlays (which stand in
/// for KernelCI's) under config/rootfs/debos/, plus `extra` there; returns the commit.
fn kernelci_core(work: &Path, extra: &[(&str, &str)]) -> String {
    let debos = work.join("config/rootfs/debos");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rootfs-tiny");
    for sub in ["scripts", "overlays"] {
        copy_dir(&data.join(sub), &debos.join(sub));
    }
    let extra: Vec<(String, &str)> = extra
        .iter()
        .map(|(p, t)| (format!("config/rootfs/debos/{p}"), *t))
        .collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(p, t)| (p.as_str(), *t)).collect();
    push(work, &extra, "rootfs")
}

fn rootfs(ws: &Workspace, config: &str) -> Run {
    ws.kci(&[
        "--images", IMAGES, "rootfs", config, "--arch", "amd64", "--json",
    ])
}

/// `etc/kci-suite` of the stored rootfs.cpio.gz of `report`'s build.
fn suite_version(ws: &Workspace, report: &serde_json::Value) -> String {
    ramdisk_file(ws, report, "etc/kci-suite")
}

#[test]
fn a_pinned_git_source_is_served_from_the_store_and_moves_only_on_refresh() {
    let _g = daemon_lock();
    let up = tempfile::tempdir().unwrap();
    let (bare, work) = upstream(up.path(), "suite");
    let first_commit = release(&work, "one");
    let url = format!("file://{}", bare.display());
    // The script installs git for its own build, clones the suite, and purges git again, as
    // KernelCI's scripts do; the test overlay's motd tells the kernelci-core commits apart.
    let script = format!(
        "#!/bin/sh\nset -e\napt-get install -y --no-install-recommends git\n\
         git clone -q {url} /tmp/suite\ncp /tmp/suite/VERSION /etc/kci-suite\nrm -rf /tmp/suite\n\
         apt-get purge -y git\n"
    );
    // A script that clones a URL no recipe pins and downloads past the archive, yet goes on
    // and exits 0 (no `set -e`).
    let loose_url = format!("file://{}/other.git", up.path().display());
    let loose = format!(
        "#!/bin/sh\napt-get install -y --no-install-recommends git wget\n\
         git clone -q {url} /tmp/suite\nrm -rf /tmp/suite\ngit clone -q {loose_url} /tmp/other\n\
         wget -nv -O /tmp/x.tar.gz https://downloads.example.org/suite.tar.gz\nexit 0\n"
    );
    let (core_bare, core_work) = upstream(up.path(), "kernelci-core");
    let core_first = kernelci_core(
        &core_work,
        &[
            ("scripts/tiny.sh", &script),
            ("scripts/loose.sh", &loose),
            ("overlays/tiny/etc/motd", "core one\n"),
        ],
    );
    let core_url = format!("file://{}", core_bare.display());

    // The recipes directory holds recipes only: scripts and overlays come from kernelci-core.
    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    std::fs::remove_dir_all(ws.path().join("recipes/scripts")).unwrap();
    std::fs::remove_dir_all(ws.path().join("recipes/overlays")).unwrap();
    let recipe = ws.path().join("recipes/tiny.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        format!(
            "{text}\n[git-source.suite]\nurl = \"{url}\"\nref = \"main\"\n\n\
             [git-source.kernelci-core]\nurl = \"{core_url}\"\nref = \"main\"\n"
        ),
    )
    .unwrap();

    // 1. The first build pins today's main and clones it.
    let first = rootfs(&ws, "tiny").ok();
    assert!(
        first.stderr.contains("Pinned") && first.stderr.contains("git source suite"),
        "{}",
        first.stderr
    );
    let first = first.json();
    assert_eq!(suite_version(&ws, &first), "one");
    assert_eq!(ramdisk_file(&ws, &first, "etc/motd"), "core one");
    assert_eq!(
        ramdisk_file(&ws, &first, "etc/kci-script-ran"),
        "",
        "tiny.sh of kernelci-core replaced the recipes directory's"
    );
    let lock_path = ws.path().join("lockfiles/rootfs.lock");
    let lock1 = std::fs::read_to_string(&lock_path).unwrap();
    for (name, u, commit) in [
        ("suite", &url, &first_commit),
        ("kernelci-core", &core_url, &core_first),
    ] {
        assert!(
            lock1.contains(&format!(
                "[git-source.\"{name}\"]\nurl = \"{u}\"\nref = \"main\"\ncommit = \"{commit}\"\n"
            )),
            "{lock1}"
        );
    }
    // The pin stands for kernelci-core's files in the key, not each file.
    assert!(
        lock1.contains("input.\"git-source.kernelci-core\"")
            && !lock1.contains("input.\"file.script\""),
        "{lock1}"
    );

    // 2. The upstreams are gone: the same key, built again from the store's copies, gives
    //    the same bytes.
    std::fs::rename(&core_bare, up.path().join("core-away.git")).unwrap();
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
    std::fs::rename(up.path().join("core-away.git"), &core_bare).unwrap();

    // 3. The upstream branches move: nothing changes until a refresh.
    let second_commit = release(&work, "two");
    let core_second = push(
        &core_work,
        &[("config/rootfs/debos/overlays/tiny/etc/motd", "core two\n")],
        "motd",
    );
    let same = rootfs(&ws, "tiny").ok().json();
    assert_eq!(same["builds"][0]["key"], first["builds"][0]["key"]);
    assert_ne!(same["builds"][0]["action"], "built", "{same}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock1);

    // 4. `lock --refresh` moves the pin; the rebuild clones the new commit; the diff says so.
    let refreshed = ws
        .kci(&["--images", IMAGES, "lock", "--refresh", "--json"])
        .ok()
        .json();
    let moves: Vec<(&str, &str, &str)> = refreshed["git_sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["old"].as_str().unwrap(),
                s["new"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            ("kernelci-core", core_first.as_str(), core_second.as_str()),
            ("suite", first_commit.as_str(), second_commit.as_str())
        ],
        "{refreshed}"
    );
    let moved = rootfs(&ws, "tiny").ok().json();
    assert_ne!(moved["builds"][0]["key"], first["builds"][0]["key"]);
    assert_eq!(suite_version(&ws, &moved), "two");
    assert_eq!(ramdisk_file(&ws, &moved, "etc/motd"), "core two");
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

    // 5. A script that clones a URL no recipe pins and downloads past the archive fails,
    //    naming both and how to pin the clone, though the script itself exits 0.
    ws.write(
        "recipes/loose.toml",
        &std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("name = \"tiny\"", "name = \"loose\"")
            .replace("scripts/tiny.sh", "scripts/loose.sh"),
    );
    let r = rootfs(&ws, "loose");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the build finished, but its script fetched what no pin covers")
            && r.stderr.contains(&format!("the script cloned {loose_url}"))
            && r.stderr.contains("[git-source.other]")
            && r.stderr.contains("recipes/loose.toml")
            && r.stderr.contains(
                "the script downloaded from https://downloads.example.org, where no download"
            )
            && r.stderr.contains("[url-source.<name>]"),
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
