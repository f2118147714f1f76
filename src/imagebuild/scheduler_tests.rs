//! The scheduler on an in-memory fake maker: ordering, `--jobs`, failure propagation, and
//! an environment fault stopping the run — without Docker.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::*;
use crate::printer::ColorChoice;
use crate::workspace::Paths;

/// Makes targets without an engine: records the order and the peak concurrency, fails the
/// targets named in `fail` (as a build step would) and those in `unreachable` (as a dead
/// daemon would).
#[derive(Clone, Default)]
struct Fake {
    fail: Arc<BTreeSet<String>>,
    unreachable: Arc<BTreeSet<String>>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    order: Arc<Mutex<Vec<String>>>,
}

impl MakeTarget for Fake {
    async fn make(&self, job: Job) -> anyhow::Result<(StoredImage, TargetAction)> {
        let name = job.recipe.name.to_string();
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.order.lock().unwrap().push(name.clone());
        tokio::time::sleep(Duration::from_millis(30)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.unreachable.contains(&name) {
            let e = crate::error::EnvironmentError {
                message: "Docker is not reachable".into(),
                hint: "start dockerd".into(),
            };
            return Err(crate::docker::DaemonError::Unreachable(e).into());
        }
        if self.fail.contains(&name) {
            return Err(crate::docker::DaemonError::BuildFailed("step 2/3 exited 1".into()).into());
        }
        // Like a real build: blobs into the store, then the key record.
        let manifest = job
            .store
            .put_bytes(format!("manifest {name} {}", job.key).as_bytes())?;
        let config = job.store.put_bytes(format!("config {name}").as_bytes())?;
        let img = StoredImage {
            target: job.recipe.name.clone(),
            key: job.key.clone(),
            manifest,
            config,
            layers: Vec::new(),
            packages: BTreeMap::new(),
            members: Vec::new(),
        };
        job.store.record(&img)?;
        Ok((img, TargetAction::Built))
    }
}

/// base → {gcc → kselftest, clang, rust}: four targets ready at once after base.
fn tree(dir: &Path) -> Workspace {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "images/config.toml",
        "prefix = \"kernelci/\"\nsource-date-epoch = 1764547200\n",
    );
    w("images/base/Dockerfile", "FROM scratch\n");
    w("images/base/image.toml", "[[target]]\nname = \"base\"\n");
    for (image, parent) in [
        ("gcc", "base"),
        ("clang", "base"),
        ("rust", "base"),
        ("kselftest", "gcc"),
    ] {
        w(
            &format!("images/{image}/Dockerfile"),
            "ARG PARENT\nFROM $PARENT\n",
        );
        w(
            &format!("images/{image}/image.toml"),
            &format!("[[target]]\nname = \"{image}\"\nparent = \"{parent}\"\n"),
        );
    }
    Workspace::load(&Paths {
        images: dir.join("images"),
        lockfile: dir.join("lockfiles/images.lock"),
        store: dir.join("store"),
    })
    .unwrap()
}

fn opts(jobs: usize) -> BuildOptions {
    BuildOptions {
        targets: Vec::new(),
        jobs,
        lock: LockMode::Leave,
        verbose: false,
        registry: None,
        push: false,
    }
}

fn run(ws: &Workspace, jobs: usize, fake: &Fake) -> anyhow::Result<Scheduled> {
    let store = Store::open(&ws.paths.store).unwrap();
    let printer = Printer::new(ColorChoice::Never, true);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(schedule(ws, &store, &opts(jobs), &printer, fake.clone()))
}

fn position(order: &[String], name: &str) -> usize {
    order.iter().position(|n| n == name).unwrap()
}

#[test]
fn parents_first_and_never_more_than_jobs_at_once() {
    for jobs in [1, 2, 3] {
        // A fresh store each time: nothing is stored yet.
        let dir = tempfile::tempdir().unwrap();
        let ws = tree(dir.path());
        let fake = Fake::default();
        let out = run(&ws, jobs, &fake).unwrap();
        let order = fake.order.lock().unwrap().clone();
        assert_eq!(order.len(), 5, "{order:?}");
        assert_eq!(order[0], "base");
        assert!(position(&order, "gcc") < position(&order, "kselftest"));
        assert_eq!(
            fake.peak.load(Ordering::SeqCst),
            jobs,
            "-j {jobs}: {order:?}"
        );
        assert!(out.failed.is_empty());
        assert_eq!(out.done.len(), 5);
        // The report lists the selection in dependency order.
        assert_eq!(out.selection.first().unwrap().as_str(), "base");
    }
}

#[test]
fn a_failure_blocks_its_subtree_only() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let fake = Fake {
        fail: Arc::new(BTreeSet::from(["gcc".to_owned()])),
        ..Fake::default()
    };
    let out = run(&ws, 2, &fake).unwrap();
    let failed: Vec<&str> = out.failed.keys().map(|n| n.as_str()).collect();
    assert_eq!(failed, ["gcc", "kselftest"]);
    let why = |n: &str| out.failed[&n.parse::<TargetName>().unwrap()].clone();
    assert!(why("gcc").contains("step 2/3 exited 1"), "{}", why("gcc"));
    assert_eq!(why("kselftest"), "not built: `gcc` failed");
    let done: BTreeSet<&str> = out.done.keys().map(|n| n.as_str()).collect();
    assert_eq!(done, BTreeSet::from(["base", "clang", "rust"]));
    assert!(
        !fake.order.lock().unwrap().contains(&"kselftest".to_owned()),
        "a blocked target is never started"
    );
}

#[test]
fn an_environment_fault_stops_the_run_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let fake = Fake {
        unreachable: Arc::new(BTreeSet::from(["base".to_owned()])),
        ..Fake::default()
    };
    let err = run(&ws, 2, &fake).err().expect("the run stops");
    assert_eq!(
        crate::exit::exit_code(&err),
        crate::error::ExitCode::Environment
    );
    assert!(format!("{err:#}").contains("building base"), "{err:#}");
    assert_eq!(*fake.order.lock().unwrap(), ["base"]);
}

#[test]
fn a_second_run_finds_everything_stored() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let first = run(&ws, 2, &Fake::default()).unwrap();
    assert_eq!(first.done.len(), 5);
    let fake = Fake::default();
    let second = run(&ws, 2, &fake).unwrap();
    assert!(
        fake.order.lock().unwrap().is_empty(),
        "nothing is made again"
    );
    assert!(second
        .outcomes
        .iter()
        .all(|o| o.action == TargetAction::Cached));
    assert_eq!(second.outcomes.len(), 5);
}
