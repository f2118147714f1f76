//! `kci-build lock --check`: for CI, fail when the lockfile does not describe the recipes.

use super::Workspace;
use crate::core::key::diff_facts;
use crate::core::plan::LockState;

/// The problems found; empty means the lockfile is up to date.
pub fn check(ws: &Workspace) -> anyhow::Result<Vec<String>> {
    let planned = ws.plan_for(&[])?;
    let mut problems = Vec::new();
    for p in &planned {
        let name = &p.recipe.name;
        match p.lock {
            LockState::Same => {}
            LockState::New => problems.push(format!("{name}: not in the lockfile")),
            LockState::Changed => {
                let locked = &ws.lock.targets[name];
                let changes = diff_facts(&locked.input, &p.inputs.facts());
                let what = if changes.is_empty() {
                    "its key".to_owned()
                } else {
                    changes
                        .iter()
                        .map(|c| c.path.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                problems.push(format!("{name}: inputs changed ({what})"));
            }
        }
    }
    for name in ws.lock.targets.keys() {
        if ws.graph.get(name).is_none() {
            problems.push(format!("{name}: locked but no recipe declares it"));
        }
    }
    Ok(problems)
}
