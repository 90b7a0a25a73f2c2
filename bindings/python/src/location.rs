//! The engine over a location: `pxb.Location` (`file://` and `azblob://`), its authentication
//! objects (`pxb.WorkloadIdentity`, `pxb.SharedKey`, `pxb.Sas`), and the typed results of its
//! operations (check, volume backup and restore, listing, verify, delete, GC).
//!
//! The location is opened by [`pxb_daemon::location::LocationSettings`], the same code and the
//! same environment defaults as the `pxb` command line; an account key or SAS token is passed as
//! a value, never through the environment. Parent selection and `latest` are the CLI's
//! ([`pxb_core::backup::volume::default_parent`], [`find_volume_backup`]).
//!
//! Progress callbacks are called from a worker thread (holding the GIL), at most every 250 ms and
//! once at the end. An exception raised by a callback cancels the operation and is raised by it;
//! the operation's work is dropped (a backup that did not commit leaves only unreferenced chunks,
//! which `gc` reclaims).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pxb_core::backup::gc::{self, GcOptions, GcReport as CoreGcReport};
use pxb_core::backup::verify::{self, VerifyReport as CoreVerifyReport, VerifyStatus};
use pxb_core::backup::volume::{
    Progress, ProgressFn, RestoreStats, VolumeBackupOptions, VolumeRestoreOptions, backup_volume,
    canonical_source, default_parent, find_volume_backup, restore_volume,
};
use pxb_core::backup::{BackupId, Manifest, Repository, Summary};
use pxb_core::{CheckReport as CoreCheckReport, StepOutcome, StepReport};
use pxb_daemon::location::{LocationAuth, LocationSettings, OpenedLocation, WorkloadIdentityOptions};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use serde::Serialize;
use tokio::sync::watch;

use crate::errors::{IntoPy as _, Invalid, PxbError};
use crate::runtime;

/// The shortest time between two calls of a progress callback.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// The default number of objects `verify` downloads at once (as `pxb location verify`).
const VERIFY_CONCURRENCY: usize = 8;

/// A Python `repr` of a string (single quotes, backslash escapes).
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A Python `repr` of an optional string.
fn q_opt(s: &Option<String>) -> String {
    s.as_deref().map(q).unwrap_or_else(|| "None".into())
}

/// The serialized name of an enum value (`completed`, `partially_failed`, `volume`, …).
fn name_of<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A positive duration in seconds from Python, or `Invalid` naming `what`.
fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    if secs.is_finite() && secs >= 0.0 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(Invalid::new_err(format!(
            "{what} must be a non-negative number of seconds, not {secs}"
        )))
    }
}

// --- authentication ---

/// Azure Workload Identity (federated mode): exchange a projected service-account token at Entra
/// ID. What is `None` comes from `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
/// `AZURE_FEDERATED_TOKEN_FILE` and `AZURE_AUTHORITY_HOST`, as for `pxb`.
#[pyclass(frozen, get_all, module = "pxb", name = "WorkloadIdentity")]
#[derive(Clone)]
pub struct WorkloadIdentity {
    /// The client id of the managed identity (or app registration).
    client_id: Option<String>,
    /// The Entra ID tenant.
    tenant_id: Option<String>,
    /// The projected service-account token file.
    token_file: Option<String>,
    /// The Entra ID authority host (https), e.g. `https://login.microsoftonline.com`.
    authority_host: Option<String>,
}

#[pymethods]
impl WorkloadIdentity {
    #[new]
    #[pyo3(signature = (client_id=None, tenant_id=None, token_file=None, *, authority_host=None))]
    fn new(
        client_id: Option<String>,
        tenant_id: Option<String>,
        token_file: Option<PathBuf>,
        authority_host: Option<String>,
    ) -> Self {
        Self {
            client_id,
            tenant_id,
            token_file: token_file.map(|p| p.to_string_lossy().into_owned()),
            authority_host,
        }
    }

    fn __repr__(&self) -> String {
        let mut s = format!(
            "pxb.WorkloadIdentity(client_id={}, tenant_id={}, token_file={}",
            q_opt(&self.client_id),
            q_opt(&self.tenant_id),
            q_opt(&self.token_file)
        );
        if let Some(h) = &self.authority_host {
            s.push_str(&format!(", authority_host={}", q(h)));
        }
        s.push(')');
        s
    }
}

/// The storage account key (classic mode). The key is not readable back and `repr` hides it.
#[pyclass(frozen, module = "pxb", name = "SharedKey")]
pub struct SharedKey {
    key: String,
}

#[pymethods]
impl SharedKey {
    #[new]
    fn new(key: String) -> Self {
        Self { key }
    }

    fn __repr__(&self) -> &'static str {
        "pxb.SharedKey(key=<redacted>)"
    }
}

/// A shared access signature (the query string, with or without `?`). The token is not readable
/// back and `repr` hides it.
#[pyclass(frozen, module = "pxb", name = "Sas")]
pub struct Sas {
    token: String,
}

#[pymethods]
impl Sas {
    #[new]
    fn new(token: String) -> Self {
        Self { token }
    }

    fn __repr__(&self) -> &'static str {
        "pxb.Sas(token=<redacted>)"
    }
}

/// The settings' authentication for a Python `auth` argument (`None`: the CLI's default,
/// Workload Identity from the environment).
fn auth_of(auth: Option<&Bound<'_, PyAny>>) -> PyResult<LocationAuth> {
    let Some(auth) = auth else {
        return Ok(LocationAuth::default());
    };
    if let Ok(w) = auth.cast::<WorkloadIdentity>() {
        let w = w.get();
        Ok(LocationAuth::WorkloadIdentity(WorkloadIdentityOptions {
            client_id: w.client_id.clone(),
            tenant_id: w.tenant_id.clone(),
            token_file: w.token_file.clone().map(PathBuf::from),
            authority_host: w.authority_host.clone(),
        }))
    } else if let Ok(k) = auth.cast::<SharedKey>() {
        Ok(LocationAuth::SharedKey {
            key: Some(k.get().key.clone()),
        })
    } else if let Ok(s) = auth.cast::<Sas>() {
        Ok(LocationAuth::Sas {
            token: Some(s.get().token.clone()),
        })
    } else {
        Err(PyTypeError::new_err(format!(
            "auth must be pxb.WorkloadIdentity, pxb.SharedKey, pxb.Sas or None, not {}",
            auth.get_type().name()?
        )))
    }
}

// --- results ---

/// One step of a location check.
#[pyclass(frozen, get_all, module = "pxb", name = "CheckStep")]
#[derive(Clone)]
pub struct CheckStep {
    /// `configure`, `authenticate`, `list`, `write`, `read` or `delete`.
    step: String,
    /// `passed`, `failed` or `skipped`.
    outcome: String,
    /// Whether the step passed.
    ok: bool,
    /// What happened, in words (on failure, why).
    detail: String,
    /// The error's kind on failure (`permission_denied`, `unauthenticated`, …).
    error_kind: Option<String>,
    /// How long the step took, in milliseconds.
    elapsed_ms: u64,
}

#[pymethods]
impl CheckStep {
    fn __repr__(&self) -> String {
        format!(
            "pxb.CheckStep(step={}, outcome={}, detail={})",
            q(&self.step),
            q(&self.outcome),
            q(&self.detail)
        )
    }
}

impl From<&StepReport> for CheckStep {
    fn from(s: &StepReport) -> Self {
        Self {
            step: s.step.name().to_owned(),
            outcome: name_of(&s.outcome),
            ok: s.outcome == StepOutcome::Passed,
            detail: s.detail.clone(),
            error_kind: s.error_kind.map(str::to_owned),
            elapsed_ms: s.elapsed_ms,
        }
    }
}

/// The report of `Location.check()`: `str()` is what `pxb location check` prints.
#[pyclass(frozen, module = "pxb", name = "CheckReport")]
pub struct CheckReport {
    /// The location checked.
    #[pyo3(get)]
    location: String,
    /// Whether every step passed.
    #[pyo3(get)]
    ok: bool,
    /// The steps, in order.
    #[pyo3(get)]
    steps: Vec<CheckStep>,
    /// What `pxb location check` prints.
    text: String,
}

#[pymethods]
impl CheckReport {
    fn __repr__(&self) -> String {
        let failed = self
            .steps
            .iter()
            .find(|s| s.outcome == "failed")
            .map(|s| format!(", failed_step={}", q(&s.step)))
            .unwrap_or_default();
        format!(
            "pxb.CheckReport(location={}, ok={}{failed})",
            q(&self.location),
            if self.ok { "True" } else { "False" }
        )
    }

    fn __str__(&self) -> String {
        self.text.clone()
    }
}

impl From<CoreCheckReport> for CheckReport {
    fn from(r: CoreCheckReport) -> Self {
        Self {
            text: r.to_string(),
            location: r.location.clone(),
            ok: r.passed,
            steps: r.steps.iter().map(CheckStep::from).collect(),
        }
    }
}

/// A committed volume backup (`Location.backup_volume`).
#[pyclass(frozen, get_all, module = "pxb", name = "VolumeBackup")]
pub struct VolumeBackup {
    /// The backup's id.
    id: String,
    /// `completed`, or `partially_failed` when some files could not be read (see `warnings`).
    status: String,
    /// Its tag.
    tag: Option<String>,
    /// The backed-up directory (absolute, symlinks resolved).
    source: Option<String>,
    /// The backup it is incremental to.
    parent: Option<String>,
    /// The cluster the data belongs to.
    cluster: Option<String>,
    /// When it started, Unix seconds.
    created: u64,
    /// When it committed, Unix seconds.
    completed: u64,
    /// Regular files.
    files: u64,
    /// Directories.
    dirs: u64,
    /// Symbolic links.
    symlinks: u64,
    /// Entries that could not be read and were left out.
    skipped: u64,
    /// Bytes of file content.
    bytes: u64,
    /// Bytes read from disk (less than `bytes` when unchanged files were reused from the parent).
    bytes_read: u64,
    /// Distinct chunks referenced.
    chunks: u64,
    /// Chunks uploaded by this backup.
    new_chunks: u64,
    /// Bytes uploaded (compressed chunks and the file index).
    stored_bytes: u64,
    /// What could not be backed up exactly, in words.
    warnings: Vec<String>,
}

#[pymethods]
impl VolumeBackup {
    fn __repr__(&self) -> String {
        format!(
            "pxb.VolumeBackup(id={}, status={}, tag={}, parent={}, files={}, bytes={}, stored_bytes={})",
            q(&self.id),
            q(&self.status),
            q_opt(&self.tag),
            q_opt(&self.parent),
            self.files,
            self.bytes,
            self.stored_bytes
        )
    }
}

impl From<Manifest> for VolumeBackup {
    fn from(m: Manifest) -> Self {
        let s = m.stats;
        Self {
            id: m.id.to_string(),
            status: name_of(&m.status),
            tag: m.tag,
            source: m.source,
            parent: m.parent.map(|p| p.to_string()),
            cluster: m.cluster,
            created: m.created,
            completed: m.completed,
            files: s.files,
            dirs: s.dirs,
            symlinks: s.symlinks,
            skipped: s.skipped,
            bytes: s.bytes,
            bytes_read: s.bytes_read,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            stored_bytes: s.stored_bytes,
            warnings: m.warnings,
        }
    }
}

/// A backup as `Location.list_backups()` (and `pxb backup list`) shows it, from listing metadata.
#[pyclass(frozen, get_all, module = "pxb", name = "BackupSummary")]
pub struct BackupSummary {
    /// The backup's id.
    id: String,
    /// `volume` or `resources`.
    kind: String,
    /// `completed` or `partially_failed`.
    status: String,
    /// When it started, Unix seconds.
    created: u64,
    /// The cluster it came from.
    cluster: Option<String>,
    /// The namespaces it covers (possibly truncated; see `namespaces_truncated`).
    namespaces: Vec<String>,
    /// Whether `namespaces` was cut to fit the listing metadata.
    namespaces_truncated: bool,
    /// Its tag.
    tag: Option<String>,
    /// The backed-up path (volume backups).
    source: Option<String>,
    /// Plain bytes.
    bytes: u64,
    /// Stored bytes it uploaded.
    stored_bytes: u64,
    /// Files (volume) or objects (resources).
    items: u64,
}

#[pymethods]
impl BackupSummary {
    fn __repr__(&self) -> String {
        format!(
            "pxb.BackupSummary(id={}, kind={}, status={}, tag={}, source={}, bytes={}, stored_bytes={})",
            q(&self.id),
            q(&self.kind),
            q(&self.status),
            q_opt(&self.tag),
            q_opt(&self.source),
            self.bytes,
            self.stored_bytes
        )
    }
}

impl From<Summary> for BackupSummary {
    fn from(s: Summary) -> Self {
        Self {
            id: s.id.to_string(),
            kind: name_of(&s.kind),
            status: name_of(&s.status),
            created: s.created,
            cluster: s.cluster,
            namespaces: s.namespaces,
            namespaces_truncated: s.namespaces_truncated,
            tag: s.tag,
            source: s.source,
            bytes: s.bytes,
            stored_bytes: s.stored_bytes,
            items: s.items,
        }
    }
}

/// What `Location.restore_volume` restored (every chunk's hash was verified).
#[pyclass(frozen, get_all, module = "pxb", name = "VolumeRestore")]
pub struct VolumeRestore {
    /// The backup restored.
    backup: String,
    /// The directory restored into.
    target: String,
    /// Regular files.
    files: u64,
    /// Directories.
    dirs: u64,
    /// Symbolic links.
    symlinks: u64,
    /// Bytes of file content.
    bytes: u64,
    /// Chunks downloaded.
    chunks_fetched: u64,
}

#[pymethods]
impl VolumeRestore {
    fn __repr__(&self) -> String {
        format!(
            "pxb.VolumeRestore(backup={}, target={}, files={}, dirs={}, symlinks={}, bytes={})",
            q(&self.backup),
            q(&self.target),
            self.files,
            self.dirs,
            self.symlinks,
            self.bytes
        )
    }
}

/// What `verify` found for one backup.
#[pyclass(frozen, get_all, module = "pxb", name = "BackupVerification")]
#[derive(Clone)]
pub struct BackupVerification {
    /// The backup.
    id: String,
    /// `ok`, `missing` or `corrupt`.
    status: String,
    /// Whether everything it references is there (and, deep, intact).
    ok: bool,
    /// Missing objects (at most 1000 listed).
    missing: Vec<String>,
    /// How many objects are missing (also those not listed).
    missing_count: u64,
    /// Damaged objects with the reason (at most 1000 listed).
    corrupt: Vec<String>,
    /// Objects checked.
    checked: u64,
}

#[pymethods]
impl BackupVerification {
    fn __repr__(&self) -> String {
        format!(
            "pxb.BackupVerification(id={}, status={}, checked={}, missing_count={}, corrupt={})",
            q(&self.id),
            q(&self.status),
            self.checked,
            self.missing_count,
            self.corrupt.len()
        )
    }
}

impl From<CoreVerifyReport> for BackupVerification {
    fn from(r: CoreVerifyReport) -> Self {
        Self {
            id: r.id.to_string(),
            status: name_of(&r.status),
            ok: r.status == VerifyStatus::Ok,
            missing: r.missing,
            missing_count: r.missing_count,
            corrupt: r.corrupt,
            checked: r.checked,
        }
    }
}

/// The report of `Location.verify()`, as `pxb location verify` gives it.
#[pyclass(frozen, get_all, module = "pxb", name = "VerifyReport")]
pub struct VerifyReport {
    /// Whether every backup checked is complete (and, deep, intact).
    ok: bool,
    /// Whether objects were downloaded and their hashes checked.
    deep: bool,
    /// One verdict per backup.
    backups: Vec<BackupVerification>,
    /// The missing objects of all backups, in order.
    missing: Vec<String>,
    /// How many objects are missing in all (also those not listed).
    missing_count: u64,
    /// The damaged objects of all backups, with the reason.
    corrupt: Vec<String>,
}

#[pymethods]
impl VerifyReport {
    fn __repr__(&self) -> String {
        format!(
            "pxb.VerifyReport(ok={}, deep={}, backups={}, missing_count={}, corrupt={})",
            if self.ok { "True" } else { "False" },
            if self.deep { "True" } else { "False" },
            self.backups.len(),
            self.missing_count,
            self.corrupt.len()
        )
    }
}

impl VerifyReport {
    fn of(reports: Vec<CoreVerifyReport>, deep: bool) -> Self {
        let backups: Vec<BackupVerification> = reports.into_iter().map(Into::into).collect();
        Self {
            ok: backups.iter().all(|b| b.ok),
            deep,
            missing: backups.iter().flat_map(|b| b.missing.iter().cloned()).collect(),
            missing_count: backups.iter().map(|b| b.missing_count).sum(),
            corrupt: backups.iter().flat_map(|b| b.corrupt.iter().cloned()).collect(),
            backups,
        }
    }
}

/// What `Location.gc()` did (or, in a dry run, would do).
#[pyclass(frozen, get_all, module = "pxb", name = "GcReport")]
pub struct GcReport {
    /// Whether nothing was deleted, only counted.
    dry_run: bool,
    /// Committed backups marked.
    backups: u64,
    /// Distinct chunks they reference.
    referenced_chunks: u64,
    /// Chunks found in the location.
    chunks_seen: u64,
    /// Unreferenced chunks deleted (or that would be).
    deleted_chunks: u64,
    /// Stored bytes of those chunks.
    deleted_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    kept_in_grace: u64,
    /// Objects of backups that never committed, deleted.
    deleted_orphans: u64,
    /// Why nothing was swept (backups in flight hold leases), if so.
    deferred: Option<String>,
    /// Backup markers the compaction after the sweep folded into packs (location format 2);
    /// `None` when no compaction ran (a dry run, or it failed).
    folded: Option<u64>,
    /// Why that compaction failed, if it did (the GC itself succeeded).
    compaction_error: Option<String>,
}

#[pymethods]
impl GcReport {
    fn __repr__(&self) -> String {
        format!(
            "pxb.GcReport(dry_run={}, backups={}, chunks_seen={}, deleted_chunks={}, deleted_bytes={}, kept_in_grace={}, deferred={}, folded={}, compaction_error={})",
            if self.dry_run { "True" } else { "False" },
            self.backups,
            self.chunks_seen,
            self.deleted_chunks,
            self.deleted_bytes,
            self.kept_in_grace,
            q_opt(&self.deferred),
            self.folded.map_or("None".into(), |n| n.to_string()),
            q_opt(&self.compaction_error)
        )
    }
}

impl GcReport {
    fn of(r: CoreGcReport, dry_run: bool) -> Self {
        Self {
            dry_run,
            backups: r.backups,
            referenced_chunks: r.referenced_chunks,
            chunks_seen: r.chunks_seen,
            deleted_chunks: r.deleted_chunks,
            deleted_bytes: r.deleted_bytes,
            kept_in_grace: r.kept_in_grace,
            deleted_orphans: r.deleted_orphans,
            deferred: r.deferred,
            folded: r.compaction.map(|c| c.folded),
            compaction_error: r.compaction_error,
        }
    }
}

/// What `Location.upgrade` did: the location's format before and after (equal when it was
/// current already and nothing changed).
#[pyclass(frozen, get_all, module = "pxb", name = "LocationUpgrade")]
pub struct LocationUpgrade {
    /// The format the location had.
    from_format: u32,
    /// The format it has now.
    to_format: u32,
    /// Whether the location changed (`from_format < to_format`).
    upgraded: bool,
}

#[pymethods]
impl LocationUpgrade {
    fn __repr__(&self) -> String {
        format!(
            "pxb.LocationUpgrade(from_format={}, to_format={}, upgraded={})",
            self.from_format,
            self.to_format,
            if self.upgraded { "True" } else { "False" }
        )
    }
}

/// A deleted backup (`Location.delete_backup`); its chunks are reclaimed by `gc`.
#[pyclass(frozen, get_all, module = "pxb", name = "DeletedBackup")]
pub struct DeletedBackup {
    /// The backup.
    id: String,
    /// The objects deleted (the manifest first).
    objects: Vec<String>,
}

#[pymethods]
impl DeletedBackup {
    fn __repr__(&self) -> String {
        format!(
            "pxb.DeletedBackup(id={}, objects={})",
            q(&self.id),
            self.objects.len()
        )
    }
}

// --- progress ---

/// Calls `callback(bytes_done, bytes_total)` with what `rx` carries: when it changes, at most once
/// per [`PROGRESS_INTERVAL`], and with the last value once the operation ended (`finished`, or the
/// engine dropped its sender). Ends with the callback's exception, if it raises.
async fn pump(
    callback: Arc<Py<PyAny>>,
    mut rx: watch::Receiver<Option<(u64, u64)>>,
    mut finished: watch::Receiver<bool>,
) -> PyResult<()> {
    let mut last = None;
    loop {
        let closed = tokio::select! {
            biased;
            changed = rx.changed() => changed.is_err(),
            _ = finished.wait_for(|done| *done) => true,
        };
        let current = *rx.borrow_and_update();
        if let Some(value) = current
            && last != Some(value)
        {
            let cb = callback.clone();
            tokio::task::spawn_blocking(move || Python::attach(|py| cb.bind(py).call1(value).map(drop)))
                .await
                .map_err(|e| {
                    PxbError::new_err(format!("the progress callback stopped unexpectedly: {e}"))
                })??;
            last = Some(value);
        }
        if closed {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(PROGRESS_INTERVAL) => {}
            _ = finished.wait_for(|done| *done) => {}
        }
    }
}

/// Runs the operation `start` makes, feeding its progress to `callback` (if any). An exception
/// of the callback drops the operation and is its result.
async fn with_progress<T, F>(
    callback: Option<Py<PyAny>>,
    start: impl FnOnce(Option<ProgressFn>) -> F,
) -> PyResult<T>
where
    F: Future<Output = pxb_core::Result<T>>,
{
    let Some(callback) = callback else {
        return start(None).await.py_err();
    };
    let (tx, rx) = watch::channel(None);
    let (done_tx, done_rx) = watch::channel(false);
    let report: ProgressFn = Arc::new(move |p: &Progress| {
        tx.send_replace(Some((p.bytes_done, p.bytes_total)));
    });
    let work = start(Some(report));
    let pumping = pump(Arc::new(callback), rx, done_rx);
    tokio::pin!(work, pumping);
    let mut pump_ended = false;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            r = &mut pumping, if !pump_ended => {
                // The callback raised: dropping `work` cancels the operation.
                r?;
                pump_ended = true;
            }
        }
    };
    done_tx.send_replace(true);
    if !pump_ended {
        pumping.await?;
    }
    result.py_err()
}

/// Runs the future `make` returns on a blocking thread of the runtime (for futures that are not
/// `Send`). Dropping the returned future stops it: the thread's future is dropped at its next
/// await point.
async fn run_on_own_thread<T, F, M>(make: M) -> PyResult<T>
where
    M: FnOnce() -> F + Send + 'static,
    F: Future<Output = PyResult<T>>,
    T: Send + 'static,
{
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::runtime::Handle::current();
    let task = tokio::task::spawn_blocking(move || {
        handle.block_on(async move {
            tokio::select! {
                r = make() => Some(r),
                // The sender is dropped with the caller's future: cancelled.
                _ = stopped => None,
            }
        })
    });
    match task.await {
        Ok(Some(r)) => r,
        Ok(None) => Err(PxbError::new_err("the operation was cancelled")),
        Err(e) => Err(PxbError::new_err(format!(
            "the operation stopped unexpectedly: {e}"
        ))),
    }
}

// --- the location ---

/// A backup location opened with `Location.open(url, ...)`: a local directory (`file:///abs/path`)
/// or an Azure Blob container (`azblob://<container>[/<prefix>]`).
#[pyclass(frozen, module = "pxb", name = "Location")]
pub struct Location {
    opened: OpenedLocation,
    repo: Repository,
}

/// The arguments of `backup_volume`.
struct BackupArgs {
    path: PathBuf,
    tag: Option<String>,
    parent: Option<String>,
    no_parent: bool,
    cluster: Option<String>,
    concurrency: Option<usize>,
    progress: Option<Py<PyAny>>,
}

async fn backup_future(repo: Repository, a: BackupArgs) -> PyResult<VolumeBackup> {
    let BackupArgs {
        path,
        tag,
        parent,
        no_parent,
        cluster,
        concurrency,
        progress,
    } = a;
    let source = canonical_source(&path).py_err()?;
    let parent = match (parent, no_parent) {
        (Some(p), _) => Some(BackupId::parse(&p).py_err()?),
        (None, true) => None,
        (None, false) => default_parent(&repo, &source, tag.as_deref()).await.py_err()?,
    };
    let mut opts = VolumeBackupOptions::new(&source);
    opts.parent = parent;
    opts.tag = tag;
    opts.cluster = cluster;
    if let Some(c) = concurrency {
        opts.concurrency = c.max(1);
    }
    let manifest = with_progress(progress, |report| {
        opts.progress = report;
        async move { backup_volume(&repo, opts).await }
    })
    .await?;
    Ok(manifest.into())
}

async fn restore_future(
    repo: Repository,
    backup: String,
    target: PathBuf,
    tag: Option<String>,
    progress: Option<Py<PyAny>>,
) -> PyResult<VolumeRestore> {
    let id = find_volume_backup(&repo, &backup, tag.as_deref())
        .await
        .py_err()?;
    let mut opts = VolumeRestoreOptions::new(&target);
    let restore_id = id.clone();
    // The engine's restore future is not `Send` (a rustc limitation with its borrowing stream
    // closures), so it runs on a thread of its own, as in the agent.
    let stats: RestoreStats = run_on_own_thread(move || async move {
        with_progress(progress, |report| {
            opts.progress = report;
            async move { restore_volume(&repo, &restore_id, opts).await }
        })
        .await
    })
    .await?;
    Ok(VolumeRestore {
        backup: id.to_string(),
        target: target.display().to_string(),
        files: stats.files,
        dirs: stats.dirs,
        symlinks: stats.symlinks,
        bytes: stats.bytes,
        chunks_fetched: stats.chunks_fetched,
    })
}

async fn verify_future(repo: Repository, backups: Option<Vec<String>>, deep: bool) -> PyResult<VerifyReport> {
    let ids = backups
        .map(|b| {
            b.iter()
                .map(|id| BackupId::parse(id))
                .collect::<pxb_core::Result<Vec<_>>>()
        })
        .transpose()
        .py_err()?;
    let reports = verify::verify(&repo, ids, deep, VERIFY_CONCURRENCY)
        .await
        .py_err()?;
    Ok(VerifyReport::of(reports, deep))
}

async fn delete_future(repo: Repository, id: String) -> PyResult<DeletedBackup> {
    let parsed = BackupId::parse(&id).py_err()?;
    let objects = repo.delete(&parsed).await.py_err()?;
    Ok(DeletedBackup { id, objects })
}

async fn upgrade_future(repo: Repository) -> PyResult<LocationUpgrade> {
    let from_format = repo.upgrade().await.py_err()?;
    let to_format = from_format.max(pxb_core::backup::LOCATION_FORMAT);
    Ok(LocationUpgrade {
        from_format,
        to_format,
        upgraded: from_format < to_format,
    })
}

async fn gc_future(repo: Repository, opts: GcOptions) -> PyResult<GcReport> {
    let dry_run = opts.dry_run;
    let report = gc::gc(&repo, &opts).await.py_err()?;
    Ok(GcReport::of(report, dry_run))
}

impl Location {
    fn gc_options(dry_run: bool, grace_secs: f64) -> PyResult<GcOptions> {
        Ok(GcOptions {
            grace: seconds("grace_secs", grace_secs)?,
            dry_run,
            ..GcOptions::default()
        })
    }

    fn check_future(
        &self,
        step_timeout: f64,
    ) -> PyResult<impl Future<Output = PyResult<CheckReport>> + use<>> {
        let timeout = seconds("step_timeout", step_timeout)?.max(Duration::from_millis(1));
        let opened = self.opened.clone();
        Ok(async move { Ok(CheckReport::from(opened.check(timeout).await)) })
    }
}

#[pymethods]
impl Location {
    /// Opens a location: `file:///abs/path` or `azblob://<container>[/<prefix>]`. What is `None`
    /// comes from the environment as for `pxb`.
    #[staticmethod]
    #[pyo3(signature = (url, *, account=None, endpoint=None, auth=None, ca_file=None))]
    fn open(
        url: String,
        account: Option<String>,
        endpoint: Option<String>,
        auth: Option<&Bound<'_, PyAny>>,
        ca_file: Option<PathBuf>,
    ) -> PyResult<Self> {
        let settings = LocationSettings {
            location: url,
            account,
            endpoint,
            ca_file,
            auth: auth_of(auth)?,
        };
        // Building an HTTP client may need the runtime's context.
        let _guard = runtime::runtime().enter();
        let opened = settings.open().py_err()?;
        let repo = Repository::new(opened.store.clone());
        Ok(Self { opened, repo })
    }

    /// The location's URL.
    #[getter]
    fn url(&self) -> String {
        self.opened.url.to_string()
    }

    fn __repr__(&self) -> String {
        format!("pxb.Location({})", q(&self.opened.url.to_string()))
    }

    /// Checks that the location can be listed, written, read back and deleted from.
    #[pyo3(signature = (*, step_timeout=8.0))]
    fn check(&self, py: Python<'_>, step_timeout: f64) -> PyResult<CheckReport> {
        let fut = self.check_future(step_timeout)?;
        runtime::block(py, fut)
    }

    /// `check()` as a coroutine.
    #[pyo3(signature = (*, step_timeout=8.0))]
    async fn check_async(&self, step_timeout: f64) -> PyResult<CheckReport> {
        let fut = self.check_future(step_timeout)?;
        runtime::spawned(fut).await
    }

    /// Creates the container of an `azblob://` location if it is missing (nothing to do for
    /// `file://`).
    fn create_container(&self, py: Python<'_>) -> PyResult<()> {
        let opened = self.opened.clone();
        runtime::block(py, async move { opened.create_container().await.py_err() })
    }

    /// `create_container()` as a coroutine.
    async fn create_container_async(&self) -> PyResult<()> {
        let opened = self.opened.clone();
        runtime::spawned(async move { opened.create_container().await.py_err() }).await
    }

    /// Backs up the directory `path`, incremental to `parent` (default: the newest volume backup
    /// with the same tag, or without a tag the same path; `no_parent=True` for none).
    #[pyo3(signature = (path, *, tag=None, parent=None, progress=None, no_parent=false, cluster=None, concurrency=None))]
    #[allow(clippy::too_many_arguments)]
    fn backup_volume(
        &self,
        py: Python<'_>,
        path: PathBuf,
        tag: Option<String>,
        parent: Option<String>,
        progress: Option<Py<PyAny>>,
        no_parent: bool,
        cluster: Option<String>,
        concurrency: Option<usize>,
    ) -> PyResult<VolumeBackup> {
        let args = BackupArgs {
            path,
            tag,
            parent,
            no_parent,
            cluster,
            concurrency,
            progress,
        };
        let fut = backup_future(self.repo.clone(), args);
        runtime::block(py, fut)
    }

    /// `backup_volume(...)` as a coroutine.
    #[pyo3(signature = (path, *, tag=None, parent=None, progress=None, no_parent=false, cluster=None, concurrency=None))]
    #[allow(clippy::too_many_arguments)]
    async fn backup_volume_async(
        &self,
        path: PathBuf,
        tag: Option<String>,
        parent: Option<String>,
        progress: Option<Py<PyAny>>,
        no_parent: bool,
        cluster: Option<String>,
        concurrency: Option<usize>,
    ) -> PyResult<VolumeBackup> {
        let args = BackupArgs {
            path,
            tag,
            parent,
            no_parent,
            cluster,
            concurrency,
            progress,
        };
        runtime::spawned(backup_future(self.repo.clone(), args)).await
    }

    /// Every backup in the location, oldest first, from listing metadata.
    fn list_backups(&self, py: Python<'_>) -> PyResult<Vec<BackupSummary>> {
        let repo = self.repo.clone();
        runtime::block(py, async move { list_future(repo).await })
    }

    /// `list_backups()` as a coroutine.
    async fn list_backups_async(&self) -> PyResult<Vec<BackupSummary>> {
        runtime::spawned(list_future(self.repo.clone())).await
    }

    /// Restores a volume backup (an id, or `latest`: the newest volume backup, with `tag` if
    /// given) into `target` (created if missing), verifying every chunk.
    #[pyo3(signature = (backup="latest", *, target, tag=None, progress=None))]
    fn restore_volume(
        &self,
        py: Python<'_>,
        backup: &str,
        target: PathBuf,
        tag: Option<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<VolumeRestore> {
        runtime::block(
            py,
            restore_future(self.repo.clone(), backup.to_owned(), target, tag, progress),
        )
    }

    /// `restore_volume(...)` as a coroutine.
    #[pyo3(signature = (backup="latest", *, target, tag=None, progress=None))]
    async fn restore_volume_async(
        &self,
        backup: &str,
        target: PathBuf,
        tag: Option<String>,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<VolumeRestore> {
        runtime::spawned(restore_future(
            self.repo.clone(),
            backup.to_owned(),
            target,
            tag,
            progress,
        ))
        .await
    }

    /// Checks that every object the backups (all, or `backups`) reference exists; `deep`
    /// downloads them and checks their hashes.
    #[pyo3(signature = (deep=false, *, backups=None))]
    fn verify(&self, py: Python<'_>, deep: bool, backups: Option<Vec<String>>) -> PyResult<VerifyReport> {
        runtime::block(py, verify_future(self.repo.clone(), backups, deep))
    }

    /// `verify(...)` as a coroutine.
    #[pyo3(signature = (deep=false, *, backups=None))]
    async fn verify_async(&self, deep: bool, backups: Option<Vec<String>>) -> PyResult<VerifyReport> {
        runtime::spawned(verify_future(self.repo.clone(), backups, deep)).await
    }

    /// Deletes a backup (its chunks are reclaimed by `gc`).
    fn delete_backup(&self, py: Python<'_>, id: String) -> PyResult<DeletedBackup> {
        runtime::block(py, delete_future(self.repo.clone(), id))
    }

    /// `delete_backup(id)` as a coroutine.
    async fn delete_backup_async(&self, id: String) -> PyResult<DeletedBackup> {
        runtime::spawned(delete_future(self.repo.clone(), id)).await
    }

    /// Deletes chunks no backup references any more and are older than `grace_secs` (as
    /// `pxb location gc`); `dry_run` only counts them.
    #[pyo3(signature = (dry_run=false, *, grace_secs=3600.0))]
    fn gc(&self, py: Python<'_>, dry_run: bool, grace_secs: f64) -> PyResult<GcReport> {
        let opts = Self::gc_options(dry_run, grace_secs)?;
        runtime::block(py, gc_future(self.repo.clone(), opts))
    }

    /// `gc(...)` as a coroutine.
    #[pyo3(signature = (dry_run=false, *, grace_secs=3600.0))]
    async fn gc_async(&self, dry_run: bool, grace_secs: f64) -> PyResult<GcReport> {
        let opts = Self::gc_options(dry_run, grace_secs)?;
        runtime::spawned(gc_future(self.repo.clone(), opts)).await
    }

    /// Moves a location of an earlier format to the current one (as `pxb location upgrade`):
    /// only its config changes. Run it once no earlier pxb uses the location; running it again
    /// changes nothing. Raises `NotFound` for a location without backups.
    fn upgrade(&self, py: Python<'_>) -> PyResult<LocationUpgrade> {
        runtime::block(py, upgrade_future(self.repo.clone()))
    }

    /// `upgrade()` as a coroutine.
    async fn upgrade_async(&self) -> PyResult<LocationUpgrade> {
        runtime::spawned(upgrade_future(self.repo.clone())).await
    }
}

async fn list_future(repo: Repository) -> PyResult<Vec<BackupSummary>> {
    Ok(repo.list().await.py_err()?.into_iter().map(Into::into).collect())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Location>()?;
    m.add_class::<WorkloadIdentity>()?;
    m.add_class::<SharedKey>()?;
    m.add_class::<Sas>()?;
    m.add_class::<CheckReport>()?;
    m.add_class::<CheckStep>()?;
    m.add_class::<VolumeBackup>()?;
    m.add_class::<BackupSummary>()?;
    m.add_class::<VolumeRestore>()?;
    m.add_class::<VerifyReport>()?;
    m.add_class::<LocationUpgrade>()?;
    m.add_class::<BackupVerification>()?;
    m.add_class::<GcReport>()?;
    m.add_class::<DeletedBackup>()?;
    Ok(())
}
