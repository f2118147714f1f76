//! `kci-build store verify [--repair]`: is every byte of the store what its name says?
//!
//! A store lives for years on a shared machine: disks flip bits, people copy stores around,
//! a crash may hit between two renames. This re-hashes every blob and every stored rootfs
//! file (in parallel, on every core), checks that each key record and each image manifest
//! references blobs that exist and are intact, and that each rootfs directory's manifest
//! describes its files. What is wrong is reported; `--repair` evicts it (a corrupt blob, a
//! key record whose image is incomplete, a rootfs directory that does not verify), so the
//! next build makes it again. It is `nix-store --verify --check-contents [--repair]` for
//! kci-build's store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::core::names::Digest;
use crate::core::rootfs_lock::RootfsManifest;
use crate::store::{Entry, Store, StoreError, StoredImage};

/// One thing that is wrong, and the entry `--repair` evicts for it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    pub entry: Entry,
    pub what: String,
}

/// What `store verify` found (and, with `--repair`, evicted).
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub blobs: usize,
    pub key_records: usize,
    pub rootfs_keys: usize,
    /// Files re-hashed (blobs and rootfs files) and their bytes.
    pub files: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub problems: Vec<Problem>,
    /// Entries removed by `--repair`.
    pub evicted: Vec<Entry>,
    /// Entries left by killed runs (`gc` removes them): not wrong, only waste.
    pub temporary: usize,
}

impl VerifyReport {
    /// Hashing throughput, bytes per second.
    pub fn throughput(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }
}

/// A file to re-hash: where, what it must hash to (and be long), whom it belongs to.
struct Check {
    path: std::path::PathBuf,
    want: Digest,
    size: Option<u64>,
    entry: Entry,
    what: String,
}

/// Verifies the whole store. With `repair`, every entry with a problem is removed (the
/// caller holds the store's exclusive lock).
pub fn verify(store: &Store, repair: bool) -> Result<VerifyReport, StoreError> {
    let started = Instant::now();
    let entries = store.entries()?;
    let mut report = VerifyReport::default();
    let mut checks = Vec::new();
    let mut records = Vec::new();
    let mut rootfs = Vec::new();
    for e in &entries {
        match e {
            Entry::Blob(d) => {
                report.blobs += 1;
                checks.push(Check {
                    path: store.blob_path(d),
                    want: d.clone(),
                    size: None,
                    entry: e.clone(),
                    what: format!("blob {d}"),
                });
            }
            Entry::KeyRecord(k) => records.push(k.clone()),
            Entry::RootfsKey(k) => rootfs.push(k.clone()),
            Entry::Temp(_) => report.temporary += 1,
            Entry::Log(_) => {}
        }
    }
    report.key_records = records.len();
    report.rootfs_keys = rootfs.len();
    for key in &rootfs {
        let dir = store.rootfs_key_dir(key);
        let entry = Entry::RootfsKey(key.clone());
        match read_rootfs_manifest(&dir) {
            Ok(m) if m.key != *key => report.problems.push(Problem {
                entry,
                what: format!("rootfs {}: its manifest is for key {}", key.short(), m.key),
            }),
            Ok(m) => checks.extend(m.artifacts.iter().map(|(name, a)| Check {
                path: dir.join(name),
                want: a.sha256.clone(),
                size: Some(a.size),
                entry: entry.clone(),
                what: format!("rootfs {} ({} {}) {name}", key.short(), m.config, m.arch),
            })),
            Err(e) => report.problems.push(Problem {
                entry,
                what: format!("rootfs {}: {e}", key.short()),
            }),
        }
    }
    let results: Vec<(u64, Option<Problem>)> = checks.par_iter().map(check).collect();
    report.files = checks.len();
    report.bytes = results.iter().map(|(n, _)| n).sum();
    let bad_blobs: BTreeSet<Digest> = results
        .iter()
        .filter_map(|(_, p)| match p.as_ref()?.entry {
            Entry::Blob(ref d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    report
        .problems
        .extend(results.into_iter().filter_map(|(_, p)| p));
    for key in &records {
        if let Some(p) = check_record(store, key, &bad_blobs) {
            report.problems.push(p);
        }
    }
    report.problems.sort_by(|a, b| a.entry.cmp(&b.entry));
    if repair {
        let doomed: BTreeSet<Entry> = report.problems.iter().map(|p| p.entry.clone()).collect();
        // Key records first: a record never names a blob that is already gone.
        let (records, rest): (Vec<Entry>, Vec<Entry>) = doomed
            .into_iter()
            .partition(|e| matches!(e, Entry::KeyRecord(_)));
        for e in records.into_iter().chain(rest) {
            store.remove(&e)?;
            report.evicted.push(e);
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn read_rootfs_manifest(dir: &Path) -> Result<RootfsManifest, String> {
    let path = dir.join(crate::rootfs::pack::MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Re-hashes one file: its size (bytes read) and the problem, if any.
fn check(c: &Check) -> (u64, Option<Problem>) {
    let problem = |what: String| {
        Some(Problem {
            entry: c.entry.clone(),
            what: format!("{}: {what}", c.what),
        })
    };
    match hash_file(&c.path) {
        Err(e) => (0, problem(format!("cannot read {}: {e}", c.path.display()))),
        Ok((got, n)) if got != c.want => (n, problem(format!("its bytes hash to {got}"))),
        Ok((_, n)) if c.size.is_some_and(|s| s != n) => (
            n,
            problem(format!(
                "{n} bytes, the manifest says {}",
                c.size.unwrap_or(0)
            )),
        ),
        Ok((_, n)) => (n, None),
    }
}

fn hash_file(path: &Path) -> std::io::Result<(Digest, u64)> {
    let digest = crate::context::hash_file(path)?;
    Ok((digest, std::fs::metadata(path)?.len()))
}

/// A key record's problem: it does not parse, names another key, or its image (the
/// manifest, what the manifest references, the config, the layers, the members) is not
/// whole and intact in the store.
fn check_record(store: &Store, key: &Digest, bad: &BTreeSet<Digest>) -> Option<Problem> {
    let entry = Entry::KeyRecord(key.clone());
    let problem = |what: String| {
        Some(Problem {
            entry: entry.clone(),
            what: format!("key record {}: {what}", key.short()),
        })
    };
    let path = store.entry_path(&entry);
    let img: StoredImage = match std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(img) => img,
        Err(e) => return problem(format!("{}: {e}", path.display())),
    };
    if img.key != *key {
        return problem(format!("it records key {}", img.key));
    }
    let mut refs: BTreeMap<Digest, &str> = BTreeMap::new();
    refs.insert(img.manifest.clone(), "manifest");
    if img.members.is_empty() {
        refs.insert(img.config.clone(), "config");
    }
    for l in &img.layers {
        refs.insert(l.digest.clone(), "layer");
    }
    for m in &img.members {
        refs.insert(m.clone(), "member manifest");
    }
    if store.has_blob(&img.manifest) && !bad.contains(&img.manifest) {
        match manifest_refs(store, &img.manifest) {
            Ok(r) => {
                for d in r {
                    refs.entry(d).or_insert("blob its manifest references");
                }
            }
            Err(e) => return problem(format!("{} ({}): {e}", img.manifest, img.target)),
        }
    }
    for (d, role) in refs {
        if bad.contains(&d) {
            return problem(format!("{} ({role} {d}) is corrupt", img.target));
        }
        if !store.has_blob(&d) {
            return problem(format!("{} ({role} {d}) is missing", img.target));
        }
    }
    None
}

/// The digests the manifest blob references.
fn manifest_refs(store: &Store, manifest: &Digest) -> Result<Vec<Digest>, String> {
    let bytes = store.read_blob(manifest).map_err(|e| e.to_string())?;
    crate::image::referenced_digests(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_dir(store: &Store, files: &[(&str, &[u8])]) -> Digest {
        let key = Digest::of(b"a rootfs key");
        let dir = store.rootfs_key_dir(&key);
        std::fs::create_dir_all(&dir).unwrap();
        let mut artifacts = BTreeMap::new();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
            artifacts.insert(
                name.to_string(),
                crate::core::rootfs_lock::ArtifactInfo {
                    sha256: Digest::of(bytes),
                    size: bytes.len() as u64,
                    url: None,
                },
            );
        }
        let m = RootfsManifest {
            config: "tiny".into(),
            arch: "amd64".into(),
            key: key.clone(),
            source_date_epoch: 1,
            packages: BTreeMap::new(),
            artifacts,
            debs: BTreeMap::new(),
        };
        std::fs::write(
            dir.join(crate::rootfs::pack::MANIFEST),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        key
    }

    #[test]
    fn a_flipped_rootfs_file_and_a_flipped_blob_are_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = store.put_bytes(b"good blob").unwrap();
        let bad = store.put_bytes(b"bad blob").unwrap();
        std::fs::write(store.blob_path(&bad), b"bad blub").unwrap();
        let key = rootfs_dir(
            &store,
            &[("rootfs.cpio.gz", b"cpio"), ("rootfs.ext4.xz", b"ext4")],
        );
        let clean = verify(&store, false).unwrap();
        assert_eq!(clean.blobs, 2);
        assert_eq!(clean.files, 4);
        assert_eq!(clean.bytes, 9 + 8 + 4 + 4);
        assert_eq!(clean.problems.len(), 1, "{:?}", clean.problems);
        assert_eq!(clean.problems[0].entry, Entry::Blob(bad.clone()));
        assert!(
            clean.problems[0].what.contains("hash to"),
            "{:?}",
            clean.problems
        );

        std::fs::write(store.rootfs_key_dir(&key).join("rootfs.ext4.xz"), b"ext5").unwrap();
        let r = verify(&store, true).unwrap();
        assert_eq!(r.problems.len(), 2, "{:?}", r.problems);
        assert!(
            r.problems
                .iter()
                .any(|p| p.entry == Entry::RootfsKey(key.clone())
                    && p.what.contains("rootfs.ext4.xz"))
        );
        assert_eq!(r.evicted.len(), 2);
        assert!(store.has_blob(&good));
        assert!(!store.has_blob(&bad));
        assert!(!store.rootfs_key_dir(&key).exists());
        let after = verify(&store, false).unwrap();
        assert!(after.problems.is_empty(), "{:?}", after.problems);
    }

    #[test]
    fn a_truncated_rootfs_file_and_a_manifest_that_does_not_parse_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = rootfs_dir(&store, &[("initrd.cpio.gz", b"initrd")]);
        let path = store.rootfs_key_dir(&key).join("initrd.cpio.gz");
        std::fs::remove_file(&path).unwrap();
        let r = verify(&store, false).unwrap();
        assert!(
            r.problems[0].what.contains("cannot read"),
            "{:?}",
            r.problems
        );
        std::fs::write(
            store
                .rootfs_key_dir(&key)
                .join(crate::rootfs::pack::MANIFEST),
            b"{",
        )
        .unwrap();
        let r = verify(&store, false).unwrap();
        assert!(
            r.problems[0].what.contains("manifest.json"),
            "{:?}",
            r.problems
        );
    }
}
