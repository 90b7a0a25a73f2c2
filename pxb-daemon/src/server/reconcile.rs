//! One visit of the server to one cluster: check the agent, write the `BackupLocation` CRs (and
//! classic Secrets) the org wants there, delete the pxb-managed ones it no longer wants (orphans),
//! and read the agent's results back. Also the heartbeat leases that turn silent requests
//! `Stalled`.
//!
//! Architecture Invariant: a visit never waits on a cluster without a deadline; the caller wraps it
//! in one, and the client it gets has per-call timeouts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use pxb_core::catalog::records::{
    ClusterRecord, ClusterState, ClusterStatus, LocationRecord, LocationStatus, Mode, RequestPhase, SyncRun,
    ValidationPhase, VerifyPhase, VerifyRun,
};
use pxb_core::clock::rfc3339;

use crate::crd::{
    AGENT_NAMESPACE, ApplicationBackupPhase, ApplicationRestorePhase, BackupLocation, BackupLocationSpec,
    BackupLocationStatus, LocationAuth, LocationValidationPhase, RunPhase, SecretRef,
};
use crate::names;
use pxb_core::clock::parse_rfc3339;

pub use pxb_core::api::agent::{MANAGED_BY, MANAGER};
/// Label naming the owning org.
pub const ORG_LABEL: &str = "pxb.io/org";
/// Label with the uid of the server object a cluster object mirrors.
pub const UID_LABEL: &str = "pxb.io/uid";
/// Label with the agent's version on its Deployment.
pub const VERSION_LABEL: &str = "pxb.io/version";
/// The agent's Deployment (and service account) name.
pub const AGENT_NAME: &str = "pxb-agent";

/// A location the org wants on the cluster, with its classic secret opened.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The location.
    pub location: LocationRecord,
    /// Classic mode: the credential kind (`accountKey`/`sasToken`) and value.
    pub secret: Option<(String, Vec<u8>)>,
}

/// What a visit needs.
#[derive(Clone, Debug)]
pub struct VisitInput {
    /// The cluster.
    pub cluster: ClusterRecord,
    /// Locations wanted on it.
    pub desired: Vec<Desired>,
    /// Their current status on this cluster, by location id.
    pub statuses: BTreeMap<String, LocationStatus>,
    /// The time of the visit.
    pub now: SystemTime,
    /// Heartbeat lease.
    pub lease: Duration,
    /// Minimum agent version.
    pub min_agent_version: semver::Version,
    /// Zero-touch install: the agent image to install when the agent is missing, and to upgrade
    /// the install to when its agent is outdated or runs another image (see
    /// [`crate::server::install`] for which objects it updates).
    pub install_agent: Option<String>,
}

/// What a visit found and did.
#[derive(Clone, Debug, Default)]
pub struct VisitOutput {
    /// The cluster's new status.
    pub status: ClusterStatus,
    /// The locations' new status on this cluster.
    pub statuses: Vec<LocationStatus>,
    /// Orphaned objects deleted.
    pub orphans_deleted: usize,
    /// CRs created or updated.
    pub written: usize,
}

/// The Secret name of a classic location's credential (always a valid object name).
pub fn secret_name(location: &str) -> String {
    names::object_name(&format!("pxb-location-{location}"))
}

/// The name of the `BackupLocation` object of location `name` (always a valid object name).
pub fn location_object(name: &str) -> String {
    names::object_name(name)
}

/// The labels of a managed object of `org` mirroring the server object `uid`, each value made
/// valid by [`names::label_value`].
pub fn labels(org: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), MANAGER.to_owned()),
        (ORG_LABEL.to_owned(), names::label_value(org)),
        (UID_LABEL.to_owned(), names::label_value(uid)),
    ])
}

/// The annotations of a managed object: the original org and uid, which labels may only hold in
/// their safe form.
pub fn annotations(org: &str, uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::ORIGINAL_ORG.to_owned(), org.to_owned()),
        (names::ORIGINAL_UID.to_owned(), uid.to_owned()),
    ])
}

/// Whether `meta` (of a managed object) belongs to `org`: its org label is the org's label value,
/// and its annotation, when it has one (objects written before annotations existed do not), names
/// the org itself. Two orgs whose label values collide are told apart by the annotation.
pub fn owned_by(meta: &ObjectMeta, org: &str) -> bool {
    let label = meta.labels.as_ref().and_then(|l| l.get(ORG_LABEL));
    let original = meta.annotations.as_ref().and_then(|a| a.get(names::ORIGINAL_ORG));
    label.map(String::as_str) == Some(names::label_value(org).as_str()) && original.is_none_or(|o| o == org)
}

/// The uid a managed object mirrors, if `meta` mirrors `uid`: its uid label is `uid`'s label
/// value and its annotation, when present, is `uid`.
pub fn mirrors(meta: &ObjectMeta, uid: &str) -> bool {
    let label = meta.labels.as_ref().and_then(|l| l.get(UID_LABEL));
    let original = meta.annotations.as_ref().and_then(|a| a.get(names::ORIGINAL_UID));
    label.map(String::as_str) == Some(names::label_value(uid).as_str()) && original.is_none_or(|o| o == uid)
}

/// The `BackupLocation` spec the server wants for `loc` on `cluster`.
pub fn desired_spec(loc: &LocationRecord, cluster: &ClusterRecord, sync_request: i64) -> BackupLocationSpec {
    let auth = match loc.mode {
        Mode::Federated => LocationAuth {
            mode: "workloadIdentity".into(),
            client_id: loc
                .cluster_client_ids
                .get(&cluster.name)
                .cloned()
                .or_else(|| loc.client_id.clone()),
            tenant_id: loc.tenant_id.clone(),
            secret_ref: None,
        },
        Mode::Classic => LocationAuth {
            mode: "secretRef".into(),
            client_id: None,
            tenant_id: None,
            secret_ref: Some(SecretRef {
                name: secret_name(&loc.name),
            }),
        },
    };
    BackupLocationSpec {
        provider: loc.provider.clone(),
        account: loc.account.clone(),
        container: loc.container.clone(),
        prefix: loc.prefix.clone(),
        endpoint: loc.endpoint.clone(),
        auth: if loc.provider == "azure" {
            auth
        } else {
            LocationAuth {
                mode: "workloadIdentity".into(),
                ..LocationAuth::default()
            }
        },
        sync: loc.sync,
        validate_request: loc.validate_request,
        sync_request,
        verify_request: loc.verify_request,
    }
}

fn age(since: Option<&str>, now: SystemTime) -> Option<Duration> {
    let t = parse_rfc3339(since?)?;
    Some(now.duration_since(t).unwrap_or(Duration::ZERO))
}

/// Turns requests whose last sign of life is older than `lease` into `Stalled`.
pub fn apply_leases(status: &mut LocationStatus, now: SystemTime, lease: Duration) {
    if let Some(run) = status.sync.as_mut()
        && run.phase.is_active()
    {
        let last = run.heartbeat.as_deref().unwrap_or(&run.requested_at);
        if age(Some(last), now).is_some_and(|a| a > lease) {
            run.phase = RequestPhase::Stalled;
            run.message = Some(format!(
                "no heartbeat since {last} (lease {}s); a new sync may be requested",
                lease.as_secs()
            ));
        }
    }
    let v = &mut status.validation;
    if v.phase == ValidationPhase::Requested && age(v.requested_at.as_deref(), now).is_some_and(|a| a > lease)
    {
        v.phase = ValidationPhase::Stalled;
        v.reason = Some(format!(
            "the validation requested at {} was not acknowledged within the lease",
            v.requested_at.as_deref().unwrap_or("?")
        ));
    }
}

/// Keeps in `visited` (a visit's result) the requests made in `current` (the server's view) after
/// the visit started: a newer sync run, a newer validation request.
pub fn keep_newer_requests(current: &LocationStatus, visited: &mut LocationStatus) {
    if let Some(c) = &current.sync
        && visited.sync.as_ref().is_none_or(|v| c.request > v.request)
    {
        visited.sync = Some(c.clone());
    }
    if current.validation.request > visited.validation.request {
        visited.validation.request = current.validation.request;
        visited.validation.requested_at = current.validation.requested_at.clone();
    }
}

/// The validation phase a location's status on its cluster sets: `Valid` or `Invalid`. `None`
/// for one the server owns (`Pending`) and for one it does not know (another version's, or a
/// hostile cluster's).
fn validation_from_cluster(p: &LocationValidationPhase) -> Option<ValidationPhase> {
    match p {
        LocationValidationPhase::Valid => Some(ValidationPhase::Valid),
        LocationValidationPhase::Invalid => Some(ValidationPhase::Invalid),
        LocationValidationPhase::Pending | LocationValidationPhase::Unknown(_) => None,
    }
}

/// The verify phase a location's status on its cluster sets; `None` for one the server does
/// not know.
fn verify_from_cluster(p: &RunPhase) -> Option<VerifyPhase> {
    match p {
        RunPhase::InProgress => Some(VerifyPhase::InProgress),
        RunPhase::Completed => Some(VerifyPhase::Completed),
        RunPhase::Failed => Some(VerifyPhase::Failed),
        RunPhase::Unknown(_) => None,
    }
}

/// Folds the CR's status into the server's view of the location on this cluster. A phase the
/// cluster may not set (one the server owns, or one it does not know) changes no phase: the
/// validation and the verify say so in their reason, quoting it; a sync's is ignored.
pub fn read_back(
    status: &mut LocationStatus,
    cr: Option<&BackupLocationStatus>,
    requested_validate: i64,
    requested_verify: i64,
    now: SystemTime,
) {
    status.last_seen = Some(rfc3339(now));
    let Some(cr) = cr else {
        if status.validation.phase == ValidationPhase::Unknown {
            status.validation.phase = ValidationPhase::Pending;
        }
        return;
    };
    if let Some(v) = &cr.validation {
        if requested_validate > cr.observed_validate_request {
            status.validation.phase = ValidationPhase::Requested;
        } else if let Some(phase) = validation_from_cluster(&v.phase) {
            status.validation.phase = phase;
            status.validation.failed_step = v.failed_step.clone();
            status.validation.reason = v.reason.as_deref().map(clean);
        } else {
            // Not a phase the cluster may report: the last one the server knows stays.
            if matches!(
                status.validation.phase,
                ValidationPhase::Unknown | ValidationPhase::Requested
            ) {
                status.validation.phase = ValidationPhase::Pending;
            }
            status.validation.reason = Some(unknown_phase(v.phase.as_str()));
        }
        status.validation.checked_at = v.last_checked.clone();
    }
    if let Some(v) = &cr.verify {
        let reported = verify_from_cluster(&v.phase);
        status.verify = Some(VerifyRun {
            request: cr.observed_verify_request,
            phase: if requested_verify > cr.observed_verify_request {
                VerifyPhase::Requested
            } else {
                reported.unwrap_or(VerifyPhase::Failed)
            },
            completed: v.completed.clone(),
            backups_checked: v.backups_checked,
            missing_by_backup: v.missing_by_backup.clone(),
            missing_objects: v.missing_objects,
            message: match reported {
                Some(_) => v.message.as_deref().map(clean),
                None => Some(unknown_phase(v.phase.as_str())),
            },
        });
    } else if requested_verify > cr.observed_verify_request {
        status.verify = Some(VerifyRun {
            phase: VerifyPhase::Requested,
            ..VerifyRun::default()
        });
    }
    if let (Some(run), Some(s)) = (status.sync.as_mut(), cr.sync.as_ref()) {
        let for_this = s.request == run.request;
        let acknowledged = cr.observed_sync_request >= run.request;
        match &s.phase {
            // A run already final keeps what the server added to it (an import limit reached).
            RunPhase::Completed | RunPhase::Failed
                if for_this
                    && acknowledged
                    && !matches!(
                        run.phase,
                        RequestPhase::Superseded | RequestPhase::Completed | RequestPhase::Failed
                    ) =>
            {
                run.phase = if s.phase == RunPhase::Completed {
                    RequestPhase::Completed
                } else {
                    RequestPhase::Failed
                };
                run.backups_found = s.backups_found;
                run.backups_imported = s.backups_imported;
                run.heartbeat = s.heartbeat.clone();
                run.message = s.message.as_deref().map(clean);
            }
            RunPhase::InProgress if for_this && run.phase.is_active() => {
                run.phase = RequestPhase::InProgress;
                if s.heartbeat.is_some() {
                    run.heartbeat = s.heartbeat.clone();
                }
            }
            _ => {}
        }
    }
}

/// What the server's view says when a cluster reports a phase it may not set: the phase quoted,
/// cut and cleaned, so a hostile cluster cannot put an unbounded or control-laden string into it.
pub(crate) fn unknown_phase(phase: &str) -> String {
    let shown: String = phase.chars().take(40).collect();
    format!(
        "the cluster reported an unknown phase {:?}; the server keeps the last phase it knows",
        clean(&shown)
    )
}

/// The cluster's state from the agent's Deployment (`None`: there is none): `Ready`, or
/// `AgentMissing`/`AgentOutdated` with why.
fn agent_state(agent: Option<&Deployment>, min: &semver::Version) -> (ClusterState, Option<String>) {
    let version = agent.and_then(|d| d.labels().get(VERSION_LABEL).cloned());
    match (agent, &version) {
        (None, _) => (
            ClusterState::AgentMissing,
            Some(format!("no {AGENT_NAME} Deployment in {AGENT_NAMESPACE}")),
        ),
        (Some(_), None) => (
            ClusterState::AgentOutdated,
            Some(format!("the agent Deployment has no {VERSION_LABEL} label")),
        ),
        (Some(_), Some(v)) => match semver::Version::parse(v) {
            Ok(v) if v >= *min => (ClusterState::Ready, None),
            Ok(v) => (
                ClusterState::AgentOutdated,
                Some(format!("agent {v} is older than the minimum {min}")),
            ),
            Err(_) => (
                ClusterState::AgentOutdated,
                Some(format!("the agent version {v:?} is not a version")),
            ),
        },
    }
}

/// The image of the agent's container (`agent`, else the first) in its Deployment.
fn agent_image(d: &Deployment) -> Option<String> {
    let containers = &d.spec.as_ref()?.template.spec.as_ref()?.containers;
    containers
        .iter()
        .find(|c| c.name == "agent")
        .or_else(|| containers.first())
        .and_then(|c| c.image.clone())
}

/// A backup or restore the agent runs now (`backup name`), if there is one: an
/// `ApplicationBackup` or `ApplicationRestore` in the agent's namespace `InProgress` with a
/// heartbeat within `lease`. One whose heartbeat is older is run by no one any more. (An agent
/// that restarts runs a backup or restore it was cut short in again from the start, once.)
async fn running_operation(
    client: &kube::Client,
    now: SystemTime,
    lease: Duration,
) -> Result<Option<String>, VisitError> {
    use kube::api::DynamicObject;
    use kube::core::ApiResource;
    /// Whether an object's status says it runs.
    type Runs = fn(&serde_json::Value) -> bool;
    let kinds: [(&str, ApiResource, Runs); 2] = [
        (
            "backup",
            ApiResource::erase::<crate::crd::ApplicationBackup>(&()),
            |status| phase_is(status, &ApplicationBackupPhase::InProgress),
        ),
        (
            "restore",
            ApiResource::erase::<crate::crd::ApplicationRestore>(&()),
            |status| phase_is(status, &ApplicationRestorePhase::InProgress),
        ),
    ];
    for (what, ar, in_progress) in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), AGENT_NAMESPACE, &ar);
        let mut lp = ListParams::default().limit(500);
        loop {
            let page = match api.list(&lp).await {
                Ok(p) => p,
                // Without the CRDs nothing runs.
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(e) => return Err(err(&format!("listing the {what}s that run"), e)),
            };
            for o in &page.items {
                let status = &o.data["status"];
                let alive = status["heartbeat"]
                    .as_str()
                    .or(status["startTimestamp"].as_str())
                    .and_then(parse_rfc3339)
                    .is_some_and(|t| now.duration_since(t).unwrap_or(Duration::ZERO) <= lease);
                if in_progress(status) && alive {
                    return Ok(Some(format!("{what} {}", o.name_any())));
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp.continue_token = Some(c),
                None => break,
            }
        }
    }
    Ok(None)
}

/// Whether the `phase` of a CR's `status` (read untyped) is `phase`, typed. A missing phase, or
/// one that is not a string, is no phase (serde would take `{"InProgress": null}` for the
/// variant); an unknown one is `Unknown` and so none of the known.
fn phase_is<P: serde::de::DeserializeOwned + PartialEq>(status: &serde_json::Value, phase: &P) -> bool {
    status
        .get("phase")
        .filter(|p| p.is_string())
        .and_then(|p| P::deserialize(p).ok())
        .is_some_and(|p| p == *phase)
}

/// A message a cluster reported, as the catalog and the API may show it: without anything
/// credential-shaped (an agent's error may name a request URL carrying a SAS).
pub(crate) fn clean(message: &str) -> String {
    pxb_core::redact::redact(message).into_owned()
}

/// Why a visit could not be made: what failed, and whether the cluster refused the credential
/// itself (HTTP 401), in which case the provider should issue another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisitError {
    /// What failed, and why.
    pub message: String,
    /// The cluster answered 401: it does not accept the credential (rotated CA, revoked).
    pub refused: bool,
}

impl std::fmt::Display for VisitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for VisitError {
    fn from(message: String) -> Self {
        VisitError {
            message,
            refused: false,
        }
    }
}

fn err(what: &str, e: kube::Error) -> VisitError {
    if let kube::Error::Api(s) = &e {
        let refused = s.code == 401;
        return VisitError {
            message: super::kubeconfig::map_error(what, e).to_string(),
            refused,
        };
    }
    // Transport errors say little at the top ("client error (Connect)"); their causes say why.
    let mut msg = format!("{what}: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg.into()
}

/// Visits the cluster through `client`. `Err` means the cluster could not be reached (the caller
/// records it `Unreachable`); problems with single locations end up in their status instead.
pub async fn visit(client: &kube::Client, input: VisitInput) -> Result<VisitOutput, VisitError> {
    let org = input.cluster.org.clone();
    let now = input.now;
    let mut out = VisitOutput::default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let mut agent = deployments
        .get_opt(AGENT_NAME)
        .await
        .map_err(|e| err("reading the agent deployment", e))?;
    if agent.is_none()
        && let Some(image) = &input.install_agent
    {
        let done = crate::server::install::install_agent(client, image).await?;
        let created = done.created + done.updated;
        tracing::info!(
            cluster = %input.cluster.name,
            created = done.created,
            updated = done.updated,
            left = ?done.left,
            %image,
            "installed the agent"
        );
        return Ok(VisitOutput {
            status: ClusterStatus {
                state: ClusterState::AgentMissing,
                message: Some(format!(
                    "the agent ({image}) was installed; waiting for it to report"
                )),
                last_seen: Some(rfc3339(now)),
                last_attempt: Some(rfc3339(now)),
                ..ClusterStatus::default()
            },
            statuses: input.statuses.into_values().collect(),
            orphans_deleted: 0,
            written: created,
        });
    }
    // Zero-touch upgrade, at most once a visit: an outdated agent, or one of another image than
    // the configured one, when its Deployment is the install's and no backup or restore runs.
    let mut upgrade_note = None;
    if let (Some(d), Some(image)) = (&agent, &input.install_agent) {
        let (before, _) = agent_state(Some(d), &input.min_agent_version);
        let current = agent_image(d);
        if before == ClusterState::AgentOutdated || current.as_deref() != Some(image.as_str()) {
            if let Some(why) = crate::server::install::not_ours(&d.metadata) {
                upgrade_note = Some(format!(
                    "not upgraded to {image}: its Deployment is {why}; upgrade it the way it was installed"
                ));
            } else if let Some(running) = running_operation(client, now, input.lease).await? {
                upgrade_note = Some(format!(
                    "the upgrade to {image} waits while {running} runs on the cluster"
                ));
            } else {
                let done = crate::server::install::install_agent(client, image).await?;
                tracing::info!(
                    cluster = %input.cluster.name,
                    from = current.as_deref().unwrap_or("?"),
                    %image,
                    updated = done.updated,
                    created = done.created,
                    left = ?done.left,
                    "upgraded the agent"
                );
                out.written += done.updated + done.created;
                let left = if done.left.is_empty() {
                    String::new()
                } else {
                    format!("; left alone: {}", done.left.join(", "))
                };
                upgrade_note = Some(format!(
                    "the agent was upgraded to {image} ({} objects updated, {} created{left}); it restarts",
                    done.updated, done.created
                ));
                agent = deployments
                    .get_opt(AGENT_NAME)
                    .await
                    .map_err(|e| err("reading the agent deployment", e))?;
            }
        }
    }
    let version = agent
        .as_ref()
        .and_then(|d| d.labels().get(VERSION_LABEL).cloned());
    let (state, message) = agent_state(agent.as_ref(), &input.min_agent_version);
    let message = match (message, upgrade_note) {
        (Some(m), Some(n)) => Some(format!("{m}; {n}")),
        (m, n) => m.or(n),
    };
    out.status = ClusterStatus {
        state,
        message,
        credential: None,
        agent_version: version,
        last_seen: Some(rfc3339(now)),
        last_attempt: Some(rfc3339(now)),
    };

    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let managed = ListParams::default().labels(&format!("{MANAGED_BY}={MANAGER}"));
    let existing = match locations.list(&managed).await {
        Ok(l) => l.items,
        // Without the CRDs nothing of ours can be there, and nothing can be written.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            out.statuses = input
                .desired
                .iter()
                .map(|d| {
                    let mut s = input.statuses.get(&d.location.id).cloned().unwrap_or_default();
                    s.validation.phase = ValidationPhase::Pending;
                    s.validation.reason = Some("the pxb CRDs are not installed on the cluster".into());
                    apply_leases(&mut s, now, input.lease);
                    s
                })
                .collect();
            return Ok(out);
        }
        Err(e) => return Err(err("listing BackupLocations", e)),
    };

    // Orphans: managed objects of another org, of a location no longer wanted here, or mirroring
    // a location under an old name. Labels hold ids in their safe form (`names`), so the wanted
    // ones are looked up by that form and confirmed by the annotated original.
    let wanted: BTreeMap<String, (&str, String)> = input
        .desired
        .iter()
        .map(|d| {
            (
                names::label_value(&d.location.id),
                (d.location.id.as_str(), location_object(&d.location.name)),
            )
        })
        .collect();
    let is_wanted = |meta: &ObjectMeta| {
        owned_by(meta, &org)
            && meta
                .labels
                .as_ref()
                .and_then(|l| l.get(UID_LABEL))
                .and_then(|uid| wanted.get(uid))
                .is_some_and(|(id, name)| mirrors(meta, id) && Some(name.as_str()) == meta.name.as_deref())
    };
    let mut current: BTreeMap<String, BackupLocation> = BTreeMap::new();
    for cr in existing {
        if is_wanted(&cr.metadata) {
            current.insert(cr.name_any(), cr);
        } else {
            match locations.delete(&cr.name_any(), &DeleteParams::default()).await {
                Ok(_) => out.orphans_deleted += 1,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(err("deleting an orphaned BackupLocation", e)),
            }
        }
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let wanted_secrets: BTreeSet<String> = input
        .desired
        .iter()
        .filter(|d| d.secret.is_some())
        .map(|d| secret_name(&d.location.name))
        .collect();
    let existing_secrets = secrets
        .list(&managed)
        .await
        .map_err(|e| err("listing managed Secrets", e))?;
    for s in existing_secrets.items {
        let keep = owned_by(&s.metadata, &org) && wanted_secrets.contains(&s.name_any());
        if !keep {
            match secrets.delete(&s.name_any(), &DeleteParams::default()).await {
                Ok(_) => out.orphans_deleted += 1,
                Err(kube::Error::Api(st)) if st.code == 404 => {}
                Err(e) => return Err(err("deleting an orphaned Secret", e)),
            }
        }
    }

    let mut degraded = Vec::new();
    for d in &input.desired {
        let loc = &d.location;
        let mut status = input
            .statuses
            .get(&loc.id)
            .cloned()
            .unwrap_or_else(|| LocationStatus {
                org: org.clone(),
                id: LocationStatus::id_of(&loc.id, &input.cluster.id),
                location: loc.id.clone(),
                cluster: input.cluster.id.clone(),
                cluster_name: input.cluster.name.clone(),
                ..LocationStatus::default()
            });
        if let Some((kind, value)) = &d.secret {
            let want = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name(&loc.name)),
                    namespace: Some(AGENT_NAMESPACE.into()),
                    labels: Some(labels(&org, &loc.id)),
                    annotations: Some(annotations(&org, &loc.id)),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(kind.clone(), ByteString(value.clone()))])),
                ..Secret::default()
            };
            if let Err(e) = upsert_secret(&secrets, want).await {
                return Err(err("writing a location Secret", e));
            }
        }
        let sync_request = status.sync.as_ref().map(|s| s.request).unwrap_or(0);
        let spec = desired_spec(loc, &input.cluster, sync_request);
        let object = location_object(&loc.name);
        let cr = match current.get(&object) {
            Some(cr) if cr.spec == spec => Some(cr.clone()),
            Some(cr) => {
                let mut next = cr.clone();
                next.spec = spec;
                out.written += 1;
                match locations.replace(&object, &PostParams::default(), &next).await {
                    Ok(cr) => Some(cr),
                    Err(kube::Error::Api(s)) if s.code == 409 => Some(cr.clone()), // next visit retries
                    Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                        refused(&mut status, &e.message);
                        None
                    }
                    Err(e) => return Err(err("updating a BackupLocation", e)),
                }
            }
            None => {
                let mut cr = BackupLocation::new(&object, spec);
                cr.metadata.namespace = Some(AGENT_NAMESPACE.into());
                cr.metadata.labels = Some(labels(&org, &loc.id));
                cr.metadata.annotations = Some(annotations(&org, &loc.id));
                out.written += 1;
                match locations.create(&PostParams::default(), &cr).await {
                    Ok(cr) => {
                        if loc.sync && status.sync.is_none() {
                            status.sync = Some(SyncRun {
                                request: 0,
                                phase: RequestPhase::Pending,
                                requested_at: rfc3339(now),
                                message: Some("first sync, as the location was assigned".into()),
                                ..SyncRun::default()
                            });
                        }
                        Some(cr)
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        status.validation.phase = ValidationPhase::Invalid;
                        status.validation.reason = Some(format!(
                            "a BackupLocation {object:?} exists in {AGENT_NAMESPACE} that pxb-server does not \
                             manage; rename one of them"
                        ));
                        None
                    }
                    Err(kube::Error::Api(e)) if e.code == 400 || e.code == 422 => {
                        refused(&mut status, &e.message);
                        None
                    }
                    Err(e) => return Err(err("creating a BackupLocation", e)),
                }
            }
        };
        read_back(
            &mut status,
            cr.as_ref().and_then(|c| c.status.as_ref()),
            loc.validate_request,
            loc.verify_request,
            now,
        );
        apply_leases(&mut status, now, input.lease);
        if matches!(
            status.validation.phase,
            ValidationPhase::Invalid | ValidationPhase::Stalled
        ) {
            degraded.push(loc.name.clone());
        }
        out.statuses.push(status);
    }
    if out.status.state == ClusterState::Ready && !degraded.is_empty() {
        out.status.state = ClusterState::Degraded;
        out.status.message = Some(format!("locations not valid here: {}", degraded.join(", ")));
    }
    Ok(out)
}

/// The cluster's API server refused the CR (its schema, or an admission policy): the location is
/// Invalid there, with the reason; the cluster itself is fine.
fn refused(status: &mut LocationStatus, message: &str) {
    status.validation.phase = ValidationPhase::Invalid;
    status.validation.failed_step = Some("configure".into());
    status.validation.reason = Some(format!("the cluster refused the BackupLocation: {message}"));
}

async fn upsert_secret(api: &Api<Secret>, want: Secret) -> Result<(), kube::Error> {
    let name = want.metadata.name.clone().unwrap_or_default();
    match api.get_opt(&name).await? {
        Some(have)
            if have.data == want.data
                && have.labels() == want.labels()
                && have.annotations() == want.annotations() =>
        {
            Ok(())
        }
        Some(have) => {
            let mut next = want;
            next.metadata.resource_version = have.metadata.resource_version;
            api.replace(&name, &PostParams::default(), &next)
                .await
                .map(|_| ())
        }
        None => api.create(&PostParams::default(), &want).await.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_phase_spelled_in_progress_runs() {
        use serde_json::json;
        let statuses = [
            (json!({"phase": "InProgress"}), true),
            (
                json!({"phase": "InProgress", "heartbeat": "2026-01-01T00:00:00Z"}),
                true,
            ),
            (json!({"phase": "Pending"}), false),
            (json!({"phase": "Success"}), false),
            (json!({"phase": "Deleting"}), false),
            (json!({"phase": "inprogress"}), false),
            (json!({"phase": "InProgress "}), false),
            (json!({"phase": ""}), false),
            (json!({"phase": null}), false),
            (json!({"phase": 1}), false),
            (json!({"phase": ["InProgress"]}), false),
            (json!({"phase": {"InProgress": null}}), false),
            (json!({}), false),
            (json!(null), false),
            (json!("InProgress"), false),
        ];
        for (status, runs) in &statuses {
            assert_eq!(
                phase_is(status, &ApplicationBackupPhase::InProgress),
                *runs,
                "backup {status}"
            );
            assert_eq!(
                phase_is(status, &ApplicationRestorePhase::InProgress),
                *runs,
                "restore {status}"
            );
            // As the untyped comparison it replaces decided.
            assert_eq!(status["phase"] == "InProgress", *runs, "{status}");
        }
    }

    fn status_with(run: SyncRun) -> LocationStatus {
        LocationStatus {
            sync: Some(run),
            ..LocationStatus::default()
        }
    }

    #[test]
    fn a_silent_request_stalls_after_the_lease_and_a_late_report_still_counts() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = status_with(SyncRun {
            request: 3,
            phase: RequestPhase::InProgress,
            requested_at: rfc3339(t0),
            heartbeat: Some(rfc3339(t0 + Duration::from_secs(10))),
            ..SyncRun::default()
        });
        apply_leases(&mut s, t0 + Duration::from_secs(100), Duration::from_secs(120));
        assert_eq!(s.sync.as_ref().map(|r| r.phase), Some(RequestPhase::InProgress));
        apply_leases(&mut s, t0 + Duration::from_secs(131), Duration::from_secs(120));
        assert_eq!(s.sync.as_ref().map(|r| r.phase), Some(RequestPhase::Stalled));
        // The cluster comes back and reports the run done: the server believes it.
        let cr = BackupLocationStatus {
            observed_sync_request: 3,
            sync: Some(crate::crd::SyncStatus {
                phase: RunPhase::Completed,
                request: 3,
                backups_found: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        read_back(&mut s, Some(&cr), 0, 0, t0 + Duration::from_secs(200));
        let run = s.sync.expect("run");
        assert_eq!((run.phase, run.backups_found), (RequestPhase::Completed, 5));
    }

    #[test]
    fn a_report_for_an_older_request_does_not_complete_a_newer_one() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = status_with(SyncRun {
            request: 4,
            phase: RequestPhase::Pending,
            requested_at: rfc3339(t0),
            ..SyncRun::default()
        });
        let cr = BackupLocationStatus {
            observed_sync_request: 3,
            sync: Some(crate::crd::SyncStatus {
                phase: RunPhase::Completed,
                request: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        read_back(&mut s, Some(&cr), 0, 0, t0);
        assert_eq!(s.sync.as_ref().map(|r| r.phase), Some(RequestPhase::Pending));
    }

    #[test]
    fn a_request_made_during_a_visit_survives_the_visits_result() {
        let visited_run = SyncRun {
            request: 1,
            phase: RequestPhase::Completed,
            ..SyncRun::default()
        };
        let mut visited = status_with(visited_run.clone());
        let mut current = status_with(SyncRun {
            request: 2,
            phase: RequestPhase::Pending,
            ..SyncRun::default()
        });
        current.validation.request = 5;
        current.validation.requested_at = Some("2026-01-01T00:00:00Z".into());
        keep_newer_requests(&current, &mut visited);
        assert_eq!(
            visited.sync.as_ref().map(|r| (r.request, r.phase)),
            Some((2, RequestPhase::Pending))
        );
        assert_eq!(visited.validation.request, 5);
        // An older view does not roll a visit's newer result back.
        let mut newer = status_with(visited_run);
        keep_newer_requests(&status_with(SyncRun::default()), &mut newer);
        assert_eq!(newer.sync.as_ref().map(|r| r.request), Some(1));
    }

    #[test]
    fn managed_objects_are_matched_by_the_safe_forms_and_the_annotated_originals() {
        let org = format!("org-{}", "o".repeat(70));
        let uid = format!("Location/{}", "L".repeat(70));
        let meta = ObjectMeta {
            labels: Some(labels(&org, &uid)),
            annotations: Some(annotations(&org, &uid)),
            ..ObjectMeta::default()
        };
        for v in meta.labels.iter().flatten().map(|(_, v)| v) {
            assert!(names::is_label_value(v), "{v}");
        }
        assert!(owned_by(&meta, &org) && mirrors(&meta, &uid));
        assert!(!owned_by(&meta, "other") && !mirrors(&meta, "other"));
        // Objects written before annotations existed match by their labels alone.
        let old = ObjectMeta {
            labels: Some(labels("acme", "loc-1")),
            ..ObjectMeta::default()
        };
        assert!(owned_by(&old, "acme") && mirrors(&old, "loc-1"));
        // An org whose id is another org's safe form is told apart by the annotation.
        let lookalike = names::label_value(&org);
        assert!(!owned_by(&meta, &lookalike));
        assert_eq!(location_object("primary"), "primary");
        assert!(names::is_subdomain(&secret_name(&"L".repeat(300))));
    }

    #[test]
    fn a_final_run_keeps_what_the_server_added_to_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = status_with(SyncRun {
            request: 1,
            phase: RequestPhase::Completed,
            message: Some("import limit reached: 50 of 100 imported".into()),
            ..SyncRun::default()
        });
        let cr = BackupLocationStatus {
            observed_sync_request: 1,
            sync: Some(crate::crd::SyncStatus {
                phase: RunPhase::Completed,
                request: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        read_back(&mut s, Some(&cr), 0, 0, t0);
        assert_eq!(
            s.sync.and_then(|r| r.message).as_deref(),
            Some("import limit reached: 50 of 100 imported")
        );
    }

    #[test]
    fn validation_requests_are_tracked_until_acknowledged() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut s = LocationStatus::default();
        s.validation.requested_at = Some(rfc3339(t0));
        let cr = BackupLocationStatus {
            observed_validate_request: 1,
            validation: Some(crate::crd::ValidationStatus {
                phase: LocationValidationPhase::Valid,
                ..Default::default()
            }),
            ..Default::default()
        };
        read_back(&mut s, Some(&cr), 2, 0, t0);
        assert_eq!(s.validation.phase, ValidationPhase::Requested);
        apply_leases(&mut s, t0 + Duration::from_secs(200), Duration::from_secs(120));
        assert_eq!(s.validation.phase, ValidationPhase::Stalled);
        read_back(
            &mut s,
            Some(&BackupLocationStatus {
                observed_validate_request: 2,
                ..cr
            }),
            2,
            0,
            t0,
        );
        assert_eq!(s.validation.phase, ValidationPhase::Valid);
    }

    /// A tenant's cluster writes the location's status: it cannot put a phase the server owns
    /// (`Requested`, `Stalled`, `Pending`) or one nobody knows into the server's view.
    #[test]
    fn a_clusters_status_cannot_set_a_location_phase_the_server_owns_or_does_not_know() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for hostile in [
            "Requested",
            "Stalled",
            "Pending",
            "Vaild\u{7}",
            &"v".repeat(50_000),
        ] {
            let mut s = status_with(SyncRun {
                request: 1,
                phase: RequestPhase::Pending,
                requested_at: rfc3339(t0),
                ..SyncRun::default()
            });
            // As the server reads it from the cluster: the status reads, the phases as unknown
            // (`Pending` is one the agent may write, but the server owns it in its view).
            let cr: BackupLocationStatus = serde_json::from_value(serde_json::json!({
                "observedValidateRequest": 1, "observedVerifyRequest": 1, "observedSyncRequest": 1,
                "validation": {"phase": hostile},
                "verify": {"phase": hostile},
                "sync": {"phase": hostile, "request": 1},
            }))
            .expect("any phase reads");
            assert_eq!(
                cr.verify.as_ref().map(|v| v.phase.clone()),
                Some(RunPhase::Unknown(hostile.to_owned()))
            );
            read_back(&mut s, Some(&cr), 1, 1, t0);
            assert_eq!(s.validation.phase, ValidationPhase::Pending, "{hostile:.40}");
            assert_eq!(
                s.sync.as_ref().map(|r| r.phase),
                Some(RequestPhase::Pending),
                "an unknown sync phase is ignored"
            );
            let quoted: String = hostile.chars().take(5).filter(|c| !c.is_control()).collect();
            assert!(
                s.validation
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains(&quoted)),
                "{:.80?}",
                s.validation.reason
            );
            assert!(
                s.validation
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("unknown phase") && r.len() < 300),
                "{:.80?}",
                s.validation.reason
            );
            let verify = s.verify.expect("verify");
            assert_eq!(verify.phase, VerifyPhase::Failed, "{hostile:.40}");
            assert!(
                verify
                    .message
                    .is_some_and(|m| m.contains("unknown phase") && m.len() < 300)
            );
        }
    }
}
