//! Backup locations: creating, changing and showing them, and asking a cluster to sync one.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::records::{ClusterSelector, LocationRecord, Mode};

/// A classic credential.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialInput {
    /// A storage account key.
    #[serde(default)]
    pub account_key: Option<String>,
    /// A SAS token.
    #[serde(default)]
    pub sas_token: Option<String>,
}

/// A new backup location.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateLocation {
    /// Name, a DNS label; the `BackupLocation` CR on clusters has this name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// `azure` or `file`.
    #[schemars(extend("enum" = ["azure", "file"]))]
    pub provider: String,
    /// Azure storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// Container (azure) or absolute directory (file).
    #[schemars(length(min = 1, max = 1024))]
    pub container: String,
    /// Name prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Blob endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `federated` (default: the org's mode) or `classic`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Workload Identity client id for every cluster.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Entra tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Client ids per cluster name.
    #[serde(default)]
    pub cluster_client_ids: BTreeMap<String, String>,
    /// Classic mode: the credential (stored encrypted, never shown again).
    #[serde(default)]
    pub credential: Option<CredentialInput>,
    /// Which clusters get it.
    pub clusters: ClusterSelector,
    /// Sync its backups when it is first assigned to a cluster.
    #[serde(default)]
    pub sync: bool,
}

/// Changes to a location; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateLocation {
    /// Which clusters get it.
    #[serde(default)]
    pub clusters: Option<ClusterSelector>,
    /// Workload Identity client id for every cluster.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Entra tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Client ids per cluster name (replaces the map).
    #[serde(default)]
    pub cluster_client_ids: Option<BTreeMap<String, String>>,
    /// Sync its backups when it is first assigned to a cluster.
    #[serde(default)]
    pub sync: Option<bool>,
    /// Classic mode: a new credential.
    #[serde(default)]
    pub credential: Option<CredentialInput>,
}

/// A location as the API shows it (never its credential).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationView {
    /// Uid.
    pub id: String,
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Container or directory.
    pub container: String,
    /// Prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Mode.
    pub mode: Mode,
    /// Client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Per-cluster client ids.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_client_ids: BTreeMap<String, String>,
    /// Whether a classic credential is stored.
    pub has_credential: bool,
    /// Whether the server uses it: an inactive location is kept (a classic one's credential
    /// stays sealed) but sent to no cluster, and backups, restores, validations, syncs and
    /// verifies with it are refused. Absent (from an older server): active.
    #[serde(default = "active_default")]
    pub active: bool,
    /// Why it is inactive, e.g. "classic locations are inactive while the server runs in
    /// federated mode …"; absent while it is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_reason: Option<String>,
    /// Assignment.
    pub clusters: ClusterSelector,
    /// Sync on assignment.
    pub sync: bool,
    /// Created.
    pub created_at: String,
}

impl From<LocationRecord> for LocationView {
    fn from(l: LocationRecord) -> Self {
        LocationView {
            id: l.id,
            name: l.name,
            provider: l.provider,
            account: l.account,
            container: l.container,
            prefix: l.prefix,
            endpoint: l.endpoint,
            mode: l.mode,
            client_id: l.client_id,
            cluster_client_ids: l.cluster_client_ids,
            has_credential: l.credential.is_some(),
            active: true,
            inactive_reason: None,
            clusters: l.clusters,
            sync: l.sync,
            created_at: l.created_at,
        }
    }
}

/// What `active` is when a server does not say (one older than the field).
fn active_default() -> bool {
    true
}

impl LocationView {
    /// The view with why the server does not use the location (`None`: it does).
    pub fn with_inactive_reason(mut self, reason: Option<String>) -> Self {
        self.active = reason.is_none();
        self.inactive_reason = reason;
        self
    }
}

/// Ask for a sync on one cluster.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequestBody {
    /// The cluster, by name.
    pub cluster: String,
}
