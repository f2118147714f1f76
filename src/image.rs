//! OCI images: assemble a canonical config and manifest from canonical layers (oci-spec
//! types, OLPC canonical JSON, `created` = `SOURCE_DATE_EPOCH`, no host fields), read the
//! archives `docker save` produces, and write the archive `docker load` takes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::str::FromStr;

use oci_spec::image::{
    Arch, Config, Descriptor, History, HistoryBuilder, ImageConfiguration,
    ImageConfigurationBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};

use crate::core::key::canonical_json;
use crate::core::names::{Digest, Platform};
use crate::layer::{self, HashWriter, Section};
use crate::store::{Store, StoreError, StoredLayer};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// `SOURCE_DATE_EPOCH` as RFC 3339 (UTC, seconds).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86400) as i64;
    let secs = epoch % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Rewrites a layer canonically, gzips it into the store and returns its record plus the
/// dpkg status it carried.
pub fn store_layer(
    store: &Store,
    src: Section,
    sde: u64,
) -> Result<(StoredLayer, Option<Vec<u8>>), ImageError> {
    let blob = store.blob_writer()?;
    let mut gz = layer::gzip(blob);
    let canonical = layer::canonicalize(src, sde, &mut gz).map_err(io_ctx("rewriting layer"))?;
    let blob = gz.finish().map_err(io_ctx("compressing layer"))?;
    let (digest, size) = blob.commit()?;
    Ok((
        StoredLayer {
            digest,
            diff_id: canonical.diff_id,
            size,
        },
        canonical.dpkg_status,
    ))
}

/// One history line of the image being assembled.
#[derive(Debug, Clone)]
pub struct HistoryLine {
    pub created_by: String,
    pub empty_layer: bool,
}

/// Writes config and manifest blobs; returns (config digest, manifest digest).
pub fn assemble(
    store: &Store,
    platform: &Platform,
    runtime: Option<Config>,
    layers: &[StoredLayer],
    history: &[HistoryLine],
    sde: u64,
) -> Result<(Digest, Digest), ImageError> {
    let created = rfc3339(sde);
    let history: Vec<History> = history
        .iter()
        .map(|h| {
            let mut b = HistoryBuilder::default()
                .created(created.clone())
                .created_by(h.created_by.clone());
            if h.empty_layer {
                b = b.empty_layer(true);
            }
            b.build().map_err(|e| ImageError::Invalid(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(
            layers
                .iter()
                .map(|l| l.diff_id.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let mut cb = ImageConfigurationBuilder::default()
        .created(created)
        .architecture(Arch::from(platform.architecture.as_str()))
        .os(Os::from(platform.os.as_str()))
        .rootfs(rootfs)
        .history(history);
    if let Some(v) = &platform.variant {
        cb = cb.variant(v.clone());
    }
    if let Some(rt) = runtime {
        cb = cb.config(rt);
    }
    let config: ImageConfiguration = cb.build().map_err(|e| ImageError::Invalid(e.to_string()))?;
    let config_bytes = canonical_json(&config);
    let config_digest = store.put_bytes(&config_bytes)?;
    let desc = |mt: MediaType, size: u64, d: &Digest| -> Result<Descriptor, ImageError> {
        let od = oci_spec::image::Digest::from_str(d.as_str())
            .map_err(|e| ImageError::Invalid(e.to_string()))?;
        Ok(Descriptor::new(mt, size, od))
    };
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(desc(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            &config_digest,
        )?)
        .layers(
            layers
                .iter()
                .map(|l| desc(MediaType::ImageLayerGzip, l.size, &l.digest))
                .collect::<Result<Vec<_>, _>>()?,
        )
        .build()
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let manifest_digest = store.put_bytes(&canonical_json(&manifest))?;
    Ok((config_digest, manifest_digest))
}

/// Writes the OCI index of a multi-platform target (one descriptor per member manifest,
/// with its platform and variant, sorted by platform) and returns its store record.
pub fn store_index(
    store: &Store,
    target: &crate::core::names::TargetName,
    key: &Digest,
    members: &[(Platform, crate::store::StoredImage)],
) -> Result<crate::store::StoredImage, ImageError> {
    let mut sorted: Vec<&(Platform, crate::store::StoredImage)> = members.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let manifests = sorted
        .iter()
        .map(|(platform, img)| {
            let size = std::fs::metadata(store.blob_path(&img.manifest))
                .map_err(io_ctx("reading a member manifest"))?
                .len();
            let mut pb = oci_spec::image::PlatformBuilder::default()
                .architecture(Arch::from(platform.architecture.as_str()))
                .os(Os::from(platform.os.as_str()));
            if let Some(v) = &platform.variant {
                pb = pb.variant(v.clone());
            }
            let p = pb.build().map_err(|e| ImageError::Invalid(e.to_string()))?;
            let digest = oci_spec::image::Digest::from_str(img.manifest.as_str())
                .map_err(|e| ImageError::Invalid(e.to_string()))?;
            let mut d = Descriptor::new(MediaType::ImageManifest, size, digest);
            d.set_platform(Some(p));
            Ok(d)
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let index = oci_spec::image::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let digest = store.put_bytes(&canonical_json(&index))?;
    let img = crate::store::StoredImage {
        target: target.clone(),
        key: key.clone(),
        manifest: digest.clone(),
        config: digest,
        layers: Vec::new(),
        packages: Default::default(),
        members: sorted.iter().map(|(_, m)| m.manifest.clone()).collect(),
        debs: Default::default(),
    };
    store.record(&img)?;
    Ok(img)
}

/// An image archive written by `docker save` (legacy layout or Docker ≥ 25's OCI layout):
/// its config and where each layer tar sits inside the archive file.
pub struct SavedImage {
    pub config: serde_json::Value,
    pub layers: Vec<(u64, u64)>,
}

pub fn read_saved(path: &Path) -> Result<SavedImage, ImageError> {
    let f = File::open(path).map_err(io_ctx("opening saved image"))?;
    let mut ar = tar::Archive::new(f);
    // path → (offset, size) or symlink target.
    let mut regions: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    let mut manifest = None;
    for e in ar
        .entries_with_seek()
        .map_err(io_ctx("reading saved image"))?
    {
        let mut e = e.map_err(io_ctx("reading saved image"))?;
        let p = e
            .path()
            .map_err(io_ctx("reading saved image"))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        match e.header().entry_type() {
            tar::EntryType::Symlink => {
                if let Some(t) = e.link_name().ok().flatten() {
                    let dir = Path::new(&p).parent().unwrap_or(Path::new(""));
                    links.insert(p.clone(), normalise_rel(&dir.join(t)));
                }
            }
            _ if p == "manifest.json" => {
                let mut s = Vec::new();
                e.read_to_end(&mut s)
                    .map_err(io_ctx("reading manifest.json"))?;
                manifest = Some(s);
            }
            _ => {
                regions.insert(p, (e.raw_file_position(), e.size()));
            }
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &manifest.ok_or_else(|| ImageError::Invalid("saved image has no manifest.json".into()))?,
    )
    .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
    let entry = &manifest[0];
    let find = |p: &str| -> Result<(u64, u64), ImageError> {
        let p = links.get(p).map(String::as_str).unwrap_or(p);
        regions
            .get(p)
            .copied()
            .ok_or_else(|| ImageError::Invalid(format!("saved image lacks {p}")))
    };
    let config_path = entry["Config"]
        .as_str()
        .ok_or_else(|| ImageError::Invalid("manifest.json has no Config".into()))?;
    let (off, len) = find(config_path)?;
    let mut f = File::open(path).map_err(io_ctx("opening saved image"))?;
    f.seek(SeekFrom::Start(off))
        .map_err(io_ctx("reading config"))?;
    let mut cfg = vec![0; len as usize];
    f.read_exact(&mut cfg).map_err(io_ctx("reading config"))?;
    let config = serde_json::from_slice(&cfg)
        .map_err(|e| ImageError::Invalid(format!("image config: {e}")))?;
    let layers = entry["Layers"]
        .as_array()
        .ok_or_else(|| ImageError::Invalid("manifest.json has no Layers".into()))?
        .iter()
        .map(|l| find(l.as_str().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    Ok(SavedImage { config, layers })
}

fn normalise_rel(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

/// Writes the archive `docker load` (POST /images/load) takes for a stored image: a
/// legacy `manifest.json`, the config blob and the gzip layer blobs (the daemon
/// decompresses them). The loaded image's id is the config digest.
pub fn write_load_archive(
    store: &Store,
    config: &Digest,
    layers: &[StoredLayer],
    tag: &str,
    out: impl Write,
) -> Result<(), ImageError> {
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", config.hex()),
        "RepoTags": [tag],
        "Layers": layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.hex())).collect::<Vec<_>>(),
    }]);
    let mut b = tar::Builder::new(HashWriter::new(out));
    let mut add = |name: String, path: &Path| -> Result<(), ImageError> {
        let mut f = File::open(path).map_err(io_ctx(format!("reading {}", path.display())))?;
        let len = f.metadata().map_err(io_ctx("stat"))?.len();
        let mut h = tar::Header::new_gnu();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, name, &mut f)
            .map_err(io_ctx("writing load archive"))
    };
    add(
        format!("blobs/sha256/{}", config.hex()),
        &store.blob_path(config),
    )?;
    let mut seen = std::collections::BTreeSet::new();
    for l in layers {
        if seen.insert(&l.digest) {
            add(
                format!("blobs/sha256/{}", l.digest.hex()),
                &store.blob_path(&l.digest),
            )?;
        }
    }
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "manifest.json", bytes.as_slice())
        .map_err(io_ctx("writing load archive"))?;
    b.into_inner().map_err(io_ctx("writing load archive"))?;
    Ok(())
}

/// Reads back a stored image's config.
/// The digests an OCI manifest or index references (its config, layers and member
/// manifests); `Err` when the bytes are not one.
pub fn referenced_digests(manifest: &[u8]) -> Result<Vec<Digest>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("schemaVersion").is_none() {
        return Err("not an OCI manifest or index (no schemaVersion)".into());
    }
    let list = |key: &str| v.get(key).and_then(|l| l.as_array()).into_iter().flatten();
    let mut out = Vec::new();
    for d in v
        .get("config")
        .into_iter()
        .chain(list("layers"))
        .chain(list("manifests"))
    {
        let digest = d
            .get("digest")
            .and_then(|s| s.as_str())
            .ok_or("a descriptor without a digest")?;
        out.push(
            digest
                .parse()
                .map_err(|e| format!("descriptor digest `{digest}`: {e}"))?,
        );
    }
    Ok(out)
}

pub fn read_config(store: &Store, config: &Digest) -> Result<ImageConfiguration, ImageError> {
    let bytes = store.read_blob(config)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Invalid(format!("stored config {config}: {e}")))
}

/// The content of `wanted` (a path without leading `/`) in a gzip layer blob, if present.
pub fn file_in_layer(blob: &Path, wanted: &str) -> io::Result<Option<Vec<u8>>> {
    let gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(File::open(blob)?));
    let mut ar = tar::Archive::new(gz);
    for e in ar.entries()? {
        let mut e = e?;
        if e.path_bytes()
            .strip_prefix(b"./")
            .unwrap_or(&e.path_bytes())
            == wanted.as_bytes()
        {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf)?;
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_file_in_a_gzip_layer() {
        let mut b = tar::Builder::new(layer::gzip(Vec::new()));
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "./var/lib/dpkg/status", &b"ok"[..])
            .unwrap();
        let gz = b.into_inner().unwrap().finish().unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), gz).unwrap();
        assert_eq!(
            file_in_layer(f.path(), "var/lib/dpkg/status")
                .unwrap()
                .as_deref(),
            Some(&b"ok"[..])
        );
        assert_eq!(file_in_layer(f.path(), "etc/passwd").unwrap(), None);
    }

    #[test]
    fn rfc3339_of_known_epochs() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_717_200_000), "2024-06-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
