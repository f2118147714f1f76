//! `kci-build build`: build what the store lacks (see [`crate::imagebuild`]), update the
//! lockfile, and with `--push` publish the selection.

use super::{Context, Report};
use crate::printer::Printer;
use crate::store::Store;

pub use crate::imagebuild::{BuildOptions, BuildReport, LockMode};

pub async fn run(ctx: &Context, opts: &BuildOptions) -> anyhow::Result<BuildReport> {
    let mut ws = ctx.workspace()?;
    let store = Store::open(ws.store.root())?;
    crate::imagebuild::run_in(&mut ws, &store, opts, &ctx.printer).await
}

impl Report for BuildReport {
    /// The status lines said it all.
    fn show(&self, _: &Printer) {}

    fn verdict(&self) -> anyhow::Result<()> {
        Ok(self.into_result()?)
    }
}
