//! Stage "publish": every made (config, arch) not on the storage yet is uploaded under its
//! config's version directory (`<config>/<version>/<arch>/<file>`), sizes and sha256 checked
//! by the storage; what is there already is only pointed at.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;

use super::classify::Made;
use super::prepare::Prepared;
use super::MANIFEST;
use crate::core::names::Digest;
use crate::printer::Printer;
use crate::storage::{Storage, UploadFile};

/// Where each (config, arch)'s files are served, file name → URL.
pub(super) type Urls = BTreeMap<(String, String), BTreeMap<String, String>>;

#[derive(Default)]
pub(super) struct Published {
    pub urls: Urls,
    pub uploaded: usize,
    pub skipped: usize,
}

pub(super) async fn publish(
    store_dir: &Path,
    prepared: &[Prepared],
    made: &BTreeMap<(String, String), Made>,
    storage: &Storage,
    printer: &Printer,
) -> anyhow::Result<Published> {
    let mut out = Published::default();
    for p in prepared {
        let dir = p.dir();
        let mut files = Vec::new();
        for job in &p.jobs {
            let id = (job.config.clone(), job.arch.clone());
            let Some(m) = made.get(&id) else {
                continue;
            };
            if m.on_storage {
                let urls = out.urls.entry(id).or_default();
                for name in m.manifest.artifacts.keys().chain([&MANIFEST.to_owned()]) {
                    urls.insert(
                        name.clone(),
                        storage.url(&dir, &format!("{}/{name}", job.arch)),
                    );
                }
                continue;
            }
            files.extend(upload_files(
                &store_dir.join(job.key.hex()),
                &job.arch,
                &m.manifest,
            )?);
        }
        if files.is_empty() {
            continue;
        }
        let report = storage
            .sync(&dir, &files)
            .await
            .with_context(|| format!("uploading {dir}"))?;
        out.uploaded += report.uploaded.len();
        out.skipped += report.skipped.len();
        printer.status(
            "Uploaded",
            format!(
                "{dir}: {} files, {} already there (sizes and sha256 verified)",
                report.uploaded.len(),
                report.skipped.len()
            ),
        );
        for f in &files {
            if let Some((arch, name)) = f.name.split_once('/') {
                out.urls
                    .entry((p.recipe.name.clone(), arch.to_owned()))
                    .or_default()
                    .insert(name.to_owned(), storage.url(&dir, &f.name));
            }
        }
    }
    Ok(out)
}

/// The five files and the manifest of one (config, arch), from its key's store directory.
fn upload_files(
    key_dir: &Path,
    arch: &str,
    m: &crate::core::rootfs_lock::RootfsManifest,
) -> anyhow::Result<Vec<UploadFile>> {
    let mut files: Vec<UploadFile> = m
        .artifacts
        .iter()
        .map(|(name, a)| UploadFile {
            name: format!("{arch}/{name}"),
            path: key_dir.join(name),
            size: a.size,
            sha256: a.sha256.clone(),
        })
        .collect();
    let mpath = key_dir.join(MANIFEST);
    let mbytes = std::fs::read(&mpath).with_context(|| format!("reading {}", mpath.display()))?;
    files.push(UploadFile {
        name: format!("{arch}/{MANIFEST}"),
        path: mpath,
        size: mbytes.len() as u64,
        sha256: Digest::of(&mbytes),
    });
    Ok(files)
}
