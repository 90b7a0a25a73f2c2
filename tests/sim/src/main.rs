//! `pxb-sim`: the fleet simulator as a process (a Gardener garden and one Kubernetes API server
//! per shoot on loopback). See the `pxb_sim` library.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pxb_sim::{Fleet, FleetConfig, ProjectRole};

#[derive(Parser)]
#[command(
    name = "pxb-sim",
    about = "Simulated Gardener fleet for pxb tests, demos and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a garden with one project of N shoots until interrupted.
    Serve {
        /// Number of shoots.
        #[arg(long, default_value_t = 20)]
        shoots: usize,
        /// Project name (namespace `garden-<name>`).
        #[arg(long, default_value = "dev")]
        project: String,
        /// Where to write a garden kubeconfig for a service account that is admin of the project.
        #[arg(long)]
        garden_kubeconfig_out: PathBuf,
        /// Address of the garden API.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// Shortest kubeconfig lifetime the garden accepts, in seconds (Gardener: 600).
        #[arg(long, default_value_t = 600)]
        kubeconfig_min_seconds: u64,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Make every shoot look as if pxb's agent were installed and acknowledged every
        /// location as valid (see `SimShoot::simulate_agent`).
        #[arg(long)]
        simulate_agents: bool,
        /// Blackhole every N-th shoot (`shoot-00000`, `shoot-0000N`, …): its API server accepts
        /// connections and never answers. 10 blackholes 10 %.
        #[arg(long)]
        blackhole_every: Option<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            shoots,
            project,
            garden_kubeconfig_out,
            listen,
            kubeconfig_min_seconds,
            threads,
            simulate_agents,
            blackhole_every,
        } => {
            let fleet = Fleet::start(FleetConfig {
                garden_listen: listen,
                kubeconfig_min_seconds,
                worker_threads: threads,
                ..FleetConfig::default()
            })?;
            fleet.add_project(&project)?;
            fleet.add_shoots(&project, "shoot", shoots)?;
            for i in 0..shoots {
                let name = format!("shoot-{i:05}");
                if simulate_agents {
                    fleet.shoot(&project, &name)?.simulate_agent()?;
                }
                if blackhole_every.is_some_and(|n| n > 0 && i % n == 0) {
                    fleet.set_fault(&project, &name, pxb_sim::Fault::Offline)?;
                }
            }
            let token = fleet.add_service_account(&project, "pxb", ProjectRole::Admin)?;
            std::fs::write(&garden_kubeconfig_out, fleet.garden_kubeconfig(&token))?;
            println!("READY {}", fleet.garden_url());
            std::io::stdout().flush()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            drop(fleet);
            std::thread::sleep(Duration::from_millis(10));
            Ok(())
        }
    }
}
