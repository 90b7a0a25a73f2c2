//! `pxb-agent`: the per-cluster executor. Configuration from the environment
//! (`pxb_daemon::agent::AgentConfig`), the agent built over its default seams and spawned, then
//! drained on SIGTERM or Ctrl-C.

use std::process::ExitCode;

use pxb_daemon::agent::{AgentBuilder, AgentConfig};

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
    pxb_daemon::run_main("pxb-agent", run())
}
