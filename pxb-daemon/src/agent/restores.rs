//! The restore controller: one `ApplicationRestore` → the volumes of the backup restored into
//! freshly provisioned volumes (through the [`VolumeDriver`](super::volumes::VolumeDriver)), then
//! the backup's objects restored into this cluster with the namespace and storage-class mappings,
//! each restored claim bound to its new volume.
//!
//! The backup is not trusted: its archive must match the manifest's hash, and only the objects of
//! the restored namespaces (`spec.namespaces`, else the backup's) and the cluster-scoped objects
//! they need are created; other objects are refused and listed among the failures, unless their
//! kind is in `spec.allowClusterKinds`. The volumes this controller provisions are created here,
//! not from the archive.
//!
//! Phases: `Pending` → `InProgress` (heartbeat) → `Success`, `PartialSuccess` (some objects or
//! volumes failed; the failures are listed) or `Failed`. A restore that a restart cut short is
//! run again once (objects that exist by then are kept); cut short twice, it is `Failed`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt as _;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use pxb_core::backup::resources::{check_resource_archive, restore_namespace_resources};
use pxb_core::backup::volume::{VolumeRestoreOptions, restore_volume};
use pxb_core::backup::{BackupId, BackupKind, Repository};
use pxb_core::resources::{ExistingResourcePolicy, RestoreOptions, RestoreOutcome};
use serde_json::json;
use tracing::Instrument as _;

use super::backups;
use super::controller::{with_heartbeat, with_nulls};
use super::locations::{self, ReconcileError};
use crate::crd::{
    ApplicationRestore, ApplicationRestorePhase, ApplicationRestoreSpec, ApplicationRestoreStatus,
    BackupLocation, ObjectFailure, RestoreCounts, VolumePhase, VolumeResult,
};
use crate::kube_cluster::KubeCluster;

/// What the restore controller shares between reconciles (the backup controller's context).
pub type Context = backups::Context;

/// At most this many failed objects are listed in the status.
pub(crate) const MAX_FAILURES: usize = 100;

/// Why a spec cannot be run, for humans; `None` when it can.
pub(crate) fn spec_problem(spec: &ApplicationRestoreSpec) -> Option<String> {
    if spec.location.trim().is_empty() {
        return Some("spec.location is empty".into());
    }
    if let Err(e) = BackupId::parse(&spec.backup_id) {
        return Some(format!("spec.backupId {:?}: {}", spec.backup_id, e.message()));
    }
    if let Some((from, to)) = spec
        .namespace_mapping
        .iter()
        .find(|(from, to)| !crate::names::is_dns_label(from) || !crate::names::is_dns_label(to))
    {
        return Some(format!(
            "spec.namespaceMapping {from:?} -> {to:?}: both must be valid namespace names"
        ));
    }
    if spec.existing_resource_policy != "Retain" && spec.existing_resource_policy != "Replace" {
        return Some(format!(
            "spec.existingResourcePolicy {:?} is not supported; use Retain or Replace",
            spec.existing_resource_policy
        ));
    }
    if let Some(ns) = spec.namespaces.iter().find(|n| !crate::names::is_dns_label(n)) {
        return Some(format!("spec.namespaces {ns:?} is not a valid namespace name"));
    }
    if let Some(kind) = spec
        .allow_cluster_kinds
        .iter()
        .find(|k| k.trim().is_empty() || k.contains(char::is_whitespace))
    {
        return Some(format!("spec.allowClusterKinds {kind:?} is not a kind"));
    }
    None
}

async fn patch_status(ctx: &Context, name: &str, status: serde_json::Value) -> Result<(), ReconcileError> {
    super::controller::merge_status::<ApplicationRestore>(
        &ctx.locations.client,
        &ctx.locations.config.namespace,
        name,
        status,
    )
    .await
}

/// One reconcile of a restore, inside its span (`restore`, `backup` (the id of the backup it
/// restores), `location`): every line it logs, its data operations included, names all three.
async fn reconcile(cached: Arc<ApplicationRestore>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!(
        "reconcile",
        restore = %cached.name_any(),
        backup = %super::controller::span_field(&cached.spec.backup_id),
        location = %super::controller::span_field(&cached.spec.location),
    );
    reconcile_restore(cached, ctx).instrument(span).await
}

async fn reconcile_restore(
    cached: Arc<ApplicationRestore>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let name = cached.name_any();
    let key = format!("{}/{name}", ctx.locations.config.namespace);
    let api: Api<ApplicationRestore> =
        Api::namespaced(ctx.locations.client.clone(), &ctx.locations.config.namespace);
    let restore = match api.get_opt(&name).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => return Err(ReconcileError::new(format!("reading restore {name}: {e}"))),
    };
    let status = restore.status.clone().unwrap_or_default();
    let is_running = ctx.restoring().contains(&key);
    // Only a final phase ends it: one this agent does not know (another version's) runs the
    // restore, as a status without a phase does.
    if status.phase.is_final() || is_running {
        return Ok(Action::await_change());
    }
    if let Some(problem) = spec_problem(&restore.spec) {
        let failed = json!({"phase": ApplicationRestorePhase::Failed, "message": problem,
                            "completionTimestamp": ctx.locations.now_rfc3339()});
        patch_status(&ctx, &name, failed).await?;
        return Ok(Action::await_change());
    }
    let mut message = None;
    if status.phase == ApplicationRestorePhase::InProgress {
        if status.attempts >= 2 {
            let failed = json!({"phase": ApplicationRestorePhase::Failed, "completionTimestamp": ctx.locations.now_rfc3339(),
                "message": "the agent restarted during this restore twice; giving up (objects restored so far remain)"});
            patch_status(&ctx, &name, failed).await?;
            return Ok(Action::await_change());
        }
        message = Some("resumed after an agent restart; objects restored before it are kept".to_owned());
    }
    ctx.restoring().insert(key.clone());
    let result = run(&restore, &ctx, status.attempts + 1, message).await;
    ctx.restoring().remove(&key);
    result?;
    Ok(Action::await_change())
}

async fn run(
    restore: &ApplicationRestore,
    ctx: &Context,
    attempts: u32,
    message: Option<String>,
) -> Result<(), ReconcileError> {
    let name = restore.name_any();
    let started = restore
        .status
        .as_ref()
        .and_then(|s| s.start_timestamp.clone())
        .unwrap_or_else(|| ctx.locations.now_rfc3339());
    patch_status(
        ctx,
        &name,
        json!({"phase": ApplicationRestorePhase::InProgress, "startTimestamp": started, "heartbeat": ctx.locations.now_rfc3339(),
               "attempts": attempts, "message": message.clone()}),
    )
    .await?;
    let metrics = &ctx.locations.metrics;
    let heartbeats = metrics.running("restore", &name);
    let began = ctx.locations.clock().now();
    let beat = || {
        let name = name.clone();
        let heartbeats = &heartbeats;
        async move {
            if patch_status(ctx, &name, json!({"heartbeat": ctx.locations.now_rfc3339()}))
                .await
                .is_ok()
            {
                heartbeats.beat();
            }
        }
    };
    let outcome = with_heartbeat(
        execute(&restore.spec, ctx),
        ctx.locations.config.heartbeat_interval,
        beat,
    )
    .await;
    drop(heartbeats);
    let mut done = outcome.unwrap_or_else(|message| ApplicationRestoreStatus {
        phase: ApplicationRestorePhase::Failed,
        message: Some(message),
        ..ApplicationRestoreStatus::default()
    });
    // Keep saying that it was resumed.
    done.message = match (done.message.take(), message) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    metrics.restore_finished(&done.phase, metrics.since(began));
    tracing::info!(restore = %name, phase = %done.phase, detail = ?done.message, "restore finished");
    let mut status = with_nulls(&done, &["message"]);
    status["completionTimestamp"] = ctx.locations.now_rfc3339().into();
    status["heartbeat"] = ctx.locations.now_rfc3339().into();
    status["startTimestamp"] = started.into();
    status["attempts"] = attempts.into();
    patch_status(ctx, &name, status).await
}

async fn execute(spec: &ApplicationRestoreSpec, ctx: &Context) -> Result<ApplicationRestoreStatus, String> {
    let lctx = &ctx.locations;
    let locations: Api<BackupLocation> = Api::namespaced(lctx.client.clone(), &lctx.config.namespace);
    let location = locations
        .get_opt(&spec.location)
        .await
        .map_err(|e| format!("reading location {}: {e}", spec.location))?
        .ok_or_else(|| format!("location {} does not exist", spec.location))?;
    let opened = locations::open(&location.spec, lctx).await?;
    let repo = lctx.repository(opened.store);
    let id = BackupId::parse(&spec.backup_id).map_err(|e| e.to_string())?;
    let manifest = repo.manifest(&id).await.map_err(|e| e.to_string())?;
    if manifest.kind != BackupKind::Resources {
        return Err(format!(
            "backup {id} holds volume data only; restore the application backup it belongs to"
        ));
    }

    if let Some(ns) = spec.namespaces.iter().find(|n| !manifest.namespaces.contains(n)) {
        return Err(format!(
            "spec.namespaces: namespace {ns} is not in backup {id} (it holds {})",
            manifest.namespaces.join(", ")
        ));
    }
    let restored = |ns: &String| spec.namespaces.is_empty() || spec.namespaces.contains(ns);
    // The archive must be the backup's before anything, volumes included, is created.
    check_resource_archive(&repo, &manifest)
        .await
        .map_err(|e| format!("{e}; nothing was restored"))?;

    // Volumes first: each claim is created already bound to a volume holding its data.
    let mut bindings = BTreeMap::new();
    let mut volumes = Vec::new();
    let pvs: Api<PersistentVolume> = Api::all(lctx.client.clone());
    for v in manifest.volumes.iter().filter(|v| restored(&v.namespace)) {
        let target_ns = spec
            .namespace_mapping
            .get(&v.namespace)
            .cloned()
            .unwrap_or_else(|| v.namespace.clone());
        let mut claim_spec = v.spec.clone().unwrap_or_else(|| json!({}));
        let mapped = claim_spec
            .get("storageClassName")
            .and_then(|s| s.as_str())
            .and_then(|sc| spec.storage_class_mapping.get(sc))
            .cloned();
        if let Some(mapped) = mapped {
            claim_spec["storageClassName"] = mapped.into();
        }
        let claim = json!({"metadata": {"name": v.claim, "namespace": target_ns}, "spec": claim_spec});
        // The names come from the backup: plain names only in the span.
        let span = tracing::info_span!(
            "volume_restore",
            namespace = %super::controller::span_field(&target_ns),
            claim = %super::controller::span_field(&v.claim),
        );
        let result = async {
            let r = restore_claim_volume(&repo, ctx, &pvs, &v.backup, target_ns.clone(), claim).await;
            match &r {
                Ok((_, stats)) => tracing::info!(id = %v.backup, files = stats.files, bytes = stats.bytes,
                                                 "volume restored"),
                Err(e) => tracing::warn!(id = %v.backup, error = %e, "volume restore failed"),
            }
            r
        }
        .instrument(span)
        .await;
        match result {
            Ok((volume_name, stats)) => {
                bindings.insert(format!("{target_ns}/{}", v.claim), volume_name);
                volumes.push(VolumeResult {
                    namespace: target_ns,
                    claim: v.claim.clone(),
                    phase: VolumePhase::Success,
                    files: stats.files,
                    bytes: stats.bytes,
                    message: None,
                });
            }
            Err(e) => volumes.push(VolumeResult {
                namespace: target_ns,
                claim: v.claim.clone(),
                phase: VolumePhase::Failed,
                message: Some(e),
                ..VolumeResult::default()
            }),
        }
    }

    let opts = RestoreOptions {
        namespace_mapping: spec.namespace_mapping.clone(),
        storage_class_mapping: spec.storage_class_mapping.clone(),
        existing: if spec.existing_resource_policy == "Replace" {
            ExistingResourcePolicy::Replace
        } else {
            ExistingResourcePolicy::Retain
        },
        volume_bindings: bindings,
        namespaces: spec.namespaces.clone(),
        allow_cluster_kinds: spec.allow_cluster_kinds.clone(),
        ..RestoreOptions::default()
    };
    let sink = KubeCluster::new(lctx.client.clone());
    let span = tracing::info_span!("resource_restore", namespaces = manifest.namespaces.len());
    let report = async {
        let r = restore_namespace_resources(&repo, &id, &sink, &opts).await;
        match &r {
            Ok(report) => tracing::info!(id = %id, objects = report.objects.len(), created = report.created,
                                         replaced = report.replaced, failed = report.failed,
                                         refused = report.refused, "resources restored"),
            Err(e) => tracing::warn!(id = %id, error = %e, "restoring the resources failed"),
        }
        r
    }
    .instrument(span)
    .await
    .map_err(|e| format!("restoring the objects: {e}"))?;
    // Refused objects (outside the restored namespaces, or cluster-scoped and not allowed) are
    // failures to the user: the backup held them and they were not restored.
    let failures: Vec<ObjectFailure> = report
        .objects
        .iter()
        .filter_map(|o| match &o.outcome {
            RestoreOutcome::Failed { reason } => Some((o, reason.clone())),
            RestoreOutcome::Refused { reason } => Some((o, format!("refused: {reason}"))),
            _ => None,
        })
        .take(MAX_FAILURES)
        .map(|(o, reason)| ObjectFailure {
            kind: o.object.kind.clone(),
            namespace: o.object.namespace.clone(),
            name: o.object.name.clone(),
            reason,
        })
        .collect();
    let failed_objects = report.failed + report.refused;
    let failed_volumes = volumes.iter().filter(|v| v.phase != VolumePhase::Success).count();
    let phase = if failed_objects == 0 && failed_volumes == 0 {
        ApplicationRestorePhase::Success
    } else if report.created + report.replaced > 0 {
        ApplicationRestorePhase::PartialSuccess
    } else {
        ApplicationRestorePhase::Failed
    };
    let mut problems = Vec::new();
    if report.failed > 0 {
        problems.push(format!("{} object(s) failed", report.failed));
    }
    if report.refused > 0 {
        problems.push(format!(
            "{} object(s) refused (outside the restored namespaces, or cluster-scoped kinds not in \
             spec.allowClusterKinds)",
            report.refused
        ));
    }
    if failed_volumes > 0 {
        problems.push(format!("{failed_volumes} volume(s) failed"));
    }
    Ok(ApplicationRestoreStatus {
        phase,
        message: (!problems.is_empty()).then(|| problems.join("; ")),
        counts: RestoreCounts {
            total: report.objects.len() as u64,
            created: report.created,
            replaced: report.replaced,
            skipped: report.retained,
            failed: failed_objects,
        },
        failures,
        volumes,
        ..ApplicationRestoreStatus::default()
    })
}

async fn restore_claim_volume(
    repo: &Repository,
    ctx: &Context,
    pvs: &Api<PersistentVolume>,
    backup: &BackupId,
    namespace: String,
    claim: serde_json::Value,
) -> Result<(Option<String>, pxb_core::backup::volume::RestoreStats), String> {
    // The names come from the backup and become directories: checked whatever the driver does.
    let name = claim
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    super::volumes::check_claim_names(&namespace, name).map_err(|e| e.to_string())?;
    let provisioned = ctx
        .driver
        .provision(&namespace, &claim)
        .await
        .map_err(|e| e.to_string())?;
    // The engine's restore future is not `Send` for every lifetime (it borrows across its
    // internal streams), so it runs on a blocking thread of its own.
    let (repo, backup, dir) = (repo.clone(), backup.clone(), provisioned.dir.clone());
    let handle = tokio::runtime::Handle::current();
    // Still in the restore's span on that thread.
    let span = tracing::Span::current();
    let stats = tokio::task::spawn_blocking(move || {
        handle.block_on(restore_volume(&repo, &backup, VolumeRestoreOptions::new(&dir)).instrument(span))
    })
    .await
    .map_err(|e| format!("restoring the data: {e}"))?
    .map_err(|e| format!("restoring the data: {e}"))?;
    if let Some(volume) = provisioned.volume {
        let pv: PersistentVolume =
            serde_json::from_value(volume).map_err(|e| format!("building the volume: {e}"))?;
        pvs.create(&PostParams::default(), &pv)
            .await
            .map_err(|e| format!("creating the volume: {e}"))?;
    }
    Ok((provisioned.volume_name, stats))
}

/// Runs the restore controller until the returned task is aborted.
pub fn spawn(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    let api: Api<ApplicationRestore> =
        Api::namespaced(ctx.locations.client.clone(), &ctx.locations.config.namespace);
    super::controller::spawn_controller("restore", api, reconcile, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ApplicationRestoreSpec {
        ApplicationRestoreSpec {
            location: "loc".into(),
            backup_id: "20261122T040013Z-152e3f84".into(),
            existing_resource_policy: "Retain".into(),
            ..ApplicationRestoreSpec::default()
        }
    }

    #[test]
    fn invalid_restore_specs_name_the_problem() {
        assert_eq!(spec_problem(&spec()), None);
        let subset = ApplicationRestoreSpec {
            namespaces: vec!["shop".into()],
            allow_cluster_kinds: vec!["ClusterRoleBinding".into()],
            ..spec()
        };
        assert_eq!(
            spec_problem(&subset),
            None,
            "a subset and allowed kinds are supported"
        );
        let mapping = |from: &str, to: &str| [(from.to_owned(), to.to_owned())].into_iter().collect();
        let cases: Vec<(ApplicationRestoreSpec, &str)> = vec![
            (
                ApplicationRestoreSpec {
                    location: String::new(),
                    ..spec()
                },
                "spec.location",
            ),
            (
                ApplicationRestoreSpec {
                    backup_id: "../etc".into(),
                    ..spec()
                },
                "spec.backupId",
            ),
            (
                ApplicationRestoreSpec {
                    namespace_mapping: mapping("shop", "Shop Copy"),
                    ..spec()
                },
                "valid namespace names",
            ),
            (
                ApplicationRestoreSpec {
                    existing_resource_policy: "Merge".into(),
                    ..spec()
                },
                "existingResourcePolicy",
            ),
            (
                ApplicationRestoreSpec {
                    namespaces: vec!["Shop".into()],
                    ..spec()
                },
                "spec.namespaces",
            ),
            (
                ApplicationRestoreSpec {
                    allow_cluster_kinds: vec![" ".into()],
                    ..spec()
                },
                "spec.allowClusterKinds",
            ),
        ];
        for (s, needle) in cases {
            let problem = spec_problem(&s).unwrap_or_default();
            assert!(problem.contains(needle), "{problem:?} should mention {needle}");
        }
    }
}
