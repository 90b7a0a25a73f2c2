//! The scrape benchmark: `GET /metrics` of a `pxb-server` whose SQLite catalog holds many
//! backups (and backups deleted within the retention window), as Prometheus scrapes it. The
//! per-backup info series are bounded by `telemetry.backupInfoMaxSeries`, so the scrape should
//! not grow with the catalog: this measures the start (the series rebuilt from the catalog), the
//! scrape time, its size, and the memory, at the catalog size and window asked for.

use std::time::{Duration, Instant};

use pxb_core::catalog::records::{BackupPhase, BackupRecord, DeletedBackup, Org};
use pxb_core::catalog::{Catalog, CatalogStore, Put};
use serde_json::{Value, json};

use super::{Rng, current_rss, peak_rss, reset_peak_rss};

const MIB: f64 = 1024.0 * 1024.0;
const DAY_MS: i64 = 86_400_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Fills a catalog with `backups` backups of 10 orgs over 2,000 clusters and 90 days, and 1 %
/// as many deleted within the last day; starts the server with `max_series`; scrapes `rounds`
/// times (Prometheus text).
pub async fn run(backups: usize, max_series: usize, rounds: usize) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.db");
    let store = pxb_daemon::server::sqlite::SqliteCatalog::open(&path).await?;
    let now_ms = pxb_core::clock::unix_ms(std::time::SystemTime::now());
    let orgs: Vec<String> = (0..10).map(|i| format!("org-{i}")).collect();
    for id in &orgs {
        let org = Org {
            id: id.clone(),
            display_name: id.clone(),
            created_at: pxb_core::clock::rfc3339(std::time::SystemTime::now()),
            ..Org::default()
        };
        store.put(vec![Catalog::put_of(&org, None)?]).await?;
    }
    let started = Instant::now();
    let mut rng = Rng(7);
    let mut batch: Vec<Put> = Vec::with_capacity(5000);
    let phases = [
        BackupPhase::Success,
        BackupPhase::Success,
        BackupPhase::Success,
        BackupPhase::PartialSuccess,
        BackupPhase::Failed,
    ];
    let record = |i: usize, rng: &mut Rng| {
        let cluster = rng.range(0, 2000);
        BackupRecord {
            org: orgs[i % orgs.len()].clone(),
            id: format!("b{i:08}"),
            cluster: format!("cluster-{cluster:05}"),
            cluster_name: format!("shoot-{cluster:05}"),
            location: format!("loc-{}", cluster % 5),
            location_name: format!("primary-{}", cluster % 5),
            namespaces: vec![format!("ns-{}", i % 7)],
            phase: phases[i % phases.len()],
            schedule: i.is_multiple_of(3).then(|| format!("daily-{}", cluster % 4)),
            created_ms: now_ms - rng.range(0, 90 * DAY_MS as u64) as i64,
            ..BackupRecord::default()
        }
    };
    for i in 0..backups {
        batch.push(Catalog::put_of(&record(i, &mut rng), None)?);
        if batch.len() == 5000 {
            store.put(std::mem::take(&mut batch)).await?;
        }
    }
    let deleted = backups / 100;
    for i in 0..deleted {
        let b = record(backups + i, &mut rng);
        let d = DeletedBackup::of(&b, now_ms - rng.range(0, DAY_MS as u64) as i64);
        batch.push(Catalog::put_of(&d, None)?);
        if batch.len() == 5000 {
            store.put(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        store.put(batch).await?;
    }
    let fill = started.elapsed();
    drop(store);

    let mut config = pxb_daemon::server::config::ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    config.catalog.path = path.display().to_string();
    config.telemetry.backup_info_max_series = max_series;
    let rss_before = current_rss();
    reset_peak_rss();
    let t = Instant::now();
    // The per-backup series are for callers that see the org: the scrape sends a provider
    // admin's (dev) token, as a provider's Prometheus would.
    let token = format!("bench-{:032x}", rand::random::<u128>());
    let daemon = pxb_daemon::server::Daemon::start(config, Some(token.clone()), |_| None).await?;
    let start = t.elapsed();
    let rss_started = current_rss();
    let peak_start = peak_rss();
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", daemon.addr);
    let mut times = Vec::with_capacity(rounds);
    let mut bytes = 0usize;
    let mut series = 0usize;
    reset_peak_rss();
    for _ in 0..rounds {
        let t = Instant::now();
        let body = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = body.len();
        series = body
            .lines()
            .filter(|l| l.starts_with("pxb_server_backup_info{"))
            .count();
    }
    let peak_scrape = peak_rss();
    times.sort_by(f64::total_cmp);
    daemon.shutdown().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(json!({
        "benchmark": "metrics scrape",
        "backups_in_catalog": backups,
        "deleted_within_window": deleted,
        "backup_info_max_series": max_series,
        "catalog_fill_s": fill.as_secs_f64(),
        "server_start_s": start.as_secs_f64(),
        "rss_before_start_mib": rss_before as f64 / MIB,
        "rss_after_start_mib": rss_started as f64 / MIB,
        "peak_rss_during_start_mib": peak_start as f64 / MIB,
        "peak_rss_during_scrapes_mib": peak_scrape as f64 / MIB,
        "scrapes": rounds,
        "scrape_ms": {
            "p50": percentile(&times, 0.5),
            "p99": percentile(&times, 0.99),
            "max": times.last().copied().unwrap_or(0.0),
        },
        "scrape_bytes": bytes,
        "backup_info_series": series,
    }))
}
