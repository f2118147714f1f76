//! The rootfs lockfile (`lockfiles/rootfs.lock`): per config, the version directory its
//! files live in; per (config, arch), the cache key, the inputs that made it, the Debian
//! packages installed, and each artifact's size, sha256 and URL.
//!
//! Like the images lockfile it has its own canonical writer: configs and arches sorted,
//! one fact per line, no timestamps, valid TOML. The deploy step and `kci-build diff`
//! read it; a reviewer reads its diff.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::apt::SuiteId;
use super::gitsource::{self, GitSourceSpec, LockedSource};
use super::lockfile::{quote, LockedIndex, LockfileError};
use super::names::Digest;
pub use super::rootfs_recipe::valid_config_name;
use super::rootfs_recipe::DEBIAN_ARCHES;
use super::urlsource::{self, LockedUrl, UrlSourceSpec};

pub const ROOTFS_LOCKFILE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArtifactInfo {
    pub sha256: Digest,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub url: Option<String>,
}

/// The per-arch manifest stored and uploaded beside the files (no wall-clock time).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct RootfsManifest {
    pub config: String,
    pub arch: String,
    pub key: Digest,
    pub source_date_epoch: u64,
    pub packages: BTreeMap<String, String>,
    pub artifacts: BTreeMap<String, ArtifactInfo>,
    /// `<archive>/<pool path>` → sha256 of every `.deb` the build fetched through the apt
    /// cache (empty in manifests of builds before the cache recorded them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub debs: BTreeMap<String, Digest>,
}

const HEADER: &str = "\
# This file is written by `kci-build rootfs`; do not edit it by hand.
# One fact per line: review changes with `git diff` or `kci-build diff`.
";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootfsLockfile {
    /// The index snapshot of every Debian suite the configs install from (`core::apt`).
    pub apt_index: BTreeMap<SuiteId, LockedIndex>,
    /// Source name → the commit and tree of every git source the configs clone.
    pub git_source: BTreeMap<String, LockedSource>,
    /// Source name → the sha256 and size of every file the configs' scripts download.
    pub url_source: BTreeMap<String, LockedUrl>,
    /// Config name (`bookworm`, `bookworm-kselftest`) → what was built for it.
    pub configs: BTreeMap<String, LockedConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedConfig {
    /// The version directory shared by every arch of the config (see [`config_version`]).
    pub version: String,
    /// Debian arch → its build.
    #[serde(default)]
    pub arch: BTreeMap<String, LockedRootfs>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedRootfs {
    pub key: Digest,
    #[serde(default)]
    pub input: BTreeMap<String, String>,
    /// `name:arch` → version, from the rootfs's dpkg status file.
    #[serde(default)]
    pub package: BTreeMap<String, String>,
    /// File name (`rootfs.cpio.gz`, …) → its bytes.
    #[serde(default)]
    pub artifact: BTreeMap<String, LockedArtifact>,
    /// `<archive>/<pool path>` of each `.deb` the build installed → its sha256.
    #[serde(default)]
    pub deb: BTreeMap<String, Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedArtifact {
    pub sha256: Digest,
    pub size: u64,
    /// Where the file is served, once uploaded.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRootfsLockfile {
    version: u32,
    #[serde(default, rename = "apt-index")]
    apt_index: BTreeMap<SuiteId, LockedIndex>,
    #[serde(default, rename = "git-source")]
    git_source: BTreeMap<String, LockedSource>,
    #[serde(default, rename = "url-source")]
    url_source: BTreeMap<String, LockedUrl>,
    #[serde(default)]
    rootfs: BTreeMap<String, LockedConfig>,
}

impl RootfsLockfile {
    pub fn parse(file: &Path, text: &str) -> Result<RootfsLockfile, LockfileError> {
        let err = |message: String| LockfileError {
            file: file.to_owned(),
            message,
        };
        let raw: RawRootfsLockfile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        if raw.version != ROOTFS_LOCKFILE_VERSION {
            return Err(err(format!(
                "version: rootfs lockfile format {} is not supported by this kci-build (it writes {ROOTFS_LOCKFILE_VERSION})",
                raw.version
            )));
        }
        for (name, config) in &raw.rootfs {
            if !valid_config_name(name) {
                return Err(err(format!(
                    "rootfs.{}: not a config name (letters, digits, `-`, `_`, `.`)",
                    quote(name)
                )));
            }
            for arch in config.arch.keys() {
                if !DEBIAN_ARCHES.contains(&arch.as_str()) {
                    return Err(err(format!(
                        "rootfs.{}.arch.{}: not a Debian architecture",
                        quote(name),
                        quote(arch)
                    )));
                }
            }
        }
        for (name, src) in &raw.git_source {
            let spec = GitSourceSpec {
                url: src.url.clone(),
                git_ref: src.git_ref.clone(),
            };
            if let Err((field, m)) = gitsource::validate(name, &spec) {
                return Err(err(format!("{field}: {m}")));
            }
        }
        for (name, src) in &raw.url_source {
            let spec = UrlSourceSpec {
                url: src.url.clone(),
                sha256: None,
            };
            if let Err((field, m)) = urlsource::validate(name, &spec) {
                return Err(err(format!("{field}: {m}")));
            }
        }
        Ok(RootfsLockfile {
            apt_index: raw.apt_index,
            git_source: raw.git_source,
            url_source: raw.url_source,
            configs: raw.rootfs,
        })
    }

    /// The canonical text. Equal models give equal bytes.
    pub fn to_text(&self) -> String {
        let mut out = String::from(HEADER);
        let _ = writeln!(out, "version = {ROOTFS_LOCKFILE_VERSION}");
        super::lockfile::write_apt_index(&mut out, &self.apt_index);
        for (name, src) in &self.git_source {
            let _ = writeln!(out, "\n[git-source.{}]", quote(name));
            let _ = writeln!(out, "url = {}", quote(&src.url));
            let _ = writeln!(out, "ref = {}", quote(&src.git_ref));
            let _ = writeln!(out, "commit = {}", quote(src.commit.as_str()));
            let _ = writeln!(out, "tree = {}", quote(src.tree.as_str()));
        }
        for (name, src) in &self.url_source {
            let _ = writeln!(out, "\n[url-source.{}]", quote(name));
            let _ = writeln!(out, "url = {}", quote(&src.url));
            let _ = writeln!(out, "sha256 = {}", quote(src.sha256.as_str()));
            let _ = writeln!(out, "size = {}", src.size);
        }
        for (name, config) in &self.configs {
            let _ = writeln!(out, "\n[rootfs.{}]", quote(name));
            let _ = writeln!(out, "version = {}", quote(&config.version));
            for (arch, r) in &config.arch {
                let _ = writeln!(out, "\n[rootfs.{}.arch.{}]", quote(name), quote(arch));
                let _ = writeln!(out, "key = {}", quote(r.key.as_str()));
                for (file, a) in &r.artifact {
                    let f = quote(file);
                    let _ = writeln!(out, "artifact.{f}.sha256 = {}", quote(a.sha256.as_str()));
                    let _ = writeln!(out, "artifact.{f}.size = {}", a.size);
                    if let Some(url) = &a.url {
                        let _ = writeln!(out, "artifact.{f}.url = {}", quote(url));
                    }
                }
                for (k, v) in &r.input {
                    let _ = writeln!(out, "input.{} = {}", quote(k), quote(v));
                }
                for (k, v) in &r.package {
                    let _ = writeln!(out, "package.{} = {}", quote(k), quote(v));
                }
                for (path, sha) in &r.deb {
                    let _ = writeln!(out, "deb.{} = {}", quote(path), quote(sha.as_str()));
                }
            }
        }
        out
    }
}

/// The version directory of a config: the recipe's `SOURCE_DATE_EPOCH` as `YYYYMMDD`, a dot,
/// and 12 hex digits of a hash over every `(arch, key)` of the config. It depends on the
/// inputs only: a rerun with nothing changed gives the same URLs, any change a new one.
pub fn config_version(source_date_epoch: u64, keys: &BTreeMap<String, Digest>) -> String {
    let mut h = Sha256::new();
    for (arch, key) in keys {
        h.update(format!("{arch} {}\n", key.as_str()));
    }
    let hex = hex::encode(h.finalize());
    let (y, m, d) = civil_from_days((source_date_epoch / 86_400) as i64);
    format!("{y:04}{m:02}{d:02}.{}", &hex[..12])
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The lockfile path next to a recipes directory's default.
pub fn default_path(root: &Path) -> PathBuf {
    root.join("lockfiles").join("rootfs.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    fn sample() -> RootfsLockfile {
        let mut arch = BTreeMap::new();
        arch.insert(
            "amd64".to_owned(),
            LockedRootfs {
                key: digest('a'),
                input: BTreeMap::from([("recipe.debian-release".into(), "bookworm".into())]),
                package: BTreeMap::from([("bash:amd64".into(), "5.2.15-2+b7".into())]),
                artifact: BTreeMap::from([(
                    "rootfs.cpio.gz".into(),
                    LockedArtifact {
                        sha256: digest('b'),
                        size: 42,
                        url: Some("http://storage.test/bookworm/v/amd64/rootfs.cpio.gz".into()),
                    },
                )]),
                deb: BTreeMap::from([(
                    "debian/pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb".into(),
                    digest('c'),
                )]),
            },
        );
        RootfsLockfile {
            apt_index: Default::default(),
            git_source: BTreeMap::from([(
                "bootrr".into(),
                LockedSource {
                    url: "https://github.com/kernelci/bootrr.git".into(),
                    git_ref: "main".into(),
                    commit: "a".repeat(40).parse().unwrap(),
                    tree: "b".repeat(40).parse().unwrap(),
                },
            )]),
            url_source: BTreeMap::from([(
                "alsa-ucm-conf".into(),
                LockedUrl {
                    url: "https://github.com/alsa-project/alsa-ucm-conf/archive/refs/heads/master.tar.gz".into(),
                    sha256: Digest::of(b"tarball"),
                    size: 7,
                },
            )]),
            configs: BTreeMap::from([(
                "bookworm".into(),
                LockedConfig {
                    version: "20251201.0123456789ab".into(),
                    arch,
                },
            )]),
        }
    }

    #[test]
    fn text_round_trips_and_is_one_fact_per_line() {
        let lock = sample();
        let text = lock.to_text();
        assert_eq!(
            RootfsLockfile::parse(Path::new("rootfs.lock"), &text).unwrap(),
            lock
        );
        assert!(text.contains("\n[rootfs.\"bookworm\".arch.\"amd64\"]\n"));
        assert!(text.contains("\nartifact.\"rootfs.cpio.gz\".size = 42\n"));
        assert!(text.contains("\n[git-source.\"bootrr\"]\nurl = \"https://github.com/kernelci/bootrr.git\"\nref = \"main\"\n"));
        assert!(text.contains("\n[url-source.\"alsa-ucm-conf\"]\nurl = \"https://github.com/alsa-project/alsa-ucm-conf/archive/refs/heads/master.tar.gz\"\nsha256 = \"sha256:"));
        assert_eq!(lock.to_text(), text);
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let text = sample().to_text().replace("\"amd64\"]", "\"amd65\"]");
        let e = RootfsLockfile::parse(Path::new("lockfiles/rootfs.lock"), &text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("lockfiles/rootfs.lock: "), "{msg}");
        assert!(msg.contains("arch.\"amd65\""), "{msg}");
        let e = RootfsLockfile::parse(Path::new("x.lock"), "version = 1\nrootfs = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rootfs"), "{e}");
    }

    #[test]
    fn version_is_derived_from_date_and_keys() {
        let mut keys = BTreeMap::from([("amd64".to_owned(), digest('a'))]);
        let v1 = config_version(1_764_547_200, &keys);
        assert!(v1.starts_with("20251201."), "{v1}");
        assert_eq!(v1.len(), "20251201.".len() + 12);
        assert_eq!(config_version(1_764_547_200, &keys), v1);
        keys.insert("arm64".to_owned(), digest('b'));
        assert_ne!(config_version(1_764_547_200, &keys), v1);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
