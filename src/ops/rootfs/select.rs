//! Stage "select": the recipes of `recipes/*.toml`, checked, and the configs and arches
//! this run builds.

use std::path::Path;

use anyhow::bail;

use crate::rootfs::recipes::find_recipe;
use crate::rootfs::RootfsRecipe;

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
