//! The custom resources through which the server instructs an agent (group `pxb.io`, version
//! `v1alpha1`, namespace `pxb-system`): [`BackupLocation`], [`ApplicationBackup`] and
//! [`ApplicationRestore`]. They are defined here once; the agent's Helm chart
//! (`deploy/helm/pxb-agent/templates/crds/`) holds the generated CRDs ([`crds_yaml`]), `deploy/crds/`
//! is that chart's output, and tests fail when either is stale.
//!
//! Repeatable requests (validate, sync, verify) are counters in `spec` that the agent
//! acknowledges in `status.observed…`: bumping a counter asks once more, and the request is done
//! when the observed value equals it.
//!
//! Fields that could be enums (provider, auth mode, reclaim policy…) are strings constrained by
//! the schema, so the API server rejects unknown values, and an agent that meets one anyway (an
//! older CRD, an unvalidated store) can still read the object and report it Invalid instead of
//! failing to decode it.
//!
//! The phases the agent writes into the statuses are typed ([`LocationValidationPhase`],
//! [`RunPhase`], [`ApplicationBackupPhase`], [`ApplicationRestorePhase`], [`VolumePhase`]),
//! spelled on the wire as before. The schema lists their values, so the API server refuses
//! others; a value read anyway (an agent of another version, a hostile cluster, an unvalidated
//! store) decodes as `Unknown` with the text as it was, instead of failing the whole object.

use std::borrow::Cow;
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

/// A phase of a status the agent writes: its known values, and `Unknown` with the text of any
/// other (an agent of another version, a hostile cluster) or an empty one (none yet, the
/// default). `Unknown` is never written by the agent; the schema lists only the known values.
macro_rules! status_phases {
    ($(#[$meta:meta])* $name:ident { $($(#[$doc:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$doc])* $variant,)*
            /// A value this version does not know, as it was read (an agent of another version,
            /// a hostile cluster); empty when the status has no phase yet (the default). Never
            /// written by the agent.
            #[serde(untagged)]
            Unknown(String),
        }

        impl $name {
            /// The known values, as the schema lists them.
            pub const KNOWN: &'static [$name] = &[$($name::$variant,)*];

            /// As the status spells it.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                    $name::Unknown(s) => s,
                }
            }

            /// The phase `s` spells: a known one, else `Unknown(s)` (as deserializing `s` gives).
            pub fn parse(s: &str) -> Self {
                match s {
                    $(stringify!($variant) => $name::$variant,)*
                    other => $name::Unknown(other.to_owned()),
                }
            }

            /// Whether the status has no phase yet (absent or empty).
            pub fn is_unset(&self) -> bool {
                matches!(self, $name::Unknown(s) if s.is_empty())
            }
        }

        impl Default for $name {
            /// No phase yet: `Unknown("")`.
            fn default() -> Self {
                $name::Unknown(String::new())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self::parse(s)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "enum": [$(stringify!($variant)),*],
                })
            }
        }
    };
}

status_phases! {
    /// The phase of a location's validation ([`ValidationStatus::phase`]).
    LocationValidationPhase {
        /// Not validated yet.
        Pending,
        /// Every check passed.
        Valid,
        /// A check failed (see the failed step and the reason).
        Invalid,
    }
}

status_phases! {
    /// The phase of a location's sync or verify run ([`SyncStatus::phase`],
    /// [`VerifyStatus::phase`]).
    RunPhase {
        /// The agent runs it (with a heartbeat).
        InProgress,
        /// Done.
        Completed,
        /// It failed (see the message).
        Failed,
    }
}

status_phases! {
    /// The phase of an application backup ([`ApplicationBackupStatus::phase`]).
    ApplicationBackupPhase {
        /// Not started yet.
        Pending,
        /// The agent runs it (with a heartbeat, stage and progress).
        InProgress,
        /// Complete.
        Success,
        /// Complete, with some volumes failed or objects missing (see the message).
        PartialSuccess,
        /// Failed (see the message).
        Failed,
        /// The object was deleted; the agent deletes the backup's data.
        Deleting,
    }
}

impl ApplicationBackupPhase {
    /// Whether the backup is over (`Success`, `PartialSuccess` or `Failed`).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ApplicationBackupPhase::Success
                | ApplicationBackupPhase::PartialSuccess
                | ApplicationBackupPhase::Failed
        )
    }
}

status_phases! {
    /// The phase of an application restore ([`ApplicationRestoreStatus::phase`]).
    ApplicationRestorePhase {
        /// Not started yet.
        Pending,
        /// The agent runs it (with a heartbeat).
        InProgress,
        /// Every object and volume restored.
        Success,
        /// Some objects or volumes were not restored (see the failures).
        PartialSuccess,
        /// Failed (see the message).
        Failed,
    }
}

impl ApplicationRestorePhase {
    /// Whether the restore is over (`Success`, `PartialSuccess` or `Failed`).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ApplicationRestorePhase::Success
                | ApplicationRestorePhase::PartialSuccess
                | ApplicationRestorePhase::Failed
        )
    }
}

status_phases! {
    /// The result for one persistent volume ([`VolumeResult::phase`]).
    VolumePhase {
        /// Backed up or restored.
        Success,
        /// It failed (see the message).
        Failed,
        /// Left out (see the message).
        Skipped,
    }
}

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
    pub phase: LocationValidationPhase,
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
    pub phase: RunPhase,
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
    pub phase: RunPhase,
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
    /// `Pending`, `InProgress`, `Success`, `PartialSuccess`, `Failed` or `Deleting`; none until
    /// the agent takes the backup.
    #[serde(default, skip_serializing_if = "ApplicationBackupPhase::is_unset")]
    pub phase: ApplicationBackupPhase,
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
    pub phase: VolumePhase,
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
    /// `Pending`, `InProgress`, `Success`, `PartialSuccess` or `Failed`; none until the agent
    /// takes the restore.
    #[serde(default, skip_serializing_if = "ApplicationRestorePhase::is_unset")]
    pub phase: ApplicationRestorePhase,
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

/// The generated CRDs, as `(file name, YAML)`, in the order the agent chart and `deploy/crds/`
/// hold them.
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The phases read and write the strings they always had, so existing objects read unchanged.
    #[test]
    fn phases_keep_their_wire_spelling() {
        for p in ApplicationBackupPhase::KNOWN {
            let v = serde_json::to_value(p).expect("serialize");
            assert_eq!(v, json!(p.as_str()));
            let back: ApplicationBackupPhase = serde_json::from_value(v).expect("deserialize");
            assert_eq!(&back, p);
            assert!(!matches!(back, ApplicationBackupPhase::Unknown(_)));
        }
        let status: ApplicationBackupStatus = serde_json::from_value(json!({
            "phase": "PartialSuccess",
            "volumes": [{"namespace": "shop", "claim": "data", "phase": "Skipped"}],
        }))
        .expect("status");
        assert_eq!(status.phase, ApplicationBackupPhase::PartialSuccess);
        assert_eq!(status.volumes[0].phase, VolumePhase::Skipped);
        let location: BackupLocationStatus = serde_json::from_value(json!({
            "validation": {"phase": "Valid"},
            "sync": {"phase": "Completed"},
            "verify": {"phase": "InProgress"},
        }))
        .expect("status");
        assert_eq!(
            location.validation.map(|v| v.phase),
            Some(LocationValidationPhase::Valid)
        );
        assert_eq!(location.sync.map(|s| s.phase), Some(RunPhase::Completed));
        assert_eq!(location.verify.map(|v| v.phase), Some(RunPhase::InProgress));
        let restore: ApplicationRestoreStatus =
            serde_json::from_value(json!({"phase": "Failed"})).expect("status");
        assert_eq!(restore.phase, ApplicationRestorePhase::Failed);
        assert_eq!(serde_json::to_value(&restore).expect("json")["phase"], "Failed");
    }

    /// A tenant's cluster writes these statuses and the server reads them: any value (another
    /// version's phase, a wrong case, control characters, 100 KB of text, a number) reads as
    /// `Unknown` with the text as it was, never as a known phase and never as a failure to read
    /// the object; a status without a phase reads as unset and writes none.
    #[test]
    fn a_hostile_or_unknown_phase_reads_as_unknown() {
        let long = "x".repeat(100_000);
        for hostile in [
            "Verifying",
            "success",
            " Success",
            "Success\u{1b}[31m",
            "Unknown",
            long.as_str(),
        ] {
            let b: ApplicationBackupStatus = serde_json::from_value(json!({"phase": hostile, "volumes": [
                    {"namespace": "shop", "claim": "data", "phase": hostile}]}))
            .expect("a backup status with any phase reads");
            assert_eq!(b.phase, ApplicationBackupPhase::Unknown(hostile.to_owned()));
            assert!(!b.phase.is_final() && !b.phase.is_unset());
            assert_eq!(b.volumes[0].phase, VolumePhase::Unknown(hostile.to_owned()));
            let r: ApplicationRestoreStatus =
                serde_json::from_value(json!({"phase": hostile})).expect("restore status");
            assert_eq!(r.phase, ApplicationRestorePhase::Unknown(hostile.to_owned()));
            assert!(!r.phase.is_final());
            let l: BackupLocationStatus = serde_json::from_value(json!({
                "validation": {"phase": hostile},
                "sync": {"phase": hostile},
                "verify": {"phase": hostile},
            }))
            .expect("location status");
            assert_eq!(
                l.validation.map(|v| v.phase),
                Some(LocationValidationPhase::Unknown(hostile.to_owned()))
            );
            assert_eq!(
                l.sync.map(|s| s.phase),
                Some(RunPhase::Unknown(hostile.to_owned()))
            );
            assert_eq!(
                l.verify.map(|s| s.phase),
                Some(RunPhase::Unknown(hostile.to_owned()))
            );
            assert_eq!(ApplicationBackupPhase::parse(hostile), b.phase);
        }
        // Not a string at all: the object does not read (as before, when the field was a string).
        assert!(serde_json::from_value::<ApplicationBackupStatus>(json!({"phase": 7})).is_err());

        // No phase yet: unset, not a phase, and nothing written for it.
        for raw in [json!({}), json!({"phase": ""})] {
            let b: ApplicationBackupStatus = serde_json::from_value(raw).expect("status");
            assert!(b.phase.is_unset(), "{:?}", b.phase);
            assert_eq!(b.phase, ApplicationBackupPhase::default());
            let r: ApplicationRestoreStatus = serde_json::from_value(json!({})).expect("status");
            assert!(r.phase.is_unset());
        }
        let written = serde_json::to_value(ApplicationBackupStatus::default()).expect("json");
        assert!(written.get("phase").is_none(), "{written}");
        let written = serde_json::to_value(ApplicationRestoreStatus::default()).expect("json");
        assert!(written.get("phase").is_none(), "{written}");
    }

    /// The CRDs' schemas list each phase's known values (the API server refuses others) and
    /// give none a default the list would refuse.
    #[test]
    fn the_schemas_list_the_phases() {
        let crds = crds_yaml().expect("generate");
        let schema = |i: usize| -> Value {
            let crd: Value = serde_saphyr::from_str(&crds[i].1).expect("yaml");
            crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"].clone()
        };
        let location = schema(0);
        let p = &location["properties"];
        assert_eq!(
            p["validation"]["properties"]["phase"]["enum"],
            json!(["Pending", "Valid", "Invalid"])
        );
        for run in ["sync", "verify"] {
            assert_eq!(
                p[run]["properties"]["phase"]["enum"],
                json!(["InProgress", "Completed", "Failed"]),
                "{run}"
            );
        }
        let backup = schema(1);
        let phase = &backup["properties"]["phase"];
        assert_eq!(
            phase["enum"],
            json!([
                "Pending",
                "InProgress",
                "Success",
                "PartialSuccess",
                "Failed",
                "Deleting"
            ])
        );
        assert!(phase.get("default").is_none(), "{phase}");
        assert_eq!(phase["type"], "string");
        assert!(
            phase["description"]
                .as_str()
                .is_some_and(|d| d.contains("Deleting"))
        );
        assert_eq!(
            backup["properties"]["volumes"]["items"]["properties"]["phase"]["enum"],
            json!(["Success", "Failed", "Skipped"])
        );
        let restore = schema(2);
        assert_eq!(
            restore["properties"]["phase"]["enum"],
            json!(["Pending", "InProgress", "Success", "PartialSuccess", "Failed"])
        );
        assert!(restore["properties"]["phase"].get("default").is_none());
    }
}
