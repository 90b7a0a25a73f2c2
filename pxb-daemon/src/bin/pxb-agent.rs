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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PXB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pxb-agent: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match rt.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pxb-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
