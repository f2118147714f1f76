//! `build --engines`: the image graph over two real Docker engines — the CI daemon and a
//! second `dockerd` on its own socket, data root, exec root and network namespace, named by a real Docker
//! context (made with the docker CLI). A graph split over both gives the digests a
//! one-engine build gives; the second engine killed mid-build has its work moved to the
//! first.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A second Docker engine, stopped and removed on drop (even when the test fails).
struct SecondEngine {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
}

impl SecondEngine {
    fn start() -> SecondEngine {
        let dir = tempfile::tempdir().unwrap();
        let p = |rel: &str| dir.path().join(rel).display().to_string();
        // Its own config file: the machine's daemon.json names the first engine's data root.
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        // Its own process group, so that killing it takes its containerd and shims too; its
        // own network namespace, so that its bridge is not the first engine's (a dockerd on
        // the host's network with `--bridge none` deletes the host's docker0).
        let daemon = Command::new("unshare")
            .process_group(0)
            .args(["--net", "dockerd", "--config-file", &p("daemon.json")])
            .args(["--host", &format!("unix://{}", p("docker.sock"))])
            .args(["--data-root", &p("root"), "--exec-root", &p("exec")])
            .args(["--pidfile", &p("dockerd.pid")])
            .args(["--iptables=false", "--ip-masq=false"])
            // vfs works on any file system the first engine's data root may be on.
            .args(["--storage-driver", "vfs"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd (.ci/run installs docker.io)");
        let engine = SecondEngine {
            dir,
            daemon: Some(daemon),
        };
        let t0 = Instant::now();
        while !engine.docker(&["info"]).status.success() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the second dockerd did not start:\n{}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        engine
    }

    fn host(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Kills the daemon and everything it started: its containerd, and the shims of its
    /// containers (each in a session of its own, found by the containerd socket they name).
    fn kill(&mut self) {
        let address = self.dir.path().join("exec").display().to_string();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("/usr/bin/containerd-shim") && cmdline.contains(&address) {
                let pid = entry.file_name().to_string_lossy().into_owned();
                let _ = Command::new("kill").args(["-s", "KILL", &pid]).status();
            }
        }
        if let Some(mut d) = self.daemon.take() {
            // Its process group: dockerd, its containerd, the shims.
            let _ = Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{}", d.id())])
                .status();
            let _ = d.wait();
        }
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        self.kill();
        // Mounts a killed daemon left under its roots go before the directory does.
        let root = self.dir.path().display().to_string();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {root}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"
            ))
            .status();
    }
}

/// A Docker config directory with context `second` pointing at `host`, made by the CLI.
fn context_dir(host: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("docker")
        .env("DOCKER_CONFIG", dir.path())
        .args([
            "context",
            "create",
            "second",
            "--docker",
            &format!("host={host}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker context create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// busybox and `n` children of it, each sleeping `secs` in a RUN step (so builds overlap).
fn graph(ws: &Workspace, n: usize, secs: u32, tag: &str) {
    ws.add_busybox();
    for i in 0..n {
        let dir = format!("c{i}");
        ws.write(
            &format!("images/{dir}/Dockerfile"),
            &format!(
                "ARG PARENT\nFROM ${{PARENT}}\nCOPY data.txt /etc/kci/data.txt\nRUN sleep {secs} && echo {tag}-{i} > /etc/kci/greeting\n"
            ),
        );
        ws.write(&format!("images/{dir}/data.txt"), &format!("{dir}\n"));
        ws.write(
            &format!("images/{dir}/image.toml"),
            &format!("[[target]]\nname = \"child:{dir}\"\nparent = \"busybox\"\n"),
        );
    }
}

fn engines(report: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["engine"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn kci_on(ws: &Workspace, config: &Path, args: &[&str]) -> Run {
    ws.kci_env(args, &[("DOCKER_CONFIG", config.to_str().unwrap())])
}

#[test]
fn a_graph_over_two_engines_gives_one_engines_digests_and_survives_losing_one() {
    let _g = daemon_lock();
    let mut second = SecondEngine::start();
    let config = context_dir(&second.host());

    // 1. Split over both engines (one build at a time on each).
    let ws = Workspace::new();
    graph(&ws, 4, 2, "split");
    let split = kci_on(
        &ws,
        config.path(),
        &[
            "build",
            "--engines",
            "default,second",
            "--jobs",
            "1",
            "--json",
        ],
    )
    .ok();
    let report = split.json();
    let on = engines(&report);
    assert_eq!(on.len(), 5, "{}", split.stdout);
    assert!(
        on.values().any(|e| e == "second") && on.values().any(|e| e == "default"),
        "both engines built: {on:?}\n{}",
        split.stderr
    );
    assert!(
        split.stderr.contains("Engines") && split.stderr.contains("second (amd64)"),
        "{}",
        split.stderr
    );

    // 2. The same recipes on one engine, in a fresh store: the same manifests.
    let store1 = tempfile::tempdir().unwrap();
    let one = ws
        .kci_env(
            &["build", "--json"],
            &[("KCI_BUILD_STORE", store1.path().to_str().unwrap())],
        )
        .ok()
        .json();
    assert_eq!(manifests(&one), manifests(&report));
    assert!(engines(&one).values().all(|e| e == "default"), "{one}");

    // 3. An unknown context is bad input that names it and the known ones.
    let bad = kci_on(&ws, config.path(), &["build", "--engines", "default,nope"]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(
        bad.stderr.contains("no Docker context `nope`") && bad.stderr.contains("second"),
        "{}",
        bad.stderr
    );

    // 4. The second engine dies while it builds a child: its work moves to the first.
    let ws = Workspace::new();
    graph(&ws, 4, 6, "moved");
    let mut run = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .env("DOCKER_CONFIG", config.path())
        .args([
            "build",
            "--engines",
            "second,default",
            "--jobs",
            "1",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        let ps = second.docker(&["ps", "--format", "{{.Command}}"]);
        if String::from_utf8_lossy(&ps.stdout).contains("sleep 6") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(240),
            "no child build started on the second engine"
        );
        assert!(run.try_wait().unwrap().is_none(), "kci-build ended early");
        std::thread::sleep(Duration::from_millis(200));
    }
    second.kill();
    let out = run.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("Moving") && stderr.contains("engine `second` stopped answering"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let on = engines(&report);
    assert_eq!(on.len(), 5, "{stdout}");
    assert!(
        on.iter()
            .filter(|(name, _)| name.starts_with("child:"))
            .all(|(_, e)| e == "default"),
        "every child finished on the engine left: {on:?}"
    );
    // The store holds every target and nothing failed.
    assert!(report["failed"].as_array().unwrap().is_empty(), "{stdout}");
}
