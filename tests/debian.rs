//! The real image set: a Debian base bootstrapped with mmdebstrap from the machine's
//! mirror, KernelCI's build-base and the x86 gcc image, built twice from clean state
//! (fresh store, loaded images removed from the daemon) — same digests, real packages.

mod common;

use common::*;

fn build_real_gcc(ws: &Workspace) -> serde_json::Value {
    let images = concat!(env!("CARGO_MANIFEST_DIR"), "/images");
    ws.kci(&["--images", images, "build", "gcc-12:x86", "--json"])
        .ok()
        .json()
}

#[test]
fn real_base_build_base_and_gcc_reproduce_from_clean_state() {
    let _g = daemon_lock();
    remove_loaded_images("kci-build.local/");
    let ws = Workspace::new();
    let first = build_real_gcc(&ws);
    assert_eq!(
        actions(&first).into_iter().collect::<Vec<_>>(),
        [
            ("build-base".into(), "built".into()),
            ("debian:bookworm".into(), "built".into()),
            ("gcc-12:x86".into(), "built".into())
        ]
    );
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
    let section = |name: &str| {
        lock.split(&format!("[target.\"{name}\"]"))
            .nth(1)
            .unwrap()
            .split("\n[")
            .next()
            .unwrap()
            .to_owned()
    };
    let (base, build_base, gcc) = (
        section("debian:bookworm"),
        section("build-base"),
        section("gcc-12:x86"),
    );
    assert!(base.contains("package.\"libc6:amd64\" = \"2.36-"), "{base}");
    assert!(
        base.contains("input.\"recipe.bootstrap.suite\" = \"bookworm\""),
        "{base}"
    );
    assert!(
        !base.contains("package.\"bc:amd64\"") && build_base.contains("package.\"bc:amd64\""),
        "build-base adds bc"
    );
    assert!(
        gcc.contains("package.\"gcc-12:amd64\" = \"12.2.0-"),
        "{gcc}"
    );
    assert!(
        gcc.contains(&format!(
            "input.\"parent.manifest\" = \"{}\"",
            manifests(&first)["build-base"]
        )),
        "the parent digest is an input"
    );

    remove_loaded_images("kci-build.local/");
    let ws2 = Workspace::new();
    let second = build_real_gcc(&ws2);
    assert_eq!(
        manifests(&second),
        manifests(&first),
        "two clean builds must give the same manifests"
    );
    assert_eq!(std::fs::read_to_string(ws2.lockfile()).unwrap(), lock);
}
