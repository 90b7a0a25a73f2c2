//! The pxb test harness: real components started on loopback for tests, demos and benchmarks.
//!
//! - [`tls::TestCa`]: a certificate authority and server certificates generated at test time;
//! - [`azurite::Azurite`]: the Azure Storage emulator over HTTPS with bearer-token support;
//! - [`entra::FakeEntra`]: an Entra ID token endpoint that performs the Workload Identity
//!   (client-assertion) exchange and checks the assertion against the projected token file;
//! - [`jwt`]: unsigned JWTs shaped like Kubernetes service-account tokens;
//! - [`oidc::TestIssuer`]: an OpenID Connect issuer (discovery and JWKS) signing RS256 tokens;
//! - [`sim::Fleet`]: the fleet simulator (a Gardener garden and one Kubernetes API per shoot).
//!
//! Every component listens on 127.0.0.1 on a port it picks, and is stopped by its own process id
//! or task when its handle is dropped. A component that cannot start is an error, never a skip.

pub mod azurite;
pub mod bench;
pub mod control;
pub mod engine;
pub mod entra;
pub mod fixture;
pub mod jwt;
pub mod logs;
pub mod oidc;
pub mod server;
pub mod shoots;
pub mod sim;
pub mod tls;

use std::net::TcpListener;
use std::path::PathBuf;

/// The workspace root (where `Cargo.lock` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free loopback port, chosen by the kernel.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `promtool` to check metrics with: `$PXB_PROMTOOL`, then `.cache/prometheus/usr/bin/promtool`
/// (where `scripts/install-deps` puts it), then `promtool` on the `PATH`.
pub fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("PXB_PROMTOOL") {
        return PathBuf::from(p);
    }
    let cached = workspace_root().join(".cache/prometheus/usr/bin/promtool");
    if cached.exists() {
        return cached;
    }
    PathBuf::from("promtool")
}

/// Runs `promtool check metrics` on `exposition`; the error holds promtool's complaints.
pub fn promtool_check_metrics(exposition: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let tool = promtool();
    let mut child = std::process::Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "{} is needed (scripts/install-deps provides it): {e}",
                tool.display()
            )
        })?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdin"))?
        .write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        anyhow::bail!(
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}
