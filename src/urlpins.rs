//! The download pins of the rootfs recipes: fetching and pinning the downloads the rootfs
//! lockfile lacks (the first build after a recipe names one, like git sources), refusing
//! that under `--locked`, making sure the store holds every pinned file's bytes, and
//! `lock --refresh` fetching them again.
//!
//! Files land in the store's blobs by sha256, as the apt cache's `.deb`s do; the build's
//! proxy serves them from there ([`crate::aptcache`]). Without a refresh nothing moves,
//! whatever the URL serves today.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::StreamExt as _;

use crate::core::names::Digest;
use crate::core::urlsource::{self, LockedUrl, UrlSourceSpec};
use crate::printer::Printer;
use crate::rootfs::RootfsRecipe;
use crate::store::Store;

/// A download the lockfile must pin and does not, under `--locked`.
#[derive(Debug, thiserror::Error)]
#[error("{lockfile}: no pin for download `{name}` ({url}) (--locked); run `kci-build rootfs` or `kci-build lock --refresh` and commit the lockfile")]
pub struct MissingUrlPin {
    pub lockfile: String,
    pub name: String,
    pub url: String,
}

/// Why a download could not be pinned or its pinned bytes not found again.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("downloading {url}{via}: {reason}")]
    Failed {
        url: String,
        via: String,
        reason: String,
    },
    #[error("{url}{via} is not the file the recipe or lockfile pins: expected {expected}, got {actual}; if the change is wanted, run `kci-build lock --refresh` (or change the recipe's sha256) and review the diff")]
    Mismatch {
        url: String,
        via: String,
        expected: Digest,
        actual: Digest,
    },
}

impl DownloadError {
    /// A failed download is the network's or the upstream's; other bytes than the pin's
    /// are a decision for whoever owns the recipes (refresh the pin or not).
    pub fn fault(&self) -> crate::error::Fault {
        match self {
            DownloadError::Failed { .. } => crate::error::Fault::Environment,
            DownloadError::Mismatch { .. } => crate::error::Fault::BadInput,
        }
    }
}

/// Every download the recipes name, by name; two recipes naming one name for different
/// URLs are refused, naming both files.
pub fn specs_of(
    recipes_dir: &Path,
    recipes: &[RootfsRecipe],
) -> anyhow::Result<BTreeMap<String, UrlSourceSpec>> {
    crate::rootfs::recipes::named_sources(
        recipes_dir,
        recipes,
        "download",
        |r| &r.url_source,
        |s| s.url.clone(),
    )
}

/// Where downloads come from: the rewrite rules of `KCI_DOWNLOAD_FROM` and the store.
pub struct Downloader<'a> {
    pub store: &'a Store,
    pub rules: &'a [(String, String)],
}

impl Downloader<'_> {
    /// The pins of a run: `have`'s pins of every download `all` names, plus a pin of
    /// today's bytes for each of `wanted` that has none, refused when `locked`. Every pin of
    /// `wanted` is then in the store, verified.
    pub async fn resolve(
        &self,
        have: &BTreeMap<String, LockedUrl>,
        all: &BTreeMap<String, UrlSourceSpec>,
        wanted: &BTreeMap<String, UrlSourceSpec>,
        locked: bool,
        lockfile: &Path,
        printer: &Printer,
    ) -> anyhow::Result<BTreeMap<String, LockedUrl>> {
        let mut pins = urlsource::pins_for(all, have);
        for (name, spec) in wanted {
            match pins.get(name) {
                Some(pin) => self.ensure(pin).await?,
                None if locked => {
                    return Err(MissingUrlPin {
                        lockfile: lockfile.display().to_string(),
                        name: name.clone(),
                        url: spec.url.clone(),
                    }
                    .into())
                }
                None => {
                    let pin = self.pin(spec).await?;
                    printer.status(
                        "Pinned",
                        format!(
                            "download {name}: {} ({} bytes of {})",
                            pin.sha256.short(),
                            pin.size,
                            pin.url
                        ),
                    );
                    pins.insert(name.clone(), pin);
                }
            }
        }
        Ok(pins)
    }

    /// Today's bytes of `spec`'s URL, into the store, as a pin (checked against the
    /// recipe's sha256 when it gives one).
    pub async fn pin(&self, spec: &UrlSourceSpec) -> Result<LockedUrl, DownloadError> {
        let (sha256, size) = self.fetch(&spec.url, spec.sha256.as_ref()).await?;
        Ok(LockedUrl {
            url: spec.url.clone(),
            sha256,
            size,
        })
    }

    /// Makes sure the store holds `pin`'s bytes: fetched again when missing (a new
    /// machine, a `gc`), and refused when the URL now serves other bytes.
    pub async fn ensure(&self, pin: &LockedUrl) -> Result<(), DownloadError> {
        if self.store.blob_is_intact(&pin.sha256).unwrap_or(false) {
            return Ok(());
        }
        self.fetch(&pin.url, Some(&pin.sha256)).await.map(|_| ())
    }

    /// Fetches `url` (from where the rules send it) into the store's blobs.
    async fn fetch(
        &self,
        url: &str,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), DownloadError> {
        let from = urlsource::rewritten(url, self.rules);
        let via = match from == url {
            true => String::new(),
            false => format!(" (via {})", crate::weburl::redact(&from)),
        };
        let failed = |reason: String| DownloadError::Failed {
            url: url.to_owned(),
            via: via.clone(),
            reason,
        };
        let store_err = |e: crate::store::StoreError| failed(e.to_string());
        // The first thing a new store may hold: make its directories.
        let store = Store::open(self.store.root()).map_err(store_err)?;
        let mut w = store.blob_writer().map_err(store_err)?;
        if let Some(path) = from.strip_prefix("file://") {
            let mut f = std::fs::File::open(path).map_err(|e| failed(e.to_string()))?;
            std::io::copy(&mut f, &mut w).map_err(|e| failed(e.to_string()))?;
        } else {
            tracing::debug!(%url, via = %from, "fetching a pinned download");
            let client = reqwest::Client::builder()
                .build()
                .map_err(|e| failed(crate::error::chain(&e)))?;
            let resp = client
                .get(&from)
                .send()
                .await
                .map_err(|e| failed(crate::error::chain(&e)))?;
            if !resp.status().is_success() {
                return Err(failed(format!("HTTP {}", resp.status())));
            }
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| failed(crate::error::chain(&e)))?;
                std::io::Write::write_all(&mut w, &chunk).map_err(|e| failed(e.to_string()))?;
            }
        }
        match expected {
            None => w.commit().map_err(store_err),
            Some(expected) => match w.commit_expecting(expected).map_err(store_err)? {
                Ok(size) => Ok((expected.clone(), size)),
                Err(actual) => Err(DownloadError::Mismatch {
                    url: url.to_owned(),
                    via,
                    expected: expected.clone(),
                    actual,
                }),
            },
        }
    }
}

/// Where the script's tools find the certificate they trust for pinned `https://`
/// downloads, inside the root while the script runs (beside the served git copies).
pub const CA_FILE: &str = "/kci-git/ca.pem";

/// Writes into `dir` (the build's `/kci/git`) the certificate of the store's download
/// authority and a `wgetrc` that trusts it (wget has no variable for it; curl, OpenSSL and
/// Python's requests get theirs from `build.sh`).
pub fn serve(ca_pem: &str, dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    for (name, text) in [
        ("ca.pem", ca_pem.to_owned()),
        ("wgetrc", format!("ca_certificate = {CA_FILE}\n")),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The error for a build whose proxy refused `url`, which `config` does not pin.
pub fn unpinned_hint(recipes_dir: &Path, config: &str, url: &str) -> String {
    format!(
        "the script downloaded {url}, which no download of the recipe pins (refused, or \
         another recipe's pin, which this build's key does not cover); pin it in {}:\n    [url-source.{}]\n    url = \"{url}\"",
        recipes_dir.join(format!("{config}.toml")).display(),
        urlsource::suggested_name(url)
    )
}

/// The error for a build whose proxy refused a tunnel to `origin`, where `config` pins no
/// download (the script's log names the file it wanted).
pub fn unpinned_host_hint(recipes_dir: &Path, config: &str, origin: &str) -> String {
    format!(
        "the script downloaded from {origin}, where no download of the recipe is pinned, so it \
         got nothing (its log names the file); pin each file it fetches there in {}:\n    \
         [url-source.<name>]\n    url = \"{origin}/<path>\"",
        recipes_dir.join(format!("{config}.toml")).display()
    )
}
