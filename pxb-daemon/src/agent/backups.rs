//! The backup controller: one `ApplicationBackup` → one volume backup per persistent volume
//! claim of its namespaces (through the [`VolumeDriver`]), then one resource backup whose
//! manifest lists them and is the commit marker of the whole application backup.
//!
//! Phases: `Pending` → `InProgress` (heartbeat at least every 15 s, stage and progress) →
//! `Success`, `PartialSuccess` (some volumes failed, or objects were missing dependencies) or
//! `Failed`. An invalid spec is `Failed` with the reason and is not retried. A backup that a
//! restart cut short is run again once from the start (chunks already uploaded are reused);
//! cut short twice, it is `Failed` with the reason. Nothing stays `InProgress`.
//!
//! With `reclaimPolicy: Delete` the object carries the finalizer [`FINALIZER`]: deleting it
//! deletes the backup's data from the location first (its volume backups, then the resource
//! backup), and while the location cannot be reached the object stays `Deleting` with the reason
//! and the agent keeps retrying. The annotation [`FORCE_DELETE`]` = "true"` drops the object and
//! leaves the data.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};
use pxb_core::backup::resources::{ResourceBackupOptions, backup_namespace_resources};
use pxb_core::backup::volume::{VolumeBackupOptions, backup_volume};
use pxb_core::backup::{BackupStatus, Repository, VolumeRef};
use pxb_core::resources::{LabelSelector, ResourceSelector};
use serde_json::json;
use tracing::Instrument as _;

use super::controller::{with_heartbeat, with_nulls};
use super::locations::{self, ReconcileError};
use super::volumes::VolumeDriver;
use crate::crd::{
    ApplicationBackup, ApplicationBackupPhase, ApplicationBackupSpec, ApplicationBackupStatus,
    BackupLocation, Progress, Sizes, VolumePhase, VolumeResult,
};
use crate::kube_cluster::KubeCluster;

/// The kind key of KubeVirt virtual machines in resource-backup statistics.
pub(crate) const VIRTUAL_MACHINE_KIND: &str = "VirtualMachine.kubevirt.io";

/// What the backup controller shares between reconciles.
pub struct Context {
    /// The location controller's context (client, configuration, stores).
    pub locations: Arc<locations::Context>,
    /// Where volume data is.
    pub driver: Arc<dyn VolumeDriver>,
    running: Mutex<HashSet<String>>,
    restoring: Mutex<HashSet<String>>,
    live: Mutex<std::collections::BTreeMap<String, Arc<Mutex<Live>>>>,
}

/// Live progress of a running backup, as the read API shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Operation {
    /// `backup`.
    pub(crate) kind: &'static str,
    /// The `ApplicationBackup`'s name.
    pub(crate) name: String,
    /// What it is doing.
    pub(crate) stage: &'static str,
    /// Kubernetes objects done.
    pub(crate) objects: u64,
    /// Bytes of volume data read.
    pub(crate) bytes: u64,
    /// Seconds since it started.
    pub(crate) elapsed_seconds: u64,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context sharing the location controller's.
    pub fn new(locations: Arc<locations::Context>, driver: Arc<dyn VolumeDriver>) -> Arc<Self> {
        Arc::new(Self {
            locations,
            driver,
            running: Mutex::new(HashSet::new()),
            restoring: Mutex::new(HashSet::new()),
            live: Mutex::new(std::collections::BTreeMap::new()),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Operations running in this process, with their live progress.
    pub(crate) fn operations(&self) -> Vec<Operation> {
        let now = self.locations.clock().now();
        let mut ops: Vec<Operation> = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, live)| {
                let l = live.lock().unwrap_or_else(|e| e.into_inner());
                Operation {
                    kind: "backup",
                    name: name.clone(),
                    stage: l.stage,
                    objects: l.objects,
                    bytes: l.bytes,
                    elapsed_seconds: l.elapsed(now).as_secs(),
                }
            })
            .collect();
        ops.extend(self.restoring().iter().map(|name| Operation {
            kind: "restore",
            name: name.rsplit('/').next().unwrap_or(name).to_owned(),
            stage: "Restoring",
            objects: 0,
            bytes: 0,
            elapsed_seconds: 0,
        }));
        ops
    }

    /// Restores running in this process.
    pub(crate) fn restoring(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.restoring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a spec cannot be run, for humans; `None` when it can.
pub(crate) fn spec_problem(spec: &ApplicationBackupSpec) -> Option<String> {
    if spec.location.trim().is_empty() {
        return Some("spec.location is empty".into());
    }
    if spec.namespaces.is_empty() {
        return Some("spec.namespaces is empty: name at least one namespace".into());
    }
    if let Some(bad) = spec.namespaces.iter().find(|n| !crate::names::is_dns_label(n)) {
        return Some(format!("spec.namespaces: {bad:?} is not a valid namespace name"));
    }
    if let Some(sel) = spec.label_selector.as_deref().filter(|s| !s.trim().is_empty())
        && let Err(e) = LabelSelector::parse(sel)
    {
        return Some(format!("spec.labelSelector {sel:?}: {}", e.message()));
    }
    if spec.reclaim_policy != "Delete" && spec.reclaim_policy != "Retain" {
        return Some(format!(
            "spec.reclaimPolicy {:?} is not supported; use Delete or Retain",
            spec.reclaim_policy
        ));
    }
    None
}

async fn patch_status(ctx: &Context, name: &str, status: serde_json::Value) -> Result<(), ReconcileError> {
    super::controller::merge_status::<ApplicationBackup>(
        &ctx.locations.client,
        &ctx.locations.config.namespace,
        name,
        status,
    )
    .await
}

/// The finalizer that deletes a backup's data before its object goes.
pub const FINALIZER: &str = "pxb.io/backup-data";
pub use pxb_core::api::agent::FORCE_DELETE;

async fn set_finalizer(
    api: &Api<ApplicationBackup>,
    backup: &ApplicationBackup,
    present: bool,
) -> Result<(), ReconcileError> {
    let mut finalizers: Vec<String> = backup.finalizers().to_vec();
    let has = finalizers.iter().any(|f| f == FINALIZER);
    if has == present {
        return Ok(());
    }
    if present {
        finalizers.push(FINALIZER.into());
    } else {
        finalizers.retain(|f| f != FINALIZER);
    }
    // The resourceVersion makes this a compare-and-swap: a concurrent change is a conflict, retried.
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": backup.resource_version()}});
    api.patch(&backup.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|e| {
            ReconcileError::new(format!(
                "updating the finalizers of backup {}: {e}",
                backup.name_any()
            ))
        })
}

/// Deletes the data of a deleted backup; the error is the reason it cannot, for the status.
async fn delete_data(backup: &ApplicationBackup, ctx: &Context) -> Result<(), String> {
    let Some(id) = backup.status.as_ref().and_then(|s| s.backup_id.clone()) else {
        return Ok(()); // Nothing was committed.
    };
    let lctx = &ctx.locations;
    let locations: Api<BackupLocation> = Api::namespaced(lctx.client.clone(), &lctx.config.namespace);
    let location = locations
        .get_opt(&backup.spec.location)
        .await
        .map_err(|e| format!("reading location {}: {e}", backup.spec.location))?
        .ok_or_else(|| {
            format!(
                "location {} does not exist, so the data cannot be deleted; annotate with {FORCE_DELETE}=true \
                 to drop this object and leave the data",
                backup.spec.location
            )
        })?;
    let opened = locations::open(&location.spec, lctx).await?;
    let repo = ctx.locations.repository(opened.store);
    let id = pxb_core::backup::BackupId::parse(&id).map_err(|e| e.to_string())?;
    let manifest = match repo.manifest(&id).await {
        Ok(m) => m,
        Err(pxb_core::Error::NotFound { .. }) => return Ok(()), // Already deleted.
        Err(e) => return Err(format!("reading backup {id}: {e}")),
    };
    // Volumes first: if this is interrupted, the resource backup still lists what is left.
    for v in &manifest.volumes {
        match repo.delete(&v.backup).await {
            Ok(_) | Err(pxb_core::Error::NotFound { .. }) => {}
            Err(e) => return Err(format!("deleting volume backup {}: {e}", v.backup)),
        }
    }
    match repo.delete(&id).await {
        Ok(_) | Err(pxb_core::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(format!("deleting backup {id}: {e}")),
    }
}

async fn finalize(
    api: &Api<ApplicationBackup>,
    backup: &ApplicationBackup,
    ctx: &Context,
) -> Result<Action, ReconcileError> {
    let name = backup.name_any();
    if !backup.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let forced = backup
        .annotations()
        .get(FORCE_DELETE)
        .is_some_and(|v| v == "true");
    if ctx.running().contains(&name) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    if !forced && backup.spec.reclaim_policy == "Delete" {
        patch_status(
            ctx,
            &name,
            json!({"phase": ApplicationBackupPhase::Deleting, "stage": "Deleting",
                   "heartbeat": ctx.locations.now_rfc3339()}),
        )
        .await?;
        if let Err(reason) = delete_data(backup, ctx).await {
            tracing::warn!(backup = %name, %reason, "deleting the backup's data failed; retrying");
            patch_status(
                ctx,
                &name,
                json!({"message": format!("deleting the data: {reason}")}),
            )
            .await?;
            return Ok(Action::requeue(ctx.locations.config.delete_retry));
        }
        tracing::info!(backup = %name, "backup data deleted");
    } else if forced {
        tracing::info!(backup = %name, "force-deleted; the backup's data stays in the location");
    }
    set_finalizer(api, backup, false).await?;
    Ok(Action::await_change())
}

/// One reconcile of a backup, inside its span (`backup`, `location`): every line it logs, its
/// data operations and the deletion of its data included, names both.
async fn reconcile(cached: Arc<ApplicationBackup>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!(
        "reconcile",
        backup = %cached.name_any(),
        location = %super::controller::span_field(&cached.spec.location),
    );
    reconcile_backup(cached, ctx).instrument(span).await
}

async fn reconcile_backup(
    cached: Arc<ApplicationBackup>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let name = cached.name_any();
    let api: Api<ApplicationBackup> =
        Api::namespaced(ctx.locations.client.clone(), &ctx.locations.config.namespace);
    let backup = match api.get_opt(&name).await {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => return Err(ReconcileError::new(format!("reading backup {name}: {e}"))),
    };
    if backup.meta().deletion_timestamp.is_some() {
        return finalize(&api, &backup, &ctx).await;
    }
    set_finalizer(&api, &backup, backup.spec.reclaim_policy == "Delete").await?;
    let status = backup.status.clone().unwrap_or_default();
    // Only a final phase ends it: one this agent does not know (another version's) runs the
    // backup, as a status without a phase does.
    if status.phase.is_final() || ctx.running().contains(&name) {
        return Ok(Action::await_change());
    }
    let generation = backup.meta().generation.unwrap_or(0);
    if let Some(problem) = spec_problem(&backup.spec) {
        let failed = ApplicationBackupStatus {
            phase: ApplicationBackupPhase::Failed,
            message: Some(problem),
            completion_timestamp: Some(ctx.locations.now_rfc3339()),
            observed_generation: generation,
            ..ApplicationBackupStatus::default()
        };
        patch_status(&ctx, &name, with_nulls(&failed, &["stage", "heartbeat"])).await?;
        return Ok(Action::await_change());
    }
    let mut message = None;
    if status.phase == ApplicationBackupPhase::InProgress {
        // Started by an agent that is gone.
        if status.attempts >= 2 {
            let failed = json!({"phase": ApplicationBackupPhase::Failed, "stage": null, "completionTimestamp": ctx.locations.now_rfc3339(),
                "message": "the agent restarted during this backup twice; giving up (nothing was committed)"});
            patch_status(&ctx, &name, failed).await?;
            return Ok(Action::await_change());
        }
        message = Some("resumed from the start after an agent restart".to_owned());
    }
    ctx.running().insert(name.clone());
    let result = run(&backup, &ctx, status.attempts + 1, message).await;
    ctx.running().remove(&name);
    result?;
    Ok(Action::await_change())
}

#[derive(Debug, Default, Clone)]
struct Live {
    stage: &'static str,
    objects: u64,
    bytes: u64,
    /// When it started, on the agent's clock.
    started: Option<SystemTime>,
}

impl Live {
    /// How long it has run at `now` (zero if the clock went back).
    fn elapsed(&self, now: SystemTime) -> Duration {
        self.started
            .and_then(|s| now.duration_since(s).ok())
            .unwrap_or_default()
    }
}

async fn run(
    backup: &ApplicationBackup,
    ctx: &Context,
    attempts: u32,
    message: Option<String>,
) -> Result<(), ReconcileError> {
    let name = backup.name_any();
    let spec = &backup.spec;
    let started = backup
        .status
        .as_ref()
        .and_then(|s| s.start_timestamp.clone())
        .unwrap_or_else(|| ctx.locations.now_rfc3339());
    patch_status(
        ctx,
        &name,
        json!({"phase": ApplicationBackupPhase::InProgress, "stage": "Volumes", "startTimestamp": started, "heartbeat": ctx.locations.now_rfc3339(),
               "attempts": attempts, "message": message.clone(),
               "observedGeneration": backup.meta().generation.unwrap_or(0)}),
    )
    .await?;
    let metrics = &ctx.locations.metrics;
    let heartbeats = metrics.running("backup", &name);
    let began = ctx.locations.clock().now();
    let live = Arc::new(Mutex::new(Live {
        stage: "Volumes",
        started: Some(began),
        ..Live::default()
    }));
    ctx.live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone(), live.clone());
    // The server keeps the id of its record in an annotation when the object's name had to be
    // made safe for the API server; the backup's tag names the record.
    let record = record_name(backup);
    let work = execute(spec, ctx, &record, live.clone());
    let beat = || {
        let name = name.clone();
        let heartbeats = &heartbeats;
        let l = live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let rate = if l.started.is_some() {
            (l.bytes as f64 / l.elapsed(ctx.locations.clock().now()).as_secs_f64().max(0.001)) as u64
        } else {
            0
        };
        let patch = json!({"heartbeat": ctx.locations.now_rfc3339(), "stage": l.stage,
                           "progress": Progress { objects: l.objects, bytes: l.bytes, bytes_per_second: rate }});
        async move {
            if patch_status(ctx, &name, patch).await.is_ok() {
                heartbeats.beat();
            }
        }
    };
    let outcome = with_heartbeat(work, ctx.locations.config.heartbeat_interval, beat).await;
    drop(heartbeats);
    ctx.live.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
    let mut done = match outcome {
        Ok((done, transfer)) => {
            metrics.backup_bytes(transfer.read, transfer.stored);
            done
        }
        Err(message) => ApplicationBackupStatus {
            phase: ApplicationBackupPhase::Failed,
            message: Some(message),
            ..ApplicationBackupStatus::default()
        },
    };
    // Keep saying that it was resumed.
    done.message = match (done.message.take(), message) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    metrics.backup_finished(&done.phase, metrics.since(began));
    tracing::info!(backup = %name, phase = %done.phase, detail = ?done.message, "backup finished");
    let mut status = with_nulls(&done, &["stage", "message"]);
    status["completionTimestamp"] = ctx.locations.now_rfc3339().into();
    status["heartbeat"] = ctx.locations.now_rfc3339().into();
    status["startTimestamp"] = started.into();
    status["attempts"] = attempts.into();
    status["observedGeneration"] = backup.meta().generation.unwrap_or(0).into();
    patch_status(ctx, &name, status).await
}

/// The name of the server's record an `ApplicationBackup` mirrors: its annotation when the
/// server manages it, else its own name.
fn record_name(backup: &ApplicationBackup) -> String {
    let managed = backup
        .labels()
        .get(pxb_core::api::agent::MANAGED_BY)
        .map(String::as_str)
        == Some(pxb_core::api::agent::MANAGER);
    match backup.annotations().get(crate::names::ORIGINAL_UID) {
        Some(original) if managed => original.clone(),
        _ => backup.name_any(),
    }
}

/// The bytes a backup moved, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Transfer {
    /// Read from volumes and the API.
    read: u64,
    /// Uploaded to the location.
    stored: u64,
}

/// Runs the backup, tagged with `record` (the server's record name); the error is the reason it
/// failed.
async fn execute(
    spec: &ApplicationBackupSpec,
    ctx: &Context,
    record: &str,
    live: Arc<Mutex<Live>>,
) -> Result<(ApplicationBackupStatus, Transfer), String> {
    let lctx = &ctx.locations;
    let locations: Api<BackupLocation> = Api::namespaced(lctx.client.clone(), &lctx.config.namespace);
    let location = locations
        .get_opt(&spec.location)
        .await
        .map_err(|e| format!("reading location {}: {e}", spec.location))?
        .ok_or_else(|| format!("location {} does not exist", spec.location))?;
    let opened = locations::open(&location.spec, lctx).await?;
    let repo = ctx.locations.repository(opened.store);
    repo.open_or_init().await.map_err(|e| e.to_string())?;
    let cluster = lctx.config.cluster_name.clone();
    let selector = spec.label_selector.clone().filter(|s| !s.trim().is_empty());

    let mut volumes = Vec::new();
    let mut refs = Vec::new();
    let mut sizes = Sizes::default();
    let mut read = 0;
    if spec.include_volumes {
        for ns in &spec.namespaces {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(lctx.client.clone(), ns);
            let mut lp = ListParams::default();
            if let Some(sel) = &selector {
                lp = lp.labels(sel);
            }
            let list = claims
                .list(&lp)
                .await
                .map_err(|e| format!("listing the claims of namespace {ns}: {e}"))?;
            for pvc in list.items {
                let claim = pvc.name_any();
                let claim_spec = pvc.spec.as_ref().and_then(|s| serde_json::to_value(s).ok());
                let result = backup_claim(&repo, ctx, ns, &claim, cluster.clone(), live.clone()).await;
                match result {
                    Ok((manifest, files, bytes)) => {
                        sizes.volume_bytes += bytes;
                        read += manifest.stats.bytes_read;
                        sizes.stored_bytes += manifest.stats.stored_bytes;
                        refs.push(VolumeRef {
                            namespace: ns.clone(),
                            claim: claim.clone(),
                            backup: manifest.id.clone(),
                            spec: claim_spec,
                        });
                        volumes.push(VolumeResult {
                            namespace: ns.clone(),
                            claim,
                            phase: VolumePhase::Success,
                            files,
                            bytes,
                            message: None,
                        });
                    }
                    Err(e) => volumes.push(VolumeResult {
                        namespace: ns.clone(),
                        claim,
                        phase: VolumePhase::Failed,
                        message: Some(e),
                        ..VolumeResult::default()
                    }),
                }
            }
        }
    }

    live.lock().unwrap_or_else(|e| e.into_inner()).stage = "Resources";
    let source = KubeCluster::new(lctx.client.clone());
    let opts = ResourceBackupOptions {
        selector: ResourceSelector {
            namespaces: spec.namespaces.clone(),
            label_selector: selector,
            include_kinds: spec.include_kinds.clone(),
            exclude_kinds: spec.exclude_kinds.clone(),
        },
        cluster,
        tag: Some(format!("app/{record}")),
        volumes: refs.clone(),
    };
    let span = tracing::info_span!("resource_backup", namespaces = spec.namespaces.len());
    let resources = async {
        let r = backup_namespace_resources(&repo, &source, &opts).await;
        match &r {
            Ok((manifest, stats)) => tracing::info!(id = %manifest.id, objects = stats.objects,
                                                    bytes = stats.raw_bytes, "resources backed up"),
            Err(e) => tracing::warn!(error = %e, "backing up the resources failed"),
        }
        r
    };
    let (manifest, stats) = match resources.instrument(span).await {
        Ok(r) => r,
        Err(e) => {
            // The volume backups are not referenced by anything: remove them.
            for r in &refs {
                let _ = repo.delete(&r.backup).await;
            }
            return Err(format!("backing up the resources: {e}"));
        }
    };
    live.lock().unwrap_or_else(|e| e.into_inner()).objects = stats.objects;
    sizes.resource_bytes = stats.raw_bytes;
    sizes.stored_bytes += manifest.stats.stored_bytes;
    let failed_volumes = volumes.iter().filter(|v| v.phase != VolumePhase::Success).count();
    let partial = failed_volumes > 0 || manifest.status == BackupStatus::PartiallyFailed;
    let mut problems = Vec::new();
    if failed_volumes > 0 {
        problems.push(format!("{failed_volumes} volume(s) failed"));
    }
    if manifest.status == BackupStatus::PartiallyFailed {
        problems.push(format!(
            "{} warning(s): {}",
            manifest.warnings.len(),
            manifest.warnings.join("; ")
        ));
    }
    let transfer = Transfer {
        read: read + stats.raw_bytes,
        stored: sizes.stored_bytes,
    };
    let status = ApplicationBackupStatus {
        phase: if partial {
            ApplicationBackupPhase::PartialSuccess
        } else {
            ApplicationBackupPhase::Success
        },
        message: (!problems.is_empty()).then(|| problems.join("; ")),
        progress: Progress {
            objects: stats.objects,
            bytes: sizes.volume_bytes,
            bytes_per_second: 0,
        },
        volumes,
        backup_id: Some(manifest.id.to_string()),
        virtual_machines: stats.per_kind.get(VIRTUAL_MACHINE_KIND).copied().unwrap_or(0),
        sizes,
        ..ApplicationBackupStatus::default()
    };
    Ok((status, transfer))
}

/// Backs up the data of claim `namespace/claim` in its span (`volume_backup`, with `namespace`
/// and `claim` as plain names), which says how it ended; returns the manifest, files and bytes.
async fn backup_claim(
    repo: &Repository,
    ctx: &Context,
    namespace: &str,
    claim: &str,
    cluster: Option<String>,
    live: Arc<Mutex<Live>>,
) -> Result<(pxb_core::backup::Manifest, u64, u64), String> {
    let span = tracing::info_span!(
        "volume_backup",
        namespace = %super::controller::span_field(namespace),
        claim = %super::controller::span_field(claim),
    );
    async {
        let r = backup_claim_data(repo, ctx, namespace, claim, cluster, live).await;
        match &r {
            Ok((manifest, files, bytes)) => {
                tracing::info!(id = %manifest.id, files, bytes, "volume backed up")
            }
            Err(e) => tracing::warn!(error = %e, "volume backup failed"),
        }
        r
    }
    .instrument(span)
    .await
}

async fn backup_claim_data(
    repo: &Repository,
    ctx: &Context,
    namespace: &str,
    claim: &str,
    cluster: Option<String>,
    live: Arc<Mutex<Live>>,
) -> Result<(pxb_core::backup::Manifest, u64, u64), String> {
    let dir = ctx
        .driver
        .source(namespace, claim)
        .await
        .map_err(|e| e.to_string())?;
    let mut opts = VolumeBackupOptions::new(dir);
    opts.tag = Some(format!("pvc/{namespace}/{claim}"));
    opts.cluster = cluster;
    opts.namespaces = vec![namespace.to_owned()];
    let base = live.lock().unwrap_or_else(|e| e.into_inner()).bytes;
    opts.progress = Some(Arc::new(move |p: &pxb_core::backup::volume::Progress| {
        live.lock().unwrap_or_else(|e| e.into_inner()).bytes = base + p.bytes_done;
    }));
    let manifest = backup_volume(repo, opts)
        .await
        .map_err(|e| format!("backing up claim {namespace}/{claim}: {e}"))?;
    let (files, bytes) = (manifest.stats.files, manifest.stats.bytes);
    Ok((manifest, files, bytes))
}

/// Runs the backup controller until the returned task is aborted.
pub fn spawn(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    let api: Api<ApplicationBackup> =
        Api::namespaced(ctx.locations.client.clone(), &ctx.locations.config.namespace);
    super::controller::spawn_controller("backup", api, reconcile, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ApplicationBackupSpec {
        ApplicationBackupSpec {
            location: "loc".into(),
            namespaces: vec!["shop".into()],
            include_volumes: true,
            reclaim_policy: "Delete".into(),
            ..ApplicationBackupSpec::default()
        }
    }

    #[test]
    fn invalid_backup_specs_name_the_problem() {
        assert_eq!(spec_problem(&spec()), None);
        let cases: Vec<(ApplicationBackupSpec, &str)> = vec![
            (
                ApplicationBackupSpec {
                    location: " ".into(),
                    ..spec()
                },
                "spec.location",
            ),
            (
                ApplicationBackupSpec {
                    namespaces: vec![],
                    ..spec()
                },
                "spec.namespaces is empty",
            ),
            (
                ApplicationBackupSpec {
                    namespaces: vec!["Shop_1".into()],
                    ..spec()
                },
                "not a valid namespace",
            ),
            (
                ApplicationBackupSpec {
                    label_selector: Some("app in (a".into()),
                    ..spec()
                },
                "spec.labelSelector",
            ),
            (
                ApplicationBackupSpec {
                    reclaim_policy: "Keep".into(),
                    ..spec()
                },
                "reclaimPolicy",
            ),
        ];
        for (s, needle) in cases {
            let problem = spec_problem(&s).unwrap_or_default();
            assert!(problem.contains(needle), "{problem:?} should mention {needle}");
        }
    }
}
