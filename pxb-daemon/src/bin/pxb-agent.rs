//! `pxb-agent`: the per-cluster executor. Reads its configuration from the environment (see
//! `pxb_daemon::agent::AgentConfig`), runs the controllers and the read API, and shuts down
//! gracefully on SIGTERM or Ctrl-C.

use std::process::ExitCode;

async fn run() -> anyhow::Result<()> {
    let config = pxb_daemon::agent::AgentConfig::from_env()?;
    let client = kube::Client::try_default().await?;
    let agent = pxb_daemon::agent::Agent::start(client, config).await?;
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
