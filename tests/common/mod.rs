//! Shared fixtures: a throw-away recipe tree and store, and a way to run the real binary.
#![allow(dead_code)]

pub mod aptrepo;
pub mod backend;
pub mod git;
pub mod jenkins;
pub mod registry;
pub mod storage_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Tests that watch the daemon's events must not overlap with other builds.
pub static DAEMON: Mutex<()> = Mutex::new(());

pub fn daemon_lock() -> std::sync::MutexGuard<'static, ()> {
    DAEMON.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `cmd` with `sh -c`; panics with its stderr when it fails; returns its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "kci-build failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl Workspace {
    /// A recipe tree with `config.toml` only.
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        std::fs::write(
            dir.path().join("images/config.toml"),
            "prefix = \"kernelci/\"\nsource-date-epoch = 1717200000\n",
        )
        .unwrap();
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn store(&self) -> PathBuf {
        self.path().join("store")
    }

    pub fn lockfile(&self) -> PathBuf {
        self.path().join("lockfiles/images.lock")
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    /// `busybox`: FROM scratch with Debian's static busybox; children run shell in it.
    pub fn add_busybox(&self) {
        let bb = Path::new("/bin/busybox");
        assert!(
            bb.exists(),
            "/bin/busybox is missing: install Debian's busybox-static (.ci/run does)"
        );
        let dest = self.path().join("images/busybox/busybox");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(bb, &dest).unwrap();
        self.write("images/busybox/Dockerfile", "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n");
        self.write(
            "images/busybox/image.toml",
            "[[target]]\nname = \"busybox\"\n",
        );
    }

    /// The `tiny` rootfs config (tests/data/rootfs-tiny, shared with bench/rootfs.sh), with
    /// the stand-ins of kernelci-core's scripts and overlays it names, as `recipes/`.
    pub fn add_tiny_rootfs(&self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        copy_dir(
            &root.join("tests/data/rootfs-tiny"),
            &self.path().join("recipes"),
        );
    }

    /// A child image built on `parent` that writes a file from a build arg and a context file.
    pub fn add_child(&self, dir: &str, name: &str, parent: &str, greeting: &str) {
        self.write(
            &format!("images/{dir}/Dockerfile"),
            "ARG PARENT\nFROM ${PARENT}\nARG GREETING\nCOPY data.txt /etc/kci/data.txt\nRUN mkdir -p /tmp && echo \"$GREETING\" > /etc/kci/greeting && date > /tmp/noise\n",
        );
        self.write(&format!("images/{dir}/data.txt"), &format!("{dir}\n"));
        self.write(&format!("images/{dir}/image.toml"), &format!("[[target]]\nname = \"{name}\"\nparent = \"{parent}\"\nargs = {{ GREETING = \"{greeting}\" }}\n"));
    }

    pub fn kci(&self, args: &[&str]) -> Run {
        self.kci_env(args, &[])
    }

    pub fn kci_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kci-build"));
        cmd.current_dir(self.path())
            .env("KCI_BUILD_STORE", self.store())
            .env_remove("KCI_BUILD_IMAGES")
            .env_remove("KCI_BUILD_LOCKFILE")
            .args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Run::from(cmd.output().unwrap())
    }
}

/// `name → action` from a `build --json` report.
/// Copies the tree `from` into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
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

pub fn actions(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    per_target(report, "action")
}

/// `name → manifest digest` from a `build --json` report.
pub fn manifests(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    per_target(report, "manifest")
}

fn per_target(
    report: &serde_json::Value,
    field: &str,
) -> std::collections::BTreeMap<String, String> {
    let targets = report["targets"].as_array().expect("a build report");
    targets
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t[field].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Containers the daemon created since `since` (unix seconds): every RUN step of a real
/// build creates one, so zero means no build ran.
pub fn containers_created_since(since: u64) -> usize {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            "type=container",
            "--filter",
            "event=create",
            "--format",
            "{{.ID}}",
        ])
        .output()
        .expect("docker CLI (tests use it to watch the daemon independently)");
    assert!(
        out.status.success(),
        "docker events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

/// Waits for the next whole second and returns it, so `docker events --since` (whole
/// seconds) cannot count what happened before the call.
pub fn next_second() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_nanos(
        1_000_000_000 - u64::from(t.subsec_nanos()),
    ));
    t.as_secs() + 1
}

/// Removes the images kci-build loaded into the daemon for `store`'s targets, so a build
/// starts from a clean daemon too.
pub fn remove_loaded_images(prefix: &str) {
    let out = Command::new("docker")
        .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .unwrap();
    for r in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|r| r.starts_with(prefix))
    {
        let _ = Command::new("docker")
            .args(["image", "rm", "-f", r])
            .output();
    }
}

/// `arch/file → sha256` of every artifact of a `rootfs --json` report.
pub fn rootfs_sums(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
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

/// `path` out of the stored rootfs.cpio.gz of the first build of a `rootfs --json` report
/// (empty when the ramdisk has no such file).
pub fn ramdisk_file(ws: &Workspace, report: &serde_json::Value, path: &str) -> String {
    let key = report["builds"][0]["key"].as_str().unwrap();
    let cpio = ws
        .store()
        .join("rootfs")
        .join(key.strip_prefix("sha256:").unwrap())
        .join("rootfs.cpio.gz");
    sh(&format!(
        "zcat {} | cpio -i --quiet --to-stdout {path}",
        cpio.display()
    ))
    .trim()
    .to_owned()
}
