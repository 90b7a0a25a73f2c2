//! Several `pxb-server` processes as replicas on one real PostgreSQL catalog: one active, the
//! others answering reads from their own view and passing writes on to it; a killed active one
//! (`kill -9`) is replaced within the lease time, and the standbys answer reads all along; a
//! paused one (`SIGSTOP` past its lease) that wakes up does nothing with its stale lease and
//! leaves; a rolling restart loses no acknowledged request.

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pxb_harness::postgres::Postgres;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const LEASE_SECS: u64 = 3;

struct Replica {
    name: String,
    child: Child,
    url: String,
}

impl Replica {
    fn start(db: &str, name: &str) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pxb-server"))
            .env("PXB_DEV_TOKEN", TOKEN)
            .env("PXB_API_LISTEN", "127.0.0.1:0")
            .env("PXB_CATALOG_URL", db)
            .env("PXB_REPLICAS_ENABLED", "true")
            .env("PXB_REPLICAS_LEASE_SECS", LEASE_SECS.to_string())
            .env("PXB_REPLICAS_NAME", name)
            .env("PXB_FLEET_RESYNC_SECS", "1")
            .env("PXB_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pxb-server");
        let stdout = child.stdout.take().expect("stdout");
        let line = BufReader::new(stdout)
            .lines()
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_default();
        let Some(url) = line.strip_prefix("READY ").map(str::to_owned) else {
            let _ = child.kill();
            panic!("replica {name} did not start: {line:?}");
        };
        Replica {
            name: name.into(),
            child,
            url,
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {sig} {}", self.name);
    }

    /// Waits for the process to end by itself; its exit status and log.
    fn wait_exit(&mut self, within: Duration) -> Option<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut log = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut log);
                }
                return Some((status, log));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder and epoch the catalog's lease record names.
fn lease(pg: &Postgres, db: &str) -> Option<(String, u64)> {
    let out = pg
        .psql(
            db,
            "SELECT convert_from(doc, 'UTF8') FROM pxb_records WHERE kind = 'lease' AND id = 'active'",
        )
        .ok()?;
    let doc: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    Some((doc["holder"].as_str()?.to_owned(), doc["epoch"].as_u64()?))
}

fn wait_for<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// Creates org `id` through `replica`, retrying while the replicas answer 503 (no active one);
/// whether it was acknowledged (201).
async fn create_org(replica: &Replica, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let r = http()
            .post(format!("{}/v1/orgs", replica.url))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"{id}","displayName":"{id}"}}"#))
            .send()
            .await;
        match r.map(|r| r.status().as_u16()) {
            Ok(201) => return true,
            Ok(503) | Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(409) => return true, // an earlier attempt landed and its answer was lost
            Ok(other) => panic!("creating org {id} through {}: {other}", replica.name),
        }
    }
    false
}

async fn org_exists(replica: &Replica, id: &str) -> bool {
    http()
        .get(format!("{}/v1/orgs/{id}", replica.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

/// Whether `replica` shows org `id` within a standby's refresh (a third of the lease) and some.
async fn org_seen(replica: &Replica, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECS) + Duration::from_secs(2);
    while Instant::now() < deadline {
        if org_exists(replica, id).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fail_over_fence_a_paused_one_and_survive_a_rolling_restart() {
    let pg = Postgres::start().expect("PostgreSQL");
    pg.create_database("replicas").expect("db");
    let db = pg.url("replicas");
    let mut replicas: Vec<Replica> = (0..3).map(|i| Replica::start(&db, &format!("r{i}"))).collect();
    let (first, epoch) = wait_for("a replica is active", Duration::from_secs(30), || {
        lease(&pg, "replicas")
    });
    assert!(replicas.iter().any(|r| r.name == first), "{first}");
    // Every replica serves the API: a write through a standby is read back through it at once,
    // and through the others after their next refresh.
    let standby = replicas.iter().position(|r| r.name != first).expect("a standby");
    assert!(create_org(&replicas[standby], "acme").await, "through a standby");
    assert!(
        org_exists(&replicas[standby], "acme").await,
        "a standby reads its own write back at once"
    );
    for r in &replicas {
        assert!(org_seen(r, "acme").await, "acme through {}", r.name);
    }
    // Scraping every replica counts the fleet once: a standby has its own two series only.
    for r in &replicas {
        let text = http()
            .get(format!("{}/metrics", r.url))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        pxb_harness::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{}: {e:#}\n{text}", r.name));
        let active = r.name == first;
        assert!(
            text.contains(&format!("pxb_server_replica_active {}", u8::from(active))),
            "{}: {text}",
            r.name
        );
        assert_eq!(text.contains("pxb_server_clusters"), active, "{}: {text}", r.name);
    }

    // kill -9 the active replica: another takes over within the lease time (and a little).
    let active = replicas.iter().position(|r| r.name == first).expect("active");
    let killed = replicas.remove(active);
    let started = Instant::now();
    killed.signal("-KILL");
    // Before anyone took over, the standbys answer reads from their own view.
    for r in &replicas {
        assert!(
            org_exists(r, "acme").await,
            "standby {} answers reads while the active replica is dead",
            r.name
        );
    }
    assert_eq!(
        lease(&pg, "replicas").map(|(h, _)| h),
        Some(first.clone()),
        "the reads above were answered before the takeover ({:?} after kill -9)",
        started.elapsed()
    );
    let (second, epoch2) = wait_for(
        "a standby takes over",
        Duration::from_secs(10 * LEASE_SECS),
        || lease(&pg, "replicas").filter(|(h, _)| *h != first),
    );
    assert_eq!(epoch2, epoch + 1);
    eprintln!("lease taken over after kill -9: {:?}", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in &replicas {
        while !org_exists(r, "acme").await {
            assert!(Instant::now() < deadline, "the survivors do not serve");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{} serves after {:?}", r.name, started.elapsed());
    }
    let failover = started.elapsed();
    eprintln!("failover after kill -9: {failover:?} (lease {LEASE_SECS} s)");
    drop(killed);

    // SIGSTOP the new active one past its lease: the last standby takes over; woken up, the
    // paused one does nothing with its stale lease and leaves.
    let paused = replicas.iter().position(|r| r.name == second).expect("second");
    replicas[paused].signal("-STOP");
    // The standby answers reads without the (paused) active replica.
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let read = quick
        .get(format!("{}/v1/orgs/acme", replicas[1 - paused].url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .map(|r| r.status().as_u16());
    assert!(
        matches!(read, Ok(200)),
        "a standby read waits for the paused active replica: {read:?}"
    );
    let (third, epoch3) = wait_for(
        "the last standby takes over from the paused one",
        Duration::from_secs(10 * LEASE_SECS),
        || lease(&pg, "replicas").filter(|(h, _)| *h != second),
    );
    assert_eq!(epoch3, epoch2 + 1);
    let other = 1 - paused;
    assert_eq!(replicas[other].name, third);
    assert!(create_org(&replicas[other], "globex").await);
    // A request that reached the paused replica (the kernel queues it) is handled after it wakes
    // up: by then another replica holds the lease, so its write must not land.
    let stale = {
        let url = replicas[paused].url.clone();
        tokio::spawn(async move {
            http()
                .post(format!("{url}/v1/orgs"))
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"id":"stale-write","displayName":"stale"}"#)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[paused].signal("-CONT");
    let answered = stale.await.expect("task");
    // Refused as unavailable (try again), or the connection closed as the replica left.
    assert!(
        matches!(answered, Ok(503) | Err(_)),
        "the paused replica answered {answered:?}"
    );
    assert_eq!(
        pg.psql(
            "replicas",
            "SELECT count(*) FROM pxb_records WHERE kind = 'org' AND id = 'stale-write'"
        )
        .expect("psql")
        .trim(),
        "0",
        "a write of the paused replica landed after another took over (answered {answered:?})"
    );
    eprintln!("the paused replica's queued write was answered {answered:?}");
    let (status, log) = replicas[paused]
        .wait_exit(Duration::from_secs(10 * LEASE_SECS))
        .expect("the woken replica leaves");
    assert!(!status.success(), "it exits with an error");
    assert!(log.contains("lost the lease"), "{log}");
    assert_eq!(
        lease(&pg, "replicas"),
        Some((third.clone(), epoch3)),
        "the woken replica did not take the lease back"
    );
    let beat = pg
        .psql(
            "replicas",
            "SELECT convert_from(doc, 'UTF8') FROM pxb_records WHERE kind = 'lease' AND id = 'heartbeat'",
        )
        .expect("heartbeat");
    assert!(beat.contains(&format!("\"holder\":\"{third}\"")), "{beat}");
    replicas.remove(paused);

    // A rolling restart: a new replica joins, then each old one is stopped (SIGTERM) in turn,
    // while orgs are created through whichever replica is up. Every acknowledged one is there.
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        replicas.push(Replica::start(&db, &format!("n{round}")));
        let old = replicas.remove(0);
        old.signal("-TERM");
        for i in 0..5 {
            let id = format!("roll-{round}-{i}");
            let through = &replicas[i % replicas.len()];
            if create_org(through, &id).await {
                acknowledged.push(id);
            }
        }
        let mut old = old;
        let (status, _) = old
            .wait_exit(Duration::from_secs(30))
            .expect("a stopped replica exits");
        assert!(status.success(), "a replica stopped with SIGTERM exits cleanly");
    }
    assert_eq!(acknowledged.len(), 15, "{acknowledged:?}");
    for id in acknowledged
        .iter()
        .chain([&"acme".to_owned(), &"globex".to_owned()])
    {
        assert!(
            org_seen(&replicas[0], id).await,
            "{id} was acknowledged and is lost"
        );
    }
}
