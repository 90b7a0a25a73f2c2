//! pxb's test harness: real components started on loopback for tests, demos and benchmarks. It
//! depends on nothing of the product, so any crate's tests can use it.
//!
//! - [`tls::TestCa`]: a certificate authority and server certificates generated at test time;
//! - [`azurite::Azurite`]: the Azure Storage emulator over HTTPS with bearer-token support;
//! - [`entra::FakeEntra`]: an Entra ID token endpoint that performs the Workload Identity
//!   (client-assertion) exchange and checks the assertion against the projected token file, or,
//!   in federated mode, against federated identity credentials with the issuer's published keys;
//! - [`azure::AzureFixture`]: the three above and a projected token file, wired together;
//! - [`jwks`]: OIDC key discovery fetched anonymously, JWT signature checks (ES256, RS256) and
//!   signed tokens for forgeries; the Entra stand-in's federated mode uses it;
//! - [`jwt`]: unsigned JWTs shaped like Kubernetes service-account tokens;
//! - [`oidc::TestIssuer`]: an OpenID Connect issuer (discovery and JWKS) signing RS256 tokens;
//! - [`logs`]: captured log lines of the code under test;
//! - [`telemetry_service::TelemetryService`]: the support channel's telemetry service
//!   (registration with a CSR, mutual-TLS OTLP/HTTP uploads of metrics and logs), recording what
//!   arrives;
//! - [`postgres::Postgres`]: a throw-away PostgreSQL server (Debian's) on a loopback port;
//! - [`promtool_check_metrics`]: Prometheus' own checker over an exposition.
//!
//! Every component listens on 127.0.0.1 on a port it picks, and is stopped by its own process id
//! or task when its handle is dropped. A component that cannot start is an error, never a skip.

pub mod azure;
pub mod azurite;
pub mod entra;
pub mod jwks;
pub mod jwt;
pub mod logs;
pub mod oidc;
pub mod postgres;
pub mod real_cluster;
pub mod server;
pub mod telemetry_service;
pub mod tls;

use std::net::TcpListener;
use std::path::PathBuf;

/// The workspace root (where `Cargo.lock` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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
