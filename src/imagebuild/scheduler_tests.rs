//! The scheduler on the in-memory engine: ordering, `--jobs`, failure propagation, and an
//! environment fault stopping the run — without Docker, but through the real build path
//! (context tar, `docker save` archive, canonical layers, parents loaded by archive).

use std::collections::{BTreeMap, BTreeSet};
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
        engines: vec!["default".into()],
    }
}

fn run(ws: &Workspace, jobs: usize, fake: &FakeEngine) -> anyhow::Result<Scheduled> {
    run_on(ws, jobs, vec![("default", fake.clone())])
}

/// Builds `ws` on a pool of fakes, `jobs` builds at once on each.
fn run_on(
    ws: &Workspace,
    jobs: usize,
    engines: Vec<(&str, FakeEngine)>,
) -> anyhow::Result<Scheduled> {
    let store = Store::open(&ws.paths.store).unwrap();
    let printer = Printer::new(ColorChoice::Never, true);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let prefix = ws.settings.prefix.clone();
            let maker = EngineMaker::with_engines(engines, jobs, prefix).await;
            schedule(ws, &store, &opts(jobs), &printer, maker).await
        })
}

fn engines_of(out: &Scheduled) -> BTreeMap<String, String> {
    out.outcomes
        .iter()
        .map(|o| (o.name.clone(), o.engine.clone().unwrap_or_default()))
        .collect()
}

#[test]
fn a_pool_runs_jobs_on_each_engine_and_gives_the_same_images() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let (a, b) = (engine(200), engine(200));
    let out = run_on(&ws, 1, vec![("a", a.clone()), ("b", b.clone())]).unwrap();
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    let on = engines_of(&out);
    assert!(
        on.values().any(|e| e == "a") && on.values().any(|e| e == "b"),
        "both engines build: {on:?}"
    );
    // One build at a time on each engine, two in all.
    assert_eq!(a.peak.load(Ordering::SeqCst), 1);
    assert_eq!(b.peak.load(Ordering::SeqCst), 1);
    // A child built on the other engine than its parent got the parent by `docker load`.
    let loaded = |e: &FakeEngine| e.calls().iter().filter(|c| c.starts_with("load")).count();
    assert!(loaded(&a) + loaded(&b) > 0, "{on:?}");

    // The same manifests as one engine makes, in a fresh store.
    let dir1 = tempfile::tempdir().unwrap();
    let one = run(&tree(dir1.path()), 2, &engine(0)).unwrap();
    let manifests = |s: &Scheduled| -> BTreeMap<String, String> {
        s.outcomes
            .iter()
            .map(|o| (o.name.clone(), o.manifest.clone()))
            .collect()
    };
    assert_eq!(manifests(&out), manifests(&one));
}

#[test]
fn an_arm64_target_goes_to_the_arm64_engine() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    std::fs::write(
        dir.path().join("images/rust/image.toml"),
        "[[target]]\nname = \"rust\"\nparent = \"base\"\nplatform = \"linux/arm64\"\n",
    )
    .unwrap();
    let ws = Workspace::load(&ws.paths, &Default::default()).unwrap();
    let (x86, arm) = (engine(50), engine(50));
    *arm.arch.lock().unwrap() = "arm64".into();
    let out = run_on(&ws, 2, vec![("x86", x86), ("arm", arm)]).unwrap();
    let on = engines_of(&out);
    assert_eq!(on["rust"], "arm", "{on:?}");
    assert!(
        ["base", "gcc", "clang", "kselftest"]
            .iter()
            .all(|t| on[*t] == "x86"),
        "amd64 targets stay on the amd64 engine: {on:?}"
    );
}

#[test]
fn an_engine_that_stops_answering_has_its_builds_moved() {
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let (a, b) = (engine(100), engine(100));
    // `b` dies as soon as its first build starts: that build and everything after goes to `a`.
    b.down.store(true, Ordering::SeqCst);
    let out = run_on(&ws, 1, vec![("a", a.clone()), ("b", b.clone())]).unwrap();
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert_eq!(out.done.len(), 5);
    let on = engines_of(&out);
    assert!(on.values().all(|e| e == "a"), "{on:?}");
    assert!(
        !b.builds.lock().unwrap().is_empty(),
        "b was tried before it was retired"
    );

    // Every engine gone: the run stops with exit 2, naming each.
    let dir = tempfile::tempdir().unwrap();
    let ws = tree(dir.path());
    let (a, b) = (engine(10), engine(10));
    a.down.store(true, Ordering::SeqCst);
    b.down.store(true, Ordering::SeqCst);
    let err = run_on(&ws, 1, vec![("a", a), ("b", b)])
        .err()
        .expect("stops");
    assert_eq!(
        crate::exit::exit_code(&err),
        crate::error::ExitCode::Environment
    );
    let text = format!("{err:#}");
    assert!(text.contains("no engine of the pool is left"), "{text}");
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
