//! `kci-build gc`: sweep what no recent lockfile references (see [`crate::gc`]), under the
//! store's exclusive lock (shared for `--dry-run`, which removes nothing).

use super::{Context, Report};
use crate::gc::{self, GcOptions, GcReport};
use crate::printer::{human_bytes, Printer};
use crate::store::{LockMode, Store};

impl Report for GcReport {
    fn show(&self, printer: &Printer) {
        for n in &self.notes {
            printer.warn(n);
        }
        let verb = if self.dry_run {
            "Would remove"
        } else {
            "Removed"
        };
        for s in &self.swept {
            tracing::info!("{verb} {:?} ({})", s.entry, human_bytes(s.bytes));
        }
        for c in &self.containers {
            printer.status(verb, format!("container {c} (a failed build)"));
        }
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for s in &self.swept {
            *kinds.entry(kind(&s.entry)).or_default() += 1;
        }
        let what: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        printer.status(
            verb,
            format!(
                "{} ({}), freeing {}; kept {} entries ({}) rooted by {}",
                if what.is_empty() {
                    "nothing".to_owned()
                } else {
                    what.join(", ")
                },
                self.swept.len(),
                human_bytes(self.swept_bytes),
                self.kept,
                human_bytes(self.kept_bytes),
                self.roots_from.join(", ")
            ),
        );
    }

    fn verdict(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn kind(e: &crate::store::Entry) -> &'static str {
    use crate::store::Entry;
    match e {
        Entry::Blob(_) => "blobs",
        Entry::KeyRecord(_) => "key records",
        Entry::RootfsKey(_) => "rootfs keys",
        Entry::Log(_) => "logs",
        Entry::Temp(_) => "temp entries",
    }
}

pub async fn run(ctx: &Context, opts: &GcOptions) -> anyhow::Result<GcReport> {
    let store = Store::at(&ctx.paths.store);
    let mode = if opts.dry_run {
        LockMode::Shared
    } else {
        LockMode::Exclusive
    };
    let _lock = ctx.lock_store(mode)?;
    gc::gc(&store, &ctx.settings.engine, opts).await
}
