//! `pxb-daemon`: the agent and the server as libraries, the `pxb` command line, and the three
//! thin binaries over them (`pxb`, `pxb-agent`, `pxb-server`).
//!
//! Features keep each binary lean (all are on by default):
//! - `agent`: the per-cluster agent ([`agent`]); no SQLite, no server HTTP stack;
//! - `server`: the control plane ([`server`]) with its SQLite catalog and REST API;
//! - `client`: the typed client of the server's REST API ([`client`]);
//! - `cli`: the `pxb` command line ([`cli`]), over `client`;
//! - `demo`: `pxb demo` ([`demo`]) and pxb on the fleet simulator ([`sim`]); needs the other three;
//! - `conformance`: the conformance suites of this crate's seams, for other implementations' tests.

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub use pxb_core::api::crd;
#[cfg(feature = "demo")]
pub mod demo;
pub mod kube_cluster;
pub mod location;
pub mod names;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "demo")]
pub mod sim;

/// A log writer that removes credentials ([`pxb_core::redact::redact`]) from each formatted
/// line before it reaches `W`: a secret that slipped into an error or a field stays out of the
/// logs.
pub struct RedactingWriter<W>(pub W);

impl<W: std::io::Write> std::io::Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(pxb_core::redact::redact(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// What every binary's `main` does: logging to stderr (`PXB_LOG`, default `info`), a multi-thread
/// runtime, `run` on it, and an exit code (`1` with the error's chain on stderr, `3` when the
/// runtime cannot start).
pub fn run_main<F>(name: &str, run: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PXB_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| RedactingWriter(std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(3);
        }
    };
    match rt.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
