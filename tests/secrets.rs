//! Secrets in the environment reach no other process, no image and no output: a real
//! `build --push` (real mmdebstrap from a real signed apt repository, a FROM-scratch busybox
//! image and a child whose Dockerfile dumps its build environment into the image, Debian's
//! docker-registry with htpasswd) runs with the registry password, the storage token and two
//! site-style tokens set. While it runs, every process below it is read in `/proc` (command
//! line and environment); after it, stdout, stderr, the lockfile and every byte of the store
//! (gzip layers unpacked, image configs with their history) are searched for each secret.

mod common;
#[path = "common/http_files.rs"]
#[allow(dead_code)] // shared with deploy.rs, which uses all of it
mod http_files;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::aptrepo::AptRepo;
use common::registry::{Auth, Registry};
use common::*;
use http_files::FileServer;

const ORIGIN: &str = "http://kci-apt-test.invalid";

const SECRETS: [(&str, &str); 4] = [
    ("KCI_REGISTRY_PASSWORD", "reg-pw-6c1f0d9e"),
    ("KCI_STORAGE_TOKEN", "storage-tok-83b2a4f7"),
    ("KCI_JENKINS_TOKEN", "jenkins-tok-19d7e6c0"),
    ("LAB_API_TOKEN", "lab-tok-5e0a2b91"),
];

/// Parent pid of `pid`, from `/proc/<pid>/stat` (the field after the `)` of the name).
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every live process below `root`, with its command line and environment (NULs as spaces).
fn descendants(root: u32) -> BTreeMap<u32, (String, String)> {
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let parents: BTreeMap<u32, u32> = pids.iter().filter_map(|&p| Some((p, ppid(p)?))).collect();
    let below = |mut p: u32| {
        while let Some(&up) = parents.get(&p) {
            if up == root {
                return true;
            }
            if up <= 1 {
                return false;
            }
            p = up;
        }
        false
    };
    let text = |p: u32, what: &str| {
        std::fs::read(format!("/proc/{p}/{what}"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    pids.into_iter()
        .filter(|&p| below(p))
        .map(|p| (p, (text(p, "cmdline"), text(p, "environ"))))
        .collect()
}

/// Every file under `dir` as bytes, gzip members unpacked (layers, compressed blobs).
fn store_texts(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if !e.file_type().is_file() {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        let mut unpacked = Vec::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let _ = flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_end(&mut unpacked);
        }
        out.push((e.path().display().to_string(), bytes));
        if !unpacked.is_empty() {
            out.push((format!("{} (unpacked)", e.path().display()), unpacked));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn secrets_reach_no_child_process_image_or_output() {
    let _g = daemon_lock();
    let tmp = tempfile::tempdir().unwrap();
    let repo = AptRepo::new(tmp.path());
    repo.add_package(
        "kci-hello",
        "1.0",
        &[("/usr/share/kci-hello/greeting", "hello\n")],
    );
    repo.publish();
    let server = FileServer::serve(&repo.root);
    let reg = Registry::start(Auth::Htpasswd {
        user: "kci".into(),
        password: SECRETS[0].1.into(),
    });

    let ws = Workspace::new();
    ws.write(
        "images/hello/image.toml",
        &format!("[[target]]\nname = \"hello\"\nbootstrap = {{ suite = \"stable\", variant = \"extract\", packages = [\"kci-hello\"], mirror = \"{ORIGIN}/repo\", keyring = \"repo.gpg\" }}\n"),
    );
    std::fs::copy(&repo.keyring, ws.path().join("images/hello/repo.gpg")).unwrap();
    ws.add_busybox();
    // The build's whole environment, as a RUN step sees it, goes into the image.
    ws.write(
        "images/envdump/Dockerfile",
        "ARG PARENT\nFROM ${PARENT}\nRUN env > /build-env && cat /proc/self/environ >> /build-env\n",
    );
    ws.write(
        "images/envdump/image.toml",
        "[[target]]\nname = \"envdump\"\nparent = \"busybox\"\n",
    );

    let upstream = format!("{ORIGIN}={}", server.url);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kci-build"));
    cmd.current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .env("KCI_APT_UPSTREAM", &upstream)
        .env("KCI_REGISTRY_USER", "kci")
        .env("DOCKER_CONFIG", "/nonexistent")
        .args([
            "-vv",
            "build",
            "-j2",
            "--push",
            "--registry",
            &reg.addr(),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in SECRETS {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    // Read the output as it comes, so a full pipe never stalls the build.
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });

    // While it runs: every process below kci-build, as often as we can look.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        for (p, (cmdline, environ)) in descendants(pid) {
            for (var, secret) in SECRETS {
                assert!(
                    !cmdline.contains(secret),
                    "{var}'s value is on the command line of pid {p}: {cmdline}"
                );
                assert!(
                    !environ.contains(secret),
                    "{var}'s value is in the environment of pid {p} ({cmdline})"
                );
            }
            if let Some(prog) = cmdline.split_whitespace().next() {
                seen.insert(prog.rsplit('/').next().unwrap_or(prog).to_owned());
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the build took over 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out_t.join().unwrap(), err_t.join().unwrap());
    assert!(status.success(), "{stderr}");
    // The check above looked at real children: mmdebstrap (and what it runs) at least.
    assert!(
        seen.iter()
            .any(|p| p.starts_with("mmdebstrap") || p == "perl"),
        "no mmdebstrap process was seen below kci-build: {seen:?}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        report["push"]["targets"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );

    // After: the outputs, the lockfile, every byte of the store.
    let mut texts = vec![
        ("stdout".to_owned(), stdout.into_bytes()),
        ("stderr".to_owned(), stderr.into_bytes()),
        ("lockfile".to_owned(), std::fs::read(ws.lockfile()).unwrap()),
    ];
    texts.extend(store_texts(&ws.store()));
    let mut build_env_seen = false;
    for (what, bytes) in &texts {
        for (var, secret) in SECRETS {
            assert!(!contains(bytes, secret), "{var}'s value is in {what}");
        }
        // The envdump layer was searched: its /build-env holds the RUN step's PATH.
        build_env_seen |= contains(bytes, "build-env") && contains(bytes, "PATH=");
    }
    assert!(
        build_env_seen,
        "the envdump layer with /build-env was not searched"
    );
}
