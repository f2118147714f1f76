//! The apt index pins of a workspace: which Debian suites its recipes install from, pinning
//! the ones its lockfile lacks (the first build after a suite appears, like `cargo` filling
//! in a new dependency), and `lock --refresh` moving them to today's index.
//!
//! Without a refresh nothing moves, whatever the mirror does: a pin is the sha256 of the
//! suite's `InRelease`, and [`crate::aptcache`] serves every build from it.

use std::collections::BTreeMap;

use crate::aptcache::{AptCache, AptError};
use crate::core::apt::{SuiteId, SuiteSource};
use crate::core::lockfile::LockedIndex;
use crate::core::recipe::TargetKind;
use crate::printer::Printer;
use crate::store::Store;
use crate::workspace::Workspace;

/// A suite the lockfile must pin and does not, under `--locked`.
#[derive(Debug, thiserror::Error)]
#[error("{lockfile}: no apt-index pin for {suite} (--locked); run `kci-build lock --refresh {suite}` and commit the lockfile")]
pub struct MissingPin {
    pub lockfile: String,
    pub suite: SuiteId,
}

/// The suites the image recipes bootstrap from, with their origins.
pub fn image_suites(ws: &Workspace) -> anyhow::Result<Vec<SuiteSource>> {
    let mut out = Vec::new();
    for t in ws.graph.targets() {
        let TargetKind::Bootstrap(b) = &t.kind else {
            continue;
        };
        let Some(mirror) = b.mirror_url(ws.env.debian_mirror.as_deref()) else {
            continue; // planning names the missing mirror
        };
        let src = SuiteSource::of_mirror(mirror, &b.suite).map_err(|e| {
            anyhow::anyhow!(
                "{}: target ({}).bootstrap: {e}",
                t.recipe_file.display(),
                t.name
            )
        })?;
        if !out.contains(&src) {
            out.push(src);
        }
    }
    out.sort();
    Ok(out)
}

/// The suite a rootfs config installs from: its release, from its mirror.
pub fn rootfs_suite(
    mirror: &str,
    recipe: &crate::rootfs::RootfsRecipe,
) -> anyhow::Result<SuiteSource> {
    SuiteSource::of_mirror(mirror, &recipe.debian_release)
        .map_err(|e| anyhow::anyhow!("rootfs config {}: {e}", recipe.name))
}

/// Pins every suite of `suites` the workspace's lockfile lacks (refused when `locked`), so
/// the keys of this run can be computed; the pins are written with the lockfile.
pub async fn pin_missing(
    ws: &mut Workspace,
    suites: &[SuiteSource],
    locked: bool,
    printer: &Printer,
) -> anyhow::Result<()> {
    let lockfile = ws.paths.lockfile.clone();
    let have = ws.lock.apt_index.clone();
    let pins = resolve(ws, &have, suites, locked, &lockfile, printer).await?;
    ws.pins = crate::core::lockfile::pins_of(&pins);
    ws.lock.apt_index = pins;
    Ok(())
}

/// `have` plus a pin of today's index for every suite of `suites` it lacks (refused when
/// `locked`, naming `lockfile`).
pub async fn resolve(
    ws: &Workspace,
    have: &BTreeMap<SuiteId, LockedIndex>,
    suites: &[SuiteSource],
    locked: bool,
    lockfile: &std::path::Path,
    printer: &Printer,
) -> anyhow::Result<BTreeMap<SuiteId, LockedIndex>> {
    let mut pins = have.clone();
    for src in suites {
        if pins.contains_key(&src.id) {
            continue;
        }
        if locked {
            return Err(MissingPin {
                lockfile: lockfile.display().to_string(),
                suite: src.id.clone(),
            }
            .into());
        }
        let pin = current(ws, src).await?;
        printer.status("Pinning", describe(&src.id, &pin));
        pins.insert(src.id.clone(), pin);
    }
    Ok(pins)
}

/// Today's index of `src`, fetched and kept in the workspace's store.
pub async fn current(ws: &Workspace, src: &SuiteSource) -> Result<LockedIndex, AptError> {
    let store = Store::open(ws.store.root())?;
    let cache = AptCache::new(store, ws.env.apt_upstream.clone(), BTreeMap::new());
    let (inrelease, release) = cache.current(&src.origin, &src.id).await?;
    Ok(LockedIndex {
        inrelease,
        date: release.date,
    })
}

/// `debian/bookworm: sha256:1234abcd… (Sat, 08 Nov 2025 09:00:00 UTC)`.
pub fn describe(suite: &SuiteId, pin: &LockedIndex) -> String {
    match &pin.date {
        Some(d) => format!("{suite} to InRelease {} ({d})", pin.inrelease.short()),
        None => format!("{suite} to InRelease {}", pin.inrelease.short()),
    }
}

/// The cache a run of this workspace builds through: in the workspace's store even when the
/// outputs go to another (`check`'s scratch store rebuilds from the same cache).
pub fn cache(ws: &Workspace) -> AptCache {
    AptCache::new(
        ws.store.clone(),
        ws.env.apt_upstream.clone(),
        ws.pins.clone(),
    )
}
