//! The lockfile: per target, its key, the inputs that made it, what Debian installed,
//! and the digests it produced.
//!
//! It is a model type with its own canonical writer (like Cargo.lock): a header, a format
//! version, targets sorted by name, one fact per line, no timestamps. The text is valid
//! TOML so any tool can read it; kci-build reads it back with `toml` and refuses unknown
//! fields and versions, naming the file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::apt::SuiteId;
use super::names::{Digest, TargetName};

pub const LOCKFILE_VERSION: u32 = 1;

const HEADER: &str = "\
# This file is written by kci-build; do not edit it by hand.
# One fact per line: review changes with `git diff` or `kci-build diff`.
";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lockfile {
    /// The index snapshot of every Debian suite the builds install from (`core::apt`).
    pub apt_index: BTreeMap<SuiteId, LockedIndex>,
    pub targets: BTreeMap<TargetName, LockedTarget>,
}

/// One suite's pin: the sha256 of its `InRelease`, and the `Date:` it carries (for people).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedIndex {
    pub inrelease: Digest,
    #[serde(default)]
    pub date: Option<String>,
}

impl Lockfile {
    /// The pins alone, as keys and the apt cache take them.
    pub fn pins(&self) -> BTreeMap<SuiteId, Digest> {
        pins_of(&self.apt_index)
    }
}

/// The digests of a set of locked indexes.
pub fn pins_of(index: &BTreeMap<SuiteId, LockedIndex>) -> BTreeMap<SuiteId, Digest> {
    index
        .iter()
        .map(|(s, i)| (s.clone(), i.inrelease.clone()))
        .collect()
}

/// Writes the `[apt-index."<suite>"]` sections.
pub(crate) fn write_apt_index(out: &mut String, index: &BTreeMap<SuiteId, LockedIndex>) {
    for (suite, i) in index {
        let _ = writeln!(out, "\n[apt-index.{}]", quote(&suite.to_string()));
        let _ = writeln!(out, "inrelease = {}", quote(i.inrelease.as_str()));
        if let Some(d) = &i.date {
            let _ = writeln!(out, "date = {}", quote(d));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedTarget {
    pub key: Digest,
    /// The key's input facts (see `KeyInputs::facts`).
    #[serde(default)]
    pub input: BTreeMap<String, String>,
    pub output: LockedOutput,
    /// Installed Debian packages: `name:arch` → version, read from dpkg's status file.
    #[serde(default)]
    pub package: BTreeMap<String, String>,
    /// The `.deb`s apt fetched to build it: `<archive>/<pool path>` → sha256.
    #[serde(default)]
    pub deb: BTreeMap<String, Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedOutput {
    /// The image manifest, or for a multi-platform target its OCI index.
    pub manifest: Digest,
    /// The image config (absent for an index).
    #[serde(default)]
    pub config: Option<Digest>,
    #[serde(default)]
    pub layers: Vec<Digest>,
    /// An index's per-platform manifests.
    #[serde(default)]
    pub members: Vec<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct LockfileError {
    pub file: PathBuf,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLockfile {
    version: u32,
    #[serde(default, rename = "apt-index")]
    apt_index: BTreeMap<SuiteId, LockedIndex>,
    #[serde(default)]
    target: BTreeMap<TargetName, LockedTarget>,
}

impl Lockfile {
    pub fn parse(file: &Path, text: &str) -> Result<Lockfile, LockfileError> {
        let err = |message: String| LockfileError {
            file: file.to_owned(),
            message,
        };
        let raw: RawLockfile =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        if raw.version != LOCKFILE_VERSION {
            return Err(err(format!(
                "version: lockfile format {} is not supported by this kci-build (it writes {LOCKFILE_VERSION})",
                raw.version
            )));
        }
        Ok(Lockfile {
            apt_index: raw.apt_index,
            targets: raw.target,
        })
    }

    /// The canonical text. Equal models give equal bytes.
    pub fn to_text(&self) -> String {
        let mut out = String::from(HEADER);
        let _ = writeln!(out, "version = {LOCKFILE_VERSION}");
        write_apt_index(&mut out, &self.apt_index);
        for (name, t) in &self.targets {
            let _ = writeln!(out, "\n[target.{}]", quote(name.as_str()));
            let _ = writeln!(out, "key = {}", quote(t.key.as_str()));
            let _ = writeln!(
                out,
                "output.manifest = {}",
                quote(t.output.manifest.as_str())
            );
            if let Some(c) = &t.output.config {
                let _ = writeln!(out, "output.config = {}", quote(c.as_str()));
            }
            for (field, list) in [("layers", &t.output.layers), ("members", &t.output.members)] {
                if field == "members" && list.is_empty() {
                    continue;
                }
                let _ = writeln!(out, "output.{field} = [");
                for d in list {
                    let _ = writeln!(out, "    {},", quote(d.as_str()));
                }
                out.push_str("]\n");
            }
            for (k, v) in &t.input {
                let _ = writeln!(out, "input.{} = {}", quote(k), quote(v));
            }
            for (k, v) in &t.package {
                let _ = writeln!(out, "package.{} = {}", quote(k), quote(v));
            }
            for (k, v) in &t.deb {
                let _ = writeln!(out, "deb.{} = {}", quote(k), quote(v.as_str()));
            }
        }
        out
    }
}

/// A TOML basic string.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lockfile {
        let d = |b: u8| Digest::of(&[b]);
        let mut l = Lockfile::default();
        l.targets.insert(
            "gcc-12:x86".parse().unwrap(),
            LockedTarget {
                key: d(1),
                input: BTreeMap::from([
                    (
                        "recipe.dockerfile.args.PKGS".into(),
                        "gcc-12 \"quoted\"\\".into(),
                    ),
                    ("context.Dockerfile".into(), format!("{} 644", d(2))),
                ]),
                output: LockedOutput {
                    manifest: d(3),
                    config: Some(d(4)),
                    layers: vec![d(5), d(6)],
                    members: vec![],
                },
                package: BTreeMap::from([
                    ("gcc-12:amd64".into(), "12.2.0-14+deb12u1".into()),
                    ("bc:amd64".into(), "1.07.1-3+b1".into()),
                ]),
                deb: BTreeMap::from([(
                    "debian/pool/main/b/bc/bc_1.07.1-3+b1_amd64.deb".into(),
                    d(10),
                )]),
            },
        );
        l.targets.insert(
            "base".parse().unwrap(),
            LockedTarget {
                key: d(7),
                input: BTreeMap::new(),
                output: LockedOutput {
                    manifest: d(8),
                    config: Some(d(9)),
                    layers: vec![],
                    members: vec![],
                },
                package: BTreeMap::new(),
                deb: BTreeMap::new(),
            },
        );
        l.apt_index.insert(
            "debian/bookworm".parse().unwrap(),
            LockedIndex {
                inrelease: d(11),
                date: Some("Sat, 08 Nov 2025 09:00:00 UTC".into()),
            },
        );
        l
    }

    #[test]
    fn writer_matches_golden_file_and_round_trips() {
        let text = sample().to_text();
        let golden = include_str!("../../tests/golden/sample.lock");
        if std::env::var_os("KCI_BLESS").is_some() {
            std::fs::write(
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/sample.lock"),
                &text,
            )
            .unwrap();
        }
        assert_eq!(
            text, golden,
            "lockfile text changed; if intended, update tests/golden/sample.lock"
        );
        let back = Lockfile::parse(Path::new("x.lock"), &text).unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.to_text(), text);
    }

    #[test]
    fn parse_errors_name_file_and_field() {
        let e = Lockfile::parse(Path::new("lockfiles/images.lock"), "version = 9\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("lockfiles/images.lock: version:"), "{e}");
        let bad = sample()
            .to_text()
            .replace("key = \"sha256:", "key = \"md5:");
        let e = Lockfile::parse(Path::new("lockfiles/images.lock"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lockfiles/images.lock") && e.contains("key") && e.contains("sha256"),
            "{e}"
        );
    }

    #[test]
    fn describes_changes_per_fact() {
        let old = sample();
        let mut new = sample();
        let t = new
            .targets
            .get_mut(&"gcc-12:x86".parse::<TargetName>().unwrap())
            .unwrap();
        t.package.insert("bc:amd64".into(), "1.08".into());
        new.targets.remove(&"base".parse::<TargetName>().unwrap());
        // The `--locked` refusal's lines come from the one lockfile diff.
        let lines = crate::core::lockdiff::diff(&old, &new).change_lines();
        assert_eq!(lines[0], "removed  base");
        assert!(
            lines[1].starts_with("changed  gcc-12:x86 (same output: "),
            "{lines:?}"
        );
        assert_eq!(lines[2], "    output config: same e52d9c508c50");
        assert_eq!(lines[3], "    ↑ bc:amd64 1.07.1-3+b1 -> 1.08");
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(
            crate::core::lockdiff::diff(&old, &old).change_lines(),
            ["no entry changed: URLs or formatting did"]
        );
    }
}
