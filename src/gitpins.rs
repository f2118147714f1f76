//! The git source pins of the rootfs recipes: pinning the sources the rootfs lockfile lacks
//! (the first build after a recipe names one, like the apt index pins), refusing that under
//! `--locked`, making sure the store holds every pinned commit, `lock --refresh` moving them
//! to today's commit of their ref, and the served copies a build gets.
//!
//! Without a refresh nothing moves, whatever the upstream branch does.

use std::collections::BTreeMap;
use std::path::Path;

use crate::core::gitsource::{self, GitSourceSpec, LockedSource};
use crate::gitstore::GitStore;
use crate::printer::Printer;
use crate::rootfs::RootfsRecipe;

/// A source the lockfile must pin and does not, under `--locked`.
#[derive(Debug, thiserror::Error)]
#[error("{lockfile}: no pin for git source `{name}` ({url} {git_ref}) (--locked); run `kci-build rootfs` or `kci-build lock --refresh` and commit the lockfile")]
pub struct MissingGitPin {
    pub lockfile: String,
    pub name: String,
    pub url: String,
    pub git_ref: String,
}

/// Every source the recipes name, by name; two recipes naming one name for different URLs
/// or refs are refused, naming both files.
pub fn specs_of(
    recipes_dir: &Path,
    recipes: &[RootfsRecipe],
) -> anyhow::Result<BTreeMap<String, GitSourceSpec>> {
    crate::rootfs::recipes::named_sources(
        recipes_dir,
        recipes,
        "git source",
        |r| &r.git_source,
        |s| format!("{} {}", s.url, s.git_ref),
    )
}

/// The pins of a run: `have`'s pins of every source `all` names, plus a pin of today's
/// commit for each of `wanted` that has none (or one of another URL or ref), refused when
/// `locked`. Every pin of `wanted` is then in the store, verified.
pub fn resolve(
    store: &GitStore,
    have: &BTreeMap<String, LockedSource>,
    all: &BTreeMap<String, GitSourceSpec>,
    wanted: &BTreeMap<String, GitSourceSpec>,
    locked: bool,
    lockfile: &Path,
    printer: &Printer,
) -> anyhow::Result<BTreeMap<String, LockedSource>> {
    let mut pins = gitsource::pins_for(all, have);
    for (name, spec) in wanted {
        if !pins.contains_key(name) {
            if locked {
                return Err(MissingGitPin {
                    lockfile: lockfile.display().to_string(),
                    name: name.clone(),
                    url: spec.url.clone(),
                    git_ref: spec.git_ref.clone(),
                }
                .into());
            }
            let pin = store.resolve(name, &spec.url, &spec.git_ref)?;
            printer.status(
                "Pinned",
                format!(
                    "git source {name}: {} ({} of {})",
                    pin.commit.short(),
                    spec.git_ref,
                    spec.url
                ),
            );
            pins.insert(name.clone(), pin);
        }
        store.ensure(name, &pins[name])?;
    }
    Ok(pins)
}

/// Writes into `dir` what a build of a recipe with `pins` gets under `/kci/git`: a served
/// copy `<name>.git` of each, and `gitconfig`.
pub fn serve(
    store: &GitStore,
    pins: &BTreeMap<String, LockedSource>,
    dir: &Path,
) -> anyhow::Result<()> {
    for (name, pin) in pins {
        store.serve(name, pin, &dir.join(format!("{name}.git")))?;
    }
    let config = dir.join("gitconfig");
    std::fs::write(&config, gitsource::build_gitconfig(pins))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", config.display()))?;
    Ok(())
}

/// The error for a build whose log shows it cloned `url`, which `config` does not pin.
pub fn unpinned_hint(recipes_dir: &Path, config: &str, url: &str) -> String {
    format!(
        "the script cloned {url}, which no git source of the recipe pins, so nothing was fetched; \
         pin it in {}:\n    [git-source.{}]\n    url = \"{url}\"\n    ref = \"<branch or tag>\"",
        recipes_dir.join(format!("{config}.toml")).display(),
        gitsource::suggested_name(url)
    )
}
