//! `kci-build gc` on a store made by real builds, with the lockfile's history in a real git
//! repository: a child image built with three greetings, the first two committed, the third
//! only in the working tree. `--keep-revisions 2` keeps all three; `--keep-revisions 1`
//! sweeps the first (its key record, its unique blobs, its log), never the parent or what
//! the others need; the store verifies clean, the current lockfile needs no rebuild, and
//! checking out the first lockfile rebuilds its image to the same bytes. What killed runs
//! left (a temp file, a failed builder container of this store) goes too.

mod common;

use common::*;

fn git(ws: &Workspace, args: &str) {
    sh(&format!(
        "cd {} && git -c user.name=t -c user.email=t@example.org {args}",
        ws.path().display()
    ));
}

fn greet(ws: &Workspace, greeting: &str) -> serde_json::Value {
    ws.write(
        "images/child/image.toml",
        &format!("[[target]]\nname = \"child:hello\"\nparent = \"busybox\"\nargs = {{ GREETING = \"{greeting}\" }}\n"),
    );
    ws.kci(&["build", "--json"]).ok().json()
}

fn key_records(ws: &Workspace) -> usize {
    std::fs::read_dir(ws.store().join("keys")).unwrap().count()
}

#[test]
fn gc_keeps_what_recent_lockfiles_reference_and_sweeps_the_rest() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "one");
    git(&ws, "init -q");
    let first = greet(&ws, "one");
    // The store is in the workspace: only the recipes and the lockfile are the repository's.
    git(
        &ws,
        "add images lockfiles && git -c user.name=t -c user.email=t@example.org commit -qm one",
    );
    let first_rev = sh(&format!("cd {} && git rev-parse HEAD", ws.path().display()));
    greet(&ws, "two");
    git(
        &ws,
        "add images lockfiles && git -c user.name=t -c user.email=t@example.org commit -qm two",
    );
    let third = greet(&ws, "three");
    assert_eq!(key_records(&ws), 4, "busybox and three children");

    // What killed runs leave: a temp file, and a failed builder container of this store.
    std::fs::create_dir_all(ws.store().join("tmp")).unwrap();
    std::fs::write(ws.store().join("tmp/blob-left-by-a-kill"), vec![0u8; 4096]).unwrap();
    std::fs::create_dir_all(ws.store().join("rootfs")).unwrap();
    let tag = &sh(&format!(
        "printf %s $(realpath {}) | sha256sum",
        ws.store().join("rootfs").display()
    ))[..8];
    let container = format!("kci-rootfs-gctest-amd64-0000000000000000-{tag}");
    let _ = sh(&format!("docker rm -f {container} 2>/dev/null; true"));
    ws.kci(&["load", "busybox"]).ok();
    sh(&format!(
        "docker create -q --name {container} --label org.kernelci.kci-build.rootfs=gctest/amd64 kernelci/busybox false >/dev/null && docker start -a {container}; true"
    ));

    // Two commits back reach the first lockfile: nothing keyed goes.
    let keep_all = ws
        .kci(&["gc", "--keep-revisions", "2", "--dry-run", "--json"])
        .ok()
        .json();
    let kinds = |r: &serde_json::Value| -> Vec<String> {
        r["swept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["entry"]["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(kinds(&keep_all), ["temp"], "{keep_all}");
    assert_eq!(keep_all["containers"], serde_json::json!([container]));
    assert!(
        sh(&format!("docker ps -aq --filter name={container}")).trim() != "",
        "--dry-run removes nothing"
    );

    // One commit back: the first child goes, with its blobs and log.
    let dry = ws
        .kci(&["gc", "--keep-revisions", "1", "--dry-run", "--json"])
        .ok()
        .json();
    let swept = ws.kci(&["gc", "--keep-revisions", "1", "--json"]).ok();
    let report = swept.json();
    assert_eq!(kinds(&report), kinds(&dry), "the dry run said what goes");
    assert_eq!(report["swept_bytes"], dry["swept_bytes"]);
    let k = kinds(&report);
    assert_eq!(k.iter().filter(|k| *k == "key-record").count(), 1, "{k:?}");
    assert!(k.iter().filter(|k| *k == "blob").count() >= 2, "{k:?}");
    assert!(k.iter().any(|k| k == "log"), "{k:?}");
    assert!(k.iter().any(|k| k == "temp"), "{k:?}");
    assert!(report["swept_bytes"].as_u64().unwrap() > 4096, "{report}");
    assert!(swept.stderr.contains("Removed"), "{}", swept.stderr);
    assert_eq!(key_records(&ws), 3);
    assert_eq!(
        sh(&format!("docker ps -aq --filter name={container}")).trim(),
        "",
        "the failed builder container is gone"
    );

    // What stays is whole, and the working tree's lockfile needs nothing rebuilt.
    let verify = ws.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
    let again = ws.kci(&["build", "--json"]).ok().json();
    assert!(actions(&again).values().all(|a| a == "cached"), "{again}");
    assert_eq!(manifests(&again), manifests(&third));

    // The swept lockfile, checked out again, rebuilds its child to the same bytes.
    git(&ws, &format!("checkout -q {} -- .", first_rev.trim()));
    let back = ws.kci(&["build", "--json"]).ok().json();
    assert_eq!(actions(&back)["busybox"], "cached");
    assert_eq!(actions(&back)["child:hello"], "built");
    assert_eq!(manifests(&back), manifests(&first));
}
