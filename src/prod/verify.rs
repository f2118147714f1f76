//! The pipe-cleaner verdict (`kci-build prod verify`, and the last step of `prod run`):
//! when the revision's results have settled — its trigger build finished in Jenkins and its
//! counts unchanged for the settle period — read it and the previous revisions from
//! kernelci-backend, compare ([`crate::core::verdict`]), draw the chart, and, when asked,
//! stop the monitor job as the procedure tells an operator to.
//!
//! Settling is observed, not assumed: every read of the revision is kept in
//! `<state>/verify/<kernel>.json` with the time its counts last changed, so separate
//! invocations (a cron job, an operator asking twice) judge the same way `--wait` does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::backend::{self, BackendApi, HttpBackend};
use crate::core::verdict::{self, Comparison, Metric, Revision};
use crate::error::NotSettled;
use crate::fsutil;
use crate::jenkins::{HttpJenkins, JenkinsApi};

/// What to do when the pipe cleaner's results differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFail {
    /// Disable kernel-tree-monitor, so no new revision is built (the procedure's advice).
    DisableMonitor,
}

/// How `verify` is asked to judge (the command line; `prod run` waits, and acts on nothing).
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub revision: Option<String>,
    pub previous: Option<usize>,
    pub wait: bool,
    pub chart: Option<PathBuf>,
    pub on_fail: Option<OnFail>,
}

/// What a verify found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub comparison: Comparison,
    /// The SVG chart written.
    pub chart: PathBuf,
    /// `--on-fail disable-monitor` disabled the monitor job.
    pub monitor_disabled: bool,
}

/// The last read of a revision (every metric of the comparison) and since when none of
/// them has changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Seen {
    /// Values as text (six decimals): a float read back from JSON may differ in its last
    /// bit, and equal must stay equal.
    metrics: Vec<(Metric, Option<String>)>,
    /// Seconds since the epoch.
    unchanged_since: u64,
}

fn metrics(r: &Revision) -> Vec<(Metric, Option<String>)> {
    Metric::ALL
        .iter()
        .map(|m| (*m, m.value(r).map(|v| format!("{v:.6}"))))
        .collect()
}

/// Whether `now`'s read of a revision is settled, given the last one: its counts have not
/// changed for `settle` seconds. Returns the record to keep.
fn settle(last: Option<Seen>, now: &Revision, at: u64, settle: u64) -> (Seen, Result<(), String>) {
    let metrics = metrics(now);
    let since = match &last {
        Some(l) if l.metrics == metrics => l.unchanged_since,
        _ => at,
    };
    let unchanged = at.saturating_sub(since);
    let counts = format!(
        "{} builds, {} test cases, {} regressions",
        now.builds.total, now.tests.total, now.regressions
    );
    let verdict = if unchanged >= settle {
        Ok(())
    } else if last.is_none() {
        Err(format!(
            "{counts}: first read, settled after {settle} s unchanged"
        ))
    } else {
        Err(format!(
            "{counts}: unchanged for {unchanged} s of {settle} s"
        ))
    };
    (
        Seen {
            metrics,
            unchanged_since: since,
        },
        verdict,
    )
}

fn seen_path(state: &Path, kernel: &str) -> PathBuf {
    state.join("verify").join(format!("{kernel}.json"))
}

fn read_seen(path: &Path) -> Option<Seen> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fsutil::atomic_write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// What the judge needs from the procedure: where state goes, the backend, how to tell
/// whether the trigger build is done, how to say progress.
pub struct Judge<'a> {
    pub state: PathBuf,
    pub backend: HttpBackend,
    pub site: &'a crate::core::site::VerifySite,
    pub poll: Duration,
    pub printer: &'a crate::printer::Printer,
}

impl Judge<'_> {
    /// Waits (with `wait`, bounded) until `kernel` has settled — its trigger build (`job`,
    /// number), when known, finished, and its counts unchanged for the settle period — then
    /// reads the `previous` revisions before it.
    pub async fn judge(
        &self,
        kernel: &str,
        previous: usize,
        wait: bool,
        trigger: Option<(&HttpJenkins, &str, u64)>,
    ) -> anyhow::Result<(Revision, Vec<Revision>)> {
        let deadline = Instant::now() + Duration::from_secs(self.site.wait_minutes * 60);
        let path = seen_path(&self.state, kernel);
        let spinner = wait.then(|| self.printer.spinner("Settling")).flatten();
        let new = loop {
            let now =
                backend::revision(&self.backend, &self.site.job, &self.site.branch, kernel).await?;
            let at = crate::prod::journal::epoch_secs();
            let (seen, counts) = settle(read_seen(&path), &now, at, self.site.settle_seconds);
            write(&path, &serde_json::to_vec(&seen)?)?;
            let built = match trigger {
                Some((jenkins, job, n)) => {
                    let b = jenkins.build(job, n).await?;
                    if b.building {
                        Err(format!("its build {job} #{n} is still running"))
                    } else {
                        Ok(())
                    }
                }
                None => Ok(()),
            };
            let why_not = match (built, counts) {
                (Ok(()), Ok(())) => break now,
                (Err(t), _) => t,
                (_, Err(c)) => c,
            };
            if !wait || Instant::now() >= deadline {
                let waited = if wait {
                    " (waited the whole verify.wait-minutes)"
                } else {
                    ""
                };
                return Err(anyhow::Error::new(NotSettled {
                    what: format!(
                        "{kernel} has not settled{waited}: {why_not}; ask again later, or pass --wait"
                    ),
                }));
            }
            match &spinner {
                Some(s) => s.set_message(format!("{kernel}: {why_not}")),
                None => self
                    .printer
                    .status("Settling", format!("{kernel}: {why_not}")),
            }
            tokio::time::sleep(self.poll).await;
        };
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        let previous = self.previous_of(&new, previous).await?;
        Ok((new, previous))
    }

    /// The `n` revisions of the branch created before `new`, most recent first.
    async fn previous_of(&self, new: &Revision, n: usize) -> anyhow::Result<Vec<Revision>> {
        // The newest `/job` documents (one cheap request), enough to reach past `new` when
        // newer revisions exist; only the `n` compared with are read in full.
        let docs = self
            .backend
            .revisions(&self.site.job, &self.site.branch, n + 10)
            .await?;
        let mut before: Vec<_> = docs
            .into_iter()
            .filter(|d| d.created_ms < new.created_ms && d.kernel != new.kernel)
            .collect();
        before.sort_by_key(|d| std::cmp::Reverse(d.created_ms));
        let mut out = Vec::with_capacity(n);
        for d in before.into_iter().take(n) {
            out.push(
                backend::revision(&self.backend, &self.site.job, &self.site.branch, &d.kernel)
                    .await?,
            );
        }
        Ok(out)
    }
}

/// The comparison and its chart (written atomically to `chart`).
pub fn conclude(
    new: &Revision,
    previous: &[Revision],
    thresholds: &verdict::Thresholds,
    chart: &Path,
) -> anyhow::Result<Comparison> {
    let comparison = verdict::compare(new, previous, thresholds);
    let mut revisions: Vec<Revision> = previous.to_vec();
    revisions.push(new.clone());
    write(chart, verdict::svg(&revisions, &new.kernel).as_bytes())?;
    Ok(comparison)
}

/// The chart's default place.
pub fn default_chart(state: &Path, kernel: &str) -> PathBuf {
    state.join("verify").join(format!("{kernel}.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(builds: u64) -> Revision {
        let mut r = Revision {
            kernel: "k".into(),
            ..Revision::default()
        };
        r.builds.total = builds;
        r.builds.pass = builds / 3;
        r.tests.total = 1200;
        r.tests.pass = 1094;
        r
    }

    #[test]
    fn counts_settle_after_the_period_without_growth() {
        let (seen, v) = settle(None, &rev(10), 1000, 60);
        assert!(v.unwrap_err().contains("first read"));
        let (seen, v) = settle(Some(seen), &rev(12), 1030, 60);
        assert!(
            v.unwrap_err().contains("unchanged for 0 s"),
            "growth restarts the clock"
        );
        let (seen, v) = settle(Some(seen), &rev(12), 1060, 60);
        assert!(v.unwrap_err().contains("unchanged for 30 s of 60 s"));
        // What is kept on disk reads back.
        let seen: Seen = serde_json::from_slice(&serde_json::to_vec(&seen).unwrap()).unwrap();
        let (_, v) = settle(Some(seen), &rev(12), 1090, 60);
        assert!(v.is_ok());
        // A zero settle period judges the first read.
        assert!(settle(None, &rev(1), 5, 0).1.is_ok());
    }
}
