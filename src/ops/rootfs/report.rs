//! What a rootfs run reports: one outcome per (config, arch), the versions, the uploads; the
//! table people read on stderr and the JSON scripts read on stdout.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::core::rootfs_lock::{ArtifactInfo, RootfsManifest};
use crate::rootfs::plan::RootfsJob;

/// What became of one (config, arch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootfsAction {
    /// Built by this run.
    Built,
    /// In the store already.
    Cached,
    /// On the storage already (and maybe nowhere else).
    OnStorage,
    /// From the registry (`--registry`), checked, into the store.
    Pulled,
    /// An earlier run's container, picked up and collected.
    Resumed,
    Failed,
}

impl RootfsAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RootfsAction::Built => "built",
            RootfsAction::Cached => "cached",
            RootfsAction::OnStorage => "on-storage",
            RootfsAction::Pulled => "pulled",
            RootfsAction::Resumed => "resumed",
            RootfsAction::Failed => "failed",
        }
    }
}

/// What a (config, arch) ended as.
#[derive(Debug, Serialize)]
pub struct RootfsOutcome {
    pub config: String,
    pub arch: String,
    pub key: String,
    pub action: RootfsAction,
    pub seconds: f64,
    pub artifacts: BTreeMap<String, ArtifactInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last lines of the build log of a failed build.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
    /// It failed because the store's file system is full.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub disk_full: bool,
}

impl RootfsOutcome {
    pub(super) fn made(
        job: &RootfsJob,
        action: RootfsAction,
        secs: f64,
        m: &RootfsManifest,
    ) -> Self {
        RootfsOutcome {
            config: job.config.clone(),
            arch: job.arch.clone(),
            key: job.key.as_str().to_owned(),
            action,
            seconds: secs,
            artifacts: m.artifacts.clone(),
            error: None,
            log_tail: Vec::new(),
            disk_full: false,
        }
    }

    pub(super) fn failed(job: &RootfsJob, secs: f64, error: String, log_tail: Vec<String>) -> Self {
        RootfsOutcome {
            config: job.config.clone(),
            arch: job.arch.clone(),
            key: job.key.as_str().to_owned(),
            action: RootfsAction::Failed,
            seconds: secs,
            artifacts: BTreeMap::new(),
            error: Some(error),
            log_tail,
            disk_full: false,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RootfsReport {
    pub builds: Vec<RootfsOutcome>,
    /// Config → version directory.
    pub versions: BTreeMap<String, String>,
    pub uploaded: usize,
    pub upload_skipped: usize,
    /// Artifacts pushed to the registry (`--registry`): those it lacked.
    pub pushed: usize,
    pub lockfile_changed: bool,
}

/// Some (config, arch) failed; the others were still built, uploaded and locked.
#[derive(Debug, thiserror::Error)]
#[error("{} of {total} rootfs builds failed: {}{}", failed.len(), failed.join(", "),
    if *disk_full { " (the store's file system is full: free space there, `kci-build gc` sweeps the store, and run the same command again)" } else { "" })]
pub struct RootfsFailed {
    pub failed: Vec<String>,
    pub total: usize,
    /// One of them failed because the store's file system is full.
    pub disk_full: bool,
}

impl RootfsFailed {
    /// A full disk is the machine's fault (exit 2); a build that failed is the recipe's.
    pub fn fault(&self) -> crate::error::Fault {
        if self.disk_full {
            crate::error::Fault::Environment
        } else {
            crate::error::Fault::BadInput
        }
    }
}

impl RootfsReport {
    pub fn into_result(&self) -> Result<(), RootfsFailed> {
        let failed: Vec<String> = self
            .failed()
            .map(|b| format!("{}/{}", b.config, b.arch))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RootfsFailed {
                failed,
                total: self.builds.len(),
                disk_full: self.failed().any(|b| b.disk_full),
            })
        }
    }

    fn failed(&self) -> impl Iterator<Item = &RootfsOutcome> {
        self.builds
            .iter()
            .filter(|b| b.action == RootfsAction::Failed)
    }
}

/// The final table, for stderr.
pub fn table(report: &RootfsReport) -> String {
    let mut rows = vec![[
        "CONFIG/ARCH".to_owned(),
        "STATUS".to_owned(),
        "TIME".to_owned(),
        "KEY".to_owned(),
        "rootfs.cpio.gz".to_owned(),
        "full.rootfs.tar.xz".to_owned(),
    ]];
    for b in &report.builds {
        let size = |n: &str| {
            b.artifacts
                .get(n)
                .map(|a| crate::printer::human_bytes(a.size))
                .unwrap_or_else(|| "-".into())
        };
        rows.push([
            format!("{}/{}", b.config, b.arch),
            b.action.as_str().to_owned(),
            format!("{:.1}s", b.seconds),
            b.key.trim_start_matches("sha256:")[..12].to_owned(),
            size("rootfs.cpio.gz"),
            size("full.rootfs.tar.xz"),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for (config, v) in &report.versions {
        out.push_str(&format!("version {config}: {v}\n"));
    }
    for b in report.failed() {
        out.push_str(&format!(
            "\n{}/{} failed: {}\n",
            b.config,
            b.arch,
            b.error.as_deref().unwrap_or("")
        ));
        for l in &b.log_tail {
            out.push_str(&format!("  | {l}\n"));
        }
    }
    out
}
