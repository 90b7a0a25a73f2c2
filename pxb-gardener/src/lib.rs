//! pxb's cluster provider for Gardener.
//!
//! [`GardenerProvider`] implements [`pxb_core::cluster::ClusterProvider`] over a garden API with a
//! project service account:
//!
//! - **Discovery.** Reads the [`Project`] for its namespace, then lists (paged) and watches its
//!   [`Shoot`]s. Each shoot is [`classify`]-ed: eligible, or ineligible with a reason (provider
//!   type, Kubernetes below 1.30 compared as semver with pre-releases counted, hibernated, being
//!   deleted, not reconciled, malformed). A cluster's identity is the shoot's `status.uid`.
//!   [`GardenerProvider::spawn`] runs a full cycle every `discovery_interval` plus the watch, and
//!   sends each [`pxb_core::cluster::ClusterDiff`] to the caller.
//! - **Access.** `shoots/{name}/adminkubeconfig` with a configurable `expirationSeconds`; the
//!   returned `expirationTimestamp` is trusted. Credentials stay in memory (never on disk), are
//!   renewed at a fraction of their lifetime with per-cluster jitter, retried with backoff, and
//!   an expired one is never handed out. [`kube_client`] builds a client from one. Whether a
//!   credential is fresh, due for renewal or expired is decided by the wall clock of
//!   [`GardenerConfig::clock`] ([`pxb_core::SystemClock`] unless
//!   [`GardenerConfig::with_clock`] injects another, e.g. a [`pxb_core::ManualClock`] in tests).
//!
//! Architecture Invariant: nothing here writes a kubeconfig to disk or logs key material.
//!
//! # Quick start: discover a project's shoots and get short-lived access
//!
//! With the path of a project service account's kubeconfig in `PXB_GARDEN_KUBECONFIG` and the
//! project's name in `PXB_GARDEN_PROJECT` ([`GardenerConfig::from_env`]):
//!
//! ```no_run
//! use std::time::SystemTime;
//!
//! use pxb_core::cluster::ClusterProvider as _;
//! use pxb_gardener::{GardenerConfig, GardenerProvider, kube_client};
//!
//! # async fn example() -> pxb_core::Result<()> {
//! let provider = GardenerProvider::connect(GardenerConfig::from_env()?).await?;
//! for shoot in provider.discover().await? {
//!     if !shoot.eligibility.is_eligible() {
//!         println!("{}: not served ({:?})", shoot.name, shoot.eligibility);
//!         continue;
//!     }
//!     // A client-certificate kubeconfig, in memory only, valid for an hour by default.
//!     let access = provider.access(&shoot.id).await?;
//!     let left = access.expires_at.duration_since(SystemTime::now()).unwrap_or_default();
//!     let client = kube_client(&access)?;
//!     let version = client
//!         .apiserver_version()
//!         .await
//!         .map_err(|e| pxb_gardener::map_kube_error("reading the version", e))?;
//!     println!("{}: Kubernetes {}, access for {}s more", shoot.name, version.git_version, left.as_secs());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Keeping up with a project
//!
//! Settings can be made in code too; [`GardenerProvider::spawn`] then keeps the inventory and the
//! credentials fresh in the background and reports every change:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
//!
//! # async fn example() -> pxb_core::Result<()> {
//! let garden = GardenAuth::kubeconfig_file("/etc/garden/dev/kubeconfig")?;
//! let config = GardenerConfig::new(garden, "dev")
//!     .with_expiration(Duration::from_secs(30 * 60))
//!     .with_discovery_interval(Duration::from_secs(5 * 60));
//! let provider = GardenerProvider::connect(config).await?;
//! let (diffs, mut changes) = tokio::sync::mpsc::unbounded_channel();
//! let _running = provider.spawn(diffs); // stops when dropped
//! while let Some(diff) = changes.recv().await {
//!     println!("+{} -{} ~{}", diff.added.len(), diff.removed.len(), diff.changed.len());
//! }
//! # Ok(())
//! # }
//! ```

mod classify;
mod kubeconfig;
mod provider;
mod types;

pub use classify::{
    ISSUER_ADDRESS, ISSUER_ANNOTATION, ISSUER_MANAGED, KUBECONFIG_ADDRESSES, Policy, classify,
    classify_object, identity, managed_issuer,
};
pub use kubeconfig::{kube_client, kube_config, parse_access};
pub use provider::{
    ENV_GARDEN_KUBECONFIG, ENV_GARDEN_PROJECT, GardenAuth, GardenerConfig, GardenerProvider, ProviderStats,
    Running, map_kube_error, renew_time,
};
pub use types::{
    AdvertisedAddress, CloudProfileRef, Condition, Extra, Hibernation, KubernetesSpec, LastOperation,
    Project, ProjectSpec, ProviderSpec, Shoot, ShootSpec, ShootStatus,
};
