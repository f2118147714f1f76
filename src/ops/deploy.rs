//! `kci-build deploy --test-configs PATH`: point KernelCI's `file_systems` entries at the
//! version directories of the rootfs lockfile, once every new file answers HTTP HEAD 200.
//!
//! The planning and editing is [`crate::core::deploy`]; this module reads the files, asks the
//! storage (concurrently, bounded) through [`HttpProbe`], writes atomically and reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::{Context, Report};
use crate::core::deploy::{self, EntryReport, Format, Probe, ProbeError, Status};
use crate::error::EnvironmentError;
use crate::fsutil;
use crate::printer::{Printer, Tone};

/// HEAD requests in flight at once.
pub const PROBE_JOBS: usize = 8;

#[derive(Debug, Clone)]
pub struct DeployArgs {
    pub test_configs: PathBuf,
    pub lockfile: PathBuf,
    pub check: bool,
    pub format: Format,
    pub storage_url: Option<String>,
}

/// What `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DeployReport {
    pub file: PathBuf,
    pub lockfile: PathBuf,
    pub check: bool,
    /// Whether the file was rewritten.
    pub written: bool,
    pub entries: Vec<EntryReport>,
}

/// Entries whose new files are not all served kept their old version (the others were
/// written); or `--check` found the file out of date.
#[derive(Debug, thiserror::Error)]
pub enum DeployFailed {
    #[error("{} kept the old version: files of the new version are not served ({})", plural(names.len()), names.join(", "))]
    Missing { names: Vec<String> },
    #[error("{file} is not up to date with {lockfile}: {}\nhelp: run `kci-build deploy --test-configs {file}` once the files are served", out_of_date(updated, missing))]
    OutOfDate {
        file: String,
        lockfile: String,
        updated: Vec<String>,
        missing: Vec<String>,
    },
}

fn out_of_date(updated: &[String], missing: &[String]) -> String {
    let mut parts = Vec::new();
    if !updated.is_empty() {
        parts.push(format!(
            "{} would change ({})",
            plural(updated.len()),
            updated.join(", ")
        ));
    }
    if !missing.is_empty() {
        parts.push(format!(
            "{} cannot change yet, files are not served ({})",
            plural(missing.len()),
            missing.join(", ")
        ));
    }
    parts.join("; ")
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 entry".into()
    } else {
        format!("{n} entries")
    }
}

impl DeployReport {
    fn names(&self, status: Status) -> Vec<String> {
        self.entries
            .iter()
            .filter(|e| e.status == status)
            .map(|e| e.name.clone())
            .collect()
    }

    /// An error when an entry is missing files, or when `--check` finds anything to change.
    pub fn into_result(&self) -> Result<(), DeployFailed> {
        let missing = self.names(Status::Missing);
        if self.check {
            let updated = self.names(Status::Updated);
            if !updated.is_empty() || !missing.is_empty() {
                return Err(DeployFailed::OutOfDate {
                    file: self.file.display().to_string(),
                    lockfile: self.lockfile.display().to_string(),
                    updated,
                    missing,
                });
            }
        } else if !missing.is_empty() {
            return Err(DeployFailed::Missing { names: missing });
        }
        Ok(())
    }
}

/// Asks the storage with HTTP HEAD; anything but 200 is "not served", no answer at all is
/// an environment error.
pub struct HttpProbe {
    http: reqwest::Client,
}

impl HttpProbe {
    pub fn new() -> Result<HttpProbe, EnvironmentError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kci-build/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| EnvironmentError {
                message: format!("HTTP client: {e}"),
                hint: "check the TLS setup of this machine".into(),
            })?;
        Ok(HttpProbe { http })
    }
}

impl Probe for HttpProbe {
    async fn exists(&self, url: &str) -> Result<bool, ProbeError> {
        match self.http.head(url).send().await {
            Ok(r) => Ok(r.status() == reqwest::StatusCode::OK),
            Err(e) => Err(ProbeError {
                url: url.to_owned(),
                message: crate::error::chain(&e),
            }),
        }
    }
}

pub async fn run(ctx: &Context, args: &DeployArgs) -> anyhow::Result<DeployReport> {
    run_with(args, &HttpProbe::new()?, &ctx.printer).await
}

impl Report for DeployReport {
    /// The status lines said it all.
    fn show(&self, _: &Printer) {}

    fn verdict(&self) -> anyhow::Result<()> {
        Ok(self.into_result()?)
    }
}

/// [`run`] with the storage asked through `probe`.
pub async fn run_with<P: Probe>(
    args: &DeployArgs,
    probe: &P,
    printer: &Printer,
) -> anyhow::Result<DeployReport> {
    let path = &args.test_configs;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if !args.lockfile.is_file() {
        anyhow::bail!(
            "{}: no rootfs lockfile (pass --lockfile)",
            args.lockfile.display()
        );
    }
    let lock = crate::lockedit::LockfileEdit::read(&args.lockfile)?.rootfs()?;
    let at = |e: deploy::DeployError| anyhow::anyhow!("{}: {e}", path.display());
    let plan = deploy::plan(&text, args.format, &lock, args.storage_url.as_deref()).map_err(at)?;
    let urls = plan.urls();
    if !urls.is_empty() {
        printer.status("Checking", format!("{} files on the storage", urls.len()));
    }
    let missing = deploy::missing_urls(probe, &urls, PROBE_JOBS)
        .await
        .map_err(|e| EnvironmentError {
            message: format!("the storage did not answer: {e}"),
            hint: "check the network, or point --storage-url at the storage".into(),
        })?;
    let deployed = deploy::apply(&text, &plan, &missing).map_err(at)?;

    for (entry, e) in plan.entries.iter().zip(&deployed.entries) {
        match e.status {
            Status::Unchanged => {}
            Status::Updated => {
                let verb = if args.check { "Outdated" } else { "Updated" };
                printer.status(verb, format!("{} {} → {}", e.name, e.old, e.new));
                for f in entry.fields.iter().filter(|f| f.old != f.new) {
                    printer.raw(&format!("{:>12}   {}: {} → {}", "", f.field, f.old, f.new));
                }
            }
            Status::Missing => {
                printer.line(
                    Tone::Bad,
                    "Missing",
                    format!(
                        "{} keeps {}: {} of {} not served",
                        e.name,
                        e.old,
                        plural_files(e.missing_urls.len()),
                        e.new
                    ),
                );
                for u in &e.missing_urls {
                    printer.raw(&format!("{:>12}   {u}", ""));
                }
            }
        }
    }

    let changed = deployed.text != text;
    let written = changed && !args.check;
    if written {
        fsutil::atomic_write(path, deployed.text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let count = |s: Status| deployed.entries.iter().filter(|e| e.status == s).count();
    let summary = format!(
        "{} {}, {} unchanged, {} with files missing",
        count(Status::Updated),
        if args.check { "to update" } else { "updated" },
        count(Status::Unchanged),
        count(Status::Missing)
    );
    if args.check {
        printer.status("Checked", format!("{} ({summary})", path.display()));
    } else if written {
        printer.status("Wrote", format!("{} ({summary})", path.display()));
    } else {
        printer.status("Fresh", format!("{} unchanged ({summary})", path.display()));
    }
    Ok(DeployReport {
        file: path.clone(),
        lockfile: args.lockfile.clone(),
        check: args.check,
        written,
        entries: deployed.entries,
    })
}

fn plural_files(n: usize) -> String {
    if n == 1 {
        "1 file".into()
    } else {
        format!("{n} files")
    }
}

/// The rootfs lockfile deploy reads unless `--lockfile` is given on the command line.
pub fn default_lockfile() -> &'static Path {
    Path::new("lockfiles/rootfs.lock")
}
