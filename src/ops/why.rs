//! `kci-build why TARGET` (or `CONFIG/ARCH` of a rootfs): is it cached, and which of its
//! inputs changed since the lockfile.

use std::fmt::Write as _;
use std::path::Path;

use super::Workspace;
use crate::core::key::{diff_facts, FactChange};
use crate::core::names::TargetName;
use crate::core::plan::{Status, UNKNOWN_PARENT};

pub fn run(ws: &Workspace, target: &TargetName) -> anyhow::Result<String> {
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
pub fn rootfs(
    ws: &Workspace,
    recipes: &Path,
    lockfile: &Path,
    config: &str,
    arch: &str,
) -> anyhow::Result<String> {
    let w = super::rootfs::why(ws, recipes, lockfile, config, arch)?;
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
