//! The real image set: a Debian base bootstrapped with mmdebstrap from the machine's
//! mirror, KernelCI's build-base and the x86 gcc image, built twice from clean state
//! (fresh store, loaded images removed from the daemon) — same digests, real packages. The
//! second build runs with the upstream mirror unreachable (`KCI_APT_UPSTREAM` at a closed
//! port) after `kci-build fetch` filled its empty store's apt cache from the lockfile.

mod common;

use common::*;

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

fn build_real_gcc(ws: &Workspace, env: &[(&str, &str)]) -> serde_json::Value {
    ws.kci_env(&["--images", IMAGES, "build", "gcc-12:x86", "--json"], env)
        .ok()
        .json()
}

#[test]
fn real_base_build_base_and_gcc_reproduce_from_clean_state() {
    let _g = daemon_lock();
    remove_loaded_images("kci-build.local/");
    let ws = Workspace::new();
    let first = build_real_gcc(&ws, &[]);
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

    assert!(
        lock.contains("[apt-index.\"debian/bookworm\"]\ninrelease = \"sha256:"),
        "the suite is pinned"
    );
    assert!(
        build_base.contains("deb.\"debian/pool/main/g/gcc-12/gcc-12_12.2.0-")
            && base.contains("deb.\"debian/pool/main/g/glibc/libc6_2.36-")
            && !base.contains("gcc-12_12.2.0-"),
        "the .debs each target installed are locked"
    );

    // Another machine: an empty store, this lockfile, the mirror only for `fetch`.
    remove_loaded_images("kci-build.local/");
    let ws2 = Workspace::new();
    std::fs::create_dir_all(ws2.lockfile().parent().unwrap()).unwrap();
    std::fs::write(ws2.lockfile(), &lock).unwrap();
    let fetched = ws2
        .kci(&["--images", IMAGES, "fetch", "gcc-12:x86", "--json"])
        .ok()
        .json();
    assert!(fetched["debs"].as_u64().unwrap() > 200, "{fetched}");
    let offline = [("KCI_APT_UPSTREAM", "http://127.0.0.1:1")];
    let second = build_real_gcc(&ws2, &offline);
    assert_eq!(
        manifests(&second),
        manifests(&first),
        "two clean builds must give the same manifests"
    );
    assert_eq!(std::fs::read_to_string(ws2.lockfile()).unwrap(), lock);
}
