//! `kci-build load [TARGET…]`: put stored images into the local Docker daemon under their
//! human names (`{prefix}{image}:{tag}`), to run them or hand them to other tools.

use anyhow::bail;

use super::{Context, Done};
use crate::core::names::TargetName;
use crate::engine::{DockerEngine, Engine};
use crate::imagebuild::ensure_loaded;
use crate::publish::repository;

pub async fn run(ctx: &Context, targets: &[TargetName]) -> anyhow::Result<Done> {
    let ws = &ctx.workspace()?;
    let printer = &ctx.printer;
    let planned = ws.plan_for(targets)?;
    let engine = DockerEngine::connect(&ws.env.engine).await?;
    for p in &planned {
        if !targets.is_empty() && !targets.contains(&p.recipe.name) {
            continue;
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
        let img = ws.stored(p)?;
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
    Ok(Done {})
}
