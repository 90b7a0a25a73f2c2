//! The `pxb` command line: argument definitions and what each command does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod location;
mod output;
mod volume;

/// pxb: federated, secret-less backup for Kubernetes fleets.
#[derive(Debug, Parser)]
#[command(name = "pxb", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with backup locations.
    #[command(subcommand)]
    Location(location::LocationCommand),
    /// Back up and restore file trees.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// List and delete backups.
    #[command(subcommand)]
    Backup(volume::BackupCommand),
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Location(cmd) => location::run(cmd).await,
        Command::Volume(cmd) => volume::run_volume(cmd).await,
        Command::Backup(cmd) => volume::run_backup(cmd).await,
    }
}
