//! The API benchmark: list and filter over many backups in the embedded SQLite catalog, through
//! the server's HTTP API (`GET /v1/orgs/{org}/backups`), as a client sees it: the typed client
//! (`pxb_daemon::client`), each answer decoded into its records.

use std::time::{Duration, Instant};

use pxb_core::api::rest::ListQuery;
use pxb_core::catalog::records::{BackupRecord, BackupView, Org};
use pxb_core::catalog::{Catalog, CatalogStore, Put};
use pxb_daemon::client::Client;
use rand::Rng as _;
use serde_json::{Value, json};

const MIB: f64 = 1024.0 * 1024.0;

/// Makes one query of a kind, with random parameters.
type QueryFn = dyn Fn(&mut rand::rngs::ThreadRng) -> ListQuery;

/// A query of the first 100 backups.
fn page() -> ListQuery {
    ListQuery {
        limit: Some(100),
        ..ListQuery::default()
    }
}
const DAY_MS: i64 = 86_400_000;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn rfc3339_ms(ms: i64) -> String {
    pxb_core::clock::rfc3339(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Fills a catalog with `backups` backups of one org (over `clusters` clusters, 5 locations and
/// 90 days; 95 % Success, 4 % Failed, 1 % InProgress), starts the server on it, and times
/// `rounds` requests of each kind of list.
///
/// With `postgres`, the catalog is a database of a throw-away PostgreSQL server (Debian's, started
/// by the harness with `fsync=off`) instead of the SQLite file; the upgrade step is SQLite's only.
pub async fn run(backups: usize, clusters: usize, rounds: usize, postgres: bool) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("catalog.db");
    let pg = if postgres {
        let pg = pxb_harness::postgres::Postgres::start()?;
        pg.create_database("bench")?;
        Some(pg)
    } else {
        None
    };
    let store: std::sync::Arc<dyn CatalogStore> = match &pg {
        Some(pg) => std::sync::Arc::new(
            pxb_daemon::server::postgres::PostgresCatalog::connect(
                &pxb_daemon::server::postgres::PostgresOptions::new(pg.url("bench")),
            )
            .await?,
        ),
        None => std::sync::Arc::new(pxb_daemon::server::sqlite::SqliteCatalog::open(&path).await?),
    };
    let now_ms = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis()) as i64;
    let org = Org {
        id: "bench".into(),
        display_name: "bench".into(),
        mode: Default::default(),
        access: Vec::new(),
        created_at: rfc3339_ms(now_ms),
    };
    store.put(vec![Catalog::put_of(&org, None)?]).await?;
    let started = Instant::now();
    let mut rng = rand::rng();
    let mut batch: Vec<Put> = Vec::with_capacity(5000);
    for i in 0..backups {
        let cluster = rng.random_range(0..clusters);
        let roll: f64 = rng.random();
        let phase = if roll < 0.95 {
            "Success"
        } else if roll < 0.99 {
            "Failed"
        } else {
            "InProgress"
        };
        let b = BackupRecord {
            org: "bench".into(),
            id: format!("b{i:08}"),
            cluster: format!("cluster-{cluster:05}"),
            location: format!("loc-{}", cluster % 5),
            namespaces: vec![format!("ns-{}", i % 7), "shared".into()],
            phase: pxb_core::catalog::records::BackupPhase::parse(phase).expect("a phase"),
            created_ms: now_ms - rng.random_range(0..90 * DAY_MS),
            synced: i % 10 == 0,
            view: if i % 50 == 0 {
                BackupView::Vms
            } else {
                BackupView::Namespaces
            },
            virtual_machines: u64::from(i % 50 == 0),
            ..BackupRecord::default()
        };
        batch.push(Catalog::put_of(&b, None)?);
        if batch.len() == 5000 {
            store.put(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        store.put(batch).await?;
    }
    let fill = started.elapsed();
    if let Some(pg) = &pg {
        // As `pxb-server catalog migrate` does after a copy; in steady state autovacuum keeps
        // the statistics.
        pxb_daemon::server::postgres::PostgresCatalog::connect(
            &pxb_daemon::server::postgres::PostgresOptions::new(pg.url("bench")),
        )
        .await?
        .analyze()
        .await?;
    }
    drop(store);
    let db_bytes = match &pg {
        Some(pg) => pg
            .psql("bench", "SELECT pg_database_size('bench')")?
            .trim()
            .parse::<u64>()?,
        None => {
            std::fs::metadata(&path)?.len()
                + std::fs::metadata(dir.path().join("catalog.db-wal"))
                    .map(|m| m.len())
                    .unwrap_or(0)
        }
    };

    let mut config = pxb_daemon::server::config::ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    config.catalog.path = path.display().to_string();
    if let Some(pg) = &pg {
        config.catalog.url = pg.url("bench");
    }
    let token = "bench-dev-token-0123456789abcdef".to_string();
    let daemon = pxb_daemon::server::Daemon::start(config, Some(token.clone()), |_| None).await?;
    let api = Client::builder(format!("http://{}", daemon.addr))
        .token(&token)
        .build()?;
    let get = |q: ListQuery| {
        let api = api.clone();
        async move {
            let t = Instant::now();
            let list = api
                .list_backups("bench", &q)
                .await
                .map_err(|e| anyhow::anyhow!("{q:?}: {e}"))?;
            Ok::<_, anyhow::Error>((t.elapsed().as_secs_f64() * 1000.0, list))
        }
    };
    let cluster =
        move |r: &mut rand::rngs::ThreadRng| Some(format!("cluster-{:05}", r.random_range(0..clusters)));
    let since = move |days: i64| Some(rfc3339_ms(now_ms - days * DAY_MS));
    let failed = || Some("Failed".to_owned());
    let vms = || Some("vms".to_owned());
    let kinds: Vec<(&str, Box<QueryFn>)> = vec![
        ("newest page", Box::new(|_| page())),
        (
            "one cluster",
            Box::new(move |r| ListQuery {
                cluster: cluster(r),
                ..page()
            }),
        ),
        (
            "one location",
            Box::new(|r| ListQuery {
                location: Some(format!("loc-{}", r.random_range(0..5))),
                ..page()
            }),
        ),
        (
            "failed",
            Box::new(move |_| ListQuery {
                state: failed(),
                ..page()
            }),
        ),
        (
            "last 24 h",
            Box::new(move |_| ListQuery {
                from: since(1),
                ..page()
            }),
        ),
        (
            "last 7 d, one cluster",
            Box::new(move |r| ListQuery {
                from: since(7),
                cluster: cluster(r),
                ..page()
            }),
        ),
        (
            "custom bracket 60-61 d ago",
            Box::new(move |_| ListQuery {
                from: since(61),
                to: since(60),
                ..page()
            }),
        ),
        (
            "one namespace (1 in 7)",
            Box::new(|r| ListQuery {
                namespace: Some(format!("ns-{}", r.random_range(0..7))),
                ..page()
            }),
        ),
        (
            "vms view (2 %)",
            Box::new(move |_| ListQuery {
                view: vms(),
                ..page()
            }),
        ),
        (
            "last 24 h, vms view",
            Box::new(move |_| ListQuery {
                view: vms(),
                from: since(1),
                ..page()
            }),
        ),
        (
            "a namespace nothing has",
            Box::new(|_| ListQuery {
                namespace: Some("absent".into()),
                ..page()
            }),
        ),
        (
            "one cluster, one namespace",
            Box::new(move |r| ListQuery {
                cluster: cluster(r),
                namespace: Some(format!("ns-{}", r.random_range(0..7))),
                ..page()
            }),
        ),
        (
            "one cluster, vms view",
            Box::new(move |r| ListQuery {
                cluster: cluster(r),
                view: vms(),
                ..page()
            }),
        ),
        (
            "failed, vms view",
            Box::new(move |_| ListQuery {
                state: failed(),
                view: vms(),
                ..page()
            }),
        ),
        (
            "one namespace, vms view, last 7 d",
            Box::new(move |r| ListQuery {
                namespace: Some(format!("ns-{}", r.random_range(0..7))),
                view: vms(),
                from: since(7),
                ..page()
            }),
        ),
        (
            "failed, one location, last 30 d",
            Box::new(move |r| ListQuery {
                state: failed(),
                location: Some(format!("loc-{}", r.random_range(0..5))),
                from: since(30),
                ..page()
            }),
        ),
    ];
    let mut results = serde_json::Map::new();
    let mut all = Vec::new();
    for (name, q) in &kinds {
        let mut lat = Vec::with_capacity(rounds);
        let mut items = 0usize;
        for _ in 0..rounds {
            let query = q(&mut rng);
            let (ms, list) = get(query).await?;
            items += list.items.len();
            lat.push(ms);
        }
        lat.sort_by(f64::total_cmp);
        all.extend(lat.iter().copied());
        results.insert(
            (*name).into(),
            json!({"p50_ms": percentile(&lat, 0.5), "p99_ms": percentile(&lat, 0.99),
                   "max_ms": lat.last().copied().unwrap_or(0.0), "avg_items": items as f64 / rounds as f64}),
        );
    }
    // Paging deep: ten pages in a row, following `next`.
    let mut lat = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let q = ListQuery {
            limit: Some(1000),
            after: after.take(),
            ..ListQuery::default()
        };
        let (ms, list) = get(q).await?;
        lat.push(ms);
        after = list.next;
    }
    lat.sort_by(f64::total_cmp);
    results.insert(
        "pages of 1000, following next".into(),
        json!({"p50_ms": percentile(&lat, 0.5), "max_ms": lat.last().copied().unwrap_or(0.0)}),
    );
    all.sort_by(f64::total_cmp);
    let peak = super::peak_rss();
    daemon.shutdown().await;

    if pg.is_some() {
        return Ok(json!({
            "benchmark": "API: list and filter backups (HTTP, PostgreSQL catalog)",
            "backups": backups,
            "clusters": clusters,
            "rounds_per_query": rounds,
            "fill_seconds": fill.as_secs_f64(),
            "catalog_mib": db_bytes as f64 / MIB,
            "all_queries_p99_ms": percentile(&all, 0.99),
            "all_queries_max_ms": all.last().copied().unwrap_or(0.0),
            "queries": results,
            "process_peak_rss_mib": peak as f64 / MIB,
        }));
    }
    // Upgrading: the same catalog as a file of schema 2, without tags, opened again; migration 3
    // writes every backup's tags (timed: the server is not ready until it is done).
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch(
            "UPDATE records SET tags = ''; DELETE FROM record_tags; PRAGMA user_version = 2;",
        )?;
    }
    let t = Instant::now();
    let store = pxb_daemon::server::sqlite::SqliteCatalog::open(&path).await?;
    let upgrade = t.elapsed();
    let vms = pxb_core::catalog::Query {
        tags: vec![BackupView::Vms.tag()],
        ..pxb_core::catalog::Query::org("bench")
    };
    let tagged = store.count(pxb_core::catalog::Kind::Backup, &vms).await?;
    anyhow::ensure!(
        tagged == backups.div_ceil(50) as u64,
        "the upgrade tagged {tagged} VM backups, expected {}",
        backups.div_ceil(50)
    );
    drop(store);
    Ok(json!({
        "benchmark": "API: list and filter backups (HTTP, SQLite catalog)",
        "backups": backups,
        "clusters": clusters,
        "rounds_per_query": rounds,
        "fill_seconds": fill.as_secs_f64(),
        "upgrade_backfill_seconds": upgrade.as_secs_f64(),
        "catalog_mib": db_bytes as f64 / MIB,
        "all_queries_p99_ms": percentile(&all, 0.99),
        "all_queries_max_ms": all.last().copied().unwrap_or(0.0),
        "queries": results,
        "process_peak_rss_mib": peak as f64 / MIB,
    }))
}
