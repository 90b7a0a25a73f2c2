//! `pxb-server`: the central control plane.
//!
//! [`Server`] holds the org state loaded from the [`Catalog`](pxb_core::catalog::Catalog) (orgs,
//! discovery configurations, clusters, locations and their per-cluster status), consumes the
//! cluster provider's diffs, visits every eligible cluster with bounded concurrency
//! ([`reconcile`]), keeps the [`fleet::FleetSnapshot`] fresh, and serves the REST API ([`api`]).
//!
//! [`ServerBuilder`] composes it from a [`config::ServerConfig`] and its seams — where clusters come
//! from ([`pxb_core::cluster::DiscoverySource`], Gardener by default: [`GardenerDiscovery`]), the
//! catalog ([`pxb_core::catalog::CatalogStore`], SQLite by default), logins
//! ([`auth::Authenticator`], Entra ID by default) and the clock — and runs it as a [`Daemon`].
//!
//! Code map: `state.rs` is the shared state every other file works on (and imports nothing of
//! them but `backup_info.rs`, the catalog decorator under it that keeps the per-backup info
//! series and times the catalog); `orgs.rs`, `discovery.rs`, `clusters.rs`, `locations.rs` and `sessions.rs` what the API
//! and discovery change; `scheduler.rs` the visits, housekeeping and the schedules' loop;
//! backups, restores and schedules: [`backups`] (requests, deletes, and the helpers the others
//! share), `restores.rs`, `schedules.rs` (firing and retention), `in_flight.rs` (the operations in
//! flight, handed to and taken back from each visit), `findings.rs` (what a sync or verify finds in
//! a location) and, during a visit, `operations.rs`; `daemon.rs` the builder and the running
//! daemon; `gardener.rs` the one file naming Gardener's provider, `kubeconfig.rs` the kubeconfig
//! handling shared with it.
//!
//! Architecture Invariant: the server never waits on a cluster without a deadline. Visits run on
//! their own tasks under a semaphore; an unreachable cluster is a state with a backoff, never a
//! blocked loop, and the fleet status is read from a snapshot without touching a cluster.
//!
//! Architecture Invariant: shoot kubeconfigs live in the providers' memory only; the catalog never
//! sees one. Classic secrets are stored sealed ([`seal::Sealer`]).

pub(crate) mod api;
pub mod auth;
mod backup_info;
pub mod backups;
pub mod catalog_copy;
mod clusters;
pub mod config;
pub mod console;
mod daemon;
mod discovery;
mod findings;
pub mod fleet;
mod gardener;
mod in_flight;
pub mod install;
mod kubeconfig;
mod locations;
pub(crate) mod operations;
mod orgs;
pub mod postgres;
pub mod reconcile;
pub mod replicas;
mod restores;
mod scheduler;
mod schedules;
pub mod seal;
mod sessions;
pub mod sqlite;
mod state;
pub mod support;

pub use self::api::openapi;
pub use self::daemon::{BuiltServer, Daemon, ServerBuilder, open_catalog};
pub use self::gardener::GardenerDiscovery;
pub use self::scheduler::Running;
pub use self::state::{DiscoveryState, DiscoveryStatus, Metrics, OrgState, Server, ServerDeps};
pub use self::support::{SupportRunning, SupportToggle};
