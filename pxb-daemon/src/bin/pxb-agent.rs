//! `pxb-agent`: the per-cluster executor. Configuration from the environment
//! (`pxb_daemon::agent::AgentConfig`), the agent built over its default seams and spawned, then
//! drained on SIGTERM or Ctrl-C. The command line takes only `--version` and `--help`.

use std::process::ExitCode;

use clap::Parser;
use pxb_daemon::agent::{AgentBuilder, AgentConfig};

/// The pxb agent: runs on each cluster and does the work that touches the tenant's data.
#[derive(Parser)]
#[command(
    name = "pxb-agent",
    version,
    after_help = "Configuration comes from the environment, on top of the KEY=VALUE file \
                  PXB_CONFIG_FILE names (the environment wins): PXB_NAMESPACE, PXB_LISTEN, \
                  PXB_CLUSTER_NAME, PXB_RESTORE_ROOT, PXB_CA_FILE, \
                  PXB_VALIDATE_INTERVAL_SECONDS, PXB_VERIFY_INTERVAL_SECONDS, \
                  PXB_STEP_TIMEOUT_SECONDS, and AZURE_CLIENT_ID, AZURE_TENANT_ID, \
                  AZURE_FEDERATED_TOKEN_FILE, AZURE_AUTHORITY_HOST for Workload Identity."
)]
struct Args {}

async fn run() -> anyhow::Result<()> {
    let config = AgentConfig::from_env()?;
    let agent = AgentBuilder::new(config).build().await?.spawn().await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    agent.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    // Exits after printing for --version and --help, with a usage error for anything else.
    let Args {} = Args::parse();
    pxb_daemon::run_main("pxb-agent", run())
}
