//! `kci-build diff` on the committed lockfile of the real image set, across git revisions,
//! and as git's diff driver and textconv.

use std::path::Path;
use std::process::Command;

const KCI: &str = env!("CARGO_BIN_EXE_kci-build");

/// Runs `cmd`, which must succeed; its stdout.
fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    stdout_of(
        Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir),
    )
}

/// A repository with two commits of `lockfiles/images.lock`: the real one, then a week
/// later — libc6 upgraded in the base, bc downgraded in build-base, a package added to
/// qemu, gcc-12:riscv64 dropped.
fn repo() -> tempfile::TempDir {
    let real = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lockfiles/images.lock"
    ))
    .unwrap();
    let old_libc = real
        .lines()
        .find_map(|l| l.strip_prefix("package.\"libc6:amd64\" = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let old_bc = real
        .lines()
        .find_map(|l| l.strip_prefix("package.\"bc:amd64\" = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let mut lock =
        kci_build::core::lockfile::Lockfile::parse(Path::new("images.lock"), &real).unwrap();
    let base = lock
        .targets
        .get_mut(&"debian:bookworm".parse().unwrap())
        .unwrap();
    base.package
        .insert("libc6:amd64".into(), format!("{old_libc}+kci1"));
    let bb = lock
        .targets
        .get_mut(&"build-base".parse().unwrap())
        .unwrap();
    bb.package.insert("bc:amd64".into(), "1.0-1".into());
    let qemu = lock.targets.get_mut(&"qemu".parse().unwrap()).unwrap();
    qemu.package
        .insert("kci-probe:amd64".into(), "1.0-1".into());
    lock.targets.remove(&"gcc-12:riscv64".parse().unwrap());
    assert!(old_bc.as_str() > "1.0-1");

    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["config", "user.email", "ci@kci.invalid"]);
    git(dir.path(), &["config", "user.name", "ci"]);
    std::fs::create_dir_all(dir.path().join("lockfiles")).unwrap();
    std::fs::write(dir.path().join("lockfiles/images.lock"), &real).unwrap();
    std::fs::write(
        dir.path().join(".gitattributes"),
        "lockfiles/*.lock diff=kci\n",
    )
    .unwrap();
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "week 1"]);
    std::fs::write(dir.path().join("lockfiles/images.lock"), lock.to_text()).unwrap();
    git(dir.path(), &["commit", "-qam", "week 2"]);
    dir
}

#[test]
fn diff_between_git_revisions_names_package_moves() {
    let dir = repo();
    let out = Command::new(KCI)
        .current_dir(dir.path())
        .args(["diff", "HEAD~1", "HEAD"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed  gcc-12:riscv64"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("changed  debian:bookworm")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("    ↑ libc6:amd64 2.36-") && l.ends_with("+kci1")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("    ↓ bc:amd64 ") && l.ends_with(" -> 1.0-1")),
        "{text}"
    );
    assert!(text.contains("    + kci-probe:amd64 1.0-1"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("same     gcc-12:x86 ")),
        "{text}"
    );

    let md = Command::new(KCI)
        .current_dir(dir.path())
        .args([
            "diff",
            "main~1:lockfiles/images.lock",
            "lockfiles/images.lock",
            "--format",
            "markdown",
        ])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.starts_with("### kci-build lockfile changes"), "{md}");
    assert!(md.contains("| `gcc-12:riscv64` | removed | |"), "{md}");
    assert!(md.contains("| `debian:bookworm` | 0 inputs, packages: 0 added, 0 removed, 1 upgraded, 0 downgraded |"), "{md}");
}

#[test]
fn git_diff_uses_kci_build_as_driver_and_textconv() {
    let dir = repo();
    let driver = git(
        dir.path(),
        &[
            "-c",
            &format!("diff.kci.command={KCI} diff"),
            "diff",
            "HEAD~1",
            "HEAD",
        ],
    );
    assert!(
        driver.contains("removed  gcc-12:riscv64") && driver.contains("↑ libc6:amd64"),
        "{driver}"
    );
    let textconv = git(
        dir.path(),
        &[
            "-c",
            &format!("diff.kci.textconv={KCI} diff"),
            "diff",
            "HEAD~1",
            "HEAD",
        ],
    );
    assert!(
        textconv
            .lines()
            .any(|l| l.starts_with("-debian:bookworm libc6:amd64 2.36-")),
        "{textconv}"
    );
    assert!(
        textconv
            .lines()
            .any(|l| l.starts_with("+debian:bookworm libc6:amd64 2.36-") && l.ends_with("+kci1")),
        "{textconv}"
    );
    assert!(
        textconv
            .lines()
            .any(|l| l.starts_with("-gcc-12:riscv64 manifest ")),
        "{textconv}"
    );
}

/// The reviewer's case: between two revisions only `lockfiles/rootfs.lock` changed (a rootfs
/// gained an arch). `diff REV REV` covers every lockfile of the tree and names each one.
#[test]
fn diff_between_revisions_covers_every_lockfile() {
    let dir = repo();
    let root = env!("CARGO_MANIFEST_DIR");
    // The bookworm set's lockfile of July 2026 (tests/data), as the lockfile of the tree.
    let full = std::fs::read_to_string(format!("{root}/tests/data/rootfs-bookworm.lock")).unwrap();
    let mut lock =
        kci_build::core::rootfs_lock::RootfsLockfile::parse(Path::new("rootfs.lock"), &full)
            .unwrap();
    let kselftest = lock.configs.get_mut("bookworm-kselftest").unwrap();
    assert!(kselftest.arch.remove("arm64").is_some());
    std::fs::write(dir.path().join("lockfiles/rootfs.lock"), lock.to_text()).unwrap();
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "week 2: rootfs"]);
    std::fs::write(dir.path().join("lockfiles/rootfs.lock"), &full).unwrap();
    git(
        dir.path(),
        &["commit", "-qam", "week 2: kselftest on arm64"],
    );

    let diff = |args: &[&str]| {
        stdout_of(
            Command::new(KCI)
                .current_dir(dir.path())
                .arg("diff")
                .args(args),
        )
    };
    let text = diff(&["HEAD~1", "HEAD"]);
    assert!(
        text.contains("# lockfiles/images.lock: 0 added, 0 removed, 0 changed\n"),
        "{text}"
    );
    assert!(
        text.contains("# lockfiles/rootfs.lock: 1 added, 0 removed, 0 changed\n"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("added    bookworm-kselftest/arm64 (")),
        "{text}"
    );
    // A lockfile that did not exist at the older revision: all its entries are added.
    let builds = full.lines().filter(|l| l.contains("\".arch.\"")).count();
    assert!(builds >= 2, "{full}");
    let text = diff(&["HEAD~3", "HEAD"]);
    assert!(
        text.contains(&format!(
            "# lockfiles/rootfs.lock: {builds} added, 0 removed, 0 changed\n"
        )),
        "{text}"
    );
    assert!(text.contains("removed  gcc-12:riscv64"), "{text}");

    let md = diff(&["HEAD~1", "HEAD", "--format", "markdown"]);
    assert!(md.starts_with("### kci-build lockfile changes\n"), "{md}");
    assert!(
        md.contains("#### `lockfiles/images.lock`\n\nNo target changed.\n"),
        "{md}"
    );
    let version = &lock.configs["bookworm-kselftest"].version;
    assert!(
        md.contains(&format!(
            "#### `lockfiles/rootfs.lock`\n\n| target | change | version |\n|---|---|---|\n| `bookworm-kselftest/arm64` | added | `{version}` |"
        )),
        "{md}"
    );
}
