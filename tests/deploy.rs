//! `kci-build deploy`: KernelCI's real test-configs.yaml (2021-12) and rootfs-images.yaml
//! (2022-12) against a rootfs lockfile, with the files served by a real HTTP server.

mod common;
#[path = "common/http_files.rs"]
mod http_files;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::*;
use http_files::FileServer;
use kci_build::core::rootfs_lock::{LockedArtifact, LockedConfig, LockedRootfs, RootfsLockfile};
use serde_yaml_ng::Value;

const BULLSEYE: &str = "20251201.0123456789ab";
const LTP: &str = "20251201.1111aaaa2222";
const IGT: &str = "20251201.cccc3333dddd";
const KSELFTEST: &str = "20251201.4444eeee5555";
const ARCHES: [&str; 3] = ["amd64", "arm64", "armhf"];

/// A lockfile written through the model: `(config, version, files)` on every arch in ARCHES.
fn lockfile(configs: &[(&str, &str, &[&str])], base: &str) -> String {
    let digest = |c: char| {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    };
    let lock = RootfsLockfile {
        apt_index: Default::default(),
        git_source: Default::default(),
        url_source: Default::default(),
        configs: configs
            .iter()
            .map(|(config, version, files)| {
                let arch = ARCHES
                    .iter()
                    .map(|a| {
                        let artifact = files
                            .iter()
                            .map(|f| {
                                (
                                    f.to_string(),
                                    LockedArtifact {
                                        sha256: digest('b'),
                                        size: 7,
                                        url: Some(format!("{base}/{config}/{version}/{a}/{f}")),
                                    },
                                )
                            })
                            .collect();
                        (
                            a.to_string(),
                            LockedRootfs {
                                key: digest('a'),
                                input: BTreeMap::new(),
                                package: BTreeMap::new(),
                                artifact,
                                deb: BTreeMap::new(),
                            },
                        )
                    })
                    .collect();
                (
                    config.to_string(),
                    LockedConfig {
                        version: version.to_string(),
                        arch,
                    },
                )
            })
            .collect(),
    };
    lock.to_text()
}

/// Serves `debian/<config>/<version>/<arch>/<file>` for every arch, except `skip`.
fn upload(server: &FileServer, config: &str, version: &str, files: &[&str], skip: Option<&str>) {
    for arch in ARCHES {
        for f in files {
            let rel = format!("debian/{config}/{version}/{arch}/{f}");
            if skip != Some(rel.as_str()) {
                server.put(&rel, b"rootfs\n");
            }
        }
    }
}

/// A unified diff (no context lines) of two texts with the same number of lines, which is
/// all an in-place scalar edit can give: written here, independently of kci-build.
fn unified_diff(name: &str, old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.split('\n').collect(), new.split('\n').collect());
    assert_eq!(a.len(), b.len(), "the number of lines changed");
    let mut out = format!("--- a/{name}\n+++ b/{name}\n");
    let mut i = 0;
    while i < a.len() {
        if a[i] == b[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < a.len() && a[i] != b[i] {
            i += 1;
        }
        let n = i - start;
        let range = if n == 1 {
            format!("{}", start + 1)
        } else {
            format!("{},{n}", start + 1)
        };
        out.push_str(&format!("@@ -{range} +{range} @@\n"));
        for l in &a[start..i] {
            out.push_str(&format!("-{l}\n"));
        }
        for l in &b[start..i] {
            out.push_str(&format!("+{l}\n"));
        }
    }
    out
}

fn parsed(text: &str) -> Value {
    let mut v: Value = serde_yaml_ng::from_str(text).unwrap();
    v.apply_merge().unwrap();
    v
}

fn field<'v>(doc: &'v Value, entry: &str, field: &str) -> &'v str {
    doc["file_systems"][entry][field]
        .as_str()
        .unwrap_or_else(|| panic!("file_systems.{entry}.{field}"))
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn age(p: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

fn entry<'j>(report: &'j serde_json::Value, name: &str) -> &'j serde_json::Value {
    report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in the report: {report}"))
}

const NFS: &[&str] = &["initrd.cpio.gz", "full.rootfs.tar.xz"];
const RAMDISK: &[&str] = &["rootfs.cpio.gz"];
const BOTH: &[&str] = &["rootfs.cpio.gz", "initrd.cpio.gz", "full.rootfs.tar.xz"];

#[test]
fn deploy_rewrites_only_the_path_scalars_of_test_configs() {
    let ws = Workspace::new();
    let original = include_str!("data/test-configs.2021-12.yaml");
    ws.write("test-configs.yaml", original);
    let file = ws.path().join("test-configs.yaml");
    let storage = tempfile::tempdir().unwrap();
    let server = FileServer::serve(storage.path());
    let base = format!("{}/debian", server.url);
    ws.write(
        "lockfiles/rootfs.lock",
        &lockfile(
            &[
                ("bullseye", BULLSEYE, BOTH),
                ("bullseye-ltp", LTP, NFS),
                ("bullseye-igt", IGT, RAMDISK),
                ("buster-kselftest", KSELFTEST, NFS),
                ("bookworm", "20251201.ffffffffffff", BOTH),
            ],
            &base,
        ),
    );
    upload(&server, "bullseye", BULLSEYE, BOTH, None);
    upload(&server, "bullseye-ltp", LTP, NFS, None);
    upload(&server, "buster-kselftest", KSELFTEST, NFS, None);
    let igt_gone = format!("debian/bullseye-igt/{IGT}/arm64/rootfs.cpio.gz");
    upload(&server, "bullseye-igt", IGT, RAMDISK, Some(&igt_gone));

    let deploy = |extra: &[&str]| {
        let mut args = vec![
            "deploy",
            "--test-configs",
            "test-configs.yaml",
            "--storage-url",
            &base,
        ];
        args.extend_from_slice(extra);
        ws.kci(&args)
    };

    // --check before the deploy: out of date, exit 1, nothing written.
    age(&file);
    let r = deploy(&["--check"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("test-configs.yaml is not up to date with lockfiles/rootfs.lock")
            && r.stderr.contains("debian_bullseye_nfs"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("ramdisk: bullseye/20211224.1/{arch}/initrd.cpio.gz → bullseye/20251201.0123456789ab/{arch}/initrd.cpio.gz"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    assert_eq!(
        mtime(&file),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    );

    // The deploy: bullseye-igt lacks its arm64 file and keeps its version; the rest is
    // written (keeping the file's mode); exit 1 names it.
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    };
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o664)).unwrap();
    let r = deploy(&["--json"]);
    assert_eq!(mode(&file), 0o664, "the rewrite changed the file's mode");
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("debian_bullseye-igt_ramdisk keeps 20211224.0")
            && r.stderr
                .contains(&format!("{base}/bullseye-igt/{IGT}/arm64/rootfs.cpio.gz"))
            && r.stderr.contains("1 entry kept the old version"),
        "{}",
        r.stderr
    );
    let new = std::fs::read_to_string(&file).unwrap();
    let expected_diff = "\
--- a/test-configs.yaml
+++ b/test-configs.yaml
@@ -47 +47 @@
-    ramdisk: 'bullseye/20211224.1/{arch}/rootfs.cpio.gz'
+    ramdisk: 'bullseye/20251201.0123456789ab/{arch}/rootfs.cpio.gz'
@@ -51,2 +51,2 @@
-    ramdisk: 'bullseye/20211224.1/{arch}/initrd.cpio.gz'
-    nfs: 'bullseye/20211224.1/{arch}/full.rootfs.tar.xz'
+    ramdisk: 'bullseye/20251201.0123456789ab/{arch}/initrd.cpio.gz'
+    nfs: 'bullseye/20251201.0123456789ab/{arch}/full.rootfs.tar.xz'
@@ -71,2 +71,2 @@
-    ramdisk: 'bullseye-ltp/20211221.0/{arch}/initrd.cpio.gz'
-    nfs: 'bullseye-ltp/20211221.0/{arch}/full.rootfs.tar.xz'
+    ramdisk: 'bullseye-ltp/20251201.1111aaaa2222/{arch}/initrd.cpio.gz'
+    nfs: 'bullseye-ltp/20251201.1111aaaa2222/{arch}/full.rootfs.tar.xz'
@@ -81,2 +81,2 @@
-    ramdisk: 'buster-kselftest/20211224.2/{arch}/initrd.cpio.gz'
-    nfs: 'buster-kselftest/20211224.2/{arch}/full.rootfs.tar.xz'
+    ramdisk: 'buster-kselftest/20251201.4444eeee5555/{arch}/initrd.cpio.gz'
+    nfs: 'buster-kselftest/20251201.4444eeee5555/{arch}/full.rootfs.tar.xz'
";
    assert_eq!(
        unified_diff("test-configs.yaml", original, &new),
        expected_diff
    );

    // Re-parsed: the intended values, and the whole document otherwise equal.
    let (before, after) = (parsed(original), parsed(&new));
    let intended = [
        (
            "debian_bullseye_ramdisk",
            "ramdisk",
            format!("bullseye/{BULLSEYE}/{{arch}}/rootfs.cpio.gz"),
        ),
        (
            "debian_bullseye_nfs",
            "ramdisk",
            format!("bullseye/{BULLSEYE}/{{arch}}/initrd.cpio.gz"),
        ),
        (
            "debian_bullseye_nfs",
            "nfs",
            format!("bullseye/{BULLSEYE}/{{arch}}/full.rootfs.tar.xz"),
        ),
        (
            "debian_bullseye-ltp_nfs",
            "ramdisk",
            format!("bullseye-ltp/{LTP}/{{arch}}/initrd.cpio.gz"),
        ),
        (
            "debian_bullseye-ltp_nfs",
            "nfs",
            format!("bullseye-ltp/{LTP}/{{arch}}/full.rootfs.tar.xz"),
        ),
        (
            "debian_buster_kselftest",
            "ramdisk",
            format!("buster-kselftest/{KSELFTEST}/{{arch}}/initrd.cpio.gz"),
        ),
        (
            "debian_buster_kselftest",
            "nfs",
            format!("buster-kselftest/{KSELFTEST}/{{arch}}/full.rootfs.tar.xz"),
        ),
    ];
    let mut want = before.clone();
    for (e, f, v) in &intended {
        assert_eq!(field(&after, e, f), v);
        want["file_systems"][*e][*f] = Value::String(v.clone());
    }
    assert_eq!(
        field(&after, "debian_bullseye-igt_ramdisk", "ramdisk"),
        "bullseye-igt/20211224.0/{arch}/rootfs.cpio.gz"
    );
    assert_eq!(after, want);
    // Merge keys still resolve (igt-gpu-* merge `*igt`).
    assert_eq!(
        after["test_plans"]["igt-gpu-i915"]["rootfs"],
        "debian_bullseye-igt_ramdisk"
    );

    let report = r.json();
    assert_eq!(report["written"], true);
    assert_eq!(
        entry(&report, "debian_bullseye_nfs"),
        &serde_json::json!({
            "name": "debian_bullseye_nfs", "config": "bullseye", "old": "20211224.1",
            "new": BULLSEYE, "status": "updated", "missing_urls": [],
        })
    );
    assert_eq!(
        entry(&report, "debian_bullseye-igt_ramdisk"),
        &serde_json::json!({
            "name": "debian_bullseye-igt_ramdisk", "config": "bullseye-igt",
            "old": "20211224.0", "new": IGT, "status": "missing",
            "missing_urls": [format!("{base}/bullseye-igt/{IGT}/arm64/rootfs.cpio.gz")],
        })
    );
    assert_eq!(
        entry(&report, "debian_buster_kselftest")["config"],
        "buster-kselftest"
    );
    // Only the lockfile's debian configs: no buildroot, cip, or configs it does not have.
    let names: Vec<&str> = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "debian_bullseye_ramdisk",
            "debian_bullseye_nfs",
            "debian_bullseye-igt_ramdisk",
            "debian_bullseye-ltp_nfs",
            "debian_buster_kselftest",
        ]
    );
    assert!(server
        .requests()
        .iter()
        .all(|r| r.starts_with("HEAD /debian/")));

    // The missing file arrives: igt is deployed, nothing else moves.
    server.put(&igt_gone, b"rootfs\n");
    let r = deploy(&[]).ok();
    assert!(
        r.stderr
            .contains("Updated debian_bullseye-igt_ramdisk 20211224.0 → 20251201.cccc3333dddd"),
        "{}",
        r.stderr
    );
    let newer = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        unified_diff("test-configs.yaml", &new, &newer),
        "\
--- a/test-configs.yaml
+++ b/test-configs.yaml
@@ -61 +61 @@
-    ramdisk: 'bullseye-igt/20211224.0/{arch}/rootfs.cpio.gz'
+    ramdisk: 'bullseye-igt/20251201.cccc3333dddd/{arch}/rootfs.cpio.gz'
"
    );

    // Up to date: nothing written (mtime kept), nothing asked, nothing reported changed.
    age(&file);
    let asked = server.requests().len();
    let r = deploy(&["--json"]).ok();
    assert_eq!(
        mtime(&file),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), newer);
    let report = r.json();
    assert_eq!(report["written"], false);
    assert!(report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["status"] == "unchanged" && e["old"] == e["new"]));
    assert!(!r.stderr.contains("Updated"), "{}", r.stderr);
    assert_eq!(server.requests().len(), asked);
    let r = deploy(&["--check"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        mtime(&file),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    );
}

#[test]
fn deploy_updates_the_generated_rootfs_images_yaml() {
    let ws = Workspace::new();
    let original = include_str!("data/rootfs-images.2022-12.yaml");
    ws.write("rootfs-images.yaml", original);
    let file = ws.path().join("rootfs-images.yaml");
    let storage = tempfile::tempdir().unwrap();
    let server = FileServer::serve(storage.path());
    let base = format!("{}/debian", server.url);
    ws.write(
        "rootfs.lock",
        &lockfile(
            &[("bullseye", BULLSEYE, BOTH), ("bullseye-ltp", LTP, BOTH)],
            &base,
        ),
    );
    upload(&server, "bullseye", BULLSEYE, BOTH, None);
    upload(&server, "bullseye-ltp", LTP, BOTH, None);

    // Without --storage-url there is no base URL to check.
    let args = [
        "deploy",
        "--format",
        "rootfs-images",
        "--test-configs",
        "rootfs-images.yaml",
        "--lockfile",
        "rootfs.lock",
    ];
    let r = ws.kci(&args);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--storage-url"), "{}", r.stderr);

    let mut with_url = args.to_vec();
    with_url.extend(["--storage-url", &base]);
    ws.kci(&with_url).ok();
    let new = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        unified_diff("rootfs-images.yaml", original, &new),
        "\
--- a/rootfs-images.yaml
+++ b/rootfs-images.yaml
@@ -51 +51 @@
-    nfs: bullseye-ltp/20221216.0/{arch}/full.rootfs.tar.xz
+    nfs: bullseye-ltp/20251201.1111aaaa2222/{arch}/full.rootfs.tar.xz
@@ -54 +54 @@
-    ramdisk: bullseye-ltp/20221216.0/{arch}/initrd.cpio.gz
+    ramdisk: bullseye-ltp/20251201.1111aaaa2222/{arch}/initrd.cpio.gz
@@ -61 +61 @@
-    ramdisk: bullseye-ltp/20221216.0/{arch}/rootfs.cpio.gz
+    ramdisk: bullseye-ltp/20251201.1111aaaa2222/{arch}/rootfs.cpio.gz
@@ -80 +80 @@
-    nfs: bullseye/20221216.0/{arch}/full.rootfs.tar.xz
+    nfs: bullseye/20251201.0123456789ab/{arch}/full.rootfs.tar.xz
@@ -83 +83 @@
-    ramdisk: bullseye/20221216.0/{arch}/initrd.cpio.gz
+    ramdisk: bullseye/20251201.0123456789ab/{arch}/initrd.cpio.gz
@@ -90 +90 @@
-    ramdisk: bullseye/20221216.0/{arch}/rootfs.cpio.gz
+    ramdisk: bullseye/20251201.0123456789ab/{arch}/rootfs.cpio.gz
"
    );
    // Still the generated form: header kept, sorted keys, every field explicit.
    assert!(new.starts_with("# Automatically generated (20221216.0)\nfile_systems:\n"));
    let doc = parsed(&new);
    let fs = doc["file_systems"].as_mapping().unwrap();
    let names: Vec<&str> = fs.keys().map(|k| k.as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for (name, e) in fs {
        let keys: Vec<&str> = e
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "{name:?}");
        for k in [
            "boot_protocol",
            "params",
            "prompt",
            "ramdisk",
            "root_type",
            "type",
        ] {
            assert!(keys.contains(&k), "{name:?} lacks {k}");
        }
    }
    assert_eq!(
        field(&doc, "debian_bullseye_nfs", "ramdisk"),
        format!("bullseye/{BULLSEYE}/{{arch}}/initrd.cpio.gz")
    );
    assert_eq!(field(&doc, "debian_bullseye_nfs", "prompt"), "/ #");

    age(&file);
    let mut check = with_url.clone();
    check.push("--check");
    ws.kci(&check).ok();
    ws.kci(&with_url).ok();
    assert_eq!(
        mtime(&file),
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
    );
}

#[test]
fn an_unreachable_storage_is_an_environment_error_and_writes_nothing() {
    let ws = Workspace::new();
    let original = include_str!("data/test-configs.2021-12.yaml");
    ws.write("test-configs.yaml", original);
    let storage = tempfile::tempdir().unwrap();
    let server = FileServer::serve(storage.path());
    let base = format!("{}/debian", server.url);
    drop(server);
    std::thread::sleep(Duration::from_millis(100));
    ws.write(
        "lockfiles/rootfs.lock",
        &lockfile(&[("bullseye", BULLSEYE, BOTH)], &base),
    );
    let r = ws.kci(&[
        "deploy",
        "--test-configs",
        "test-configs.yaml",
        "--storage-url",
        &base,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("the storage did not answer"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(ws.path().join("test-configs.yaml")).unwrap(),
        original
    );
}

#[test]
fn deploy_help_teaches_with_an_example_and_a_missing_lockfile_is_named() {
    let ws = Workspace::new();
    let r = ws.kci(&["deploy", "--help"]).ok();
    assert!(
        r.stdout.contains("kci-build deploy --test-configs")
            && r.stdout.contains("--check")
            && r.stdout
                .contains("--lockfile defaults to lockfiles/rootfs.lock"),
        "{}",
        r.stdout
    );
    ws.write("t.yaml", "file_systems: {}\n");
    let r = ws.kci(&["deploy", "--test-configs", "t.yaml"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("lockfiles/rootfs.lock: no rootfs lockfile"),
        "{}",
        r.stderr
    );
    let r = ws.kci(&["deploy", "--test-configs", "t.yaml", "--lockfile", "x.lock"]);
    assert!(
        r.stderr.contains("x.lock: no rootfs lockfile"),
        "{}",
        r.stderr
    );
}
