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
//!   catalog. A full window does not refill while the server runs: a live backup pushed out by a
//!   more recent deletion comes back at the next start, when the window is rebuilt.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
}

impl Window {
    fn remove(&mut self, key: &Key) -> Option<Series> {
        let s = self.series.remove(key)?;
        self.order.remove(&(s.recency_ms, key.0.clone(), key.1.clone()));
        Some(s)
    }

    /// Puts `s` in unless the window is full of more recent series; evicts the oldest.
    fn insert(&mut self, key: Key, s: Series, max: usize) {
        self.remove(&key);
        if max == 0 {
            return;
        }
        if self.series.len() >= max
            && self
                .order
                .first()
                .is_some_and(|(oldest, ..)| *oldest > s.recency_ms)
        {
            return;
        }
        self.order.insert((s.recency_ms, key.0.clone(), key.1.clone()));
        self.series.insert(key, s);
        while self.series.len() > max {
            let Some((_, org, id)) = self.order.pop_first() else {
                break;
            };
            self.series.remove(&(org, id));
        }
    }
}

/// The per-backup info series: a bounded window of the most recent backups and of the backups
/// deleted within the retention window.
#[derive(Debug)]
pub(crate) struct BackupInfo {
    max: usize,
    retention_ms: i64,
    window: Mutex<Window>,
}

impl BackupInfo {
    pub(crate) fn new(config: &TelemetryConfig) -> Self {
        let hours = i64::try_from(config.backup_info_retention_hours).unwrap_or(i64::MAX / 3_600_000);
        BackupInfo {
            max: config.backup_info_max_series,
            retention_ms: hours.saturating_mul(3_600_000),
            window: Mutex::new(Window::default()),
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
    /// are dropped first (from every org).
    pub(crate) fn family(&self, now_ms: i64, sees: &dyn Fn(&str) -> bool) -> Family<InfoLabels, Gauge> {
        let family = Family::<InfoLabels, Gauge>::default();
        let mut w = self.lock();
        let expired: Vec<Key> = w
            .series
            .iter()
            .filter(|(_, s)| s.status.is_none() && s.recency_ms + self.retention_ms <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &expired {
            w.remove(k);
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
        for org in orgs {
            if let Err(e) = self.backfill_org(store, org, now_ms).await {
                tracing::warn!(%org, error = %e, "cannot rebuild the org's backup info series from the catalog");
            }
        }
    }

    async fn backfill_org(&self, store: &Arc<dyn CatalogStore>, org: &str, now_ms: i64) -> Result<()> {
        let since = now_ms - self.retention_ms;
        let mut live = BTreeSet::new();
        let mut q = Query::org(org);
        let mut taken = 0;
        while taken < self.max {
            let page = store.list(Kind::Backup, &q).await?;
            for e in &page.items {
                live.insert(e.id.clone());
                if let Ok(b) = Catalog::decode::<BackupRecord>(e) {
                    self.written(&b.value);
                }
            }
            taken += page.items.len();
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        let mut q = Query {
            time_from_ms: Some(since),
            ..Query::org(org)
        };
        (q.sort_min, q.sort_max) = DeletedBackup::sort_range(Some(since), None);
        let mut taken = 0;
        while taken < self.max {
            let page = store.list(Kind::DeletedBackup, &q).await?;
            for e in page.items.iter().filter(|e| !live.contains(&e.id)) {
                if let Ok(d) = Catalog::decode::<DeletedBackup>(e) {
                    self.removed(&d.value, now_ms);
                }
            }
            taken += page.items.len();
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        prune(&**store, org, since + 1, usize::MAX).await?;
        Ok(())
    }
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

#[async_trait]
impl CatalogStore for ObservedStore {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        let t = Instant::now();
        let r = self.inner.get(kind, org, id).await;
        self.observe("get", kind, t);
        r
    }

    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
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
        let r = self.inner.put(puts).await;
        self.observe("put", kind, t);
        if r.is_ok() {
            for b in &backups {
                self.info.written(b);
            }
        }
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
    r.register(
        "pxb_server_catalog_operation_duration_seconds",
        "Catalog operations by operation and record kind",
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

    #[test]
    fn no_series_at_all_with_a_max_of_zero() {
        let info = BackupInfo::new(&config(0));
        info.written(&b("o", "b1", 1, BackupPhase::Success));
        assert_eq!(info.len(), 0);
    }
}
