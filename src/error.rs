//! Errors that decide the exit code, and the one place that renders errors for people.
//!
//! Exit codes: 0 success, 1 bad input (recipe, lockfile, a failed build step, `--locked`
//! refusing a change), 2 environment (Docker unreachable, mmdebstrap missing, store I/O).

use std::fmt;

/// Something about the machine, not the input, is wrong; carries how to fix it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EnvironmentError {
    pub message: String,
    pub hint: String,
}

/// Exit codes scripts can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    BadInput = 1,
    Environment = 2,
}

/// The exit code an error maps to: environment problems anywhere in the chain win.
pub fn classify(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.downcast_ref::<EnvironmentError>().is_some()
            || cause.downcast_ref::<crate::store::StoreError>().is_some()
        {
            return ExitCode::Environment;
        }
        if let Some(
            crate::docker::DaemonError::Api { .. } | crate::docker::DaemonError::Unreachable(_),
        ) = cause.downcast_ref::<crate::docker::DaemonError>()
        {
            return ExitCode::Environment;
        }
    }
    ExitCode::BadInput
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
        }
        Ok(())
    }
}
