//! Stage "classify": for every selected (config, arch), is it made already — in the store
//! (`cached`), in the registry (`pulled` into the store, with `--registry`) or on the
//! storage (`on-storage`) — or left to build?

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::prepare::Prepared;
use super::report::{RootfsAction, RootfsOutcome};
use super::{ARTIFACTS, MANIFEST};
use crate::core::rootfs_lock::RootfsManifest;
use crate::printer::Printer;
use crate::registry::Registry;
use crate::rootfs::oci::{self, Pulled};
use crate::rootfs::plan::RootfsJob;
use crate::rootfs::recipes::read_manifest;
use crate::storage::Storage;

/// A (config, arch) to build: its job, the builder's environment and the input files' tar.
pub(super) struct Todo {
    pub job: RootfsJob,
    pub env: Vec<String>,
    pub tar: Arc<Vec<u8>>,
}

/// A (config, arch) whose files exist, and where.
pub(super) struct Made {
    pub manifest: RootfsManifest,
    /// The files are on the storage (and maybe nowhere else): nothing to upload.
    pub on_storage: bool,
}

/// The selected (config, arch)s, split into made and to build.
pub(super) struct Classified {
    pub todo: Vec<Todo>,
    pub outcomes: Vec<RootfsOutcome>,
    pub made: BTreeMap<(String, String), Made>,
}

/// The registry a run shares its results through, and the repository prefix.
pub(super) type SharedCache<'a> = Option<(&'a Registry, &'a str)>;

/// `store_dir` is the store's rootfs directory (`<store>/rootfs`, a directory per key).
pub(super) async fn classify(
    store_dir: &Path,
    prepared: &[Prepared],
    registry: SharedCache<'_>,
    storage: Option<&Storage>,
    printer: &Printer,
) -> anyhow::Result<Classified> {
    let mut c = Classified {
        todo: Vec::new(),
        outcomes: Vec::new(),
        made: BTreeMap::new(),
    };
    for p in prepared {
        for job in p.selected_jobs() {
            let mut found =
                read_manifest(&store_dir.join(job.key.hex())).map(|m| (m, RootfsAction::Cached));
            if let (None, Some((reg, prefix))) = (&found, registry) {
                found = pulled(reg, prefix, job, store_dir, printer)
                    .await?
                    .map(|m| (m, RootfsAction::Pulled));
            }
            if let (None, Some(s)) = (&found, storage) {
                found = stored_remotely(s, &p.dir(), job, printer)
                    .await?
                    .map(|m| (m, RootfsAction::OnStorage));
            }
            let Some((manifest, action)) = found else {
                c.todo.push(Todo {
                    job: job.clone(),
                    env: p.env[&job.arch].clone(),
                    tar: p.tar.clone(),
                });
                continue;
            };
            let on_storage = action == RootfsAction::OnStorage;
            let (verb, where_) = match action {
                RootfsAction::OnStorage => ("Fresh", " on the storage"),
                RootfsAction::Pulled => ("Pulled", " from the registry"),
                _ => ("Fresh", ""),
            };
            printer.status(
                verb,
                format!("{} ({}){where_}", job.label(), job.key.short()),
            );
            c.outcomes
                .push(RootfsOutcome::made(job, action, 0.0, &manifest));
            c.made.insert(
                (job.config.clone(), job.arch.clone()),
                Made {
                    manifest,
                    on_storage,
                },
            );
        }
    }
    Ok(c)
}

/// The files of `job` from the registry's artifact of its key, checked and stored; a
/// registry that serves something else is named and the (config, arch) is built instead.
async fn pulled(
    reg: &Registry,
    prefix: &str,
    job: &RootfsJob,
    store_dir: &Path,
    printer: &Printer,
) -> anyhow::Result<Option<RootfsManifest>> {
    match oci::pull(reg, prefix, job, store_dir).await? {
        Pulled::Stored(m) => Ok(Some(m)),
        Pulled::Missing => Ok(None),
        Pulled::Bad(why) => {
            let (repo, tag) = oci::reference(prefix, job);
            printer.warn(format!(
                "{}/{repo}:{tag} is not what the key makes ({why}): building {}, whose push \
                 does not replace it (delete the tag to let it)",
                reg.host(),
                job.label()
            ));
            Ok(None)
        }
    }
}

/// The manifest of `job` on the storage, if it is there for the same key and every file it
/// lists is served with the size and sha256 it records. Each file is downloaded and hashed:
/// a server may answer a HEAD with the right length and serve other bytes, and what is locked
/// is what the labs will download. A file that differs is named, and the (config, arch) is
/// rebuilt; its upload then replaces the bad copy.
async fn stored_remotely(
    storage: &Storage,
    dir: &str,
    job: &RootfsJob,
    printer: &Printer,
) -> anyhow::Result<Option<RootfsManifest>> {
    let Some(bytes) = storage
        .fetch(dir, &format!("{}/{MANIFEST}", job.arch))
        .await?
    else {
        return Ok(None);
    };
    let Ok(m) = serde_json::from_slice::<RootfsManifest>(&bytes) else {
        return Ok(None);
    };
    if m.key != job.key || m.artifacts.len() != ARTIFACTS.len() {
        return Ok(None);
    }
    for (name, a) in &m.artifacts {
        let file = format!("{}/{name}", job.arch);
        match storage.served(dir, &file).await? {
            Some((size, sha256)) if size == a.size && sha256 == a.sha256 => {}
            Some((size, sha256)) => {
                printer.warn(format!(
                    "{} serves other bytes than its manifest records ({size} bytes, {sha256}; \
                     recorded: {} bytes, {}): rebuilding {}, whose upload replaces it",
                    storage.url(dir, &file),
                    a.size,
                    a.sha256,
                    job.label()
                ));
                return Ok(None);
            }
            None => return Ok(None),
        }
    }
    Ok(Some(m))
}
