//! `pxb-daemon`: the agent and the server as libraries, the `pxb` command line, and the three
//! thin binaries over them (`pxb`, `pxb-agent`, `pxb-server`).
//!
//! Features keep each binary lean (all are on by default):
//! - `agent`: the per-cluster agent ([`agent`]) over the kube client; no SQLite, no server HTTP
//!   stack, no Gardener provider;
//! - `server`: the control plane ([`server`]) with its SQLite catalog, its REST API, the kube
//!   client and the Gardener provider;
//! - `client`: the typed client of the server's REST API ([`client`]);
//! - `cli`: the `pxb` command line ([`cli`]), over `client`; without `demo` it links neither the
//!   kube client nor any controller;
//! - `demo`: `pxb demo` ([`demo`]) and pxb on the fleet simulator ([`sim`]); needs the other three;
//! - `conformance`: the conformance suites of this crate's seams, for other implementations' tests.
//!
//! Where to start: [`server::ServerBuilder`] and [`agent::AgentBuilder`] compose a daemon from
//! its configuration and its seams (each has a default one call away); [`client::Client`] is the
//! typed client of the server's REST API ([`pxb_core::api::rest`]). `examples/` has more: a
//! directory backed up, a Gardener project discovered, the agent embedded, a cluster provider of
//! one's own.
//!
//! # Quick start: a server over in-memory twins, called with the typed client
//!
//! ```
//! # #[cfg(all(feature = "server", feature = "client"))]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//!
//! use pxb_core::api::rest::{CreateDiscovery, CreateOrg, ListQuery};
//! use pxb_core::catalog::MemoryCatalog;
//! use pxb_core::cluster::{ClusterId, ClusterInfo, StaticClusters, StaticDiscovery};
//! use pxb_daemon::client::Client;
//! use pxb_daemon::server::ServerBuilder;
//! use pxb_daemon::server::auth::{Identity, StaticTokens};
//! use pxb_daemon::server::config::{GardenCredential, ServerConfig};
//!
//! let mut config = ServerConfig::default();
//! config.api.listen = "127.0.0.1:0".into();
//! config.auth.provider_admin_groups = vec!["ops".into()];
//! // Org `acme` may discover project `dev` with the credential `garden`, whose one cluster is
//! // served by the cluster-provider twin (in place of Gardener).
//! config.garden_credentials.insert(
//!     "garden".into(),
//!     GardenCredential::new("unused").for_orgs(["acme"]).for_projects(["dev"]),
//! );
//! let discovery = StaticDiscovery::new();
//! let clusters = discovery.insert("garden", "dev", Arc::new(StaticClusters::new()));
//! clusters.insert(
//!     ClusterInfo::new(ClusterId("uid-prod-eu".into()), "prod-eu", "garden-dev")
//!         .with_provider_type("azure")
//!         .with_kubernetes_version("1.33.4")
//!         .with_region("westeurope"),
//!     None,
//! );
//! // Logins: one bearer token of a provider admin (in place of Entra ID).
//! let logins = StaticTokens::new().with("token-of-root", Identity::new("root").with_groups(["ops"]));
//!
//! let daemon = ServerBuilder::new(config)
//!     .cluster_provider(Arc::new(discovery))
//!     .catalog(Arc::new(MemoryCatalog::new()))
//!     .authenticator(Arc::new(logins))
//!     .build()
//!     .await?
//!     .spawn()?;
//!
//! let api = Client::builder(format!("http://{}", daemon.addr)).token("token-of-root").build()?;
//! assert!(api.whoami().await?.provider_admin);
//! api.create_org(&CreateOrg { id: "acme".into(), ..CreateOrg::default() }).await?;
//! let project = CreateDiscovery {
//!     id: "dev".into(),
//!     project: "dev".into(),
//!     credential: "garden".into(),
//!     interval_secs: None,
//! };
//! api.create_discovery("acme", &project).await?;
//! // Discovery runs in the background: the cluster shows up in the org.
//! let mut found = Vec::new();
//! for _ in 0..100 {
//!     found = api.list_clusters("acme", &ListQuery::default()).await?.items;
//!     if !found.is_empty() {
//!         break;
//!     }
//!     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
//! }
//! assert_eq!(found.first().map(|c| c.name.as_str()), Some("prod-eu"));
//!
//! daemon.shutdown().await;
//! # Ok(())
//! # }
//! # #[cfg(not(all(feature = "server", feature = "client")))]
//! # fn main() {}
//! ```

#[cfg(feature = "agent")]
pub mod agent;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "client")]
pub mod client;
pub use pxb_core::api::crd;
#[cfg(feature = "demo")]
pub mod demo;
// The kube-client plumbing, only where kube is linked (the agent and the server; not the command
// line without the demo).
#[cfg(any(feature = "agent", feature = "server"))]
pub mod kube_cluster;
#[cfg(any(feature = "agent", feature = "server"))]
mod kube_error;
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
