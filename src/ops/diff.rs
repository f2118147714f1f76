//! `kci-build diff OLD NEW`: what changed between two lockfiles, where each side is a file or
//! a git revision (`HEAD~1`, `main`, `v1:lockfiles/images.lock`) read with git2. Two bare
//! revisions compare **every lockfile of the tree** (`lockfiles/*.lock` at either revision),
//! each under its own name. With one argument it prints a one-fact-per-line summary (a git
//! textconv); with git's seven external-diff arguments it diffs the two files git hands over.
//! Images and rootfs lockfiles are told apart by their tables (`[target.…]` or `[rootfs.…]`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::{Context, TextReport};
use crate::core::lockdiff::{self, Entry, LockDiff, LockKind};
use crate::core::lockfile::Lockfile;
use crate::core::rootfs_lock::RootfsLockfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
}

/// A lockfile's entries, and which kind of lockfile they came from.
struct Side {
    kind: LockKind,
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// OLD NEW, one FILE, or git's seven external-diff arguments.
    pub args: Vec<String>,
    /// The lockfile a bare revision means (its directory, for two bare revisions).
    pub lockfile: PathBuf,
    pub format: Format,
}

/// Reads lockfiles only: works outside a recipe tree (git calls it).
pub fn run(_: &Context, opts: &DiffOptions) -> anyhow::Result<TextReport> {
    Ok(TextReport {
        text: diff(&opts.args, &opts.lockfile, opts.format)?,
    })
}

fn diff(args: &[String], default_lockfile: &Path, format: Format) -> anyhow::Result<String> {
    match args {
        [one] => Ok(lockdiff::summary_of(&load(one, default_lockfile)?.entries)),
        [old, new] if is_bare_revision(old) && is_bare_revision(new) => {
            every_lockfile(old, new, default_lockfile, format)
        }
        [old, new] => render(&load(old, default_lockfile)?, &load(new, default_lockfile)?, format),
        // git's external diff driver: path old-file old-hex old-mode new-file new-hex new-mode
        [_, old, _, _, new, _, _] => render(&load(old, default_lockfile)?, &load(new, default_lockfile)?, format),
        _ => bail!("diff takes OLD NEW (files or git revisions), one FILE (textconv), or git's 7 external-diff arguments"),
    }
}

/// A revision that names no file: neither a path here, nor `/dev/null`, nor `REV:PATH`.
fn is_bare_revision(spec: &str) -> bool {
    spec != "/dev/null" && !spec.contains(':') && !Path::new(spec).is_file()
}

fn diff_of(old: &Side, new: &Side) -> LockDiff {
    // A lockfile absent on one side has no table to tell its kind: the other side's decides.
    let kind = if new.entries.is_empty() {
        old.kind
    } else {
        new.kind
    };
    lockdiff::diff_kind(kind, &old.entries, &new.entries)
}

fn render(old: &Side, new: &Side, format: Format) -> anyhow::Result<String> {
    let d = diff_of(old, new);
    Ok(match format {
        Format::Text => d.to_text(),
        Format::Markdown => d.to_markdown(),
    })
}

/// Every lockfile in the default lockfile's directory at either revision, each diffed and
/// named: a reviewer sees the rootfs lockfile's changes too, not only the images one.
fn every_lockfile(
    old: &str,
    new: &str,
    default_lockfile: &Path,
    format: Format,
) -> anyhow::Result<String> {
    let repo = open_repo(old)?;
    let dir = crate::lockhistory::repo_relative(&repo, default_lockfile)?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let mut files = lockfiles_at(&repo, old, &dir)?;
    files.append(&mut lockfiles_at(&repo, new, &dir)?);
    if files.is_empty() {
        bail!(
            "no lockfile (*.lock) in {}/ at {old} or at {new}",
            dir.display()
        );
    }
    let mut out = match format {
        Format::Text => String::new(),
        Format::Markdown => format!("{}\n", lockdiff::MARKDOWN_TITLE),
    };
    for file in &files {
        let at = |rev: &str| -> anyhow::Result<Side> {
            let spec = format!("{rev}:{}", file.display());
            match blob_text(&repo, &spec)? {
                Some(text) => parse(Path::new(&spec), &text),
                None => Ok(Side {
                    kind: LockKind::default(),
                    entries: BTreeMap::new(),
                }),
            }
        };
        let d = diff_of(&at(old)?, &at(new)?);
        match format {
            Format::Text => {
                let _ = writeln!(
                    out,
                    "# {}: {} added, {} removed, {} changed",
                    file.display(),
                    d.added.len(),
                    d.removed.len(),
                    d.changed.len()
                );
                out.push_str(&d.to_text());
                out.push('\n');
            }
            Format::Markdown => {
                let _ = write!(out, "\n#### `{}`\n\n{}", file.display(), d.markdown_body());
            }
        }
    }
    Ok(out)
}

/// `DIR/*.lock` in the tree of `rev`, sorted.
fn lockfiles_at(
    repo: &git2::Repository,
    rev: &str,
    dir: &Path,
) -> anyhow::Result<BTreeSet<PathBuf>> {
    let tree = repo
        .revparse_single(rev)
        .with_context(|| format!("`{rev}` is not a revision of the git repository"))?
        .peel_to_tree()
        .with_context(|| format!("`{rev}` has no tree"))?;
    let sub = if dir.as_os_str().is_empty() {
        tree
    } else {
        match tree.get_path(dir) {
            Ok(e) => e.to_object(repo)?.peel_to_tree()?,
            Err(_) => return Ok(BTreeSet::new()),
        }
    };
    Ok(sub
        .iter()
        .filter_map(|e| e.name().map(str::to_owned))
        .filter(|n| n.ends_with(".lock"))
        .map(|n| dir.join(n))
        .collect())
}

/// The entries of a lockfile of either kind.
fn parse(path: &Path, text: &str) -> anyhow::Result<Side> {
    let kind = LockKind::of_text(text);
    let entries = match kind {
        LockKind::Rootfs => lockdiff::rootfs_entries(&RootfsLockfile::parse(path, text)?),
        LockKind::Images => lockdiff::image_entries(&Lockfile::parse(path, text)?),
    };
    Ok(Side { kind, entries })
}

fn open_repo(spec: &str) -> anyhow::Result<git2::Repository> {
    git2::Repository::discover(".").with_context(|| {
        format!("`{spec}` is neither a file nor a git revision (no git repository here)")
    })
}

/// The text of `REV:PATH`, or None when the revision has no such file.
fn blob_text(repo: &git2::Repository, object_spec: &str) -> anyhow::Result<Option<String>> {
    let obj = match repo.revparse_single(object_spec) {
        Ok(obj) => obj,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("`{object_spec}` is not in the git repository"))
        }
    };
    let blob = obj
        .peel_to_blob()
        .with_context(|| format!("`{object_spec}` is not a file"))?;
    let text = std::str::from_utf8(blob.content())
        .with_context(|| format!("`{object_spec}` is not UTF-8"))?;
    Ok(Some(text.to_owned()))
}

/// A lockfile from a path, `/dev/null` (empty), or a git revision.
fn load(spec: &str, default_lockfile: &Path) -> anyhow::Result<Side> {
    if spec == "/dev/null" {
        return Ok(Side {
            kind: LockKind::default(),
            entries: BTreeMap::new(),
        });
    }
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
        return parse(path, &text);
    }
    let repo = open_repo(spec)?;
    let object_spec = if spec.contains(':') {
        spec.to_owned()
    } else {
        format!(
            "{spec}:{}",
            crate::lockhistory::repo_relative(&repo, default_lockfile)?.display()
        )
    };
    let text = blob_text(&repo, &object_spec)?
        .with_context(|| format!("`{object_spec}` is not in the git repository"))?;
    parse(Path::new(&object_spec), &text)
}
