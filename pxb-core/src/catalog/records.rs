//! The records `pxb-server` keeps in its [`Catalog`](super::Catalog). JSON documents, camelCase.
//!
//! Times are RFC 3339 strings; ids are chosen by the server (DNS labels for names users type).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Index, Kind, MAX_TAG_LEN, Record, newest_first_key, newest_first_range};
use crate::schedule::policy::SchedulePolicy;

/// The `org` and `id` accessors of a record whose fields have those names.
macro_rules! org_and_id {
    () => {
        fn org(&self) -> &str {
            &self.org
        }
        fn id(&self) -> &str {
            &self.id
        }
    };
}

/// How an org's locations are reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Agents reach locations with Workload Identity; the server holds no cloud credential.
    #[default]
    Federated,
    /// The server keeps a credential (encrypted) and hands it to agents as a Secret.
    Classic,
}

/// A tenant of the provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Org {
    /// DNS label, unique.
    pub id: String,
    /// For humans.
    #[serde(default)]
    pub display_name: String,
    /// The default mode of new locations.
    #[serde(default)]
    pub mode: Mode,
    /// Who may do what in the org, from token groups and app roles.
    #[serde(default)]
    pub access: Vec<RoleBinding>,
    /// When it was created.
    pub created_at: String,
}

/// A role within an org.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything of the org.
    Viewer,
    /// Also asks for validations, syncs, backups and restores.
    Operator,
    /// Also changes locations, discovery configurations and schedules.
    Admin,
}

/// Grants `role` to members of `groups` and holders of `appRoles`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBinding {
    /// The role granted.
    pub role: Role,
    /// Token `groups` (Entra group object ids) that get it.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Token `roles` (app roles) that get it.
    #[serde(default)]
    pub app_roles: Vec<String>,
}

impl Record for Org {
    const KIND: Kind = Kind::Org;
    fn org(&self) -> &str {
        &self.id
    }
    fn id(&self) -> &str {
        &self.id
    }
    fn index(&self) -> Index {
        Index {
            sort: self.id.clone(),
            ..Index::default()
        }
    }
}

/// Where shoots of an org come from: a Gardener project read with a garden credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryConfig {
    /// The org.
    pub org: String,
    /// DNS label, unique within the org.
    pub id: String,
    /// The Gardener project name.
    pub project: String,
    /// The name of a garden credential the server's configuration defines (a file the provider
    /// mounts); never the credential itself.
    pub credential: String,
    /// Seconds between full discovery cycles.
    pub interval_secs: u64,
    /// When it was created.
    pub created_at: String,
    /// A provider admin created it: only such a discovery may use a garden credential that is
    /// bound to no org.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provider_approved: bool,
}

impl Record for DiscoveryConfig {
    const KIND: Kind = Kind::Discovery;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: self.id.clone(),
            ..Index::default()
        }
    }
}

/// The state of a cluster in the fleet status.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
pub enum ClusterState {
    /// Reachable, agent current, every assigned location valid.
    Ready,
    /// Reachable with a current agent, but something is wrong (an invalid location, a failed write).
    Degraded,
    /// The last calls did not get through within their deadline.
    Unreachable,
    /// The shoot is hibernated.
    Hibernated,
    /// No pxb agent runs on the cluster.
    AgentMissing,
    /// The agent is older than the server's minimum version.
    AgentOutdated,
    /// Discovered but not eligible (provider, version, deleting, not reconciled, malformed), or
    /// imported while the server runs in federated mode (kept, not visited).
    Ineligible,
    /// The shoot was deleted; its record stays for its backups.
    Retired,
    /// Not contacted yet.
    #[default]
    Unknown,
}

impl ClusterState {
    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Ready => "Ready",
            ClusterState::Degraded => "Degraded",
            ClusterState::Unreachable => "Unreachable",
            ClusterState::Hibernated => "Hibernated",
            ClusterState::AgentMissing => "AgentMissing",
            ClusterState::AgentOutdated => "AgentOutdated",
            ClusterState::Ineligible => "Ineligible",
            ClusterState::Retired => "Retired",
            ClusterState::Unknown => "Unknown",
        }
    }

    /// Every state.
    pub const ALL: [ClusterState; 9] = [
        ClusterState::Ready,
        ClusterState::Degraded,
        ClusterState::Unreachable,
        ClusterState::Hibernated,
        ClusterState::AgentMissing,
        ClusterState::AgentOutdated,
        ClusterState::Ineligible,
        ClusterState::Retired,
        ClusterState::Unknown,
    ];
}

/// What the server last observed of a cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The state.
    pub state: ClusterState,
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The credential state (`Valid`, `Renewing`, `Failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The agent's version, when one was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// The last time a call to the cluster succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// The last time the server tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<String>,
}

/// A cluster of an org.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    /// The org.
    pub org: String,
    /// Stable identity (the shoot's uid, or `imported-<name>`).
    pub id: String,
    /// The shoot name (or the imported cluster's name).
    pub name: String,
    /// The name of the discovery source that found it (`gardener` for a Gardener project), or
    /// `imported`.
    pub source: String,
    /// The discovery configuration that found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// The Gardener project namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Cloud provider type.
    #[serde(default)]
    pub provider_type: String,
    /// Kubernetes version.
    #[serde(default)]
    pub kubernetes_version: String,
    /// Region.
    #[serde(default)]
    pub region: String,
    /// Labels, for selecting clusters.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Why the cluster is not eligible, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ineligible: Option<String>,
    /// Whether the shoot is hibernated.
    #[serde(default)]
    pub hibernated: bool,
    /// The service-account issuer URL Gardener advertises when the shoot is annotated
    /// `authentication.gardener.cloud/issuer=managed` (`status.advertisedAddresses[name=
    /// service-account-issuer]`): what an Entra federated credential for the agent trusts (`pxb
    /// clusters federation` prints the commands). `None` when the shoot publishes none, and for
    /// imported clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_issuer: Option<String>,
    /// When it was first seen.
    pub first_seen: String,
    /// When it was retired (deleted from the project); its backups stay listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<String>,
    /// The encrypted kubeconfig of an imported cluster (classic mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_kubeconfig: Option<Sealed>,
    /// What the server last observed.
    #[serde(default)]
    pub status: ClusterStatus,
}

impl Record for ClusterRecord {
    const KIND: Kind = Kind::Cluster;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: self.name.clone(),
            status: Some(self.status.state.as_str().to_owned()),
            ..Index::default()
        }
    }
}

/// A secret encrypted by the server (AES-256-GCM); only the ciphertext is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    /// Which key sealed it.
    pub key_id: String,
    /// Nonce, base64.
    pub nonce: String,
    /// Ciphertext with tag, base64.
    pub ciphertext: String,
}

/// Which clusters a location is assigned to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSelector {
    /// Every cluster of the org.
    #[serde(default)]
    pub all: bool,
    /// These clusters, by name.
    #[serde(default)]
    pub names: Vec<String>,
    /// Clusters with all of these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ClusterSelector {
    /// Whether the selector picks `c`.
    pub fn selects(&self, c: &ClusterRecord) -> bool {
        self.all
            || self.names.contains(&c.name)
            || (!self.labels.is_empty() && self.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v)))
    }
}

/// A backup location of an org.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationRecord {
    /// The org.
    pub org: String,
    /// Server-chosen uid; the CRs mirroring it carry it as a label.
    pub id: String,
    /// DNS label, unique within the org; the name of the `BackupLocation` CR on clusters.
    pub name: String,
    /// `azure` or `file`.
    pub provider: String,
    /// Azure storage account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Container (azure) or directory (file).
    pub container: String,
    /// Name prefix inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Blob endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Federated or classic.
    pub mode: Mode,
    /// Workload Identity client id for every cluster (the agent's own when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Entra tenant for Workload Identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Per-cluster client ids, by cluster name, overriding `client_id`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_client_ids: BTreeMap<String, String>,
    /// Classic mode: the credential, sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<SealedCredential>,
    /// Which clusters get the location.
    pub clusters: ClusterSelector,
    /// Sync the location's backups when it is first assigned to a cluster.
    #[serde(default)]
    pub sync: bool,
    /// Bumped by each manual sync request.
    #[serde(default)]
    pub sync_request: i64,
    /// Bumped by each manual validation request.
    #[serde(default)]
    pub validate_request: i64,
    /// Bumped by each verify request.
    #[serde(default)]
    pub verify_request: i64,
    /// When it was created.
    pub created_at: String,
}

/// A classic credential: which kind, sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SealedCredential {
    /// `accountKey` or `sasToken`.
    pub kind: String,
    /// The secret, sealed.
    pub sealed: Sealed,
}

impl Record for LocationRecord {
    const KIND: Kind = Kind::Location;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: self.name.clone(),
            ..Index::default()
        }
    }
}

/// The phase of a request (sync, validation) the server tracks with a heartbeat lease.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RequestPhase {
    /// Accepted; not yet acknowledged by the agent (the cluster may be offline).
    #[default]
    Pending,
    /// The agent works on it and its heartbeat is fresh.
    InProgress,
    /// Done.
    Completed,
    /// The agent reported a failure.
    Failed,
    /// No heartbeat within the lease: the server no longer waits for it.
    Stalled,
    /// A newer request replaced it.
    Superseded,
}

impl RequestPhase {
    /// Whether it still holds the slot (a new request is refused while it does).
    pub fn is_active(self) -> bool {
        matches!(self, RequestPhase::Pending | RequestPhase::InProgress)
    }
}

/// A tracked sync on one cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncRun {
    /// The `syncRequest` counter value it asked for.
    pub request: i64,
    /// The phase.
    pub phase: RequestPhase,
    /// When it was requested.
    pub requested_at: String,
    /// The agent's last heartbeat (or acknowledgement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Backups found in the location.
    #[serde(default)]
    pub backups_found: u64,
    /// Backups imported.
    #[serde(default)]
    pub backups_imported: u64,
    /// For humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A location's last verify on one cluster: every backup's objects checked for existence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyRun {
    /// The `verifyRequest` it answered.
    pub request: i64,
    /// Phase.
    pub phase: VerifyPhase,
    /// When it completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<String>,
    /// Backups checked.
    #[serde(default)]
    pub backups_checked: u64,
    /// Missing objects per damaged backup (by its id on the location); a resource backup also
    /// counts those of the volume backups taken with it.
    #[serde(default)]
    pub missing_by_backup: BTreeMap<String, u64>,
    /// Objects missing in all.
    #[serde(default)]
    pub missing_objects: u64,
    /// For humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A location's validation result on one cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValidationResult {
    /// Phase.
    pub phase: ValidationPhase,
    /// The failed step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the agent last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    /// The `validateRequest` the server asked for last.
    #[serde(default)]
    pub request: i64,
    /// When the server asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
}

/// A location's status on one cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationStatus {
    /// The org.
    pub org: String,
    /// `<location id>/<cluster id>`.
    pub id: String,
    /// The location id.
    pub location: String,
    /// The cluster id.
    pub cluster: String,
    /// The cluster name.
    pub cluster_name: String,
    /// Validation.
    #[serde(default)]
    pub validation: ValidationResult,
    /// The last or running sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncRun>,
    /// The last verify ("cloud file missing" check) the agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyRun>,
    /// When the server last read the CR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
}

impl LocationStatus {
    /// The id of the status of `location` on `cluster`.
    pub fn id_of(location: &str, cluster: &str) -> String {
        format!("{location}/{cluster}")
    }
}

impl Record for LocationStatus {
    const KIND: Kind = Kind::LocationStatus;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: format!("{}/{}", self.location, self.cluster_name),
            cluster: Some(self.cluster.clone()),
            location: Some(self.location.clone()),
            status: Some(self.validation.phase.as_str().to_owned()),
            time_ms: None,
            tags: Vec::new(),
        }
    }
}

/// What a backup holds, for the namespace / virtual-machine views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupView {
    /// Namespaces without virtual machines.
    #[default]
    Namespaces,
    /// Namespaces holding KubeVirt `VirtualMachine` objects.
    Vms,
}

impl BackupView {
    /// The stored name (`namespaces` or `vms`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackupView::Namespaces => "namespaces",
            BackupView::Vms => "vms",
        }
    }

    /// The index tag of backups in this view, for [`Query::tags`](super::Query::tags).
    pub fn tag(self) -> String {
        format!("view={}", self.as_str())
    }
}

impl BackupRecord {
    /// The index tag of backups holding `namespace`, for [`Query::tags`](super::Query::tags).
    pub fn namespace_tag(namespace: &str) -> String {
        format!("ns={namespace}")
    }

    /// The index tag of backups made by the schedule `id`, for [`Query::tags`](super::Query::tags).
    pub fn schedule_tag(id: &str) -> String {
        format!("schedule={id}")
    }
}

macro_rules! phases {
    ($(#[$meta:meta])* $name:ident { $($(#[$doc:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum $name {
            $($(#[$doc])* $variant,)*
            /// A phase this version does not know (read from an older or foreign record); never
            /// written by the server.
            #[default]
            #[serde(other)]
            Unknown,
        }

        impl $name {
            /// As the API and the catalog's index spell it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                    $name::Unknown => "Unknown",
                }
            }

            /// The phase `s` spells, if it is one (`Unknown` is not).
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $(stringify!($variant) => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
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
    };
}

phases! {
    /// The phase of a backup. `Pending`, `InProgress` and `Deleting` are active; `Stalled` is
    /// final for waiting callers but still tracked; the others are final. The server owns
    /// `Pending`, `Missed`, `Deleting` and `Stalled`; a cluster reports only the others
    /// ([`BackupPhase::from_cluster`]).
    BackupPhase {
        /// Recorded; the server has not delivered it to its cluster yet.
        Pending,
        /// The agent runs it.
        InProgress,
        /// Complete.
        Success,
        /// Complete, with some volumes or objects missing (see the message).
        PartialSuccess,
        /// Failed (see the message).
        Failed,
        /// A schedule fired while the cluster could not take the backup.
        Missed,
        /// Its deletion was asked for; the agent deletes the data.
        Deleting,
        /// No heartbeat within the lease (its cluster dropped off): the server no longer waits
        /// for it, but a report from a returning cluster still updates it.
        Stalled,
    }
}

impl BackupPhase {
    /// Whether a backup in this phase still needs the server's attention.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            BackupPhase::Pending | BackupPhase::InProgress | BackupPhase::Deleting
        )
    }

    /// Whether the server still drives a backup in this phase on its cluster (active, or
    /// stalled and waiting for the cluster to come back).
    pub fn is_tracked(self) -> bool {
        self.is_active() || self == BackupPhase::Stalled
    }

    /// Whether a backup in this phase holds restorable data.
    pub fn is_success(self) -> bool {
        matches!(self, BackupPhase::Success | BackupPhase::PartialSuccess)
    }

    /// The phase a cluster's status may set: what an agent reports of its own work. `None` for
    /// a phase the server owns or one it does not know (a hostile or broken cluster's).
    pub fn from_cluster(s: &str) -> Option<Self> {
        Self::parse(s).filter(|p| {
            matches!(
                p,
                BackupPhase::InProgress
                    | BackupPhase::Success
                    | BackupPhase::PartialSuccess
                    | BackupPhase::Failed
            )
        })
    }
}

phases! {
    /// The phase of a restore. `Pending` and `InProgress` are active. The server owns `Pending`
    /// and `Stalled`; a cluster reports only the others ([`RestorePhase::from_cluster`]).
    RestorePhase {
        /// Recorded; not delivered to its cluster yet.
        Pending,
        /// The agent runs it.
        InProgress,
        /// Every object restored.
        Success,
        /// Some objects were not restored (see the counts and message).
        PartialSuccess,
        /// Failed (see the message).
        Failed,
        /// No heartbeat within the lease: the server no longer waits for it.
        Stalled,
    }
}

impl RestorePhase {
    /// Whether a restore in this phase still needs the server's attention.
    pub fn is_active(self) -> bool {
        matches!(self, RestorePhase::Pending | RestorePhase::InProgress)
    }

    /// Whether it is over (success or not).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RestorePhase::Success | RestorePhase::PartialSuccess | RestorePhase::Failed
        )
    }

    /// The phase a cluster's status may set (see [`BackupPhase::from_cluster`]).
    pub fn from_cluster(s: &str) -> Option<Self> {
        Self::parse(s).filter(|p| matches!(p, RestorePhase::InProgress) || p.is_final())
    }
}

phases! {
    /// The phase of a location's validation on one cluster. The server owns `Pending`,
    /// `Requested` and `Stalled`; a cluster reports `Valid` or `Invalid`
    /// ([`ValidationPhase::from_cluster`]).
    ValidationPhase {
        /// Not validated yet (no `BackupLocation` on the cluster, or no report).
        Pending,
        /// A validation was asked for and the agent has not answered it yet.
        Requested,
        /// Every check passed.
        Valid,
        /// A check failed (see the failed step and the reason).
        Invalid,
        /// The requested validation was not acknowledged within the lease.
        Stalled,
    }
}

impl ValidationPhase {
    /// The phase a cluster's status may set.
    pub fn from_cluster(s: &str) -> Option<Self> {
        Self::parse(s).filter(|p| matches!(p, ValidationPhase::Valid | ValidationPhase::Invalid))
    }
}

phases! {
    /// The phase of a location's verify on one cluster. The server owns `Requested`; a cluster
    /// reports the others ([`VerifyPhase::from_cluster`]).
    VerifyPhase {
        /// Asked for; the agent has not answered yet.
        Requested,
        /// The agent checks the backups' objects.
        InProgress,
        /// Done (see the missing objects).
        Completed,
        /// The agent could not check (see the message).
        Failed,
    }
}

impl VerifyPhase {
    /// The phase a cluster's status may set.
    pub fn from_cluster(s: &str) -> Option<Self> {
        Self::parse(s).filter(|p| *p != VerifyPhase::Requested)
    }
}

/// A backup known to the server: one per cluster and request, or found in a location by a sync.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// The org.
    pub org: String,
    /// The backup's name (a DNS subdomain: the `ApplicationBackup` on the cluster has it too).
    pub id: String,
    /// The id of the cluster it belongs to (for a synced backup: the cluster whose agent found it).
    pub cluster: String,
    /// That cluster's name.
    #[serde(default)]
    pub cluster_name: String,
    /// The location id.
    pub location: String,
    /// The location's name.
    #[serde(default)]
    pub location_name: String,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Phase.
    pub phase: BackupPhase,
    /// What the agent is doing (`Volumes`, `Resources`, `Deleting`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// For humans: why it failed, was missed, or what went partly wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// When it reached a final phase, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<i64>,
    /// The agent's last heartbeat (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Objects backed up so far.
    #[serde(default)]
    pub objects: u64,
    /// Volume bytes backed up so far.
    #[serde(default)]
    pub bytes: u64,
    /// Bytes it added to the location.
    #[serde(default)]
    pub stored_bytes: u64,
    /// KubeVirt `VirtualMachine` objects in it.
    #[serde(default)]
    pub virtual_machines: u64,
    /// The namespace or virtual-machine view.
    #[serde(default)]
    pub view: BackupView,
    /// The backup's id on the location, once written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The schedule that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Found in a location by a sync rather than made through the server.
    #[serde(default)]
    pub synced: bool,
    /// The cluster that made it, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_cluster: Option<String>,
    /// Objects the last verify of its location found missing ("cloud file missing"), its volume
    /// data included; 0 when complete or not verified yet.
    #[serde(default)]
    pub missing_objects: u64,
    /// Its persistent volumes as the agent reported them (at most
    /// [`MAX_BACKUP_VOLUMES`]; a backup of more keeps the first ones).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<BackupVolume>,
    /// While `Deleting`: the phase it had when its deletion was asked for (`Success`,
    /// `PartialSuccess`, `Failed`, …), which the deleted-backup metrics report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_phase: Option<BackupPhase>,
}

impl Record for BackupRecord {
    const KIND: Kind = Kind::Backup;
    org_and_id!();
    fn sort_range(from: Option<i64>, to: Option<i64>) -> (Option<String>, Option<String>) {
        newest_first_range(from, to)
    }
    fn index(&self) -> Index {
        Index {
            // Newest first.
            sort: newest_first_key(self.created_ms),
            cluster: Some(self.cluster.clone()),
            location: Some(self.location.clone()),
            status: Some(self.phase.as_str().to_owned()),
            time_ms: Some(self.created_ms),
            // A namespace no cluster could have (an imported backup may name anything) gets no
            // tag rather than failing the write; so does such a schedule name.
            tags: self
                .namespaces
                .iter()
                .map(|n| Self::namespace_tag(n))
                .chain(self.schedule.as_deref().map(Self::schedule_tag))
                .filter(|t| t.len() <= MAX_TAG_LEN && !t.chars().any(char::is_control))
                .chain([self.view.tag()])
                .collect(),
        }
    }
}

/// Restore counts, as the agent reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTally {
    /// Objects in the backup that were considered.
    pub total: u64,
    /// Created.
    pub created: u64,
    /// Replaced.
    pub replaced: u64,
    /// Skipped (they existed).
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
}

/// The most volumes a backup record lists.
pub const MAX_BACKUP_VOLUMES: usize = 256;

/// One persistent volume of a backup, as its agent reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupVolume {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim.
    pub claim: String,
    /// `Success`, `Failed`, `Skipped` (or `Unknown` for anything else a cluster wrote).
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

/// What a restore does with objects that already exist on the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExistingResourcePolicy {
    /// Keep them as they are (reported as skipped).
    #[default]
    Retain,
    /// Replace them with the backup's.
    Replace,
}

impl ExistingResourcePolicy {
    /// The name, as the `ApplicationRestore`'s `existingResourcePolicy` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ExistingResourcePolicy::Retain => "Retain",
            ExistingResourcePolicy::Replace => "Replace",
        }
    }

    fn is_retain(&self) -> bool {
        *self == ExistingResourcePolicy::Retain
    }
}

/// A restore known to the server.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreRecord {
    /// The org.
    pub org: String,
    /// Id (a DNS subdomain: the `ApplicationRestore` on the cluster has it too).
    pub id: String,
    /// The backup restored (its record id).
    pub backup: String,
    /// The backup's id on the location.
    #[serde(default)]
    pub backup_id: String,
    /// The location id.
    #[serde(default)]
    pub location: String,
    /// The location's name.
    #[serde(default)]
    pub location_name: String,
    /// The target cluster id.
    pub cluster: String,
    /// The target cluster's name.
    #[serde(default)]
    pub cluster_name: String,
    /// Namespaces restored (empty: all of the backup's).
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespace mapping, source to target.
    #[serde(default)]
    pub namespace_mapping: BTreeMap<String, String>,
    /// Cluster-scoped kinds an org admin allowed this restore to create as the backup holds them
    /// (by default only what the restored namespaces need is created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cluster_kinds: Vec<String>,
    /// Objects that already exist: kept (the default) or replaced.
    #[serde(default, skip_serializing_if = "ExistingResourcePolicy::is_retain")]
    pub existing_resource_policy: ExistingResourcePolicy,
    /// The view of the backup restored (namespaces or virtual machines), for the console's tabs.
    #[serde(default)]
    pub view: BackupView,
    /// Phase.
    pub phase: RestorePhase,
    /// For humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Counts.
    #[serde(default)]
    pub counts: RestoreTally,
    /// The agent's last heartbeat (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_ms: i64,
    /// When it reached a final phase, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<i64>,
}

impl Record for RestoreRecord {
    const KIND: Kind = Kind::Restore;
    org_and_id!();
    fn sort_range(from: Option<i64>, to: Option<i64>) -> (Option<String>, Option<String>) {
        newest_first_range(from, to)
    }
    fn index(&self) -> Index {
        Index {
            sort: newest_first_key(self.created_ms),
            cluster: Some(self.cluster.clone()),
            location: Some(self.location.clone()),
            status: Some(self.phase.as_str().to_owned()),
            time_ms: Some(self.created_ms),
            tags: Vec::new(),
        }
    }
}

/// What a schedule did when it last fired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRun {
    /// The slot it fired for (RFC 3339).
    pub slot: String,
    /// When it fired (RFC 3339).
    pub fired_at: String,
    /// Backups started.
    pub started: u32,
    /// Clusters that could not take the backup (each has a `Missed` backup record).
    pub missed: u32,
    /// Earlier slots that passed while the server was not running; they are folded into this run.
    #[serde(default)]
    pub folded_slots: u32,
}

/// A schedule: a policy bound to clusters, namespaces and a location.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRecord {
    /// The org.
    pub org: String,
    /// Id: the schedule's name (DNS label).
    pub id: String,
    /// When and how many to keep.
    pub policy: SchedulePolicy,
    /// Clusters.
    pub clusters: ClusterSelector,
    /// Namespaces.
    pub namespaces: Vec<String>,
    /// The location id.
    pub location: String,
    /// The location's name.
    #[serde(default)]
    pub location_name: String,
    /// Paused schedules do not fire.
    #[serde(default)]
    pub paused: bool,
    /// When it was created, ms since the epoch (interval slots count from here).
    #[serde(default)]
    pub created_ms: i64,
    /// The next slot, ms since the epoch. It moves forward in the same catalog write that
    /// records the slot's backups, so a restart neither repeats nor skips a slot.
    #[serde(default)]
    pub next_fire_ms: i64,
    /// When it last fired (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<String>,
    /// What the last run did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<ScheduleRun>,
}

impl Record for ScheduleRecord {
    const KIND: Kind = Kind::Schedule;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: self.id.clone(),
            location: Some(self.location.clone()),
            ..Index::default()
        }
    }
}

/// A user's stored preferences (org `""`; id = the user's subject).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Preferences {
    /// The user's subject.
    pub user: String,
    /// Values by key.
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
}

impl Record for Preferences {
    const KIND: Kind = Kind::Preference;
    fn org(&self) -> &str {
        ""
    }
    fn id(&self) -> &str {
        &self.user
    }
    fn index(&self) -> Index {
        Index {
            sort: self.user.clone(),
            ..Index::default()
        }
    }
}

/// A backup whose record was force-deleted while its cluster still holds its
/// `ApplicationBackup` object: kept until the server has removed that object (leaving the data),
/// so a server restart does not forget it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForcedDelete {
    /// The org.
    pub org: String,
    /// The backup's id (the object's name on the cluster).
    pub id: String,
    /// The cluster's id.
    pub cluster: String,
    /// When the record was force-deleted (RFC 3339).
    pub deleted_at: String,
}

impl Record for ForcedDelete {
    const KIND: Kind = Kind::ForcedDelete;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: self.id.clone(),
            cluster: Some(self.cluster.clone()),
            ..Index::default()
        }
    }
}

/// What is kept of a deleted backup for a while: enough for its info series
/// (`pxb_server_backup_info{status="Deleted"}`) to outlive it for the telemetry retention window,
/// across restarts. Written when the backup's record is removed; removed when the window has
/// passed. Sorted newest deletion first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedBackup {
    /// The org.
    pub org: String,
    /// The backup's id.
    pub id: String,
    /// The id of its cluster.
    pub cluster: String,
    /// That cluster's name.
    #[serde(default)]
    pub cluster_name: String,
    /// The location id.
    pub location: String,
    /// The location's name.
    #[serde(default)]
    pub location_name: String,
    /// The schedule that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The namespace or virtual-machine view.
    #[serde(default)]
    pub view: BackupView,
    /// The phase it had before it was deleted (for a backup deleted through its agent, the phase
    /// before `Deleting`).
    pub previous_phase: BackupPhase,
    /// Its creation time, ms since the epoch.
    pub created_ms: i64,
    /// When its record was removed, ms since the epoch.
    pub deleted_ms: i64,
}

impl DeletedBackup {
    /// What is kept of `b`, removed at `deleted_ms`.
    pub fn of(b: &BackupRecord, deleted_ms: i64) -> Self {
        let previous_phase = match b.phase {
            BackupPhase::Deleting => b.previous_phase.unwrap_or(BackupPhase::Deleting),
            phase => phase,
        };
        DeletedBackup {
            org: b.org.clone(),
            id: b.id.clone(),
            cluster: b.cluster.clone(),
            cluster_name: b.cluster_name.clone(),
            location: b.location.clone(),
            location_name: b.location_name.clone(),
            schedule: b.schedule.clone(),
            view: b.view,
            previous_phase,
            created_ms: b.created_ms,
            deleted_ms,
        }
    }
}

impl Record for DeletedBackup {
    const KIND: Kind = Kind::DeletedBackup;
    org_and_id!();
    fn sort_range(from: Option<i64>, to: Option<i64>) -> (Option<String>, Option<String>) {
        newest_first_range(from, to)
    }
    fn index(&self) -> Index {
        Index {
            sort: newest_first_key(self.deleted_ms),
            cluster: Some(self.cluster.clone()),
            location: Some(self.location.clone()),
            status: Some(self.previous_phase.as_str().to_owned()),
            time_ms: Some(self.deleted_ms),
            ..Index::default()
        }
    }
}

/// This installation's identity towards the opt-in support service: its id (a UUID made once)
/// and, once registered, its client identity (certificate and key, as JSON) sealed with the
/// server's secrets key. One record, org `""`, id [`SupportInstallation::ID`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SupportInstallation {
    /// Always `""`.
    pub org: String,
    /// Always [`SupportInstallation::ID`].
    pub id: String,
    /// The installation id sent at registration (UUID v4).
    pub installation_id: String,
    /// The client identity, sealed; `None` before the first registration or without a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Sealed>,
}

impl SupportInstallation {
    /// The record's id.
    pub const ID: &'static str = "support";
}

impl Record for SupportInstallation {
    const KIND: Kind = Kind::SupportInstallation;
    org_and_id!();
    fn index(&self) -> Index {
        Index {
            sort: self.id.clone(),
            ..Index::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster stored before `serviceAccountIssuer` existed reads back without it, and one
    /// without an issuer is stored as before: no migration.
    #[test]
    fn the_service_account_issuer_needs_no_migration() {
        let old = r#"{"org":"a","id":"u-1","name":"s1","source":"gardener","firstSeen":"2026-01-01T00:00:00Z",
            "status":{"state":"Ready"}}"#;
        let c: ClusterRecord = serde_json::from_str(old).expect("an older record");
        assert_eq!(c.service_account_issuer, None);
        assert_eq!(c.status.state, ClusterState::Ready);
        let json = serde_json::to_value(&c).expect("json");
        assert!(json.get("serviceAccountIssuer").is_none(), "{json}");

        let with = ClusterRecord {
            service_account_issuer: Some("https://discovery.example/projects/p/shoots/u-1/issuer".into()),
            ..c
        };
        let json = serde_json::to_value(&with).expect("json");
        assert_eq!(
            json["serviceAccountIssuer"],
            "https://discovery.example/projects/p/shoots/u-1/issuer"
        );
        let back: ClusterRecord = serde_json::from_value(json).expect("back");
        assert_eq!(back, with);
    }
}
