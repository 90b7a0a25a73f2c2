//! `pxb-daemon`: the `pxb` command line, `pxb-agent` and `pxb-server`.
//!
//! Binaries stay thin: they parse arguments, set up logging and call into [`cli`]. Everything they
//! wire is a library type that tests build directly.

pub mod agent;
pub mod cli;
pub mod crd;
pub mod kube_cluster;
pub mod location;
pub mod server;

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
        .with_writer(std::io::stderr)
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
