//! A built rootfs as an OCI artifact in a registry, addressed by its key: the cache every
//! machine of a fleet shares (the Nix substituter model). `rootfs --registry R` looks each
//! (config, arch) up there before building it and pushes what the registry lacks.
//!
//! One artifact per (config, arch): repository `<prefix>rootfs-<config>`, tag
//! `<arch>-<key hex>`; an OCI image manifest with `artifactType`
//! [`ARTIFACT_TYPE`], the empty config, and one layer per file (`manifest.json` first, then
//! the files it lists, by name), each titled with its file name. Pulled files are
//! checked three ways before they enter the store: each blob against its digest, the
//! manifest.json against the (config, arch, key) asked for, and every file against the
//! sha256 and size manifest.json records — a registry that serves anything else is
//! named, and the (config, arch) is built instead.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::pack::MANIFEST;
use super::plan::RootfsJob;
use crate::core::names::Digest;
use crate::core::rootfs_lock::RootfsManifest;
use crate::layer::HashWriter;
use crate::registry::Registry;

pub const ARTIFACT_TYPE: &str = "application/vnd.kernelci.rootfs.v1";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";
const TITLE: &str = "org.opencontainers.image.title";
const KEY_ANNOTATION: &str = "org.kernelci.kci-build.rootfs.key";

/// Where the artifact of `job` lives: `(repository, tag)`.
pub fn reference(prefix: &str, job: &RootfsJob) -> (String, String) {
    (
        format!("{prefix}rootfs-{}", job.config),
        format!("{}-{}", job.arch, job.key.hex()),
    )
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: String,
    artifact_type: String,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// One file of an artifact: its name, sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBlob {
    pub name: String,
    pub digest: Digest,
    pub size: u64,
}

fn media_type_of(name: &str) -> &'static str {
    match name {
        MANIFEST => "application/vnd.kernelci.rootfs.manifest.v1+json",
        n if n.ends_with(".xz") => "application/x-xz",
        n if n.ends_with(".gz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// The artifact manifest's bytes for `files` (manifest.json first), made by `key`. The
/// same files give the same bytes (no time, fixed field order).
pub fn artifact_manifest(key: &Digest, files: &[FileBlob]) -> Vec<u8> {
    let m = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        artifact_type: ARTIFACT_TYPE.into(),
        config: Descriptor {
            media_type: EMPTY_MEDIA_TYPE.into(),
            digest: Digest::of(EMPTY),
            size: EMPTY.len() as u64,
            annotations: BTreeMap::new(),
        },
        layers: files
            .iter()
            .map(|f| Descriptor {
                media_type: media_type_of(&f.name).into(),
                digest: f.digest.clone(),
                size: f.size,
                annotations: BTreeMap::from([(TITLE.to_owned(), f.name.clone())]),
            })
            .collect(),
        annotations: BTreeMap::from([(KEY_ANNOTATION.to_owned(), key.to_string())]),
    };
    serde_json::to_vec(&m).expect("a manifest serializes")
}

/// The files an artifact manifest lists, checked: its type, a title on every layer, no
/// title twice or with a path in it, manifest.json among them.
pub fn files_of(bytes: &[u8]) -> Result<Vec<FileBlob>, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    if m.artifact_type != ARTIFACT_TYPE {
        return Err(format!(
            "artifactType {:?}, not {ARTIFACT_TYPE}",
            m.artifact_type
        ));
    }
    let mut files: Vec<FileBlob> = Vec::new();
    for l in m.layers {
        let name = l
            .annotations
            .get(TITLE)
            .ok_or_else(|| format!("layer {} has no {TITLE}", l.digest))?;
        if name.contains('/') || name.starts_with('.') || files.iter().any(|f| &f.name == name) {
            return Err(format!("layer title {name:?}: not a file name, or twice"));
        }
        files.push(FileBlob {
            name: name.clone(),
            digest: l.digest,
            size: l.size,
        });
    }
    if !files.iter().any(|f| f.name == MANIFEST) {
        return Err(format!("no {MANIFEST} layer"));
    }
    Ok(files)
}

/// Whether the pulled `manifest` (and the blobs `files` the artifact lists) is what `job`
/// makes: same config, arch and key, and exactly the files it records, same sha256 and size.
pub fn check(manifest: &RootfsManifest, files: &[FileBlob], job: &RootfsJob) -> Result<(), String> {
    if manifest.key != job.key || manifest.config != job.config || manifest.arch != job.arch {
        return Err(format!(
            "its {MANIFEST} is of {}/{} key {}, not of {} key {}",
            manifest.config,
            manifest.arch,
            manifest.key.short(),
            job.label(),
            job.key.short()
        ));
    }
    let blobs: BTreeMap<&str, &FileBlob> = files
        .iter()
        .filter(|f| f.name != MANIFEST)
        .map(|f| (f.name.as_str(), f))
        .collect();
    if blobs.len() != manifest.artifacts.len() {
        return Err(format!(
            "it holds {} files, its {MANIFEST} lists {}",
            blobs.len(),
            manifest.artifacts.len()
        ));
    }
    for (name, a) in &manifest.artifacts {
        match blobs.get(name.as_str()) {
            Some(b) if b.digest == a.sha256 && b.size == a.size => {}
            Some(b) => {
                return Err(format!(
                    "{name} is {} ({} bytes); its {MANIFEST} records {} ({} bytes)",
                    b.digest, b.size, a.sha256, a.size
                ))
            }
            None => return Err(format!("{name} is missing")),
        }
    }
    Ok(())
}

/// Pushes the stored files of `job` (the key directory `dir`) unless the registry has the
/// artifact already. Returns whether it pushed.
pub async fn push(
    reg: &Registry,
    prefix: &str,
    job: &RootfsJob,
    dir: &Path,
) -> anyhow::Result<bool> {
    let (repo, tag) = reference(prefix, job);
    push_to(reg, &repo, &tag, job, dir).await
}

/// [`push`] under another tag: a Swarm task pushes its files under a candidate tag, which
/// the coordinator checks before the key's own tag names them.
pub async fn push_to(
    reg: &Registry,
    repo: &str,
    tag: &str,
    job: &RootfsJob,
    dir: &Path,
) -> anyhow::Result<bool> {
    if reg.manifest_digest(repo, tag).await?.is_some() {
        return Ok(false);
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = std::fs::read(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: RootfsManifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{}", manifest_path.display()))?;
    let mut files = vec![FileBlob {
        name: MANIFEST.into(),
        digest: Digest::of(&manifest_bytes),
        size: manifest_bytes.len() as u64,
    }];
    for (name, a) in &manifest.artifacts {
        files.push(FileBlob {
            name: name.clone(),
            digest: a.sha256.clone(),
            size: a.size,
        });
    }
    for f in &files {
        reg.push_blob(repo, &f.digest, &dir.join(&f.name)).await?;
    }
    let empty = tempfile::NamedTempFile::new_in(dir.parent().unwrap_or(dir))?;
    std::fs::write(empty.path(), EMPTY)?;
    reg.push_blob(repo, &Digest::of(EMPTY), empty.path())
        .await?;
    let bytes = artifact_manifest(&job.key, &files);
    reg.put_manifest(repo, tag, MANIFEST_MEDIA_TYPE, &bytes)
        .await?;
    Ok(true)
}

/// What a pull found.
pub enum Pulled {
    /// In the store now, checked.
    Stored(RootfsManifest),
    /// The registry has no artifact of the key.
    Missing,
    /// The registry's artifact is not what the key makes: why.
    Bad(String),
}

/// Pulls the artifact of `job` into `store_dir/<key hex>` (through a temp directory of the
/// store, moved into place once every file is checked, as a build's files are).
pub async fn pull(
    reg: &Registry,
    prefix: &str,
    job: &RootfsJob,
    store_dir: &Path,
) -> anyhow::Result<Pulled> {
    let (repo, tag) = reference(prefix, job);
    pull_from(reg, &repo, &tag, job, store_dir).await
}

/// [`pull`] from another tag (a Swarm task's candidate), checked the same way.
pub async fn pull_from(
    reg: &Registry,
    repo: &str,
    tag: &str,
    job: &RootfsJob,
    store_dir: &Path,
) -> anyhow::Result<Pulled> {
    let Some(digest) = reg.manifest_digest(repo, tag).await? else {
        return Ok(Pulled::Missing);
    };
    let bytes = reg.get_manifest(repo, &digest).await?;
    let files = match files_of(&bytes) {
        Ok(f) => f,
        Err(why) => return Ok(Pulled::Bad(why)),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&crate::store::Store::rootfs_temp_prefix(&job.key))
        .tempdir_in(store_dir)
        .with_context(|| format!("creating a temp dir in {}", store_dir.display()))?;
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
    for f in &files {
        let path = out.join(&f.name);
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = HashWriter::new(std::io::BufWriter::new(file));
        reg.get_blob(repo, &f.digest, &mut w).await?;
        w.flush()?;
        w.inner.get_ref().sync_all()?;
        let (got, size) = w.digest();
        if got != f.digest || size != f.size {
            return Ok(Pulled::Bad(format!(
                "blob {} ({}) came as {got}, {size} bytes",
                f.digest, f.name
            )));
        }
    }
    let manifest_path = out.join(MANIFEST);
    let manifest: RootfsManifest = match serde_json::from_slice(&std::fs::read(&manifest_path)?) {
        Ok(m) => m,
        Err(e) => return Ok(Pulled::Bad(format!("its {MANIFEST}: {e}"))),
    };
    if let Err(why) = check(&manifest, &files, job) {
        return Ok(Pulled::Bad(why));
    }
    let final_dir = store_dir.join(job.key.hex());
    super::pack::commit_key_dir(&out, &final_dir)
        .with_context(|| format!("storing {}", final_dir.display()))?;
    crate::fsutil::sync_dir(store_dir)?;
    Ok(Pulled::Stored(manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rootfs_lock::ArtifactInfo;

    fn job() -> RootfsJob {
        RootfsJob {
            config: "tiny".into(),
            arch: "arm64".into(),
            key: Digest::of(b"key"),
            facts: BTreeMap::new(),
            source_date_epoch: 1,
            xz_preset: 6,
            memory: None,
        }
    }

    fn blob(name: &str, bytes: &[u8]) -> FileBlob {
        FileBlob {
            name: name.into(),
            digest: Digest::of(bytes),
            size: bytes.len() as u64,
        }
    }

    fn manifest_of(job: &RootfsJob, files: &[FileBlob]) -> RootfsManifest {
        RootfsManifest {
            config: job.config.clone(),
            arch: job.arch.clone(),
            key: job.key.clone(),
            source_date_epoch: 1,
            packages: BTreeMap::new(),
            artifacts: files
                .iter()
                .map(|f| {
                    (
                        f.name.clone(),
                        ArtifactInfo {
                            sha256: f.digest.clone(),
                            size: f.size,
                            url: None,
                        },
                    )
                })
                .collect(),
            debs: BTreeMap::new(),
        }
    }

    #[test]
    fn the_manifest_round_trips_and_is_stable() {
        let files = vec![blob(MANIFEST, b"{}"), blob("rootfs.cpio.gz", b"cpio")];
        let a = artifact_manifest(&job().key, &files);
        assert_eq!(a, artifact_manifest(&job().key, &files));
        assert_eq!(files_of(&a).unwrap(), files);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(v["artifactType"], ARTIFACT_TYPE);
        assert_eq!(v["config"]["mediaType"], EMPTY_MEDIA_TYPE);
        assert_eq!(v["layers"][1]["mediaType"], "application/gzip");
        assert_eq!(v["annotations"][KEY_ANNOTATION], job().key.to_string());
        let (repo, tag) = reference("kernelci/", &job());
        assert_eq!(repo, "kernelci/rootfs-tiny");
        assert_eq!(tag, format!("arm64-{}", job().key.hex()));
    }

    #[test]
    fn foreign_or_malformed_artifacts_are_refused() {
        let files = vec![blob(MANIFEST, b"{}"), blob("../x", b"x")];
        let err = files_of(&artifact_manifest(&job().key, &files)).unwrap_err();
        assert!(err.contains("not a file name"), "{err}");
        let err = files_of(&artifact_manifest(&job().key, &[blob("a", b"a")])).unwrap_err();
        assert!(err.contains("no manifest.json"), "{err}");
        let other = String::from_utf8(artifact_manifest(&job().key, &[blob(MANIFEST, b"{}")]))
            .unwrap()
            .replace(ARTIFACT_TYPE, "application/vnd.other");
        assert!(files_of(other.as_bytes())
            .unwrap_err()
            .contains("artifactType"));
    }

    #[test]
    fn a_pulled_manifest_must_be_the_jobs_and_match_every_blob() {
        let job = job();
        let files = vec![
            blob(MANIFEST, b"m"),
            blob("rootfs.cpio.gz", b"cpio"),
            blob("initrd.cpio.gz", b"initrd"),
        ];
        let m = manifest_of(&job, &files[1..]);
        check(&m, &files, &job).unwrap();

        let mut other_key = m.clone();
        other_key.key = Digest::of(b"other");
        assert!(check(&other_key, &files, &job)
            .unwrap_err()
            .contains("not of tiny/arm64"));

        let mut swapped = files.clone();
        swapped[1] = blob("rootfs.cpio.gz", b"other bytes");
        let err = check(&m, &swapped, &job).unwrap_err();
        assert!(err.contains("rootfs.cpio.gz is sha256:"), "{err}");

        let err = check(&m, &files[..2], &job).unwrap_err();
        assert!(err.contains("holds 1 files"), "{err}");
    }
}
