//! Builds against the real Docker daemon: FROM-scratch images from Debian's static busybox
//! and children of them.

mod common;

use common::*;

#[test]
fn second_build_does_no_docker_build_and_reproduces_digests() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");

    let first = ws.kci(&["build", "--json"]).ok().json();
    assert_eq!(
        actions(&first).values().collect::<Vec<_>>(),
        ["built", "built"]
    );
    let lock1 = std::fs::read_to_string(ws.lockfile()).unwrap();
    assert!(
        lock1.contains("[target.\"child:hello\"]")
            && lock1.contains("input.\"recipe.dockerfile.args.GREETING\" = \"hello\""),
        "{lock1}"
    );
    let lock_mtime = std::fs::metadata(ws.lockfile())
        .unwrap()
        .modified()
        .unwrap();
    // Each build recorded how long it took: the plan of a cold rebuild on two engines uses
    // those durations and runs the child after its parent.
    let plan = ws
        .kci(&["plan", "--engines", "2", "--cold", "--json"])
        .ok()
        .json();
    let jobs = plan["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{plan}");
    assert!(
        jobs.iter()
            .all(|j| j["measured"] == true && j["seconds"].as_f64().unwrap() > 0.0),
        "{plan}"
    );
    assert_eq!(
        plan["schedule"]["critical_path"],
        serde_json::json!(["busybox", "child:hello"]),
        "{plan}"
    );
    let slots = plan["schedule"]["slots"].as_array().unwrap();
    assert!(
        slots[1]["start"].as_f64() >= slots[0]["end"].as_f64(),
        "the child starts after its parent: {plan}"
    );
    let warm = ws.kci(&["plan", "--engines", "2"]).ok();
    assert!(
        warm.stdout.starts_with("0 builds on 2 engines"),
        "{}",
        warm.stdout
    );

    let since = next_second();
    let second = ws.kci(&["build", "--json"]).ok();
    assert_eq!(
        actions(&second.json()).values().collect::<Vec<_>>(),
        ["cached", "cached"]
    );
    assert_eq!(
        containers_created_since(since),
        0,
        "a no-op build must not run anything in the daemon"
    );
    assert_eq!(
        std::fs::metadata(ws.lockfile())
            .unwrap()
            .modified()
            .unwrap(),
        lock_mtime,
        "an unchanged lockfile is not rewritten"
    );

    // The same recipes in a fresh store, with the loaded parents removed from the daemon,
    // give the same bytes: the child's RUN wrote the date into /tmp (scrubbed) and every
    // file got a build-time mtime (clamped).
    remove_loaded_images("kci-build.local/busybox");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let ws2 = Workspace::new();
    ws2.add_busybox();
    ws2.add_child("child", "child:hello", "busybox", "hello");
    let again = ws2.kci(&["build", "--json"]).ok().json();
    assert_eq!(
        actions(&again).values().collect::<Vec<_>>(),
        ["built", "built"]
    );
    assert_eq!(manifests(&again), manifests(&first));
    assert_eq!(std::fs::read_to_string(ws2.lockfile()).unwrap(), lock1);
}

#[test]
fn touching_one_context_file_rebuilds_only_that_target_and_its_descendants() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:a", "busybox", "a");
    ws.add_child("grand", "grand:a", "child:a", "g");
    ws.add_child("other", "other:b", "busybox", "b");
    ws.kci(&["build"]).ok();

    ws.write("images/child/data.txt", "changed\n");
    let plan = ws.kci(&["plan", "--json"]).ok().json();
    let status: Vec<(String, String)> = plan
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        status,
        [
            ("busybox".into(), "cached".into()),
            ("child:a".into(), "build".into()),
            ("other:b".into(), "cached".into()),
            ("grand:a".into(), "build (after parent)".into())
        ]
    );
    let why = ws.kci(&["why", "child:a"]).ok().stdout;
    assert!(why.contains("context.data.txt: sha256:"), "{why}");
    assert!(
        !why.contains("recipe.dockerfile"),
        "only the context changed:\n{why}"
    );

    let report = ws.kci(&["build", "--json"]).ok().json();
    let a = actions(&report);
    assert_eq!(a["busybox"], "cached");
    assert_eq!(a["other:b"], "cached");
    assert_eq!(a["child:a"], "built");
    assert_eq!(a["grand:a"], "built");
}

#[test]
fn locked_refuses_changes_and_lock_check_reports_them() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    ws.kci(&["build"]).ok();
    ws.kci(&["build", "--locked"]).ok();
    ws.kci(&["lock", "--check"]).ok();
    let before = std::fs::read(ws.lockfile()).unwrap();

    ws.write("images/child/image.toml", "[[target]]\nname = \"child:hello\"\nparent = \"busybox\"\nargs = { GREETING = \"bonjour\" }\n");
    let r = ws.kci(&["build", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("child:hello: inputs changed (recipe.dockerfile.args.GREETING)"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(ws.lockfile()).unwrap(),
        before,
        "--locked must not write"
    );
    let r = ws.kci(&["lock", "--check"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("child:hello: inputs changed (recipe.dockerfile.args.GREETING)"),
        "{}",
        r.stderr
    );
    let why = ws.kci(&["why", "child:hello"]).ok().stdout;
    assert!(
        why.contains("recipe.dockerfile.args.GREETING: hello -> bonjour"),
        "{why}"
    );
}

#[test]
fn a_failing_step_fails_its_subtree_only_and_shows_the_log() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("good", "good", "busybox", "fine");
    ws.write(
        "images/bad/Dockerfile",
        "ARG PARENT\nFROM ${PARENT}\nRUN echo about to fail && exit 3\n",
    );
    ws.write(
        "images/bad/image.toml",
        "[[target]]\nname = \"bad\"\nparent = \"busybox\"\n",
    );
    ws.add_child("badchild", "bad-child", "bad", "x");
    let r = ws.kci(&["build", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("about to fail"),
        "the log tail is shown:\n{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("2 of 4 targets failed: bad, bad-child"),
        "{}",
        r.stderr
    );
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
    assert!(
        lock.contains("[target.\"good\"]") && !lock.contains("[target.\"bad\"]"),
        "{lock}"
    );
}

#[test]
fn built_images_run_in_the_daemon_with_their_content() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    ws.add_child("grand", "grand:x", "child:hello", "x");
    ws.kci(&["build"]).ok();
    // Building grand:x loaded child:hello from the store under its config digest.
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
    let section = lock.split("[target.\"child:hello\"]").nth(1).unwrap();
    let config = section
        .lines()
        .find_map(|l| l.strip_prefix("output.config = \""))
        .unwrap()
        .trim_end_matches('"');
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            config,
            "cat",
            "/etc/kci/greeting",
            "/etc/kci/data.txt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\nchild\n");

    // `load` gives it its human name.
    ws.kci(&["load", "grand:x"]).ok();
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "kernelci/grand:x",
            "cat",
            "/etc/kci/greeting",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "x\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::process::Command::new("docker")
        .args(["image", "rm", "kernelci/grand:x"])
        .output();
}

#[test]
fn an_interrupted_build_stores_nothing_partial_and_resumes() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.write(
        "images/slow/Dockerfile",
        "ARG PARENT\nFROM ${PARENT}\nRUN echo started && sleep 4 && echo done > /done\n",
    );
    ws.write(
        "images/slow/image.toml",
        "[[target]]\nname = \"slow\"\nparent = \"busybox\"\n",
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .args(["build"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until `slow` is building (its log exists and shows the RUN step), then Ctrl-C.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let started = std::fs::read_dir(ws.store().join("logs"))
            .map(|d| {
                d.filter_map(|e| e.ok()).any(|e| {
                    e.file_name().to_string_lossy().starts_with("slow-")
                        && std::fs::read_to_string(e.path())
                            .unwrap_or_default()
                            .contains("started")
                })
            })
            .unwrap_or(false);
        if started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow build never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
    let records: Vec<String> = std::fs::read_dir(ws.store().join("keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(records.len(), 1, "only busybox finished: {records:?}");
    let leftovers: Vec<_> = std::fs::read_dir(ws.store().join("tmp")).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "temp files were left behind: {leftovers:?}"
    );

    let report = ws.kci(&["build", "--json"]).ok().json();
    let a = actions(&report);
    assert_eq!(a["busybox"], "cached");
    assert_eq!(a["slow"], "built");
}

#[test]
fn check_reproduces_clean_targets_and_explains_a_planted_difference() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    // A recipe that is not reproducible: it stores the build's clock in the image.
    ws.write(
        "images/stamp/Dockerfile",
        "ARG PARENT\nFROM ${PARENT}\nRUN mkdir -p /etc && date +%s%N > /etc/stamp\n",
    );
    ws.write(
        "images/stamp/image.toml",
        "[[target]]\nname = \"stamp\"\nparent = \"busybox\"\n",
    );
    ws.kci(&["build"]).ok();

    let ok = ws.kci(&["check", "child:hello"]).ok();
    assert!(
        ok.stdout.contains("busybox: reproduced sha256:")
            && ok.stdout.contains("child:hello: reproduced sha256:"),
        "{}",
        ok.stdout
    );

    let r = ws.kci(&["check", "stamp"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("stamp: NOT reproduced"), "{}", r.stdout);
    assert!(
        r.stdout.contains("  layer 3 ("),
        "the differing layer is named:\n{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("/etc/stamp: content sha256 "),
        "the path and the kind of difference are named:\n{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("/bin/busybox"),
        "unchanged paths are not listed:\n{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("the rebuild does not reproduce"),
        "{}",
        r.stderr
    );
}
