//! kci-build's content-addressed store: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) plus `keys/<key>.json`, which maps a cache key to the image built for it.
//!
//! Blobs are written to `tmp/`, hashed as they are written, fsynced and renamed to their
//! digest, so a blob file always holds exactly the bytes its name says; a key record is
//! written last, so an interrupted build leaves at most unreferenced blobs.

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
}

impl StoreError {
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

    /// The default location: `$KCI_BUILD_STORE`, else `<user cache dir>/kci-build/store`.
    pub fn default_root() -> PathBuf {
        if let Some(p) = std::env::var_os("KCI_BUILD_STORE") {
            return PathBuf::from(p);
        }
        dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("kci-build")
            .join("store")
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
    pub fn rootfs_dir(&self) -> PathBuf {
        self.root.join("rootfs")
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
}
