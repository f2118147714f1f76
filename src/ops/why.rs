//! `kci-build why TARGET` (or `CONFIG/ARCH` of a rootfs): is it cached, and which of its
//! inputs changed since the lockfile.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::bail;

use super::{Context, TextReport, Workspace};
use crate::core::key::{diff_facts, FactChange};
use crate::core::names::{Digest, TargetName};
use crate::core::plan::{Status, UNKNOWN_PARENT};
use crate::lockedit::LockfileEdit;
use crate::rootfs::recipes::{find_recipe, load_recipes, mirror_of, read_manifest};
use crate::rootfs::{artifact, plan, BUILDER_TARGET};

#[derive(Debug, Clone)]
pub struct WhyOptions {
    /// An image target (`gcc-10:x86`) or a rootfs `CONFIG/ARCH`.
    pub target: String,
    /// The rootfs recipes directory and lockfile (for `CONFIG/ARCH`).
    pub recipes: PathBuf,
    pub rootfs_lockfile: PathBuf,
}

pub fn run(ctx: &Context, opts: &WhyOptions) -> anyhow::Result<TextReport> {
    let ws = ctx.workspace()?;
    let text = match opts.target.split_once('/') {
        Some((config, arch)) => rootfs(&ws, &opts.recipes, &opts.rootfs_lockfile, config, arch)?,
        None => image(&ws, &opts.target.parse()?)?,
    };
    Ok(TextReport { text })
}

fn image(ws: &Workspace, target: &TargetName) -> anyhow::Result<String> {
    let planned = ws.plan_for(std::slice::from_ref(target))?;
    let p = planned
        .last()
        .expect("the selection ends with the target itself");
    let mut out = String::new();
    let key = p
        .key
        .as_ref()
        .map(|k| k.to_string())
        .unwrap_or_else(|| "unknown until its parent is built".into());
    let _ = writeln!(out, "{target}: key {key}");
    let _ = match p.status {
        Status::Cached => writeln!(
            out,
            "  cached: the store has this key ({})",
            p.stored.as_ref().expect("cached implies stored")
        ),
        Status::Build => writeln!(out, "  to build: the store has no image for this key"),
        Status::AfterParent => {
            let parent = p
                .recipe
                .kind
                .parent()
                .expect("only children wait for parents");
            writeln!(out, "  to build: its parent `{parent}` must be built first (its output digest enters this key)")
        }
    };
    let lock_file = ws.paths.lockfile.display();
    match ws.lock.targets.get(target) {
        None => {
            let _ = writeln!(out, "  {lock_file} has no entry for it: it is new");
        }
        Some(locked) => {
            let changes = diff_facts(&locked.input, &p.inputs.facts());
            if changes.is_empty() && Some(&locked.key) == p.key.as_ref() {
                let _ = writeln!(out, "  no input changed since {lock_file}");
            } else {
                let _ = writeln!(out, "  inputs changed since {lock_file}:");
                write_changes(&mut out, &changes);
            }
        }
    }
    Ok(out)
}

fn write_changes(out: &mut String, changes: &[FactChange]) {
    for c in changes {
        let new = match c.new.as_deref() {
            Some(UNKNOWN_PARENT) => "(rebuilt parent, digest not known yet)",
            Some(v) => v,
            None => "(removed)",
        };
        let _ = writeln!(
            out,
            "    {}: {} -> {}",
            c.path,
            c.old.as_deref().unwrap_or("(absent)"),
            new
        );
    }
}

/// `kci-build why CONFIG/ARCH`: the rootfs key as it would be built now, whether the store
/// has its files, and which key facts changed since the rootfs lockfile.
fn rootfs(
    ws: &Workspace,
    recipes: &Path,
    lockfile: &Path,
    config: &str,
    arch: &str,
) -> anyhow::Result<String> {
    let w = rootfs_why(ws, recipes, lockfile, config, arch)?;
    let mut out = String::new();
    let key = match &w.key {
        Some(k) => k.to_string(),
        None => "unknown until the rootfs-builder image is built".into(),
    };
    let _ = writeln!(out, "{}: key {key}", w.label);
    let _ = match (&w.key, &w.stored) {
        (_, Some(dir)) => writeln!(out, "  cached: {} holds its files", dir.display()),
        (Some(_), None) => writeln!(
            out,
            "  to build: the store has no files for this key (with --storage, `kci-build rootfs` also looks there)"
        ),
        (None, None) => writeln!(
            out,
            "  to build: the rootfs-builder image must be built first (its digest enters this key)"
        ),
    };
    let lock_file = lockfile.display();
    let _ = match &w.changes {
        None => writeln!(out, "  {lock_file} has no entry for it: it is new"),
        Some(c) if c.is_empty() => writeln!(out, "  no input changed since {lock_file}"),
        Some(c) => {
            let _ = writeln!(out, "  inputs changed since {lock_file}:");
            write_changes(&mut out, c);
            Ok(())
        }
    };
    Ok(out)
}

/// What `kci-build why CONFIG/ARCH` reports: the key of one (config, arch) as it would be
/// built now, whether the store has it, and the key facts that differ from the lockfile.
struct RootfsWhy {
    pub label: String,
    /// `None` while the builder image is not built: its digest enters the key.
    pub key: Option<Digest>,
    pub stored: Option<PathBuf>,
    /// `None`: the lockfile has no entry for it.
    pub changes: Option<Vec<crate::core::key::FactChange>>,
}

/// The placeholder for the builder image's digest before it is built.
const BUILDER_NOT_BUILT: &str = "(rootfs-builder not built yet)";

/// Computes [`RootfsWhy`] for `config/arch`; builds and downloads nothing.
fn rootfs_why(
    ws: &Workspace,
    recipes_dir: &Path,
    lockfile: &Path,
    config: &str,
    arch: &str,
) -> anyhow::Result<RootfsWhy> {
    let recipes = load_recipes(recipes_dir)?;
    let r = find_recipe(&recipes, recipes_dir, config)?;
    if !r.arch_list.iter().any(|a| a == arch) {
        bail!(
            "{}: arch-list has no `{arch}` (it has: {})",
            recipes_dir.join(format!("{config}.toml")).display(),
            r.arch_list.join(", ")
        );
    }
    let mirror = mirror_of(recipes_dir, r, ws.env.debian_mirror.as_deref())?;
    // A pinned kernelci-core stands for its files (its pin is a fact of its own).
    let key_files = match r.uses_kernelci_core() {
        true => crate::rootfs::inputs::RecipeInputs::pinned_key_files(),
        false => {
            let tree = crate::rootfs::inputs::Tree::Dir(recipes_dir);
            crate::rootfs::inputs::scan(recipes_dir, tree, r)?.key_files()
        }
    };
    let builder_name: TargetName = BUILDER_TARGET.parse().expect("valid target name");
    let planned = ws.plan_for(std::slice::from_ref(&builder_name))?;
    let builder = planned
        .iter()
        .find(|p| p.recipe.name == builder_name)
        .and_then(|p| p.stored.clone());
    // Facts with a placeholder while the builder is not built, so the others still compare.
    let placeholder = Digest::of(BUILDER_NOT_BUILT.as_bytes());
    let lock = LockfileEdit::read(lockfile)?.rootfs()?;
    let suite = crate::aptpins::rootfs_suite(&mirror, r)?;
    let git = crate::core::gitsource::pins_for(&r.git_source, &lock.git_source);
    let urls = crate::core::urlsource::pins_for(&r.url_source, &lock.url_source);
    let source = plan::Source {
        mirror: &mirror,
        apt_index: lock.apt_index.get(&suite.id).map(|i| &i.inrelease),
        git: &git,
        urls: &urls,
    };
    let mut facts = plan::facts(
        r,
        arch,
        builder.as_ref().unwrap_or(&placeholder),
        &source,
        &key_files,
        artifact::ROOTFS_OUTPUT_FORMAT,
    );
    let key = builder.as_ref().map(|_| plan::key(&facts));
    if builder.is_none() {
        facts.insert(plan::BUILDER_FACT.into(), BUILDER_NOT_BUILT.into());
    }
    let stored = key
        .as_ref()
        .map(|k| ws.store.rootfs_key_dir(k))
        .filter(|d| read_manifest(d).is_some());
    let changes = lock
        .configs
        .get(config)
        .and_then(|c| c.arch.get(arch))
        .map(|l| crate::core::key::diff_facts(&l.input, &facts));
    Ok(RootfsWhy {
        label: format!("{config}/{arch}"),
        key,
        stored,
        changes,
    })
}
