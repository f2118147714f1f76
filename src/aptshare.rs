//! The apt cache shared through an OCI registry: what `fetch` cached for a lockfile — the
//! pinned `InRelease`s, their index files and the `.deb`s — as one OCI artifact, so a
//! machine that never saw the mirror fills its cache from the registry alone.
//!
//! The artifact is an OCI image manifest (`artifactType`
//! `application/vnd.kci-build.apt-cache.v1`, the empty config) whose layers are the cached
//! files, each named by its path (`org.opencontainers.image.title`). Blobs are content
//! addressed, so a registry keeps one copy of a `.deb` however many artifacts name it, and a
//! push sends only what the registry lacks. It is tagged `apt-<hash>` in `{prefix}apt-cache`,
//! where the hash is over the pins and the `.deb`s the lockfile records for the targets:
//! both machines compute it from the lockfile. Every pulled blob is verified against its
//! digest before it is renamed into the store.

use std::collections::BTreeMap;

use anyhow::Context as _;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::json;

use crate::core::apt::SuiteId;
use crate::core::key::canonical_json;
use crate::core::names::Digest;
use crate::registry::Registry;
use crate::store::Store;

pub const ARTIFACT_TYPE: &str = "application/vnd.kci-build.apt-cache.v1";
const FILE_TYPE: &str = "application/vnd.kci-build.apt-file.v1";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";
const TITLE: &str = "org.opencontainers.image.title";

/// The files of one cache: path (`debian/dists/bookworm/InRelease`,
/// `debian/pool/main/…deb`) → digest.
pub type CacheFiles = BTreeMap<String, Digest>;

/// Where a lockfile's cache lives in a registry.
pub struct Address {
    pub repo: String,
    pub tag: String,
}

/// The repository and tag of the cache of these pins and `.deb`s.
pub fn address(prefix: &str, pins: &BTreeMap<SuiteId, Digest>, debs: &CacheFiles) -> Address {
    let pins: BTreeMap<String, &Digest> = pins.iter().map(|(s, d)| (s.to_string(), d)).collect();
    let id = Digest::of(&canonical_json(&json!({ "pins": pins, "debs": debs })));
    Address {
        repo: format!("{prefix}apt-cache"),
        tag: format!("apt-{}", id.short()),
    }
}

/// Pushes `files` (all in `store`) and the artifact naming them; returns the blobs uploaded.
pub async fn push(
    reg: &Registry,
    store: &Store,
    at: &Address,
    files: &CacheFiles,
) -> anyhow::Result<usize> {
    let empty = store.put_bytes(b"{}")?;
    let mut layers = Vec::new();
    for (path, d) in files {
        let size = std::fs::metadata(store.blob_path(d))
            .with_context(|| format!("{path} ({d}) is not in the apt cache"))?
            .len();
        layers.push(json!({
            "mediaType": FILE_TYPE, "digest": d, "size": size,
            "annotations": { TITLE: path },
        }));
    }
    let blobs: Vec<&Digest> = std::iter::once(&empty).chain(files.values()).collect();
    let uploaded: Vec<bool> = stream::iter(blobs.into_iter().map(|d| {
        let path = store.blob_path(d);
        async move { reg.push_blob(&at.repo, d, &path).await }
    }))
    .buffer_unordered(4)
    .try_collect()
    .await
    .with_context(|| format!("pushing the apt cache to {}/{}", reg.host(), at.repo))?;
    let manifest = canonical_json(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": { "mediaType": EMPTY_TYPE, "digest": empty, "size": 2 },
        "layers": layers,
    }));
    reg.put_manifest(&at.repo, &at.tag, MANIFEST_TYPE, &manifest)
        .await?;
    Ok(uploaded.into_iter().filter(|u| *u).count())
}

/// Pulls the cache at `at` into `store` (blobs it lacks, verified); `None` when the registry
/// has no such cache. Returns the files it names and the blobs downloaded.
pub async fn pull(
    reg: &Registry,
    store: &Store,
    at: &Address,
) -> anyhow::Result<Option<(CacheFiles, usize)>> {
    let Some(digest) = reg.manifest_digest(&at.repo, &at.tag).await? else {
        return Ok(None);
    };
    let bytes = reg.get_manifest(&at.repo, &digest).await?;
    let m: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}:{}: not JSON", at.repo, at.tag))?;
    anyhow::ensure!(
        m["artifactType"] == ARTIFACT_TYPE,
        "{}:{} is not a kci-build apt cache",
        at.repo,
        at.tag
    );
    let mut files = CacheFiles::new();
    for l in m["layers"].as_array().into_iter().flatten() {
        let path = l["annotations"][TITLE].as_str().unwrap_or_default();
        let d: Digest = l["digest"].as_str().unwrap_or_default().parse()?;
        files.insert(path.to_owned(), d);
    }
    let missing: Vec<&Digest> = files.values().filter(|d| !store.has_blob(d)).collect();
    let n = missing.len();
    stream::iter(
        missing
            .into_iter()
            .map(|d| crate::publish::fetch_blob(reg, store, &at.repo, d)),
    )
    .buffer_unordered(4)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(Some((files, n)))
}
