//! The Monday procedure (`kci-build prod`): KernelCI's production update as one resumable
//! plan of steps, journalled — the floor-3 work behind `ops::prod`.
//!
//! [`Procedure`] runs the steps a command asks for, in procedure order, recording each
//! step's start, its progress facts and its end in the run's journal ([`journal`]); the pure
//! rules (order, what a rerun still does, tags) are `core::procedure`, the site file is
//! `core::site` + [`site`]. The steps themselves: [`pause`], [`restart`], [`trigger`] (Jenkins,
//! through [`crate::jenkins`]), [`git`] (kernelci-core, test-definitions, the pipe cleaner),
//! [`commands`] (ansible, hugo, the restart command) and [`steps`], which maps each step to
//! them.

use std::collections::BTreeMap;

use crate::core::procedure::{Event, Step};
use crate::printer::Printer;
use crate::settings::Settings;

pub mod commands;
pub mod git;
pub mod journal;
pub mod pause;
pub mod restart;
pub mod site;
pub mod steps;
pub mod trigger;
pub mod verify;

use journal::JournalFile;
use site::LoadedSite;

/// Facts a step produced, by name (never a secret).
pub type Facts = BTreeMap<String, String>;

/// A run of the procedure: the site, the run's journal, where to say what happens.
pub struct Procedure<'a> {
    pub site: &'a LoadedSite,
    journal: JournalFile,
    pub settings: &'a Settings,
    pub printer: &'a Printer,
    pub verbose: bool,
    /// How the verify step judges (`prod verify`'s options; `prod run` waits).
    pub verify: verify::VerifyOptions,
    /// What the verify step found in this invocation.
    pub verified: Option<verify::Verified>,
}

impl<'a> Procedure<'a> {
    pub fn new(
        site: &'a LoadedSite,
        journal: JournalFile,
        settings: &'a Settings,
        printer: &'a Printer,
        verbose: bool,
    ) -> Procedure<'a> {
        Procedure {
            site,
            journal,
            settings,
            printer,
            verbose,
            verify: verify::VerifyOptions {
                wait: true,
                ..Default::default()
            },
            verified: None,
        }
    }

    pub fn journal(&self) -> &JournalFile {
        &self.journal
    }

    /// Runs `wanted` in procedure order (with `skip_done`, only those not done in this run),
    /// journalling each; stops at the first step that fails.
    pub async fn run(&mut self, wanted: &[Step], skip_done: bool) -> anyhow::Result<()> {
        let todo = if skip_done {
            self.journal.journal.todo(wanted)
        } else {
            let mut w = wanted.to_vec();
            w.sort();
            w.dedup();
            w
        };
        if todo.is_empty() {
            self.printer.status(
                "Fresh",
                format!("every step of run {} is done", self.journal.id),
            );
        }
        for step in todo {
            self.printer
                .status("Running", format!("{step}: {}", step.about()));
            self.journal
                .record(step, Event::Start, Facts::new(), None)?;
            match steps::run(self, step).await {
                Ok(facts) => {
                    let said = facts
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    self.journal.record(step, Event::Done, facts, None)?;
                    self.printer.status("Done", format!("{step} {said}"));
                }
                Err(e) => {
                    self.journal.record(
                        step,
                        Event::Failed,
                        Facts::new(),
                        Some(format!("{e:#}")),
                    )?;
                    return Err(e.context(format!(
                        "step {step} failed (journal {}); fix the cause and run again: it starts from this step",
                        self.journal.path().display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Records facts in the middle of `step` (e.g. "the restart was requested"), so a rerun
    /// after a kill knows what was done.
    pub fn progress(&mut self, step: Step, facts: Facts) -> anyhow::Result<()> {
        self.journal.record(step, Event::Progress, facts, None)
    }

    /// A fact of this run's journal (the latest one of `step`).
    pub fn fact(&self, step: Step, name: &str) -> Option<String> {
        self.journal.journal.fact(step, name).map(str::to_owned)
    }

    /// The run's date, `YYYYMMDD` (names the tags).
    pub fn date(&self) -> &str {
        &self.journal.date
    }

    /// When the current attempt of `step` started (RFC 3339).
    pub fn started(&self, step: Step) -> Option<String> {
        self.journal.journal.summary(step).started
    }

    /// A working directory under the state directory (clones, logs).
    pub fn work_dir(&self, name: &str) -> std::path::PathBuf {
        self.site.state_dir().join(name)
    }
}
