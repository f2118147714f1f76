//! `kci-build prod`: the Monday procedure. Loads the site, opens the run's journal (under
//! its lock), and hands the steps to [`crate::prod::Procedure`]; `status` and `--dry-run`
//! only read.

use std::path::PathBuf;

use super::{Context, Report};
use crate::cli::ProdAction;
use crate::core::procedure::{self, Step, StepSummary};
use crate::printer::Printer;
use crate::prod::journal::{self, JournalFile, Which};
use crate::prod::site::LoadedSite;
use crate::prod::Procedure;

#[derive(Debug, Clone)]
pub struct ProdOptions {
    pub site: Option<PathBuf>,
    pub action: ProdAction,
    pub dry_run: bool,
    pub date: Option<String>,
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
        if let Some(run) = &self.run {
            printer.table(&table(run, &self.steps));
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
    let result = procedure.run(&steps, skip_done).await;
    let report = summarise(procedure.journal());
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
    }
}
