//! Runs the pxb agent inside your own process: configuration from the environment, the agent
//! built over its default seams and started, then shut down on Ctrl-C (what the `pxb-agent`
//! binary does, as a library user would write it).
//!
//! Needs a Kubernetes cluster with pxb's custom resources installed (`pxb install` or the Helm
//! chart) and a kubeconfig (or an in-cluster service account) allowed to use them:
//!
//! ```text
//! PXB_NAMESPACE=pxb-system PXB_LISTEN=127.0.0.1:8080 PXB_CLUSTER_NAME=dev \
//!     cargo run -p pxb-daemon --example embed_agent
//! ```
//!
//! Every variable `AgentConfig::from_env` reads is documented on `AgentConfig`'s fields.

use std::process::ExitCode;

use pxb_daemon::agent::{AgentBuilder, AgentConfig};

async fn run() -> anyhow::Result<()> {
    let config = AgentConfig::from_env()?;
    // Each seam can be replaced before building: `.kube_client(..)` (default: the environment's
    // kubeconfig or service account), `.volume_driver(..)` (default: local-path volumes restored
    // under PXB_RESTORE_ROOT), `.location_opener(..)` (default: Azure Blob and file://
    // locations), `.clock(..)` (default: the system clock).
    let agent = AgentBuilder::new(config).spawn().await?;
    println!(
        "pxb agent running; read API on {}; Ctrl-C stops it",
        agent.api_addr
    );

    tokio::signal::ctrl_c().await?;
    // Records in each running operation that it was interrupted (the next agent resumes it).
    agent.shutdown().await;
    println!("pxb agent stopped");
    Ok(())
}

fn main() -> ExitCode {
    // Logging to stderr (PXB_LOG, default info) with credentials redacted, a multi-thread
    // runtime, and an exit code.
    pxb_daemon::run_main("embed_agent", run())
}
