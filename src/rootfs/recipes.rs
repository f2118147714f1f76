//! Reading rootfs recipes (`recipes/*.toml`) and what a recipe resolves to on this machine:
//! the shared ground of `kci-build rootfs` and `kci-build why CONFIG/ARCH`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::RootfsRecipe;
use crate::core::rootfs_lock::RootfsManifest;

/// Reads every `recipes/*.toml`; the file stem must be the recipe's name.
pub fn load_recipes(dir: &Path) -> anyhow::Result<Vec<RootfsRecipe>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading recipes from {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "config.toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
        let r = RootfsRecipe::parse(&f, &text)?;
        out.push(r);
    }
    Ok(out)
}

/// Every source of one kind (`[git-source.*]`, `[url-source.*]`) the recipes name, by name,
/// picked by `pick`; two recipes naming one name for different sources are refused, naming
/// both files and each source as `show` writes it.
pub fn named_sources<S: Clone + PartialEq>(
    recipes_dir: &Path,
    recipes: &[RootfsRecipe],
    kind: &str,
    pick: impl Fn(&RootfsRecipe) -> &std::collections::BTreeMap<String, S>,
    show: impl Fn(&S) -> String,
) -> anyhow::Result<std::collections::BTreeMap<String, S>> {
    let mut out: std::collections::BTreeMap<String, (S, &str)> = Default::default();
    for r in recipes {
        for (name, spec) in pick(r) {
            match out.get(name) {
                Some((other, by)) if other != spec => anyhow::bail!(
                    "{kind} `{name}` is {} in {} but {} in {}: one name, one source",
                    show(other),
                    recipes_dir.join(format!("{by}.toml")).display(),
                    show(spec),
                    recipes_dir.join(format!("{}.toml", r.name)).display()
                ),
                _ => {
                    out.insert(name.clone(), (spec.clone(), &r.name));
                }
            }
        }
    }
    Ok(out.into_iter().map(|(n, (s, _))| (n, s)).collect())
}

/// The recipe named `config`, or an error listing the known ones.
pub fn find_recipe<'r>(
    recipes: &'r [RootfsRecipe],
    recipes_dir: &Path,
    config: &str,
) -> anyhow::Result<&'r RootfsRecipe> {
    recipes.iter().find(|r| r.name == config).with_context(|| {
        format!(
            "no rootfs recipe `{config}` in {} (known: {})",
            recipes_dir.display(),
            recipes
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// A recipe's Debian mirror: its own, or for `auto` the machine's (`machine`).
pub fn mirror_of(
    recipes_dir: &Path,
    r: &RootfsRecipe,
    machine: Option<&str>,
) -> anyhow::Result<String> {
    if r.mirror != "auto" {
        return Ok(r.mirror.clone());
    }
    machine.map(str::to_owned).with_context(|| {
        format!(
            "{}: mirror = \"auto\" but no Debian mirror is configured: set KCI_DEBIAN_MIRROR",
            recipes_dir.join(format!("{}.toml", r.name)).display()
        )
    })
}

/// The manifest of a finished rootfs directory (`<store>/rootfs/<key>/manifest.json`), if
/// it is there and readable.
pub fn read_manifest(key_dir: &Path) -> Option<RootfsManifest> {
    let bytes = std::fs::read(key_dir.join(super::pack::MANIFEST)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
