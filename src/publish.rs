//! Publishing stored images to an OCI registry, and the other direction — fetching a target
//! another machine already built and pushed (the registry as a cache). Below the commands:
//! `push`, `build --push`, `build --registry` and `check --registry` all use it.
//!
//! Order matters for anyone pulling meanwhile: blobs first (each HEADed, uploaded only when
//! missing, several at once), then every manifest by digest, then the tags — the immutable
//! key tag `kci-<key>` and the human tag from KernelCI's naming rule — last.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context as _};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::core::names::{Digest, TargetName};
use crate::dpkg;
use crate::image;
use crate::layeraudit;
use crate::printer::Printer;
use crate::registry::{Registry, INDEX_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use crate::store::{Store, StoredImage, StoredLayer};

/// The immutable tag a key is published under.
pub fn key_tag(key: &Digest) -> String {
    format!("kci-{}", key.hex())
}

/// The repository a target is pushed to: `{prefix}{image}`.
pub fn repository(prefix: &str, name: &TargetName) -> String {
    format!("{prefix}{}", name.image())
}

#[derive(Debug, Serialize)]
pub struct PushedTarget {
    pub name: String,
    pub repository: String,
    pub tags: Vec<String>,
    pub manifest: String,
}

#[derive(Debug, Serialize)]
pub struct PushReport {
    pub targets: Vec<PushedTarget>,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_present: u64,
    pub blobs_mounted: u64,
    /// Images whose tags already named their manifest: nothing was sent for them.
    pub images_present: usize,
    pub retries: u64,
    pub resumed_uploads: u64,
    pub restarted_uploads: u64,
}

pub async fn push_images(
    reg: &Registry,
    store: &Store,
    prefix: &str,
    images: &[StoredImage],
    jobs: usize,
    printer: &Printer,
) -> anyhow::Result<PushReport> {
    let p = Pusher {
        reg,
        store,
        prefix,
        jobs: jobs.max(1),
        printer,
    };
    // 0. Images whose tags already name their manifest are done: tags go up last, so
    //    everything they need is there.
    let published = p.published(images).await?;
    let todo: Vec<&StoredImage> = images
        .iter()
        .zip(&published)
        .filter(|(_, done)| !**done)
        .map(|(img, _)| img)
        .collect();
    // 1. Blobs, 2. manifests by digest (an index after the manifests it names), 3. tags.
    p.push_blobs(&todo).await?;
    p.put_manifests(&todo).await?;
    let mut pushed = Vec::new();
    for (img, done) in images.iter().zip(published) {
        pushed.push(p.tag(img, done).await?);
    }
    let s = &reg.stats;
    Ok(PushReport {
        targets: pushed,
        blobs_uploaded: s.blobs_uploaded.load(Ordering::Relaxed),
        bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
        blobs_present: s.blobs_skipped.load(Ordering::Relaxed),
        blobs_mounted: s.blobs_mounted.load(Ordering::Relaxed),
        images_present: images.len() - todo.len(),
        retries: s.retries.load(Ordering::Relaxed),
        resumed_uploads: s.resumes.load(Ordering::Relaxed),
        restarted_uploads: s.restarts.load(Ordering::Relaxed),
    })
}

/// Each blob goes up once, to the first repository that needs it; the other repositories
/// get it by cross-repository mount from there.
#[derive(Default)]
struct BlobPlan {
    /// `(repository, digest)`.
    uploads: BTreeSet<(String, Digest)>,
    /// `(repository, digest, from repository)`.
    mounts: BTreeSet<(String, Digest, String)>,
}

fn blob_plan(prefix: &str, todo: &[&StoredImage]) -> BlobPlan {
    let mut home: BTreeMap<Digest, String> = BTreeMap::new();
    let mut plan = BlobPlan::default();
    for img in todo.iter().filter(|img| !img.is_index()) {
        let repo = repository(prefix, &img.target);
        for d in img.layers.iter().map(|l| &l.digest).chain([&img.config]) {
            match home.get(d) {
                None => {
                    home.insert(d.clone(), repo.clone());
                    plan.uploads.insert((repo.clone(), d.clone()));
                }
                Some(from) if from != &repo => {
                    plan.mounts.insert((repo.clone(), d.clone(), from.clone()));
                }
                Some(_) => {}
            }
        }
    }
    plan
}

fn media_type(img: &StoredImage) -> &'static str {
    if img.is_index() {
        INDEX_MEDIA_TYPE
    } else {
        MANIFEST_MEDIA_TYPE
    }
}

/// One push: the registry, where the bytes are, and how many requests at once.
struct Pusher<'a> {
    reg: &'a Registry,
    store: &'a Store,
    prefix: &'a str,
    jobs: usize,
    printer: &'a Printer,
}

impl Pusher<'_> {
    /// Per image: do both its tags already name its manifest?
    async fn published(&self, images: &[StoredImage]) -> anyhow::Result<Vec<bool>> {
        let reg = self.reg;
        futures_util::future::try_join_all(images.iter().map(|img| async move {
            let repo = repository(self.prefix, &img.target);
            let key_tag = key_tag(&img.key);
            let (by_key, by_name) = tokio::try_join!(
                reg.manifest_digest(&repo, &key_tag),
                reg.manifest_digest(&repo, img.target.tag())
            )?;
            anyhow::Ok(
                by_key.as_ref() == Some(&img.manifest) && by_name.as_ref() == Some(&img.manifest),
            )
        }))
        .await
    }

    /// Uploads then mounts every blob `todo` needs, `jobs` at a time.
    async fn push_blobs(&self, todo: &[&StoredImage]) -> anyhow::Result<()> {
        let BlobPlan { uploads, mounts } = blob_plan(self.prefix, todo);
        if !todo.is_empty() {
            self.printer.status(
                "Pushing",
                format!(
                    "{} images ({} blobs) to {}",
                    todo.len(),
                    uploads.len(),
                    self.reg.host()
                ),
            );
        }
        let (reg, store) = (self.reg, self.store);
        futures_util::stream::iter(uploads.into_iter().map(|(repo, d)| {
            let path = store.blob_path(&d);
            async move {
                reg.push_blob(&repo, &d, &path)
                    .await
                    .with_context(|| format!("pushing blob {d} to {repo}"))
            }
        }))
        .buffer_unordered(self.jobs)
        .try_collect::<Vec<bool>>()
        .await?;
        futures_util::stream::iter(mounts.into_iter().map(|(repo, d, from)| {
            let path = store.blob_path(&d);
            let short = d.short().to_owned();
            async move {
                if !reg.mount_blob(&repo, &d, &from).await? {
                    reg.push_blob(&repo, &d, &path).await?;
                }
                anyhow::Ok(())
            }
            .map(move |r| {
                r.with_context(|| format!("pushing blob {short} to its other repositories"))
            })
        }))
        .buffer_unordered(self.jobs)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// Every manifest by digest, an index after the manifests it names.
    async fn put_manifests(&self, todo: &[&StoredImage]) -> anyhow::Result<()> {
        for img in todo
            .iter()
            .filter(|i| !i.is_index())
            .chain(todo.iter().filter(|i| i.is_index()))
        {
            let bytes = self.store.read_blob(&img.manifest)?;
            let repo = repository(self.prefix, &img.target);
            self.reg
                .put_manifest(&repo, img.manifest.as_str(), media_type(img), &bytes)
                .await?;
        }
        Ok(())
    }

    /// The key tag and the human tag, last (unless `done`: they name the manifest already).
    async fn tag(&self, img: &StoredImage, done: bool) -> anyhow::Result<PushedTarget> {
        let repo = repository(self.prefix, &img.target);
        let tags = vec![key_tag(&img.key), img.target.tag().to_owned()];
        if !done {
            let bytes = self.store.read_blob(&img.manifest)?;
            for t in &tags {
                self.reg
                    .put_manifest(&repo, t, media_type(img), &bytes)
                    .await?;
            }
        }
        self.printer.status(
            if done { "Present" } else { "Pushed" },
            format!(
                "{}/{repo}:{} ({})",
                self.reg.host(),
                img.target.tag(),
                img.manifest.short()
            ),
        );
        Ok(PushedTarget {
            name: img.target.to_string(),
            repository: repo,
            tags,
            manifest: img.manifest.to_string(),
        })
    }
}

/// If the registry has `key` (under its key tag), copies the image into the store,
/// verifying every digest, and returns it.
pub async fn fetch(
    reg: &Registry,
    store: &Store,
    prefix: &str,
    target: &TargetName,
    key: &Digest,
) -> anyhow::Result<Option<StoredImage>> {
    let repo = repository(prefix, target);
    let Some(manifest) = reg.manifest_digest(&repo, &key_tag(key)).await? else {
        return Ok(None);
    };
    let bytes = reg.get_manifest(&repo, &manifest).await?;
    let media_type: Option<String> = serde_json::from_slice::<serde_json::Value>(&bytes)?
        ["mediaType"]
        .as_str()
        .map(str::to_owned);
    if media_type.as_deref() == Some(INDEX_MEDIA_TYPE) {
        // Members are targets of their own, fetched (or built) before their index.
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&bytes).context("parsing the registry's index")?;
        let members = index
            .manifests()
            .iter()
            .map(|m| m.digest().to_string().parse())
            .collect::<Result<Vec<Digest>, _>>()?;
        if let Some(missing) = members.iter().find(|m| !store.has_blob(m)) {
            bail!("index {manifest} names {missing}, which is not in the store");
        }
        store.put_bytes(&bytes)?;
        let img = StoredImage {
            target: target.clone(),
            key: key.clone(),
            manifest: manifest.clone(),
            config: manifest,
            layers: vec![],
            packages: Default::default(),
            members,
            debs: Default::default(),
        };
        store.record(&img)?;
        return Ok(Some(img));
    }
    let parsed: oci_spec::image::ImageManifest =
        serde_json::from_slice(&bytes).context("parsing the registry's manifest")?;
    let config: Digest = parsed.config().digest().to_string().parse()?;
    let mut blobs: Vec<Digest> = vec![config.clone()];
    for l in parsed.layers() {
        blobs.push(l.digest().to_string().parse()?);
    }
    let fetched: Vec<Digest> = blobs
        .iter()
        .filter(|d| !store.has_blob(d))
        .cloned()
        .collect();
    for d in &fetched {
        fetch_blob(reg, store, &repo, d).await?;
    }
    if let Err(e) = audit_fetched(store, &config, &blobs[1..], &fetched) {
        for d in &fetched {
            let _ = std::fs::remove_file(store.blob_path(d));
        }
        return Err(crate::registry::RegistryError::Protocol(format!(
            "{}/{repo} served {target} (manifest {manifest}), refused: {e}; nothing kept \
             (push the target again from a trusted store, or build without --registry)",
            reg.host()
        ))
        .into());
    }
    let stored_manifest = store.put_bytes(&bytes)?;
    debug_assert_eq!(stored_manifest, manifest);
    let cfg = image::read_config(store, &config)?;
    let diff_ids = cfg.rootfs().diff_ids();
    let layers: Vec<StoredLayer> = parsed
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, diff)| {
            Ok(StoredLayer {
                digest: l.digest().to_string().parse()?,
                diff_id: diff.parse()?,
                size: l.size(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut packages = Default::default();
    for l in layers.iter().rev() {
        if let Some(status) =
            image::file_in_layer(&store.blob_path(&l.digest), "var/lib/dpkg/status")?
        {
            packages = dpkg::installed(&status);
            break;
        }
    }
    let img = StoredImage {
        target: target.clone(),
        key: key.clone(),
        manifest,
        config,
        layers,
        packages,
        members: Vec::new(),
        debs: Default::default(),
    };
    store.record(&img)?;
    Ok(Some(img))
}

/// Checks what a registry served before it is recorded: the config names one diff_id per
/// layer, and every layer fetched now passes [`layeraudit::audit`] (layers the store held
/// already were made or checked here before).
fn audit_fetched(
    store: &Store,
    config: &Digest,
    layers: &[Digest],
    fetched: &[Digest],
) -> Result<(), String> {
    let cfg =
        image::read_config(store, config).map_err(|e| format!("its config is unusable: {e}"))?;
    let diff_ids = cfg.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(format!(
            "a config naming {} diff_ids for {} layers",
            diff_ids.len(),
            layers.len()
        ));
    }
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        if !fetched.contains(layer) {
            continue;
        }
        let diff_id: Digest = diff_id
            .parse()
            .map_err(|e| format!("its config's diff_id `{diff_id}` is not a digest: {e}"))?;
        let file = std::fs::File::open(store.blob_path(layer))
            .map_err(|e| format!("layer {layer} unreadable in the store: {e}"))?;
        layeraudit::audit(file, &diff_id).map_err(|e| format!("layer {layer}: {e}"))?;
    }
    Ok(())
}

/// Copies one blob from the registry into the store, verifying its digest.
pub async fn fetch_blob(
    reg: &Registry,
    store: &Store,
    repo: &str,
    digest: &Digest,
) -> anyhow::Result<()> {
    let mut w = store.blob_writer()?;
    reg.get_blob(repo, digest, &mut w)
        .await
        .with_context(|| format!("fetching {digest} from {}/{repo}", reg.host()))?;
    // Verify, then rename: bytes of another digest are never kept.
    if let Err(got) = w.commit_expecting(digest)? {
        return Err(crate::registry::RegistryError::Protocol(format!(
            "{}/{repo} served bytes hashing to {got} for {digest}: refused, nothing kept \
             (the registry's copy is corrupt: push the target again, or build without --registry)",
            reg.host()
        ))
        .into());
    }
    Ok(())
}
