//! The custom resources through which the server instructs an agent (group `pxb.io`, version
//! `v1alpha1`, namespace `pxb-system`): [`BackupLocation`], [`ApplicationBackup`] and
//! [`ApplicationRestore`]. They are defined here once; `deploy/crds/` holds the generated CRDs
//! ([`crds_yaml`]), and a test fails when those files are stale.
//!
//! Repeatable requests (validate, sync, verify) are counters in `spec` that the agent
//! acknowledges in `status.observed…`: bumping a counter asks once more, and the request is done
//! when the observed value equals it.
//!
//! Fields that could be enums (provider, auth mode, reclaim policy…) are strings constrained by
//! the schema, so the API server rejects unknown values, and an agent that meets one anyway (an
//! older CRD, an unvalidated store) can still read the object and report it Invalid instead of
//! failing to decode it.

use std::collections::BTreeMap;

use kube_core::CustomResourceExt as _;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of pxb's custom resources.
pub const GROUP: &str = "pxb.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// The namespace the agent works in.
pub const AGENT_NAMESPACE: &str = "pxb-system";

/// Where backups go: an Azure Blob container or a directory, and how the agent reaches it.
// Several `printcolumn(type_ = …)` look like duplicated attributes to clippy; they are not.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "pxb.io",
    version = "v1alpha1",
    kind = "BackupLocation",
    namespaced,
    status = "BackupLocationStatus",
    shortname = "pbl",
    category = "pxb",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.validation.phase"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.validation.reason",
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupLocationSpec {
    /// `azure` (an Azure Blob container) or `file` (a directory on the agent's node).
    #[schemars(extend("enum" = ["azure", "file"]))]
    pub provider: String,
    /// Azure: the storage account name (taken from `endpoint` when that is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Azure: the container; file: the directory (absolute path).
    pub container: String,
    /// A name prefix inside the container, so several locations can share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Azure: the Blob endpoint, e.g. `https://<account>.blob.core.windows.net` (the default) or a
    /// private endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// How the agent authenticates to the location (Azure only).
    #[serde(default)]
    pub auth: LocationAuth,
    /// Import the backups found in the location once when the agent first sees it.
    #[serde(default)]
    pub sync: bool,
    /// Bump to ask for a validation now.
    #[serde(default)]
    pub validate_request: i64,
    /// Bump to ask for a sync now.
    #[serde(default)]
    pub sync_request: i64,
    /// Bump to ask for a verify (missing-object check) now.
    #[serde(default)]
    pub verify_request: i64,
}

/// How the agent authenticates to an Azure location. Its default (also the schema's default for a
/// location without `auth`) is Workload Identity: a derived `Default` would give an empty `mode`,
/// which the schema's enum refuses, so a real API server rejects the CRD.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationAuth {
    /// `workloadIdentity` (federated, the default: the pod's projected token, no secret) or
    /// `secretRef` (classic: an account key or SAS from a Secret in `pxb-system`).
    #[serde(default = "workload_identity")]
    #[schemars(extend("enum" = ["workloadIdentity", "secretRef"]))]
    pub mode: String,
    /// Workload Identity: the client id of the managed identity for this location; the pod's
    /// `AZURE_CLIENT_ID` when unset. Two locations can use two identities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Workload Identity: the Entra tenant; the pod's `AZURE_TENANT_ID` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Classic mode: the Secret holding `accountKey` or `sasToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

fn workload_identity() -> String {
    "workloadIdentity".into()
}

impl Default for LocationAuth {
    fn default() -> Self {
        Self {
            mode: workload_identity(),
            client_id: None,
            tenant_id: None,
            secret_ref: None,
        }
    }
}

/// A Secret in the agent's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret.
    pub name: String,
}

/// What the agent observed about a location.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupLocationStatus {
    /// The last validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationStatus>,
    /// The last or running sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// The last or running verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyStatus>,
    /// The `validateRequest` handled last.
    #[serde(default)]
    pub observed_validate_request: i64,
    /// The `syncRequest` handled last.
    #[serde(default)]
    pub observed_sync_request: i64,
    /// The `verifyRequest` handled last.
    #[serde(default)]
    pub observed_verify_request: i64,
    /// The `metadata.generation` the status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Fingerprint of the connection settings the last validation used; a change of them (not of
    /// the request counters) asks for a new validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_connection: Option<String>,
}

impl BackupLocationSpec {
    /// A stable fingerprint (FNV-1a, hex) of what the agent connects with: provider, account,
    /// container, prefix, endpoint and auth. Request counters and `sync` are not part of it.
    pub fn connection_fingerprint(&self) -> String {
        let text = serde_json::json!([
            self.provider,
            self.account,
            self.container,
            self.prefix,
            self.endpoint,
            self.auth.mode,
            self.auth.client_id,
            self.auth.tenant_id,
            self.auth.secret_ref.as_ref().map(|r| &r.name),
        ])
        .to_string();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// Result of a location validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationStatus {
    /// `Pending`, `Valid` or `Invalid`.
    pub phase: String,
    /// The step that failed: `configure`, `authenticate`, `list`, `write`, `read` or `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Why it failed, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it last ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checked: Option<String>,
}

/// State of a location sync.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// `InProgress`, `Completed` or `Failed`.
    pub phase: String,
    /// The `syncRequest` this run handles (0: the first sync of a location with `sync: true`).
    #[serde(default)]
    pub request: i64,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// Last sign of life while it runs (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Backups found in the location.
    #[serde(default)]
    pub backups_found: u64,
    /// Backups new to this agent's catalog.
    #[serde(default)]
    pub backups_imported: u64,
    /// Where the next sync resumes (opaque).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// State of a verify run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyStatus {
    /// `InProgress`, `Completed` or `Failed`.
    pub phase: String,
    /// Last sign of life while it runs (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    /// Backups checked.
    #[serde(default)]
    pub backups_checked: u64,
    /// Backups with at least one missing or damaged object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged_backups: Vec<String>,
    /// Objects missing.
    #[serde(default)]
    pub missing_objects: u64,
    /// Missing objects per damaged backup id; a resource backup also counts those of the volume
    /// backups taken with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub missing_by_backup: BTreeMap<String, u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A backup of namespaces of this cluster into a location.
// Several `printcolumn(type_ = …)` look like duplicated attributes to clippy; they are not.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "pxb.io",
    version = "v1alpha1",
    kind = "ApplicationBackup",
    namespaced,
    status = "ApplicationBackupStatus",
    shortname = "pab",
    category = "pxb",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stage", type_ = "string", json_path = ".status.stage", priority = "1"),
    printcolumn(name = "Location", type_ = "string", json_path = ".spec.location"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationBackupSpec {
    /// Name of the `BackupLocation` (in `pxb-system`).
    pub location: String,
    /// Namespaces to back up.
    pub namespaces: Vec<String>,
    /// Only objects matching this label selector (`app=web,tier!=cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Only these kinds (`Deployment`, `deployments.apps`, …); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_kinds: Vec<String>,
    /// Never these kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_kinds: Vec<String>,
    /// Back up the data of the namespaces' persistent volumes.
    #[serde(default = "yes")]
    pub include_volumes: bool,
    /// `Delete` (deleting this object deletes the backup's data) or `Retain`.
    #[serde(default = "delete")]
    #[schemars(extend("enum" = ["Delete", "Retain"]))]
    pub reclaim_policy: String,
}

fn yes() -> bool {
    true
}

fn delete() -> String {
    "Delete".into()
}

/// Progress and result of a backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationBackupStatus {
    /// `Pending`, `InProgress`, `Success`, `PartialSuccess`, `Failed` or `Deleting`.
    #[serde(default)]
    pub phase: String,
    /// What it is doing: `Resources`, `Volumes`, `Committing`, `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why it is in this phase, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Progress so far.
    #[serde(default)]
    pub progress: Progress,
    /// Last sign of life while it runs (RFC 3339), at least every 15 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Per-volume results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeResult>,
    /// The backup's id in the location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Bytes of resources and volume data read, and bytes newly stored.
    #[serde(default)]
    pub sizes: Sizes,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<String>,
    /// The `metadata.generation` the status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// How many times it was started (a restart of the agent starts it again, once).
    #[serde(default)]
    pub attempts: u32,
    /// KubeVirt `VirtualMachine` objects in the backup.
    #[serde(default)]
    pub virtual_machines: u64,
}

/// Progress of a running operation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// Kubernetes objects done.
    #[serde(default)]
    pub objects: u64,
    /// Bytes of volume data done.
    #[serde(default)]
    pub bytes: u64,
    /// Recent rate, bytes per second.
    #[serde(default)]
    pub bytes_per_second: u64,
}

/// The result for one persistent volume.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeResult {
    /// Namespace of the claim.
    pub namespace: String,
    /// Name of the claim.
    pub claim: String,
    /// `Success`, `Failed` or `Skipped`.
    pub phase: String,
    /// Files backed up.
    #[serde(default)]
    pub files: u64,
    /// Bytes read.
    #[serde(default)]
    pub bytes: u64,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Sizes of a backup.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sizes {
    /// Bytes of Kubernetes objects (uncompressed).
    #[serde(default)]
    pub resource_bytes: u64,
    /// Bytes of volume data read.
    #[serde(default)]
    pub volume_bytes: u64,
    /// Bytes this backup added to the location (after deduplication and compression).
    #[serde(default)]
    pub stored_bytes: u64,
}

/// A restore of a backup into this cluster.
// Several `printcolumn(type_ = …)` look like duplicated attributes to clippy; they are not.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "pxb.io",
    version = "v1alpha1",
    kind = "ApplicationRestore",
    namespaced,
    status = "ApplicationRestoreStatus",
    shortname = "par",
    category = "pxb",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Backup", type_ = "string", json_path = ".spec.backupId"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRestoreSpec {
    /// Name of the `BackupLocation` holding the backup.
    pub location: String,
    /// The backup's id in the location (`status.backupId` of an `ApplicationBackup`, or found by
    /// a sync).
    pub backup_id: String,
    /// Restore only these namespaces of the backup; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Source namespace → target namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Source storage class → target storage class.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_class_mapping: BTreeMap<String, String>,
    /// What to do with objects that exist: `Retain` (keep them, the default) or `Replace`.
    #[serde(default = "retain")]
    #[schemars(extend("enum" = ["Retain", "Replace"]))]
    pub existing_resource_policy: String,
    /// Cluster-scoped kinds to restore from the backup as they are (e.g. `ClusterRoleBinding`,
    /// `clusterroles.rbac.authorization.k8s.io`). Without them, a restore creates only the objects
    /// of the restored namespaces and the cluster-scoped objects those need (their Namespaces, the
    /// PersistentVolumes bound to restored claims, their StorageClasses and
    /// CustomResourceDefinitions); every other object is refused and listed in the failures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cluster_kinds: Vec<String>,
}

fn retain() -> String {
    "Retain".into()
}

/// Progress and result of a restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationRestoreStatus {
    /// `Pending`, `InProgress`, `Success`, `PartialSuccess` or `Failed`.
    #[serde(default)]
    pub phase: String,
    /// Why it is in this phase, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Last sign of life while it runs (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Objects created, replaced, left alone and failed.
    #[serde(default)]
    pub counts: RestoreCounts,
    /// The objects that failed (at most 100, with the reason).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ObjectFailure>,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<String>,
    /// When it finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<String>,
    /// Per-volume results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeResult>,
    /// How many times it was started (a restart of the agent starts it again, once).
    #[serde(default)]
    pub attempts: u32,
}

/// Object counts of a restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreCounts {
    /// Objects in the backup that were selected.
    #[serde(default)]
    pub total: u64,
    /// Created.
    #[serde(default)]
    pub created: u64,
    /// Replaced (policy `Replace`).
    #[serde(default)]
    pub replaced: u64,
    /// Left alone because they existed (policy `Retain`) or are never restored.
    #[serde(default)]
    pub skipped: u64,
    /// Failed, or refused (outside the restored namespaces, or of a cluster-scoped kind the
    /// restore does not allow).
    #[serde(default)]
    pub failed: u64,
}

/// One object a restore could not create.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ObjectFailure {
    /// Kind.
    pub kind: String,
    /// Namespace, if namespaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// What the API server said.
    pub reason: String,
}

/// The generated CRDs, as `(file name, YAML)`, in the order `deploy/crds/` holds them.
pub fn crds_yaml() -> Result<Vec<(&'static str, String)>, serde_saphyr::SerializeError> {
    let header = "# Generated from pxb-core/src/api/crd.rs; do not edit. Regenerate with\n\
                  # PXB_UPDATE_CRDS=1 cargo test -p pxb-daemon --test crds\n";
    let one = |crd| serde_saphyr::to_string(&crd).map(|y| format!("{header}{y}"));
    Ok(vec![
        ("backuplocations.pxb.io.yaml", one(BackupLocation::crd())?),
        ("applicationbackups.pxb.io.yaml", one(ApplicationBackup::crd())?),
        ("applicationrestores.pxb.io.yaml", one(ApplicationRestore::crd())?),
    ])
}
