//! `pxb location …`

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use pxb_core::{CheckOptions, CheckReport, check_location};

use crate::location::LocationArgs;

/// Location commands.
#[derive(Debug, Subcommand)]
pub enum LocationCommand {
    /// Check that a location can be listed, written, read back and deleted from.
    ///
    /// Prints one line per step and exits 0 only when every step passed.
    Check(CheckArgs),
}

/// Arguments of `pxb location check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    location: LocationArgs,
    /// Print one JSON document instead of lines.
    #[arg(long)]
    json: bool,
    /// The longest one step may take, in seconds.
    #[arg(long, default_value_t = 8)]
    step_timeout: u64,
}

pub(crate) async fn run(cmd: LocationCommand) -> ExitCode {
    match cmd {
        LocationCommand::Check(args) => check(args).await,
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let report = match args.location.open() {
        Err(e) => CheckReport::configuration_failed(&args.location.location, &e),
        Ok(opened) => {
            let opts = CheckOptions {
                step_timeout: Duration::from_secs(args.step_timeout.max(1)),
                scopes: vec![pxb_azure::STORAGE_SCOPE.to_owned()],
            };
            check_location(
                &opened.url.to_string(),
                opened.store.as_ref(),
                opened.token.as_deref(),
                &opts,
            )
            .await
        }
    };
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        writeln!(out, "{report}")
    };
    if written.is_err() {
        return ExitCode::from(3);
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
