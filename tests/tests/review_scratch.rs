//! Throwaway review probes (to be deleted).

use std::sync::Arc;

use async_trait::async_trait;
use pxb_core::catalog::records::{BackupPhase, BackupRecord, Org};
use pxb_core::catalog::{Catalog, CatalogStore, Entry, Kind, MemoryCatalog, Page, Put, Query};
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::ServerConfig;

/// A store that yields before every call, so concurrent callers interleave.
#[derive(Debug)]
struct Yielding(MemoryCatalog);

#[async_trait]
impl CatalogStore for Yielding {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> pxb_core::Result<Entry> {
        tokio::task::yield_now().await;
        self.0.get(kind, org, id).await
    }
    async fn put(&self, puts: Vec<Put>) -> pxb_core::Result<Vec<u64>> {
        tokio::task::yield_now().await;
        let slow = puts.iter().any(|p| p.doc.windows(6).any(|w| w == b"Failed"));
        let r = self.0.put(puts).await;
        if slow {
            // The commit is done; the caller is woken late (as with a blocking-pool store).
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        }
        r
    }
    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> pxb_core::Result<bool> {
        tokio::task::yield_now().await;
        self.0.delete(kind, org, id, expect).await
    }
    async fn list(&self, kind: Kind, q: &Query) -> pxb_core::Result<Page<Entry>> {
        tokio::task::yield_now().await;
        self.0.list(kind, q).await
    }
    async fn count(&self, kind: Kind, q: &Query) -> pxb_core::Result<u64> {
        tokio::task::yield_now().await;
        self.0.count(kind, q).await
    }
}

fn config() -> ServerConfig {
    let mut c = ServerConfig::default();
    c.api.listen = "127.0.0.1:0".into();
    c.api.shutdown_grace_secs = 1;
    c
}

fn backup(org: &str, id: &str, created_ms: i64) -> BackupRecord {
    BackupRecord {
        org: org.into(),
        id: id.into(),
        cluster: "c1".into(),
        cluster_name: "shoot-1".into(),
        location: "l1".into(),
        location_name: "loc".into(),
        phase: BackupPhase::Success,
        created_ms,
        ..BackupRecord::default()
    }
}

async fn seed(mem: &MemoryCatalog, orgs: &[&str]) {
    let c = Catalog::new(Arc::new(mem.clone()));
    for o in orgs {
        c.put(
            &Org {
                id: (*o).into(),
                display_name: String::new(),
                mode: Default::default(),
                access: vec![],
                created_at: "2026-01-01T00:00:00Z".into(),
            },
            None,
        )
        .await
        .expect("org");
    }
}

async fn info_lines(store: Arc<dyn CatalogStore>) -> Vec<String> {
    let d = ServerBuilder::new(config())
        .catalog(store)
        .build()
        .await
        .expect("build")
        .spawn()
        .expect("spawn");
    let text = reqwest::get(format!("http://{}/metrics", d.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    d.shutdown().await;
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("pxb_server_backup_info{"))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

/// One damaged backup record: after a restart the whole backfill gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_a_damaged_backup_record_empties_the_backfill() {
    let mem = MemoryCatalog::new();
    seed(&mem, &["acme", "beta"]).await;
    let c = Catalog::new(Arc::new(mem.clone()));
    c.put_all(&[backup("acme", "b1", 1_000), backup("acme", "bad", 2_000)])
        .await
        .expect("put");
    c.put_all(&[backup("beta", "c1", 1_000)]).await.expect("put");
    let before = info_lines(Arc::new(mem.clone())).await;
    assert_eq!(before.len(), 3, "{before:#?}");
    assert!(mem.corrupt(Kind::Backup, "acme", "bad", b"{not json"));
    let after = info_lines(Arc::new(mem.clone())).await;
    assert_eq!(after.len(), 2, "b1 and c1 should still have series: {after:#?}");
}

/// Two deletes of the same backup at once: the loser removes the winner's DeletedBackup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_concurrent_deletes_lose_the_tombstone() {
    let mem = MemoryCatalog::new();
    seed(&mem, &["acme"]).await;
    let c = Catalog::new(Arc::new(mem.clone()));
    c.put_all(&[backup("acme", "b1", 1_000)]).await.expect("put");
    let d = ServerBuilder::new(config())
        .catalog(Arc::new(Yielding(mem.clone())))
        .build()
        .await
        .expect("build")
        .spawn()
        .expect("spawn");
    let store = d.server.catalog().store().clone();
    let (a, b) = tokio::join!(
        store.delete(Kind::Backup, "acme", "b1", None),
        store.delete(Kind::Backup, "acme", "b1", None)
    );
    eprintln!("delete results: {a:?} {b:?}");
    let text = reqwest::get(format!("http://{}/metrics", d.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let live: Vec<&str> = text.lines().filter(|l| l.starts_with("pxb_server_backup_info{")).collect();
    eprintln!("running server shows: {live:#?}");
    d.shutdown().await;
    let kept = mem.count(Kind::DeletedBackup, &Query::org("acme")).await.expect("count");
    let after = info_lines(Arc::new(mem.clone())).await;
    eprintln!("after restart: {after:#?}");
    assert_eq!(kept, 1, "the DeletedBackup record of b1 is gone");
}

/// A delete with an expect that matches only because a write landed between the get and the
/// delete: no tombstone, and the live series stays forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_put_racing_a_delete_leaves_a_live_series() {
    let mem = MemoryCatalog::new();
    seed(&mem, &["acme"]).await;
    let c = Catalog::new(Arc::new(mem.clone()));
    c.put_all(&[backup("acme", "b1", 1_000)]).await.expect("put");
    let d = ServerBuilder::new(config())
        .catalog(Arc::new(Yielding(mem.clone())))
        .build()
        .await
        .expect("build")
        .spawn()
        .expect("spawn");
    let store = d.server.catalog().store().clone();
    let mut upd = backup("acme", "b1", 1_000);
    upd.phase = BackupPhase::Failed;
    let put = Catalog::put_of(&upd, None).expect("put_of");
    let (p, del) = tokio::join!(store.put(vec![put]), store.delete(Kind::Backup, "acme", "b1", None));
    eprintln!("put {p:?} delete {del:?}");
    let text = reqwest::get(format!("http://{}/metrics", d.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let live: Vec<&str> = text.lines().filter(|l| l.starts_with("pxb_server_backup_info{")).collect();
    d.shutdown().await;
    let exists = mem.get(Kind::Backup, "acme", "b1").await.is_ok();
    eprintln!("record exists: {exists}; series: {live:#?}");
    if !exists {
        assert!(
            live.iter().all(|l| l.contains("status=\"Deleted\"")),
            "a deleted backup shows a live series: {live:#?}"
        );
    }
}

/// A deleted series that expires frees its slot, but the live backup it pushed out never comes
/// back until a restart: the running server and a restarted one show different series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch_window_does_not_refill_after_expiry() {
    let mem = MemoryCatalog::new();
    seed(&mem, &["acme"]).await;
    let c = Catalog::new(Arc::new(mem.clone()));
    c.put_all(&[backup("acme", "b1", 1_000), backup("acme", "b2", 2_000), backup("acme", "b3", 3_000)])
        .await
        .expect("put");
    let clock = Arc::new(pxb_core::clock::SkewedClock::new());
    let mut cfg = config();
    cfg.telemetry.backup_info_max_series = 2;
    cfg.telemetry.backup_info_retention_hours = 1;
    let scrape = |addr: std::net::SocketAddr| async move {
        let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("m").text().await.expect("t");
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("pxb_server_backup_info{"))
            .map(|l| l.split("backup=\"").nth(1).unwrap_or("").split('"').next().unwrap_or("").to_owned()
                + if l.contains("Deleted") { "(deleted)" } else { "" })
            .collect();
        v.sort();
        v
    };
    let d = ServerBuilder::new(cfg.clone())
        .catalog(Arc::new(mem.clone()))
        .clock(clock.clone())
        .build()
        .await
        .expect("build")
        .spawn()
        .expect("spawn");
    eprintln!("start: {:?}", scrape(d.addr).await);
    d.server.catalog().store().delete(Kind::Backup, "acme", "b3", None).await.expect("del");
    eprintln!("after delete b3: {:?}", scrape(d.addr).await);
    clock.advance(std::time::Duration::from_secs(3700));
    let running = scrape(d.addr).await;
    eprintln!("after the window: {running:?}");
    d.shutdown().await;
    let d = ServerBuilder::new(cfg)
        .catalog(Arc::new(mem.clone()))
        .clock(clock.clone())
        .build()
        .await
        .expect("build")
        .spawn()
        .expect("spawn");
    let restarted = scrape(d.addr).await;
    eprintln!("after a restart: {restarted:?}");
    d.shutdown().await;
    assert_eq!(running, restarted);
}
