//! `kci-build rootfs` for real: the rootfs-builder image (bootstrapped from the machine's
//! Debian mirror), mmdebstrap in detached containers, amd64 and arm64 (through
//! qemu-user-static). Built twice from an empty rootfs store — the second time killed
//! mid-build and resumed — the five files and the manifest must have the same sha256; the
//! files land in a storage directory, verified, and in the lockfile with their URLs.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

fn write_tiny_recipe(ws: &Workspace) {
    ws.add_tiny_rootfs();
}

fn rootfs(ws: &Workspace, extra: &[&str]) -> Run {
    let mut args = vec!["--images", IMAGES, "rootfs", "tiny", "--json"];
    args.extend_from_slice(extra);
    ws.kci(&args)
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
    containers_of("tiny", all)
}

/// The build containers of `config`, running ones or (with `all`) any.
fn containers_of(config: &str, all: bool) -> Vec<String> {
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
            &format!("name=kci-rootfs-{config}-"),
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

/// A table (`package`, `deb`) of the tiny config's `arch` entry in a rootfs lockfile.
fn table_of(lock: &str, arch: &str, table: &str) -> BTreeMap<String, String> {
    let v: toml::Value = toml::from_str(lock).unwrap();
    v["rootfs"]["tiny"]["arch"][arch]
        .get(table)
        .and_then(|t| t.as_table())
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn tiny_rootfs_is_reproducible_for_amd64_and_arm64_and_resumes_after_a_kill() {
    let _g = daemon_lock();
    // A run of this test that was itself killed (e.g. a CI job cut short) leaves its
    // containers on the daemon. Their names carry that run's store, so this run would not
    // pick them up, but the checks below count containers: start clean.
    for name in [tiny_containers(true), containers_of("broken", true)].concat() {
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
    let first_sums = rootfs_sums(&first_report);
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
    // Every installed package came through the apt cache, and the lockfile names its .deb.
    for arch in ["amd64", "arm64"] {
        let (packages, debs) = (
            table_of(&lock, arch, "package"),
            table_of(&lock, arch, "deb"),
        );
        for (name_arch, version) in &packages {
            let (name, parch) = name_arch.split_once(':').unwrap();
            let upstream = version.split_once(':').map_or(version.as_str(), |(_, v)| v);
            let file = format!("/{name}_{upstream}_{parch}.deb");
            assert!(
                debs.keys()
                    .any(|d| d.starts_with("debian/pool/") && d.ends_with(&file)),
                "{arch}: no deb line for {name_arch} {version} in {debs:?}"
            );
        }
        assert!(debs.values().all(|s| s.starts_with("sha256:")), "{debs:?}");
    }

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

    // 2b. The registry as the cache machines share: this store's results go up (each
    // (config, arch) as an artifact addressed by its key, the builder image by key); a
    // machine with an empty store pulls them, every file checked, and builds nothing.
    let registry = registry::Registry::start(registry::Auth::None);
    let addr = registry.addr();
    let shared = rootfs(&ws, &["--registry", &addr]).ok();
    let shared_report = shared.json();
    assert_eq!(shared_report["pushed"], 2, "{}", shared.stderr);
    assert_eq!(actions_of(&shared_report), actions_of(&again));
    let tags = sh(&format!(
        "curl -sf http://{addr}/v2/kernelci/rootfs-tiny/tags/list"
    ));
    for b in first_report["builds"].as_array().unwrap() {
        let key = b["key"].as_str().unwrap().strip_prefix("sha256:").unwrap();
        let tag = format!("{}-{key}", b["arch"].as_str().unwrap());
        assert!(tags.contains(&tag), "{tag} not in {tags}");
    }
    let twice = rootfs(&ws, &["--registry", &addr]).ok().json();
    assert_eq!(twice["pushed"], 0, "the registry has them already");
    let other_store = tempfile::tempdir().unwrap();
    let since = next_second();
    let pulled = ws
        .kci_env(
            &[
                "--images",
                IMAGES,
                "rootfs",
                "tiny",
                "--json",
                "--registry",
                &addr,
            ],
            &[("KCI_BUILD_STORE", other_store.path().to_str().unwrap())],
        )
        .ok();
    let pulled_report = pulled.json();
    assert_eq!(
        actions_of(&pulled_report),
        BTreeMap::from([
            ("amd64".to_owned(), "pulled".to_owned()),
            ("arm64".to_owned(), "pulled".to_owned())
        ]),
        "{}",
        pulled.stderr
    );
    assert_eq!(rootfs_sums(&pulled_report), first_sums);
    assert_eq!(pulled_report["lockfile_changed"], false);
    assert_eq!(
        containers_created_since(since),
        0,
        "a machine that finds everything in the registry runs no build: {}",
        pulled.stderr
    );
    drop(registry);

    swarm_jobs_make_the_same_files(&ws, &first_sums);

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
    assert_eq!(rootfs_sums(&remote), first_sums);
    assert_eq!(remote["lockfile_changed"], false);

    // 4. From an empty rootfs store again, and a storage that went bad: amd64's ext4 image
    // holds other bytes of the same size (a HEAD cannot tell), arm64 lost its manifest. Kill
    // kci-build in the middle of the amd64 build.
    let _ = std::fs::remove_dir_all(ws.store().join("rootfs"));
    let served = storage.join(format!("tiny/{version}"));
    let ext4 = served.join("amd64/rootfs.ext4.xz");
    let good_ext4 = std::fs::read(&ext4).unwrap();
    std::fs::write(&ext4, vec![0x5a; good_ext4.len()]).unwrap();
    std::fs::remove_file(served.join("arm64/manifest.json")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .args(["--images", IMAGES, "rootfs", "tiny", "--arch", "amd64"])
        .args(["--storage", &storage_arg, "--public-url", public])
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
    let resumed = rootfs(
        &ws,
        &[
            "--resume",
            "--storage",
            &storage_arg,
            "--public-url",
            public,
        ],
    )
    .ok();
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
    // The bad copy was named, rebuilt and replaced; the lost manifest uploaded again.
    assert!(
        resumed.stderr.contains(&format!(
            "{public}/tiny/{version}/amd64/rootfs.ext4.xz serves other bytes than its manifest records"
        )),
        "{}",
        resumed.stderr
    );
    assert_eq!(std::fs::read(&ext4).unwrap(), good_ext4);
    assert!(served.join("arm64/manifest.json").is_file());
    // The killed run's apt proxy outlived it (the container it attached to still needed it)
    // and the rerun leased it; with no holder and no container left, it goes away.
    assert!(
        resumed
            .stderr
            .contains("Leasing the apt proxy still serving"),
        "{}",
        resumed.stderr
    );
    let proxy_state = ws.store().join("rootfs-apt-proxy.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy_state.exists() {
        assert!(
            Instant::now() < deadline,
            "the apt proxy still runs a minute after the last build"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(running_rootfs_containers().is_empty());
    assert!(
        std::fs::read_dir(ws.store().join("rootfs"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("tmp-")),
        "temp dirs left in the rootfs store"
    );

    // The resumed build's packages were recorded by the proxy that outlived the kill.
    let resumed_lock = std::fs::read_to_string(ws.path().join("lockfiles/rootfs.lock")).unwrap();
    assert_eq!(
        table_of(&resumed_lock, "amd64", "deb"),
        table_of(&lock, "amd64", "deb")
    );

    // 5. Same bytes, file by file, for both arches.
    assert_eq!(rootfs_sums(&resumed_report), first_sums);
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
    // `why` says what changed before anything is built, and that it is cached after.
    let why = ws
        .kci(&["--images", IMAGES, "why", "tiny/amd64"])
        .ok()
        .stdout;
    assert!(
        why.contains("  to build: the store has no files for this key"),
        "{why}"
    );
    assert!(
        why.contains("  inputs changed since lockfiles/rootfs.lock:\n")
            && why.contains("    recipe.extra-packages: netbase -> bc netbase\n"),
        "{why}"
    );
    // Alongside it, a config whose script fails: tiny is still built, uploaded and locked;
    // the failure is listed with the tail of its log, nothing of it is stored or locked.
    write_broken_recipe(&ws, &text);
    let with_broken = ws.kci(&[
        "--images", IMAGES, "rootfs", "tiny", "broken", "--arch", "amd64", "--json",
    ]);
    assert_eq!(with_broken.code, 1, "{}", with_broken.stderr);
    let report = with_broken.json();
    let builds = report["builds"].as_array().unwrap();
    let by_config = |c: &str| builds.iter().find(|b| b["config"] == c).unwrap().clone();
    let (tiny, broken) = (by_config("tiny"), by_config("broken"));
    assert_eq!(tiny["action"], "built", "{report}");
    assert_eq!(broken["action"], "failed", "{report}");
    // (mmdebstrap reports the script's exit 3 as its own failure.)
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .starts_with("the builder exited with "),
        "{report}"
    );
    let tail: Vec<&str> = broken["log_tail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let message = "broken: the test suite does not compile";
    assert!(tail.iter().any(|l| l.contains(message)), "{tail:?}");
    let table = with_broken.stderr.split("broken/amd64 failed: ").nth(1);
    assert!(
        table.is_some_and(|t| t
            .lines()
            .any(|l| l.starts_with("  | ") && l.contains(message))),
        "{}",
        with_broken.stderr
    );
    assert!(
        with_broken
            .stderr
            .contains("1 of 2 rootfs builds failed: broken/amd64"),
        "{}",
        with_broken.stderr
    );
    let broken_key = broken["key"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert!(!ws.store().join("rootfs").join(broken_key).exists());
    assert!(containers_of("broken", true).is_empty());
    let lock_text = std::fs::read_to_string(&lock_path).unwrap();
    assert!(!lock_text.contains("broken"), "{lock_text}");
    let why = ws
        .kci(&["--images", IMAGES, "why", "tiny/amd64"])
        .ok()
        .stdout;
    let tiny_key = tiny["key"].as_str().unwrap();
    assert!(
        why.starts_with(&format!("tiny/amd64: key {tiny_key}\n  cached: "))
            && why.ends_with("  no input changed since lockfiles/rootfs.lock\n"),
        "{why}"
    );
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

/// A single-node swarm made for a test, left (with the bridge `docker swarm leave` leaves
/// behind) when dropped, even when the test fails.
struct SwarmGuard;

impl SwarmGuard {
    fn init() -> SwarmGuard {
        let state = sh("docker info --format '{{.Swarm.LocalNodeState}}'");
        assert_eq!(state.trim(), "inactive", "the daemon is in a swarm already");
        sh("docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377");
        SwarmGuard
    }
}

impl Drop for SwarmGuard {
    fn drop(&mut self) {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(
                "docker service ls -q --filter label=org.kernelci.kci-build.rootfs \
                 | xargs -r docker service rm; docker swarm leave --force; \
                 for _ in $(seq 1 20); do docker network rm docker_gwbridge 2>/dev/null && break; \
                 sleep 0.5; done",
            )
            .status();
    }
}

fn swarm_services() -> Vec<String> {
    sh("docker service ls --filter label=org.kernelci.kci-build.rootfs --format '{{.Name}}'")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// 2c. The same builds as Swarm jobs (a real single-node swarm on this daemon; a registry
/// with a password): each task builds and packs on its node and pushes its files; the
/// coordinator is killed once the jobs run and a rerun attaches to them; the files are the
/// locally built ones, byte for byte. A config whose script fails is reported with its log
/// tail after Swarm's bounded retries, and nothing of it is stored or locked. The password
/// reaches the jobs as a Swarm secret only: not in a job's spec, nor in any log.
fn swarm_jobs_make_the_same_files(ws: &Workspace, first_sums: &BTreeMap<String, String>) {
    let (user, password) = ("kci", "swarm-pass-5e1f");
    let registry = registry::Registry::start(registry::Auth::Htpasswd {
        user: user.into(),
        password: password.into(),
    });
    let addr = registry.addr();
    let _swarm = SwarmGuard::init();
    // The rootfs store empty (the images store keeps the builder): everything is built.
    let _ = std::fs::remove_dir_all(ws.store().join("rootfs"));
    let lock_path = ws.path().join("lockfiles/rootfs.lock");
    let lock_before = std::fs::read_to_string(&lock_path).unwrap();
    let recipe = std::fs::read_to_string(ws.path().join("recipes/tiny.toml")).unwrap();
    write_broken_recipe(ws, &recipe);
    let args = [
        "--images",
        IMAGES,
        "rootfs",
        "tiny",
        "broken",
        "--json",
        "--swarm",
        "--registry",
        &addr,
    ];
    let env = [
        ("KCI_REGISTRY_USER", user),
        ("KCI_REGISTRY_PASSWORD", password),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .envs(env)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while swarm_services().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "no swarm jobs: {:?}",
            swarm_services()
        );
        assert!(child.try_wait().unwrap().is_none(), "kci-build ended early");
        std::thread::sleep(Duration::from_millis(500));
    }
    for s in swarm_services() {
        let spec = sh(&format!("docker service inspect {s}"));
        assert!(!spec.contains(password), "{spec}");
        assert!(
            spec.contains("kci-registry-"),
            "the secret is not mounted: {spec}"
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        swarm_services().len(),
        3,
        "the jobs outlive their coordinator"
    );

    let rerun = ws.kci_env(&args, &[env[0], env[1]]);
    assert_eq!(rerun.code, 1, "{}", rerun.stderr);
    let report = rerun.json();
    let builds = report["builds"].as_array().unwrap();
    let action = |c: &str, a: &str| {
        builds
            .iter()
            .find(|b| b["config"] == c && b["arch"] == a)
            .unwrap_or_else(|| panic!("{c}/{a} not in {report}"))
            .clone()
    };
    for arch in ["amd64", "arm64"] {
        assert_eq!(
            action("tiny", arch)["action"],
            "resumed",
            "{}",
            rerun.stderr
        );
    }
    assert!(rerun.stderr.contains("Attaching"), "{}", rerun.stderr);
    let tiny_only = serde_json::json!({
        "builds": builds.iter().filter(|b| b["config"] == "tiny").collect::<Vec<_>>()
    });
    assert_eq!(
        &rootfs_sums(&tiny_only),
        first_sums,
        "swarm-built files differ"
    );
    assert_eq!(report["pushed"], 2, "{}", rerun.stderr);
    let broken = action("broken", "amd64");
    assert_eq!(broken["action"], "failed", "{report}");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("failed 2 time(s)"),
        "{report}"
    );
    assert!(
        broken["log_tail"].as_array().unwrap().iter().any(|l| l
            .as_str()
            .unwrap()
            .contains("broken: the test suite does not compile")),
        "{report}"
    );
    let broken_key = broken["key"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert!(!ws.store().join("rootfs").join(broken_key).exists());
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    assert!(!lock.contains("broken"), "{lock}");
    assert_eq!(
        lock, lock_before,
        "the swarm made the locked files: nothing changes"
    );
    assert!(swarm_services().is_empty(), "{:?}", swarm_services());
    assert!(sh("docker secret ls --format '{{.Name}}'").contains("kci-registry-"));
    for e in std::fs::read_dir(ws.store().join("logs")).unwrap() {
        let text = std::fs::read(e.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&text).contains(password));
    }
    assert!(!rerun.stderr.contains(password) && !rerun.stdout.contains(password));
    for f in ["recipes/broken.toml", "recipes/scripts/broken.sh"] {
        std::fs::remove_file(ws.path().join(f)).unwrap();
    }
}

/// `broken`: the tiny recipe `text` for amd64 only, with a script that exits 3.
fn write_broken_recipe(ws: &Workspace, text: &str) {
    std::fs::write(
        ws.path().join("recipes/scripts/broken.sh"),
        "#!/bin/sh\necho 'broken: the test suite does not compile'\nexit 3\n",
    )
    .unwrap();
    std::fs::write(
        ws.path().join("recipes/broken.toml"),
        text.replace("name = \"tiny\"", "name = \"broken\"")
            .replace("[\"amd64\", \"arm64\"]", "[\"amd64\"]")
            .replace("scripts/tiny.sh", "scripts/broken.sh"),
    )
    .unwrap();
}
