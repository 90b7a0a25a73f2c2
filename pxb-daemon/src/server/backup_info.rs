//! The per-backup info series (`pxb_server_backup_info`) and the catalog's latency
//! (`pxb_server_catalog_operation_duration_seconds`), both taken where every catalog call
//! passes: [`ObservedStore`], the decorator the server puts around its [`CatalogStore`].
//!
//! - Every write of a [`BackupRecord`] updates the backup's series in [`BackupInfo`], whichever
//!   path wrote it (API, visits, schedules, syncs, retention).
//! - Every removal of a backup record first writes a [`DeletedBackup`] (its labels, the phase it
//!   had, the deletion time), then removes the record: its series stays with
//!   `status="Deleted"` and `previous_status` for `telemetry.backupInfoRetentionHours`, and a
//!   restarted server rebuilds the same series from the catalog ([`BackupInfo::backfill`]).
//!   Deleted records past the window are removed from the catalog as deletions go on and at
//!   start, so they cost storage only for the window.
//! - Bounded: at most `telemetry.backupInfoMaxSeries` series, the most recent ones (live backups
//!   by creation time, deleted ones by deletion time); memory and scrape time do not grow with the
//!   catalog (the window also keeps one number per org: how recent the most recent backup is
//!   that it refused or pushed out).
//! - Refilled while the server runs: when a deleted backup's series expires, the backups that
//!   lost their place to more recent series come back. A scrape drops expired series but reads
//!   no catalog; [`ObservedStore::upkeep`] (a task, [`ObservedStore::upkeep_loop`]) drops them
//!   too and reads back, under the lock of the backup writes, newest first and only as many as
//!   the window has room for, the backups and deleted backups of the orgs that lost series. It
//!   runs when the next deleted series expires (rounds at least a second apart), at once when a
//!   scrape has left the window short, and at least every minute. While the window is short,
//!   a backup written that is no more recent than one that lost its place waits for the
//!   upkeep, so that it does not take a more recent one's place. The series are those a
//!   restart rebuilds, except between an expiry and the end of the upkeep's round after it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use pxb_core::catalog::records::{BackupPhase, BackupRecord, BackupView, DeletedBackup};
use pxb_core::catalog::{Catalog, CatalogStore, Entry, Kind, Page, Put, Query, Record};
use pxb_core::clock::{Clock, unix_ms};
use pxb_core::{Error, Result};
use pxb_telemetry::prometheus_client::metrics::family::Family;
use pxb_telemetry::prometheus_client::metrics::gauge::Gauge;
use pxb_telemetry::prometheus_client::metrics::histogram::Histogram;
use pxb_telemetry::prometheus_client::registry::Registry;

use super::config::TelemetryConfig;

/// The labels of one info series, in exposition order.
type InfoLabels = Vec<(&'static str, String)>;

/// What a series shows of one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Series {
    cluster: String,
    location: String,
    schedule: String,
    view: BackupView,
    /// The backup's phase, or `None` once deleted.
    status: Option<BackupPhase>,
    /// Of a deleted backup, the phase it had; of a backup being deleted, the phase before.
    previous: Option<BackupPhase>,
    /// Creation time for a live backup, deletion time for a deleted one (what "recent" means).
    recency_ms: i64,
}

impl Series {
    fn live(b: &BackupRecord) -> Self {
        Series {
            cluster: b.cluster_name.clone(),
            location: b.location_name.clone(),
            schedule: b.schedule.clone().unwrap_or_default(),
            view: b.view,
            status: Some(b.phase),
            previous: (b.phase == BackupPhase::Deleting)
                .then_some(b.previous_phase)
                .flatten(),
            recency_ms: b.created_ms,
        }
    }

    fn deleted(d: &DeletedBackup) -> Self {
        Series {
            cluster: d.cluster_name.clone(),
            location: d.location_name.clone(),
            schedule: d.schedule.clone().unwrap_or_default(),
            view: d.view,
            status: None,
            previous: Some(d.previous_phase),
            recency_ms: d.deleted_ms,
        }
    }

    fn labels(&self, org: &str, id: &str) -> InfoLabels {
        let mut l = vec![
            ("org", org.to_owned()),
            ("cluster", self.cluster.clone()),
            ("backup", id.to_owned()),
            ("location", self.location.clone()),
            ("schedule", self.schedule.clone()),
            ("view", self.view.as_str().to_owned()),
            (
                "status",
                self.status.map_or("Deleted", BackupPhase::as_str).to_owned(),
            ),
        ];
        if let Some(p) = self.previous {
            l.push(("previous_status", p.as_str().to_owned()));
        }
        l
    }
}

type Key = (String, String);

#[derive(Debug, Default)]
struct Window {
    series: HashMap<Key, Series>,
    /// `(recency, org, id)` of every series, oldest first: what goes when the window is full.
    order: BTreeSet<(i64, String, String)>,
    /// Per org, a bound on the recency of its backups that have a series to show (live, or
    /// deleted within the retention window) but are not in the window: none is more recent.
    /// An org without one has all of them in the window. One number per org: the window
    /// learns of these when it refuses or evicts a series, or when the rebuild at start does
    /// not read all of an org; [`ObservedStore::upkeep`] reads them back when the window has
    /// room again.
    outside: HashMap<String, i64>,
}

impl Window {
    fn remove(&mut self, key: &Key) -> Option<Series> {
        let s = self.series.remove(key)?;
        self.order.remove(&(s.recency_ms, key.0.clone(), key.1.clone()));
        Some(s)
    }

    fn note_outside(&mut self, org: &str, recency_ms: i64) {
        match self.outside.get_mut(org) {
            Some(b) => *b = (*b).max(recency_ms),
            None => {
                self.outside.insert(org.to_owned(), recency_ms);
            }
        }
    }

    /// Whether the window has room and backups it does not hold: the upkeep's work.
    fn short(&self, max: usize) -> bool {
        self.series.len() < max && !self.outside.is_empty()
    }

    /// Puts `s` in unless the window is full of more recent series, or has room but is short
    /// of a backup at least as recent (that one comes back first, with the upkeep); evicts the
    /// oldest. A series already in the window stays when only its status changes.
    fn insert(&mut self, key: Key, s: Series, max: usize) {
        if self
            .series
            .get(&key)
            .is_some_and(|have| have.recency_ms == s.recency_ms)
        {
            self.series.insert(key, s);
            return;
        }
        self.remove(&key);
        if max == 0 {
            return;
        }
        let refused = if self.series.len() >= max {
            self.order
                .first()
                .is_some_and(|(oldest, ..)| *oldest > s.recency_ms)
        } else {
            self.outside.values().any(|b| *b >= s.recency_ms)
        };
        if refused {
            self.note_outside(&key.0, s.recency_ms);
            return;
        }
        self.order.insert((s.recency_ms, key.0.clone(), key.1.clone()));
        self.series.insert(key, s);
        while self.series.len() > max {
            let Some((recency, org, id)) = self.order.pop_first() else {
                break;
            };
            self.series.remove(&(org.clone(), id));
            self.note_outside(&org, recency);
        }
    }

    /// Drops the deleted backups' series past the retention window; whether any went.
    fn expire(&mut self, now_ms: i64, retention_ms: i64) -> bool {
        let expired: Vec<Key> = self
            .series
            .iter()
            .filter(|(_, s)| s.status.is_none() && s.recency_ms + retention_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            self.remove(k);
        }
        !expired.is_empty()
    }

    /// When the next deleted backup's series expires, ms since the epoch.
    fn next_expiry(&self, retention_ms: i64) -> Option<i64> {
        self.series
            .values()
            .filter(|s| s.status.is_none())
            .map(|s| s.recency_ms.saturating_add(retention_ms))
            .min()
    }
}

/// The per-backup info series: a bounded window of the most recent backups and of the backups
/// deleted within the retention window.
#[derive(Debug)]
pub(crate) struct BackupInfo {
    max: usize,
    retention_ms: i64,
    window: Mutex<Window>,
    /// Wakes the upkeep when a scrape dropped expired series from a short window.
    short: tokio::sync::Notify,
}

impl BackupInfo {
    pub(crate) fn new(config: &TelemetryConfig) -> Self {
        let hours = i64::try_from(config.backup_info_retention_hours).unwrap_or(i64::MAX / 3_600_000);
        BackupInfo {
            max: config.backup_info_max_series,
            retention_ms: hours.saturating_mul(3_600_000),
            window: Mutex::new(Window::default()),
            short: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A backup record was written.
    fn written(&self, b: &BackupRecord) {
        self.lock()
            .insert((b.org.clone(), b.id.clone()), Series::live(b), self.max);
    }

    /// A backup record was removed; `d` is what is kept of it.
    fn removed(&self, d: &DeletedBackup, now_ms: i64) {
        let key = (d.org.clone(), d.id.clone());
        let mut w = self.lock();
        w.remove(&key);
        if d.deleted_ms + self.retention_ms > now_ms {
            w.insert(key, Series::deleted(d), self.max);
        }
    }

    /// The series at `now_ms` of the orgs `sees` lets through: deleted backups past the window
    /// are dropped first (from every org), and if that leaves the window short, the upkeep is
    /// woken to read the backups that lost their place back (a scrape reads no catalog).
    pub(crate) fn family(&self, now_ms: i64, sees: &dyn Fn(&str) -> bool) -> Family<InfoLabels, Gauge> {
        let family = Family::<InfoLabels, Gauge>::default();
        let mut w = self.lock();
        if w.expire(now_ms, self.retention_ms) && w.short(self.max) {
            self.short.notify_one();
        }
        for ((org, id), s) in w.series.iter().filter(|((org, _), _)| sees(org)) {
            family.get_or_create(&s.labels(org, id)).set(1);
        }
        family
    }

    /// How many series the window holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().series.len()
    }

    /// Rebuilds the window of `orgs` from the catalog (at start): their most recent backups and
    /// the backups deleted within the retention window; removes deleted-backup records past it.
    /// A record that does not decode is skipped (its backup has no series), and an org whose
    /// records cannot be read is logged and skipped: the others still get their series.
    pub(crate) async fn backfill(&self, store: &Arc<dyn CatalogStore>, orgs: &[String], now_ms: i64) {
        if self.max == 0 {
            return;
        }
        let mut unread = Vec::new();
        for org in orgs {
            match self.backfill_org(store, org, now_ms).await {
                Ok(Some(bound)) => unread.push((org, bound)),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%org, error = %e, "cannot rebuild the org's backup info series from the catalog");
                }
            }
        }
        // Noted once every org is in, so that one org's bound does not refuse another's series.
        let mut w = self.lock();
        for (org, bound) in unread {
            w.note_outside(org, bound);
        }
    }

    /// Reads `org`'s series into the window; returns a bound on the recency of the org's
    /// backups it did not read (`None`: it read them all).
    async fn backfill_org(
        &self,
        store: &Arc<dyn CatalogStore>,
        org: &str,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let since = now_ms - self.retention_ms;
        let mut live = BTreeSet::new();
        let mut unread = None;
        let mut q = Query::org(org);
        let mut taken = 0;
        loop {
            let page = store.list(Kind::Backup, &q).await?;
            for e in &page.items {
                live.insert(e.id.clone());
                if let Ok(b) = Catalog::decode::<BackupRecord>(e) {
                    self.written(&b.value);
                }
            }
            taken += page.items.len();
            match page.next {
                Some(n) if taken < self.max => q.after = Some(n),
                // The rest are no more recent than the last one read.
                Some(_) => {
                    unread = Some(last_time(&page.items));
                    break;
                }
                None => break,
            }
        }
        let mut q = Query {
            time_from_ms: Some(since),
            ..Query::org(org)
        };
        (q.sort_min, q.sort_max) = DeletedBackup::sort_range(Some(since), None);
        let mut taken = 0;
        loop {
            let page = store.list(Kind::DeletedBackup, &q).await?;
            for e in page.items.iter().filter(|e| !live.contains(&e.id)) {
                if let Ok(d) = Catalog::decode::<DeletedBackup>(e) {
                    self.removed(&d.value, now_ms);
                }
            }
            taken += page.items.len();
            match page.next {
                Some(n) if taken < self.max => q.after = Some(n),
                Some(_) => {
                    unread = unread.max(Some(last_time(&page.items)));
                    break;
                }
                None => break,
            }
        }
        prune(&**store, org, since + 1, usize::MAX).await?;
        Ok(unread)
    }
}

/// The indexed time of the last of `items` (the oldest, in a newest-first list).
fn last_time(items: &[Entry]) -> i64 {
    items.last().and_then(|e| e.index.time_ms).unwrap_or(i64::MAX)
}

/// Removes up to `at_most` of `org`'s deleted-backup records from before `before_ms`.
async fn prune(store: &dyn CatalogStore, org: &str, before_ms: i64, at_most: usize) -> Result<usize> {
    let mut q = Query {
        time_to_ms: Some(before_ms),
        ..Query::org(org)
    };
    (q.sort_min, q.sort_max) = DeletedBackup::sort_range(None, Some(before_ms));
    let mut n = 0;
    while n < at_most {
        // Deleting what was listed moves the remaining records to the first page again.
        q.limit = (at_most - n).min(pxb_core::catalog::MAX_PAGE);
        let page = store.list(Kind::DeletedBackup, &q).await?;
        if page.items.is_empty() {
            break;
        }
        for e in &page.items {
            store.delete(Kind::DeletedBackup, org, &e.id, None).await?;
            n += 1;
        }
        if page.next.is_none() {
            break;
        }
    }
    Ok(n)
}

/// The catalog operation latency histogram's labels: operation and record kind.
type LatencyLabels = [(&'static str, &'static str); 2];

fn latency_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(pxb_telemetry::prometheus_client::metrics::histogram::exponential_buckets(0.0001, 4.0, 9))
}

/// The longest the upkeep of the backup info window waits between two rounds.
const UPKEEP_EVERY: Duration = Duration::from_secs(60);

/// The server's catalog store: the configured store, with the backup info series kept up to
/// date and every call timed.
#[derive(Debug)]
pub(crate) struct ObservedStore {
    inner: Arc<dyn CatalogStore>,
    info: Arc<BackupInfo>,
    clock: Arc<dyn Clock>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// Held around each write and each removal of backup records together with the window's
    /// update, so that a late update cannot bring back the series of a backup deleted meanwhile
    /// and two removals of one backup cannot drop each other's deleted-backup record. (The
    /// catalog serialises its writes anyway.)
    backup_writes: tokio::sync::Mutex<()>,
}

impl ObservedStore {
    pub(crate) fn new(inner: Arc<dyn CatalogStore>, info: Arc<BackupInfo>, clock: Arc<dyn Clock>) -> Self {
        ObservedStore {
            inner,
            info,
            clock,
            latency: Family::new_with_constructor(latency_histogram),
            backup_writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The latency family, to register at a scrape.
    pub(crate) fn latency(&self) -> Family<LatencyLabels, Histogram, fn() -> Histogram> {
        self.latency.clone()
    }

    fn observe(&self, op: &'static str, kind: Kind, started: Instant) {
        self.latency
            .get_or_create(&[("operation", op), ("kind", kind.as_str())])
            .observe(started.elapsed().as_secs_f64());
    }

    fn now_ms(&self) -> i64 {
        unix_ms(self.clock.now())
    }

    /// Runs [`ObservedStore::upkeep`] for as long as the server runs: when the next deleted
    /// backup's series expires (at most [`UPKEEP_EVERY`] later, at least a second), and at once
    /// when a scrape has dropped expired series from a short window.
    pub(crate) async fn upkeep_loop(self: Arc<Self>) {
        if self.info.max == 0 {
            return;
        }
        loop {
            self.upkeep().await;
            let next = self.info.lock().next_expiry(self.info.retention_ms);
            let wait = next.map_or(UPKEEP_EVERY, |at| {
                let ms = u64::try_from(at.saturating_sub(self.now_ms())).unwrap_or(0);
                Duration::from_millis(ms).clamp(Duration::from_secs(1), UPKEEP_EVERY)
            });
            let _ = tokio::time::timeout(wait, self.info.short.notified()).await;
        }
    }

    /// Drops the deleted backups' series past the retention window and, if the window is short
    /// (it has room and there are backups with a series to show that it does not hold), reads
    /// the most recent of those back from the catalog: per org whose backups lost their place,
    /// the backups and the deleted-backup records (within the retention window) no more recent
    /// than what was lost, newest first, as many as the window has room for (and the ones
    /// created in the same millisecond as the last). The window then holds what a rebuild at
    /// start would. Holds the lock of the backup writes, so no write is missed meanwhile.
    pub(crate) async fn upkeep(&self) {
        let _serial = self.backup_writes.lock().await;
        let now_ms = self.now_ms();
        let max = self.info.max;
        let (free, lost) = {
            let mut w = self.info.lock();
            w.expire(now_ms, self.info.retention_ms);
            if !w.short(max) {
                return;
            }
            let lost: Vec<(String, i64)> = w.outside.iter().map(|(o, b)| (o.clone(), *b)).collect();
            (max - w.series.len(), lost)
        };
        // The `free` most recent found, over all orgs, ordered as the window orders them.
        let mut best: BTreeMap<(i64, String, String), Series> = BTreeMap::new();
        let mut read = Vec::new();
        let mut still_outside: Vec<(String, i64)> = Vec::new();
        for (org, bound) in lost {
            let found = match self.outside_of(&org, bound, free, now_ms).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(%org, error = %e, "cannot read the org's backup info series back from the catalog");
                    continue;
                }
            };
            let (series, unread) = found;
            still_outside.extend(unread.map(|b| (org.clone(), b)));
            for (id, s) in series {
                best.insert((s.recency_ms, org.clone(), id), s);
                while best.len() > free {
                    let Some(((recency, org, _), _)) = best.pop_first() else {
                        break;
                    };
                    still_outside.push((org, recency));
                }
            }
            read.push(org);
        }
        let mut w = self.info.lock();
        for org in &read {
            w.outside.remove(org);
        }
        for ((_, org, id), s) in best {
            w.insert((org, id), s, max);
        }
        for (org, bound) in still_outside {
            w.note_outside(&org, bound);
        }
    }

    /// Of `org`'s backups no more recent than `bound` that have a series to show and are not in
    /// the window, the `n` most recent live ones and the `n` most recent deleted ones (deleted
    /// within the retention window, and not live again), with a bound on the rest (`None`:
    /// there are none).
    async fn outside_of(
        &self,
        org: &str,
        bound: i64,
        n: usize,
        now_ms: i64,
    ) -> Result<(Vec<(String, Series)>, Option<i64>)> {
        let to = Some(bound.saturating_add(1));
        let mut q = Query {
            time_to_ms: to,
            ..Query::org(org)
        };
        (q.sort_min, q.sort_max) = BackupRecord::sort_range(None, to);
        let (mut found, unread_live) = self.newest_outside(Kind::Backup, q, n, now_ms).await?;
        let from = Some(now_ms - self.info.retention_ms + 1);
        let mut q = Query {
            time_from_ms: from,
            time_to_ms: to,
            ..Query::org(org)
        };
        (q.sort_min, q.sort_max) = DeletedBackup::sort_range(from, to);
        let (deleted, unread_deleted) = self.newest_outside(Kind::DeletedBackup, q, n, now_ms).await?;
        found.extend(deleted);
        Ok((found, unread_live.max(unread_deleted)))
    }

    /// The `n` most recent records `q` lists (newest first), and any as recent as the last of
    /// them, that have a series to show and are not in the window; with a bound on the recency
    /// of the rest (`None`: there are none). Reads about `n` records (more only for records
    /// of the same time, or that do not decode).
    async fn newest_outside(
        &self,
        kind: Kind,
        mut q: Query,
        n: usize,
        now_ms: i64,
    ) -> Result<(Vec<(String, Series)>, Option<i64>)> {
        let mut found: Vec<(String, Series)> = Vec::new();
        let mut last = i64::MAX;
        loop {
            // One more than needed, to see whether the rest are older.
            q.limit = (n.saturating_sub(found.len()) + 1).min(pxb_core::catalog::MAX_PAGE);
            let page = self.inner.list(kind, &q).await?;
            for e in &page.items {
                let time = e.index.time_ms.unwrap_or(i64::MAX);
                if found.len() >= n && time < last {
                    return Ok((found, Some(time)));
                }
                let shown = self
                    .info
                    .lock()
                    .series
                    .contains_key(&(e.org.clone(), e.id.clone()));
                if shown {
                    continue;
                }
                if let Some(s) = self.series_of(kind, e, now_ms).await? {
                    last = time;
                    found.push((e.id.clone(), s));
                }
            }
            match page.next {
                Some(c) => q.after = Some(c),
                None => return Ok((found, None)),
            }
        }
    }

    /// The series of a backup record or a deleted-backup record, if it has one now: `None` for
    /// a record that does not decode, a deletion past the retention window, or a deleted backup
    /// whose id has a live record again (that record's series counts).
    async fn series_of(&self, kind: Kind, e: &Entry, now_ms: i64) -> Result<Option<Series>> {
        if kind == Kind::Backup {
            return Ok(Catalog::decode::<BackupRecord>(e)
                .ok()
                .map(|b| Series::live(&b.value)));
        }
        let Ok(d) = Catalog::decode::<DeletedBackup>(e) else {
            return Ok(None);
        };
        if d.value.deleted_ms + self.info.retention_ms <= now_ms {
            return Ok(None);
        }
        match self.inner.get(Kind::Backup, &e.org, &e.id).await {
            Ok(_) => Ok(None),
            Err(Error::NotFound { .. }) => Ok(Some(Series::deleted(&d.value))),
            Err(e) => Err(e),
        }
    }

    /// Removes a backup record, keeping what its deleted series needs first.
    async fn delete_backup(&self, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        let entry = match self.inner.get(Kind::Backup, org, id).await {
            Ok(e) => e,
            Err(Error::NotFound { .. }) => return self.inner.delete(Kind::Backup, org, id, expect).await,
            Err(e) => return Err(e),
        };
        let record = match Catalog::decode::<BackupRecord>(&entry) {
            Ok(v) => v.value,
            // A record that does not decode can still be removed; it has no series.
            Err(_) => return self.inner.delete(Kind::Backup, org, id, expect).await,
        };
        let now_ms = self.now_ms();
        let kept = DeletedBackup::of(&record, now_ms);
        let keep = self.info.max > 0 && expect.is_none_or(|e| e == entry.revision);
        if keep {
            self.inner.put(vec![Catalog::put_of(&kept, None)?]).await?;
        }
        let removed = self.inner.delete(Kind::Backup, org, id, expect).await;
        match removed {
            // `false`: removed meanwhile by someone else; it is gone all the same.
            Ok(_) if keep => {
                self.info.removed(&kept, now_ms);
                let since = now_ms - self.info.retention_ms;
                if let Err(e) = prune(&*self.inner, org, since + 1, 100).await {
                    tracing::warn!(%org, error = %e, "cannot remove expired deleted-backup records");
                }
            }
            Ok(_) => {}
            _ if keep => {
                let _ = self.inner.delete(Kind::DeletedBackup, org, id, None).await;
            }
            _ => {}
        }
        removed
    }
}

impl ObservedStore {
    /// A put (guarded by `guard`, if given), timed; the backups it writes enter the info series.
    /// Writes of backups go one at a time, so the series follow the catalog's order.
    async fn observed_put(
        &self,
        guard: Option<&pxb_core::catalog::Guard>,
        puts: Vec<Put>,
    ) -> Result<Vec<u64>> {
        let t = Instant::now();
        let backups: Vec<BackupRecord> = puts
            .iter()
            .filter(|p| p.kind == Kind::Backup)
            .filter_map(|p| serde_json::from_slice(&p.doc).ok())
            .collect();
        let kind = puts.first().map_or(Kind::Backup, |p| p.kind);
        let _serial = if puts.iter().any(|p| p.kind == Kind::Backup) {
            Some(self.backup_writes.lock().await)
        } else {
            None
        };
        let r = match guard {
            Some(g) => self.inner.put_guarded(g, puts).await,
            None => self.inner.put(puts).await,
        };
        self.observe("put", kind, t);
        if r.is_ok() {
            for b in &backups {
                self.info.written(b);
            }
        }
        r
    }
}

#[async_trait]
impl CatalogStore for ObservedStore {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        let t = Instant::now();
        let r = self.inner.get(kind, org, id).await;
        self.observe("get", kind, t);
        r
    }

    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
        self.observed_put(None, puts).await
    }

    async fn put_guarded(&self, guard: &pxb_core::catalog::Guard, puts: Vec<Put>) -> Result<Vec<u64>> {
        self.observed_put(Some(guard), puts).await
    }

    /// Passed on as it is: the server's own deletes go through [`CatalogStore::delete`] (which a
    /// replica's fenced store below this one guards), so a guarded delete here keeps no series
    /// of a deleted backup.
    async fn delete_guarded(
        &self,
        guard: &pxb_core::catalog::Guard,
        kind: Kind,
        org: &str,
        id: &str,
        expect: Option<u64>,
    ) -> Result<bool> {
        let t = Instant::now();
        let r = self.inner.delete_guarded(guard, kind, org, id, expect).await;
        self.observe("delete", kind, t);
        r
    }

    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        let t = Instant::now();
        let r = if kind == Kind::Backup {
            let _serial = self.backup_writes.lock().await;
            self.delete_backup(org, id, expect).await
        } else {
            self.inner.delete(kind, org, id, expect).await
        };
        self.observe("delete", kind, t);
        r
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        let t = Instant::now();
        let r = self.inner.list(kind, query).await;
        self.observe("list", kind, t);
        r
    }

    async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
        let t = Instant::now();
        let r = self.inner.count(kind, query).await;
        self.observe("count", kind, t);
        r
    }
}

/// Registers the backup info series and the catalog latency in `r`.
pub(crate) fn register(
    r: &mut Registry,
    info: &BackupInfo,
    store: &ObservedStore,
    now_ms: i64,
    sees: &dyn Fn(&str) -> bool,
) {
    r.register(
        "pxb_server_backup_info",
        "One series per recent backup with its status; a deleted backup's stays with status Deleted and its previous_status for telemetry.backupInfoRetentionHours",
        info.family(now_ms, sees),
    );
    r.register_with_unit(
        "pxb_server_catalog_operation_duration",
        "Catalog operations by operation and record kind",
        pxb_telemetry::prometheus_client::registry::Unit::Seconds,
        store.latency(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(org: &str, id: &str, created_ms: i64, phase: BackupPhase) -> BackupRecord {
        BackupRecord {
            org: org.into(),
            id: id.into(),
            cluster: "c1".into(),
            cluster_name: "shoot-1".into(),
            location: "l1".into(),
            location_name: "loc".into(),
            phase,
            created_ms,
            ..BackupRecord::default()
        }
    }

    fn config(max: usize) -> TelemetryConfig {
        TelemetryConfig {
            backup_info_retention_hours: 1,
            backup_info_max_series: max,
            ..TelemetryConfig::default()
        }
    }

    fn ids(info: &BackupInfo, now_ms: i64) -> Vec<String> {
        let _ = info.family(now_ms, &|_| true);
        let mut v: Vec<String> = info.lock().series.keys().map(|k| k.1.clone()).collect();
        v.sort();
        v
    }

    #[test]
    fn the_window_keeps_the_most_recent_backups() {
        let info = BackupInfo::new(&config(3));
        for i in [5, 1, 4, 2, 3] {
            info.written(&b("o", &format!("b{i}"), i, BackupPhase::Success));
        }
        assert_eq!(ids(&info, 10), ["b3", "b4", "b5"]);
        // An old backup's update does not push a recent one out.
        info.written(&b("o", "b1", 1, BackupPhase::Failed));
        assert_eq!(ids(&info, 10), ["b3", "b4", "b5"]);
        // Updating one inside the window keeps the count.
        info.written(&b("o", "b4", 4, BackupPhase::Failed));
        assert_eq!(info.len(), 3);
    }

    #[test]
    fn a_deleted_backup_stays_for_the_window_then_goes() {
        let info = BackupInfo::new(&config(10));
        let mut rec = b("o", "b1", 1, BackupPhase::Deleting);
        rec.previous_phase = Some(BackupPhase::PartialSuccess);
        info.written(&rec);
        let d = DeletedBackup::of(&rec, 1_000);
        assert_eq!(d.previous_phase, BackupPhase::PartialSuccess);
        info.removed(&d, 1_000);
        let hour = 3_600_000;
        assert_eq!(ids(&info, 1_000 + hour - 1), ["b1"]);
        assert_eq!(ids(&info, 1_000 + hour), Vec::<String>::new());
    }

    /// The decorator is a catalog like any other: the catalog seam's suite passes through it,
    /// with a window small enough that it refuses and evicts while the suite writes.
    #[tokio::test]
    async fn the_observed_store_passes_the_catalog_suite() {
        for max in [0, 2, 10_000] {
            let (_, _, store) = observed(max);
            pxb_core::catalog::conformance::run_all(&store).await;
        }
    }

    fn observed(
        max: usize,
    ) -> (
        Arc<pxb_core::catalog::MemoryCatalog>,
        Arc<BackupInfo>,
        ObservedStore,
    ) {
        let raw = Arc::new(pxb_core::catalog::MemoryCatalog::new());
        let info = Arc::new(BackupInfo::new(&config(max)));
        let clock = pxb_core::ManualClock::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000));
        let store = ObservedStore::new(raw.clone(), info.clone(), Arc::new(clock));
        (raw, info, store)
    }

    #[tokio::test]
    async fn a_record_that_does_not_decode_costs_only_its_own_series() {
        let (raw, _, store) = observed(10);
        let c = Catalog::new(Arc::new(store));
        for (org, id) in [("a", "a1"), ("a", "bad"), ("b", "b1")] {
            c.put(&b(org, id, 1, BackupPhase::Success), None)
                .await
                .expect("put");
        }
        c.delete::<BackupRecord>("a", "a1").await.expect("delete");
        assert!(raw.corrupt(Kind::Backup, "a", "bad", b"{"));
        let fresh = BackupInfo::new(&config(10));
        let raw: Arc<dyn CatalogStore> = raw;
        fresh.backfill(&raw, &["a".into(), "b".into()], 2000).await;
        assert_eq!(
            ids(&fresh, 2000),
            ["a1", "b1"],
            "the deleted a1 and b's b1 survive a bad record"
        );
    }

    #[tokio::test]
    async fn two_removals_of_one_backup_keep_its_deleted_record() {
        let (raw, info, store) = observed(10);
        let store = Arc::new(store);
        let c = Catalog::new(store.clone());
        c.put(&b("a", "b1", 1, BackupPhase::Success), None)
            .await
            .expect("put");
        let (x, y) = tokio::join!(
            store.delete(Kind::Backup, "a", "b1", None),
            store.delete(Kind::Backup, "a", "b1", None)
        );
        assert_eq!([x.expect("x"), y.expect("y")].iter().filter(|r| **r).count(), 1);
        assert_eq!(
            raw.count(Kind::DeletedBackup, &Query::org("a"))
                .await
                .expect("count"),
            1
        );
        let fresh = BackupInfo::new(&config(10));
        let raw: Arc<dyn CatalogStore> = raw;
        fresh.backfill(&raw, &["a".into()], 2000).await;
        assert_eq!(ids(&fresh, 2000), ids(&info, 2000));
        assert_eq!(ids(&fresh, 2000), ["b1"]);
    }

    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

    /// The server's store over a memory catalog, on a clock the test moves, with what it needs.
    struct Twin {
        raw: Arc<pxb_core::catalog::MemoryCatalog>,
        info: Arc<BackupInfo>,
        store: Arc<ObservedStore>,
        catalog: Catalog,
        clock: pxb_core::ManualClock,
        max: usize,
    }

    impl Twin {
        fn new(max: usize) -> Self {
            Self::over(Arc::new(pxb_core::catalog::MemoryCatalog::new()), max)
        }

        fn over(raw: Arc<pxb_core::catalog::MemoryCatalog>, max: usize) -> Self {
            let info = Arc::new(BackupInfo::new(&config(max)));
            // A time of today's order: creation times hours before it are still positive, as
            // the catalog's newest-first order needs.
            let clock = pxb_core::ManualClock::new(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
            );
            let store = Arc::new(ObservedStore::new(
                raw.clone(),
                info.clone(),
                Arc::new(clock.clone()),
            ));
            let catalog = Catalog::new(store.clone());
            Twin {
                raw,
                info,
                store,
                catalog,
                clock,
                max,
            }
        }

        fn now_ms(&self) -> i64 {
            unix_ms(self.clock.now())
        }

        async fn create(&self, org: &str, id: &str, created_ms: i64) {
            self.catalog
                .put(&b(org, id, created_ms, BackupPhase::Success), None)
                .await
                .expect("put");
        }

        async fn delete(&self, org: &str, id: &str) {
            assert!(
                self.catalog
                    .delete::<BackupRecord>(org, id)
                    .await
                    .expect("delete"),
                "{org}/{id} was there"
            );
        }

        /// The series a scrape shows now, by key.
        fn shown(&self) -> std::collections::BTreeMap<Key, Series> {
            let now_ms = self.now_ms();
            let _ = self.info.family(now_ms, &|_| true);
            self.info
                .lock()
                .series
                .iter()
                .map(|(k, s)| (k.clone(), s.clone()))
                .collect()
        }

        /// The series a server restarted now on the same catalog shows.
        async fn after_restart(&self, orgs: &[&str]) -> std::collections::BTreeMap<Key, Series> {
            let fresh = Twin::over(self.raw.clone(), self.max);
            fresh.clock.set(self.clock.now());
            let raw: Arc<dyn CatalogStore> = self.raw.clone();
            let orgs: Vec<String> = orgs.iter().map(|o| (*o).to_owned()).collect();
            fresh.info.backfill(&raw, &orgs, self.now_ms()).await;
            fresh.shown()
        }

        /// The ids (with the status) shown now, sorted.
        fn ids(&self) -> Vec<String> {
            self.shown()
                .iter()
                .map(|((_, id), s)| format!("{id}:{}", s.status.map_or("Deleted", BackupPhase::as_str)))
                .collect()
        }
    }

    #[tokio::test]
    async fn a_live_series_pushed_out_by_a_deletion_comes_back_when_the_deleted_one_goes() {
        let t = Twin::new(2);
        for (id, created) in [("b1", 1), ("b2", 2), ("b3", 3)] {
            t.create("o", id, created).await;
        }
        assert_eq!(t.ids(), ["b2:Success", "b3:Success"]);
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
        // b1's Deleted series is the most recent one: it pushes b2 out.
        t.delete("o", "b1").await;
        assert_eq!(t.ids(), ["b1:Deleted", "b3:Success"]);
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
        t.clock.advance(HOUR);
        t.store.upkeep().await;
        assert_eq!(t.ids(), ["b2:Success", "b3:Success"], "b2 is back");
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
    }

    #[tokio::test]
    async fn a_refused_backup_comes_back_when_a_deleted_one_goes() {
        let t = Twin::new(2);
        for (id, created) in [("b1", 1), ("b2", 2), ("b3", 3)] {
            t.create("o", id, created).await;
        }
        t.delete("o", "b3").await;
        assert_eq!(t.ids(), ["b2:Success", "b3:Deleted"]);
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
        t.clock.advance(HOUR - std::time::Duration::from_millis(1));
        t.store.upkeep().await;
        assert_eq!(
            t.ids(),
            ["b2:Success", "b3:Deleted"],
            "not before the window ends"
        );
        t.clock.advance(std::time::Duration::from_millis(1));
        t.store.upkeep().await;
        assert_eq!(
            t.ids(),
            ["b1:Success", "b2:Success"],
            "b1, refused at first, is back"
        );
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
    }

    #[tokio::test]
    async fn an_older_backup_written_while_the_window_is_short_does_not_take_a_newer_ones_place() {
        let t = Twin::new(2);
        for (id, created) in [("b1", 1), ("b2", 2), ("b3", 3)] {
            t.create("o", id, created).await;
        }
        t.delete("o", "b3").await;
        t.clock.advance(HOUR);
        // The scrape drops b3's series; before the refill, an import writes an older backup.
        assert_eq!(t.ids(), ["b2:Success"]);
        t.create("o", "b0", 0).await;
        t.store.upkeep().await;
        assert_eq!(t.ids(), ["b1:Success", "b2:Success"]);
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
    }

    #[tokio::test]
    async fn backups_created_in_the_same_millisecond_come_back_as_a_restart_has_them() {
        let t = Twin::new(2);
        for id in ["b1", "b2", "b3", "b4"] {
            t.create("o", id, 7).await;
        }
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
        let kept: Vec<String> = t.shown().keys().map(|k| k.1.clone()).collect();
        t.delete("o", &kept[1]).await;
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
        t.clock.advance(HOUR);
        t.store.upkeep().await;
        assert_eq!(t.shown(), t.after_restart(&["o"]).await);
        assert_eq!(t.info.len(), 2);
    }

    /// A deterministic random walk over two orgs: backups created (at any time, as imports are),
    /// updated and deleted, the clock moving, the upkeep running now and then. While no
    /// deleted series has expired since the last upkeep, and after every upkeep, the series are
    /// those a restart would show; never more than the maximum.
    #[tokio::test]
    async fn while_no_expiry_waits_for_the_upkeep_the_series_are_those_a_restart_shows() {
        for max in [1, 3, 5] {
            for seed in 1..=10_u64 {
                let t = Twin::new(max);
                let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut next = |n: usize| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    usize::try_from(rng % n as u64).expect("small")
                };
                let mut live: Vec<(String, String)> = Vec::new();
                let mut expiry_pending = false;
                for step in 0..150 {
                    match next(10) {
                        0..=3 => {
                            let org = ["a", "b"][next(2)];
                            let id = format!("{org}{step}");
                            let age = i64::try_from(next(4 * 3_600_000)).expect("small");
                            t.create(org, &id, t.now_ms() - age).await;
                            live.push((org.to_owned(), id));
                        }
                        4 if !live.is_empty() => {
                            let (org, id) = &live[next(live.len())];
                            let mut rec = t.catalog.get::<BackupRecord>(org, id).await.expect("get").value;
                            rec.phase = BackupPhase::Failed;
                            t.catalog.put(&rec, None).await.expect("update");
                        }
                        5..=6 if !live.is_empty() => {
                            let (org, id) = live.swap_remove(next(live.len()));
                            t.delete(&org, &id).await;
                        }
                        _ => {
                            t.clock
                                .advance(std::time::Duration::from_secs(next(1800) as u64 + 1));
                            expiry_pending = true;
                        }
                    }
                    if next(3) == 0 {
                        t.store.upkeep().await;
                        expiry_pending = false;
                    }
                    let shown = t.shown();
                    assert!(
                        shown.len() <= max,
                        "max {max} seed {seed} step {step}: {}",
                        shown.len()
                    );
                    if !expiry_pending {
                        assert_eq!(
                            shown,
                            t.after_restart(&["a", "b"]).await,
                            "max {max} seed {seed} step {step}"
                        );
                    }
                }
                t.store.upkeep().await;
                assert_eq!(
                    t.shown(),
                    t.after_restart(&["a", "b"]).await,
                    "max {max} seed {seed}"
                );
            }
        }
    }

    /// A store that counts the records lists return, by org.
    #[derive(Debug)]
    struct Counting {
        inner: pxb_core::catalog::MemoryCatalog,
        listed: Mutex<HashMap<String, usize>>,
    }

    #[async_trait]
    impl CatalogStore for Counting {
        async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
            self.inner.get(kind, org, id).await
        }
        async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
            self.inner.put(puts).await
        }
        async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
            self.inner.delete(kind, org, id, expect).await
        }
        async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
            let page = self.inner.list(kind, query).await?;
            *self
                .listed
                .lock()
                .expect("lock")
                .entry(query.org.clone().unwrap_or_default())
                .or_default() += page.items.len();
            Ok(page)
        }
        async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
            self.inner.count(kind, query).await
        }
    }

    #[tokio::test]
    async fn the_upkeep_reads_about_as_many_records_as_the_window_has_room_for() {
        let raw = Arc::new(Counting {
            inner: pxb_core::catalog::MemoryCatalog::new(),
            listed: Mutex::new(HashMap::new()),
        });
        let info = Arc::new(BackupInfo::new(&config(3)));
        let clock =
            pxb_core::ManualClock::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        let store = Arc::new(ObservedStore::new(
            raw.clone(),
            info.clone(),
            Arc::new(clock.clone()),
        ));
        let c = Catalog::new(store.clone());
        // Org a: 500 backups; org b: one, always in the window.
        for i in 1..=500 {
            c.put(&b("a", &format!("a{i:03}"), i, BackupPhase::Success), None)
                .await
                .expect("put");
        }
        c.put(&b("b", "b1", 10_000, BackupPhase::Success), None)
            .await
            .expect("put");
        assert_eq!(ids(&info, 0), ["a499", "a500", "b1"]);
        // Two deletions push a499 and a500 out; when their series expire, two come back.
        c.delete::<BackupRecord>("a", "a001").await.expect("delete");
        c.delete::<BackupRecord>("a", "a002").await.expect("delete");
        assert_eq!(ids(&info, unix_ms(clock.now())), ["a001", "a002", "b1"]);
        clock.advance(HOUR);
        raw.listed.lock().expect("lock").clear();
        store.upkeep().await;
        assert_eq!(ids(&info, unix_ms(clock.now())), ["a499", "a500", "b1"]);
        let listed = raw.listed.lock().expect("lock").clone();
        assert!(
            listed.get("a").is_some_and(|n| *n <= 3),
            "org a: the two to bring back and one to see that the rest are older: {listed:?}"
        );
        assert_eq!(listed.get("b"), None, "org b has all its series: {listed:?}");
        // Nothing to bring back: nothing read.
        raw.listed.lock().expect("lock").clear();
        store.upkeep().await;
        assert_eq!(*raw.listed.lock().expect("lock"), HashMap::new());
    }

    #[test]
    fn no_series_at_all_with_a_max_of_zero() {
        let info = BackupInfo::new(&config(0));
        info.written(&b("o", "b1", 1, BackupPhase::Success));
        assert_eq!(info.len(), 0);
    }
}
