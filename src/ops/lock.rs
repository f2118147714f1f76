//! `kci-build lock --check`: for CI, fail when the lockfile does not describe the recipes.

use super::{Context, Report, Workspace};
use crate::core::key::diff_facts;
use crate::core::plan::LockState;
use crate::printer::Printer;

/// What `lock --check` found.
#[derive(Debug, serde::Serialize)]
pub struct LockReport {
    pub lockfile: std::path::PathBuf,
    pub targets: usize,
    /// Empty: the lockfile describes the recipes.
    pub problems: Vec<String>,
}

impl Report for LockReport {
    fn show(&self, printer: &Printer) {
        if self.problems.is_empty() {
            printer.status(
                "Checked",
                format!(
                    "{} matches the recipes ({} targets)",
                    self.lockfile.display(),
                    self.targets
                ),
            );
        }
    }

    fn verdict(&self) -> anyhow::Result<()> {
        if !self.problems.is_empty() {
            anyhow::bail!(
                "{} is out of date:\n  {}\nhelp: run `kci-build build` and commit the lockfile",
                self.lockfile.display(),
                self.problems.join("\n  ")
            );
        }
        Ok(())
    }
}

pub fn run(ctx: &Context) -> anyhow::Result<LockReport> {
    let ws = ctx.workspace()?;
    Ok(LockReport {
        lockfile: ws.paths.lockfile.clone(),
        targets: ws.lock.targets.len(),
        problems: problems(&ws)?,
    })
}

/// The problems found; empty means the lockfile is up to date.
fn problems(ws: &Workspace) -> anyhow::Result<Vec<String>> {
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
