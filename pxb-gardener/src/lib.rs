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
//!   an expired one is never handed out. [`kube_client`] builds a client from one.
//!
//! Architecture Invariant: nothing here writes a kubeconfig to disk or logs key material.

mod classify;
mod kubeconfig;
mod provider;
mod types;

pub use classify::{KUBECONFIG_ADDRESSES, Policy, classify, classify_object, identity};
pub use kubeconfig::{kube_client, kube_config, parse_access};
pub use provider::{
    GardenAuth, GardenerConfig, GardenerProvider, ProviderStats, Running, map_kube_error, renew_time,
};
pub use types::{
    AdvertisedAddress, CloudProfileRef, Condition, Extra, Hibernation, KubernetesSpec, LastOperation,
    Project, ProjectSpec, ProviderSpec, Shoot, ShootSpec, ShootStatus,
};
