//! The replicas' failover benchmark: three `pxb-server` processes (the release binary beside
//! `pxb-bench`) as replicas on a throw-away PostgreSQL; the active one is killed with SIGKILL,
//! and the time until a standby holds the lease, and until a request through a surviving replica
//! is answered by the new active one, is measured. Repeated `rounds` times (a fresh replica
//! replaces each killed one).

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct Replica {
    name: String,
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PXB_SERVER_BIN") {
        return Ok(p.into());
    }
    let here = std::env::current_exe()?;
    let bin = here.with_file_name("pxb-server");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: cargo build --release -p pxb-daemon --bin pxb-server (or set PXB_SERVER_BIN)",
        bin.display()
    );
    Ok(bin)
}

fn start(bin: &std::path::Path, db: &str, name: &str, lease_secs: u64) -> anyhow::Result<Replica> {
    let mut child = Command::new(bin)
        .env("PXB_DEV_TOKEN", TOKEN)
        .env("PXB_API_LISTEN", "127.0.0.1:0")
        .env("PXB_CATALOG_URL", db)
        .env("PXB_REPLICAS_ENABLED", "true")
        .env("PXB_REPLICAS_LEASE_SECS", lease_secs.to_string())
        .env("PXB_REPLICAS_NAME", name)
        .env("PXB_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let line = std::io::BufReader::new(stdout)
        .lines()
        .next()
        .transpose()?
        .unwrap_or_default();
    let url = line
        .strip_prefix("READY ")
        .ok_or_else(|| anyhow::anyhow!("replica {name} did not start: {line:?}"))?
        .to_owned();
    Ok(Replica {
        name: name.into(),
        child,
        url,
    })
}

fn holder(pg: &pxb_harness::postgres::Postgres) -> Option<String> {
    let out = pg
        .psql(
            "failover",
            "SELECT convert_from(doc, 'UTF8') FROM pxb_records WHERE kind = 'lease' AND id = 'active'",
        )
        .ok()?;
    let doc: Value = serde_json::from_str(out.trim()).ok()?;
    doc["holder"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
}

/// Runs `rounds` failovers with leases of `lease_secs`.
pub async fn run(rounds: usize, lease_secs: u64) -> anyhow::Result<Value> {
    let bin = server_binary()?;
    let pg = pxb_harness::postgres::Postgres::start()?;
    pg.create_database("failover")?;
    let db = pg.url("failover");
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(start(&bin, &db, &format!("r{i}"), lease_secs)?);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let wait_holder = |not: Option<&str>, within: Duration| {
        let deadline = Instant::now() + within;
        loop {
            if let Some(h) = holder(&pg).filter(|h| Some(h.as_str()) != not) {
                return Ok(h);
            }
            if Instant::now() > deadline {
                anyhow::bail!("no replica took the lease within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut active = wait_holder(None, Duration::from_secs(10 * lease_secs))?;
    // Something to read back after each failover.
    let r = http
        .post(format!("{}/v1/orgs", replicas[0].url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"id":"acme","displayName":"Acme"}"#)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "creating the org: {}", r.status());
    let mut takeovers = Vec::new();
    let mut served = Vec::new();
    for round in 0..rounds {
        // Let the lease settle into its renewal rhythm, as in a long-running fleet.
        tokio::time::sleep(Duration::from_secs(lease_secs)).await;
        let i = replicas
            .iter()
            .position(|r| r.name == active)
            .ok_or_else(|| anyhow::anyhow!("the holder {active} is not one of ours"))?;
        let killed = replicas.remove(i);
        let t = Instant::now();
        Command::new("kill")
            .args(["-KILL", &killed.child.id().to_string()])
            .status()?;
        let next = wait_holder(Some(&active), Duration::from_secs(10 * lease_secs))?;
        takeovers.push(t.elapsed().as_secs_f64());
        loop {
            let ok = http
                .get(format!("{}/v1/orgs/acme", replicas[0].url))
                .bearer_auth(TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(20 * lease_secs),
                "no survivor serves"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served.push(t.elapsed().as_secs_f64());
        drop(killed);
        replicas.push(start(&bin, &db, &format!("n{round}"), lease_secs)?);
        active = next;
    }
    let stats = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        json!({"min_s": s.first(), "median_s": s.get(s.len() / 2), "max_s": s.last(), "all_s": v})
    };
    Ok(json!({
        "benchmark": "replicas: failover after SIGKILL of the active replica (3 replicas, PostgreSQL)",
        "lease_secs": lease_secs,
        "renew_every_secs": lease_secs as f64 / 3.0,
        "rounds": rounds,
        "lease_taken_over": stats(&takeovers),
        "api_answered_by_new_active": stats(&served),
    }))
}
