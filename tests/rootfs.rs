//! `kci-build rootfs` for real: the rootfs-builder image (bootstrapped from the machine's
//! Debian mirror), mmdebstrap in detached containers, amd64 and arm64 (through
//! qemu-user-static). Built twice from an empty rootfs store — the second time killed
//! mid-build and resumed — the five files and the manifest must have the same sha256; the
//! files land in a storage directory, verified, and in the lockfile with their URLs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");
const OVERLAYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/recipes/overlays");
const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rootfs-tiny");

/// The `tiny` config (tests/data/rootfs-tiny, shared with bench/rootfs.sh) and the
/// standard overlays, as `recipes/`.
fn write_tiny_recipe(ws: &Workspace) {
    copy_dir(Path::new(TINY), &ws.path().join("recipes"));
    copy_dir(Path::new(OVERLAYS), &ws.path().join("recipes/overlays"));
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walkdir::WalkDir::new(from) {
        let e = e.unwrap();
        let dest = to.join(e.path().strip_prefix(from).unwrap());
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

fn rootfs(ws: &Workspace, extra: &[&str]) -> Run {
    let mut args = vec!["--images", IMAGES, "rootfs", "tiny", "--json"];
    args.extend_from_slice(extra);
    ws.kci(&args)
}

/// `arch/file → sha256` from a report.
fn sums(report: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for b in report["builds"].as_array().unwrap() {
        for (name, a) in b["artifacts"].as_object().unwrap() {
            out.insert(
                format!("{}/{name}", b["arch"].as_str().unwrap()),
                a["sha256"].as_str().unwrap().to_owned(),
            );
        }
    }
    out
}

fn actions_of(report: &serde_json::Value) -> BTreeMap<String, String> {
    report["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["arch"].as_str().unwrap().to_owned(),
                b["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// This test's build containers (other rootfs builds may run on the same daemon).
fn running_rootfs_containers() -> Vec<String> {
    tiny_containers(false)
}

/// The `tiny` build containers, running ones or (with `all`) any.
fn tiny_containers(all: bool) -> Vec<String> {
    let mut ps = Command::new("docker");
    ps.arg("ps");
    if all {
        ps.arg("--all");
    }
    let out = ps
        .args([
            "--filter",
            "label=org.kernelci.kci-build.rootfs",
            "--filter",
            "name=kci-rootfs-tiny-",
            "--format",
            "{{.Names}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tiny_rootfs_is_reproducible_for_amd64_and_arm64_and_resumes_after_a_kill() {
    let _g = daemon_lock();
    // A run of this test that was itself killed (e.g. a CI job cut short) leaves its
    // containers on the daemon, and kci-build would rightly pick them up: start clean.
    for name in tiny_containers(true) {
        sh(&format!("docker rm -f -v {name}"));
    }
    assert!(tiny_containers(true).is_empty());
    let volumes_before = sh("docker volume ls -q --filter dangling=true");
    let ws = Workspace::new();
    write_tiny_recipe(&ws);
    let storage = ws.path().join("storage");
    let storage_arg = storage.to_str().unwrap().to_owned();
    let public = "http://files.test/rootfs";

    // 1. First build, both arches, uploaded to a storage directory.
    let first = rootfs(&ws, &["--storage", &storage_arg, "--public-url", public]).ok();
    let first_report = first.json();
    assert_eq!(
        actions_of(&first_report),
        BTreeMap::from([
            ("amd64".to_owned(), "built".to_owned()),
            ("arm64".to_owned(), "built".to_owned())
        ])
    );
    let first_sums = sums(&first_report);
    assert_eq!(first_sums.len(), 10, "{first_sums:?}");
    let version = first_report["versions"]["tiny"]
        .as_str()
        .unwrap()
        .to_owned();
    let lock = std::fs::read_to_string(ws.path().join("lockfiles/rootfs.lock")).unwrap();
    assert!(lock.contains(&format!("version = \"{version}\"")), "{lock}");
    assert!(lock.contains(&format!(
        "artifact.\"rootfs.cpio.gz\".url = \"{public}/tiny/{version}/arm64/rootfs.cpio.gz\""
    )));
    assert!(lock.contains("package.\"systemd:arm64\" = "), "{lock}");

    // The uploaded files are the stored bytes.
    for (name, sum) in &first_sums {
        let file = storage.join("tiny").join(&version).join(name);
        let got = sh(&format!("sha256sum {}", file.display()));
        assert_eq!(format!("sha256:{}", &got[..64]), *sum, "{name}");
    }

    // What is inside: the recipe's steps happened, for the right arch.
    let amd64 = storage.join(format!("tiny/{version}/amd64"));
    let list = sh(&format!(
        "zcat {} | cpio -it --quiet",
        amd64.join("rootfs.cpio.gz").display()
    ));
    for want in [
        "etc/kci-script-ran",
        "etc/kci-test-overlay",
        "init",
        "etc/hostname",
    ] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} not in rootfs.cpio.gz"
        );
    }
    assert!(
        !list.lines().any(|l| l == "usr/bin/lsusb"),
        "usbutils was not purged"
    );
    assert!(
        !list.contains("nosuspend.conf"),
        "extra-files-remove ignored"
    );
    let full = sh(&format!(
        "xz -dc {} | tar -t",
        amd64.join("full.rootfs.tar.xz").display()
    ));
    assert!(
        full.lines().any(|l| l == "usr/bin/lsusb"),
        "the full tree keeps usbutils"
    );
    let arm_hostname = sh(&format!(
        "d=$(mktemp -d) && cd $d && zcat {} | cpio -id --quiet etc/hostname etc/kci-script-ran && cat etc/hostname etc/kci-script-ran",
        storage.join(format!("tiny/{version}/arm64/rootfs.cpio.gz")).display()
    ));
    assert_eq!(arm_hostname, "debian-bookworm-arm64\nbuilt for arm64\n");
    let ext4 = sh(&format!(
        "d=$(mktemp -d) && xz -dc {} > $d/img && e2fsck -fn $d/img >/dev/null && debugfs -R 'cat /etc/hostname' $d/img 2>/dev/null; rm -rf $d",
        amd64.join("rootfs.ext4.xz").display()
    ));
    assert_eq!(ext4, "debian-bookworm-amd64\n");
    let initrd = sh(&format!(
        "zcat {} | cpio -it --quiet",
        amd64.join("initrd.cpio.gz").display()
    ));
    assert!(initrd.lines().any(|l| l == "init"), "initrd has no /init");
    assert!(
        initrd.lines().any(|l| l == "scripts/nfs"),
        "initrd cannot mount NFS"
    );

    // 2. A rerun with everything stored: nothing is built, nothing uploaded, same lockfile.
    let t = Instant::now();
    let again = rootfs(&ws, &["--storage", &storage_arg, "--public-url", public]).ok();
    let cached_secs = t.elapsed().as_secs_f64();
    let again = again.json();
    assert_eq!(
        actions_of(&again),
        BTreeMap::from([
            ("amd64".to_owned(), "cached".to_owned()),
            ("arm64".to_owned(), "cached".to_owned())
        ])
    );
    assert_eq!(again["uploaded"], 0);
    assert_eq!(again["lockfile_changed"], false);
    eprintln!("cached rerun: {cached_secs:.2}s");

    // 3. An empty rootfs store, but the files are on the storage: nothing is rebuilt.
    std::fs::remove_dir_all(ws.store().join("rootfs")).unwrap();
    let remote = rootfs(&ws, &["--storage", &storage_arg, "--public-url", public]).ok();
    let remote = remote.json();
    assert_eq!(
        actions_of(&remote),
        BTreeMap::from([
            ("amd64".to_owned(), "on-storage".to_owned()),
            ("arm64".to_owned(), "on-storage".to_owned())
        ])
    );
    assert_eq!(sums(&remote), first_sums);
    assert_eq!(remote["lockfile_changed"], false);

    // 4. From an empty rootfs store again, without the storage; kill kci-build in the middle
    // of the amd64 build.
    let _ = std::fs::remove_dir_all(ws.store().join("rootfs"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .args(["--images", IMAGES, "rootfs", "tiny", "--arch", "amd64"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if !running_rootfs_containers().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no build container started");
        assert!(child.try_wait().unwrap().is_none(), "kci-build ended early");
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        running_rootfs_containers().len(),
        1,
        "the build container must survive its client"
    );
    assert!(
        !ws.store().join("rootfs").exists()
            || std::fs::read_dir(ws.store().join("rootfs"))
                .unwrap()
                .all(|e| e.unwrap().file_name().to_string_lossy().starts_with("tmp-")),
        "a killed run left a stored result"
    );
    let resumed = rootfs(&ws, &["--resume"]).ok();
    let resumed_report = resumed.json();
    assert_eq!(
        actions_of(&resumed_report),
        BTreeMap::from([
            ("amd64".to_owned(), "resumed".to_owned()),
            ("arm64".to_owned(), "built".to_owned())
        ]),
        "{}",
        resumed.stderr
    );
    assert!(resumed.stderr.contains("Attaching"), "{}", resumed.stderr);
    assert!(running_rootfs_containers().is_empty());
    assert!(
        std::fs::read_dir(ws.store().join("rootfs"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("tmp-")),
        "temp dirs left in the rootfs store"
    );

    // 5. Same bytes, file by file, for both arches.
    assert_eq!(sums(&resumed_report), first_sums);
    assert_eq!(resumed_report["versions"]["tiny"], version.as_str());

    // 6. A recipe change, rebuilt for amd64: `kci-build diff` of the two real lockfiles shows
    // the packages it brought, the new version and which files changed.
    let lock_path = ws.path().join("lockfiles/rootfs.lock");
    std::fs::copy(&lock_path, ws.path().join("old-rootfs.lock")).unwrap();
    let recipe = ws.path().join("recipes/tiny.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("[\"netbase\"]", "[\"bc\", \"netbase\"]"),
    )
    .unwrap();
    rootfs(&ws, &["--arch", "amd64"]).ok();
    let diff = ws
        .kci(&["diff", "old-rootfs.lock", "lockfiles/rootfs.lock"])
        .ok()
        .stdout;
    assert!(diff.contains("changed  tiny/amd64 (new output: "), "{diff}");
    assert!(diff.contains("    + bc:amd64 "), "{diff}");
    assert!(
        diff.contains("    input recipe.extra-packages: netbase -> bc netbase"),
        "{diff}"
    );
    assert!(diff.contains("    output rootfs.cpio.gz: "), "{diff}");
    assert!(diff.contains("removed  tiny/arm64"), "{diff}");

    // Every build container took its /out volume with it.
    assert!(tiny_containers(true).is_empty());
    assert_eq!(
        sh("docker volume ls -q --filter dangling=true"),
        volumes_before,
        "rootfs builds left volumes behind"
    );
}
