//! Three server replicas on one real PostgreSQL catalog working a simulated fleet of 50 shoots
//! discovered through the Gardener API. The active replica is killed (its task dropped, nothing
//! released, as with `kill -9`) in the middle of a schedule slot and of a visiting pass; a
//! standby takes over, discovers and visits the fleet with kubeconfigs it gets itself, and every
//! schedule slot is fired exactly once: 50 backups per slot, one per cluster, none twice, none
//! lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pxb_core::api::rest::{CreateDiscovery, CreateOrg, ListQuery, ScheduleRequest};
use pxb_core::catalog::records::{ClusterSelector, ClusterState, Mode};
use pxb_core::clock::ManualClock;
use pxb_core::schedule::{Every, SchedulePolicy};
use pxb_daemon::client::Client;
use pxb_daemon::server::config::{GardenCredential, ServerConfig};
use pxb_daemon::server::postgres::{PostgresCatalog, PostgresOptions};
use pxb_daemon::server::replicas::{self, ReplicaOptions};
use pxb_harness::postgres::Postgres;
use pxb_sim::{Fleet, FleetConfig, ProjectRole};

const PROJECT: &str = "acme-prod";
const SHOOTS: usize = 50;
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const LEASE: Duration = Duration::from_secs(3);

/// One replica: its task (dropped to kill it), its API, and a way to stop it cleanly.
struct Replica {
    name: String,
    url: String,
    task: tokio::task::JoinHandle<pxb_core::Result<()>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_replica(name: &str, config: &ServerConfig, clock: &Arc<ManualClock>) -> Replica {
    let store = Arc::new(
        PostgresCatalog::connect(&PostgresOptions::new(&config.catalog.url))
            .await
            .expect("catalog"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ReplicaOptions {
        me: name.into(),
        advertise: url.clone(),
        lease: LEASE,
        max_body_bytes: 1 << 20,
    };
    let (config, clock) = (config.clone(), clock.clone());
    let task = tokio::spawn(replicas::run(
        store,
        listener,
        options,
        move |catalog| {
            pxb_daemon::server::ServerBuilder::new(config)
                .catalog(catalog)
                .clock(clock)
                .dev_token(TOKEN)
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Replica {
        name: name.into(),
        url,
        task,
        _stop: stop,
    }
}

fn lease_holder(pg: &Postgres) -> Option<(String, u64)> {
    let out = pg
        .psql(
            "fleet",
            "SELECT convert_from(doc, 'UTF8') FROM pxb_records WHERE kind = 'lease' AND id = 'active'",
        )
        .ok()?;
    let doc: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    Some((doc["holder"].as_str()?.to_owned(), doc["epoch"].as_u64()?))
}

async fn until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The org's clusters.
async fn clusters(client: &Client) -> Option<Vec<pxb_core::catalog::records::ClusterRecord>> {
    let c = client.clone();
    client
        .all(ListQuery::default(), move |q| {
            let c = c.clone();
            async move { c.list_clusters("acme", &q).await }
        })
        .await
        .ok()
}

/// The org's scheduled backups, counted per slot (an id ends in the slot's stamp, digits only).
async fn backups_per_slot(client: &Client) -> Option<BTreeMap<String, usize>> {
    let c = client.clone();
    let all = client
        .all(ListQuery::default(), move |q| {
            let c = c.clone();
            async move { c.list_backups("acme", &q).await }
        })
        .await
        .ok()?;
    let mut slots = BTreeMap::new();
    for b in all {
        let stamp = b.id.rsplit('-').next().unwrap_or_default().to_owned();
        *slots.entry(stamp).or_default() += 1;
    }
    Some(slots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_work_a_fleet_and_fire_every_schedule_slot_once_across_a_kill() {
    let pg = Postgres::start().expect("PostgreSQL");
    pg.create_database("fleet").expect("db");
    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    fleet.add_project(PROJECT).expect("project");
    fleet.add_shoots(PROJECT, "shoot", SHOOTS).expect("shoots");
    let garden_token = fleet
        .add_service_account(PROJECT, "pxb", ProjectRole::Admin)
        .expect("service account");
    let dir = tempfile::tempdir().expect("dir");
    let garden = dir.path().join("garden.yaml");
    std::fs::write(&garden, fleet.garden_kubeconfig(&garden_token)).expect("garden");

    let mut config = ServerConfig::default();
    config.catalog.url = pg.url("fleet");
    config.replicas.enabled = true;
    config.api.shutdown_grace_secs = 1;
    config.garden_credentials.insert(
        PROJECT.into(),
        GardenCredential::new(garden.display().to_string())
            .for_orgs(["acme"])
            .for_projects([PROJECT]),
    );
    config.fleet.call_timeout_ms = 1500;
    config.fleet.resync_secs = 1;
    config.fleet.snapshot_interval_ms = 100;
    config.fleet.kubeconfig_lifetime_secs = 3600;
    // The schedules' time is the test's to move; it starts now, as the garden's kubeconfigs do.
    let clock = Arc::new(ManualClock::new(SystemTime::now()));

    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(start_replica(&format!("r{i}"), &config, &clock).await);
    }
    let (first, _) = until("a replica is active", Duration::from_secs(30), || async {
        lease_holder(&pg)
    })
    .await;
    // Everything goes through a standby, as a provider's load balancer might send it.
    let through = |r: &Replica| Client::builder(&r.url).token(TOKEN).build().expect("client");
    let standby = replicas.iter().find(|r| r.name != first).expect("standby");
    let api = through(standby);
    api.create_org(&CreateOrg {
        id: "acme".into(),
        display_name: "Acme".into(),
        mode: Mode::default(),
        access: Vec::new(),
    })
    .await
    .expect("org");
    api.create_discovery(
        "acme",
        &CreateDiscovery {
            id: "prod".into(),
            project: PROJECT.into(),
            credential: PROJECT.into(),
            interval_secs: Some(5),
        },
    )
    .await
    .expect("discovery");
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/v1/orgs/acme/locations", standby.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"name":"primary","provider":"file","container":"/var/lib/pxb/backups","clusters":{"all":true}}"#)
        .send()
        .await
        .expect("location");
    assert_eq!(
        created.status(),
        201,
        "{}",
        created.text().await.unwrap_or_default()
    );
    // Every cluster is discovered and visited (no agent runs: they are AgentMissing).
    until("50 clusters visited", Duration::from_secs(120), || async {
        let clusters = clusters(&api).await?;
        (clusters.len() == SHOOTS
            && clusters
                .iter()
                .all(|c| c.status.state == ClusterState::AgentMissing))
        .then_some(())
    })
    .await;
    api.create_schedule(
        "acme",
        &ScheduleRequest {
            name: "often".into(),
            policy: SchedulePolicy {
                every: Every::Interval { minutes: 1 },
                retain: 3,
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

    // Slot 1, with everyone alive.
    clock.advance(Duration::from_secs(61));
    let slots = until("slot 1 fired", Duration::from_secs(30), || async {
        backups_per_slot(&api).await.filter(|s| s.len() == 1)
    })
    .await;
    assert_eq!(slots.values().copied().collect::<Vec<_>>(), vec![SHOOTS]);

    // Slot 2 falls due and the active replica dies at once: in the middle of the slot and of
    // its visiting pass. Whichever fires it, it is fired once.
    let active = replicas.iter().position(|r| r.name == first).expect("active");
    clock.advance(Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = replicas.remove(active);
    killed.task.abort();
    let _ = killed.task.await;
    let (second, epoch) = until(
        "a standby takes over",
        Duration::from_secs(10 * LEASE.as_secs()),
        || async { lease_holder(&pg).filter(|(h, _)| *h != first) },
    )
    .await;
    assert!(epoch >= 2, "{epoch}");
    let api = through(&replicas[0]);
    let slots = until("slot 2 fired", Duration::from_secs(60), || async {
        backups_per_slot(&api).await.filter(|s| s.len() == 2)
    })
    .await;
    assert!(slots.values().all(|n| *n == SHOOTS), "{slots:?}");

    // The new active replica works the fleet itself: a shoot added now is discovered and
    // visited with a kubeconfig it was issued.
    fleet.add_shoots(PROJECT, "late", 1).expect("late shoot");
    until("the late shoot is visited", Duration::from_secs(120), || async {
        let clusters = clusters(&api).await?;
        clusters
            .iter()
            .any(|c| c.name == "late-00000" && c.status.state == ClusterState::AgentMissing)
            .then_some(())
    })
    .await;
    // Slot 3 under the new active replica: 51 clusters now.
    clock.advance(Duration::from_secs(60));
    let slots = until("slot 3 fired", Duration::from_secs(60), || async {
        backups_per_slot(&api).await.filter(|s| s.len() == 3)
    })
    .await;
    let counts: Vec<usize> = slots.values().copied().collect();
    assert_eq!(counts, vec![SHOOTS, SHOOTS, SHOOTS + 1], "{slots:?}");
    assert!(replicas.iter().any(|r| r.name == second));
    let fleet_status = api.fleet_status(&ListQuery::default()).await;
    assert!(
        fleet_status.is_ok(),
        "the survivors serve the fleet status: {fleet_status:?}"
    );
}
