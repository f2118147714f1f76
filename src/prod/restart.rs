//! Knowing Jenkins is back after a restart (PROCEDURE.md §1.3). The old procedure restarted
//! the container and checked nothing (staging slept 60 s); python-jenkins's wait only checks
//! `X-Jenkins` and `mode`, so it takes the old instance, not yet gone, for the new one. This
//! wait records the `X-Jenkins-Session` before the restart and accepts only a new session
//! that is fully ready: `mode` present, not quieting down, the credentials accepted, the
//! expected jobs listed and, when asked, the agents online.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::jenkins::{human_duration, short, Instance, JenkinsApi, JenkinsError, Probe};
use crate::printer::Printer;

/// Which agents must be online before Jenkins counts as back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ExpectAgents {
    /// Agents are counted, not waited for.
    #[default]
    Ignore,
    /// Every agent Jenkins lists.
    All,
    /// These, by display name.
    Named(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ReadinessOptions {
    pub poll: Duration,
    /// How long to wait in all, from the start of the wait.
    pub deadline: Duration,
    /// Jobs the new instance must list (e.g. `job-dsl`, `kernel-tree-monitor`).
    pub expected_jobs: Vec<String>,
    pub agents: ExpectAgents,
}

impl Default for ReadinessOptions {
    fn default() -> Self {
        ReadinessOptions {
            poll: Duration::from_secs(5),
            deadline: Duration::from_secs(600),
            expected_jobs: Vec::new(),
            agents: ExpectAgents::Ignore,
        }
    }
}

/// How a restart ended, as far as the wait could see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// A new instance, ready.
    Back {
        version: String,
        session: String,
        jobs: usize,
        agents_online: usize,
        agents_total: usize,
        waited_ms: u64,
    },
    /// The old session was still served at the deadline: the restart never happened.
    NotObserved { old_session: String, waited_ms: u64 },
    /// The old instance went away but no ready new one was seen by the deadline.
    NeverBack { last_seen: String, waited_ms: u64 },
}

impl Verdict {
    pub fn is_back(&self) -> bool {
        matches!(self, Verdict::Back { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let took = |ms: &u64| human_duration(Duration::from_millis(*ms));
        match self {
            Verdict::Back {
                version,
                session,
                jobs,
                agents_online,
                agents_total,
                ..
            } => write!(
                f,
                "Jenkins is back: {version}, session {}, {jobs} jobs, {agents_online}/{agents_total} agents online",
                short(session)
            ),
            Verdict::NotObserved {
                old_session,
                waited_ms,
            } => write!(
                f,
                "restart not observed after {}: the old session {} is still served",
                took(waited_ms),
                short(old_session)
            ),
            Verdict::NeverBack {
                last_seen,
                waited_ms,
            } => write!(
                f,
                "Jenkins not back after {}: last seen {last_seen}",
                took(waited_ms)
            ),
        }
    }
}

/// Where the wait is, each poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadinessProgress {
    pub state: String,
    pub elapsed: Duration,
}

impl fmt::Display for ReadinessProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.elapsed.as_secs();
        write!(f, "{}, elapsed {}m{:02}s", self.state, s / 60, s % 60)
    }
}

/// A progress callback for the printer: a spinner on a terminal, else a status line when the
/// state changes.
pub fn printer_progress(printer: &Printer) -> impl FnMut(&ReadinessProgress) + Send + 'static {
    let printer = printer.clone();
    let spinner = printer.spinner("Restarting");
    let mut last = String::new();
    move |p: &ReadinessProgress| match &spinner {
        Some(s) => s.set_message(p.to_string()),
        None => {
            if p.state != last {
                printer.status("Restarting", p);
                last = p.state.clone();
            }
        }
    }
}

/// The session of the instance up now, to recognise its successor; an error when Jenkins
/// is not up.
pub async fn record_session<J: JenkinsApi>(jenkins: &J, url: &str) -> Result<String, JenkinsError> {
    match jenkins.probe().await? {
        Probe::Up(i) => Ok(i.session),
        Probe::Denied { status } => Err(JenkinsError::Credentials {
            url: url.into(),
            who: String::new(),
            status,
            hint: "; check the user and its API token",
        }),
        other => Err(JenkinsError::NotUp {
            url: url.into(),
            state: other.to_string(),
        }),
    }
}

/// Asks for a safe restart and waits for the new instance: [`record_session`], `POST
/// /safeRestart`, [`wait_ready`].
pub async fn restart<J: JenkinsApi>(
    jenkins: &J,
    url: &str,
    opts: &ReadinessOptions,
    progress: &mut (dyn FnMut(&ReadinessProgress) + Send),
) -> Result<Verdict, JenkinsError> {
    let old = record_session(jenkins, url).await?;
    jenkins.safe_restart().await?;
    wait_ready(jenkins, url, &old, opts, progress).await
}

/// Why a new instance is not ready yet, or `None` when it is; with the agent counts.
async fn not_ready<J: JenkinsApi>(
    jenkins: &J,
    i: &Instance,
    opts: &ReadinessOptions,
) -> Result<(Option<String>, usize, usize), JenkinsError> {
    let new = format!("new instance {}", short(&i.session));
    if i.mode.is_none() {
        return Ok((Some(format!("{new} up, still loading (no mode)")), 0, 0));
    }
    if i.quieting_down {
        return Ok((Some(format!("{new} up, quieting down")), 0, 0));
    }
    let who = jenkins.who_am_i().await?;
    if !who.authenticated || who.anonymous {
        return Ok((
            Some(format!("{new} up, but it sees the user as anonymous")),
            0,
            0,
        ));
    }
    let missing: Vec<&str> = opts
        .expected_jobs
        .iter()
        .filter(|name| !i.jobs.iter().any(|j| &j.name == *name))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Ok((
            Some(format!(
                "{new} up, jobs not loaded yet: {}",
                missing.join(", ")
            )),
            0,
            0,
        ));
    }
    let agents = jenkins.computers().await?;
    let online = agents.iter().filter(|a| a.online).count();
    let offline: Vec<&str> = match &opts.agents {
        ExpectAgents::Ignore => Vec::new(),
        ExpectAgents::All => agents
            .iter()
            .filter(|a| !a.online)
            .map(|a| a.name.as_str())
            .collect(),
        ExpectAgents::Named(names) => names
            .iter()
            .filter(|n| !agents.iter().any(|a| a.online && &a.name == *n))
            .map(String::as_str)
            .collect(),
    };
    if !offline.is_empty() {
        return Ok((
            Some(format!("{new} up, agents offline: {}", offline.join(", "))),
            online,
            agents.len(),
        ));
    }
    Ok((None, online, agents.len()))
}

/// Polls until a new instance (a session other than `old_session`) is ready, or the
/// deadline. Down, starting and the old session are "not yet"; refused credentials stop the
/// wait with an error.
pub async fn wait_ready<J: JenkinsApi>(
    jenkins: &J,
    url: &str,
    old_session: &str,
    opts: &ReadinessOptions,
    progress: &mut (dyn FnMut(&ReadinessProgress) + Send),
) -> Result<Verdict, JenkinsError> {
    let started = Instant::now();
    // Whether the old instance was seen gone (or replaced): decides NotObserved.
    let mut left = false;
    let last_seen = loop {
        let state = match jenkins.probe().await {
            Ok(Probe::Denied { status }) => {
                return Err(JenkinsError::Credentials {
                    url: url.into(),
                    who: String::new(),
                    status,
                    hint: " while waiting for the restart; check the user and its API token",
                })
            }
            Ok(Probe::Up(i)) if i.session == old_session => {
                if i.quieting_down {
                    format!("old instance {} still up, quieting down", short(&i.session))
                } else {
                    format!("old instance {} still up", short(&i.session))
                }
            }
            Ok(Probe::Up(i)) => {
                left = true;
                match not_ready(jenkins, &i, opts).await {
                    Ok((None, online, total)) => {
                        return Ok(Verdict::Back {
                            version: i.version,
                            session: i.session,
                            jobs: i.jobs.len(),
                            agents_online: online,
                            agents_total: total,
                            waited_ms: started.elapsed().as_millis() as u64,
                        })
                    }
                    Ok((Some(why), _, _)) => why,
                    Err(e @ JenkinsError::Credentials { .. }) => return Err(e),
                    Err(e) => format!("new instance {}: {e}", short(&i.session)),
                }
            }
            Ok(p @ (Probe::Down { .. } | Probe::Starting)) => {
                left = true;
                p.to_string()
            }
            Err(e) if e.fault() == crate::error::Fault::BadInput => return Err(e),
            Err(e) => format!("error: {e}"),
        };
        progress(&ReadinessProgress {
            state: state.clone(),
            elapsed: started.elapsed(),
        });
        let remaining = opts.deadline.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            break state;
        }
        tokio::time::sleep(opts.poll.min(remaining)).await;
    };
    let waited_ms = started.elapsed().as_millis() as u64;
    Ok(if left {
        Verdict::NeverBack {
            last_seen,
            waited_ms,
        }
    } else {
        Verdict::NotObserved {
            old_session: old_session.into(),
            waited_ms,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jenkins::fake::FakeJenkins;
    use crate::jenkins::{Agent, JobSummary, WhoAmI};

    fn up(session: &str, quieting: bool, jobs: &[&str]) -> Probe {
        Probe::Up(Instance {
            version: "2.401.3".into(),
            session: session.into(),
            mode: Some("NORMAL".into()),
            quieting_down: quieting,
            jobs: jobs
                .iter()
                .map(|n| JobSummary {
                    name: (*n).into(),
                    color: "blue".into(),
                })
                .collect(),
        })
    }

    fn opts(jobs: &[&str]) -> ReadinessOptions {
        ReadinessOptions {
            poll: Duration::from_millis(1),
            deadline: Duration::from_millis(200),
            expected_jobs: jobs.iter().map(|s| (*s).into()).collect(),
            agents: ExpectAgents::Ignore,
        }
    }

    #[tokio::test]
    async fn the_old_session_quieting_then_down_then_starting_then_a_new_one_is_back() {
        let j = FakeJenkins::new();
        j.script_probes(vec![
            up("3f2a9c01", false, &["a"]),
            up("3f2a9c01", true, &["a"]),
            Probe::Down {
                reason: "refused".into(),
            },
            Probe::Starting,
            up("77e0b1d4", false, &[]), // not loaded yet
            up("77e0b1d4", true, &["a", "b"]),
            up("77e0b1d4", false, &["a", "b"]),
        ]);
        j.set_agents(vec![
            Agent {
                name: "b1".into(),
                online: true,
            },
            Agent {
                name: "b2".into(),
                online: false,
            },
        ]);
        let mut states = Vec::new();
        let v = wait_ready(&j, "u", "3f2a9c01", &opts(&["a", "b"]), &mut |p| {
            states.push(p.state.clone())
        })
        .await
        .unwrap();
        assert!(
            matches!(&v, Verdict::Back { session, jobs: 2, agents_online: 1, agents_total: 2, .. } if session == "77e0b1d4"),
            "{v:?}"
        );
        assert_eq!(
            v.to_string(),
            "Jenkins is back: 2.401.3, session 77e0…, 2 jobs, 1/2 agents online"
        );
        assert_eq!(states.len(), 6, "{states:?}");
        assert!(states[1].contains("quieting down"), "{states:?}");
        assert!(
            states[4].contains("jobs not loaded yet: a, b"),
            "{states:?}"
        );
    }

    #[tokio::test]
    async fn an_old_session_served_until_the_deadline_is_not_observed() {
        let j = FakeJenkins::new();
        j.script_probes(vec![up("3f2a9c01", false, &["a"])]);
        let v = wait_ready(&j, "u", "3f2a9c01", &opts(&[]), &mut |_| {})
            .await
            .unwrap();
        assert!(matches!(v, Verdict::NotObserved { .. }), "{v:?}");
        assert!(
            v.to_string()
                .contains("the old session 3f2a… is still served"),
            "{v}"
        );
    }

    #[tokio::test]
    async fn down_or_not_ready_at_the_deadline_is_never_back() {
        let j = FakeJenkins::new();
        j.script_probes(vec![Probe::Down {
            reason: "refused".into(),
        }]);
        let v = wait_ready(&j, "u", "3f2a9c01", &opts(&[]), &mut |_| {})
            .await
            .unwrap();
        assert!(
            matches!(&v, Verdict::NeverBack { last_seen, .. } if last_seen.contains("refused")),
            "{v:?}"
        );
        // Up with a new session but the agents never come: still not back.
        j.script_probes(vec![up("77e0b1d4", false, &[])]);
        j.set_agents(vec![Agent {
            name: "b1".into(),
            online: false,
        }]);
        let mut o = opts(&[]);
        o.agents = ExpectAgents::Named(vec!["b1".into()]);
        let v = wait_ready(&j, "u", "3f2a9c01", &o, &mut |_| {})
            .await
            .unwrap();
        assert!(
            matches!(&v, Verdict::NeverBack { last_seen, .. } if last_seen.contains("agents offline: b1")),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn refused_credentials_stop_the_wait_and_an_anonymous_user_is_not_ready() {
        let j = FakeJenkins::new();
        j.script_probes(vec![Probe::Starting, Probe::Denied { status: 401 }]);
        let err = wait_ready(&j, "u", "old", &opts(&[]), &mut |_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(err, JenkinsError::Credentials { status: 401, .. }),
            "{err:?}"
        );

        j.script_probes(vec![up("new", false, &[])]);
        j.set_who_am_i(WhoAmI {
            name: "anonymous".into(),
            authenticated: true,
            anonymous: true,
        });
        let v = wait_ready(&j, "u", "old", &opts(&[]), &mut |_| {})
            .await
            .unwrap();
        assert!(
            matches!(&v, Verdict::NeverBack { last_seen, .. } if last_seen.contains("anonymous")),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn restart_records_the_session_then_asks_for_a_safe_restart() {
        let j = FakeJenkins::new();
        j.script_probes(vec![up("aaaa0001", false, &[]), up("bbbb0002", false, &[])]);
        let v = restart(&j, "u", &opts(&[]), &mut |_| {}).await.unwrap();
        assert!(v.is_back(), "{v:?}");
        let calls = j.calls();
        assert_eq!(&calls[..3], ["probe", "safeRestart", "probe"], "{calls:?}");
    }
}
