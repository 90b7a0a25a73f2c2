//! The server's fleet benchmark: `pxb-server` (in this process, its API on loopback) against a
//! `pxb-sim` process with N shoots whose agents are simulated and every 10th shoot blackholed.
//! Measures discovery + kubeconfig issuance + one full validation pass, the server's peak RSS,
//! and fleet-status reads through the API during the pass. With `postgres` the catalog is a
//! database of a throw-away PostgreSQL server; with `replicas` > 0 that many replicas share it
//! (in this process, each with its own connection pool): the pass is followed through the
//! active one, the fleet status is read through a standby (when there is one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pxb_core::api::rest::{CreateDiscovery, CreateLocation, CreateOrg, ListQuery};
use pxb_core::catalog::records::ClusterSelector;
use pxb_daemon::client::Client;
use serde_json::{Value, json};

use super::fleet::SimProcess;
use super::{peak_rss, reset_peak_rss};

const MIB: f64 = 1024.0 * 1024.0;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct ServerBench {
    /// Shoots.
    pub shoots: usize,
    /// Blackhole every N-th shoot.
    pub blackhole_every: usize,
    /// Clusters visited at once.
    pub concurrency: usize,
    /// Deadline per cluster call, ms.
    pub call_timeout_ms: u64,
    /// The catalog in PostgreSQL rather than SQLite.
    pub postgres: bool,
    /// Run this many replicas (`0`: one plain server). Implies `postgres`.
    pub replicas: usize,
}

/// The server(s) under test.
enum Under {
    One(pxb_daemon::server::Daemon),
    Replicas(Vec<crate::replicas::InProcessReplica>),
}

/// Starts `n` replicas over the catalog of `config`; their API URLs, the active one's first.
async fn start_replicas(
    n: usize,
    config: &pxb_daemon::server::config::ServerConfig,
    token: &str,
) -> anyhow::Result<(Under, Vec<String>)> {
    use pxb_daemon::server::replicas::{self, ActiveDoc};
    let mut running = Vec::new();
    for i in 0..n {
        let token = token.to_owned();
        running.push(
            crate::replicas::InProcessReplica::start(
                &format!("r{i}"),
                config,
                Duration::from_secs(15),
                move |b| b.dev_token(token.clone()),
            )
            .await?,
        );
    }
    let mut urls: Vec<String> = running.iter().map(|r| r.url.clone()).collect();
    let store = pxb_daemon::server::open_catalog(&config.catalog).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let active = loop {
        if let Ok(e) = store
            .get(pxb_core::catalog::Kind::Lease, "", replicas::ACTIVE)
            .await
            && let Ok(doc) = serde_json::from_slice::<ActiveDoc>(&e.doc)
            && !doc.address.is_empty()
        {
            break doc.address;
        }
        anyhow::ensure!(Instant::now() < deadline, "no replica became active");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    urls.retain(|u| *u != active);
    urls.insert(0, active);
    Ok((Under::Replicas(running), urls))
}

/// A list query of pages of `limit` items.
fn limit(limit: u64) -> ListQuery {
    ListQuery {
        limit: Some(limit),
        ..ListQuery::default()
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One run; returns the figures.
pub async fn fleet_pass(b: ServerBench) -> anyhow::Result<Value> {
    let every = b.blackhole_every.to_string();
    let sim = SimProcess::start_with(
        b.shoots,
        600,
        &["--simulate-agents", "--blackhole-every", &every, "--threads", "1"],
    )?;
    let dir = tempfile::tempdir()?;
    let garden = dir.path().join("garden.yaml");
    std::fs::write(&garden, &sim.garden_kubeconfig)?;
    let mut config = pxb_daemon::server::config::ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    let pg = if b.postgres || b.replicas > 0 {
        let pg = pxb_harness::postgres::Postgres::start()?;
        pg.create_database("bench")?;
        config.catalog.url = pg.url("bench");
        Some(pg)
    } else {
        config.catalog.path = dir.path().join("catalog.db").display().to_string();
        None
    };
    config.garden_credentials.insert(
        "bench".into(),
        pxb_daemon::server::config::GardenCredential::new(garden.display().to_string()),
    );
    config.fleet.concurrency = b.concurrency;
    config.fleet.call_timeout_ms = b.call_timeout_ms;
    config.fleet.resync_secs = 3600;
    config.fleet.offline_backoff_secs = 3600;
    config.fleet.offline_backoff_max_secs = 3600;
    let token = "bench-dev-token-0123456789abcdef".to_string();
    reset_peak_rss();
    let started = Instant::now();
    let (under, urls) = if b.replicas > 0 {
        start_replicas(b.replicas, &config, &token).await?
    } else {
        let daemon = pxb_daemon::server::Daemon::start(config, Some(token.clone()), |_| None).await?;
        let url = format!("http://{}", daemon.addr);
        (Under::One(daemon), vec![url])
    };
    let url = urls[0].clone();
    // Reads go to a standby when there is one (the active replica's own reads are measured
    // with one replica).
    let read_url = urls.last().cloned().unwrap_or_default();
    let api = Client::builder(&url).token(&token).build()?;
    api.create_org(&CreateOrg {
        id: "bench".into(),
        display_name: String::new(),
        mode: Default::default(),
        access: Vec::new(),
    })
    .await?;
    api.create_location(
        "bench",
        &CreateLocation {
            name: "primary".into(),
            provider: "file".into(),
            account: None,
            container: "/var/lib/pxb/backups".into(),
            prefix: None,
            endpoint: None,
            mode: None,
            client_id: None,
            tenant_id: None,
            cluster_client_ids: Default::default(),
            credential: None,
            clusters: ClusterSelector {
                all: true,
                ..ClusterSelector::default()
            },
            sync: false,
        },
    )
    .await?;
    api.create_discovery(
        "bench",
        &CreateDiscovery {
            id: "bench".into(),
            project: "bench".into(),
            credential: "bench".into(),
            interval_secs: Some(3600),
        },
    )
    .await?;

    // Read the fleet status (first page, 100 clusters, with counts) every 20 ms during the pass,
    // from a thread and runtime of its own, as an outside client would (with a client and
    // connections of its own).
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, url, token) = (done.clone(), read_url.clone(), token.clone());
        std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let api = Client::builder(&url).token(&token).build()?;
                let page = limit(100);
                let mut lat = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if api.fleet_status(&page).await.is_ok() {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(lat)
            })
        })
    };
    let expected_offline = b.shoots.div_ceil(b.blackhole_every);
    let expected_ready = b.shoots - expected_offline;
    let mut discovered_at = None;
    let mut last = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let status = api.fleet_status(&limit(1)).await?;
        let counts = status.counts;
        let total: u64 = counts.values().sum();
        if discovered_at.is_none() && total as usize == b.shoots {
            discovered_at = Some(started.elapsed());
        }
        let ready = counts.get("Ready").copied().unwrap_or(0) as usize;
        let offline = counts.get("Unreachable").copied().unwrap_or(0) as usize;
        last = counts;
        if ready == expected_ready && offline == expected_offline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pass = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut lat = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))??;
    anyhow::ensure!(
        last.get("Ready") == Some(&(expected_ready as u64))
            && last.get("Unreachable") == Some(&(expected_offline as u64)),
        "the pass did not finish: {last:?}"
    );
    // Every Ready cluster validated the location.
    let valid_only = ListQuery {
        state: Some("Valid".into()),
        ..limit(1000)
    };
    let valid = api
        .all(valid_only, |q| {
            let api = &api;
            async move { api.location_status("bench", "primary", &q).await }
        })
        .await?
        .len();
    let server_peak = peak_rss();
    let mut direct = Vec::new();
    let mut issued = None;
    match under {
        Under::One(daemon) => {
            // The in-memory snapshot read, without HTTP, for comparison.
            let server = daemon.server.clone();
            for _ in 0..200 {
                let t = Instant::now();
                let snap = server.snapshot();
                let orgs = vec!["bench".to_string()];
                let (page, _) = snap.page(&orgs, None, None, 100, std::time::SystemTime::now());
                let counts = snap.counts(&orgs);
                std::hint::black_box((page, counts));
                direct.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            // Read before the shutdown, which stops (and forgets) the providers.
            issued = Some(server.providers().first().map(|p| p.stats().issued).unwrap_or(0));
            daemon.shutdown().await;
        }
        Under::Replicas(running) => {
            for r in running {
                r.stop().await?;
            }
        }
    }
    drop(pg);
    lat.sort_by(f64::total_cmp);
    direct.sort_by(f64::total_cmp);
    Ok(json!({
        "benchmark": "server: discovery + issuance + one validation pass",
        "shoots": b.shoots,
        "blackholed": expected_offline,
        "concurrency": b.concurrency,
        "call_timeout_ms": b.call_timeout_ms,
        "catalog": if b.postgres || b.replicas > 0 { "postgres" } else { "sqlite" },
        "replicas": b.replicas,
        "fleet_status_read_through": if urls.len() > 1 { "a standby" } else { "the server" },
        "all_discovered_seconds": discovered_at.map(|d| d.as_secs_f64()),
        "pass_seconds": pass.as_secs_f64(),
        "ready": expected_ready,
        "unreachable": expected_offline,
        "location_valid_on": valid,
        "kubeconfigs_issued": issued,
        "server_peak_rss_mib": server_peak as f64 / MIB,
        "server_peak_rss_covers": if b.replicas > 1 { "every replica (one process)" } else { "the server" },
        "fleet_status_reads": lat.len(),
        "fleet_status_http_ms_p50": percentile(&lat, 0.5),
        "fleet_status_http_ms_p99": percentile(&lat, 0.99),
        "fleet_status_http_ms_max": lat.last().copied().unwrap_or(0.0),
        "fleet_status_snapshot_ms_p99": (!direct.is_empty()).then(|| percentile(&direct, 0.99)),
        "simulator_peak_rss_mib": sim.peak_rss() as f64 / MIB,
    }))
}
