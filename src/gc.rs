//! `kci-build gc`: the store must not grow forever.
//!
//! Mark and sweep, as Nix and Docker Distribution do. The roots are what the lockfiles
//! reference in the working tree and at the last N commits that changed them
//! ([`crate::lockhistory`], [`crate::core::roots`]): image keys (their key records, the
//! blobs of their images, what their manifests reference), rootfs keys, the pinned
//! `InRelease` files with every index they list, and the `.deb`s builds installed. Every
//! other blob, key record, rootfs directory and log goes, as does everything killed runs
//! left (temp files and directories, stopped builder containers that failed). It runs under
//! the store's exclusive lock, so no build adds to the store while it sweeps; a builder
//! container still running, or finished and not yet collected, is never touched.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use crate::core::apt::Release;
use crate::core::lockfile::Lockfile;
use crate::core::names::Digest;
use crate::core::rootfs_lock::RootfsLockfile;
use crate::core::roots::Roots;
use crate::engine::{ContainerState, DockerEngine, Engine};
use crate::lockhistory;
use crate::rootfs::builder;
use crate::settings::EngineSettings;
use crate::store::{Entry, Store};

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// The images lockfile and the rootfs lockfile.
    pub images_lockfile: PathBuf,
    pub rootfs_lockfile: PathBuf,
    /// Commits that changed a lockfile to keep, besides its working-tree version.
    pub keep_revisions: usize,
    pub dry_run: bool,
}

/// One entry swept (or, with `--dry-run`, that would be).
#[derive(Debug, Clone, Serialize)]
pub struct Swept {
    pub entry: Entry,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Lockfile versions read as roots (`images.lock@working tree`, `rootfs.lock@1a2b…`).
    pub roots_from: Vec<String>,
    pub kept: usize,
    pub kept_bytes: u64,
    pub swept: Vec<Swept>,
    pub swept_bytes: u64,
    /// Builder containers removed (failed or never started).
    pub containers: Vec<String>,
    /// Notes: lockfile versions that did not parse, no engine to ask…
    pub notes: Vec<String>,
}

/// Marks from the lockfiles, sweeps the store (unless `dry_run`), removes the store's failed
/// builder containers. The caller holds the store's lock (exclusive unless `dry_run`).
pub async fn gc(
    store: &Store,
    engine: &EngineSettings,
    opts: &GcOptions,
) -> anyhow::Result<GcReport> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let roots = read_roots(opts, &mut report)?;
    let live = mark(store, &roots);
    for entry in store.entries()? {
        let keep = match &entry {
            Entry::Blob(d) => live.contains(d),
            Entry::KeyRecord(k) => roots.image_keys.contains(k),
            Entry::RootfsKey(k) => roots.rootfs_keys.contains(k),
            Entry::Log(name) => !name.ends_with(".log") || roots.keeps_log(name),
            Entry::Temp(_) => false,
        };
        let bytes = store.entry_size(&entry);
        if keep {
            report.kept += 1;
            report.kept_bytes += bytes;
            continue;
        }
        report.swept_bytes += bytes;
        report.swept.push(Swept { entry, bytes });
    }
    // Key records before blobs: a crash in between leaves no record naming a missing blob.
    report
        .swept
        .sort_by_key(|s| !matches!(s.entry, Entry::KeyRecord(_)));
    if !opts.dry_run {
        for s in &report.swept {
            store.remove(&s.entry)?;
        }
    }
    report.containers = failed_containers(store, engine, opts.dry_run, &mut report.notes).await;
    Ok(report)
}

/// The roots of every version of both lockfiles.
fn read_roots(opts: &GcOptions, report: &mut GcReport) -> anyhow::Result<Roots> {
    let mut roots = Roots::default();
    for (path, images) in [
        (&opts.images_lockfile, true),
        (&opts.rootfs_lockfile, false),
    ] {
        let (versions, note) = lockhistory::versions(path, opts.keep_revisions)?;
        report.notes.extend(note);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for v in versions {
            let parsed = if images {
                Lockfile::parse(path, &v.text).map(|l| roots.add_images(&l))
            } else {
                RootfsLockfile::parse(path, &v.text).map(|l| roots.add_rootfs(&l))
            };
            match parsed {
                Ok(()) => report.roots_from.push(format!("{name}@{}", v.origin)),
                Err(e) => report.notes.push(format!(
                    "{name}@{} does not parse, so it roots nothing: {}",
                    v.origin, e.message
                )),
            }
        }
    }
    Ok(roots)
}

/// Every blob the roots keep alive: the named ones, the images of rooted keys (recursively
/// through index members), and the pinned `InRelease` files with the indexes they list.
fn mark(store: &Store, roots: &Roots) -> BTreeSet<Digest> {
    let mut live = roots.blobs.clone();
    for key in &roots.image_keys {
        let Some(img) = store.lookup(key) else {
            continue;
        };
        live.insert(img.manifest.clone());
        live.insert(img.config.clone());
        live.extend(img.layers.iter().map(|l| l.digest.clone()));
        live.extend(img.members.iter().cloned());
    }
    let mut todo: Vec<Digest> = live.iter().cloned().collect();
    while let Some(d) = todo.pop() {
        for r in manifest_refs(store, &d) {
            if live.insert(r.clone()) {
                todo.push(r);
            }
        }
    }
    for pin in &roots.pins {
        live.insert(pin.clone());
        let Ok(bytes) = store.read_blob(pin) else {
            continue;
        };
        if let Ok(release) = Release::parse(&String::from_utf8_lossy(&bytes)) {
            live.extend(release.files.values().map(|l| l.sha256.clone()));
        }
    }
    live
}

/// What a blob references when it is a (small) OCI manifest or index; nothing otherwise.
fn manifest_refs(store: &Store, d: &Digest) -> Vec<Digest> {
    let path = store.blob_path(d);
    let small = std::fs::metadata(&path).is_ok_and(|m| m.len() < (4 << 20));
    if !small {
        return Vec::new();
    }
    let Ok(bytes) = std::fs::read(&path) else {
        return Vec::new();
    };
    crate::image::referenced_digests(&bytes).unwrap_or_default()
}

/// Removes (or, dry, names) the store's builder containers that failed or never started.
/// Running ones and those that finished (`--resume` collects them) stay.
async fn failed_containers(
    store: &Store,
    engine: &EngineSettings,
    dry_run: bool,
    notes: &mut Vec<String>,
) -> Vec<String> {
    let engine = match DockerEngine::connect(engine).await {
        Ok(e) => e,
        Err(e) => {
            notes.push(format!("builder containers left alone: {e}"));
            return Vec::new();
        }
    };
    let tag = builder::store_tag(&store.rootfs_dir());
    let all = match engine.list(builder::LABEL).await {
        Ok(all) => all,
        Err(e) => {
            notes.push(format!("builder containers left alone: {e}"));
            return Vec::new();
        }
    };
    let mut removed = Vec::new();
    for (name, _) in all {
        if !name.ends_with(&format!("-{tag}")) {
            continue;
        }
        let failed = match engine.state(&name).await {
            Ok(ContainerState::Created) => true,
            Ok(ContainerState::Exited(code)) => code != 0,
            _ => false,
        };
        if !failed {
            continue;
        }
        if !dry_run {
            if let Err(e) = engine.remove_container(&name).await {
                notes.push(format!("{name}: {e}"));
                continue;
            }
        }
        removed.push(name);
    }
    removed
}
