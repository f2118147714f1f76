//! `kci-build lock --check`: for CI, fail when the lockfile does not describe the recipes.

use super::{Context, Report, Workspace};
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
    let drift = crate::core::plan::drift(&ws.lock, &planned, true);
    Ok(drift.iter().map(ToString::to_string).collect())
}
