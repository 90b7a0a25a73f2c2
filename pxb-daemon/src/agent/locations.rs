//! The location controller: one `BackupLocation` → one object store, validated on request
//! (`spec.validateRequest` ≠ `status.observedValidateRequest`), when its spec changes, and every
//! `validate_interval`; the result goes to `status.validation`.
//!
//! Sync (`spec.syncRequest`, and once when `spec.sync` is set and the location is first seen)
//! reads every backup's summary from listing metadata into this agent's in-memory catalog
//! ([`Context::catalog`]); nothing is written to Kubernetes per backup. Verify
//! (`spec.verifyRequest`, and every `verify_interval`) checks that every object each backup
//! references exists, and reports the damaged backups. Both write a heartbeat while they run.
//!
//! Each location is opened through the agent's [`LocationOpener`] (the seam in
//! [`opener`](super::opener)).
//!
//! A location that cannot even be built (unknown provider, missing container, missing Secret) is
//! `Invalid` at the `configure` step with the reason, and is looked at again only when it changes
//! or the interval passes: no crash loop, no hot retry loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource as _, ResourceExt as _};
use pxb_azure::STORAGE_SCOPE;
use pxb_core::backup::verify::{VerifyReport, VerifyStatus as Verdict, verify};
use pxb_core::backup::{BackupId, PackSeen, Repository, Summary, SyncState, packs};
use pxb_core::clock::{parse_rfc3339, rfc3339};
use pxb_core::{CheckOptions, Clock, ObjectStore, SystemClock, check_location};
use serde_json::json;
use tracing::Instrument as _;

use super::AgentConfig;
pub(crate) use super::controller::ReconcileError;
use super::controller::{with_heartbeat, with_nulls};
use super::opener::{AzureFileOpener, LocationOpener, OpenedLocation};
use crate::crd::{
    BackupLocation, BackupLocationSpec, LocationValidationPhase, RunPhase, SyncStatus, ValidationStatus,
    VerifyStatus,
};

/// What the location controller shares between reconciles.
pub struct Context {
    /// The cluster's API.
    pub client: kube::Client,
    /// The agent's settings.
    pub config: AgentConfig,
    clock: Arc<dyn Clock>,
    opener: Arc<dyn LocationOpener>,
    /// The metrics that outlive a scrape.
    pub(crate) metrics: Arc<super::metrics::AgentMetrics>,
    validations: AtomicU64,
    catalogs: Mutex<HashMap<String, Catalog>>,
    running: Mutex<HashSet<(String, &'static str)>>,
}

/// What the agent knows about one location's backups.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Every backup found by the last sync.
    pub backups: BTreeMap<BackupId, Summary>,
    /// The pack generation of each day the last sync read (so the next one reads only changes).
    pub packs: BTreeMap<String, PackSeen>,
    /// When the last sync finished.
    pub synced_at: Option<SystemTime>,
    /// The last verify's findings for the backups that are damaged.
    pub damaged: BTreeMap<BackupId, VerifyReport>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("opener", &self.opener)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `client` and `config`, on the system clock.
    pub fn new(client: kube::Client, config: AgentConfig) -> Arc<Self> {
        Self::with_clock(client, config, Arc::new(SystemClock))
    }

    /// A context for `client` and `config` that reads the time from `clock`: heartbeats,
    /// timestamps and ages in statuses, when a location is due again, backup ids.
    pub fn with_clock(client: kube::Client, config: AgentConfig, clock: Arc<dyn Clock>) -> Arc<Self> {
        let opener = Arc::new(AzureFileOpener::new(client.clone(), config.clone()));
        Self::with_seams(client, config, clock, opener)
    }

    /// A context for `client` and `config` on `clock`, opening locations with `opener`.
    pub(crate) fn with_seams(
        client: kube::Client,
        config: AgentConfig,
        clock: Arc<dyn Clock>,
        opener: Arc<dyn LocationOpener>,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            config,
            metrics: super::metrics::AgentMetrics::new(clock.clone()),
            clock,
            opener,
            validations: AtomicU64::new(0),
            catalogs: Mutex::new(HashMap::new()),
            running: Mutex::new(HashSet::new()),
        })
    }

    /// The catalog of `location` (a `BackupLocation` name), if it was synced.
    pub fn catalog(&self, location: &str) -> Option<Catalog> {
        self.catalogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(location)
            .cloned()
    }

    /// The locations this agent has synced, by name.
    pub(crate) fn synced_locations(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .catalogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, c)| c.synced_at.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// The clock the agent reads the time from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time as Kubernetes writes it (`2026-01-01T10:10:00Z`), from the clock.
    pub(crate) fn now_rfc3339(&self) -> String {
        rfc3339(self.clock.now())
    }

    /// The repository in `store`, on the agent's clock.
    pub(crate) fn repository(&self, store: Arc<dyn ObjectStore>) -> Repository {
        Repository::new(store).with_clock(self.clock.clone())
    }

    fn update_catalog(&self, location: &str, f: impl FnOnce(&mut Catalog)) {
        let mut c = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        f(c.entry(location.to_owned()).or_default());
    }

    /// Marks `op` on `location` as running in this process; false if it already is.
    fn start(&self, location: &str, op: &'static str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((location.to_owned(), op))
    }

    fn finish(&self, location: &str, op: &'static str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(location.to_owned(), op));
    }

    fn is_running(&self, location: &str, op: &'static str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(location.to_owned(), op))
    }

    /// Validations run so far (each one talks to the location).
    pub fn validations(&self) -> u64 {
        self.validations.load(Ordering::Relaxed)
    }
}

/// Opens the store a `BackupLocation` describes, with the agent's [`LocationOpener`]. The error
/// is the reason, for humans.
pub(crate) async fn open(spec: &BackupLocationSpec, ctx: &Context) -> Result<OpenedLocation, String> {
    ctx.opener.open(spec).await
}

/// Validates a location: builds it, then runs the location check (authenticate, list, write,
/// read back, delete), each step with the configured deadline.
pub(crate) async fn validate(spec: &BackupLocationSpec, ctx: &Context) -> ValidationStatus {
    ctx.validations.fetch_add(1, Ordering::Relaxed);
    let invalid = |step: &str, reason: String| ValidationStatus {
        phase: LocationValidationPhase::Invalid,
        failed_step: Some(step.into()),
        reason: Some(reason),
        last_checked: Some(ctx.now_rfc3339()),
    };
    let loc = match open(spec, ctx).await {
        Ok(l) => l,
        Err(reason) => return invalid("configure", reason),
    };
    let opts = CheckOptions {
        step_timeout: ctx.config.step_timeout,
        scopes: vec![STORAGE_SCOPE.into()],
    };
    let report = check_location(&loc.display, loc.store.as_ref(), loc.token.as_deref(), &opts).await;
    match report.first_failure() {
        None if report.passed => ValidationStatus {
            phase: LocationValidationPhase::Valid,
            failed_step: None,
            reason: None,
            last_checked: Some(ctx.now_rfc3339()),
        },
        None => invalid("check", "the check did not pass".into()),
        Some(step) => invalid(step.step.name(), step.detail.clone()),
    }
}

async fn patch_status(ctx: &Context, name: &str, status: serde_json::Value) -> Result<(), ReconcileError> {
    super::controller::merge_status::<BackupLocation>(&ctx.client, &ctx.config.namespace, name, status).await
}

fn due_after(last: Option<&str>, interval: Duration, now: SystemTime) -> Option<Duration> {
    let next = last.and_then(parse_rfc3339)? + interval;
    next.duration_since(now).ok().filter(|d| !d.is_zero())
}

/// One reconcile of a location, inside its span (`location`): every line it logs, its checks,
/// syncs and verifies included, names the location.
async fn reconcile(cached: Arc<BackupLocation>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let span = tracing::info_span!("reconcile", location = %cached.name_any());
    reconcile_location(cached, ctx).instrument(span).await
}

async fn reconcile_location(
    cached: Arc<BackupLocation>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let name = cached.name_any();
    // The controller's cache can lag behind the status this agent just wrote; decide on the
    // object as the API server has it now, so a request is never handled twice.
    let api: Api<BackupLocation> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let loc = match api.get_opt(&name).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            ctx.metrics.location_deleted(&name);
            return Ok(Action::await_change());
        }
        Err(e) => return Err(ReconcileError(format!("reading location {name}: {e}"))),
    };
    let status = loc.status.clone().unwrap_or_default();
    match &status.validation {
        Some(v) => ctx
            .metrics
            .location_validated(&name, &v.phase, v.last_checked.as_deref()),
        None => ctx
            .metrics
            .location_validated(&name, &LocationValidationPhase::Pending, None),
    }
    let generation = loc.meta().generation.unwrap_or(0);
    let now = ctx.clock.now();
    let mut next = ctx.config.validate_interval;

    // Validation.
    let wait = due_after(
        status.validation.as_ref().and_then(|v| v.last_checked.as_deref()),
        ctx.config.validate_interval,
        now,
    );
    let mut valid = status
        .validation
        .as_ref()
        .is_some_and(|v| v.phase == LocationValidationPhase::Valid);
    if loc.spec.validate_request != status.observed_validate_request
        || status.observed_connection.as_deref() != Some(loc.spec.connection_fingerprint().as_str())
        || wait.is_none()
    {
        let validation = validate(&loc.spec, &ctx).await;
        tracing::info!(location = %name, phase = %validation.phase,
                       step = ?validation.failed_step, reason = ?validation.reason, "location validated");
        valid = validation.phase == LocationValidationPhase::Valid;
        let written = patch_status(
            &ctx,
            &name,
            json!({
                "validation": with_nulls(&validation, &["failedStep", "reason"]),
                "observedValidateRequest": loc.spec.validate_request,
                "observedGeneration": generation,
                "observedConnection": loc.spec.connection_fingerprint(),
            }),
        )
        .await;
        // What the status says once it is written (a failed write is retried, validating again).
        if written.is_ok() {
            ctx.metrics
                .location_validated(&name, &validation.phase, validation.last_checked.as_deref());
        }
        written?;
    } else if let Some(w) = wait {
        next = next.min(w);
    }

    // Sync: on request, once when `sync` is set, again when one was cut short (a restart), and
    // when this agent has no catalog for a location synced before (the catalog lives in memory).
    let sync_cut_short = status
        .sync
        .as_ref()
        .is_some_and(|s| s.phase == RunPhase::InProgress && !ctx.is_running(&name, "sync"));
    let catalog_lost = status
        .sync
        .as_ref()
        .is_some_and(|s| s.phase == RunPhase::Completed)
        && ctx.catalog(&name).is_none();
    if loc.spec.sync_request != status.observed_sync_request
        || (loc.spec.sync && status.sync.is_none())
        || sync_cut_short
        || (valid && catalog_lost)
    {
        run_sync(&loc, &ctx, valid).await?;
    }

    // Verify: on request and every `verify_interval`.
    let verify_wait = due_after(
        status.verify.as_ref().and_then(|v| v.completed.as_deref()),
        ctx.config.verify_interval,
        now,
    );
    let verify_cut_short = status
        .verify
        .as_ref()
        .is_some_and(|v| v.phase == RunPhase::InProgress && !ctx.is_running(&name, "verify"));
    if loc.spec.verify_request != status.observed_verify_request
        || verify_cut_short
        || (valid && status.verify.is_some() && verify_wait.is_none())
    {
        run_verify(&loc, &ctx, valid).await?;
    } else if let Some(w) = verify_wait {
        next = next.min(w);
    }
    Ok(Action::requeue(next.max(Duration::from_secs(1))))
}

async fn run_sync(loc: &BackupLocation, ctx: &Context, valid: bool) -> Result<(), ReconcileError> {
    let name = loc.name_any();
    let started = ctx.now_rfc3339();
    let request = loc.spec.sync_request;
    if !valid {
        let failed = SyncStatus {
            phase: RunPhase::Failed,
            request,
            started: Some(started),
            message: Some("the location is not valid; see status.validation".into()),
            ..SyncStatus::default()
        };
        return patch_status(
            ctx,
            &name,
            json!({"sync": with_nulls(&failed, &["heartbeat", "marker"]), "observedSyncRequest": request}),
        )
        .await;
    }
    if !ctx.start(&name, "sync") {
        return Ok(());
    }
    let heartbeats = ctx.metrics.running("sync", &name);
    let running = SyncStatus {
        phase: RunPhase::InProgress,
        request,
        started: Some(started.clone()),
        heartbeat: Some(started.clone()),
        ..SyncStatus::default()
    };
    let result = async {
        patch_status(
            ctx,
            &name,
            json!({"sync": with_nulls(&running, &["message", "marker"])}),
        )
        .await?;
        let opened = open(&loc.spec, ctx).await.map_err(ReconcileError)?;
        let repo = ctx.repository(opened.store);
        let mut state = ctx
            .catalog(&name)
            .map(|c| SyncState {
                backups: c.backups,
                packs: c.packs,
            })
            .unwrap_or_default();
        let known = state.backups.len();
        let location = name.clone();
        let work = isolated("sync", async move {
            let delta = repo.sync(&mut state).await?;
            if delta.foldable >= packs::COMPACT_AFTER || delta.tombstones > 0 {
                // Keeps the next syncs short; a failure here leaves the location as it was.
                match packs::compact(&repo, &packs::CompactOptions::default()).await {
                    Ok(r) => tracing::info!(location = %location, folded = r.folded, dropped = r.dropped,
                                            days = r.days, tombstones_removed = r.tombstones_removed,
                                            skipped = r.skipped.len(), "location compacted"),
                    Err(e) => tracing::warn!(location = %location, error = %e, "location not compacted"),
                }
            }
            Ok((delta, state))
        });
        let outcome = with_heartbeat(work, ctx.config.heartbeat_interval, || async {
            if patch_status(ctx, &name, json!({"sync": {"heartbeat": ctx.now_rfc3339()}}))
                .await
                .is_ok()
            {
                heartbeats.beat();
            }
        })
        .await;
        let done = match outcome {
            Ok((delta, state)) => {
                let found = state.backups.len() as u64;
                let imported = delta.added.len() as u64;
                tracing::info!(location = %name, found, imported, removed = delta.removed.len(),
                               unreadable = delta.unreadable.len(), known, "location synced");
                ctx.update_catalog(&name, |c| {
                    c.backups = state.backups;
                    c.packs = state.packs;
                    c.synced_at = Some(ctx.clock.now());
                });
                SyncStatus {
                    phase: RunPhase::Completed,
                    request,
                    started: Some(started.clone()),
                    heartbeat: Some(ctx.now_rfc3339()),
                    backups_found: found,
                    backups_imported: imported,
                    marker: None,
                    message: (!delta.unreadable.is_empty())
                        .then(|| format!("{} manifests could not be read", delta.unreadable.len())),
                }
            }
            Err(e) => SyncStatus {
                phase: RunPhase::Failed,
                request,
                started: Some(started.clone()),
                heartbeat: Some(ctx.now_rfc3339()),
                message: Some(e.to_string()),
                ..SyncStatus::default()
            },
        };
        patch_status(
            ctx,
            &name,
            json!({"sync": with_nulls(&done, &["message", "marker"]), "observedSyncRequest": request}),
        )
        .await
    }
    .await;
    drop(heartbeats);
    ctx.finish(&name, "sync");
    result
}

async fn run_verify(loc: &BackupLocation, ctx: &Context, valid: bool) -> Result<(), ReconcileError> {
    let name = loc.name_any();
    let request = loc.spec.verify_request;
    if !valid {
        let failed = VerifyStatus {
            phase: RunPhase::Failed,
            completed: Some(ctx.now_rfc3339()),
            message: Some("the location is not valid; see status.validation".into()),
            ..VerifyStatus::default()
        };
        return patch_status(
            ctx,
            &name,
            json!({"verify": with_nulls(&failed, &["damagedBackups"]), "observedVerifyRequest": request}),
        )
        .await;
    }
    if !ctx.start(&name, "verify") {
        return Ok(());
    }
    let heartbeats = ctx.metrics.running("verify", &name);
    let result = async {
        let running = json!({"verify": {"phase": RunPhase::InProgress, "heartbeat": ctx.now_rfc3339()}});
        patch_status(ctx, &name, running).await?;
        let opened = open(&loc.spec, ctx).await.map_err(ReconcileError)?;
        let repo = ctx.repository(opened.store);
        let work = isolated("verify", async move { verify(&repo, None, false, 8).await });
        let outcome = with_heartbeat(work, ctx.config.heartbeat_interval, || async {
            if patch_status(ctx, &name, json!({"verify": {"heartbeat": ctx.now_rfc3339()}})).await.is_ok() {
                heartbeats.beat();
            }
        })
        .await;
        let done = match outcome {
            Ok(reports) => {
                let damaged: Vec<&VerifyReport> = reports.iter().filter(|r| r.status != Verdict::Ok).collect();
                tracing::info!(location = %name, checked = reports.len(), damaged = damaged.len(), "location verified");
                ctx.update_catalog(&name, |c| {
                    c.damaged = damaged.iter().map(|r| (r.id.clone(), (*r).clone())).collect();
                });
                VerifyStatus {
                    phase: RunPhase::Completed,
                    heartbeat: Some(ctx.now_rfc3339()),
                    completed: Some(ctx.now_rfc3339()),
                    backups_checked: reports.len() as u64,
                    damaged_backups: damaged.iter().map(|r| r.id.to_string()).collect(),
                    missing_objects: damaged.iter().map(|r| r.missing_count).sum(),
                    missing_by_backup: pxb_core::backup::verify::missing_by_backup(&reports),
                    message: None,
                }
            }
            Err(e) => VerifyStatus {
                phase: RunPhase::Failed,
                completed: Some(ctx.now_rfc3339()),
                message: Some(e.to_string()),
                ..VerifyStatus::default()
            },
        };
        patch_status(
            ctx,
            &name,
            json!({"verify": with_nulls(&done, &["message", "damagedBackups"]), "observedVerifyRequest": request}),
        )
        .await
    }
    .await;
    drop(heartbeats);
    ctx.finish(&name, "verify");
    result
}

/// Runs `work` as a task of its own, aborted when this future is dropped. A panic in it (a bug
/// meeting hostile data from a location) then fails this one run, which is reported in the
/// status like any failure and retried at the next interval, instead of ending the controller.
async fn isolated<T: Send + 'static>(
    what: &str,
    work: impl Future<Output = pxb_core::Result<T>> + Send + 'static,
) -> pxb_core::Result<T> {
    struct AbortOnDrop(tokio::task::AbortHandle);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    // In the caller's span: the run's lines name its location.
    let task = tokio::spawn(work.in_current_span());
    let _abort = AbortOnDrop(task.abort_handle());
    task.await.unwrap_or_else(|e| {
        Err(pxb_core::Error::other(format!(
            "{what} stopped unexpectedly: {e}"
        )))
    })
}

/// Runs the location controller until the returned task is aborted.
pub fn spawn(ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    let api: Api<BackupLocation> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let metrics = ctx.metrics.clone();
    let (task, store) = super::controller::spawn_controller_with_store("location", api, reconcile, ctx);
    metrics.watch_locations(store);
    task
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_sync_or_verify_fails_the_run_instead_of_the_controller() {
        let r: pxb_core::Result<()> = isolated("verify", async { panic!("hostile input") }).await;
        let e = r.expect_err("a panic is an error");
        assert!(e.to_string().contains("verify stopped unexpectedly"), "{e}");
        assert_eq!(isolated("sync", async { Ok(7) }).await.expect("ok"), 7);
    }
}
