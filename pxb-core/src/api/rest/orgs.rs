//! Orgs, their discoveries, and imported clusters.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::records::{DiscoveryConfig, Mode, RoleBinding};

/// An org as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgView {
    /// Id.
    pub id: String,
    /// For humans.
    pub display_name: String,
    /// Default location mode.
    pub mode: Mode,
    /// `Ready` or `Degraded` (see the reason).
    pub state: OrgHealth,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Role bindings (shown to admins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<RoleBinding>,
}

/// Whether an org is served, as [`OrgView::state`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OrgHealth {
    /// Loaded; served.
    Ready,
    /// Its record could not be loaded (see the reason); nothing of it is served.
    Degraded,
    /// A state this version does not know (from a newer server); never sent by this one.
    #[serde(other)]
    Unknown,
}

impl OrgHealth {
    /// As the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgHealth::Ready => "Ready",
            OrgHealth::Degraded => "Degraded",
            OrgHealth::Unknown => "Unknown",
        }
    }
}

impl std::fmt::Display for OrgHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A new org.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrg {
    /// Id, a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub id: String,
    /// For humans.
    #[serde(default)]
    pub display_name: String,
    /// Default mode of its locations.
    #[serde(default)]
    pub mode: Mode,
    /// Who may do what.
    #[serde(default)]
    pub access: Vec<RoleBinding>,
}

/// Changes to an org; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOrg {
    /// For humans.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Default mode of new locations.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Who may do what (replaces the bindings).
    #[serde(default)]
    pub access: Option<Vec<RoleBinding>>,
}

/// A discovery configuration with how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryView {
    /// The configuration.
    #[serde(flatten)]
    pub config: DiscoveryConfig,
    /// Its state.
    pub status: DiscoveryStatus,
}

/// The state of a discovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiscoveryState {
    /// Connecting to its project (the first attempt).
    #[default]
    Starting,
    /// Discovering.
    Running,
    /// Refused, or failing to start (retried with backoff).
    Failing,
}

/// How a discovery is doing.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryStatus {
    /// `Starting`, `Running` or `Failing` (retried with backoff).
    #[schemars(with = "String")]
    pub state: DiscoveryState,
    /// Why it fails, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Since when (RFC 3339).
    pub since: String,
    /// Shoots the discovery knows (eligible or not).
    #[serde(default)]
    pub shoots: usize,
}

/// A new discovery configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDiscovery {
    /// Id, a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub id: String,
    /// The Gardener project.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub project: String,
    /// The name of a garden credential configured on the server.
    pub credential: String,
    /// Seconds between full discovery cycles (default 60, at least 5).
    #[serde(default)]
    pub interval_secs: Option<u64>,
}

/// A cluster to import (classic mode).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportCluster {
    /// Name, a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// A kubeconfig with a client certificate (YAML); stored sealed, never shown again.
    #[schemars(length(min = 1, max = 262144))]
    pub kubeconfig: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The org's state keeps its spelling; one a newer server sends reads as `Unknown` instead
    /// of failing the answer.
    #[test]
    fn org_states_read_as_written_and_unknown_ones_as_unknown() {
        for (text, state) in [
            ("Ready", OrgHealth::Ready),
            ("Degraded", OrgHealth::Degraded),
            ("Frozen", OrgHealth::Unknown),
        ] {
            let view: OrgView = serde_json::from_value(serde_json::json!({
                "id": "acme", "displayName": "Acme", "mode": "federated", "state": text}))
            .expect("an org view");
            assert_eq!(view.state, state);
        }
        for state in [OrgHealth::Ready, OrgHealth::Degraded] {
            assert_eq!(serde_json::to_value(state).expect("json"), state.as_str());
        }
    }
}
