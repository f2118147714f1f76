//! `kci-build check [TARGET…]`: rebuild from scratch into a throw-away store and compare with
//! the lockfile; on a mismatch, name the layer, the path and what differs.

use std::fmt::Write as _;

use anyhow::Context as _;

use super::{Context, Report, Workspace};
use crate::core::names::{Digest, TargetName};
use crate::imagebuild::{self as build, BuildOptions, LockMode};
use crate::layerdiff;
use crate::printer::Printer;
use crate::publish::{fetch_blob, repository};
use crate::registry::Registry;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Targets to rebuild (with their parents); all when empty.
    pub targets: Vec<TargetName>,
    pub jobs: usize,
    /// Where locked layers missing from the local store are fetched from (what `push`
    /// published), so a clean CI machine can still explain a difference.
    pub registry: Option<String>,
}

/// The explanation, and whether every target reproduced its locked digests.
#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    pub text: String,
    pub reproduced: bool,
    pub lockfile: std::path::PathBuf,
}

impl Report for CheckReport {
    fn show(&self, _: &Printer) {
        print!("{}", self.text);
    }

    fn verdict(&self) -> anyhow::Result<()> {
        if !self.reproduced {
            anyhow::bail!("the rebuild does not reproduce {}", self.lockfile.display());
        }
        Ok(())
    }
}

pub async fn run(ctx: &Context, opts: &CheckOptions) -> anyhow::Result<CheckReport> {
    let mut ws = ctx.workspace()?;
    let (text, reproduced) = rebuild_and_compare(
        &mut ws,
        &opts.targets,
        opts.jobs,
        ctx.verbose,
        opts.registry.as_deref(),
        &ctx.printer,
    )
    .await?;
    Ok(CheckReport {
        text,
        reproduced,
        lockfile: ws.paths.lockfile.clone(),
    })
}

async fn rebuild_and_compare(
    ws: &mut Workspace,
    targets: &[TargetName],
    jobs: usize,
    verbose: bool,
    registry: Option<&str>,
    printer: &Printer,
) -> anyhow::Result<(String, bool)> {
    let registry = registry
        .map(|r| Registry::new(r, &ws.env.registry))
        .transpose()?;
    let main = Store::open(ws.store.root())?;
    let scratch_dir = tempfile::tempdir_in(main.tmp_dir()).context("creating a scratch store")?;
    let scratch = Store::open(scratch_dir.path())?;
    printer.status(
        "Rebuilding",
        format!(
            "{} from scratch",
            if targets.is_empty() {
                "every target".to_owned()
            } else {
                names(targets)
            }
        ),
    );
    let opts = BuildOptions {
        targets: targets.to_vec(),
        jobs,
        lock: LockMode::Leave,
        verbose,
        registry: None,
        push: false,
        engines: vec!["default".into()],
    };
    let report = build::run_in(ws, &scratch, &opts, printer).await?;
    // A target that could not be rebuilt is not reproduced (the summary said why).
    report.into_result()?;
    let mut out = String::new();
    let mut all_ok = true;
    for o in &report.targets {
        let name: TargetName = o.name.parse()?;
        let Some(locked) = ws.lock.targets.get(&name) else {
            all_ok = false;
            let _ = writeln!(out, "{name}: not in {}", ws.paths.lockfile.display());
            continue;
        };
        if locked.output.manifest.as_str() == o.manifest {
            let _ = writeln!(out, "{name}: reproduced {}", locked.output.manifest);
            continue;
        }
        all_ok = false;
        let _ = writeln!(
            out,
            "{name}: NOT reproduced: locked {} rebuilt {}",
            locked.output.manifest, o.manifest
        );
        let key: Digest = o.key.parse()?;
        let rebuilt = scratch
            .lookup(&key)
            .context("the rebuilt image vanished from the scratch store")?;
        let new_layers: Vec<&Digest> = rebuilt.layers.iter().map(|l| &l.digest).collect();
        if new_layers.len() != locked.output.layers.len() {
            let _ = writeln!(
                out,
                "  layer count {} -> {}",
                locked.output.layers.len(),
                new_layers.len()
            );
        }
        for (i, (old, new)) in locked.output.layers.iter().zip(new_layers).enumerate() {
            if old == new {
                continue;
            }
            let _ = writeln!(
                out,
                "  layer {} ({} -> {}):",
                i + 1,
                old.short(),
                new.short()
            );
            let repo = repository(&ws.settings.prefix, &name);
            let reg = registry.as_ref();
            out.push_str(&explain_layer(&main, &scratch, reg, &repo, old, new).await?);
        }
        if rebuilt.is_index() {
            let _ = writeln!(
                out,
                "  index members: {:?} -> {:?}",
                locked.output.members, rebuilt.members
            );
        } else if locked
            .output
            .layers
            .iter()
            .eq(rebuilt.layers.iter().map(|l| &l.digest))
            && locked.output.config.as_ref() != Some(&rebuilt.config)
        {
            let old = locked
                .output
                .config
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_else(|| "(none)".into());
            let _ = writeln!(
                out,
                "  same layers, different config: {old} -> {}",
                rebuilt.config
            );
        }
    }
    Ok((out, all_ok))
}

fn names(t: &[TargetName]) -> String {
    t.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// What differs between a locked layer (in `main`, or fetched from the registry) and its
/// rebuild (in `scratch`), one indented line each.
async fn explain_layer(
    main: &Store,
    scratch: &Store,
    registry: Option<&Registry>,
    repo: &str,
    old: &Digest,
    new: &Digest,
) -> anyhow::Result<String> {
    if !main.has_blob(old) {
        match registry {
            Some(reg) => fetch_blob(reg, main, repo, old).await?,
            None => return Ok(format!("    the locked layer is not in the local store ({}); its contents cannot be compared (pass --registry to fetch it)\n", main.root().display())),
        }
    }
    let a = layerdiff::read_layer(&main.blob_path(old))
        .with_context(|| format!("reading layer {old}"))?;
    let b = layerdiff::read_layer(&scratch.blob_path(new))
        .with_context(|| format!("reading layer {new}"))?;
    Ok(layerdiff::diff(&a, &b, 20)
        .iter()
        .map(|line| format!("    {line}\n"))
        .collect())
}
