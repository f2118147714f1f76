//! The scheduler on the in-memory engine: ordering, `--jobs`, failure propagation, and an
//! environment fault stopping the run — without Docker, but through the real build path
//! (context tar, `docker save` archive, canonical layers, parents loaded by archive).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::engine::fake::FakeEngine;
use crate::printer::ColorChoice;
use crate::workspace::Paths;

/// An engine whose builds take `ms` milliseconds, so that builds allowed to overlap do.
fn engine(ms: u64) -> FakeEngine {
    let e = FakeEngine::default();
    *e.build_time.lock().unwrap() = Duration::from_millis(ms);
    e
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
    let paths = Paths {
        images: dir.join("images"),
        lockfile: dir.join("lockfiles/images.lock"),
        store: dir.join("store"),
    };
    Workspace::load(&paths, &Default::default()).unwrap()
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

fn run(ws: &Workspace, jobs: usize, fake: &FakeEngine) -> anyhow::Result<Scheduled> {
    let store = Store::open(&ws.paths.store).unwrap();
    let printer = Printer::new(ColorChoice::Never, true);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(schedule(
            ws,
            &store,
            &opts(jobs),
            &printer,
            EngineMaker::with(fake.clone(), ws.settings.prefix.clone()),
        ))
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
        let fake = engine(200);
        let out = run(&ws, jobs, &fake).unwrap();
        let order = fake.builds.lock().unwrap().clone();
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
    let fake = engine(30);
    fake.fail.lock().unwrap().insert("gcc".into());
    let out = run(&ws, 2, &fake).unwrap();
    let failed: Vec<&str> = out.failed.keys().map(|n| n.as_str()).collect();
    assert_eq!(failed, ["gcc", "kselftest"]);
    let why = |n: &str| out.failed[&n.parse::<TargetName>().unwrap()].clone();
    assert!(
        why("gcc").contains("returned a non-zero code: 1"),
        "{}",
        why("gcc")
    );
    assert_eq!(why("kselftest"), "not built: `gcc` failed");
    let done: BTreeSet<&str> = out.done.keys().map(|n| n.as_str()).collect();
    assert_eq!(done, BTreeSet::from(["base", "clang", "rust"]));
    assert!(
        !fake
            .builds
            .lock()
            .unwrap()
            .contains(&"kselftest".to_owned()),
        "a blocked target is never started"
    );
}

#[test]
fn an_environment_fault_stops_the_run_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let fake = engine(30);
    fake.unreachable.lock().unwrap().insert("base".into());
    let err = run(&ws, 2, &fake).err().expect("the run stops");
    assert_eq!(
        crate::exit::exit_code(&err),
        crate::error::ExitCode::Environment
    );
    assert!(format!("{err:#}").contains("building base"), "{err:#}");
    assert_eq!(*fake.builds.lock().unwrap(), ["base"]);
}

#[test]
fn a_second_run_finds_everything_stored() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let first = run(&ws, 2, &engine(0)).unwrap();
    assert_eq!(first.done.len(), 5);
    let fake = engine(0);
    let second = run(&ws, 2, &fake).unwrap();
    assert!(
        fake.builds.lock().unwrap().is_empty(),
        "nothing is made again"
    );
    assert!(second
        .outcomes
        .iter()
        .all(|o| o.action == TargetAction::Cached));
    assert_eq!(second.outcomes.len(), 5);
}

#[test]
fn a_child_is_built_on_its_parents_canonical_layers_and_builds_repeat_bit_for_bit() {
    let manifests = |dir: &Path| {
        let ws = tree(dir);
        let out = run(&ws, 2, &engine(0)).unwrap();
        let layers = |n: &str| {
            let (_, img) = &out.done[&n.parse::<TargetName>().unwrap()];
            img.layers
                .iter()
                .map(|l| l.digest.clone())
                .collect::<Vec<_>>()
        };
        // kselftest = base's layer + gcc's + its own; gcc's came back from the engine as stored.
        assert_eq!(layers("kselftest").len(), 3);
        assert_eq!(layers("kselftest")[..2], layers("gcc")[..]);
        out.done
            .iter()
            .map(|(n, (_, img))| (n.to_string(), img.manifest.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert_eq!(manifests(a.path()), manifests(b.path()));
}
