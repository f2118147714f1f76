//! `kci-build push`: publish stored images to an OCI registry (see [`crate::publish`]):
//! blobs first, then manifests, then tags.

use super::{Context, Report};
use crate::core::names::TargetName;
use crate::printer::Printer;
use crate::registry::Registry;

pub use crate::publish::PushReport;

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Targets to push (with their parents); all when empty.
    pub targets: Vec<TargetName>,
    /// `host[:port]`, or an `http://`/`https://` URL.
    pub registry: String,
    pub jobs: usize,
}

pub async fn run(ctx: &Context, opts: &PushOptions) -> anyhow::Result<PushReport> {
    let ws = ctx.workspace()?;
    let images = ws
        .plan_for(&opts.targets)?
        .iter()
        .map(|p| ws.stored(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let reg = Registry::new(&opts.registry, &ws.env.registry)?;
    let prefix = &ws.settings.prefix;
    crate::publish::push_images(&reg, &ws.store, prefix, &images, opts.jobs, &ctx.printer).await
}

impl Report for PushReport {
    fn show(&self, printer: &Printer) {
        printer.status(
            "Finished",
            format!(
                "{} blobs uploaded ({} bytes), {} already there",
                self.blobs_uploaded, self.bytes_uploaded, self.blobs_present
            ),
        );
    }
}
