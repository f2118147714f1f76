//! What one rootfs build — a (config, arch) pair — depends on, and its cache key.
//!
//! Pure: the recipe, the arch, the builder image's manifest digest, the mirror, the files
//! sent into the builder (recipe script, overlays, kci-build's own build script) and the
//! output format go in; facts and a key come out. The key is the sha256 of the facts'
//! canonical JSON (OLPC canonical form of a sorted string map), so it changes exactly when
//! a fact changes, and `kci-build rootfs` can say which.

use std::collections::BTreeMap;

use super::RootfsRecipe;
use crate::core::gitsource::LockedSource;
use crate::core::key::canonical_json;
use crate::core::names::Digest;
use crate::core::urlsource::LockedUrl;

/// Bumped when the meaning of a fact changes.
pub const ROOTFS_KEY_FORMAT: &str = "rootfs-1";

/// kci-build's recipe, run in the builder container.
pub const BUILD_SCRIPT: &str = include_str!("build.sh");

/// Overlays every rootfs gets from its tree's `overlays/`, where they exist (KernelCI's
/// debos recipe: the first five before the full archive, `nfs-initramfs` for the initrd).
pub const BASE_OVERLAYS: &[&str] = &[
    "auto-login",
    "prompt",
    "networkd",
    "minimal",
    "nosuspend",
    "nfs-initramfs",
];

/// Scripts every rootfs runs, from its tree's `scripts/` (KernelCI's debos recipe):
/// networking set-up, the NFS initrd, then the small ramdisk's strip and crush.
pub const STEP_SCRIPTS: &[&str] = &[
    "setup-networking.sh",
    "create_initrd_ramdisk.sh",
    "strip.sh",
    "crush.sh",
];

/// Packages the debos recipe installs into every rootfs before the config's own.
pub const BASE_PACKAGES: &[&str] = &[
    "udev",
    "kmod",
    "dbus",
    "systemd-sysv",
    "diffutils",
    "usbutils",
    "initramfs-tools",
    "patch",
    "systemd-timesyncd",
];

/// A file sent into the builder under `/kci/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    /// Path under `/kci/`, e.g. `overlays/prompt/root/.profile` or `script`.
    pub path: String,
    pub sha256: Digest,
    /// 0o755 for executables and directories, 0o644 otherwise.
    pub mode: u32,
    pub is_dir: bool,
}

/// One (config, arch) to build.
#[derive(Debug, Clone)]
pub struct RootfsJob {
    pub config: String,
    pub arch: String,
    pub key: Digest,
    pub facts: BTreeMap<String, String>,
    pub source_date_epoch: u64,
    pub xz_preset: u32,
    /// The container's memory limit (the recipe's `debos-memory`): not a key fact, it
    /// changes whether a build fits, not its bytes.
    pub memory: Option<u64>,
}

impl RootfsJob {
    /// `config/arch`, for messages.
    pub fn label(&self) -> String {
        format!("{}/{}", self.config, self.arch)
    }
}

/// The key fact holding the builder image's manifest digest.
pub const BUILDER_FACT: &str = "builder.manifest";

/// The facts a build depends on, as `name → value`.
pub fn facts(
    recipe: &RootfsRecipe,
    arch: &str,
    builder_manifest: &Digest,
    source: &Source<'_>,
    inputs: &[InputFile],
    output_format: &str,
) -> BTreeMap<String, String> {
    let mirror = source.mirror;
    let mut f = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        f.insert(k.to_owned(), v);
    };
    put("key-format", ROOTFS_KEY_FORMAT.to_owned());
    put(
        "output-format",
        format!("{output_format} ext4={}", recipe.ext4_bytes()),
    );
    put(BUILDER_FACT, builder_manifest.as_str().to_owned());
    put(
        "build-script",
        Digest::of(BUILD_SCRIPT.as_bytes()).as_str().to_owned(),
    );
    put("arch", arch.to_owned());
    put("config", recipe.name.clone());
    put("recipe.debian-release", recipe.debian_release.clone());
    put("recipe.base-packages", BASE_PACKAGES.join(" "));
    put("recipe.extra-packages", recipe.extra_packages.join(" "));
    put(
        "recipe.extra-packages-remove",
        recipe.extra_packages_remove.join(" "),
    );
    put(
        "recipe.extra-files-remove",
        recipe.extra_files_remove.join(" "),
    );
    put(
        "recipe.crush-image-options",
        recipe.crush_image_options.join(" "),
    );
    put("recipe.script", recipe.script.clone().unwrap_or_default());
    put(
        "recipe.test-overlay",
        recipe.test_overlay.clone().unwrap_or_default(),
    );
    put("recipe.xz-preset", recipe.xz_preset().to_string());
    put("source-date-epoch", recipe.source_date_epoch.to_string());
    if let Some(pin) = source.apt_index {
        put("apt-index", pin.as_str().to_owned());
    }
    put(
        "mirror-sha256",
        Digest::of(mirror.as_bytes()).as_str().to_owned(),
    );
    for (name, pin) in source.git {
        put(&format!("git-source.{name}"), pin.fact());
    }
    for (name, pin) in source.urls {
        put(&format!("url-source.{name}"), pin.fact());
    }
    for i in inputs {
        let value = if i.is_dir {
            format!("dir {:o}", i.mode)
        } else {
            format!("{} {:o}", i.sha256.as_str(), i.mode)
        };
        f.insert(format!("file.{}", i.path), value);
    }
    f
}

/// The cache key: sha256 of the facts' canonical JSON.
pub fn key(facts: &BTreeMap<String, String>) -> Digest {
    Digest::of(&canonical_json(facts))
}

/// The builder's environment for a job (no secrets: everything here is in the key).
/// Where a config's packages come from: the mirror its sources name, and the pinned
/// `InRelease` of its suite (absent only before the lockfile pins it).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub mirror: &'a str,
    pub apt_index: Option<&'a Digest>,
    /// The pins of the recipe's git sources, by name.
    pub git: &'a BTreeMap<String, LockedSource>,
    /// The pins of the recipe's downloads, by name.
    pub urls: &'a BTreeMap<String, LockedUrl>,
}

pub fn environment(recipe: &RootfsRecipe, arch: &str, mirror: &str, key: &Digest) -> Vec<String> {
    // A fixed file-system UUID per key: same inputs, same ext4 bytes.
    let h = key.hex();
    let uuid = format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    );
    let mut env = vec![
        format!("SOURCE_DATE_EPOCH={}", recipe.source_date_epoch),
        format!("KCI_SUITE={}", recipe.debian_release),
        format!("KCI_ARCH={arch}"),
        format!("KCI_MIRROR={mirror}"),
        format!("KCI_EXTRA_PACKAGES={}", recipe.extra_packages.join(" ")),
        format!(
            "KCI_REMOVE_PACKAGES={}",
            recipe.extra_packages_remove.join(" ")
        ),
        format!("KCI_FILES_REMOVE={}", recipe.extra_files_remove.join(" ")),
        format!("KCI_CRUSH_OPTIONS={}", recipe.crush_image_options.join(" ")),
        // mke2fs reads a bare number as blocks: say kibibytes.
        format!("KCI_EXT4_SIZE={}k", recipe.ext4_bytes() / 1024),
        format!("KCI_FS_UUID={uuid}"),
    ];
    if recipe.script.is_some() {
        env.push("KCI_SCRIPT=1".to_owned());
    }
    if recipe.test_overlay.is_some() {
        env.push("KCI_OVERLAY=1".to_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe() -> RootfsRecipe {
        RootfsRecipe {
            name: "bookworm".into(),
            debian_release: "bookworm".into(),
            arch_list: vec!["amd64".into(), "arm64".into()],
            extra_packages: vec!["isc-dhcp-client".into()],
            extra_packages_remove: vec![],
            extra_files_remove: vec![],
            script: None,
            test_overlay: None,
            crush_image_options: vec![],
            source_date_epoch: 1_764_547_200,
            mirror: "auto".into(),
            xz_preset: None,
            imagesize: None,
            debos_memory: None,
            git_source: Default::default(),
            url_source: Default::default(),
        }
    }

    fn builder() -> Digest {
        Digest::of(b"builder")
    }

    static NO_GIT: BTreeMap<String, LockedSource> = BTreeMap::new();
    static NO_URLS: BTreeMap<String, LockedUrl> = BTreeMap::new();

    fn src(mirror: &'static str) -> Source<'static> {
        Source {
            mirror,
            apt_index: None,
            git: &NO_GIT,
            urls: &NO_URLS,
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let r = recipe();
        let file = InputFile {
            path: "overlays/prompt/root/.profile".into(),
            sha256: Digest::of(b"PS1"),
            mode: 0o644,
            is_dir: false,
        };
        let base = key(&facts(
            &r,
            "amd64",
            &builder(),
            &src("http://m/debian"),
            std::slice::from_ref(&file),
            "f1",
        ));
        let mut variants = vec![
            key(&facts(
                &r,
                "arm64",
                &builder(),
                &src("http://m/debian"),
                std::slice::from_ref(&file),
                "f1",
            )),
            key(&facts(
                &r,
                "amd64",
                &Digest::of(b"x"),
                &src("http://m/debian"),
                std::slice::from_ref(&file),
                "f1",
            )),
            key(&facts(
                &r,
                "amd64",
                &builder(),
                &src("http://n/debian"),
                std::slice::from_ref(&file),
                "f1",
            )),
            key(&facts(
                &r,
                "amd64",
                &builder(),
                &src("http://m/debian"),
                &[],
                "f1",
            )),
            key(&facts(
                &r,
                "amd64",
                &builder(),
                &src("http://m/debian"),
                std::slice::from_ref(&file),
                "f2",
            )),
        ];
        let mut executable = file.clone();
        executable.mode = 0o755;
        variants.push(key(&facts(
            &r,
            "amd64",
            &builder(),
            &src("http://m/debian"),
            &[executable],
            "f1",
        )));
        let mut r2 = r.clone();
        r2.extra_packages.push("wget".into());
        variants.push(key(&facts(
            &r2,
            "amd64",
            &builder(),
            &src("http://m/debian"),
            std::slice::from_ref(&file),
            "f1",
        )));
        let mut r3 = r.clone();
        r3.source_date_epoch += 1;
        variants.push(key(&facts(
            &r3,
            "amd64",
            &builder(),
            &src("http://m/debian"),
            std::slice::from_ref(&file),
            "f1",
        )));
        let pin = Digest::of(b"InRelease");
        let pinned = Source {
            mirror: "http://m/debian",
            apt_index: Some(&pin),
            git: &NO_GIT,
            urls: &NO_URLS,
        };
        variants.push(key(&facts(
            &r,
            "amd64",
            &builder(),
            &pinned,
            std::slice::from_ref(&file),
            "f1",
        )));
        let git = BTreeMap::from([(
            "suite".to_owned(),
            LockedSource {
                url: "https://h/suite.git".into(),
                git_ref: "main".into(),
                commit: "a".repeat(40).parse().unwrap(),
                tree: "b".repeat(40).parse().unwrap(),
            },
        )]);
        let mut moved = git.clone();
        moved.get_mut("suite").unwrap().commit = "c".repeat(40).parse().unwrap();
        for git in [&git, &moved] {
            variants.push(key(&facts(
                &r,
                "amd64",
                &builder(),
                &Source {
                    mirror: "http://m/debian",
                    apt_index: None,
                    git,
                    urls: &NO_URLS,
                },
                std::slice::from_ref(&file),
                "f1",
            )));
        }
        let mut r4 = r.clone();
        r4.xz_preset = Some(1);
        variants.push(key(&facts(
            &r4,
            "amd64",
            &builder(),
            &src("http://m/debian"),
            std::slice::from_ref(&file),
            "f1",
        )));
        for v in &variants {
            assert_ne!(*v, base);
        }
        assert_eq!(
            key(&facts(
                &r,
                "amd64",
                &builder(),
                &src("http://m/debian"),
                &[file],
                "f1"
            )),
            base
        );
    }

    #[test]
    fn a_download_pin_is_a_key_fact_and_its_bytes_move_the_key() {
        let pin = |bytes: &[u8]| {
            BTreeMap::from([(
                "ucm".to_owned(),
                LockedUrl {
                    url: "https://h/ucm.tar.gz".into(),
                    sha256: Digest::of(bytes),
                    size: bytes.len() as u64,
                },
            )])
        };
        let (a, b) = (pin(b"a"), pin(b"b"));
        let key_with = |urls: &BTreeMap<String, LockedUrl>| {
            let s = Source {
                urls,
                ..src("http://m/debian")
            };
            key(&facts(&recipe(), "amd64", &builder(), &s, &[], "f"))
        };
        let none = key(&facts(
            &recipe(),
            "amd64",
            &builder(),
            &src("http://m/debian"),
            &[],
            "f",
        ));
        assert_ne!(key_with(&a), none);
        assert_ne!(key_with(&a), key_with(&b));
        assert_eq!(key_with(&a), key_with(&pin(b"a")));
    }

    #[test]
    fn the_mirror_host_is_not_a_fact_only_its_hash() {
        let f = facts(
            &recipe(),
            "amd64",
            &builder(),
            &src("http://m.example/debian"),
            &[],
            "f",
        );
        assert!(f.values().all(|v| !v.contains("m.example")));
    }

    #[test]
    fn environment_has_a_valid_uuid_derived_from_the_key() {
        let env = environment(&recipe(), "arm64", "http://m/debian", &Digest::of(b"k"));
        let uuid = env
            .iter()
            .find_map(|e| e.strip_prefix("KCI_FS_UUID="))
            .unwrap();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.as_bytes()[14], b'4');
        assert!(env.contains(&"KCI_ARCH=arm64".to_owned()));
        assert!(env.contains(&"KCI_EXTRA_PACKAGES=isc-dhcp-client".to_owned()));
    }
}
