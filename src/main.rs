//! kci-build's entry point: parse, set up output, hand the command line to the runner, exit
//! with its code.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _};
use kci_build::cli::Cli;
use kci_build::error::ExitCode as Code;
use kci_build::printer::{ColorChoice, Printer};
use kci_build::settings::Env;

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
    // The environment is read here, once; everything below gets settings.
    let env = Env::from_process();
    let color = match cli.color {
        ColorChoice::Auto if env.get("NO_COLOR").is_some() => ColorChoice::Never,
        c => c,
    };
    let printer = Printer::new(color, cli.quiet);
    // `--lockfile` names the images lockfile by default; deploy reads the rootfs one
    // unless it is given on the command line.
    let lockfile_given = matches.value_source("lockfile") == Some(ValueSource::CommandLine);
    ExitCode::from(kci_build::runner::run(&cli, &env, lockfile_given, &printer) as u8)
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
