//! kci-build's content-addressed store: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) plus `keys/<key>.json`, which maps a cache key to the image built for it.
//!
//! Blobs are written to `tmp/`, hashed as they are written, fsynced and renamed to their
//! digest, so a blob file always holds exactly the bytes its name says; a key record is
//! written last, so an interrupted build leaves at most unreferenced blobs.
//!
//! The store owns every layout under its root — blobs, key records, rootfs key directories
//! (and their temp directories), logs, temp files, lockfile locks — so it can enumerate
//! ([`Store::entries`]) and remove ([`Store::remove`]) any of them, and a store-wide lock
//! ([`Store::lock`]) lets commands that add to the store (shared) exclude one that sweeps it
//! (exclusive): `gc` and `store verify` need no knowledge of their own.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::key::canonical_json;
use crate::core::names::{Digest, TargetName};
use crate::fsutil;
use crate::layer::HashWriter;

#[derive(Debug, thiserror::Error)]
#[error("store {}: {context}: {source}", root.display())]
pub struct StoreError {
    pub root: PathBuf,
    pub context: String,
    #[source]
    pub source: io::Error,
}

/// What the store knows about one built key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredImage {
    pub target: TargetName,
    pub key: Digest,
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<StoredLayer>,
    /// Installed Debian packages, `name:arch` → version.
    pub packages: BTreeMap<String, String>,
    /// For a multi-platform index: its members' manifest digests. An index has no config
    /// and no layers of its own; `config` then names the index itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Digest>,
    /// The `.deb`s the apt cache served to build it: `<archive>/<pool path>` → sha256.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub debs: BTreeMap<String, Digest>,
}

impl StoreError {
    /// An I/O error of `store` while doing `context`.
    pub fn io(store: &Store, context: &str, source: io::Error) -> StoreError {
        (store.err(context))(source)
    }

    /// The store is the machine's disk: always an environment fault.
    pub fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Environment
    }
}

impl StoredImage {
    pub fn is_index(&self) -> bool {
        !self.members.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLayer {
    /// Digest of the gzip blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// A store at `root`, read-only until [`Store::open`]: looking up a key in a store that
    /// does not exist yet finds nothing and writes nothing (`plan` has no side effects).
    pub fn at(root: &Path) -> Store {
        Store {
            root: root.to_owned(),
        }
    }

    /// Opens (and creates when missing) a store at `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let s = Store::at(root);
        for d in ["blobs/sha256", "keys", "tmp", "logs"] {
            fs::create_dir_all(root.join(d)).map_err(s.err(format!("creating {d}")))?;
        }
        if !root.join("oci-layout").exists() {
            fsutil::atomic_write(
                &root.join("oci-layout"),
                br#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .map_err(s.err("writing oci-layout"))?;
        }
        if !root.join("index.json").exists() {
            s.write_index(&[]).map_err(s.err("writing index.json"))?;
        }
        Ok(s)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError + '_ {
        let context = context.into();
        move |source| StoreError {
            root: self.root.clone(),
            context,
            source,
        }
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Build logs of images and rootfs jobs.
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Lockfile locks: one file per lockfile path (see [`fsutil::LockfileLock`]).
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Rootfs files: a directory per key holding the five files and `manifest.json`, entered
    /// whole by renaming a finished temp directory beside it.
    /// How long each build took, one `<what>\t<seconds>` line per build, appended (the last
    /// line of a name wins): what `plan --engines` schedules with.
    pub fn durations_path(&self) -> PathBuf {
        self.root.join("durations.tsv")
    }

    /// Records that building `what` (`image:<target>`, `rootfs:<config>/<arch>`) took
    /// `seconds`. A record that cannot be written costs the plan an estimate, not the build.
    pub fn record_duration(&self, what: &str, seconds: f64) {
        use std::io::Write as _;
        let line = format!("{what}\t{seconds:.1}\n");
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.durations_path())?;
            f.write_all(line.as_bytes())
        };
        if let Err(e) = write() {
            tracing::warn!("cannot record how long {what} took: {e}");
        }
    }

    /// The last recorded duration of each build.
    pub fn durations(&self) -> BTreeMap<String, f64> {
        let text = fs::read_to_string(self.durations_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (what, secs) = l.split_once('\t')?;
                Some((what.to_owned(), secs.trim().parse().ok()?))
            })
            .collect()
    }

    pub fn apt_served_dir(&self) -> PathBuf {
        self.root.join("apt-served")
    }

    pub fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
    }

    /// The name prefix of the temp directories a rootfs job packs `key` in, beside
    /// [`Store::rootfs_key_dir`].
    pub fn rootfs_temp_prefix(key: &Digest) -> String {
        format!("tmp-{}-", key.hex())
    }

    /// The directory of one rootfs key (it may not exist).
    pub fn rootfs_key_dir(&self, key: &Digest) -> PathBuf {
        self.rootfs_dir().join(key.hex())
    }

    pub fn log_path(&self, target: &TargetName, key: &Digest) -> PathBuf {
        self.root
            .join("logs")
            .join(format!("{}-{}.log", target.file_stem(), key.short()))
    }

    /// Stores a small blob (config, manifest) and returns its digest.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let d = Digest::of(bytes);
        if !self.has_blob(&d) {
            let mut w = self.blob_writer()?;
            w.write_all(bytes).map_err(self.err("writing blob"))?;
            w.commit()?;
        }
        Ok(d)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let bytes = fs::read(self.blob_path(d)).map_err(self.err(format!("reading blob {d}")))?;
        if Digest::of(&bytes) != *d {
            return Err(self.err(format!("blob {d}"))(io::Error::new(
                io::ErrorKind::InvalidData,
                "content does not match its digest; delete it and rebuild",
            )));
        }
        Ok(bytes)
    }

    /// A writer that hashes what it is given and lands in `blobs/` on `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>, StoreError> {
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .map_err(self.err("creating a temp blob"))?;
        let file = tmp.reopen().map_err(self.err("opening a temp blob"))?;
        Ok(BlobWriter {
            store: self,
            tmp,
            out: HashWriter::new(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The image stored under `key`, if it and all its blobs are present.
    pub fn lookup(&self, key: &Digest) -> Option<StoredImage> {
        let text = fs::read(self.key_path(key)).ok()?;
        let img: StoredImage = serde_json::from_slice(&text).ok()?;
        let complete = &img.key == key
            && self.has_blob(&img.manifest)
            && self.has_blob(&img.config)
            && img.layers.iter().all(|l| self.has_blob(&l.digest));
        complete.then_some(img)
    }

    fn key_path(&self, key: &Digest) -> PathBuf {
        self.root.join("keys").join(format!("{}.json", key.hex()))
    }

    /// Records a finished image under its key (after all its blobs are in place) and adds
    /// it to `index.json`.
    pub fn record(&self, img: &StoredImage) -> Result<(), StoreError> {
        fsutil::atomic_write(&self.key_path(&img.key), &canonical_json(img))
            .map_err(self.err("writing key record"))?;
        self.reindex()
    }

    /// Rewrites `index.json` from the key records.
    fn reindex(&self) -> Result<(), StoreError> {
        let lock =
            File::create(self.root.join("index.lock")).map_err(self.err("locking index.json"))?;
        lock.lock().map_err(self.err("locking index.json"))?;
        let mut all = Vec::new();
        for e in fs::read_dir(self.root.join("keys")).map_err(self.err("listing keys"))? {
            let path = e.map_err(self.err("listing keys"))?.path();
            if let Some(img) = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<StoredImage>(&b).ok())
            {
                all.push(img);
            }
        }
        all.sort_by(|a, b| a.key.cmp(&b.key));
        self.write_index(&all)
            .map_err(self.err("writing index.json"))
    }

    fn write_index(&self, images: &[StoredImage]) -> io::Result<()> {
        let manifests: Vec<serde_json::Value> = images
            .iter()
            .map(|img| {
                let size = fs::metadata(self.blob_path(&img.manifest))
                    .map(|m| m.len())
                    .unwrap_or(0);
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": img.manifest,
                    "size": size,
                    "annotations": {
                        "org.opencontainers.image.ref.name": img.key.hex(),
                        "io.kernelci.build.target": img.target,
                    }
                })
            })
            .collect();
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests });
        fsutil::atomic_write(&self.root.join("index.json"), &canonical_json(&index))
    }
}

/// One thing the store holds, by layout.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "kebab-case")]
pub enum Entry {
    /// `blobs/sha256/<hex>`.
    Blob(Digest),
    /// `keys/<hex>.json`: an image built for a key.
    KeyRecord(Digest),
    /// `rootfs/<hex>/`: the files of a rootfs key.
    RootfsKey(Digest),
    /// A build log under `logs/`.
    Log(String),
    /// Left by a killed run: a file or directory under `tmp/`, or a rootfs temp directory.
    Temp(String),
}

/// Whether a [`StoreLock`] shares the store or has it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Commands that add to the store: any number at once.
    Shared,
    /// A sweep (`gc`, `store verify --repair`): alone.
    Exclusive,
}

/// The store-wide lock; released when dropped (or by the kernel when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    pub mode: LockMode,
}

impl Store {
    /// Takes the store-wide lock, waiting (after calling `on_wait` once) while a holder of
    /// the other mode has it.
    pub fn lock(&self, mode: LockMode, on_wait: impl FnOnce()) -> Result<StoreLock, StoreError> {
        fs::create_dir_all(&self.root).map_err(self.err("creating the store"))?;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("store.lock"))
            .map_err(self.err("opening store.lock"))?;
        let try_lock = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match try_lock {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                match mode {
                    LockMode::Shared => file.lock_shared(),
                    LockMode::Exclusive => file.lock(),
                }
                .map_err(self.err("locking store.lock"))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(self.err("locking store.lock")(e)),
        }
        Ok(StoreLock { _file: file, mode })
    }

    /// Everything the store holds, by layout, sorted; unknown names are left out (they are
    /// not the store's).
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let digest = |hex: &str| format!("sha256:{hex}").parse::<Digest>().ok();
        for name in self.names("blobs/sha256")? {
            out.extend(digest(&name).map(Entry::Blob));
        }
        for name in self.names("keys")? {
            out.extend(
                name.strip_suffix(".json")
                    .and_then(digest)
                    .map(Entry::KeyRecord),
            );
        }
        for name in self.names("rootfs")? {
            if name.starts_with("tmp-") {
                out.push(Entry::Temp(format!("rootfs/{name}")));
            } else {
                out.extend(digest(&name).map(Entry::RootfsKey));
            }
        }
        out.extend(self.names("logs")?.into_iter().map(Entry::Log));
        out.extend(
            self.names("tmp")?
                .into_iter()
                .map(|n| Entry::Temp(format!("tmp/{n}"))),
        );
        out.sort();
        Ok(out)
    }

    fn names(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let rd = match fs::read_dir(self.root.join(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.err(format!("listing {dir}"))(e)),
        };
        let mut names = Vec::new();
        for e in rd {
            let e = e.map_err(self.err(format!("listing {dir}")))?;
            names.push(e.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    /// Where an entry lives.
    pub fn entry_path(&self, entry: &Entry) -> PathBuf {
        match entry {
            Entry::Blob(d) => self.blob_path(d),
            Entry::KeyRecord(k) => self.key_path(k),
            Entry::RootfsKey(k) => self.rootfs_key_dir(k),
            Entry::Log(name) => self.logs_dir().join(name),
            Entry::Temp(rel) => self.root.join(rel),
        }
    }

    /// The bytes an entry takes (a directory: its files, recursively).
    pub fn entry_size(&self, entry: &Entry) -> u64 {
        walkdir::WalkDir::new(self.entry_path(entry))
            .into_iter()
            .filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// Removes an entry (a key record also leaves `index.json`); a missing one is fine. The
    /// caller holds the exclusive [`Store::lock`] or knows nobody uses the entry.
    pub fn remove(&self, entry: &Entry) -> Result<(), StoreError> {
        let path = self.entry_path(entry);
        let what = format!("removing {}", path.display());
        let gone = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            Ok(_) => fs::remove_file(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        gone.map_err(self.err(what))?;
        if matches!(entry, Entry::KeyRecord(_)) {
            self.reindex()?;
        }
        Ok(())
    }

    /// Re-hashes a blob: whether its bytes still match its name.
    pub fn blob_is_intact(&self, d: &Digest) -> Result<bool, StoreError> {
        let mut f = File::open(self.blob_path(d)).map_err(self.err(format!("opening blob {d}")))?;
        let mut h = HashWriter::new(io::sink());
        io::copy(&mut f, &mut h).map_err(self.err(format!("reading blob {d}")))?;
        Ok(h.digest().0 == *d)
    }
}

/// A blob being written; dropped without `commit`, it leaves nothing behind.
pub struct BlobWriter<'s> {
    store: &'s Store,
    tmp: tempfile::NamedTempFile,
    out: HashWriter<BufWriter<File>>,
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter<'_> {
    /// Moves the blob into `blobs/` only if its digest is `expected`; otherwise nothing is
    /// kept and the digest it had is returned as `Err` (verify, then rename).
    pub fn commit_expecting(
        mut self,
        expected: &Digest,
    ) -> Result<Result<u64, Digest>, StoreError> {
        self.out.flush().map_err(self.store.err("flushing blob"))?;
        let (d, _) = self.out.digest();
        if d != *expected {
            return Ok(Err(d));
        }
        self.commit().map(|(_, size)| Ok(size))
    }

    /// Moves the blob to `blobs/sha256/<digest>` and returns its digest and size.
    pub fn commit(mut self) -> Result<(Digest, u64), StoreError> {
        self.out.flush().map_err(self.store.err("flushing blob"))?;
        let (d, size) = self.out.digest();
        let dest = self.store.blob_path(&d);
        if !dest.exists() {
            fsutil::persist(self.tmp, &dest)
                .map_err(self.store.err(format!("storing blob {d}")))?;
        }
        Ok((d, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_appended_and_the_last_of_a_name_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert!(s.durations().is_empty());
        s.record_duration("image:gcc-10:x86", 300.04);
        s.record_duration("rootfs:trixie/amd64", 180.0);
        s.record_duration("image:gcc-10:x86", 250.0);
        std::fs::OpenOptions::new()
            .append(true)
            .open(s.durations_path())
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"torn line\n"))
            .unwrap();
        assert_eq!(
            s.durations(),
            BTreeMap::from([
                ("image:gcc-10:x86".to_owned(), 250.0),
                ("rootfs:trixie/amd64".to_owned(), 180.0)
            ])
        );
    }

    #[test]
    fn blobs_are_named_by_content_and_records_need_their_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = s.put_bytes(b"hello").unwrap();
        assert_eq!(d, Digest::of(b"hello"));
        assert_eq!(s.read_blob(&d).unwrap(), b"hello");
        let key = Digest::of(b"key");
        let img = StoredImage {
            target: "a".parse().unwrap(),
            key: key.clone(),
            manifest: d.clone(),
            config: d.clone(),
            layers: vec![],
            packages: BTreeMap::new(),
            members: vec![],
            debs: Default::default(),
        };
        s.record(&img).unwrap();
        assert_eq!(s.lookup(&key), Some(img));
        let index = fs::read_to_string(dir.path().join("index.json")).unwrap();
        assert!(index.contains(key.hex()), "{index}");
        // A missing blob makes the record incomplete, so the target is rebuilt.
        fs::remove_file(s.blob_path(&d)).unwrap();
        assert_eq!(s.lookup(&key), None);
        // Tampered content is refused on read.
        fs::write(s.blob_path(&d), b"evil").unwrap();
        assert!(s
            .read_blob(&d)
            .unwrap_err()
            .to_string()
            .contains("does not match"));
        // An abandoned writer leaves nothing in tmp/.
        drop(s.blob_writer().unwrap());
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn every_layout_is_enumerated_and_removable() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let blob = s.put_bytes(b"manifest").unwrap();
        let key = Digest::of(b"key");
        let img = StoredImage {
            target: "a".parse().unwrap(),
            key: key.clone(),
            manifest: blob.clone(),
            config: blob.clone(),
            layers: vec![],
            packages: BTreeMap::new(),
            members: vec![],
            debs: Default::default(),
        };
        s.record(&img).unwrap();
        let rootfs = Digest::of(b"rootfs key");
        fs::create_dir_all(s.rootfs_key_dir(&rootfs)).unwrap();
        fs::write(s.rootfs_key_dir(&rootfs).join("rootfs.cpio.gz"), [0u8; 10]).unwrap();
        let left = format!("{}x1", Store::rootfs_temp_prefix(&rootfs));
        fs::create_dir_all(s.rootfs_dir().join(&left)).unwrap();
        fs::write(s.log_path(&img.target, &key), "log").unwrap();
        fs::write(s.tmp_dir().join("blob-abc"), "partial").unwrap();
        fs::write(s.rootfs_dir().join("README"), "not the store's").unwrap();
        let entries = s.entries().unwrap();
        assert_eq!(
            entries,
            [
                Entry::Blob(blob.clone()),
                Entry::KeyRecord(key.clone()),
                Entry::RootfsKey(rootfs.clone()),
                Entry::Log(format!("a-{}.log", key.short())),
                Entry::Temp(format!("rootfs/{left}")),
                Entry::Temp("tmp/blob-abc".into()),
            ]
        );
        assert_eq!(s.entry_size(&Entry::RootfsKey(rootfs.clone())), 10);
        assert!(s.blob_is_intact(&blob).unwrap());
        fs::write(s.blob_path(&blob), b"bit rot").unwrap();
        assert!(!s.blob_is_intact(&blob).unwrap());
        for e in &entries {
            s.remove(e).unwrap();
        }
        assert!(s.entries().unwrap().is_empty());
        let index = fs::read_to_string(dir.path().join("index.json")).unwrap();
        assert!(
            !index.contains(key.hex()),
            "the record left index.json: {index}"
        );
        assert!(
            dir.path().join("rootfs/README").exists(),
            "foreign files stay"
        );
    }

    #[test]
    fn a_sweep_waits_for_the_builds_and_builds_share() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let build = s.lock(LockMode::Shared, || {}).unwrap();
        let other_build = s.lock(LockMode::Shared, || panic!("builds share")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let sweeper = {
            let s = s.clone();
            std::thread::spawn(move || {
                let waited = std::cell::Cell::new(false);
                let lock = s.lock(LockMode::Exclusive, || waited.set(true)).unwrap();
                tx.send(waited.get()).unwrap();
                drop(lock);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "the sweep must wait");
        drop((build, other_build));
        assert!(rx.recv().unwrap(), "the sweep said it waited");
        sweeper.join().unwrap();
    }
}
