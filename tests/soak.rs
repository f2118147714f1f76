//! Crash consistency: real `build`s and `push`es of small targets (FROM-scratch busybox and
//! two children, the real daemon, Debian's docker-registry), each SIGKILLed at a random
//! moment — seeded, so a failure replays with `KCI_SOAK_SEED` — `KCI_SOAK_KILLS` times (30 by
//! default). After every kill the store verifies clean and the lockfile parses; at the end
//! an uninterrupted rerun gives the same manifests as a build that was never killed, and the
//! registry serves them.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::{Auth, Registry};
use common::*;

/// A small, seeded generator (xorshift64*): the soak's kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn recipes(ws: &Workspace, round: usize) {
    ws.add_busybox();
    ws.add_child("a", "child:a", "busybox", &format!("a{round}"));
    ws.add_child("b", "child:b", "child:a", &format!("b{round}"));
}

/// Starts kci-build, kills it after `after`, waits for it; whether the kill came first.
fn run_and_kill(ws: &Workspace, args: &[&str], after: Duration) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .env("NO_COLOR", "1")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + after;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

#[test]
fn kills_at_random_moments_never_corrupt_the_store_and_the_rerun_gives_the_same_bytes() {
    let _g = daemon_lock();
    let kills: usize = std::env::var("KCI_SOAK_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("KCI_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fc0_ffee);
    let mut rng = Rng(seed | 1);
    let registry = Registry::start(Auth::None);
    let reg = registry.addr();

    // How long an uninterrupted round takes: the window the kills land in.
    let ws = Workspace::new();
    recipes(&ws, 0);
    let t = Instant::now();
    ws.kci(&["build", "--push", "--registry", &reg]).ok();
    let window = t.elapsed().as_millis() as u64 + 500;

    let started = Instant::now();
    let (mut killed, mut rounds) = (0, 0);
    while killed < kills {
        rounds += 1;
        assert!(
            rounds < kills * 4,
            "only {killed} of {rounds} runs were killed in time"
        );
        // Every round has work to do: new greetings rebuild both children.
        recipes(&ws, rounds);
        let push = rng.below(3) == 0;
        let args: &[&str] = if push {
            &["build", "--push", "--registry", &reg]
        } else {
            &["build", "-j2"]
        };
        let after = Duration::from_millis(rng.below(window));
        if run_and_kill(&ws, args, after) {
            killed += 1;
        }
        let verify = ws.kci(&["store", "verify", "--json"]);
        assert_eq!(
            verify.code, 0,
            "round {rounds} (seed {seed}, {args:?} killed after {after:?}): {}\n{}",
            verify.stdout, verify.stderr
        );
        let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
        assert!(
            toml::from_str::<toml::Value>(&lock).is_ok(),
            "round {rounds}: the lockfile does not parse:\n{lock}"
        );
        ws.kci(&["plan", "--json"]).ok();
    }
    let soak_secs = started.elapsed().as_secs_f64();

    // The last round's recipes, rebuilt without a kill, against a store that never saw one.
    let t = Instant::now();
    let rerun = ws
        .kci(&["build", "--push", "--registry", &reg, "--json"])
        .ok()
        .json();
    let rerun_secs = t.elapsed().as_secs_f64();
    let clean = Workspace::new();
    recipes(&clean, rounds);
    let reference = clean.kci(&["build", "--json"]).ok().json();
    assert_eq!(manifests(&rerun), manifests(&reference));
    let verify = ws.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]));
    for (target, digest) in manifests(&rerun) {
        let repo = target.split(':').next().unwrap();
        let code = sh(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' -H 'Accept: application/vnd.oci.image.manifest.v1+json' http://{reg}/v2/kernelci/{repo}/manifests/{digest}"
        ));
        assert_eq!(code, "200", "{target} {digest} is not in the registry");
    }
    eprintln!(
        "soak: seed {seed}, {killed} kills in {rounds} rounds, {soak_secs:.1}s; rerun {rerun_secs:.1}s"
    );
}

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

/// Crash consistency of `rootfs`: the tiny config (amd64), SIGKILLed at seeded random
/// moments of its build, collection and packing (`KCI_SOAK_ROOTFS_KILLS` times, 5 by
/// default). A killed run leaves its container running; the next run attaches to it or
/// collects it. Whenever a run completes, the script changes (a new key) so the next kill
/// has work to land in. After every kill the store verifies clean and rootfs.lock parses;
/// at the end the last key, evicted and built again without a kill, gives the same bytes.
#[test]
fn rootfs_runs_killed_at_random_moments_resume_and_give_the_bytes_of_an_uninterrupted_build() {
    let _g = daemon_lock();
    let kills: usize = std::env::var("KCI_SOAK_ROOTFS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("KCI_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0fc0_ffee);
    let mut rng = Rng(seed | 1);
    let containers =
        || sh("docker ps -a --filter label=org.kernelci.kci-build.rootfs --format '{{.Names}}'");
    let before = containers();
    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    let script = ws.path().join("recipes/scripts/tiny.sh");
    let original = std::fs::read_to_string(&script).unwrap();
    let args = [
        "--images", IMAGES, "rootfs", "tiny", "--arch", "amd64", "--json",
    ];

    // An uninterrupted run: the builder image, the apt cache, and how long a build takes.
    let first = ws.kci(&args).ok().json();
    let window = (first["builds"][0]["seconds"].as_f64().unwrap() * 1000.0) as u64 + 2000;

    let started = Instant::now();
    let (mut killed, mut rounds, mut variant) = (0, 0, 1);
    std::fs::write(
        &script,
        format!("{original}echo {variant} > /etc/kci-soak\n"),
    )
    .unwrap();
    while killed < kills {
        rounds += 1;
        assert!(
            rounds < kills * 4,
            "only {killed} of {rounds} runs were killed in time"
        );
        let after = Duration::from_millis(rng.below(window));
        if run_and_kill(&ws, &args, after) {
            killed += 1;
        } else {
            // It completed: the next round builds something new.
            variant += 1;
            std::fs::write(
                &script,
                format!("{original}echo {variant} > /etc/kci-soak\n"),
            )
            .unwrap();
        }
        let verify = ws.kci(&["store", "verify", "--json"]);
        assert_eq!(
            verify.code, 0,
            "round {rounds} (seed {seed}, killed after {after:?}): {}\n{}",
            verify.stdout, verify.stderr
        );
        if let Ok(lock) = std::fs::read_to_string(ws.path().join("lockfiles/rootfs.lock")) {
            assert!(
                toml::from_str::<toml::Value>(&lock).is_ok(),
                "round {rounds}: rootfs.lock does not parse:\n{lock}"
            );
        }
    }
    let soak_secs = started.elapsed().as_secs_f64();

    // The last variant to the end (attaching to or collecting what the kills left), then
    // evicted and built again from nothing but the store's builder image and apt cache.
    let t = Instant::now();
    let resumed = ws.kci(&args).ok().json();
    let rerun_secs = t.elapsed().as_secs_f64();
    let key = resumed["builds"][0]["key"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(
        ws.store()
            .join("rootfs")
            .join(key.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let fresh = ws.kci(&args).ok().json();
    assert_eq!(fresh["builds"][0]["action"], "built", "{fresh}");
    assert_eq!(rootfs_sums(&resumed), rootfs_sums(&fresh));
    assert_eq!(rootfs_sums(&fresh).len(), 5);
    assert_eq!(containers(), before, "containers left behind");

    // The earlier keys' files are referenced by no lockfile now: gc sweeps them, keeps the
    // locked one, and the store verifies.
    let gc = ws.kci(&["gc", "--json"]).ok().json();
    let swept = gc["swept_bytes"].as_u64().unwrap();
    assert!(swept > 1 << 20, "{gc}");
    let hex = key.strip_prefix("sha256:").unwrap();
    assert!(ws
        .store()
        .join("rootfs")
        .join(hex)
        .join("manifest.json")
        .is_file());
    let verify = ws.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]));
    eprintln!(
        "rootfs soak: seed {seed}, {killed} kills in {rounds} rounds ({variant} keys), {soak_secs:.1}s; rerun {rerun_secs:.1}s; gc swept {swept} bytes"
    );
}
