//! The fleet-wide status and the server's readiness.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::records::ClusterState;

/// The fleet status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatusView {
    /// When the snapshot was built (RFC 3339).
    pub generated_at: Option<String>,
    /// Clusters per state among the visible orgs (or the `org` asked for), whatever the `state`
    /// filter.
    pub counts: BTreeMap<String, u64>,
    /// The same per org, for every org in `counts` that has clusters (orgs without clusters are
    /// left out).
    #[serde(default)]
    pub org_counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// The clusters, ordered by org, name and id.
    pub items: Vec<FleetEntry>,
    /// Cursor of the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One cluster in the fleet status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetEntry {
    /// The org.
    pub org: String,
    /// Cluster name.
    pub cluster: String,
    /// Cluster id.
    pub id: String,
    /// State.
    pub state: ClusterState,
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Last successful contact (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Seconds since `lastSeen` at the time of the read; absent when never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_secs: Option<u64>,
    /// Its locations.
    pub locations: LocationCounts,
}

/// Counts of a cluster's locations by validation phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationCounts {
    /// Valid here.
    pub valid: u32,
    /// Invalid here.
    pub invalid: u32,
    /// Not validated yet, requested, or stalled.
    pub pending: u32,
}

/// Readiness. Anyone may ask; only a provider admin (a bearer token) sees which orgs are
/// degraded and why.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Whether the server serves requests.
    pub ready: bool,
    /// How many orgs could not be loaded.
    pub degraded_org_count: usize,
    /// Orgs that could not be loaded, with the reason: for provider admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_orgs: Option<BTreeMap<String, String>>,
}
