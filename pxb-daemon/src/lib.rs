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

/// The logging of every pxb binary ([`pxb_telemetry::init`]): `PXB_LOG` (else `default_filter`)
/// and `PXB_LOG_FORMAT` (`text` or `json`) to stderr, with credentials removed from each line
/// ([`pxb_core::redact::redact`]) so that a secret that slipped into an error or a field stays
/// out of the logs. A bad variable is an error naming it.
pub fn init_logging(default_filter: &str) -> Result<(), pxb_telemetry::Error> {
    pxb_telemetry::init(
        pxb_telemetry::Settings::from_env(default_filter)?.redact_with(pxb_core::redact::redact),
    )
}

/// What every daemon's `main` does: logging ([`init_logging`], default `info`), a multi-thread
/// runtime, `run` on it, and an exit code (`1` with the error's chain on stderr, or with what is
/// wrong with `PXB_LOG`/`PXB_LOG_FORMAT`; `3` when the runtime cannot start).
pub fn run_main<F>(name: &str, run: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = init_logging("info") {
        eprintln!("{name}: {e}");
        return std::process::ExitCode::FAILURE;
    }
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
