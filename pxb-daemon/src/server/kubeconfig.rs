//! Kubernetes client plumbing the server shares with `pxb-gardener`, which defines the kubeconfig
//! parsing: parsing a client-certificate kubeconfig into [`ClusterAccess`], a client configuration
//! from one, and readable errors from the client's (`crate::kube_error`, shared with the agent). Nothing here is specific to Gardener; this file is the one
//! place the rest of the server reaches it through (the Gardener discovery itself is
//! `gardener.rs`).

use std::time::SystemTime;

use pxb_core::Result;
use pxb_core::cluster::ClusterAccess;

/// The access a client-certificate kubeconfig (YAML) gives, trusted from `issued_at` to
/// `expires_at`.
pub(crate) fn parse_access(
    yaml: &str,
    issued_at: SystemTime,
    expires_at: SystemTime,
) -> Result<ClusterAccess> {
    pxb_gardener::parse_access(yaml, issued_at, expires_at)
}

/// A client configuration for `access`, in memory (nothing is written to disk).
pub(crate) fn client_config(access: &ClusterAccess) -> Result<kube::Config> {
    pxb_gardener::kube_config(access)
}

/// A client error as a [`pxb_core::Error`] of the matching kind, saying what was being done.
pub(crate) fn map_error(what: &str, e: kube::Error) -> pxb_core::Error {
    crate::kube_error::map_kube_error(what, e)
}
