//! Stage "select": the recipes of `recipes/*.toml`, checked, and the configs and arches
//! this run builds.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::rootfs::RootfsRecipe;

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
        let r: RootfsRecipe = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", f.display(), e.to_string().trim_end()))?;
        let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if r.name != stem {
            bail!(
                "{}: name: `{}` must match the file name `{stem}`",
                f.display(),
                r.name
            );
        }
        if r.xz_preset() > 9 {
            bail!(
                "{}: xz-preset: {} is not an xz level (0–9)",
                f.display(),
                r.xz_preset()
            );
        }
        if !crate::core::rootfs_lock::valid_config_name(&r.name) {
            bail!(
                "{}: name: `{}` is not a plain config name",
                f.display(),
                r.name
            );
        }
        for a in &r.arch_list {
            if !crate::rootfs::DEBIAN_ARCHES.contains(&a.as_str()) {
                bail!(
                    "{}: arch-list: `{a}` is not a Debian architecture",
                    f.display()
                );
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// The recipe named `config`, or an error listing the known ones.
pub(super) fn find_recipe<'r>(
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

/// The configs named (all when none are), sorted; every `--arch` must be built by one.
pub(super) fn select(
    recipes: &[RootfsRecipe],
    recipes_dir: &Path,
    configs: &[String],
    arches: &[String],
) -> anyhow::Result<Vec<RootfsRecipe>> {
    let mut selected: Vec<RootfsRecipe> = if configs.is_empty() {
        recipes.to_vec()
    } else {
        configs
            .iter()
            .map(|c| find_recipe(recipes, recipes_dir, c).cloned())
            .collect::<anyhow::Result<_>>()?
    };
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    for a in arches {
        if !selected.iter().any(|r| r.arch_list.contains(a)) {
            bail!("--arch {a}: no selected config builds for {a}");
        }
    }
    Ok(selected)
}
