//! kci-build's entry point: parse, set up output, run one command, map to an exit code.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _};
use kci_build::cli::{Cli, Command, ImportWhat};
use kci_build::error::{ExitCode as Code, Rendered};
use kci_build::ops::{self, Paths, Workspace};
use kci_build::printer::Printer;
use kci_build::store::Store;

fn main() -> ExitCode {
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            // Usage errors are bad input (1); help and version are success.
            return ExitCode::from(if e.use_stderr() {
                Code::BadInput as u8
            } else {
                0
            });
        }
    };
    init_tracing(cli.verbose);
    let printer = Printer::new(cli.color, cli.quiet);
    // `--lockfile` names the images lockfile by default; deploy reads the rootfs one
    // unless it is given on the command line.
    let lockfile_given = matches.value_source("lockfile") == Some(ValueSource::CommandLine);
    match run(&cli, lockfile_given, &printer) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            printer.error(Rendered(&e));
            ExitCode::from(ops::exit_code(&e) as u8)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "kci_build=info",
        _ => "kci_build=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KCI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn run(cli: &Cli, lockfile_given: bool, printer: &Printer) -> anyhow::Result<()> {
    // `diff` reads lockfiles only: it works outside a recipe tree (git calls it).
    if let Command::Diff { args, format } = &cli.command {
        print!("{}", ops::diff::run(args, &cli.lockfile, *format)?);
        return Ok(());
    }
    if let Command::Deploy {
        test_configs,
        check,
        format,
        storage_url,
        json,
    } = &cli.command
    {
        let args = ops::deploy::DeployArgs {
            test_configs: test_configs.clone(),
            lockfile: if lockfile_given {
                cli.lockfile.clone()
            } else {
                ops::deploy::default_lockfile().to_owned()
            },
            check: *check,
            format: *format,
            storage_url: storage_url.clone(),
        };
        let probe = ops::deploy::HttpProbe::new()?;
        let report = runtime()?.block_on(ops::deploy::run(&args, &probe, printer))?;
        if *json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        return Ok(report.into_result()?);
    }
    if let Command::Import {
        what:
            ImportWhat::RootfsConfigs {
                file,
                out,
                release,
                source_date_epoch,
            },
    } = &cli.command
    {
        let args = ops::import::ImportArgs {
            file: file.clone(),
            out: out.clone(),
            release: release.clone(),
            source_date_epoch: *source_date_epoch,
            images: cli.images.clone(),
        };
        return ops::import::run(&args, printer);
    }
    let paths = Paths {
        images: cli.images.clone(),
        lockfile: cli.lockfile.clone(),
        store: cli.store.clone().unwrap_or_else(Store::default_root),
    };
    // Commands that may rewrite the images lockfile hold its lock from before they read it.
    let mut images_lock = match &cli.command {
        Command::Build { .. } | Command::Rootfs { .. } => {
            Some(ops::lock_lockfile(&paths.store, &paths.lockfile, printer)?)
        }
        _ => None,
    };
    let ws = Workspace::load(&paths)?;
    match &cli.command {
        Command::Plan { targets, json } => print!("{}", ops::plan::run(&ws, targets, *json)?),
        Command::Why {
            target,
            recipes,
            rootfs_lockfile,
        } => print!(
            "{}",
            match target.split_once('/') {
                Some((config, arch)) =>
                    ops::why::rootfs(&ws, recipes, rootfs_lockfile, config, arch)?,
                None => ops::why::run(&ws, &target.parse()?)?,
            }
        ),
        Command::Build {
            targets,
            jobs,
            locked,
            json,
            registry,
            push,
        } => {
            let opts = ops::build::BuildOptions {
                targets: targets.clone(),
                jobs: *jobs,
                lock: if *locked {
                    ops::build::LockMode::Locked
                } else {
                    ops::build::LockMode::Update
                },
                verbose: cli.verbose > 0,
                registry: registry.clone(),
                push: *push,
            };
            let rt = runtime()?;
            let outcome = rt.block_on(async {
                tokio::select! {
                    r = ops::build::run(&ws, &opts, printer) => Some(r),
                    _ = tokio::signal::ctrl_c() => None,
                }
            });
            // Dropping the build aborts its tasks and their temp files go with them; finished
            // targets are in the store already, so a rerun resumes where this one stopped.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            let Some(report) = outcome else {
                printer.error("interrupted: finished targets are stored; run the same command again to resume");
                std::process::exit(130);
            };
            let report = report?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            report.into_result()?;
        }
        Command::Check {
            targets,
            jobs,
            registry,
        } => {
            let rt = runtime()?;
            let (text, reproduced) = rt.block_on(ops::check::run(
                &ws,
                targets,
                *jobs,
                cli.verbose > 0,
                registry.as_deref(),
                printer,
            ))?;
            print!("{text}");
            if !reproduced {
                anyhow::bail!(
                    "the rebuild does not reproduce {}",
                    paths.lockfile.display()
                );
            }
        }
        Command::Push {
            targets,
            registry,
            jobs,
            json,
        } => {
            let report =
                runtime()?.block_on(ops::push::run(&ws, targets, registry, *jobs, printer))?;
            printer.status(
                "Finished",
                format!(
                    "{} blobs uploaded ({} bytes), {} already there",
                    report.blobs_uploaded, report.bytes_uploaded, report.blobs_present
                ),
            );
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
        Command::Rootfs {
            configs,
            arches,
            recipes,
            rootfs_lockfile,
            jobs,
            locked,
            resume: _,
            storage,
            public_url,
            storage_prefix,
            xz_memory,
            stall_timeout,
            json,
        } => {
            let opts = ops::rootfs::RootfsOptions {
                configs: configs.clone(),
                arches: arches.clone(),
                recipes: recipes.clone(),
                lockfile: rootfs_lockfile.clone(),
                jobs: *jobs,
                locked: *locked,
                storage: storage.as_ref().map(|dest| ops::rootfs::StorageArgs {
                    dest: dest.clone(),
                    public_url: public_url.clone(),
                    prefix: storage_prefix.clone(),
                }),
                verbose: cli.verbose > 0,
                packing: kci_build::rootfs::pack::PackSettings {
                    xz_memory: xz_memory << 20,
                    transfer: kci_build::rootfs::collect::Transfer {
                        stall: std::time::Duration::from_secs((*stall_timeout).max(1)),
                        ..Default::default()
                    },
                },
            };
            let rt = runtime()?;
            let outcome = rt.block_on(async {
                tokio::select! {
                    r = ops::rootfs::run(&ws, &opts, images_lock.take(), printer) => Some(r),
                    _ = tokio::signal::ctrl_c() => None,
                }
            });
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            let Some(report) = outcome else {
                printer.error("interrupted: the build containers keep running; `kci-build rootfs --resume` picks them up");
                std::process::exit(130);
            };
            let report = report?;
            printer.raw(&ops::rootfs::table(&report));
            if *json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            report.into_result()?;
        }
        Command::Diff { .. } | Command::Import { .. } | Command::Deploy { .. } => {
            unreachable!("handled above")
        }
        Command::Load { targets } => runtime()?.block_on(ops::load::run(&ws, targets, printer))?,
        Command::Lock { .. } => {
            let problems = ops::lock::check(&ws)?;
            if !problems.is_empty() {
                anyhow::bail!(
                    "{} is out of date:\n  {}\nhelp: run `kci-build build` and commit the lockfile",
                    paths.lockfile.display(),
                    problems.join("\n  ")
                );
            }
            printer.status(
                "Checked",
                format!(
                    "{} matches the recipes ({} targets)",
                    paths.lockfile.display(),
                    ws.lock.targets.len()
                ),
            );
        }
    }
    Ok(())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
