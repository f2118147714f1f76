//! Hostile inputs through the real binary, each refused with an error that names the file
//! and field, before anything runs: a build context with a symlink out of it, rootfs
//! recipes whose script or overlay path is absolute, climbs with `..`, or resolves through a
//! symlink to a directory outside the recipes.

mod common;

use common::*;

#[test]
fn a_build_context_symlink_out_of_the_context_is_refused() {
    let ws = Workspace::new();
    ws.add_busybox();
    std::os::unix::fs::symlink("/etc/shadow", ws.path().join("images/busybox/shadow")).unwrap();
    let r = ws.kci(&["build"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("images/busybox/shadow")
            && r.stderr.contains("points outside the build context"),
        "{}",
        r.stderr
    );
}

fn rootfs_recipe(ws: &Workspace, extra: &str) {
    ws.write(
        "recipes/evil.toml",
        &format!("name = \"evil\"\ndebian-release = \"bookworm\"\narch-list = [\"amd64\"]\nsource-date-epoch = 1\nmirror = \"auto\"\n{extra}"),
    );
}

#[test]
fn rootfs_recipe_paths_out_of_the_recipes_are_refused() {
    for (extra, field) in [
        (
            "script = \"/etc/passwd\"\n",
            "script: `/etc/passwd` must be a relative path",
        ),
        (
            "script = \"../../../etc/passwd\"\n",
            "script: `../../../etc/passwd` must be a relative path",
        ),
        (
            "test-overlay = \"overlays/../../root\"\n",
            "test-overlay: `overlays/../../root` must be a relative path",
        ),
    ] {
        let ws = Workspace::new();
        rootfs_recipe(&ws, extra);
        let r = ws.kci(&["rootfs", "evil"]);
        assert_eq!(r.code, 1, "{extra}: {}", r.stderr);
        assert!(
            r.stderr.contains("recipes/evil.toml") && r.stderr.contains(field),
            "{extra}: {}",
            r.stderr
        );
    }
    // An overlay holding a symlink (to a file of the machine, once copied into the rootfs).
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("recipes/overlays/evil/etc")).unwrap();
    std::os::unix::fs::symlink(
        "/etc/shadow",
        ws.path().join("recipes/overlays/evil/etc/shadow"),
    )
    .unwrap();
    rootfs_recipe(&ws, "test-overlay = \"overlays/evil\"\n");
    let r = ws.kci(&["rootfs", "evil"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("overlays/evil/etc/shadow")
            && r.stderr.contains("only files and directories"),
        "{}",
        r.stderr
    );

    // A path that looks inside but resolves outside through a symlink.
    let ws = Workspace::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("steal.sh"), "cat /etc/shadow\n").unwrap();
    std::fs::create_dir_all(ws.path().join("recipes")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("recipes/scripts")).unwrap();
    rootfs_recipe(&ws, "script = \"scripts/steal.sh\"\n");
    let r = ws.kci(&["rootfs", "evil"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("recipes/evil.toml: script:")
            && r.stderr.contains("outside the recipes directory"),
        "{}",
        r.stderr
    );
}

/// A registry whose stored blob was changed under it (Debian's docker-registry serves the
/// file as it is): a store pulling the target refuses the bytes, naming the digest, keeps
/// nothing of them, and the store stays sound.
#[test]
fn a_registry_serving_other_bytes_for_a_blob_is_refused() {
    use common::registry::{Auth, Registry};
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    ws.kci(&["build", "--push", "--registry", &reg.addr()]).ok();
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(ws.lockfile()).unwrap()).unwrap();
    let layer = lock["target"]["child:hello"]["output"]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let data = reg.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{layer}/data",
        &layer[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let other = Workspace::new(); // another machine: empty store, same recipes
    other.add_busybox();
    other.add_child("child", "child:hello", "busybox", "hello");
    let r = other.kci(&["build", "--registry", &reg.addr(), "--json"]);
    let stored = other.store().join(format!("blobs/sha256/{layer}"));
    assert_eq!(r.code, 2, "the registry is at fault: {}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("for sha256:{layer}: refused, nothing kept")),
        "{}",
        r.stderr
    );
    assert!(!stored.exists(), "the wrong bytes were kept");
    let verify = other.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}
