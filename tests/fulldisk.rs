//! A full disk: the store on a size-limited tmpfs made by the test (root, as in `.ci/run`),
//! too small for the busybox image's layer. The build exits 2 saying the file system is
//! full and naming the store; it leaves no blob, temp file, key record or lockfile entry;
//! after the tmpfs grows (`mount -o remount,size=…`, space freed) the same command completes,
//! with the manifests of a build that never ran out of space.

mod common;

use common::*;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (.ci/run runs as root)"
        );
        Tmpfs(dir.to_owned())
    }

    fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // The store's detached apt proxy may still hold it for a while: detach it lazily
        // then (it is freed when the proxy exits).
        let ok = std::process::Command::new("umount")
            .arg(&self.0)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
}

/// Every file under `dir`, relative.
fn files(dir: &std::path::Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

#[test]
fn a_full_store_fails_cleanly_and_the_rerun_completes_after_space_is_freed() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    // busybox's layer is about 1 MiB gzipped: 512 KiB holds the store's small files only.
    let fs = Tmpfs::mount(&ws.store(), "512k");

    let full = ws.kci(&["build"]);
    assert_eq!(full.code, 2, "{}", full.stderr);
    assert!(
        full.stderr.contains("No space left on device")
            && full.stderr.contains(&ws.store().display().to_string())
            && full.stderr.contains("file system is full"),
        "{}",
        full.stderr
    );
    let left = files(&ws.store());
    assert!(
        left.iter()
            .all(|f| !f.starts_with("blobs/") && !f.starts_with("keys/") && !f.starts_with("tmp/")),
        "a full disk left {left:?}"
    );
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap_or_default();
    assert!(!lock.contains("[target."), "{lock}");

    fs.resize("64m");
    let done = ws.kci(&["build", "--json"]).ok().json();
    let clean = Workspace::new();
    clean.add_busybox();
    clean.add_child("child", "child:hello", "busybox", "hello");
    let reference = clean.kci(&["build", "--json"]).ok().json();
    assert_eq!(manifests(&done), manifests(&reference));
    let verify = ws.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}

/// Bytes used on the file system holding `dir`.
fn used_bytes(dir: &std::path::Path) -> u64 {
    sh(&format!("df --output=used -B1 {} | tail -1", dir.display()))
        .trim()
        .parse()
        .unwrap()
}

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

/// A full disk while a rootfs is collected and packed: a first build of the tiny config
/// (amd64) fills the store's apt cache; the config's script then changes (a new key, the
/// same packages) and the tmpfs shrinks to leave 16 MiB, less than the raw trees. The run
/// exits 2 saying the store is full and where, leaves no temp or key directory and no lock
/// entry for the new key, and keeps the finished container: after the tmpfs grows, the
/// same command collects it and completes, and the store verifies clean.
#[test]
fn a_store_filling_up_while_a_rootfs_is_packed_fails_cleanly_and_the_rerun_completes() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    let fs = Tmpfs::mount(&ws.store(), "8g");
    let rootfs = |ws: &Workspace| {
        ws.kci(&[
            "--images", IMAGES, "rootfs", "tiny", "--arch", "amd64", "--json",
        ])
    };
    rootfs(&ws).ok();

    let script = ws.path().join("recipes/scripts/tiny.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("echo full-disk > /etc/kci-full-disk\n");
    std::fs::write(&script, text).unwrap();
    let used = used_bytes(&ws.store());
    fs.resize(&format!("{}k", used / 1024 + 16 * 1024));

    let full = rootfs(&ws);
    assert_eq!(full.code, 2, "{}", full.stderr);
    assert!(
        full.stderr.contains("No space left on device")
            && full.stderr.contains("file system is full")
            && full
                .stderr
                .contains(&ws.store().join("rootfs").display().to_string()),
        "{}",
        full.stderr
    );
    let report = full.json();
    let failed = &report["builds"][0];
    assert_eq!(failed["action"], "failed", "{report}");
    assert_eq!(failed["disk_full"], true, "{report}");
    let key = failed["key"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let left: Vec<String> = std::fs::read_dir(ws.store().join("rootfs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|f| !f.contains(&key)),
        "a full disk left {left:?} for key {key}"
    );
    let lock = std::fs::read_to_string(ws.path().join("lockfiles/rootfs.lock")).unwrap();
    assert!(!lock.contains(&key), "{lock}");

    fs.resize("8g");
    let done = rootfs(&ws).ok().json();
    assert_eq!(
        done["builds"][0]["key"].as_str().unwrap(),
        format!("sha256:{key}")
    );
    assert_eq!(done["builds"][0]["action"], "resumed", "{done}");
    assert!(ws
        .store()
        .join("rootfs")
        .join(&key)
        .join("manifest.json")
        .is_file());
    let lock = std::fs::read_to_string(ws.path().join("lockfiles/rootfs.lock")).unwrap();
    assert!(lock.contains(&key), "{lock}");
    let verify = ws.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}
