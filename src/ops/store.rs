//! `kci-build store verify [--repair]`: re-hash the store and say what is wrong (see
//! [`crate::storeverify`]); `--repair` evicts it under the store's exclusive lock.

use super::{Context, Report};
use crate::printer::{human_bytes, Printer};
use crate::store::{LockMode, Store};
use crate::storeverify::{self, VerifyReport};

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub repair: bool,
}

impl Report for VerifyReport {
    fn show(&self, printer: &Printer) {
        for p in &self.problems {
            printer.error(&p.what);
        }
        for e in &self.evicted {
            printer.status("Evicted", format!("{e:?}"));
        }
        if self.temporary > 0 {
            printer.status(
                "Note",
                format!(
                    "{} entries left by killed runs (`kci-build gc` removes them)",
                    self.temporary
                ),
            );
        }
        printer.status(
            "Verified",
            format!(
                "{} blobs, {} key records, {} rootfs keys: {} files, {} in {:.1}s ({}/s); {} problem{}",
                self.blobs,
                self.key_records,
                self.rootfs_keys,
                self.files,
                human_bytes(self.bytes),
                self.seconds,
                human_bytes(self.throughput() as u64),
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" }
            ),
        );
    }

    fn verdict(&self) -> anyhow::Result<()> {
        if self.evicted.is_empty() && !self.problems.is_empty() {
            anyhow::bail!(
                "the store has {} problem{}; `kci-build store verify --repair` evicts what is wrong and the next build remakes it",
                self.problems.len(),
                if self.problems.len() == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }
}

pub fn verify(ctx: &Context, opts: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let store = Store::at(&ctx.paths.store);
    let mode = if opts.repair {
        LockMode::Exclusive
    } else {
        LockMode::Shared
    };
    let _lock = ctx.lock_store(mode)?;
    Ok(storeverify::verify(&store, opts.repair)?)
}
