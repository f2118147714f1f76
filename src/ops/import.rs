//! `kci-build import rootfs-configs FILE`: KernelCI's rootfs-configs.yaml → `recipes/*.toml`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context as _;

use super::{Context, Done};
use crate::core::recipe::Settings;
use crate::fsutil;
use crate::rootfs::{self, ImportOptions};

pub struct ImportArgs {
    pub file: PathBuf,
    pub out: PathBuf,
    pub release: Option<String>,
    /// The recipes' SOURCE_DATE_EPOCH; default: the image tree's `config.toml`.
    pub source_date_epoch: Option<u64>,
    /// The image recipe tree, for that default.
    pub images: PathBuf,
}

/// Converts and writes the recipes, then says how many and what was not carried over.
pub fn run(ctx: &Context, args: &ImportArgs) -> anyhow::Result<Done> {
    let printer = &ctx.printer;
    let source_date_epoch = match args.source_date_epoch {
        Some(s) => s,
        None => {
            let cfg = args.images.join("config.toml");
            let text = std::fs::read_to_string(&cfg).with_context(|| {
                format!("reading {} (or pass --source-date-epoch)", cfg.display())
            })?;
            Settings::parse(&cfg, &text)?.source_date_epoch
        }
    };
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let known_packages = args.release.as_deref().and_then(|r| {
        let known = packages_of(r);
        if known.is_none() {
            printer.warn(format!(
                "package names are not checked: this machine's apt lists do not cover {r}"
            ));
        }
        known
    });
    let opts = ImportOptions {
        release: args.release.clone(),
        source_date_epoch,
        known_packages,
    };
    let imported = rootfs::import(&text, &opts)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.file.display()))?;
    let source = args
        .file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    for (from, recipe) in &imported.recipes {
        let mut header = format!(
            "# Converted by `kci-build import rootfs-configs` from {source} (config `{from}`).\n"
        );
        for p in imported
            .problems
            .iter()
            .filter(|p| p.starts_with(&format!("{from}.")))
        {
            header.push_str(&format!("# NOTE {}\n", one_line(p)));
        }
        let path = args.out.join(format!("{}.toml", recipe.name));
        fsutil::atomic_write(&path, recipe.to_toml(&header).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        printer.status("Converted", format!("{from} → {}", path.display()));
    }
    for p in &imported.problems {
        printer.warn(format!("{}: {p}", args.file.display()));
    }
    printer.status(
        "Finished",
        format!(
            "{} recipes written, {} fields not carried over (listed above)",
            imported.recipes.len(),
            imported.problems.len()
        ),
    );
    Ok(Done {})
}

/// `text` as one comment line: a field name of the YAML may hold a line break, which must
/// not start a TOML line of the recipe (found by tests/fuzz.rs).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Package names of `release` as this machine's apt knows them, when the machine runs that
/// release (`apt-cache pkgnames`).
fn packages_of(release: &str) -> Option<BTreeSet<String>> {
    let os = std::fs::read_to_string("/etc/os-release").ok()?;
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))?
        .trim_matches('"');
    if codename != release {
        return None;
    }
    let out = std::process::Command::new("apt-cache")
        .arg("pkgnames")
        .output()
        .ok()?;
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.success() && !names.is_empty()).then_some(names)
}
