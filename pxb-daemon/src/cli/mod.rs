//! The `pxb` command line: argument definitions and what each command does.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod federation;
pub mod fleet;
mod location;
mod output;
pub mod remote;
mod volume;

/// pxb: federated, secret-less backup for Kubernetes fleets.
#[derive(Debug, Parser)]
#[command(name = "pxb", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How to reach pxb-server (for the fleet commands).
    #[command(flatten)]
    pub conn: remote::Conn,
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
    /// List and delete backups in a location directly (without a server).
    #[command(subcommand)]
    Backup(volume::BackupCommand),
    /// Log in to a pxb-server and store the context.
    Login(fleet::LoginArgs),
    /// Show the contexts of the context file.
    Context,
    /// The fleet's clusters (through the server).
    #[command(subcommand)]
    Clusters(fleet::ClustersCommand),
    /// The org's backup locations (through the server).
    #[command(subcommand)]
    Locations(fleet::LocationsCommand),
    /// Backups across the fleet (through the server).
    #[command(subcommand)]
    Backups(fleet::BackupsCommand),
    /// Restores across the fleet (through the server).
    #[command(subcommand)]
    Restores(fleet::RestoresCommand),
    /// Backup schedules (through the server).
    #[command(subcommand)]
    Schedules(fleet::SchedulesCommand),
    /// The fleet-wide status (through the server).
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Prints a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Runs the demo: a simulated Gardener project, a server, agents, a location, and the whole
    /// flow; then serves the API until Ctrl-C (`--exit` stops after the flow). Options:
    /// `--shoots N`, `--location file|azurite`, `--listen ADDR`, `--exit`. With `--location
    /// azurite` it runs the test harness's `pxb-demo` next to `pxb`.
    #[cfg(feature = "demo")]
    #[command(disable_help_flag = true)]
    Demo {
        /// `--shoots N`, `--location file|azurite`, `--listen ADDR`, `--exit`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

impl Cli {
    /// The log filter when `PXB_LOG` is unset: warnings, except for the demo, whose server and
    /// agents would warn about the shoots it blackholes on purpose.
    pub fn default_log_filter(&self) -> &'static str {
        match self.command {
            #[cfg(feature = "demo")]
            Command::Demo { .. } => "off",
            _ => "warn",
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let conn = cli.conn;
    match cli.command {
        Command::Location(cmd) => location::run(cmd).await,
        Command::Volume(cmd) => volume::run_volume(cmd).await,
        Command::Backup(cmd) => volume::run_backup(cmd).await,
        Command::Login(args) => fleet::login(args).await,
        Command::Context => fleet::show_context(&conn),
        Command::Clusters(cmd) => fleet::clusters(conn, cmd).await,
        Command::Locations(cmd) => fleet::locations(conn, cmd).await,
        Command::Backups(cmd) => fleet::backups(conn, cmd).await,
        Command::Restores(cmd) => fleet::restores(conn, cmd).await,
        Command::Schedules(cmd) => fleet::schedules(conn, cmd).await,
        Command::Fleet(cmd) => fleet::fleet(conn, cmd).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pxb", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        #[cfg(feature = "demo")]
        Command::Demo { args } => demo(args).await,
    }
}

/// Runs the demo in this process; `--location azurite` needs the test harness's Azurite, so it runs
/// `pxb-demo` from the directory of this program (else from `PATH`) with `args`.
#[cfg(feature = "demo")]
async fn demo(args: Vec<String>) -> ExitCode {
    if crate::demo::wants_help(&args) {
        println!("{}", crate::demo::USAGE);
        return ExitCode::SUCCESS;
    }
    let (options, azurite) = match crate::demo::parse_args(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("pxb demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    if azurite || crate::demo::wants_support_channel(&args) || crate::demo::wants_entra_login(&args) {
        return harness_demo(args);
    }
    match crate::demo::run(options).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pxb demo: the fleet did not come out as expected");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pxb demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the test harness's `pxb-demo` (Azurite and a fake Entra ID) with `args`.
#[cfg(feature = "demo")]
fn harness_demo(args: Vec<String>) -> ExitCode {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("pxb-demo")))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| "pxb-demo".into());
    let mut command = std::process::Command::new(&program);
    command.args(&args);
    // Become the demo, so that its process id (for signals) is this one.
    #[cfg(unix)]
    {
        let e = std::os::unix::process::CommandExt::exec(&mut command);
        eprintln!(
            "pxb demo: --location azurite runs the test harness's pxb-demo (Azurite and a fake Entra ID), and {} cannot run: {e} (build it with `cargo build -p pxb-tests --bin pxb-demo`)",
            program.display()
        );
        ExitCode::FAILURE
    }
    #[cfg(not(unix))]
    match command.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!(
                "pxb demo: --location azurite runs the test harness's pxb-demo (Azurite and a fake Entra ID), and {} cannot run: {e} (build it with `cargo build -p pxb-tests --bin pxb-demo`)",
                program.display()
            );
            ExitCode::FAILURE
        }
    }
}
