//! Discovers the shoots of a Gardener project and issues a short-lived admin kubeconfig for each
//! eligible one, printing its name, whether pxb would serve it, and when its credential expires.
//!
//! Needs a garden kubeconfig (for example a project service account's, with the `admin` role for
//! `shoots/adminkubeconfig`) and the project's name:
//!
//! ```text
//! PXB_GARDEN_KUBECONFIG=/path/to/garden-kubeconfig.yaml PXB_GARDEN_PROJECT=dev \
//!     cargo run -p pxb-daemon --example discover_gardener
//! ```
//!
//! The kubeconfigs stay in memory; nothing is written to disk.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pxb_core::cluster::{ClusterProvider as _, Eligibility};
use pxb_gardener::{GardenerConfig, GardenerProvider};

/// Seconds from now until `t` (negative when past) and `t` as Unix seconds.
fn describe(t: SystemTime) -> String {
    let unix = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    match t.duration_since(SystemTime::now()) {
        Ok(left) => format!("expires in {}s (unix {unix})", left.as_secs()),
        Err(e) => format!("expired {}s ago (unix {unix})", e.duration().as_secs()),
    }
}

async fn run() -> anyhow::Result<()> {
    // PXB_GARDEN_KUBECONFIG and PXB_GARDEN_PROJECT, every other setting at its default (15 s
    // deadlines, ...), except 10-minute kubeconfigs (the shortest Gardener issues) instead of 1 h.
    let config = GardenerConfig::from_env()?.with_expiration(Duration::from_secs(600));
    let project = config.project.clone();
    let provider = GardenerProvider::connect(config).await?;

    let mut shoots = provider.discover().await?;
    shoots.sort_by(|a, b| a.name.cmp(&b.name));
    println!("project {project}: {} shoot(s)", shoots.len());
    for shoot in &shoots {
        match &shoot.eligibility {
            Eligibility::Ineligible { reason, message } => {
                println!("  {:<30} not served: {} ({message})", shoot.name, reason.as_str());
            }
            Eligibility::Eligible => match provider.access(&shoot.id).await {
                Ok(access) => println!(
                    "  {:<30} eligible; kubeconfig for {} {}",
                    shoot.name,
                    access.server,
                    describe(access.expires_at)
                ),
                Err(e) => println!("  {:<30} eligible; no kubeconfig: {e}", shoot.name),
            },
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Logging to stderr (PXB_LOG, default info) with credentials redacted, a multi-thread
    // runtime, and the error's chain on stderr with exit code 1.
    pxb_daemon::run_main("discover_gardener", run())
}
