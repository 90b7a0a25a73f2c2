//! `pxb-fixture`: the test fixtures of `pxb-tests` for tests in other languages (the Python
//! bindings' pytest suite, through `bindings/python/tests/conftest.py`), over
//! [`pxb_tests::external`].
//!
//! - `pxb-fixture azure`: a test CA, Azurite over HTTPS, the Entra ID stand-in and a projected
//!   token file ([`pxb_tests::external::AzureDescription`] has the keys);
//! - `pxb-fixture control-plane [--shoots N] [--project P] [--no-agents]`: a simulated garden with
//!   N shoots (default 3) in project P (default `acme`) with a real agent on each, the real
//!   `pxb-server` with the OIDC test issuer, Azurite with Workload Identity
//!   ([`pxb_tests::external::ControlPlaneDescription`] has the keys).
//!
//! When everything runs it prints exactly one JSON line on stdout, then serves until its stdin
//! reaches end of file (the test process closed the pipe or died) or it gets SIGTERM or SIGINT,
//! stops everything it started and exits 0. If something cannot start it prints the error on
//! stderr and exits 1 without a line. Logs of the server and the agents go to stderr with
//! `PXB_LOG` (e.g. `PXB_LOG=info`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pxb_tests::external::{self, ControlPlaneOptions};

/// Serves pxb's test fixtures to another process: one JSON line on stdout when ready, then up
/// until stdin closes.
#[derive(Parser, Debug)]
#[command(name = "pxb-fixture")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Test CA, Azurite over HTTPS, the Entra ID stand-in, a projected token file.
    Azure,
    /// Simulated garden and shoots with agents, pxb-server with the OIDC test issuer, Azurite.
    ControlPlane {
        /// Shoots in the project (`shoot-00000`, …).
        #[arg(long, default_value_t = 3)]
        shoots: usize,
        /// The Gardener project (a DNS label).
        #[arg(long, default_value = "acme")]
        project: String,
        /// Start no agents (the clusters stay `AgentMissing`).
        #[arg(long)]
        no_agents: bool,
    },
}

async fn run(cli: Cli) -> anyhow::Result<external::Release> {
    match cli.command {
        Command::Azure => {
            let (fx, description) = external::start_azure()?;
            let release = external::serve(&description, &fx).await;
            drop(fx);
            release
        }
        Command::ControlPlane {
            shoots,
            project,
            no_agents,
        } => {
            let options = ControlPlaneOptions {
                project,
                shoots,
                agents: !no_agents,
            };
            let (mut cp, description) = external::start_control_plane(&options).await?;
            let release = external::serve(&description, &cp.azure).await;
            cp.stop().await;
            drop(cp);
            release
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("PXB_LOG").is_some()
        && let Err(e) = pxb_daemon::init_logging("off")
    {
        eprintln!("pxb-fixture: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pxb-fixture: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    // Tasks still parked on the runtime (watches, idle connections) are not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(release) => {
            eprintln!("pxb-fixture: stopped ({release:?})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pxb-fixture: {e:#}");
            ExitCode::FAILURE
        }
    }
}
