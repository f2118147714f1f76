//! `kci-build diff OLD NEW`: what changed between two lockfiles, where each side is a file or
//! a git revision (`HEAD~1`, `main`, `v1:lockfiles/images.lock`) read with git2. With one
//! argument it prints a one-fact-per-line summary (a git textconv); with git's seven
//! external-diff arguments it diffs the two files git hands over. Images and rootfs
//! lockfiles are told apart by their tables (`[target.…]` or `[rootfs.…]`).

use std::path::Path;

use anyhow::{bail, Context as _};

use std::collections::BTreeMap;

use crate::core::lockdiff::{self, Entry};
use crate::core::lockfile::Lockfile;
use crate::core::rootfs_lock::RootfsLockfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Markdown,
}

pub fn run(args: &[String], default_lockfile: &Path, format: Format) -> anyhow::Result<String> {
    match args {
        [one] => Ok(lockdiff::summary_of(&load(one, default_lockfile)?)),
        [old, new] => render(&load(old, default_lockfile)?, &load(new, default_lockfile)?, format),
        // git's external diff driver: path old-file old-hex old-mode new-file new-hex new-mode
        [_, old, _, _, new, _, _] => render(&load(old, default_lockfile)?, &load(new, default_lockfile)?, format),
        _ => bail!("diff takes OLD NEW (files or git revisions), one FILE (textconv), or git's 7 external-diff arguments"),
    }
}

fn render(
    old: &BTreeMap<String, Entry>,
    new: &BTreeMap<String, Entry>,
    format: Format,
) -> anyhow::Result<String> {
    let d = lockdiff::diff_entries(old, new);
    Ok(match format {
        Format::Text => d.to_text(),
        Format::Markdown => d.to_markdown(),
    })
}

/// The entries of a lockfile of either kind.
fn parse(path: &Path, text: &str) -> anyhow::Result<BTreeMap<String, Entry>> {
    let is_rootfs = text.lines().any(|l| l.starts_with("[rootfs."));
    Ok(if is_rootfs {
        lockdiff::rootfs_entries(&RootfsLockfile::parse(path, text)?)
    } else {
        lockdiff::image_entries(&Lockfile::parse(path, text)?)
    })
}

/// A lockfile from a path, `/dev/null` (empty), or a git revision.
fn load(spec: &str, default_lockfile: &Path) -> anyhow::Result<BTreeMap<String, Entry>> {
    if spec == "/dev/null" {
        return Ok(BTreeMap::new());
    }
    let path = Path::new(spec);
    if path.is_file() {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {spec}"))?;
        return parse(path, &text);
    }
    let repo = git2::Repository::discover(".").with_context(|| {
        format!("`{spec}` is neither a file nor a git revision (no git repository here)")
    })?;
    let object_spec = if spec.contains(':') {
        spec.to_owned()
    } else {
        let workdir = repo
            .workdir()
            .context("a bare repository has no lockfile path")?;
        let abs = std::env::current_dir()?.join(default_lockfile);
        let rel = abs
            .strip_prefix(workdir.canonicalize()?)
            .or_else(|_| abs.strip_prefix(workdir))
            .unwrap_or(default_lockfile);
        format!("{spec}:{}", rel.display())
    };
    let obj = repo
        .revparse_single(&object_spec)
        .with_context(|| format!("`{object_spec}` is not in the git repository"))?;
    let blob = obj
        .peel_to_blob()
        .with_context(|| format!("`{object_spec}` is not a file"))?;
    let text = std::str::from_utf8(blob.content())
        .with_context(|| format!("`{object_spec}` is not UTF-8"))?;
    parse(Path::new(&object_spec), text)
}
