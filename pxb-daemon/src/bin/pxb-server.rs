//! `pxb-server`: the central control plane. Reads `--config FILE` (YAML, each key overridable by
//! a `PXB_…` environment variable), serves the REST API, and shuts down gracefully on SIGTERM or
//! Ctrl-C. `--print-default-config` prints the commented defaults.
//!
//! Config → build → spawn → drain; everything it wires is `pxb_daemon::server::ServerBuilder`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};

/// The pxb control plane.
#[derive(Parser)]
#[command(name = "pxb-server", version)]
struct Args {
    /// Configuration file (YAML). Without it, the defaults and PXB_… variables apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the commented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// DEVELOPMENT ONLY: accept the static bearer token in this file as a provider admin
    /// (`PXB_DEV_TOKEN` sets the token itself). Not taken on the command line, where every local
    /// user could read it. Accepted only when the API listens on a loopback address.
    #[arg(long, value_name = "FILE")]
    dev_token_file: Option<PathBuf>,
}

/// The development token: the content of `--dev-token-file`, else `PXB_DEV_TOKEN`.
fn dev_token(args: &Args) -> anyhow::Result<Option<String>> {
    Ok(match &args.dev_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading --dev-token-file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("PXB_DEV_TOKEN").ok(),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Config.
    let config = ServerConfig::load(args.config.as_deref(), |k| std::env::var(k).ok())?;
    let mut builder = ServerBuilder::new(config);
    if let Some(token) = dev_token(&args)? {
        builder = builder.dev_token(token);
    }
    if let Ok(key) = std::env::var("PXB_SECRETS_KEY") {
        builder = builder.secrets_key(key);
    }
    // Build, spawn.
    let daemon = builder.build().await?.spawn()?;
    println!("READY http://{}", daemon.addr);
    // Drain on SIGTERM or Ctrl-C.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    daemon.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{DEFAULT_CONFIG_YAML}");
        return ExitCode::SUCCESS;
    }
    pxb_daemon::run_main("pxb-server", run(args))
}
