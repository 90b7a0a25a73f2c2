//! Schedules across server restarts, driven by the clock seam (no sleeping): every slot fires
//! exactly once, a restart neither repeats nor skips one, an unreachable cluster gets a recorded
//! `Missed` backup, and retention keeps exactly the retain count.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pxb_core::ManualClock;
use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, ClusterRecord, ClusterSelector, ClusterState, ClusterStatus, LocationRecord,
    Org,
};
use pxb_core::catalog::{CatalogStore, Entry, Kind, Page, Put, Query};
use pxb_core::cluster::StaticClusters;
use pxb_core::schedule::{Every, SchedulePolicy};
use pxb_daemon::server::backups::ScheduleRequest;
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};
use pxb_daemon::server::seal::Sealer;
use pxb_daemon::server::sqlite::SqliteCatalog;
use pxb_daemon::server::{Server, ServerDeps, auth};

const ORG: &str = "tenant-a";

async fn server(path: &std::path::Path, clock: Arc<ManualClock>) -> Server {
    let catalog = Arc::new(SqliteCatalog::open(path).await.expect("catalog"));
    server_on(catalog, clock, None).await
}

async fn server_on(
    catalog: Arc<dyn CatalogStore>,
    clock: Arc<ManualClock>,
    sealer: Option<Sealer>,
) -> Server {
    let mut config = ServerConfig::from_yaml(DEFAULT_CONFIG_YAML).expect("config");
    // A server given a sealer runs in classic mode, as only a classic one holds credentials.
    if sealer.is_some() {
        config.mode = pxb_core::catalog::records::Mode::Classic;
    }
    Server::build(
        config,
        ServerDeps {
            catalog,
            clock,
            authenticator: Arc::new(auth::Authenticators(Vec::new())),
            sealer,
        },
    )
    .await
    .expect("server")
}

fn cluster(name: &str, state: ClusterState) -> ClusterRecord {
    ClusterRecord {
        org: ORG.into(),
        id: format!("id-{name}"),
        name: name.into(),
        source: "imported".into(),
        status: ClusterStatus {
            state,
            message: (state == ClusterState::Unreachable).then(|| "no answer within 20s".into()),
            ..ClusterStatus::default()
        },
        ..ClusterRecord::default()
    }
}

async fn org(server: &Server) {
    server
        .create_org(Org {
            id: ORG.into(),
            display_name: "Tenant A".into(),
            ..Org::default()
        })
        .await
        .expect("org");
}

/// A federated location `primary` on every cluster.
async fn location(server: &Server) {
    server
        .create_location(
            LocationRecord {
                org: ORG.into(),
                name: "primary".into(),
                provider: "azure".into(),
                account: Some("tenantastore".into()),
                container: "backups".into(),
                client_id: Some("00000000-0000-0000-0000-000000000001".into()),
                tenant_id: Some("00000000-0000-0000-0000-000000000002".into()),
                clusters: ClusterSelector {
                    all: true,
                    ..ClusterSelector::default()
                },
                ..LocationRecord::default()
            },
            None,
        )
        .await
        .expect("location");
}

async fn backups(server: &Server) -> Vec<BackupRecord> {
    let mut all = server
        .catalog()
        .list_all::<BackupRecord>(&Query::org(ORG))
        .await
        .expect("list");
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all
}

#[tokio::test]
async fn schedules_fire_once_per_slot_across_restarts_and_retention_keeps_the_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("catalog.db");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    let clock = Arc::new(ManualClock::new(t0));
    let minutes = |m: u64| Duration::from_secs(60 * m);

    let a = server(&db, clock.clone()).await;
    org(&a).await;
    let provider = Arc::new(StaticClusters::new());
    a.add_cluster(cluster("alpha", ClusterState::Ready), provider.clone())
        .await
        .expect("alpha");
    a.add_cluster(cluster("beta", ClusterState::Unreachable), provider.clone())
        .await
        .expect("beta");
    location(&a).await;
    let sched = a
        .create_schedule(
            ORG,
            &ScheduleRequest {
                name: "hourly".into(),
                policy: SchedulePolicy {
                    every: Every::Interval { minutes: 60 },
                    retain: 2,
                    time_zone: "UTC".into(),
                },
                clusters: ClusterSelector {
                    all: true,
                    ..ClusterSelector::default()
                },
                namespaces: vec!["shop".into()],
                location: "primary".into(),
                paused: false,
            },
        )
        .await
        .expect("schedule");
    let anchor = sched.created_ms;
    assert_eq!(sched.next_fire_ms, anchor + 3_600_000);

    // Not due yet.
    clock.advance(minutes(59));
    assert!(a.fire_due_schedules().await.is_empty());
    // Slot 1: alpha gets a backup, unreachable beta a recorded Missed one.
    clock.advance(minutes(1));
    let fired = a.fire_due_schedules().await;
    assert_eq!(fired.len(), 2, "{fired:#?}");
    let alpha = fired.iter().find(|b| b.cluster_name == "alpha").expect("alpha");
    let beta = fired.iter().find(|b| b.cluster_name == "beta").expect("beta");
    assert_eq!(alpha.phase, BackupPhase::Pending);
    assert_eq!(alpha.schedule.as_deref(), Some("hourly"));
    assert_eq!(beta.phase, BackupPhase::Missed);
    assert!(
        beta.message.as_deref().is_some_and(|m| m.contains("Unreachable")),
        "{beta:?}"
    );
    // The same instant again: nothing.
    assert!(a.fire_due_schedules().await.is_empty());
    drop(a);

    // Restart at the same instant: the slot is not repeated.
    let b = server(&db, clock.clone()).await;
    assert!(b.fire_due_schedules().await.is_empty());
    assert_eq!(backups(&b).await.len(), 2);
    clock.advance(minutes(30));
    assert!(b.fire_due_schedules().await.is_empty());
    clock.advance(minutes(30));
    let fired = b.fire_due_schedules().await;
    assert_eq!(fired.len(), 2, "slot 2 fires once after the restart");
    drop(b);

    // Down across three slots (180, 240 and 300 minutes): the restart fires once, for the latest,
    // and says how many it folded in; nothing is skipped silently and nothing bursts.
    clock.advance(minutes(210));
    let c = server(&db, clock.clone()).await;
    let fired = c.fire_due_schedules().await;
    assert_eq!(fired.len(), 2);
    let s = c.schedule(ORG, "hourly").expect("schedule");
    let run = s.last_run.clone().expect("run");
    assert_eq!(run.folded_slots, 2, "{run:?}");
    assert_eq!(run.started, 1);
    assert_eq!(run.missed, 1);
    assert_eq!(s.next_fire_ms, anchor + 6 * 3_600_000);
    let all = backups(&c).await;
    assert_eq!(all.len(), 6);
    let ids: std::collections::BTreeSet<&str> = all.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids.len(), 6, "one backup per cluster and slot");

    // The agent reports alpha's three backups successful; retention (2) deletes exactly the oldest.
    let mut alphas: Vec<BackupRecord> = all
        .iter()
        .filter(|b| b.cluster_name == "alpha")
        .cloned()
        .collect();
    assert_eq!(alphas.len(), 3);
    for b in &mut alphas {
        b.phase = BackupPhase::Success;
        b.backup_id = Some(format!("data-{}", b.id));
    }
    c.catalog().put_all(&alphas).await.expect("report");
    // (Written behind the running server's back, so it restarts to read them.)
    drop(c);
    let c = server(&db, clock.clone()).await;
    c.apply_retention(ORG, "hourly", "id-alpha").await;
    let after = backups(&c).await;
    let kept: Vec<&BackupRecord> = after
        .iter()
        .filter(|b| b.cluster_name == "alpha" && b.phase == BackupPhase::Success)
        .collect();
    assert_eq!(kept.len(), 2, "{after:#?}");
    alphas.sort_by_key(|b| b.created_ms);
    let oldest = after.iter().find(|b| b.id == alphas[0].id).expect("oldest");
    assert_eq!(oldest.phase, BackupPhase::Deleting, "the oldest is being deleted");
    // beta has no success: its Missed backups are all kept.
    assert_eq!(
        after
            .iter()
            .filter(|b| b.cluster_name == "beta" && b.phase == BackupPhase::Missed)
            .count(),
        3
    );
    // A retention pass more changes nothing.
    c.apply_retention(ORG, "hourly", "id-alpha").await;
    assert_eq!(backups(&c).await, after);
}

#[tokio::test]
async fn a_backup_whose_cluster_stops_reporting_stalls_after_the_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let s = server(&dir.path().join("catalog.db"), clock.clone()).await;
    org(&s).await;
    s.add_cluster(
        cluster("alpha", ClusterState::Ready),
        Arc::new(StaticClusters::new()),
    )
    .await
    .expect("alpha");
    location(&s).await;
    let made = s
        .create_backups(
            ORG,
            &pxb_daemon::server::backups::BackupRequest {
                clusters: ClusterSelector {
                    names: vec!["alpha".into()],
                    ..ClusterSelector::default()
                },
                namespaces: vec!["shop".into()],
                location: "primary".into(),
            },
        )
        .await
        .expect("backup");
    assert_eq!(made[0].phase, BackupPhase::Pending);
    let lease = Duration::from_secs(120);
    clock.advance(Duration::from_secs(119));
    assert_eq!(s.stall_silent_operations(lease).await, 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(s.stall_silent_operations(lease).await, 1);
    let b = s.backup(ORG, &made[0].id).await.expect("backup");
    assert_eq!(b.phase, BackupPhase::Stalled);
    assert!(
        b.message
            .as_deref()
            .is_some_and(|m| m.contains("no report from cluster alpha")),
        "{b:?}"
    );
    let stored = backups(&s).await;
    assert_eq!(
        stored[0].phase,
        BackupPhase::Stalled,
        "recorded in the catalog too"
    );
    // Nothing stalls twice.
    assert_eq!(s.stall_silent_operations(lease).await, 0);
}

type Hook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// A catalog that runs a hook once, just before the first write batch `trigger` picks: another
/// API call landing between a reader's read and its write.
struct Racing {
    inner: Arc<dyn CatalogStore>,
    trigger: fn(&[Put]) -> bool,
    hook: std::sync::Mutex<Option<Hook>>,
}

impl std::fmt::Debug for Racing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Racing")
    }
}

impl Racing {
    fn new(trigger: fn(&[Put]) -> bool) -> Arc<Self> {
        Arc::new(Racing {
            inner: Arc::new(pxb_core::catalog::MemoryCatalog::default()),
            trigger,
            hook: std::sync::Mutex::new(None),
        })
    }

    fn arm(&self, hook: Hook) {
        *self.hook.lock().expect("lock") = Some(hook);
    }
}

#[async_trait::async_trait]
impl CatalogStore for Racing {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> pxb_core::Result<Entry> {
        self.inner.get(kind, org, id).await
    }
    async fn put(&self, puts: Vec<Put>) -> pxb_core::Result<Vec<u64>> {
        let hook = if (self.trigger)(&puts) {
            self.hook.lock().expect("lock").take()
        } else {
            None
        };
        if let Some(h) = hook {
            h().await;
        }
        self.inner.put(puts).await
    }
    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> pxb_core::Result<bool> {
        self.inner.delete(kind, org, id, expect).await
    }
    async fn list(&self, kind: Kind, query: &Query) -> pxb_core::Result<Page<Entry>> {
        self.inner.list(kind, query).await
    }
    async fn count(&self, kind: Kind, query: &Query) -> pxb_core::Result<u64> {
        self.inner.count(kind, query).await
    }
}

/// A schedule's slot write: the schedule and its backups in one batch.
fn slot_write(puts: &[Put]) -> bool {
    puts.iter().any(|p| p.kind == Kind::Schedule) && puts.iter().any(|p| p.kind == Kind::Backup)
}

async fn racing_schedule(racing: &Arc<Racing>, clock: &Arc<ManualClock>) -> Server {
    let s = server_on(racing.clone(), clock.clone(), None).await;
    org(&s).await;
    s.add_cluster(
        cluster("alpha", ClusterState::Ready),
        Arc::new(StaticClusters::new()),
    )
    .await
    .expect("alpha");
    location(&s).await;
    s.create_schedule(
        ORG,
        &ScheduleRequest {
            name: "hourly".into(),
            policy: SchedulePolicy {
                every: Every::Interval { minutes: 60 },
                retain: 2,
                time_zone: "UTC".into(),
            },
            clusters: ClusterSelector {
                all: true,
                ..ClusterSelector::default()
            },
            namespaces: vec!["shop".into()],
            location: "primary".into(),
            paused: false,
        },
    )
    .await
    .expect("schedule");
    clock.advance(Duration::from_secs(3600));
    s
}

#[tokio::test]
async fn a_schedule_deleted_while_it_fires_stays_deleted() {
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let racing = Racing::new(slot_write);
    let s = racing_schedule(&racing, &clock).await;
    let other = s.clone();
    racing.arm(Box::new(move || {
        Box::pin(async move {
            assert!(other.delete_schedule(ORG, "hourly").await.expect("delete"));
        })
    }));
    let fired = s.fire_due_schedules().await;
    assert!(fired.is_empty(), "a deleted schedule records no slot: {fired:?}");
    assert!(s.schedule(ORG, "hourly").is_err(), "not resurrected in memory");
    let stored = s
        .catalog()
        .find::<pxb_core::catalog::records::ScheduleRecord>(ORG, "hourly")
        .await;
    assert!(
        matches!(stored, Ok(None)),
        "not resurrected in the catalog: {stored:?}"
    );
    assert!(backups(&s).await.is_empty());
    // And it stays so on the next ticks.
    clock.advance(Duration::from_secs(3600));
    assert!(s.fire_due_schedules().await.is_empty());
    assert!(s.schedule(ORG, "hourly").is_err());
}

#[tokio::test]
async fn a_schedule_paused_while_it_fires_stays_paused() {
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    let racing = Racing::new(slot_write);
    let s = racing_schedule(&racing, &clock).await;
    let other = s.clone();
    racing.arm(Box::new(move || {
        Box::pin(async move {
            other.pause_schedule(ORG, "hourly", true).await.expect("pause");
        })
    }));
    let fired = s.fire_due_schedules().await;
    assert!(fired.is_empty(), "a paused schedule records no slot: {fired:?}");
    assert!(
        s.schedule(ORG, "hourly").expect("schedule").paused,
        "paused in memory"
    );
    let stored = s
        .catalog()
        .get::<pxb_core::catalog::records::ScheduleRecord>(ORG, "hourly")
        .await
        .expect("stored");
    assert!(stored.value.paused, "paused in the catalog");
    clock.advance(Duration::from_secs(3600));
    assert!(
        s.fire_due_schedules().await.is_empty(),
        "and it does not fire later"
    );
    // Resumed, it fires again.
    s.pause_schedule(ORG, "hourly", false).await.expect("resume");
    clock.advance(Duration::from_secs(3600));
    assert_eq!(s.fire_due_schedules().await.len(), 1);
}

#[tokio::test]
async fn a_validation_request_keeps_a_credential_rotated_meanwhile() {
    use pxb_core::catalog::records::Mode;
    let clock = Arc::new(ManualClock::new(
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
    ));
    // The first location write after the hook is armed: the validation request's.
    let racing = Racing::new(|puts| puts.iter().any(|p| p.kind == Kind::Location));
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [5u8; 32]);
    let sealer = Sealer::from_base64(&key).expect("sealer");
    let s = server_on(racing.clone(), clock.clone(), Some(sealer)).await;
    s.create_org(Org {
        id: ORG.into(),
        mode: Mode::Classic,
        ..Org::default()
    })
    .await
    .expect("org");
    let loc = s
        .create_location(
            LocationRecord {
                org: ORG.into(),
                name: "primary".into(),
                provider: "azure".into(),
                mode: Mode::Classic,
                account: Some("tenantastore".into()),
                container: "backups".into(),
                clusters: ClusterSelector {
                    all: true,
                    ..ClusterSelector::default()
                },
                ..LocationRecord::default()
            },
            Some(("accountKey".into(), "old-key-0000000000".into())),
        )
        .await
        .expect("location");
    let rotated = Arc::new(std::sync::Mutex::new(None));
    let (other, slot) = (s.clone(), rotated.clone());
    racing.arm(Box::new(move || {
        Box::pin(async move {
            let l = other
                .update_location(
                    ORG,
                    "primary",
                    |_| {},
                    Some(("accountKey".into(), "new-key-1111111111".into())),
                )
                .await
                .expect("rotate");
            *slot.lock().expect("lock") = l.credential;
        })
    }));
    let after = s.request_validation(ORG, "primary").await.expect("validate");
    let rotated = rotated.lock().expect("lock").clone().expect("rotated");
    assert_ne!(
        Some(&rotated),
        loc.credential.as_ref(),
        "the rotation changed the credential"
    );
    let stored = s
        .catalog()
        .get::<LocationRecord>(ORG, &loc.id)
        .await
        .expect("stored")
        .value;
    assert_eq!(
        stored.credential.as_ref(),
        Some(&rotated),
        "the rotation survives in the catalog"
    );
    assert_eq!(after.credential.as_ref(), Some(&rotated), "and in memory");
    assert_eq!(
        stored.validate_request,
        loc.validate_request + 1,
        "the request is recorded too"
    );
    assert_eq!(
        s.location(ORG, "primary").expect("loc").credential.as_ref(),
        Some(&rotated)
    );
}
