//! `kci-build prod`: the Monday procedure. Loads the site, opens the run's journal (under
//! its lock), and hands the steps to [`crate::prod::Procedure`]; `status` and `--dry-run`
//! only read.

use std::path::PathBuf;

use super::{Context, Report};
use crate::core::procedure::{self, Step, StepSummary};
use crate::core::verdict;
use crate::printer::{Printer, Tone};
use crate::prod::journal::{self, JournalFile, Which};
use crate::prod::site::LoadedSite;
use crate::prod::verify::{OnFail, Verified, VerifyOptions};
use crate::prod::Procedure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyFormat {
    Text,
    Markdown,
}

/// What `kci-build prod` is asked to do (the command line's subcommands).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProdAction {
    /// The whole Monday in order, resuming an unfinished run.
    Run {
        /// Start a new run even if the last one did not finish.
        #[arg(long)]
        new: bool,
    },
    /// Disable the monitor, abort trigger builds that have no artifacts, wait for the
    /// pipeline to drain, stop bisections.
    Pause,
    /// Restart Jenkins (the site's restart command, or safeRestart) and wait for the new
    /// instance: a new X-Jenkins-Session, not quieting down, credentials, jobs and agents.
    Restart,
    /// update's steps (all nine when none are named, skipping those done in this run; named
    /// steps run again).
    Update {
        /// Steps: core, dsl, backend, frontend, website, test-definitions, docker, kernel,
        /// trigger.
        steps: Vec<Step>,
    },
    /// Trigger the pipe cleaner's build (of the kernel step's tag) and follow it.
    Trigger,
    /// Judge the pipe cleaner: its builds, tests, pass rates and regressions against the
    /// previous revisions of the branch (median and spread), naming every difference and
    /// threshold crossed; writes an SVG chart. Exit 0 similar, 1 different, 2 environment,
    /// 3 not settled yet (results still arriving).
    #[command(
        after_help = "Examples:\n  kci-build prod verify                          this run's pipe cleaner (else the newest revision)\n  kci-build prod verify --wait                   wait until its results stop arriving, then judge\n  kci-build prod verify kernelci-20261207.0 --format markdown > report.md\n  kci-build prod verify --on-fail disable-monitor   stop new revisions when it differs"
    )]
    Verify {
        /// The revision, as the backend's `kernel` (e.g. kernelci-20261207.0) [default: this
        /// run's pipe cleaner, else the newest revision of the branch].
        revision: Option<String>,
        /// Previous revisions in the baseline [default: the site's verify.previous, 5].
        #[arg(long)]
        previous: Option<usize>,
        /// Poll (bounded by verify.wait-minutes) until the results have settled.
        #[arg(long)]
        wait: bool,
        /// `text`: a table on stderr; `markdown`: a report to paste, on stdout.
        #[arg(long, value_enum, default_value = "text")]
        format: VerifyFormat,
        /// Where to write the SVG chart [default: <state>/verify/<revision>.svg].
        #[arg(long)]
        chart: Option<PathBuf>,
        /// What to do when the results differ.
        #[arg(long, value_enum)]
        on_fail: Option<OnFail>,
    },
    /// The current (or last) run's journal as a table.
    Status,
}

#[derive(Debug, Clone)]
pub struct ProdOptions {
    pub site: Option<PathBuf>,
    pub action: ProdAction,
    pub dry_run: bool,
    pub date: Option<String>,
    /// `--json`: the report is the data on stdout (no Markdown there).
    pub json: bool,
}

/// The run's journal, summarised step by step (and the plan, for `--dry-run`).
#[derive(Debug, serde::Serialize)]
pub struct ProdReport {
    /// `YYYYMMDD.N`; none when no run exists yet.
    pub run: Option<String>,
    pub journal: Option<PathBuf>,
    pub steps: Vec<StepSummary>,
    /// `--dry-run`: what each step would do, call by call.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<(Step, Vec<String>)>,
    /// What the verify step found in this invocation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verified>,
    /// Show the verdict as Markdown on stdout.
    #[serde(skip)]
    pub markdown: bool,
    /// `prod verify`: the verdict is the answer, the run's table is not shown.
    #[serde(skip)]
    pub verify_only: bool,
}

impl Report for ProdReport {
    fn show(&self, printer: &Printer) {
        if !self.plan.is_empty() {
            let mut out = String::new();
            for (step, calls) in &self.plan {
                out.push_str(&format!("{step}: {}\n", step.about()));
                for c in calls {
                    out.push_str(&format!("    {c}\n"));
                }
            }
            printer.table(out.trim_end());
            return;
        }
        if let Some(run) = self.run.as_ref().filter(|_| !self.verify_only) {
            printer.table(&table(run, &self.steps));
        }
        if let Some(v) = &self.verify {
            let (tone, word) = match v.comparison.verdict {
                verdict::Verdict::Different => (Tone::Bad, "different"),
                verdict::Verdict::Similar => (Tone::Good, "similar"),
                verdict::Verdict::NoBaseline => (Tone::Warn, "nothing to compare with"),
            };
            printer.line(
                tone,
                "Verdict",
                format!(
                    "{} is {word} ({} reasons; chart {})",
                    v.comparison.kernel,
                    v.comparison.reasons.len(),
                    v.chart.display()
                ),
            );
            if self.markdown {
                print!("{}", verdict::markdown(&v.comparison));
            } else {
                printer.table(verdict::table(&v.comparison).trim_end());
            }
        }
    }

    /// A pipe cleaner judged different fails the command (exit 1), with the reasons.
    fn verdict(&self) -> anyhow::Result<()> {
        match &self.verify {
            Some(v) if !v.comparison.similar() => {
                let reasons: Vec<String> = v
                    .comparison
                    .reasons
                    .iter()
                    .map(|r| format!("  {r}"))
                    .collect();
                anyhow::bail!(
                    "the pipe cleaner {} differs from the previous revisions:\n{}",
                    v.comparison.kernel,
                    reasons.join("\n")
                )
            }
            _ => Ok(()),
        }
    }
}

fn table(run: &str, steps: &[StepSummary]) -> String {
    let mut rows = vec![[
        "step".to_owned(),
        "state".into(),
        "tries".into(),
        "ended".into(),
        "facts".into(),
    ]];
    for s in steps {
        let facts: Vec<String> = s.facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut facts = facts.join(" ");
        if let Some(e) = &s.error {
            facts = format!("error: {}", e.lines().next().unwrap_or_default());
        }
        rows.push([
            s.step.to_string(),
            s.state.to_string(),
            s.attempts.to_string(),
            s.ended.clone().unwrap_or_default(),
            facts,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("run {run}\n");
    for r in rows {
        out.push_str(&format!(
            "  {:w0$}  {:w1$}  {:w2$}  {:w3$}  {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        ));
    }
    out.trim_end().to_owned()
}

/// The steps an action asks for, and whether the ones already done are skipped.
fn wanted(action: &ProdAction) -> (Vec<Step>, bool) {
    match action {
        ProdAction::Run { .. } => (Step::ALL.to_vec(), true),
        ProdAction::Pause => (vec![Step::Pause], false),
        ProdAction::Restart => (vec![Step::Restart], false),
        ProdAction::Update { steps } if steps.is_empty() => (Step::UPDATE.to_vec(), true),
        ProdAction::Update { steps } => (steps.clone(), false),
        ProdAction::Trigger => (vec![Step::Trigger], false),
        ProdAction::Verify { .. } => (vec![Step::Verify], false),
        ProdAction::Status => (Vec::new(), true),
    }
}

pub async fn run(ctx: &Context, opts: &ProdOptions) -> anyhow::Result<ProdReport> {
    let site = LoadedSite::load(opts.site.as_deref(), &ctx.settings.env)?;
    let state = site.state_dir();
    let date = match &opts.date {
        Some(d) if d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()) => d.clone(),
        Some(d) => anyhow::bail!("--date {d}: expected YYYYMMDD"),
        None => journal::today(),
    };
    let (steps, skip_done) = wanted(&opts.action);
    if matches!(opts.action, ProdAction::Status) {
        return Ok(match JournalFile::latest(&state)? {
            Some(j) => summarise(&j),
            None => {
                ctx.printer
                    .status("Status", format!("no run yet in {}", state.display()));
                ProdReport {
                    run: None,
                    journal: None,
                    steps: Vec::new(),
                    plan: Vec::new(),
                    verify: None,
                    markdown: false,
                    verify_only: false,
                }
            }
        });
    }
    let which = match opts.action {
        ProdAction::Run { new: true } => Which::New,
        ProdAction::Run { new: false } => Which::Resume,
        _ => Which::Today,
    };
    if opts.dry_run {
        let j = JournalFile::current(&state, &date, which)?;
        let todo = if skip_done {
            j.journal.todo(&steps)
        } else {
            steps
        };
        let mut report = summarise(&j);
        report.plan = todo
            .into_iter()
            .map(|s| (s, procedure::describe(s, &site.site, &j.date)))
            .collect();
        return Ok(report);
    }
    let _lock = journal::lock(&state)?;
    let j = JournalFile::current(&state, &date, which)?;
    if j.date != date && !j.journal.entries.is_empty() {
        ctx.printer.warn(format!(
            "resuming run {} of {}, unfinished; `kci-build prod run --new` starts afresh",
            j.id, j.date
        ));
    }
    ctx.printer
        .status("Journal", format!("run {} ({})", j.id, j.path().display()));
    let mut procedure = Procedure::new(&site, j, &ctx.settings, &ctx.printer, ctx.verbose);
    if let ProdAction::Verify {
        revision,
        previous,
        wait,
        chart,
        on_fail,
        ..
    } = &opts.action
    {
        procedure.verify = VerifyOptions {
            revision: revision.clone(),
            previous: *previous,
            wait: *wait,
            chart: chart.clone(),
            on_fail: *on_fail,
        };
    }
    let result = procedure.run(&steps, skip_done).await;
    let mut report = summarise(procedure.journal());
    report.markdown = !opts.json
        && matches!(
            opts.action,
            ProdAction::Verify {
                format: VerifyFormat::Markdown,
                ..
            }
        );
    report.verify = procedure.verified.take();
    report.verify_only = matches!(opts.action, ProdAction::Verify { .. });
    if result.is_err() {
        // The error is rendered by the runner; the journal says where the run stands.
        report.show(&ctx.printer);
    }
    result.map(|()| report)
}

fn summarise(j: &JournalFile) -> ProdReport {
    ProdReport {
        run: Some(j.id.clone()),
        journal: Some(j.path().to_owned()),
        steps: Step::ALL.iter().map(|s| j.journal.summary(*s)).collect(),
        plan: Vec::new(),
        verify: None,
        markdown: false,
        verify_only: false,
    }
}
