//! The command line without builds: errors, exit codes, help.

mod common;

use common::*;

#[test]
fn recipe_errors_name_the_file_and_field_and_exit_1() {
    let ws = Workspace::new();
    ws.write(
        "images/gcc/image.toml",
        "[[target]]\nname = \"gcc:x86\"\nparent = \"nowhere\"\n",
    );
    ws.write("images/gcc/Dockerfile", "FROM scratch\n");
    let r = ws.kci(&["plan"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(
            "images/gcc/image.toml: target (gcc:x86).parent: no target is named `nowhere`"
        ),
        "{}",
        r.stderr
    );

    ws.write(
        "images/gcc/image.toml",
        "[[target]]\nname = \"gcc:x86\"\nargz = {}\n",
    );
    let r = ws.kci(&["plan"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("images/gcc/image.toml") && r.stderr.contains("unknown field `argz`"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_corrupt_lockfile_is_named() {
    let ws = Workspace::new();
    ws.write("images/a/image.toml", "[[target]]\nname = \"a\"\n");
    ws.write("images/a/Dockerfile", "FROM scratch\n");
    ws.write(
        "lockfiles/images.lock",
        "version = 1\n[target.\"a\"]\nkey = \"nope\"\n",
    );
    let r = ws.kci(&["plan"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("lockfiles/images.lock") && r.stderr.contains("sha256:"),
        "{}",
        r.stderr
    );
}

#[test]
fn unreachable_docker_exits_2_with_a_hint() {
    let ws = Workspace::new();
    ws.write("images/a/image.toml", "[[target]]\nname = \"a\"\n");
    ws.write("images/a/Dockerfile", "FROM scratch\n");
    let r = ws.kci_env(
        &["build"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("cannot reach the Docker daemon at unix:///nonexistent/docker.sock"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("help: start it"), "{}", r.stderr);
    assert!(
        !ws.lockfile().exists(),
        "nothing was built, nothing is locked"
    );
}

#[test]
fn plan_has_no_side_effects_and_json_goes_to_stdout() {
    let ws = Workspace::new();
    ws.write(
        "images/a/image.toml",
        "[[target]]\nname = \"a\"\n[[target]]\nname = \"b:x\"\nparent = \"a\"\n",
    );
    ws.write("images/a/Dockerfile", "FROM scratch\n");
    let r = ws
        .kci_env(
            &["plan", "--json"],
            &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
        )
        .ok();
    let v = r.json();
    assert_eq!(v[0]["name"], "a");
    assert_eq!(v[0]["status"], "build");
    assert_eq!(v[1]["status"], "build (after parent)");
    assert!(v[0]["key"].as_str().unwrap().starts_with("sha256:"));
    assert!(!ws.lockfile().exists());
    assert!(!ws.store().exists(), "plan must not create the store");
    // The key depends only on inputs: planning again gives the same key.
    assert_eq!(
        ws.kci(&["plan", "--json"]).ok().json()[0]["key"],
        v[0]["key"]
    );
}

#[test]
fn usage_errors_exit_1_and_help_teaches() {
    let ws = Workspace::new();
    let r = ws.kci(&["build", "--jobs", "many"]);
    assert_eq!(r.code, 1);
    let help = ws.kci(&["--help"]).ok().stdout;
    assert!(
        help.contains("Exit codes") && help.contains("kci-build why"),
        "{help}"
    );
    let r = ws.kci(&["why", "NOT_A_NAME"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("target name `NOT_A_NAME` is invalid"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_second_run_waits_for_the_lockfile_and_says_so() {
    use std::io::BufRead as _;
    let ws = Workspace::new();
    ws.write("images/a/image.toml", "[[target]]\nname = \"a\"\n");
    ws.write("images/a/Dockerfile", "FROM scratch\n");
    std::fs::create_dir_all(ws.path().join("lockfiles")).unwrap();
    // This test plays the first kci-build: it holds the images lockfile's lock.
    let held =
        kci_build::fsutil::LockfileLock::acquire(&ws.store().join("locks"), &ws.lockfile(), || {
            panic!("nobody else holds it")
        })
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .current_dir(ws.path())
        .env("KCI_BUILD_STORE", ws.store())
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(["build"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.contains("Blocking") && first.contains("lockfiles/images.lock"),
        "{first}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it went on while the lock was held"
    );
    drop(held);
    // Released: it goes on, and fails on the unreachable daemon as usual.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2), "{rest}");
    assert!(rest.contains("cannot reach the Docker daemon"), "{rest}");
}

/// The repository's images (with the rootfs-builder target) and the test suite's `tiny`
/// rootfs config, its `script` line replaced by `script`.
const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");

fn tiny_rootfs_workspace(script: &str) -> Workspace {
    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    let tiny = std::fs::read_to_string(ws.path().join("recipes/tiny.toml")).unwrap();
    ws.write(
        "recipes/tiny.toml",
        &tiny.replace("scripts/tiny.sh", script),
    );
    ws
}

/// No daemon (reaching it at all would exit 2) and a mirror that is never contacted.
const NO_DAEMON: [(&str, &str); 2] = [
    ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
    ("KCI_DEBIAN_MIRROR", "http://mirror.invalid/debian"),
];

#[test]
fn a_bad_rootfs_recipe_fails_before_the_builder_image_is_built() {
    let ws = tiny_rootfs_workspace("scripts/missing.sh");
    let r = ws.kci_env(&["--images", IMAGES, "rootfs", "tiny"], &NO_DAEMON);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("recipes/tiny.toml: script: recipes/scripts/missing.sh does not exist"),
        "{}",
        r.stderr
    );
    assert!(!ws.lockfile().exists(), "the images lockfile was written");
}

#[test]
fn why_explains_a_rootfs_config_arch_without_building() {
    // An empty store: the builder image is not built, so the key is not known yet, and the
    // lockfile has no entry.
    let ws = tiny_rootfs_workspace("scripts/tiny.sh");
    let r = ws.kci_env(&["--images", IMAGES, "why", "tiny/arm64"], &NO_DAEMON);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "tiny/arm64: key unknown until the rootfs-builder image is built\n  \
         to build: the rootfs-builder image must be built first (its digest enters this key)\n  \
         lockfiles/rootfs.lock has no entry for it: it is new\n"
    );
    let r = ws.kci_env(&["--images", IMAGES, "why", "tiny/riscv64"], &NO_DAEMON);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("recipes/tiny.toml: arch-list has no `riscv64` (it has: amd64, arm64)"),
        "{}",
        r.stderr
    );
    let r = ws.kci_env(&["--images", IMAGES, "why", "nope/amd64"], &NO_DAEMON);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("no rootfs recipe `nope` in recipes (known: tiny)"),
        "{}",
        r.stderr
    );
}
