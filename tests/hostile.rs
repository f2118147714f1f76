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
