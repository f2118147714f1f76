//! Pausing KernelCI's Jenkins before an update (PROCEDURE.md §1.2), as kernelci-deploy did
//! it but bounded and reported: stop the monitor discovering new revisions, abort the trigger
//! builds that have not reached the labs yet (the monitor recreates them later), wait for the
//! rest to finish, stop bisections. [`wait`] is the job-idle wait it is made of.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::jenkins::{human_duration, JenkinsApi, JenkinsError, BUILDS_SCANNED};
use crate::printer::Printer;

/// The jobs pause touches, and how often it polls.
#[derive(Debug, Clone)]
pub struct PauseOptions {
    pub monitor_job: String,
    pub trigger_job: String,
    pub bisection_job: String,
    pub poll: Duration,
    /// Give up (an error) when the builds are not done after this long.
    pub deadline: Option<Duration>,
}

impl Default for PauseOptions {
    fn default() -> Self {
        PauseOptions {
            monitor_job: "kernel-tree-monitor".into(),
            trigger_job: "kernel-build-trigger".into(),
            bisection_job: "lava-bisection".into(),
            poll: Duration::from_secs(15),
            deadline: None,
        }
    }
}

/// Where a wait is, each time it polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitProgress {
    pub job: String,
    /// Builds still running, newest first.
    pub running: Vec<u64>,
    pub elapsed: Duration,
}

impl std::fmt::Display for WaitProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs();
        let n = self.running.len();
        write!(
            f,
            "{}: {n} build{} still running, elapsed {}m{:02}s",
            self.job,
            if n == 1 { "" } else { "s" },
            secs / 60,
            secs % 60
        )
    }
}

/// What a [`wait`] saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WaitReport {
    pub job: String,
    /// Every build found running, in the order found.
    pub waited_for: Vec<u64>,
    pub waited_ms: u64,
}

/// A build pause aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Aborted {
    pub job: String,
    pub number: u64,
    pub reason: &'static str,
}

/// What [`pause`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PauseReport {
    /// Jobs disabled now.
    pub disabled: Vec<String>,
    /// Jobs that were disabled already (a resumed run).
    pub already_disabled: Vec<String>,
    pub aborted: Vec<Aborted>,
    /// The trigger builds waited for (they had reached the labs).
    pub trigger_wait: WaitReport,
    /// The aborted bisection builds, waited for until they stopped.
    pub bisection_wait: WaitReport,
    pub took_ms: u64,
}

/// A progress callback that reports through the printer: a spinner on a terminal, else a
/// status line whenever the count changes or a minute has passed.
pub fn printer_progress(printer: &Printer) -> impl FnMut(&WaitProgress) + Send + 'static {
    let printer = printer.clone();
    let mut spinner: Option<(String, indicatif::ProgressBar)> = None;
    let mut last: Option<(String, usize, Duration)> = None;
    move |p: &WaitProgress| {
        if spinner.as_ref().is_none_or(|(job, _)| *job != p.job) {
            if let Some((_, s)) = spinner.take() {
                s.finish_and_clear();
            }
            spinner = printer.spinner("Waiting").map(|s| (p.job.clone(), s));
        }
        if let Some((_, s)) = &spinner {
            s.set_message(p.to_string());
            if p.running.is_empty() {
                s.finish_and_clear();
            }
            return;
        }
        let changed = last.as_ref().is_none_or(|(job, n, at)| {
            *job != p.job
                || *n != p.running.len()
                || p.elapsed.saturating_sub(*at) >= Duration::from_secs(60)
        });
        if changed && !p.running.is_empty() {
            printer.status("Waiting", p);
            last = Some((p.job.clone(), p.running.len(), p.elapsed));
        }
    }
}

fn timeout(job: &str, running: &[u64], started: Instant) -> JenkinsError {
    JenkinsError::Timeout {
        what: format!(
            "waiting for job `{job}` to be idle ({} still running: {})",
            running.len(),
            running
                .iter()
                .map(|n| format!("#{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        waited: human_duration(started.elapsed()),
    }
}

/// The builds of `job` running now, among the newest [`BUILDS_SCANNED`], newest first.
pub async fn running<J: JenkinsApi>(jenkins: &J, job: &str) -> Result<Vec<u64>, JenkinsError> {
    let state = jenkins.job(job).await?;
    let mut out = Vec::new();
    for n in state.builds.into_iter().take(BUILDS_SCANNED) {
        if jenkins.build(job, n).await?.building {
            out.push(n);
        }
    }
    Ok(out)
}

/// Waits until `job` is idle: the running builds among its newest 100 are re-polled every
/// `poll`, finished ones dropped; when none is left the job is scanned again (new builds may
/// have started); done when a scan finds none running. `deadline` bounds it (an error).
pub async fn wait<J: JenkinsApi>(
    jenkins: &J,
    job: &str,
    poll: Duration,
    deadline: Option<Duration>,
    progress: &mut (dyn FnMut(&WaitProgress) + Send),
) -> Result<WaitReport, JenkinsError> {
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut report = WaitReport {
        job: job.into(),
        ..WaitReport::default()
    };
    loop {
        let mut running = running(jenkins, job).await?;
        if running.is_empty() {
            break;
        }
        for n in &running {
            if seen.insert(*n) {
                report.waited_for.push(*n);
            }
        }
        while !running.is_empty() {
            progress(&WaitProgress {
                job: job.into(),
                running: running.clone(),
                elapsed: started.elapsed(),
            });
            let mut nap = poll;
            if let Some(d) = deadline {
                let left = d.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(timeout(job, &running, started));
                }
                nap = nap.min(left);
            }
            tokio::time::sleep(nap).await;
            let mut still = Vec::with_capacity(running.len());
            for n in running {
                if jenkins.build(job, n).await?.building {
                    still.push(n);
                }
            }
            running = still;
        }
    }
    progress(&WaitProgress {
        job: job.into(),
        running: Vec::new(),
        elapsed: started.elapsed(),
    });
    report.waited_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

/// Disables `job`, noting whether it was disabled already.
async fn disable<J: JenkinsApi>(
    jenkins: &J,
    job: &str,
    report: &mut PauseReport,
) -> Result<(), JenkinsError> {
    let was = jenkins.job(job).await?.disabled();
    jenkins.disable(job).await?;
    if was {
        report.already_disabled.push(job.into());
    } else {
        report.disabled.push(job.into());
    }
    Ok(())
}

/// Pauses KernelCI's Jenkins (PROCEDURE.md §1.2): disable the monitor; abort every running
/// trigger build with no artifacts yet; wait for the trigger job to be idle; disable the
/// bisection job, abort its running builds and wait until they have stopped. Safe to run
/// again: disabled jobs stay disabled, finished builds are left alone.
pub async fn pause<J: JenkinsApi>(
    jenkins: &J,
    opts: &PauseOptions,
    progress: &mut (dyn FnMut(&WaitProgress) + Send),
) -> Result<PauseReport, JenkinsError> {
    let started = Instant::now();
    let left = |d: Option<Duration>| d.map(|d| d.saturating_sub(started.elapsed()));
    let mut report = PauseReport::default();

    disable(jenkins, &opts.monitor_job, &mut report).await?;

    let trigger = &opts.trigger_job;
    for n in running(jenkins, trigger).await? {
        // Read again just before deciding: it may have archived since the scan.
        let b = jenkins.build(trigger, n).await?;
        if b.building && b.artifacts == 0 {
            jenkins.stop(trigger, n).await?;
            report.aborted.push(Aborted {
                job: trigger.clone(),
                number: n,
                reason: "no artifacts yet: it had not reached the labs",
            });
        }
    }
    report.trigger_wait = wait(jenkins, trigger, opts.poll, left(opts.deadline), progress).await?;

    let bisection = &opts.bisection_job;
    disable(jenkins, bisection, &mut report).await?;
    for n in running(jenkins, bisection).await? {
        jenkins.stop(bisection, n).await?;
        report.aborted.push(Aborted {
            job: bisection.clone(),
            number: n,
            reason: "bisections are paused",
        });
    }
    report.bisection_wait =
        wait(jenkins, bisection, opts.poll, left(opts.deadline), progress).await?;
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jenkins::fake::FakeJenkins;
    use crate::jenkins::Params;

    fn opts() -> PauseOptions {
        PauseOptions {
            poll: Duration::from_millis(1),
            ..PauseOptions::default()
        }
    }

    #[tokio::test]
    async fn wait_drops_finished_builds_and_rescans_for_new_ones() {
        let j = FakeJenkins::new();
        j.add_build("t", 0, 1, Params::new()); // finished
        j.add_build("t", 2, 1, Params::new()); // #2 runs two more polls
        j.add_build("t", 5, 1, Params::new()); // #3 runs five
        j.add_build_at_scan("t", 2, 3); // #4 starts just before the second scan
        let mut seen = Vec::new();
        let report = wait(&j, "t", Duration::from_millis(1), None, &mut |p| {
            seen.push(p.running.clone())
        })
        .await
        .unwrap();
        assert_eq!(report.waited_for, vec![3, 2, 4]);
        assert_eq!(seen.first(), Some(&vec![3, 2]));
        // #2 is dropped once finished while #3 is still polled.
        assert!(seen.contains(&vec![3]), "{seen:?}");
        assert_eq!(seen.last(), Some(&vec![]));
        // Three scans of the job: the first, the one that found #4, the idle one.
        let scans = j.calls().iter().filter(|c| *c == "job t").count();
        assert_eq!(scans, 3, "{:?}", j.calls());
    }

    #[tokio::test]
    async fn pause_aborts_unstarted_triggers_waits_for_the_rest_and_stops_bisections() {
        let j = FakeJenkins::new();
        let o = opts();
        j.add_job(&o.monitor_job);
        j.add_build(&o.trigger_job, 0, 3, Params::new()); // #1 done
        j.add_build(&o.trigger_job, 4, 2, Params::new()); // #2 in the labs
        j.add_build(&o.trigger_job, 9, 0, Params::new()); // #3 not started
        j.add_build(&o.bisection_job, 50, 0, Params::new()); // #1 bisecting
        let report = pause(&j, &o, &mut |_| {}).await.unwrap();
        assert_eq!(
            report.disabled,
            vec![o.monitor_job.clone(), o.bisection_job.clone()]
        );
        assert!(j.is_disabled(&o.monitor_job) && j.is_disabled(&o.bisection_job));
        assert!(!j.is_disabled(&o.trigger_job));
        let aborted: Vec<(String, u64)> = report
            .aborted
            .iter()
            .map(|a| (a.job.clone(), a.number))
            .collect();
        assert_eq!(
            aborted,
            vec![(o.trigger_job.clone(), 3), (o.bisection_job.clone(), 1)]
        );
        assert!(report.trigger_wait.waited_for.contains(&2));
        assert_eq!(j.result_of(&o.trigger_job, 2).as_deref(), Some("SUCCESS"));
        assert_eq!(j.result_of(&o.trigger_job, 3).as_deref(), Some("ABORTED"));
        assert_eq!(j.result_of(&o.bisection_job, 1).as_deref(), Some("ABORTED"));
        // The monitor is disabled before anything is aborted.
        let calls = j.calls();
        let disable = calls
            .iter()
            .position(|c| c == "disable kernel-tree-monitor");
        let first_stop = calls.iter().position(|c| c.starts_with("stop "));
        assert!(disable < first_stop, "{calls:?}");
        // A second run finds everything done.
        let again = pause(&j, &o, &mut |_| {}).await.unwrap();
        assert!(again.aborted.is_empty() && again.disabled.is_empty());
        assert_eq!(again.already_disabled.len(), 2);
    }

    #[tokio::test]
    async fn a_wait_past_its_deadline_is_an_environment_error_naming_the_builds() {
        let j = FakeJenkins::new();
        j.add_build("t", u32::MAX, 1, Params::new());
        let err = wait(
            &j,
            "t",
            Duration::from_millis(5),
            Some(Duration::from_millis(30)),
            &mut |_| {},
        )
        .await
        .unwrap_err();
        assert!(matches!(err, JenkinsError::Timeout { .. }), "{err:?}");
        assert!(err.to_string().contains("#1"), "{err}");
        assert_eq!(err.fault(), crate::error::Fault::Environment);
    }

    #[test]
    fn progress_reads_as_counts_and_minutes() {
        let p = WaitProgress {
            job: "kernel-build-trigger".into(),
            running: vec![7, 6, 5],
            elapsed: Duration::from_secs(125),
        };
        assert_eq!(
            p.to_string(),
            "kernel-build-trigger: 3 builds still running, elapsed 2m05s"
        );
    }
}
