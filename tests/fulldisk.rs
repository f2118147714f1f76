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
        let _ = std::process::Command::new("umount").arg(&self.0).status();
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
