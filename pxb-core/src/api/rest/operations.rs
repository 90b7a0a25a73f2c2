//! Backups, restores and schedules: what a caller asks for, and what a delete did.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::records::{BackupRecord, ClusterSelector, ExistingResourcePolicy};
use crate::schedule::SchedulePolicy;

/// A request to back up namespaces on one or more clusters.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupRequest {
    /// Clusters: `{"names": [...]}`, `{"labels": {...}}` or `{"all": true}`.
    pub clusters: ClusterSelector,
    /// Namespaces to back up (at least one).
    pub namespaces: Vec<String>,
    /// The location's name.
    pub location: String,
}

/// A request to restore a backup.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequest {
    /// The backup's id.
    pub backup: String,
    /// The target cluster's name; the backup's own cluster when absent.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Namespaces of the backup to restore; all when empty.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Source namespace to target namespace.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Cluster-scoped kinds to create as the backup holds them, e.g. `ClusterRoleBinding` or
    /// `clusterroles.rbac.authorization.k8s.io` (needs the org's admin role). Without them a
    /// restore creates only the restored namespaces' objects and the cluster-scoped objects those
    /// need; anything else in the backup is refused and listed in the restore's failures.
    #[serde(default)]
    pub allow_cluster_kinds: Vec<String>,
    /// Objects that already exist on the target cluster: `Retain` keeps them (the default),
    /// `Replace` replaces them with the backup's.
    #[serde(default)]
    pub existing_resource_policy: ExistingResourcePolicy,
}

/// A new schedule.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleRequest {
    /// The schedule's name (DNS label).
    pub name: String,
    /// When, how many to keep, time zone.
    pub policy: SchedulePolicy,
    /// Clusters.
    pub clusters: ClusterSelector,
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// The location's name.
    pub location: String,
    /// Created paused.
    #[serde(default)]
    pub paused: bool,
}

/// What a delete did.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOutcome {
    /// The backup as it is now (`Deleting`, or as it was when the record was removed).
    pub backup: BackupRecord,
    /// Whether the record is already gone.
    pub record_removed: bool,
    /// Whether the backup's data stays in the location.
    pub data_remains: bool,
    /// For humans.
    pub message: String,
}

/// Changes to a schedule; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSchedule {
    /// Pause (true) or resume (false); a resumed schedule does not make up the paused slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// A new policy (when, how many to keep, time zone); the next slot is computed from now.
    /// A smaller `retain` prunes at the schedule's next run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<SchedulePolicy>,
}

/// Query of a backup delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteQuery {
    /// Remove the record now and leave the data (for a cluster that is gone).
    #[serde(default)]
    pub force: bool,
}
