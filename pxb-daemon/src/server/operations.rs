//! Backups and restores on one cluster, during a visit: the server's records become
//! `ApplicationBackup` / `ApplicationRestore` objects in `pxb-system`, and the agent's status on
//! them flows back into the records.
//!
//! - A backup's object carries `reclaimPolicy: Delete`, so deleting it (a delete request or
//!   retention) makes the agent delete the data first; the record goes once the object is gone.
//! - A force-deleted backup's object, if the cluster is reachable again, is annotated
//!   `pxb.io/force-delete=true` and deleted: it goes, the data stays.
//! - A restore's object is deleted once the restore is final; the record keeps the result.
//! - After a sync completes, the agent's catalog of the location is read through the service proxy
//!   and its application backups come back as "found" for the server to import.
//!
//! Nothing here touches the catalog: the server writes what [`visit`] returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt as _;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource as _, ResourceExt as _};
use pxb_core::backup::{BackupKind, Summary};
use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, BackupView, BackupVolume, MAX_BACKUP_VOLUMES, RestorePhase, RestoreRecord,
    RestoreTally,
};
use serde_json::json;

use super::reconcile::{
    AGENT_NAME, MANAGED_BY, MANAGER, ORG_LABEL, annotations, clean, labels, location_object, owned_by,
};
use crate::crd::{
    AGENT_NAMESPACE, ApplicationBackup, ApplicationBackupPhase, ApplicationBackupSpec, ApplicationRestore,
    ApplicationRestorePhase, ApplicationRestoreSpec, VolumePhase,
};
use crate::names::{self, object_name};
use pxb_core::api::agent::FORCE_DELETE;

/// The operations of one cluster the server wants the visit to drive.
#[derive(Clone, Debug)]
pub(crate) struct OpsInput {
    /// The org.
    pub(crate) org: String,
    /// Active backups (`Pending`, `InProgress`, `Deleting`).
    pub(crate) backups: Vec<BackupRecord>,
    /// Active restores.
    pub(crate) restores: Vec<RestoreRecord>,
    /// Objects of force-deleted backups to drop, leaving the data.
    pub(crate) forced: Vec<String>,
    /// Locations (id, name) whose catalog to read: a sync there just completed.
    pub(crate) imports: Vec<(String, String)>,
    /// Bounds on reading those catalogs.
    pub(crate) catalog_limits: CatalogLimits,
    /// Now.
    pub(crate) now: SystemTime,
}

/// Bounds on reading an agent's catalog through the service proxy. The agent (and so the
/// tenant) decides what it answers; these keep one cluster from holding the server's memory or a
/// visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CatalogLimits {
    /// Largest body of one page, in bytes; a larger one fails the read.
    pub(crate) page_bytes: usize,
    /// Most pages read per import; the read stops there.
    pub(crate) pages: usize,
    /// Most application backups collected per import; the read stops there.
    pub(crate) items: usize,
    /// Longest time the reads of one visit may take.
    pub(crate) deadline: Duration,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            page_bytes: 8 << 20,
            pages: 100,
            items: 20_000,
            deadline: Duration::from_secs(10),
        }
    }
}

/// Application backups a sync found in a location, as far as the server read them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Found {
    /// The location's id.
    pub(crate) location: String,
    /// What was read.
    pub(crate) backups: Vec<Summary>,
    /// Why the read stopped early or failed, if it did (a bound reached, an error).
    pub(crate) problem: Option<String>,
}

/// What the visit learned.
#[derive(Clone, Debug, Default)]
pub(crate) struct OpsOutput {
    /// Backups as they are now.
    pub(crate) backups: Vec<BackupRecord>,
    /// Backups whose deletion is complete.
    pub(crate) gone: Vec<String>,
    /// Restores as they are now.
    pub(crate) restores: Vec<RestoreRecord>,
    /// Force-deleted backups whose object is gone.
    pub(crate) forced_done: Vec<String>,
    /// Application backups found in the catalogs of locations whose sync completed.
    pub(crate) found: Vec<Found>,
    /// Objects written or deleted.
    pub(crate) written: usize,
}

impl OpsInput {
    /// Whether there is nothing to do (the visit then makes no call for operations).
    pub(crate) fn is_empty(&self) -> bool {
        self.backups.is_empty()
            && self.restores.is_empty()
            && self.forced.is_empty()
            && self.imports.is_empty()
    }
}

fn ms_of(rfc: Option<&str>) -> Option<i64> {
    pxb_core::clock::parse_rfc3339(rfc?).map(pxb_core::clock::unix_ms)
}

fn now_ms(now: SystemTime) -> i64 {
    pxb_core::clock::unix_ms(now)
}

fn err(what: &str, e: kube::Error) -> String {
    format!("{what}: {e}")
}

/// Drives the cluster's operations; an error means the cluster could not be talked to (the
/// records keep their last known state).
pub(crate) async fn visit(client: &kube::Client, input: OpsInput) -> Result<OpsOutput, String> {
    let mut out = OpsOutput::default();
    if input.is_empty() {
        return Ok(out);
    }
    let ns = AGENT_NAMESPACE;
    let managed = ListParams::default().labels(&format!(
        "{MANAGED_BY}={MANAGER},{ORG_LABEL}={}",
        names::label_value(&input.org)
    ));
    if !input.backups.is_empty() || !input.forced.is_empty() {
        let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), ns);
        let existing: BTreeMap<String, ApplicationBackup> = api
            .list(&managed)
            .await
            .map_err(|e| err("listing ApplicationBackups", e))?
            .items
            .into_iter()
            .filter(|b| owned_by(&b.metadata, &input.org))
            .map(|b| (b.name_any(), b))
            .collect();
        // Objects are named by `object_name` of the record's id.
        for id in &input.forced {
            let name = &object_name(id);
            match existing.get(name) {
                Some(cr) => {
                    let patch = json!({"metadata": {"annotations": {FORCE_DELETE: "true"}}});
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(|e| err("marking a force-deleted ApplicationBackup", e))?;
                    if cr.meta().deletion_timestamp.is_none() {
                        match api.delete(name, &DeleteParams::default()).await {
                            Ok(_) | Err(kube::Error::Api(_)) => {}
                            Err(e) => return Err(err("deleting a force-deleted ApplicationBackup", e)),
                        }
                    }
                    out.written += 1;
                }
                None => out.forced_done.push(id.clone()),
            }
        }
        for b in &input.backups {
            let mut b = b.clone();
            let name = object_name(&b.id);
            let cr = existing.get(&name);
            if b.phase == BackupPhase::Deleting {
                match cr {
                    None => {
                        out.gone.push(b.id.clone());
                        continue;
                    }
                    Some(cr) if cr.meta().deletion_timestamp.is_none() => {
                        match api.delete(&name, &DeleteParams::default()).await {
                            Ok(_) => out.written += 1,
                            Err(kube::Error::Api(s)) if s.code == 404 => {
                                out.gone.push(b.id.clone());
                                continue;
                            }
                            Err(e) => return Err(err("deleting an ApplicationBackup", e)),
                        }
                    }
                    Some(cr) => {
                        if let Some(s) = &cr.status {
                            b.message = s.message.as_deref().map(clean).or(b.message);
                            b.heartbeat = s.heartbeat.clone().or(b.heartbeat);
                        }
                    }
                }
                out.backups.push(b);
                continue;
            }
            let cr = match cr {
                Some(cr) => cr.clone(),
                // Stalled before it ever reached the cluster: starting it now, long after it was
                // asked for, would surprise; it is recorded as missed instead.
                None if b.phase == BackupPhase::Stalled => {
                    b.phase = BackupPhase::Missed;
                    b.message = Some(format!(
                        "cluster {} was unreachable until the backup stalled; it was never started",
                        b.cluster_name
                    ));
                    b.completed_ms = Some(now_ms(input.now));
                    out.backups.push(b);
                    continue;
                }
                None => {
                    let mut cr = ApplicationBackup::new(
                        &name,
                        ApplicationBackupSpec {
                            location: location_object(&b.location_name),
                            namespaces: b.namespaces.clone(),
                            include_volumes: true,
                            reclaim_policy: "Delete".into(),
                            ..ApplicationBackupSpec::default()
                        },
                    );
                    cr.metadata.namespace = Some(ns.into());
                    cr.metadata.labels = Some(labels(&input.org, &b.id));
                    cr.metadata.annotations = Some(annotations(&input.org, &b.id));
                    out.written += 1;
                    match api.create(&PostParams::default(), &cr).await {
                        Ok(cr) => cr,
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            // Made by an earlier visit whose answer was lost: read it next time.
                            out.backups.push(b);
                            continue;
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 400 || s.code == 422 => {
                            b.phase = BackupPhase::Failed;
                            b.message = Some(format!(
                                "the cluster refused the ApplicationBackup: {}",
                                clean(&s.message)
                            ));
                            b.completed_ms = Some(now_ms(input.now));
                            out.backups.push(b);
                            continue;
                        }
                        Err(e) => return Err(err("creating an ApplicationBackup", e)),
                    }
                }
            };
            if let Some(s) = &cr.status {
                read_backup(&mut b, s, input.now);
            }
            out.backups.push(b);
        }
    }
    if !input.restores.is_empty() {
        let api: Api<ApplicationRestore> = Api::namespaced(client.clone(), ns);
        for r in &input.restores {
            let mut r = r.clone();
            let name = object_name(&r.id);
            let cr = match api
                .get_opt(&name)
                .await
                .map_err(|e| err("reading an ApplicationRestore", e))?
            {
                Some(cr) => cr,
                None => {
                    let mut cr = ApplicationRestore::new(
                        &name,
                        ApplicationRestoreSpec {
                            location: location_object(&r.location_name),
                            backup_id: r.backup_id.clone(),
                            namespaces: r.namespaces.clone(),
                            namespace_mapping: r.namespace_mapping.clone(),
                            existing_resource_policy: r.existing_resource_policy.as_str().into(),
                            allow_cluster_kinds: r.allow_cluster_kinds.clone(),
                            ..ApplicationRestoreSpec::default()
                        },
                    );
                    cr.metadata.namespace = Some(ns.into());
                    cr.metadata.labels = Some(labels(&input.org, &r.id));
                    cr.metadata.annotations = Some(annotations(&input.org, &r.id));
                    out.written += 1;
                    match api.create(&PostParams::default(), &cr).await {
                        Ok(cr) => cr,
                        Err(kube::Error::Api(s)) if s.code == 409 => {
                            out.restores.push(r);
                            continue;
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 400 || s.code == 422 => {
                            r.phase = RestorePhase::Failed;
                            r.message = Some(format!(
                                "the cluster refused the ApplicationRestore: {}",
                                clean(&s.message)
                            ));
                            r.completed_ms = Some(now_ms(input.now));
                            out.restores.push(r);
                            continue;
                        }
                        Err(e) => return Err(err("creating an ApplicationRestore", e)),
                    }
                }
            };
            if let Some(s) = &cr.status {
                r.message = s.message.as_deref().map(clean);
                if !s.phase.is_unset() {
                    match restore_phase_from_cluster(&s.phase) {
                        Some(p) => r.phase = p,
                        None => r.message = Some(super::reconcile::unknown_phase(s.phase.as_str())),
                    }
                }
                r.heartbeat = s.heartbeat.clone().or(r.heartbeat);
                r.counts = RestoreTally {
                    total: s.counts.total,
                    created: s.counts.created,
                    replaced: s.counts.replaced,
                    skipped: s.counts.skipped,
                    failed: s.counts.failed,
                };
                if r.phase.is_final() {
                    r.completed_ms = ms_of(s.completion_timestamp.as_deref()).or(Some(now_ms(input.now)));
                    // The record keeps the result; the cluster does not need the object any more.
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => out.written += 1,
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => return Err(err("deleting a finished ApplicationRestore", e)),
                    }
                }
            }
            out.restores.push(r);
        }
    }
    // A catalog that cannot be read now does not hold up the backups and restores; the next
    // completed sync imports what this one would have. All reads of a visit share one deadline.
    let limits = input.catalog_limits;
    let deadline = tokio::time::Instant::now() + limits.deadline;
    for (id, name) in &input.imports {
        let mut found = Found {
            location: id.clone(),
            ..Found::default()
        };
        let object = location_object(name);
        let read = read_catalog(client, &object, &limits, &mut found.backups);
        found.problem = match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!(
                "reading the agent's catalog took longer than {:?}",
                limits.deadline
            )),
        };
        if let Some(e) = &found.problem {
            tracing::warn!(location = %name, read = found.backups.len(), error = %e, "the backups a sync found were not all read");
        }
        out.found.push(found);
    }
    Ok(out)
}

/// The phase of its record a backup's status on its cluster sets: what an agent reports of its
/// own work. `None` for a phase the server owns (`Pending`, `Deleting`) and for one it does not
/// know (another version's, or a hostile cluster's).
fn backup_phase_from_cluster(p: &ApplicationBackupPhase) -> Option<BackupPhase> {
    match p {
        ApplicationBackupPhase::InProgress => Some(BackupPhase::InProgress),
        ApplicationBackupPhase::Success => Some(BackupPhase::Success),
        ApplicationBackupPhase::PartialSuccess => Some(BackupPhase::PartialSuccess),
        ApplicationBackupPhase::Failed => Some(BackupPhase::Failed),
        ApplicationBackupPhase::Pending
        | ApplicationBackupPhase::Deleting
        | ApplicationBackupPhase::Unknown(_) => None,
    }
}

/// The phase of its record a restore's status on its cluster sets (see
/// [`backup_phase_from_cluster`]); the server owns `Pending`.
fn restore_phase_from_cluster(p: &ApplicationRestorePhase) -> Option<RestorePhase> {
    match p {
        ApplicationRestorePhase::InProgress => Some(RestorePhase::InProgress),
        ApplicationRestorePhase::Success => Some(RestorePhase::Success),
        ApplicationRestorePhase::PartialSuccess => Some(RestorePhase::PartialSuccess),
        ApplicationRestorePhase::Failed => Some(RestorePhase::Failed),
        ApplicationRestorePhase::Pending | ApplicationRestorePhase::Unknown(_) => None,
    }
}

/// Copies the agent's status of a backup into its record; the phase only where it is one an
/// agent reports ([`backup_phase_from_cluster`]): any other leaves the record's phase as it was,
/// with a message quoting it.
pub(crate) fn read_backup(b: &mut BackupRecord, s: &crate::crd::ApplicationBackupStatus, now: SystemTime) {
    b.stage = s.stage.clone();
    b.message = s.message.as_deref().map(clean);
    if !s.phase.is_unset() {
        match backup_phase_from_cluster(&s.phase) {
            Some(p) => b.phase = p,
            None => b.message = Some(super::reconcile::unknown_phase(s.phase.as_str())),
        }
    }
    b.heartbeat = s.heartbeat.clone().or(b.heartbeat.take());
    b.objects = s.progress.objects;
    b.bytes = s.progress.bytes.max(s.sizes.volume_bytes);
    b.stored_bytes = s.sizes.stored_bytes;
    b.backup_id = s.backup_id.clone().or(b.backup_id.take());
    b.virtual_machines = s.virtual_machines;
    b.volumes = s
        .volumes
        .iter()
        .take(MAX_BACKUP_VOLUMES)
        .map(|v| BackupVolume {
            // Kubernetes names are at most 253 characters.
            namespace: short(&v.namespace, 253),
            claim: short(&v.claim, 253),
            phase: match &v.phase {
                VolumePhase::Success | VolumePhase::Failed | VolumePhase::Skipped => {
                    v.phase.as_str().to_owned()
                }
                _ => "Unknown".to_owned(),
            },
            files: v.files,
            bytes: v.bytes,
            message: v.message.as_deref().map(|m| short(&clean(m), 256)),
        })
        .collect();
    b.view = if s.virtual_machines > 0 {
        BackupView::Vms
    } else {
        BackupView::Namespaces
    };
    if !b.phase.is_active() && b.completed_ms.is_none() {
        b.completed_ms = ms_of(s.completion_timestamp.as_deref()).or(Some(now_ms(now)));
    }
}

/// `text` cut to `max` characters (what a cluster writes is not trusted to be short).
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Reads into `out` the application backups the agent's last sync of `location` (the
/// `BackupLocation`'s name) found, through the service proxy, within `limits`: a page larger than
/// `limits.page_bytes` fails the read; after `limits.pages` pages or `limits.items` backups it
/// stops with an error saying so (what was read stays in `out`).
async fn read_catalog(
    client: &kube::Client,
    location: &str,
    limits: &CatalogLimits,
    out: &mut Vec<Summary>,
) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Page {
        #[serde(default)]
        items: Vec<Summary>,
        #[serde(default, rename = "continue")]
        next: Option<String>,
    }
    let what = format!("reading the agent's catalog of location {location}");
    let token = agent_token(client).await.map_err(|e| format!("{what}: {e}"))?;
    let mut after: Option<String> = None;
    let mut seen = BTreeSet::new();
    for _ in 0..limits.pages {
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("location", location).append_pair("limit", "1000");
            if let Some(a) = &after {
                q.append_pair("continue", a);
            }
            q.finish()
        };
        let path = format!(
            "/api/v1/namespaces/{AGENT_NAMESPACE}/services/{AGENT_NAME}:http/proxy/v1/catalog?{query}"
        );
        let mut req = hyper::Request::get(path);
        if let Some(t) = &token {
            req = req.header(pxb_core::api::agent::TOKEN_HEADER, t.as_str());
        }
        let req = req
            .body(kube::client::Body::from(Vec::new()))
            .map_err(|e| format!("building the catalog request: {e}"))?;
        let resp = client.send(req).await.map_err(|e| err(&what, e))?;
        let status = resp.status();
        let body = read_bounded(resp.into_body(), limits.page_bytes)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!("{what}: HTTP {status}: {text}"));
        }
        let page: Page = serde_json::from_slice(&body).map_err(|e| format!("{what}: {e}"))?;
        drop(body);
        for s in page.items.into_iter().filter(|s| s.kind == BackupKind::Resources) {
            if out.len() >= limits.items {
                return Err(format!(
                    "{what}: stopped after {} backups (the most one import reads)",
                    limits.items
                ));
            }
            out.push(s);
        }
        match page.next {
            // A cursor that does not move would loop forever.
            Some(n) if seen.insert(n.clone()) => after = Some(n),
            _ => return Ok(()),
        }
    }
    Err(format!(
        "{what}: stopped after {} pages (the most one import reads)",
        limits.pages
    ))
}

/// The agent's read-API token from its Secret (`None` when the agent made none: an agent from
/// before tokens, which then answers without one).
async fn agent_token(client: &kube::Client) -> Result<Option<String>, String> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let secret = secrets
        .get_opt(pxb_core::api::agent::TOKEN_SECRET)
        .await
        .map_err(|e| err("reading the agent's API token", e))?;
    Ok(secret.and_then(|s| s.data).and_then(|d| {
        d.get("token")
            .map(|t| String::from_utf8_lossy(&t.0).trim().to_owned())
    }))
}

/// The body, read frame by frame; more than `max` bytes is an error (nothing beyond `max` is
/// held in memory).
async fn read_bounded(mut body: kube::client::Body, max: usize) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the response: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(format!(
                    "the response is larger than {max} bytes (the most one page may hold)"
                ));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tenant's cluster writes the status the server reads: it must not be able to put a
    /// phase the server owns (`Deleting` would make the next visit remove the record; `Pending`
    /// keeps it tracked for ever) or an unbounded string into the catalog.
    #[test]
    fn a_clusters_status_cannot_set_a_phase_the_server_owns_or_does_not_know() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for hostile in [
            "Deleting",
            "Pending",
            "Missed",
            "Stalled",
            "Succes\u{1b}[31m",
            &"x".repeat(100_000),
        ] {
            let mut b = BackupRecord {
                phase: BackupPhase::InProgress,
                ..BackupRecord::default()
            };
            // As the server reads it from the cluster.
            let s: crate::crd::ApplicationBackupStatus =
                serde_json::from_value(json!({"phase": hostile})).expect("any phase reads");
            assert_eq!(
                matches!(s.phase, ApplicationBackupPhase::Unknown(_)),
                !["Deleting", "Pending"].contains(&hostile)
            );
            read_backup(&mut b, &s, now);
            assert_eq!(b.phase, BackupPhase::InProgress, "{:.40}", hostile);
            assert!(b.completed_ms.is_none());
            let message = b.message.unwrap_or_default();
            assert!(message.contains("unknown phase"), "{message:.80}");
            assert!(message.len() < 300, "{}", message.len());
        }
        // What an agent does report is taken.
        let mut b = BackupRecord {
            phase: BackupPhase::InProgress,
            ..BackupRecord::default()
        };
        let s = crate::crd::ApplicationBackupStatus {
            phase: ApplicationBackupPhase::PartialSuccess,
            ..Default::default()
        };
        read_backup(&mut b, &s, now);
        assert_eq!(b.phase, BackupPhase::PartialSuccess);
        assert_eq!(b.completed_ms, Some(1_800_000_000_000));
        // A status without a phase (none reported yet) changes neither the phase nor the message.
        let mut b = BackupRecord {
            phase: BackupPhase::InProgress,
            ..BackupRecord::default()
        };
        read_backup(&mut b, &crate::crd::ApplicationBackupStatus::default(), now);
        assert_eq!((b.phase, b.message), (BackupPhase::InProgress, None));
    }

    /// A cluster's list of volumes reaches the record bounded: at most `MAX_BACKUP_VOLUMES`
    /// volumes, short strings, no phase outside the known ones.
    #[test]
    fn a_clusters_volume_list_reaches_the_record_bounded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let long = "y".repeat(100_000);
        let volumes: Vec<serde_json::Value> = (0..5000)
            .map(|i| {
                json!({"namespace": long, "claim": format!("data-{i}"), "phase": if i == 0 { "Success" } else { "Dele\u{1b}ting" },
                       "files": 3, "bytes": 7, "message": long})
            })
            .collect();
        let s: crate::crd::ApplicationBackupStatus =
            serde_json::from_value(json!({"phase": "Success", "volumes": volumes})).expect("reads");
        let mut b = BackupRecord::default();
        read_backup(&mut b, &s, now);
        assert_eq!(b.volumes.len(), MAX_BACKUP_VOLUMES);
        assert_eq!(
            (
                b.volumes[0].phase.as_str(),
                b.volumes[0].files,
                b.volumes[0].bytes
            ),
            ("Success", 3, 7)
        );
        assert_eq!(b.volumes[1].phase, "Unknown");
        for v in &b.volumes {
            assert!(
                v.namespace.chars().count() <= 254
                    && v.message.as_deref().unwrap_or("").chars().count() <= 257
            );
        }
        let size = serde_json::to_vec(&b).expect("json").len();
        assert!(size < 250_000, "the record stays bounded: {size} bytes");
    }

    /// Of a restore's status too, the server takes only what an agent reports of its own work;
    /// a phase it does not know (read as `Unknown`) sets nothing.
    #[test]
    fn a_clusters_restore_phase_sets_only_what_an_agent_reports() {
        for (text, taken) in [
            ("InProgress", Some(RestorePhase::InProgress)),
            ("Success", Some(RestorePhase::Success)),
            ("PartialSuccess", Some(RestorePhase::PartialSuccess)),
            ("Failed", Some(RestorePhase::Failed)),
            ("Pending", None),
            ("Stalled", None),
            ("Restoring", None),
            ("", None),
        ] {
            let s: crate::crd::ApplicationRestoreStatus =
                serde_json::from_value(json!({"phase": text})).expect("any phase reads");
            assert_eq!(restore_phase_from_cluster(&s.phase), taken, "{text:?}");
        }
        for p in ApplicationBackupPhase::KNOWN {
            let taken = backup_phase_from_cluster(p);
            assert_eq!(
                taken.is_some(),
                !matches!(
                    p,
                    ApplicationBackupPhase::Pending | ApplicationBackupPhase::Deleting
                ),
                "{p}"
            );
            assert!(taken.is_none_or(|t| t.as_str() == p.as_str()), "{p}");
        }
    }

    #[tokio::test]
    async fn bodies_are_read_up_to_the_bound_only() {
        let body = |n: usize| kube::client::Body::from(vec![b'x'; n]);
        assert_eq!(read_bounded(body(1024), 1024).await.map(|b| b.len()), Ok(1024));
        let err = read_bounded(body(1025), 1024).await.expect_err("too large");
        assert!(err.contains("larger than 1024 bytes"), "{err}");
        assert_eq!(read_bounded(body(0), 0).await.map(|b| b.len()), Ok(0));
    }

    #[test]
    fn catalog_limits_default_to_a_bounded_read() {
        let l = CatalogLimits::default();
        assert_eq!(l.page_bytes, 8 << 20);
        assert!(l.pages > 0 && l.items > 0 && l.deadline > Duration::ZERO);
    }
}
