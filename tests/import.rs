//! `kci-build import rootfs-configs` on KernelCI's real rootfs-configs.yaml (2022-10).

use std::process::Command;

#[test]
fn imports_the_real_rootfs_configs_and_names_what_it_drops() {
    let out = tempfile::tempdir().unwrap();
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rootfs-configs.2022-10.yaml"
    );
    let r = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .args([
            "import",
            "rootfs-configs",
            file,
            "--release",
            "bookworm",
            "--source-date-epoch",
            "1764547200",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bookworm-cros-ec.toml",
            "bookworm-gst-fluster.toml",
            "bookworm-igt.toml",
            "bookworm-kselftest.toml",
            "bookworm-libcamera.toml",
            "bookworm-ltp.toml",
            "bookworm-rt.toml",
            "bookworm-v4l2.toml",
            "bookworm.toml"
        ]
    );
    for needle in [
        "buildroot-baseline.rootfs_type: `buildroot` configs are not converted",
        "sid.debian_mirror: another archive",
        "bullseye-igt.extra_firmware: firmware from linux-firmware.git is not supported yet",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
    let base: kci_build::rootfs::RootfsRecipe =
        toml::from_str(&std::fs::read_to_string(out.path().join("bookworm.toml")).unwrap())
            .unwrap();
    assert_eq!(base.debian_release, "bookworm");
    assert_eq!(
        base.arch_list,
        ["amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel"]
    );
    assert_eq!(
        base.extra_files_remove.len(),
        8,
        "the anchored list is carried over"
    );
    assert_eq!(base.script.as_deref(), Some("scripts/install-bootrr.sh"));
    let igt = std::fs::read_to_string(out.path().join("bookworm-igt.toml")).unwrap();
    assert!(
        igt.contains("# NOTE bullseye-igt.extra_firmware:"),
        "dropped fields are recorded in the recipe:\n{igt}"
    );
    // The committed recipes parse: today's trixie set, each pinning kernelci-core, whose
    // scripts and overlays it names.
    let committed = kci_build::ops::rootfs::load_recipes(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/recipes"
    )))
    .unwrap();
    assert_eq!(committed.len(), 18);
    for r in committed {
        assert_eq!(r.debian_release, "trixie", "{}", r.name);
        assert!(r.uses_kernelci_core(), "{}", r.name);
    }
}

/// A field name holding a line break (found by tests/fuzz.rs) is named on one `# NOTE` line:
/// it cannot add a TOML line to the recipe it is noted in.
#[test]
fn a_field_name_with_a_line_break_stays_in_its_comment() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("rootfs-configs.yaml");
    std::fs::write(
        &yaml,
        "rootfs_configs:\n  tiny:\n    rootfs_type: debos\n    debian_release: bookworm\n    \
         arch_list: [amd64]\n    \"x\\nscript = \\\"/etc/evil.sh\\\"\": 1\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let r = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .args(["import", "rootfs-configs"])
        .arg(&yaml)
        .args(["--release", "bookworm", "--source-date-epoch", "1", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = std::fs::read_to_string(out.join("tiny.toml")).unwrap();
    assert!(
        text.contains("# NOTE tiny.x\\nscript = \"/etc/evil.sh\": unknown field; dropped"),
        "{text}"
    );
    let recipe: kci_build::rootfs::RootfsRecipe = toml::from_str(&text).unwrap();
    assert_eq!(recipe.script, None, "{text}");
}

/// Today's fields, in a kernelci-core checkout's layout (a file written here, shaped like
/// KernelCI's 2026 trixie entries): `imagesize` and `debos_memory` are carried over, arches
/// trixie lacks are dropped and named, every recipe pins kernelci-core, and each URL the
/// config's script fetches at build time is pinned (a download, as `[url-source]`) or noted
/// (a clone; the Debian archive without its host).
#[test]
fn imports_todays_fields_and_notes_what_a_script_fetches() {
    let checkout = tempfile::tempdir().unwrap();
    let core = checkout.path().join("config/core");
    let scripts = checkout.path().join("config/rootfs/debos/scripts");
    std::fs::create_dir_all(&core).unwrap();
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        core.join("rootfs-configs.yaml"),
        "rootfs_configs:\n  trixie-suite:\n    rootfs_type: debos\n    debian_release: trixie\n    \
         imagesize: 4GB\n    debos_memory: 8G\n    arch_list: [amd64, arm64, mipsel]\n    \
         script: \"scripts/trixie-suite.sh\"\n",
    )
    .unwrap();
    std::fs::write(
        scripts.join("trixie-suite.sh"),
        "#!/bin/sh\n# https://example.org/docs is a comment\nSITE=https://git.example.org/suite.git\n\
         git clone $SITE\necho 'deb http://mirror.example/debian trixie-backports main' > /etc/apt/sources.list.d/b.list\n\
         curl -L -o /tmp/ucm.tar.gz https://github.com/alsa-project/alsa-ucm-conf/archive/refs/heads/master.tar.gz\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let r = Command::new(env!("CARGO_BIN_EXE_kci-build"))
        .args(["import", "rootfs-configs"])
        .arg(core.join("rootfs-configs.yaml"))
        .args(["--source-date-epoch", "1764547200", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let text = std::fs::read_to_string(out.path().join("trixie-suite.toml")).unwrap();
    let recipe: kci_build::rootfs::RootfsRecipe = toml::from_str(&text).unwrap();
    assert_eq!(recipe.arch_list, ["amd64", "arm64"]);
    assert_eq!(recipe.ext4_bytes(), 4_000_000_000);
    assert_eq!(recipe.memory_bytes(), Some(8 << 30));
    assert!(recipe.uses_kernelci_core(), "{text}");
    for note in [
        "# NOTE trixie-suite.arch_list: `mipsel` is not in Debian trixie",
        "# NOTE trixie-suite.script: scripts/trixie-suite.sh clones https://git.example.org/suite.git at build time",
        "# NOTE trixie-suite.script: scripts/trixie-suite.sh adds an apt source of a Debian archive",
    ] {
        assert!(text.contains(note), "missing `{note}` in:\n{text}");
    }
    assert!(
        !text.contains("example.org/docs") && !text.contains("mirror.example"),
        "comments and mirror hosts stay out:\n{text}"
    );
    assert_eq!(
        recipe.url_source["alsa-ucm-conf"].url,
        "https://github.com/alsa-project/alsa-ucm-conf/archive/refs/heads/master.tar.gz",
        "the download is pinned, not noted:\n{text}"
    );
    assert!(!text
        .contains("NOTE trixie-suite.script: scripts/trixie-suite.sh fetches https://github.com"));
}
