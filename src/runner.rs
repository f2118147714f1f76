//! The one runner every command goes through: it resolves the command line (arguments,
//! environment through clap, defaults) into the command's options once, takes the lockfile
//! locks the command writes under, runs it under Ctrl-C, shows its report (`--json`: the
//! report as JSON on stdout) and turns its verdict into an exit code. `main` only parses
//! and sets up output.

use std::future::Future;
use std::time::Duration;

use crate::cli::{Cli, Command, ImportWhat, StoreAction};
use crate::error::{ExitCode, Interrupted, Rendered};
use crate::ops::{self, Context, Paths, Report};
use crate::printer::Printer;
use crate::rootfs::collect::Transfer;
use crate::rootfs::pack::PackSettings;
use crate::settings::{Env, Settings};

/// Runs the parsed command line with the environment's settings; `lockfile_given`:
/// `--lockfile` was on the command line (deploy reads the rootfs lockfile unless it was).
pub fn run(cli: &Cli, env: &Env, lockfile_given: bool, printer: &Printer) -> ExitCode {
    let settings = match Settings::resolve(cli.store.clone(), env) {
        Ok(s) => s,
        Err(e) => {
            printer.error(Rendered(&anyhow::Error::new(e)));
            return ExitCode::BadInput;
        }
    };
    let paths = Paths {
        images: cli.images.clone(),
        lockfile: cli.lockfile.clone(),
        store: settings.store.clone(),
    };
    let ctx = Context::new(paths, settings, printer.clone(), cli.verbose > 0);
    match dispatch(&ctx, cli, lockfile_given) {
        Ok(()) => ExitCode::Ok,
        Err(e) => {
            printer.error(Rendered(&e));
            ops::exit_code(&e)
        }
    }
}

fn dispatch(ctx: &Context, cli: &Cli, lockfile_given: bool) -> anyhow::Result<()> {
    match &cli.command {
        Command::Plan { .. } => plan(ctx, cli),
        Command::Why {
            target,
            recipes,
            rootfs_lockfile,
        } => {
            let opts = ops::why::WhyOptions {
                target: target.clone(),
                recipes: recipes.clone(),
                rootfs_lockfile: rootfs_lockfile.clone(),
            };
            finish(ctx, ops::why::run(ctx, &opts), false)
        }
        Command::Diff { args, format } => {
            let opts = ops::diff::DiffOptions {
                args: args.clone(),
                lockfile: cli.lockfile.clone(),
                format: *format,
            };
            finish(ctx, ops::diff::run(ctx, &opts), false)
        }
        Command::Build { json, .. } => {
            let opts = build_options(&cli.command, ctx.verbose);
            ctx.share_store()?;
            // Held from before the lockfile is read until it is written.
            ctx.lock_images_lockfile()?;
            // Dropping the build aborts its tasks and their temp files go with them; finished
            // targets are in the store already, so a rerun resumes where this one stopped.
            let what_now = "finished targets are stored; run the same command again to resume";
            let report = cancellable(ops::build::run(ctx, &opts), what_now)?;
            finish(ctx, report, *json)
        }
        Command::Check {
            targets,
            jobs,
            registry,
        } => {
            let opts = ops::check::CheckOptions {
                targets: targets.clone(),
                jobs: *jobs,
                registry: registry.clone(),
            };
            let what_now = "the scratch store is removed; run the same command again";
            ctx.share_store()?;
            finish(
                ctx,
                cancellable(ops::check::run(ctx, &opts), what_now)?,
                false,
            )
        }
        Command::Push {
            targets,
            registry,
            jobs,
            json,
        } => {
            let opts = ops::push::PushOptions {
                targets: targets.clone(),
                registry: registry.clone(),
                jobs: *jobs,
            };
            let what_now = "uploaded blobs stay; run the same command again to finish";
            ctx.share_store()?;
            finish(
                ctx,
                cancellable(ops::push::run(ctx, &opts), what_now)?,
                *json,
            )
        }
        Command::Rootfs { json, .. } => {
            let opts = rootfs_options(&cli.command);
            ctx.lock_images_lockfile()?;
            ctx.lock_lockfile(&opts.lockfile)?;
            ctx.share_store()?;
            let what_now =
                "the build containers keep running; `kci-build rootfs --resume` picks them up";
            finish(
                ctx,
                cancellable(ops::rootfs::run(ctx, &opts), what_now)?,
                *json,
            )
        }
        Command::Deploy { json, .. } => {
            let args = deploy_args(cli, lockfile_given);
            let what_now = "the file was not written; run the same command again";
            finish(
                ctx,
                cancellable(ops::deploy::run(ctx, &args), what_now)?,
                *json,
            )
        }
        Command::Import { what } => {
            let args = import_args(what, cli);
            finish(ctx, ops::import::run(ctx, &args), false)
        }
        Command::Load { targets } => {
            let what_now = "loaded images stay; run the same command again";
            ctx.share_store()?;
            finish(
                ctx,
                cancellable(ops::load::run(ctx, targets), what_now)?,
                false,
            )
        }
        Command::Lock { .. } => lock(ctx, cli),
        Command::Fetch { .. } => fetch(ctx, cli),
        Command::Gc { .. } => gc(ctx, cli),
        Command::Store { action } => store(ctx, action),
        Command::AptProxy { .. } => apt_proxy(ctx, cli),
        Command::RootfsTask(args) => rootfs_task(args),
        Command::Prod { .. } => prod(ctx, cli),
    }
}

/// `kci-build rootfs-task`: one Swarm job of `rootfs --swarm`, on its node.
fn rootfs_task(args: &crate::cli::RootfsTaskArgs) -> anyhow::Result<()> {
    let opts = ops::rootfs_task::TaskOptions {
        registry: args.registry.clone(),
        repo: args.repo.clone(),
        tag: args.tag.clone(),
        inputs_repo: args.inputs_repo.clone(),
        inputs: args.inputs.clone(),
        config: args.config.clone(),
        arch: args.arch.clone(),
        key: args.key.clone(),
        source_date_epoch: args.source_date_epoch,
        xz_preset: args.xz_preset,
        xz_memory: args.xz_memory << 20,
    };
    cancellable(ops::rootfs_task::run(&opts), "the task stopped")?
}

/// `kci-build gc`: the sweep, under the store's lock (taken by the command).
fn gc(ctx: &Context, cli: &Cli) -> anyhow::Result<()> {
    let Command::Gc {
        keep_revisions,
        dry_run,
        rootfs_lockfile,
        json,
    } = &cli.command
    else {
        unreachable!("dispatched on Command::Gc")
    };
    let opts = crate::gc::GcOptions {
        images_lockfile: ctx.paths.lockfile.clone(),
        rootfs_lockfile: rootfs_lockfile.clone(),
        keep_revisions: *keep_revisions,
        dry_run: *dry_run,
    };
    let what_now = "what was swept is gone, the rest is whole; run the same command again";
    finish(ctx, cancellable(ops::gc::run(ctx, &opts), what_now)?, *json)
}

/// `kci-build store …`.
fn store(ctx: &Context, action: &StoreAction) -> anyhow::Result<()> {
    let StoreAction::Verify { repair, json } = action;
    let opts = ops::store::VerifyOptions { repair: *repair };
    finish(ctx, ops::store::verify(ctx, &opts), *json)
}

/// `kci-build plan`: the graph, or with `--engines N` the schedule of a build.
fn plan(ctx: &Context, cli: &Cli) -> anyhow::Result<()> {
    let Command::Plan {
        targets,
        json,
        engines,
        cold,
        rootfs,
    } = &cli.command
    else {
        unreachable!("dispatched on Command::Plan")
    };
    let opts = ops::plan::PlanOptions {
        targets: targets.clone(),
        json: *json,
        engines: *engines,
        cold: *cold,
        rootfs: rootfs.clone(),
    };
    // `--json` changes the plan's own text: it is data either way.
    finish(ctx, ops::plan::run(ctx, &opts), false)
}

/// `kci-build apt-proxy` (hidden): serves until nothing holds it, under the store's shared lock.
fn apt_proxy(ctx: &Context, cli: &Cli) -> anyhow::Result<()> {
    let Command::AptProxy {
        lease,
        pins,
        downloads,
        prefer,
    } = &cli.command
    else {
        unreachable!("dispatched on Command::AptProxy")
    };
    let opts = crate::aptproxy::ServeOptions {
        pins: crate::aptproxy::parse_pins(pins, downloads).map_err(anyhow::Error::msg)?,
        prefer: *prefer,
        lease: *lease,
    };
    ctx.share_store()?;
    cancellable(ops::apt_proxy::run(ctx, &opts), "the proxy stopped")?
}

/// `kci-build lock --check`, or `lock --refresh` under both lockfiles' locks.
fn lock(ctx: &Context, cli: &Cli) -> anyhow::Result<()> {
    let Command::Lock {
        refresh,
        recipes,
        rootfs_lockfile,
        json,
        ..
    } = &cli.command
    else {
        unreachable!("dispatched on Command::Lock")
    };
    let Some(suites) = refresh else {
        return finish(ctx, ops::lock::run(ctx), *json);
    };
    ctx.lock_images_lockfile()?;
    ctx.lock_lockfile(rootfs_lockfile)?;
    ctx.share_store()?;
    let opts = ops::lock::RefreshOptions {
        suites: suites.clone(),
        recipes: recipes.clone(),
        rootfs_lockfile: rootfs_lockfile.clone(),
    };
    let what_now = "the lockfiles were not written; run the same command again";
    let report = cancellable(ops::lock::refresh(ctx, &opts), what_now)?;
    finish(ctx, report, *json)
}

/// `kci-build fetch`: the apt cache filled (and shared) under the store's shared lock.
fn fetch(ctx: &Context, cli: &Cli) -> anyhow::Result<()> {
    let Command::Fetch {
        targets,
        registry,
        push,
        json,
    } = &cli.command
    else {
        unreachable!("dispatched on Command::Fetch")
    };
    ctx.share_store()?;
    let opts = ops::fetch::FetchOptions {
        targets: targets.clone(),
        registry: registry.clone(),
        push: *push,
    };
    let what_now = "fetched files stay in the cache; run the same command again";
    let report = cancellable(ops::fetch::run(ctx, &opts), what_now)?;
    finish(ctx, report, *json)
}

/// `kci-build prod …`: the options, and the journal's word on an interrupted run.
fn prod(ctx: &Context, cli: &Cli) -> anyhow::Result<()> {
    let Command::Prod {
        site,
        dry_run,
        date,
        json,
        action,
    } = &cli.command
    else {
        unreachable!("called for prod only")
    };
    let opts = ops::prod::ProdOptions {
        site: site.clone(),
        action: action.clone(),
        dry_run: *dry_run,
        date: date.clone(),
        json: *json,
    };
    // Dropping the run leaves the step it was in started and not ended in the journal: the
    // rerun starts that step again.
    let what_now = "the journal says where it stopped; run the same command again to resume";
    finish(
        ctx,
        cancellable(ops::prod::run(ctx, &opts), what_now)?,
        *json,
    )
}

fn import_args(what: &ImportWhat, cli: &Cli) -> ops::import::ImportArgs {
    let ImportWhat::RootfsConfigs {
        file,
        out,
        release,
        source_date_epoch,
        kernelci_core_url,
        kernelci_core_ref,
    } = what;
    ops::import::ImportArgs {
        file: file.clone(),
        out: out.clone(),
        release: release.clone(),
        source_date_epoch: *source_date_epoch,
        images: cli.images.clone(),
        kernelci_core: crate::core::gitsource::GitSourceSpec {
            url: kernelci_core_url.clone(),
            git_ref: kernelci_core_ref.clone(),
        },
    }
}

fn build_options(command: &Command, verbose: bool) -> ops::build::BuildOptions {
    let Command::Build {
        targets,
        jobs,
        locked,
        registry,
        push,
        engines,
        json: _,
    } = command
    else {
        unreachable!("called for build only")
    };
    ops::build::BuildOptions {
        targets: targets.clone(),
        jobs: *jobs,
        lock: if *locked {
            ops::build::LockMode::Locked
        } else {
            ops::build::LockMode::Update
        },
        verbose,
        registry: registry.clone(),
        push: *push,
        engines: engines.clone(),
    }
}

fn deploy_args(cli: &Cli, lockfile_given: bool) -> ops::deploy::DeployArgs {
    let Command::Deploy {
        test_configs,
        check,
        format,
        storage_url,
        json: _,
    } = &cli.command
    else {
        unreachable!("called for deploy only")
    };
    ops::deploy::DeployArgs {
        test_configs: test_configs.clone(),
        lockfile: if lockfile_given {
            cli.lockfile.clone()
        } else {
            ops::deploy::default_lockfile().to_owned()
        },
        check: *check,
        format: *format,
        storage_url: storage_url.clone(),
    }
}

fn rootfs_options(command: &Command) -> ops::rootfs::RootfsOptions {
    let Command::Rootfs {
        configs,
        arches,
        recipes,
        rootfs_lockfile,
        kernelci_core,
        jobs,
        locked,
        resume,
        storage,
        public_url,
        storage_prefix,
        registry,
        swarm,
        xz_memory,
        stall_timeout,
        json: _,
    } = command
    else {
        unreachable!("called for rootfs only")
    };
    ops::rootfs::RootfsOptions {
        configs: configs.clone(),
        arches: arches.clone(),
        recipes: recipes.clone(),
        lockfile: rootfs_lockfile.clone(),
        kernelci_core: kernelci_core.clone(),
        jobs: *jobs,
        locked: *locked,
        resume: *resume,
        storage: storage.as_ref().map(|dest| ops::rootfs::StorageArgs {
            dest: dest.clone(),
            public_url: public_url.clone(),
            prefix: storage_prefix.clone(),
        }),
        registry: registry.clone(),
        swarm: *swarm,
        packing: PackSettings {
            xz_memory: xz_memory << 20,
            transfer: Transfer {
                stall: Duration::from_secs((*stall_timeout).max(1)),
                ..Default::default()
            },
        },
    }
}

/// Shows the report, prints it as JSON on stdout with `--json`, and returns its verdict.
fn finish<R: Report>(ctx: &Context, report: anyhow::Result<R>, json: bool) -> anyhow::Result<()> {
    let report = report?;
    report.show(&ctx.printer);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    report.verdict()
}

/// Runs `command` on a fresh runtime until it ends or Ctrl-C; on Ctrl-C the command is
/// dropped (its tasks aborted) and the error says `what_now`.
fn cancellable<T>(
    command: impl Future<Output = anyhow::Result<T>>,
    what_now: &'static str,
) -> anyhow::Result<anyhow::Result<T>> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        tokio::select! {
            r = command => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Some(r) => Ok(r),
        None => Err(Interrupted { what_now }.into()),
    }
}
