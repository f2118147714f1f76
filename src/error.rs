//! Errors that decide the exit code, and the one place that renders errors for people.
//!
//! Exit codes: 0 success, 130 interrupted, 1 bad input (recipe, lockfile, a failed build step, `--locked`
//! refusing a change, registry credentials refused; a pipe cleaner judged different),
//! 2 environment (Docker, a registry or the storage API unreachable or failing, mmdebstrap
//! missing, store I/O, a Jenkins or kernelci-backend token refused), 3 not settled (`prod verify`: results still arriving; ask later).
//!
//! Every typed error knows its own [`Fault`] where it is defined; this module imports
//! nothing of the crate, and the top floor (`ops::exit_code`) lists the types it looks for.

use std::fmt;

/// Something about the machine, not the input, is wrong; carries how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EnvironmentError {
    pub message: String,
    pub hint: String,
}

/// Whose problem an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The recipes, the lockfile, an argument, or what a build step does with them.
    BadInput,
    /// The machine or a service: a daemon, a registry, the storage, the disk.
    Environment,
}

impl Fault {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Fault::BadInput => ExitCode::BadInput,
            Fault::Environment => ExitCode::Environment,
        }
    }
}

/// Ctrl-C stopped the command; `what_now` says how to pick up where it stopped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("interrupted: {what_now}")]
pub struct Interrupted {
    pub what_now: &'static str,
}

/// Results are still arriving: a verdict now would be premature (exit 3, so a script can
/// ask again later).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}")]
pub struct NotSettled {
    pub what: String,
}

/// Exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    BadInput = 1,
    Environment = 2,
    /// `prod verify`: the revision's results are still arriving.
    NotSettled = 3,
    /// As a shell reports a process stopped by SIGINT.
    Interrupted = 130,
}

/// The exit code of `err`: an environment fault anywhere in the chain wins. `fault_of` tells
/// the fault of one cause when its type is known ([`EnvironmentError`] is known here).
pub fn classify(
    err: &anyhow::Error,
    fault_of: impl Fn(&(dyn std::error::Error + 'static)) -> Option<Fault>,
) -> ExitCode {
    if err
        .chain()
        .any(|c| c.downcast_ref::<Interrupted>().is_some())
    {
        return ExitCode::Interrupted;
    }
    let environment_fault = err.chain().any(|cause| {
        cause.downcast_ref::<EnvironmentError>().is_some()
            || fault_of(cause) == Some(Fault::Environment)
    });
    if !environment_fault
        && err
            .chain()
            .any(|c| c.downcast_ref::<NotSettled>().is_some())
    {
        return ExitCode::NotSettled;
    }
    let environment = err.chain().any(|cause| {
        cause.downcast_ref::<EnvironmentError>().is_some()
            || fault_of(cause) == Some(Fault::Environment)
            || is_disk_full(cause)
    });
    if environment {
        ExitCode::Environment
    } else {
        ExitCode::BadInput
    }
}

/// `error: <top>` then `  caused by: …` lines, then a `help:` line when one is known.
pub struct Rendered<'a>(pub &'a anyhow::Error);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chain = self.0.chain();
        if let Some(top) = chain.next() {
            write!(f, "{top}")?;
        }
        let mut last = self.0.to_string();
        for cause in chain {
            let text = cause.to_string();
            if !last.contains(&text) {
                write!(f, "\n  caused by: {text}")?;
            }
            last = text;
        }
        if let Some(env) = self
            .0
            .chain()
            .find_map(|c| c.downcast_ref::<EnvironmentError>())
        {
            write!(f, "\nhelp: {}", env.hint)?;
        } else if self.0.chain().any(is_disk_full) {
            write!(
                f,
                "\nhelp: the file system is full; nothing half-written was kept. Free space \
                 there (`kci-build gc` sweeps the store) and run the same command again"
            )?;
        }
        Ok(())
    }
}

/// A full disk (or quota): the machine's fault, whatever wrapped it.
pub fn is_disk_full(cause: &(dyn std::error::Error + 'static)) -> bool {
    cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
        e.kind() == std::io::ErrorKind::StorageFull
            || e.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(e.raw_os_error(), Some(28) | Some(122))
    })
}

/// An error and its sources on one line: `a: b: c` (for messages that travel as text).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
