//! The pinned apt index against a mirror that moves: a real signed apt repository (made by
//! `common::aptrepo` with dpkg-deb, apt-ftparchive and gpg) served over HTTP, a bootstrap
//! target installing from it through kci-build's apt cache with real mmdebstrap. The mirror
//! then publishes a newer version and drops the old one: the locked target still rebuilds
//! bit for bit from the cache, a store without the cache fails naming the pin, corrupt
//! cached bytes are never installed, and only `lock --refresh` moves the target.

mod common;
#[path = "common/http_files.rs"]
#[allow(dead_code)] // shared with deploy.rs, which uses all of it
mod http_files;

use std::io::Read;
use std::path::Path;

use common::aptrepo::AptRepo;
use common::*;
use http_files::FileServer;

/// The archive as the recipe names it: a host that does not resolve, so every byte must
/// come through the apt cache (which `KCI_APT_UPSTREAM` points at the test's server).
const ORIGIN: &str = "http://kci-apt-test.invalid";

fn hello_workspace(repo: &AptRepo) -> Workspace {
    let ws = Workspace::new();
    ws.write(
        "images/hello/image.toml",
        &format!("[[target]]\nname = \"hello\"\nbootstrap = {{ suite = \"stable\", variant = \"extract\", packages = [\"kci-hello\"], mirror = \"{ORIGIN}/repo\", keyring = \"repo.gpg\" }}\n"),
    );
    std::fs::copy(&repo.keyring, ws.path().join("images/hello/repo.gpg")).unwrap();
    ws
}

fn greeting(v: &str) -> String {
    format!("hello {v}\n")
}

fn publish(repo: &AptRepo, version: &str) {
    let g = greeting(version);
    repo.add_package(
        "kci-hello",
        version,
        &[("/usr/share/kci-hello/greeting", g.as_str())],
    );
    repo.publish();
}

/// `kci-build` with the apt cache's upstream set to `upstream`, in `store`.
fn kci(ws: &Workspace, store: &Path, upstream: &str, args: &[&str]) -> Run {
    let map = format!("{ORIGIN}={upstream}");
    ws.kci_env(
        args,
        &[
            ("KCI_APT_UPSTREAM", map.as_str()),
            ("KCI_BUILD_STORE", store.to_str().unwrap()),
        ],
    )
}

/// The greeting file in the target's only layer, read from the store.
fn installed_greeting(store: &Path, manifest: &str) -> String {
    let blob = |d: &str| {
        store
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(manifest)).unwrap()).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap();
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(blob(layer)).unwrap());
    let mut tar = tar::Archive::new(gz);
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().ends_with("usr/share/kci-hello/greeting") {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            return s;
        }
    }
    panic!("no greeting in {layer}");
}

fn lock_text(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.lockfile()).unwrap()
}

/// A signed repository with kci-hello 1.0, served, and a workspace whose target installs it.
struct Fixture {
    ws: Workspace,
    server: FileServer,
    repo: AptRepo,
    tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let repo = AptRepo::new(tmp.path());
        publish(&repo, "1.0");
        let server = FileServer::serve(&repo.root);
        let ws = hello_workspace(&repo);
        Fixture {
            ws,
            server,
            repo,
            tmp,
        }
    }

    /// `kci-build build --json` into `store`, the mirror reachable: the run and the manifest.
    fn build(&self, store: &Path) -> (Run, String) {
        let run = kci(&self.ws, store, &self.server.url, &["build", "--json"]).ok();
        let manifest = manifests(&run.json())["hello"].clone();
        (run, manifest)
    }
}

#[test]
fn a_moved_mirror_changes_nothing_until_lock_refresh() {
    let f = Fixture::new();
    let (ws, repo, server, tmp) = (&f.ws, &f.repo, &f.server, &f.tmp);
    let store = ws.store();

    // First build: the suite gets pinned to today's InRelease, the .deb is recorded.
    let (first, m1) = f.build(&store);
    assert!(
        first.stderr.contains("Pinning repo/stable"),
        "{}",
        first.stderr
    );
    let lock1 = lock_text(ws);
    let pin1 = repo.inrelease_sha256();
    assert!(
        lock1.contains(&format!(
            "[apt-index.\"repo/stable\"]\ninrelease = \"{pin1}\""
        )),
        "{lock1}"
    );
    assert!(
        lock1.contains("deb.\"repo/pool/main/k/kci-hello/kci-hello_1.0_all.deb\" = \"sha256:"),
        "{lock1}"
    );
    assert!(lock1.contains(&format!("input.\"apt-index.repo/stable\" = \"{pin1}\"")));
    assert!(
        !lock1.contains("kci-apt-test.invalid"),
        "no host in the lockfile"
    );
    assert_eq!(installed_greeting(&store, &m1), greeting("1.0"));

    // The mirror moves on: 1.1 replaces 1.0, the index is re-signed.
    repo.remove_package("kci-hello", "1.0");
    publish(repo, "1.1");
    assert_ne!(repo.inrelease_sha256(), pin1);

    // The locked target rebuilds from scratch (check's scratch store) out of the cache, bit
    // for bit, and the mirror's new index is never asked for.
    let served_before = server.requests().len();
    let check = kci(ws, &store, &server.url, &["check"]).ok();
    assert!(
        check.stdout.contains(&format!("hello: reproduced {m1}")),
        "{}",
        check.stdout
    );
    assert_eq!(server.requests().len(), served_before, "all from the cache");
    assert_eq!(lock_text(ws), lock1);

    // A store without the cache cannot: the pinned index is gone from the mirror.
    let bare = tmp.path().join("bare-store");
    let gone = kci(ws, &bare, &server.url, &["build"]);
    assert_eq!(gone.code, 1, "a failed build step:\n{}", gone.stderr);
    assert!(
        gone.stderr.contains(&format!(
            "the pinned index of repo/stable (InRelease {pin1})"
        )) && gone.stderr.contains("lock --refresh"),
        "{}",
        gone.stderr
    );

    // Refresh: the pin moves, the key changes, the rebuild installs 1.1, diff says so.
    let before = tmp.path().join("before.lock");
    std::fs::write(&before, &lock1).unwrap();
    let refresh = kci(ws, &store, &server.url, &["lock", "--refresh"]).ok();
    assert!(
        refresh.stderr.contains("Refreshed repo/stable"),
        "{}",
        refresh.stderr
    );
    let second = kci(ws, &store, &server.url, &["build", "--json"]).ok();
    assert_eq!(actions(&second.json())["hello"], "built");
    let m2 = manifests(&second.json())["hello"].clone();
    assert_ne!(m2, m1);
    assert_eq!(installed_greeting(&store, &m2), greeting("1.1"));
    let lock2 = lock_text(ws);
    assert!(lock2.contains(&repo.inrelease_sha256()), "{lock2}");
    assert!(lock2.contains("kci-hello_1.1_all.deb"), "{lock2}");
    let diff = ws
        .kci(&[
            "diff",
            before.to_str().unwrap(),
            ws.lockfile().to_str().unwrap(),
        ])
        .ok();
    assert!(
        diff.stdout.contains("↑ kci-hello:all 1.0 -> 1.1"),
        "{}",
        diff.stdout
    );
}

#[test]
fn corrupt_cached_bytes_are_evicted_and_fetched_again_or_named_offline() {
    let f = Fixture::new();
    let (ws, server) = (&f.ws, &f.server);
    let store = ws.store();
    let (_, m1) = f.build(&store);
    let lock = lock_text(ws);
    let deb_sha = lock
        .lines()
        .find(|l| l.starts_with("deb."))
        .and_then(|l| l.rsplit('"').nth(1))
        .unwrap()
        .to_owned();
    let cached = store
        .join("blobs/sha256")
        .join(deb_sha.trim_start_matches("sha256:"));
    let flip = || {
        let mut bytes = std::fs::read(&cached).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&cached, bytes).unwrap();
    };

    // Offline, a flipped byte is detected and the build fails naming the package.
    flip();
    let offline = kci(ws, &store, "http://127.0.0.1:1", &["check"]);
    assert_ne!(offline.code, 0, "{}\n{}", offline.stdout, offline.stderr);
    assert!(
        offline.stderr.contains("kci-hello 1.0 (all)") && offline.stderr.contains(&deb_sha),
        "{}",
        offline.stderr
    );
    assert!(!cached.exists(), "the corrupt copy was evicted");

    // Online, it is fetched again and the rebuild reproduces.
    flip_if_present(&cached);
    let check = kci(ws, &store, &server.url, &["check"]).ok();
    assert!(
        check.stdout.contains(&format!("hello: reproduced {m1}")),
        "{}",
        check.stdout
    );
    assert!(cached.exists());
}

fn flip_if_present(p: &Path) {
    if let Ok(mut bytes) = std::fs::read(p) {
        bytes[0] ^= 0xff;
        std::fs::write(p, bytes).unwrap();
    }
}

#[test]
fn the_cache_travels_through_a_registry_to_a_machine_without_the_mirror() {
    let f = Fixture::new();
    let (ws, server, tmp) = (&f.ws, &f.server, &f.tmp);
    let reg = common::registry::Registry::start(common::registry::Auth::None);

    // Machine A: build, then fetch and push its cache.
    let store_a = tmp.path().join("store-a");
    let (_, m1) = f.build(&store_a);
    let pushed = kci(
        ws,
        &store_a,
        &server.url,
        &["fetch", "--registry", &reg.addr(), "--push", "--json"],
    )
    .ok();
    assert!(
        pushed.json()["pushed"].as_u64().unwrap() >= 3,
        "{}",
        pushed.stdout
    );
    // Again: everything is in the registry already.
    let again = kci(
        ws,
        &store_a,
        &server.url,
        &["fetch", "--registry", &reg.addr(), "--push", "--json"],
    )
    .ok();
    assert_eq!(again.json()["pushed"], 0, "{}", again.stdout);

    // Machine B: an empty store, the lockfile, the registry — and no mirror at all.
    let store_b = tmp.path().join("store-b");
    let closed = "http://127.0.0.1:1";
    let pulled = kci(
        ws,
        &store_b,
        closed,
        &["fetch", "--registry", &reg.addr(), "--json"],
    )
    .ok();
    let report = pulled.json();
    assert!(report["pulled"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(report["stats"]["upstream_bytes"], 0, "{report}");
    let check = kci(ws, &store_b, closed, &["check"]).ok();
    assert!(
        check.stdout.contains(&format!("hello: reproduced {m1}")),
        "{}\n{}",
        check.stdout,
        check.stderr
    );
}
