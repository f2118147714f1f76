//! `kci-build fetch [TARGET…]`: fill the apt cache for the lockfile without building, so
//! the next build needs no mirror: the pinned `InRelease` of every suite, its `Packages` and
//! `Translation-en` indexes for the targets' architectures, and every `.deb` the targets
//! were built from — each verified against the pins (see [`crate::aptcache`]). With
//! `--registry`, the cache is first pulled from there and, with `--push`, pushed to it
//! ([`crate::aptshare`]).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Context as _};
use futures_util::{stream, StreamExt, TryStreamExt};

use super::{Context, Report};
use crate::aptcache::{AptCache, AptError, AptStats};
use crate::aptshare;
use crate::core::apt::{deb_file_parts, SuiteSource};
use crate::core::names::{Digest, TargetName};
use crate::printer::Printer;
use crate::registry::Registry;
use crate::store::Store;

/// What `fetch` is asked.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    pub targets: Vec<TargetName>,
    /// Pull the cache from this registry first.
    pub registry: Option<String>,
    /// Push the cache to the registry after.
    pub push: bool,
}

/// What `fetch` did.
#[derive(Debug, serde::Serialize)]
pub struct FetchReport {
    pub suites: usize,
    pub index_files: usize,
    pub debs: usize,
    pub stats: AptStats,
    /// Blobs downloaded from the registry's cache (`None`: not asked, or it had none).
    pub pulled: Option<usize>,
    /// Blobs uploaded to the registry (`None`: not asked).
    pub pushed: Option<usize>,
}

impl Report for FetchReport {
    fn show(&self, printer: &Printer) {
        printer.status(
            "Cached",
            format!(
                "{} suites, {} index files, {} packages: {} from upstream ({} files), {} cached",
                self.suites,
                self.index_files,
                self.debs,
                crate::printer::human_bytes(self.stats.upstream_bytes),
                self.stats.misses,
                self.stats.hits
            ),
        );
    }
}

pub async fn run(ctx: &Context, opts: &FetchOptions) -> anyhow::Result<FetchReport> {
    let ws = ctx.workspace()?;
    let store = Store::open(ws.store.root())?; // the apt cache lives in it
    let sources = crate::aptpins::image_suites(&ws)?;
    if ws.pins.is_empty() {
        bail!(
            "{} pins no apt index: run `kci-build lock --refresh` (or a build) first",
            ws.paths.lockfile.display()
        );
    }
    // The targets and everything they are built on: a rebuild needs the parents' packages.
    let closure: Vec<TargetName> = match opts.targets.is_empty() {
        true => Vec::new(),
        false => ws
            .selection(&opts.targets)?
            .iter()
            .map(|t| t.name.clone())
            .collect(),
    };
    let wanted = locked_debs(&ws.lock, &closure)?;
    let registry = opts
        .registry
        .as_deref()
        .map(|r| Registry::new(r, &ws.env.registry))
        .transpose()?;
    let at = aptshare::address(&ws.settings.prefix, &ws.pins, &wanted);
    let pulled = match &registry {
        Some(reg) => pull(reg, &store, &at, &ctx.printer).await?,
        None => None,
    };
    let cache = crate::aptpins::cache(&ws);
    let mut arches: BTreeSet<String> = wanted
        .keys()
        .filter_map(|p| deb_file_parts(p).map(|(_, _, a)| a.to_owned()))
        .filter(|a| a != "all")
        .collect();
    for t in ws.graph.targets() {
        if closure.is_empty() || closure.contains(&t.name) {
            arches.extend(crate::bootstrap::debian_arch(&t.platform).map(str::to_owned));
        }
    }
    let mut files = fetch_indexes(&cache, &sources, &arches, &ctx.printer).await?;
    let index_files = files.len() - cache.pins().len();
    let debs = fetch_debs(&cache, &sources, &wanted).await?;
    files.extend(wanted.clone());
    let pushed = match (&registry, opts.push) {
        (Some(reg), true) => {
            let n = aptshare::push(reg, &store, &at, &files).await?;
            ctx.printer.status(
                "Pushed",
                format!(
                    "the apt cache ({} files, {n} new) to {}/{}:{}",
                    files.len(),
                    reg.host(),
                    at.repo,
                    at.tag
                ),
            );
            Some(n)
        }
        _ => None,
    };
    Ok(FetchReport {
        suites: cache.pins().len(),
        index_files,
        debs,
        stats: cache.stats(),
        pulled,
        pushed,
    })
}

/// The registry's copy of this cache, when it has one.
async fn pull(
    reg: &Registry,
    store: &Store,
    at: &aptshare::Address,
    printer: &Printer,
) -> anyhow::Result<Option<usize>> {
    Ok(match aptshare::pull(reg, store, at).await? {
        Some((files, n)) => {
            let what = format!("{}/{}:{}", reg.host(), at.repo, at.tag);
            printer.status(
                "Pulled",
                format!("the apt cache from {what} ({} files, {n} new)", files.len()),
            );
            Some(n)
        }
        None => {
            printer.status(
                "Missing",
                format!(
                    "no apt cache {}:{} in {}: fetching from the mirror",
                    at.repo,
                    at.tag,
                    reg.host()
                ),
            );
            None
        }
    })
}

/// The `.deb`s of the given targets (all when none are given) and their locked digests.
fn locked_debs(
    lock: &crate::core::lockfile::Lockfile,
    targets: &[TargetName],
) -> anyhow::Result<BTreeMap<String, Digest>> {
    for t in targets {
        if !lock.targets.contains_key(t) {
            bail!("{t} is not in the lockfile: build it first");
        }
    }
    Ok(lock
        .targets
        .iter()
        .filter(|(n, _)| targets.is_empty() || targets.contains(n))
        .flat_map(|(_, t)| t.deb.clone())
        .collect())
}

/// Every pinned suite's `InRelease` and compressed indexes for `arches`. A variant the
/// mirror does not have (some list `.bz2` and `.xz` of one file) is skipped: apt then asks
/// for the one that is there.
async fn fetch_indexes(
    cache: &AptCache,
    sources: &[SuiteSource],
    arches: &BTreeSet<String>,
    printer: &Printer,
) -> anyhow::Result<aptshare::CacheFiles> {
    let mut out = aptshare::CacheFiles::new();
    for (suite, pin) in cache.pins() {
        let Some(src) = sources.iter().find(|s| &s.id == suite) else {
            printer.warn(format!("{suite} is pinned but no recipe installs from it"));
            continue;
        };
        let release = cache.release(&src.origin, suite).await?;
        let dists = format!("{}/dists/{}", suite.archive(), suite.suite());
        out.insert(format!("{dists}/InRelease"), pin.clone());
        let files: BTreeSet<&str> = arches
            .iter()
            .flat_map(|a| release.index_files_for(a))
            .map(|(p, _)| p)
            .collect();
        for path in files {
            match cache.index_file(&src.origin, suite, path).await {
                Ok(d) => {
                    out.insert(format!("{dists}/{path}"), d);
                }
                Err(AptError::Gone { .. }) => tracing::debug!(%suite, path, "not on the mirror"),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

/// Every wanted `.deb`, eight at a time; a pinned index that vouches for other bytes than
/// the lockfile is an error naming both.
async fn fetch_debs(
    cache: &AptCache,
    sources: &[SuiteSource],
    wanted: &BTreeMap<String, Digest>,
) -> anyhow::Result<usize> {
    let jobs = wanted.iter().map(|(path, locked)| async move {
        let (archive, pool) = path
            .split_once("/pool/")
            .ok_or_else(|| anyhow!("lockfile deb `{path}` is not `<archive>/pool/…`"))?;
        let src = sources
            .iter()
            .find(|s| s.id.archive() == archive)
            .ok_or_else(|| anyhow!("no recipe installs from archive `{archive}` (deb `{path}`)"))?;
        let deb = cache
            .deb(&src.origin, archive, &format!("pool/{pool}"))
            .await
            .with_context(|| format!("fetching {path}"))?;
        if &deb.listed.sha256 != locked {
            bail!(
                "{path}: the lockfile says {locked}, the pinned index says {}",
                deb.listed.sha256
            );
        }
        Ok(())
    });
    let done: Vec<()> = stream::iter(jobs).buffer_unordered(8).try_collect().await?;
    Ok(done.len())
}
