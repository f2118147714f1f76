//! A Debian base bootstrapped with mmdebstrap from the machine's mirror, and an apt-based
//! child: real packages, recorded in the lockfile, reproduced bit for bit.

mod common;

use common::*;

fn debian_workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("images/debian/image.toml", "[[target]]\nname = \"debian:bookworm\"\nbootstrap = { suite = \"bookworm\", variant = \"minbase\" }\n");
    ws.write(
        "images/tools/Dockerfile",
        "ARG PARENT\nFROM ${PARENT}\nARG DEBIAN_FRONTEND=noninteractive\nRUN apt-get update && apt-get install -y --no-install-recommends bc && apt-get clean && rm -rf /var/lib/apt/lists/*\n",
    );
    ws.write(
        "images/tools/image.toml",
        "[[target]]\nname = \"tools:bc\"\nparent = \"debian:bookworm\"\n",
    );
    ws
}

#[test]
fn bootstrapped_base_and_apt_child_build_lock_packages_and_reproduce() {
    let _g = daemon_lock();
    let ws = debian_workspace();
    let first = ws.kci(&["build", "--json"]).ok().json();
    assert_eq!(
        actions(&first).values().collect::<Vec<_>>(),
        ["built", "built"]
    );
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
    let child = lock.split("[target.\"tools:bc\"]").nth(1).unwrap();
    let base = lock.split("[target.\"tools:bc\"]").next().unwrap();
    assert!(
        child
            .lines()
            .any(|l| l.starts_with("package.\"bc:amd64\" = \"")),
        "bc is recorded with its version:\n{child}"
    );
    assert!(
        !base.contains("package.\"bc:amd64\""),
        "the base does not have bc"
    );
    assert!(base.contains("package.\"libc6:amd64\" = \"2.36-"), "{base}");
    assert!(
        base.contains("input.\"recipe.bootstrap.suite\" = \"bookworm\""),
        "{base}"
    );

    // From clean state (new store, loaded images removed), every digest is reproduced.
    remove_loaded_images("kci-build.local/");
    let ws2 = debian_workspace();
    let second = ws2.kci(&["build", "--json"]).ok().json();
    assert_eq!(
        actions(&second).values().collect::<Vec<_>>(),
        ["built", "built"]
    );
    assert_eq!(
        manifests(&second),
        manifests(&first),
        "two clean builds must give the same manifests"
    );
    assert_eq!(std::fs::read_to_string(ws2.lockfile()).unwrap(), lock);
}
