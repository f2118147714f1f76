//! `kci-build plan`: the graph with keys and status, computed without side effects; with
//! `--engines N`, the schedule a build would run on N engines (image targets, or with
//! `--rootfs` the rootfs matrix), from the durations the store recorded of earlier builds.

use serde::Serialize;

mod schedule;

use super::{Context, TextReport, Workspace};
use crate::core::names::TargetName;
use crate::core::plan::{LockState, PlannedTarget, Status};

#[derive(Debug, Serialize)]
pub struct PlanEntry {
    pub name: String,
    pub parent: Option<String>,
    pub key: Option<String>,
    pub status: Status,
    pub lock: LockState,
    pub manifest: Option<String>,
}

pub fn entries(planned: &[PlannedTarget<'_>]) -> Vec<PlanEntry> {
    planned
        .iter()
        .map(|p| PlanEntry {
            name: p.recipe.name.to_string(),
            parent: p.recipe.kind.parent().map(|x| x.to_string()),
            key: p.key.as_ref().map(|k| k.to_string()),
            status: p.status,
            lock: p.lock,
            manifest: p.stored.as_ref().map(|m| m.to_string()),
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Targets to plan (with their parents); all when empty.
    pub targets: Vec<TargetName>,
    pub json: bool,
    /// Schedule the build on this many engines.
    pub engines: Option<usize>,
    /// Schedule as on an empty store: every target (or rootfs build) counts.
    pub cold: bool,
    /// Schedule the rootfs matrix of this recipes directory instead of the images.
    pub rootfs: Option<std::path::PathBuf>,
}

/// Runs the plan and renders it for stdout: JSON, or an indented tree; or the schedule.
pub fn run(ctx: &Context, opts: &PlanOptions) -> anyhow::Result<TextReport> {
    let ws = ctx.workspace()?;
    let text = match opts.engines {
        Some(n) => schedule::render(&ws, opts, n)?,
        None => render(&ws, &opts.targets, opts.json)?,
    };
    Ok(TextReport { text })
}

fn render(ws: &Workspace, targets: &[TargetName], json: bool) -> anyhow::Result<String> {
    let planned = ws.plan_for(targets)?;
    let entries = entries(&planned);
    if json {
        return Ok(serde_json::to_string_pretty(&entries)? + "\n");
    }
    // Depth-first from the roots, so each target is printed under its parent.
    let mut order: Vec<(usize, &PlanEntry)> = Vec::new();
    let mut stack: Vec<(usize, &PlanEntry)> = entries
        .iter()
        .filter(|e| e.parent.is_none())
        .rev()
        .map(|e| (0, e))
        .collect();
    while let Some((depth, e)) = stack.pop() {
        order.push((depth, e));
        stack.extend(
            entries
                .iter()
                .filter(|c| c.parent.as_deref() == Some(e.name.as_str()))
                .rev()
                .map(|c| (depth + 1, c)),
        );
    }
    let width = order
        .iter()
        .map(|(d, e)| e.name.len() + 2 * d)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (depth, e) in order {
        let name = format!("{}{}", "  ".repeat(depth), e.name);
        let key = e.key.as_deref().map(|k| &k[7..19]).unwrap_or("(unknown)");
        out.push_str(&format!(
            "{name:width$}  {key:12}  {:20}  {}\n",
            e.status.as_str(),
            e.lock.as_str()
        ));
    }
    Ok(out)
}
