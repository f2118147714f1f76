//! `kci-build load [TARGET…]`: put stored images into the local Docker daemon under their
//! human names (`{prefix}{image}:{tag}`), to run them or hand them to other tools.

use anyhow::bail;

use super::build::ensure_loaded;
use super::push::repository;
use super::Workspace;
use crate::core::names::TargetName;
use crate::core::plan::Status;
use crate::docker::{DockerEngine, Engine};
use crate::printer::Printer;

pub async fn run(ws: &Workspace, targets: &[TargetName], printer: &Printer) -> anyhow::Result<()> {
    let sel = ws.selection(targets)?;
    let contexts = ws.scan_contexts(&sel)?;
    let planned = ws.plan(&sel, &contexts)?;
    let engine = DockerEngine::connect().await?;
    for p in &planned {
        if !targets.is_empty() && !targets.contains(&p.recipe.name) {
            continue;
        }
        if p.status != Status::Cached {
            bail!(
                "{} is not built for its current inputs: run `kci-build build` first",
                p.recipe.name
            );
        }
        if matches!(p.recipe.kind, crate::core::recipe::TargetKind::Index { .. }) {
            if targets.contains(&p.recipe.name) {
                bail!(
                    "{} is a multi-platform index; load one of its members",
                    p.recipe.name
                );
            }
            continue;
        }
        let img = ws
            .store
            .lookup(p.key.as_ref().expect("cached"))
            .expect("cached targets are stored");
        ensure_loaded(&engine, &ws.store, &img).await?;
        let repo = repository(&ws.settings.prefix, &img.target);
        engine
            .tag(img.config.as_str(), &repo, img.target.tag())
            .await?;
        printer.status(
            "Loaded",
            format!("{repo}:{} ({})", img.target.tag(), img.config.short()),
        );
    }
    Ok(())
}
