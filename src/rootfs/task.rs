//! The image a Swarm task builds a rootfs in (`rootfs --swarm`): the rootfs-builder image
//! plus one layer holding the running kci-build binary at `/usr/local/bin/kci-build`, so the
//! task packs its own files where it built them (`kci-build rootfs-task`) and the
//! coordinator only checks them. Made from the store's canonical builder image without a
//! daemon: the same builder and binary give the same manifest digest, and a node pulls it
//! from the registry by that digest.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::core::names::Digest;
use crate::layer::HashWriter;
use crate::registry::{Registry, MANIFEST_MEDIA_TYPE};
use crate::store::{Store, StoredImage};

/// Where the binary lands in the task image.
pub const BINARY: &str = "usr/local/bin/kci-build";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";

/// One gzip layer, as pushed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub digest: Digest,
    pub diff_id: Digest,
    pub size: u64,
}

/// The layer of `binary` in the store: made once per binary (its path, size and mtime name
/// it in `<store>/swarm-task/`), so a rerun does not gzip hundreds of MB again.
pub fn stored_binary_layer(store: &Store, binary: &Path) -> anyhow::Result<Layer> {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(binary).with_context(|| format!("reading {}", binary.display()))?;
    let id = Digest::of(
        format!(
            "{}\n{}\n{}.{}",
            binary.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        )
        .as_bytes(),
    );
    let record = store.root().join("swarm-task").join(id.hex());
    if let Some(layer) = std::fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice::<Layer>(&b).ok())
        .filter(|l| store.has_blob(&l.digest))
    {
        return Ok(layer);
    }
    let mut w = store.blob_writer()?;
    let diff_id = write_binary_layer(binary, &mut w)?;
    let (digest, size) = w.commit()?;
    let layer = Layer {
        digest,
        diff_id,
        size,
    };
    std::fs::create_dir_all(record.parent().expect("a parent"))?;
    crate::fsutil::atomic_write(&record, &serde_json::to_vec(&layer)?)?;
    Ok(layer)
}

/// Writes the layer holding `binary` (mode 0755, owner root, mtime 0) to `dest`.
pub fn binary_layer(binary: &Path, dest: &Path) -> anyhow::Result<Layer> {
    let file =
        std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut w = HashWriter::new(std::io::BufWriter::new(file));
    let diff_id = write_binary_layer(binary, &mut w)?;
    let (digest, size) = w.digest();
    w.inner.into_inner()?.sync_all()?;
    Ok(Layer {
        digest,
        diff_id,
        size,
    })
}

/// The gzip layer of `binary` into `out`; returns its diff id.
fn write_binary_layer(binary: &Path, out: &mut impl std::io::Write) -> anyhow::Result<Digest> {
    let mut tar = tar::Builder::new(HashWriter::new(crate::layer::gzip(out)));
    let mut src =
        std::fs::File::open(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(src.metadata()?.len());
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, BINARY, &mut src)?;
    let inner = tar.into_inner()?;
    let (diff_id, _) = inner.digest();
    inner.inner.finish()?.flush()?;
    Ok(diff_id)
}

/// The task image's config and manifest: the builder's, with `layer` on top (its diff id
/// and a history entry in the config, its descriptor in the manifest). Pure.
pub fn compose(
    builder_manifest: &[u8],
    builder_config: &[u8],
    layer: &Layer,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let mut config: Value =
        serde_json::from_slice(builder_config).context("the builder image's config")?;
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .context("the builder image's config has no rootfs.diff_ids")?
        .push(json!(layer.diff_id.as_str()));
    if let Some(h) = config.get_mut("history").and_then(Value::as_array_mut) {
        h.push(json!({"created": "1970-01-01T00:00:00Z", "created_by": "kci-build rootfs-task"}));
    }
    let config_bytes = serde_json::to_vec(&config)?;
    let mut manifest: Value =
        serde_json::from_slice(builder_manifest).context("the builder image's manifest")?;
    manifest["config"] = json!({
        "mediaType": CONFIG_MEDIA_TYPE,
        "digest": Digest::of(&config_bytes).as_str(),
        "size": config_bytes.len(),
    });
    manifest["layers"]
        .as_array_mut()
        .context("the builder image's manifest has no layers")?
        .push(json!({
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": layer.digest.as_str(),
            "size": layer.size,
        }));
    Ok((config_bytes, serde_json::to_vec(&manifest)?))
}

/// Pushes the task image of `builder` and `binary` to `repo` (the builder's layers mounted
/// from `builder_repo`, where `rootfs --registry` pushed them); returns its reference by
/// digest, `host/repo@sha256:…`.
pub async fn push(
    reg: &Registry,
    store: &Store,
    builder: &StoredImage,
    builder_repo: &str,
    repo: &str,
    binary: &Path,
) -> anyhow::Result<String> {
    let tmp = tempfile::tempdir_in(store.root())?;
    let layer = stored_binary_layer(store, binary)?;
    let layer_path = store.blob_path(&layer.digest);
    let (config, manifest) = compose(
        &store.read_blob(&builder.manifest)?,
        &store.read_blob(&builder.config)?,
        &layer,
    )?;
    for l in &builder.layers {
        if !reg.mount_blob(repo, &l.digest, builder_repo).await? {
            reg.push_blob(repo, &l.digest, &store.blob_path(&l.digest))
                .await?;
        }
    }
    reg.push_blob(repo, &layer.digest, &layer_path).await?;
    let config_path = tmp.path().join("config");
    let mut f = std::fs::File::create(&config_path)?;
    f.write_all(&config)?;
    drop(f);
    reg.push_blob(repo, &Digest::of(&config), &config_path)
        .await?;
    let digest = Digest::of(&manifest);
    reg.put_manifest(
        repo,
        &format!("kci-{}", digest.hex()),
        MANIFEST_MEDIA_TYPE,
        &manifest,
    )
    .await?;
    Ok(format!("{}/{repo}@{digest}", reg.host()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_layer_is_the_same_bytes_every_time_and_composes_on_the_builder() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::write(&bin, b"#!/bin/sh\necho hi\n").unwrap();
        let a = binary_layer(&bin, &d.path().join("a")).unwrap();
        let b = binary_layer(&bin, &d.path().join("b")).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            std::fs::read(d.path().join("a")).unwrap(),
            std::fs::read(d.path().join("b")).unwrap()
        );
        // Stored once per binary: the same layer, the same blob bytes.
        let store = crate::store::Store::open(&d.path().join("store")).unwrap();
        let stored = stored_binary_layer(&store, &bin).unwrap();
        assert_eq!(stored, a);
        assert_eq!(
            std::fs::read(store.blob_path(&stored.digest)).unwrap(),
            std::fs::read(d.path().join("a")).unwrap()
        );
        std::fs::remove_file(store.blob_path(&stored.digest)).unwrap();
        assert_eq!(
            stored_binary_layer(&store, &bin).unwrap(),
            a,
            "remade when its blob went"
        );
        // The layer unpacks to the binary, executable.
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(d.path().join("a")).unwrap());
        let mut ar = tar::Archive::new(gz);
        let e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some(BINARY));
        assert_eq!(e.header().mode().unwrap(), 0o755);

        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:11","size":2}]}"#;
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:22"]},"history":[{"created_by":"x"}]}"#;
        let (c, m) = compose(manifest, config, &a).unwrap();
        let (c, m): (Value, Value) = (
            serde_json::from_slice(&c).unwrap(),
            serde_json::from_slice(&m).unwrap(),
        );
        assert_eq!(c["rootfs"]["diff_ids"][1], a.diff_id.as_str());
        assert_eq!(c["history"].as_array().unwrap().len(), 2);
        assert_eq!(m["layers"][1]["digest"], a.digest.as_str());
        assert_eq!(m["layers"][0]["digest"], "sha256:11");
        assert_ne!(m["config"]["digest"], "sha256:00");
        assert!(compose(b"{}", config, &a).is_err());
    }
}
