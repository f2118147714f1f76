//! What changed between two lockfiles, for reviewers: targets added and removed, and per
//! target its key, output digests, inputs and Debian packages (added, removed, upgraded,
//! downgraded), as text or as a Markdown PR comment.
//!
//! Both lockfiles diff the same way: an images target and a rootfs (config, arch) are each
//! an [`Entry`] with a key, inputs, packages and named outputs (an image's manifest; a
//! rootfs's version directory and the sha256 of each file).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::debversion;
use super::key::diff_facts;
use super::lockfile::Lockfile;
use super::rootfs_lock::RootfsLockfile;

/// One diffable unit of a lockfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub input: BTreeMap<String, String>,
    pub package: BTreeMap<String, String>,
    /// The output a one-line summary shows (an image's manifest, a rootfs's version).
    pub primary: String,
    /// Every output by name (`manifest`, `config`, `rootfs.cpio.gz`, …).
    pub outputs: BTreeMap<String, String>,
}

/// The images lockfile's targets as entries.
pub fn image_entries(lock: &Lockfile) -> BTreeMap<String, Entry> {
    lock.targets
        .iter()
        .map(|(name, t)| {
            let mut outputs =
                BTreeMap::from([("manifest".to_owned(), t.output.manifest.to_string())]);
            if let Some(c) = &t.output.config {
                outputs.insert("config".to_owned(), c.to_string());
            }
            (
                name.to_string(),
                Entry {
                    key: t.key.to_string(),
                    input: t.input.clone(),
                    package: match t.package.is_empty() {
                        true => packages_of_debs(&t.deb),
                        false => t.package.clone(),
                    },
                    primary: t.output.manifest.to_string(),
                    outputs,
                },
            )
        })
        .collect()
}

/// `name:arch` → version of the `.deb`s a target was built from, for a target without a
/// dpkg database to read (an `extract` bootstrap); the version is the file name's (no epoch).
fn packages_of_debs(debs: &BTreeMap<String, super::names::Digest>) -> BTreeMap<String, String> {
    debs.keys()
        .filter_map(|p| super::apt::deb_file_parts(p))
        .map(|(name, version, arch)| (format!("{name}:{arch}"), version.to_owned()))
        .collect()
}

/// The rootfs lockfile's (config, arch) builds as entries named `config/arch`.
pub fn rootfs_entries(lock: &RootfsLockfile) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for (config, c) in &lock.configs {
        for (arch, r) in &c.arch {
            let mut outputs = BTreeMap::from([("version".to_owned(), c.version.clone())]);
            for (file, a) in &r.artifact {
                outputs.insert(file.clone(), a.sha256.to_string());
            }
            out.insert(
                format!("{config}/{arch}"),
                Entry {
                    key: r.key.to_string(),
                    input: r.input.clone(),
                    package: r.package.clone(),
                    primary: c.version.clone(),
                    outputs,
                },
            );
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageChange {
    Added(String),
    Removed(String),
    Upgraded(String, String),
    Downgraded(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDiff {
    pub name: String,
    pub old_manifest: String,
    pub new_manifest: String,
    pub key_changed: bool,
    /// `(output, old, new)` of every named output; equal old and new mean it stayed.
    pub outputs: Vec<(String, String, String)>,
    /// `(path, old, new)` of changed inputs.
    pub inputs: Vec<(String, String, String)>,
    pub packages: BTreeMap<String, PackageChange>,
}

/// Which lockfile a diff is of: it names the output a one-line summary shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LockKind {
    /// `lockfiles/images.lock`: an entry per image target, summarised by its manifest.
    #[default]
    Images,
    /// `lockfiles/rootfs.lock`: an entry per (config, arch), summarised by its version.
    Rootfs,
}

impl LockKind {
    /// Told apart by their tables: `[rootfs.…]` or `[target.…]`.
    pub fn of_text(text: &str) -> LockKind {
        if text.lines().any(|l| l.starts_with("[rootfs.")) {
            LockKind::Rootfs
        } else {
            LockKind::Images
        }
    }

    /// The name of the output each entry is summarised by.
    pub fn primary_output(self) -> &'static str {
        match self {
            LockKind::Images => "manifest",
            LockKind::Rootfs => "version",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockDiff {
    pub kind: LockKind,
    pub added: Vec<(String, String)>,
    pub removed: Vec<String>,
    pub changed: Vec<TargetDiff>,
    pub unchanged: Vec<(String, String)>,
}

pub fn diff(old: &Lockfile, new: &Lockfile) -> LockDiff {
    diff_entries(&image_entries(old), &image_entries(new))
}

/// The heading of a Markdown diff.
pub const MARKDOWN_TITLE: &str = "### kci-build lockfile changes";

/// The diff of two sets of entries of the same kind of lockfile.
pub fn diff_kind(
    kind: LockKind,
    old: &BTreeMap<String, Entry>,
    new: &BTreeMap<String, Entry>,
) -> LockDiff {
    LockDiff {
        kind,
        ..diff_entries(old, new)
    }
}

pub fn diff_entries(old: &BTreeMap<String, Entry>, new: &BTreeMap<String, Entry>) -> LockDiff {
    let mut d = LockDiff::default();
    for name in old.keys() {
        if !new.contains_key(name) {
            d.removed.push(name.clone());
        }
    }
    for (name, n) in new {
        match old.get(name) {
            None => d.added.push((name.clone(), n.primary.clone())),
            Some(o) if o == n => d.unchanged.push((name.clone(), n.primary.clone())),
            Some(o) => d.changed.push(target_diff(name, o, n)),
        }
    }
    d
}

/// One changed input. A git source's fact is `<url> <commit> <tree>`, a download's `<url>
/// <sha256>`: its line names the source and the commits (or sha256s), `source bootrr: <old>
/// -> <new>` (the URL when it moved).
fn input_line(path: &str, old: &str, new: &str) -> String {
    let Some(name) = path
        .strip_prefix("git-source.")
        .or_else(|| path.strip_prefix("url-source."))
    else {
        return format!("input {path}: {old} -> {new}");
    };
    let parts = |f: &str| -> (String, String) {
        let mut it = f.split(' ');
        let url = it.next().unwrap_or_default().to_owned();
        let commit = it.next().map_or_else(|| f.to_owned(), str::to_owned);
        (url, commit)
    };
    let ((old_url, old_commit), (new_url, new_commit)) = (parts(old), parts(new));
    if old_url == new_url || old == "(absent)" || new == "(absent)" {
        format!("source {name}: {old_commit} -> {new_commit}")
    } else {
        format!("source {name}: {old_url} {old_commit} -> {new_url} {new_commit}")
    }
}

fn target_diff(name: &str, o: &Entry, n: &Entry) -> TargetDiff {
    let inputs = diff_facts(&o.input, &n.input)
        .into_iter()
        .map(|c| {
            (
                c.path,
                c.old.unwrap_or_else(|| "(absent)".into()),
                c.new.unwrap_or_else(|| "(absent)".into()),
            )
        })
        .collect();
    let mut packages = BTreeMap::new();
    for (p, v) in &o.package {
        match n.package.get(p) {
            None => {
                packages.insert(p.clone(), PackageChange::Removed(v.clone()));
            }
            Some(nv) if nv != v => {
                let change = match debversion::compare(v, nv) {
                    Ordering::Greater => PackageChange::Downgraded(v.clone(), nv.clone()),
                    _ => PackageChange::Upgraded(v.clone(), nv.clone()),
                };
                packages.insert(p.clone(), change);
            }
            Some(_) => {}
        }
    }
    for (p, v) in &n.package {
        if !o.package.contains_key(p) {
            packages.insert(p.clone(), PackageChange::Added(v.clone()));
        }
    }
    let mut names: Vec<&String> = o.outputs.keys().chain(n.outputs.keys()).collect();
    names.sort();
    names.dedup();
    let absent = || "(absent)".to_owned();
    let outputs = names
        .into_iter()
        .map(|k| {
            (
                k.clone(),
                o.outputs.get(k).cloned().unwrap_or_else(absent),
                n.outputs.get(k).cloned().unwrap_or_else(absent),
            )
        })
        .collect();
    TargetDiff {
        name: name.to_owned(),
        old_manifest: o.primary.clone(),
        new_manifest: n.primary.clone(),
        key_changed: o.key != n.key,
        outputs,
        inputs,
        packages,
    }
}

impl TargetDiff {
    /// `output <name>: same <sum>` or `output <name>: <old> -> <new>` for every output but
    /// the one already on the target's headline (manifest, version).
    fn output_lines(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|(o, _, _)| o != "manifest" && o != "version")
            .map(|(o, a, b)| {
                if a == b {
                    format!("output {o}: same {}", short(a))
                } else {
                    format!("output {o}: {} -> {}", short(a), short(b))
                }
            })
            .collect()
    }
}

fn short(d: &str) -> &str {
    d.strip_prefix("sha256:")
        .map(|h| &h[..12.min(h.len())])
        .unwrap_or(d)
}

fn package_line(p: &str, c: &PackageChange) -> String {
    match c {
        PackageChange::Added(v) => format!("+ {p} {v}"),
        PackageChange::Removed(v) => format!("- {p} {v}"),
        PackageChange::Upgraded(a, b) => format!("↑ {p} {a} -> {b}"),
        PackageChange::Downgraded(a, b) => format!("↓ {p} {a} -> {b}"),
    }
}

/// A compact one-fact-per-line view of one lockfile, for `git diff` through textconv:
/// `<target> manifest <short digest>` and `<target> <package> <version>` lines.
pub fn summary(lock: &Lockfile) -> String {
    summary_of(&image_entries(lock))
}

/// [`summary`] for any entries: every output, then every package, one per line.
pub fn summary_of(entries: &BTreeMap<String, Entry>) -> String {
    let mut out = String::new();
    for (name, e) in entries {
        for (o, v) in &e.outputs {
            let _ = writeln!(out, "{name} {o} {}", short(v));
        }
        for (p, v) in &e.package {
            let _ = writeln!(out, "{name} {p} {v}");
        }
    }
    out
}

impl LockDiff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    pub fn to_text(&self) -> String {
        let mut out = self.changes_text();
        for (n, m) in &self.unchanged {
            let _ = writeln!(out, "same     {n} ({})", short(m));
        }
        out
    }

    /// The added, removed and changed entries of [`Self::to_text`].
    fn changes_text(&self) -> String {
        let mut out = String::new();
        for (n, m) in &self.added {
            let _ = writeln!(out, "added    {n} ({})", short(m));
        }
        for n in &self.removed {
            let _ = writeln!(out, "removed  {n}");
        }
        for t in &self.changed {
            let what = if t.old_manifest == t.new_manifest {
                "same output"
            } else {
                "new output"
            };
            let _ = writeln!(
                out,
                "changed  {} ({what}: {} -> {})",
                t.name,
                short(&t.old_manifest),
                short(&t.new_manifest)
            );
            for line in t.output_lines() {
                let _ = writeln!(out, "    {line}");
            }
            for (p, a, b) in &t.inputs {
                let _ = writeln!(out, "    {}", input_line(p, a, b));
            }
            for (p, c) in &t.packages {
                let _ = writeln!(out, "    {}", package_line(p, c));
            }
        }
        out
    }

    /// [`Self::to_text`] without the entries that stayed the same, as lines: what a
    /// `--locked` refusal lists. Never empty: a change no entry shows (URLs, formatting) is
    /// named as such.
    pub fn change_lines(&self) -> Vec<String> {
        let lines: Vec<String> = self.changes_text().lines().map(str::to_owned).collect();
        if lines.is_empty() {
            vec!["no entry changed: URLs or formatting did".to_owned()]
        } else {
            lines
        }
    }

    /// The diff as a PR comment, headed.
    pub fn to_markdown(&self) -> String {
        format!("{MARKDOWN_TITLE}\n\n{}", self.markdown_body())
    }

    /// The table and details of [`Self::to_markdown`], without its heading.
    pub fn markdown_body(&self) -> String {
        let mut out = String::new();
        if self.is_empty() {
            out.push_str("No target changed.\n");
            return out;
        }
        let _ = writeln!(
            out,
            "| target | change | {} |\n|---|---|---|",
            self.kind.primary_output()
        );
        for (n, m) in &self.added {
            let _ = writeln!(out, "| `{n}` | added | `{}` |", short(m));
        }
        for n in &self.removed {
            let _ = writeln!(out, "| `{n}` | removed | |");
        }
        for t in &self.changed {
            let (up, down, add, rm) =
                t.packages
                    .values()
                    .fold((0, 0, 0, 0), |(u, d, a, r), c| match c {
                        PackageChange::Upgraded(..) => (u + 1, d, a, r),
                        PackageChange::Downgraded(..) => (u, d + 1, a, r),
                        PackageChange::Added(_) => (u, d, a + 1, r),
                        PackageChange::Removed(_) => (u, d, a, r + 1),
                    });
            let _ = writeln!(
                out,
                "| `{}` | {} inputs, packages: {add} added, {rm} removed, {up} upgraded, {down} downgraded | `{}` → `{}` |",
                t.name,
                t.inputs.len(),
                short(&t.old_manifest),
                short(&t.new_manifest)
            );
        }
        for t in self
            .changed
            .iter()
            .filter(|t| !t.inputs.is_empty() || !t.packages.is_empty())
        {
            let _ = writeln!(
                out,
                "\n<details><summary><code>{}</code></summary>\n\n```",
                t.name
            );
            for line in t.output_lines() {
                let _ = writeln!(out, "{line}");
            }
            for (p, a, b) in &t.inputs {
                let _ = writeln!(out, "{}", input_line(p, a, b));
            }
            for (p, c) in &t.packages {
                let _ = writeln!(out, "{}", package_line(p, c));
            }
            out.push_str("```\n</details>\n");
        }
        let _ = writeln!(out, "\n{} targets unchanged.", self.unchanged.len());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_git_source_is_one_line_naming_the_commits() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let (t1, t2) = ("1".repeat(40), "2".repeat(40));
        assert_eq!(
            input_line(
                "git-source.bootrr",
                &format!("https://h/bootrr.git {a} {t1}"),
                &format!("https://h/bootrr.git {b} {t2}")
            ),
            format!("source bootrr: {a} -> {b}")
        );
        assert_eq!(
            input_line(
                "git-source.x",
                "(absent)",
                &format!("https://h/x.git {b} {t2}")
            ),
            format!("source x: (absent) -> {b}")
        );
        let (d1, d2) = (Digest::of(b"1"), Digest::of(b"2"));
        assert_eq!(
            input_line(
                "url-source.ucm",
                &format!("https://h/ucm.tar.gz {d1}"),
                &format!("https://h/ucm.tar.gz {d2}")
            ),
            format!("source ucm: {d1} -> {d2}"),
            "a download that moved names its sha256s"
        );
        assert_eq!(
            input_line("arch", "amd64", "arm64"),
            "input arch: amd64 -> arm64"
        );
    }
    use crate::core::lockfile::{LockedOutput, LockedTarget};
    use crate::core::names::Digest;

    fn target(key: u8, manifest: u8, arg: &str, packages: &[(&str, &str)]) -> LockedTarget {
        LockedTarget {
            key: Digest::of(&[key]),
            input: BTreeMap::from([("recipe.dockerfile.args.X".to_owned(), arg.to_owned())]),
            output: LockedOutput {
                manifest: Digest::of(&[manifest]),
                config: Some(Digest::of(&[manifest, 1])),
                layers: vec![],
                members: vec![],
            },
            package: packages
                .iter()
                .map(|(p, v)| (p.to_string(), v.to_string()))
                .collect(),
            deb: BTreeMap::new(),
        }
    }

    #[test]
    fn reports_targets_inputs_and_package_moves() {
        let mut old = Lockfile::default();
        let mut new = Lockfile::default();
        old.targets
            .insert("gone".parse().unwrap(), target(1, 1, "a", &[]));
        old.targets
            .insert("same".parse().unwrap(), target(2, 2, "a", &[]));
        new.targets
            .insert("same".parse().unwrap(), target(2, 2, "a", &[]));
        new.targets
            .insert("fresh".parse().unwrap(), target(3, 3, "a", &[]));
        old.targets.insert(
            "gcc".parse().unwrap(),
            target(
                4,
                4,
                "a",
                &[
                    ("bc:amd64", "1.07.1-3"),
                    ("libc6:amd64", "2.36-9+deb12u7"),
                    ("old:amd64", "1"),
                    ("zz:amd64", "2.0"),
                ],
            ),
        );
        new.targets.insert(
            "gcc".parse().unwrap(),
            target(
                5,
                5,
                "b",
                &[
                    ("bc:amd64", "1.07.1-3"),
                    ("libc6:amd64", "2.36-9+deb12u10"),
                    ("new:amd64", "1"),
                    ("zz:amd64", "1.9"),
                ],
            ),
        );
        let d = diff(&old, &new);
        assert_eq!(d.removed, ["gone"]);
        assert_eq!(
            d.added.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
            ["fresh"]
        );
        assert_eq!(d.unchanged.len(), 1);
        let gcc = &d.changed[0];
        assert_eq!(
            gcc.inputs,
            [(
                "recipe.dockerfile.args.X".to_owned(),
                "a".to_owned(),
                "b".to_owned()
            )]
        );
        assert_eq!(
            gcc.packages["libc6:amd64"],
            PackageChange::Upgraded("2.36-9+deb12u7".into(), "2.36-9+deb12u10".into())
        );
        assert_eq!(
            gcc.packages["zz:amd64"],
            PackageChange::Downgraded("2.0".into(), "1.9".into())
        );
        assert_eq!(
            gcc.packages["old:amd64"],
            PackageChange::Removed("1".into())
        );
        assert_eq!(gcc.packages["new:amd64"], PackageChange::Added("1".into()));
        assert!(!gcc.packages.contains_key("bc:amd64"));
        let text = d.to_text();
        assert!(
            text.contains("    ↑ libc6:amd64 2.36-9+deb12u7 -> 2.36-9+deb12u10"),
            "{text}"
        );
        assert!(text.contains("removed  gone"), "{text}");
        let md = d.to_markdown();
        assert!(
            md.contains(
                "| `gcc` | 1 inputs, packages: 1 added, 1 removed, 1 upgraded, 1 downgraded |"
            ),
            "{md}"
        );
        assert!(
            md.contains("<details><summary><code>gcc</code></summary>"),
            "{md}"
        );
    }

    #[test]
    fn rootfs_lockfiles_diff_per_config_and_arch_with_file_sums() {
        use crate::core::rootfs_lock::{LockedArtifact, LockedConfig, LockedRootfs};
        let lock = |version: &str, cpio: u8, libc: &str| {
            let artifact = BTreeMap::from([
                (
                    "rootfs.cpio.gz".to_owned(),
                    LockedArtifact {
                        sha256: Digest::of(&[cpio]),
                        size: 1,
                        url: None,
                    },
                ),
                (
                    "initrd.cpio.gz".to_owned(),
                    LockedArtifact {
                        sha256: Digest::of(&[9]),
                        size: 1,
                        url: None,
                    },
                ),
            ]);
            let r = LockedRootfs {
                key: Digest::of(version.as_bytes()),
                input: BTreeMap::new(),
                package: BTreeMap::from([("libc6:arm64".to_owned(), libc.to_owned())]),
                artifact,
                deb: BTreeMap::new(),
            };
            RootfsLockfile {
                apt_index: Default::default(),
                git_source: Default::default(),
                url_source: Default::default(),
                configs: BTreeMap::from([(
                    "bookworm".to_owned(),
                    LockedConfig {
                        version: version.to_owned(),
                        arch: BTreeMap::from([("arm64".to_owned(), r)]),
                    },
                )]),
            }
        };
        let old = lock("20251201.aaaaaaaaaaaa", 1, "2.36-9+deb12u7");
        let new = lock("20251201.bbbbbbbbbbbb", 2, "2.36-9+deb12u10");
        let d = diff_kind(
            LockKind::Rootfs,
            &rootfs_entries(&old),
            &rootfs_entries(&new),
        );
        let md = d.to_markdown();
        assert!(md.contains("| target | change | version |"), "{md}");
        assert!(
            md.contains("| `bookworm/arm64` | 0 inputs, packages: 0 added, 0 removed, 1 upgraded, 0 downgraded | `20251201.aaaaaaaaaaaa` → `20251201.bbbbbbbbbbbb` |"),
            "{md}"
        );
        let text = d.to_text();
        assert!(
            text.contains("changed  bookworm/arm64 (new output: 20251201.aaaaaaaaaaaa -> 20251201.bbbbbbbbbbbb)"),
            "{text}"
        );
        assert!(text.contains("    output initrd.cpio.gz: same "), "{text}");
        assert!(text.contains("    output rootfs.cpio.gz: "), "{text}");
        assert!(
            text.contains("    ↑ libc6:arm64 2.36-9+deb12u7 -> 2.36-9+deb12u10"),
            "{text}"
        );
        let summary = summary_of(&rootfs_entries(&new));
        assert!(
            summary.contains("bookworm/arm64 version 20251201.bbbbbbbbbbbb\n"),
            "{summary}"
        );
        assert!(
            summary.contains("bookworm/arm64 libc6:arm64 2.36-9+deb12u10\n"),
            "{summary}"
        );
    }
}
