//! The Monday procedure as data: its steps in order, the journal a run appends to, and what
//! a rerun still has to do — pure, so the resume rules are tested without Jenkins or git.
//!
//! A run is `pause → restart → update (core, dsl, backend, frontend, website,
//! test-definitions, docker, kernel) → trigger`; the journal records every step's start,
//! progress facts and end. A rerun does the steps not yet `done`, in order; a step that
//! failed or was interrupted starts again from its beginning (every step is safe to repeat),
//! with the facts it recorded before (e.g. the session seen before a restart) at hand.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One step of the procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Pause,
    Restart,
    Core,
    Dsl,
    Backend,
    Frontend,
    Website,
    TestDefinitions,
    Docker,
    Kernel,
    Trigger,
    Verify,
}

impl Step {
    /// The whole Monday, in order.
    pub const ALL: [Step; 12] = [
        Step::Pause,
        Step::Restart,
        Step::Core,
        Step::Dsl,
        Step::Backend,
        Step::Frontend,
        Step::Website,
        Step::TestDefinitions,
        Step::Docker,
        Step::Kernel,
        Step::Trigger,
        Step::Verify,
    ];

    /// `update`'s steps (PROCEDURE.md §2), in order; `trigger` is the last.
    pub const UPDATE: [Step; 9] = [
        Step::Core,
        Step::Dsl,
        Step::Backend,
        Step::Frontend,
        Step::Website,
        Step::TestDefinitions,
        Step::Docker,
        Step::Kernel,
        Step::Trigger,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Pause => "pause",
            Step::Restart => "restart",
            Step::Core => "core",
            Step::Dsl => "dsl",
            Step::Backend => "backend",
            Step::Frontend => "frontend",
            Step::Website => "website",
            Step::TestDefinitions => "test-definitions",
            Step::Docker => "docker",
            Step::Kernel => "kernel",
            Step::Trigger => "trigger",
            Step::Verify => "verify",
        }
    }

    /// What the step does, for `--help`, `--dry-run` and the status table.
    pub fn about(self) -> &'static str {
        match self {
            Step::Pause => "disable the monitor, abort unstarted trigger builds, wait for the pipeline to drain, stop bisections",
            Step::Restart => "restart Jenkins (and the builders) and wait for the new instance",
            Step::Core => "rebase kernelci-core's kernelci.org on main, tag and push if it changed",
            Step::Dsl => "trigger the job-dsl seed job (recreates every job definition)",
            Step::Backend => "redeploy kernelci-backend with ansible (app tasks only)",
            Step::Frontend => "redeploy kernelci-frontend with ansible (app tasks only)",
            Step::Website => "build kernelci-project with hugo into the web root",
            Step::TestDefinitions => "rebase the test-definitions fork on upstream, tag and push if it changed",
            Step::Docker => "build the toolchain images and push them (reusing what exists)",
            Step::Kernel => "push a new pipe-cleaner revision to KernelCI's linux fork",
            Step::Trigger => "trigger the pipe cleaner's build and follow it to its build number",
            Step::Verify => "wait for the pipe cleaner's results to settle and compare them with the previous revisions",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Step, String> {
        // The 2021 script spelled it test_definitions.
        let s = if s == "test_definitions" {
            "test-definitions"
        } else {
            s
        };
        Step::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
                format!("unknown step `{s}` (steps: {})", names.join(", "))
            })
    }
}

/// What happened to a step, as a journal line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    Start,
    /// Facts the step produced before its end (e.g. "the restart was requested").
    Progress,
    Done,
    Failed,
}

/// One journal line. Facts are strings by name (sorted); secrets never enter them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// RFC 3339, UTC.
    pub at: String,
    pub step: Step,
    pub event: Event,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a step stands in a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    NotStarted,
    /// Started and never ended: the run was killed or interrupted during it.
    Interrupted,
    Failed,
    Done,
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepState::NotStarted => "not started",
            StepState::Interrupted => "interrupted",
            StepState::Failed => "failed",
            StepState::Done => "done",
        })
    }
}

/// A procedure run's journal: its lines, oldest first. (The run's date, which names its
/// tags also when it is resumed on the next day, is in the journal's file name.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Journal {
    pub entries: Vec<Entry>,
}

/// A step's summary in a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepSummary {
    pub step: Step,
    pub state: StepState,
    /// Starts of the step (1 = it ran once).
    pub attempts: usize,
    pub started: Option<String>,
    pub ended: Option<String>,
    /// The facts of the latest attempt (progress and end), merged.
    pub facts: BTreeMap<String, String>,
    pub error: Option<String>,
}

impl Journal {
    /// Parses JSON lines; `what` names the file in errors, with the line number.
    pub fn parse(what: &str, text: &str) -> Result<Journal, String> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let e: Entry =
                serde_json::from_str(line).map_err(|e| format!("{what}, line {}: {e}", i + 1))?;
            entries.push(e);
        }
        Ok(Journal { entries })
    }

    /// One JSON object per line, keys sorted: what the file holds. Control characters are
    /// escaped (a multi-line error stays on its line; canonical JSON would write it raw).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            // A `Value`'s objects are sorted maps, so the keys come out sorted.
            let v = serde_json::to_value(e).expect("a journal entry serialises");
            out.push_str(&v.to_string());
            out.push('\n');
        }
        out
    }

    /// The summary of `step` (its latest attempt).
    pub fn summary(&self, step: Step) -> StepSummary {
        let mut s = StepSummary {
            step,
            state: StepState::NotStarted,
            attempts: 0,
            started: None,
            ended: None,
            facts: BTreeMap::new(),
            error: None,
        };
        for e in self.entries.iter().filter(|e| e.step == step) {
            match e.event {
                Event::Start => {
                    s.attempts += 1;
                    s.state = StepState::Interrupted;
                    s.started = Some(e.at.clone());
                    s.ended = None;
                    s.error = None;
                    // Progress facts survive a restart of the step (they say what was done).
                }
                Event::Progress => {}
                Event::Done => {
                    s.state = StepState::Done;
                    s.ended = Some(e.at.clone());
                }
                Event::Failed => {
                    s.state = StepState::Failed;
                    s.ended = Some(e.at.clone());
                    s.error = e.error.clone();
                }
            }
            s.facts
                .extend(e.facts.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        s
    }

    /// A fact any step recorded (the latest wins): e.g. the kernel step's `tag` for trigger.
    pub fn fact(&self, step: Step, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .filter(|e| e.step == step)
            .find_map(|e| e.facts.get(name).map(String::as_str))
    }

    /// Of `wanted` (in procedure order), the steps still to do: all but those done.
    pub fn todo(&self, wanted: &[Step]) -> Vec<Step> {
        let mut steps: Vec<Step> = wanted.to_vec();
        steps.sort();
        steps.dedup();
        steps
            .into_iter()
            .filter(|s| self.summary(*s).state != StepState::Done)
            .collect()
    }

    /// Whether every step of the Monday is done.
    pub fn finished(&self) -> bool {
        self.todo(&Step::ALL).is_empty()
    }
}

/// `<prefix>YYYYMMDD.N` from the tags that exist: N counts those containing
/// `<prefix>YYYYMMDD` (PROCEDURE.md §2).
pub fn next_tag<'a>(
    prefix: &str,
    date: &str,
    existing: impl IntoIterator<Item = &'a str>,
) -> String {
    let stem = format!("{prefix}{date}");
    let n = existing.into_iter().filter(|t| t.contains(&stem)).count();
    format!("{stem}.{n}")
}

/// What `step` would do on `site`, call by call, for `--dry-run`: every HTTP call, git push
/// and command, with `<…>` where a value is only known when the step runs. Nothing here is
/// done; the lines are the plan.
pub fn describe(step: Step, site: &super::site::Site, date: &str) -> Vec<String> {
    let tag = format!("{}{date}.<N>", site.tag_prefix);
    match step {
        Step::Pause | Step::Restart | Step::Dsl | Step::Trigger | Step::Verify => {
            describe_jenkins(step, site, &tag)
        }
        Step::Core | Step::TestDefinitions | Step::Kernel | Step::Website => {
            describe_git(step, site, &tag)
        }
        Step::Backend | Step::Frontend | Step::Docker => describe_deploy(step, site),
    }
}

/// The steps that talk to Jenkins (and, for verify, kernelci-backend).
fn describe_jenkins(step: Step, site: &super::site::Site, tag: &str) -> Vec<String> {
    let j = &site.jenkins;
    let url = j.url.trim_end_matches('/');
    match step {
        Step::Pause => vec![
            format!("POST {url}/job/{}/disable", j.monitor_job),
            format!(
                "GET {url}/job/{}/api/json; GET …/<n>/api/json of each build",
                j.trigger_job
            ),
            format!(
                "POST {url}/job/{}/<n>/stop for every build without artifacts",
                j.trigger_job
            ),
            format!(
                "GET {url}/job/{}/<n>/api/json every {} s until none is building (at most {} min)",
                j.trigger_job, j.poll_seconds, j.drain_minutes
            ),
            format!("POST {url}/job/{}/disable", j.bisection_job),
            format!(
                "POST {url}/job/{}/<n>/stop for every running build",
                j.bisection_job
            ),
        ],
        Step::Restart => {
            let how = if site.restart.command.is_empty() {
                format!("POST {url}/safeRestart")
            } else {
                format!("run {}", site.restart.command.join(" "))
            };
            vec![
                format!("GET {url}/api/json (record X-Jenkins-Session)"),
                how,
                format!(
                    "GET {url}/api/json every {} s until a new X-Jenkins-Session (at most {} min)",
                    j.poll_seconds, j.restart_minutes
                ),
                format!("GET {url}/whoAmI/api/json; GET {url}/computer/api/json"),
            ]
        }
        Step::Dsl => vec![
            format!("POST {url}/job/{}/build", j.dsl_job),
            format!("GET {url}/queue/item/<N>/api/json until it has a build number"),
        ],
        Step::Trigger => {
            let (job, params) = site.trigger_for(tag, "<commit>");
            let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let call = if query.is_empty() {
                format!("POST {url}/job/{job}/build")
            } else {
                format!(
                    "POST {url}/job/{job}/buildWithParameters?{}",
                    query.join("&")
                )
            };
            vec![
                call,
                format!("GET {url}/queue/item/<N>/api/json until it has a build number"),
            ]
        }
        Step::Verify => {
            let v = &site.verify;
            let api = site.backend_api.url.trim_end_matches('/');
            vec![
                format!("GET {url}/job/{}/<n>/api/json until the pipe cleaner's build has finished", j.trigger_job),
                format!("GET {api}/job?job={}&git_branch={}&sort=created_on&sort_order=-1&limit={}", v.job, v.branch, v.previous + 1),
                format!("GET {api}/build, /test/group, /test/case?kernel=<kernel>…; GET {api}/count/test_regression?kernel=<kernel>"),
                format!("again until the counts have not changed for {} s (at most {} min); compare with the previous {}", v.settle_seconds, v.wait_minutes, v.previous),
            ]
        }
        _ => unreachable!("not a Jenkins step"),
    }
}

/// The steps that rebase, tag and push, or check out and publish.
fn describe_git(step: Step, site: &super::site::Site, tag: &str) -> Vec<String> {
    let push = |url: &str, branches: &[String]| {
        let heads: Vec<String> = branches.iter().map(|b| format!("HEAD:{b}")).collect();
        format!(
            "if it changed: git tag -a {tag}; git push --force {url} {} {tag}",
            heads.join(" ")
        )
    };
    let core = &site.core;
    let fork = &site.test_definitions;
    match step {
        Step::Core => vec![
            format!("git fetch {} {} {}", core.url, core.branch, core.base),
            format!(
                "git rebase {} onto origin/{} (as {})",
                core.branch, core.base, site.bot.name
            ),
            push(&core.url, std::slice::from_ref(&core.branch)),
        ],
        Step::TestDefinitions => vec![
            format!(
                "git fetch {} {}; git fetch {} {}",
                fork.url, fork.branch, fork.upstream, fork.upstream_branch
            ),
            format!(
                "git rebase {} onto upstream/{} (as {})",
                fork.branch, fork.upstream_branch, site.bot.name
            ),
            push(&fork.url, &fork.push_to),
        ],
        Step::Kernel => vec![
            format!(
                "git fetch {} {}",
                site.linux.stable, site.linux.stable_branch
            ),
            format!("git am {}/*", site.linux.patches.display()),
            format!(
                "git commit (as {}): a file `kernelci.org` holding {tag}",
                site.bot.name
            ),
            format!(
                "git tag -a {tag}; git push --force {} HEAD:{} {tag}",
                site.linux.fork, site.linux.branch
            ),
        ],
        Step::Website => vec![
            format!(
                "git fetch {} {}; git submodule update --init --recursive",
                site.website.repo, site.website.branch
            ),
            format!("run {} (in the checkout)", site.website.hugo.join(" ")),
            format!(
                "replace the contents of {} with public/",
                site.website.web_root.display()
            ),
        ],
        _ => unreachable!("not a git step"),
    }
}

/// The steps that deploy: ansible and the images.
fn describe_deploy(step: Step, site: &super::site::Site) -> Vec<String> {
    let ansible = |app: &super::site::AppSite| {
        let key = site
            .ansible
            .private_key
            .as_ref()
            .map(|k| format!(" --private-key {}", k.display()))
            .unwrap_or_default();
        vec![
            format!(
                "git fetch {} {} (fast-forward the checkout)",
                app.config_repo, app.config_branch
            ),
            format!("git ls-remote {} {} -> <rev>", app.app_repo, app.app_branch),
            format!(
                "{} {} -i {} -l {} -D -b --skip-tags=secrets -t app{key} -e git_head=<rev>",
                site.ansible.command, site.ansible.playbook, site.ansible.inventory, app.host
            ),
        ]
    };
    match step {
        Step::Backend => ansible(&site.backend),
        Step::Frontend => ansible(&site.frontend),
        Step::Docker => vec![format!(
            "kci-build build --push --registry {} --jobs {} (images {}, lockfile {})",
            site.docker.registry.as_deref().unwrap_or("$KCI_REGISTRY"),
            site.docker.jobs,
            site.docker.images.display(),
            site.docker.lockfile.display()
        )],
        _ => unreachable!("not a deploy step"),
    }
}

/// Seconds since the epoch of an RFC 3339 UTC time as the journal writes it
/// (`2026-12-07T08:00:00Z`).
pub fn epoch_of(at: &str) -> Option<u64> {
    let b = at.as_bytes();
    if b.len() != 20 || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| at.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_multi_line_error_stays_on_its_journal_line() {
        let mut facts = BTreeMap::new();
        facts.insert("log".to_owned(), "a\u{0}b\rc\u{1b}[31m".to_owned());
        let j = Journal {
            entries: vec![Entry {
                at: "2026-12-02T00:00:00Z".into(),
                step: Step::ALL[0],
                event: Event::Failed,
                facts,
                error: Some("first line\nsecond line\n".into()),
            }],
        };
        let text = j.to_text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(Journal::parse("journal", &text).unwrap(), j);
        let keys: Vec<_> = ["\"at\"", "\"error\"", "\"event\"", "\"facts\"", "\"step\""]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys sorted: {text}");
    }

    use super::*;

    fn entry(step: Step, event: Event, facts: &[(&str, &str)]) -> Entry {
        Entry {
            at: "2026-12-07T08:00:00Z".into(),
            step,
            event,
            facts: facts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            error: (event == Event::Failed).then(|| "boom".to_owned()),
        }
    }

    #[test]
    fn a_rerun_does_what_is_not_done_and_keeps_the_facts_of_an_interrupted_step() {
        let j = Journal {
            entries: vec![
                entry(Step::Pause, Event::Start, &[]),
                entry(Step::Pause, Event::Done, &[("aborted", "2")]),
                entry(
                    Step::Restart,
                    Event::Start,
                    &[("session-before", "3f2a00aa")],
                ),
                entry(
                    Step::Restart,
                    Event::Progress,
                    &[("restart-requested", "yes")],
                ),
                entry(Step::Core, Event::Start, &[]),
                entry(Step::Core, Event::Failed, &[]),
            ],
        };
        assert_eq!(j.summary(Step::Pause).state, StepState::Done);
        let restart = j.summary(Step::Restart);
        assert_eq!(restart.state, StepState::Interrupted);
        assert_eq!(restart.facts["restart-requested"], "yes");
        assert_eq!(j.summary(Step::Core).state, StepState::Failed);
        assert_eq!(j.summary(Step::Core).error.as_deref(), Some("boom"));
        let todo = j.todo(&Step::ALL);
        assert_eq!(todo.first(), Some(&Step::Restart));
        assert_eq!(todo.len(), 11);
        assert!(!j.finished());
        // Asked out of order, steps run in procedure order.
        assert_eq!(
            j.todo(&[Step::Trigger, Step::Core]),
            [Step::Core, Step::Trigger]
        );
    }

    #[test]
    fn the_journal_round_trips_and_names_a_bad_line() {
        let j = Journal {
            entries: vec![
                entry(Step::Kernel, Event::Start, &[]),
                entry(Step::Kernel, Event::Done, &[("tag", "kernelci-20261207.0")]),
            ],
        };
        let text = j.to_text();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with(r#"{"at":"#), "{text}");
        assert_eq!(Journal::parse("j", &text).unwrap(), j);
        assert_eq!(j.fact(Step::Kernel, "tag"), Some("kernelci-20261207.0"));
        let bad = format!("{text}{{\"at\":1}}\n");
        let e = Journal::parse("journal.jsonl", &bad).unwrap_err();
        assert!(e.starts_with("journal.jsonl, line 3:"), "{e}");
    }

    #[test]
    fn journal_times_read_back() {
        for secs in [0u64, 1_764_547_200, 1_796_601_599] {
            assert_eq!(epoch_of(&crate::image::rfc3339(secs)), Some(secs));
        }
        assert_eq!(epoch_of("yesterday"), None);
    }

    #[test]
    fn tags_count_the_days_tags() {
        assert_eq!(next_tag("kernelci-", "20261207", []), "kernelci-20261207.0");
        let tags = [
            "kernelci-20261207.0",
            "kernelci-20261130.0",
            "kernelci-20261207.1",
        ];
        assert_eq!(
            next_tag("kernelci-", "20261207", tags),
            "kernelci-20261207.2"
        );
    }

    #[test]
    fn steps_parse_by_name_with_a_helpful_error() {
        assert_eq!(
            "test_definitions".parse::<Step>(),
            Ok(Step::TestDefinitions)
        );
        assert_eq!("dsl".parse::<Step>(), Ok(Step::Dsl));
        let e = "deploy".parse::<Step>().unwrap_err();
        assert!(
            e.contains("unknown step `deploy`") && e.contains("kernel"),
            "{e}"
        );
    }
}
