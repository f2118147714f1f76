//! Everything kci-build says to people goes through here: cargo-style status lines and
//! errors on stderr, progress bars only when stderr is a terminal. Data (`--json`) goes
//! to stdout from the commands themselves.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Clone)]
pub struct Printer {
    inner: Arc<Inner>,
}

struct Inner {
    color: bool,
    quiet: bool,
    bars: Option<MultiProgress>,
}

#[derive(Clone, Copy)]
pub enum Tone {
    Good,
    Warn,
    Bad,
}

impl Printer {
    pub fn new(color: ColorChoice, quiet: bool) -> Printer {
        let tty = std::io::stderr().is_terminal();
        let color = match color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => tty,
        };
        let bars = (tty && !quiet).then(MultiProgress::new);
        Printer {
            inner: Arc::new(Inner { color, quiet, bars }),
        }
    }

    /// `   Building gcc-12:x86 …` — a right-aligned verb, like cargo.
    pub fn status(&self, verb: &str, message: impl Display) {
        self.line(Tone::Good, verb, message);
    }

    pub fn line(&self, tone: Tone, verb: &str, message: impl Display) {
        if self.inner.quiet && !matches!(tone, Tone::Bad) {
            return;
        }
        let code = match tone {
            Tone::Good => "1;32",
            Tone::Warn => "1;33",
            Tone::Bad => "1;31",
        };
        let verb = if self.inner.color {
            format!("\x1b[{code}m{verb:>12}\x1b[0m")
        } else {
            format!("{verb:>12}")
        };
        self.raw(&format!("{verb} {message}"));
    }

    pub fn warn(&self, message: impl Display) {
        self.prefixed("warning", "1;33", message);
    }

    pub fn error(&self, message: impl Display) {
        self.prefixed("error", "1;31", message);
    }

    fn prefixed(&self, label: &str, code: &str, message: impl Display) {
        let label = if self.inner.color {
            format!("\x1b[{code}m{label}\x1b[0m")
        } else {
            label.to_owned()
        };
        self.raw(&format!("{label}: {message}"));
    }

    /// A summary table on stderr; `-q` leaves it out (the exit code and `--json` stay).
    pub fn table(&self, text: &str) {
        if !self.inner.quiet {
            self.raw(text);
        }
    }

    /// A plain line on stderr that does not tear progress bars.
    pub fn raw(&self, text: &str) {
        match &self.inner.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }

    /// A spinner for one long task, on a terminal only.
    pub fn spinner(&self, prefix: &str) -> Option<ProgressBar> {
        let m = self.inner.bars.as_ref()?;
        let pb = m.add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner:.cyan} {prefix:.bold} [{elapsed}] {wide_msg}")
                .expect("valid template"),
        );
        pb.set_prefix(prefix.to_owned());
        pb.enable_steady_tick(Duration::from_millis(120));
        Some(pb)
    }
}

/// A size for people: `12.3 MiB`, `4.0 KiB`, `0 B`.
pub fn human_bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
