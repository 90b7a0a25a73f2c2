//! Three server replicas on one real PostgreSQL catalog working a simulated fleet discovered
//! through the Gardener API.
//! - 50 shoots: the active replica is killed (its task dropped, nothing released, as with
//!   `kill -9`) in the middle of a schedule slot and of a visiting pass; the standbys answer the
//!   fleet status meanwhile; one takes over, discovers and visits the fleet with kubeconfigs it
//!   gets itself, and every schedule slot is fired exactly once: 50 backups per slot, one per
//!   cluster, none twice, none lost.
//! - 50 shoots whose agents the test plays: every replica is restarted in turn (a new one joins,
//!   an old one stops) while backups run on the clusters and more are asked for; every backup
//!   ends with the phase its cluster reported, none lost, none started twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pxb_core::api::rest::{BackupRequest, CreateDiscovery, CreateOrg, ListQuery, ScheduleRequest};
use pxb_core::catalog::records::{BackupPhase, ClusterSelector, ClusterState, Mode};
use pxb_core::clock::{Clock, ManualClock, SystemClock};
use pxb_core::schedule::{Every, SchedulePolicy};
use pxb_daemon::client::Client;
use pxb_daemon::server::config::{GardenCredential, ServerConfig};
use pxb_harness::postgres::Postgres;
use pxb_sim::{Fleet, FleetConfig, ProjectRole};
use pxb_tests::replicas::InProcessReplica;

const PROJECT: &str = "acme-prod";
const SHOOTS: usize = 50;
const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const LEASE: Duration = Duration::from_secs(3);

type Replica = InProcessReplica;

async fn start_replica<C: Clock + 'static>(name: &str, config: &ServerConfig, clock: &Arc<C>) -> Replica {
    let clock = clock.clone();
    InProcessReplica::start(name, config, LEASE, move |b| {
        b.clock(clock.clone()).dev_token(TOKEN)
    })
    .await
    .expect("replica")
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

/// Creates org `acme`, its discovery of the project and a location for every cluster, through
/// `api` (at `url`).
async fn onboard(api: &Client, url: &str) {
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
        .post(format!("{url}/v1/orgs/acme/locations"))
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
}

/// A PostgreSQL server with database `fleet`, a simulated fleet of `shoots` shoots (whose agents
/// are simulated when `agents`: locations valid at once, backups as the test reports them) in
/// project `acme-prod`, and the replicas' configuration, garden credential included.
fn setup(shoots: usize, agents: bool) -> (Postgres, Fleet, tempfile::TempDir, ServerConfig) {
    let pg = Postgres::start().expect("PostgreSQL");
    pg.create_database("fleet").expect("db");
    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    fleet.add_project(PROJECT).expect("project");
    fleet.add_shoots(PROJECT, "shoot", shoots).expect("shoots");
    if agents {
        for i in 0..shoots {
            fleet
                .shoot(PROJECT, &format!("shoot-{i:05}"))
                .and_then(|s| s.simulate_agent())
                .expect("simulated agent");
        }
    }
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
    (pg, fleet, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_work_a_fleet_and_fire_every_schedule_slot_once_across_a_kill() {
    let (pg, fleet, _dir, config) = setup(SHOOTS, false);
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
    onboard(&api, &standby.url).await;
    // Every cluster is discovered and visited (no agent runs: they are AgentMissing), as the
    // active replica knows it: the test's clock stands still, so a cluster is visited once
    // before it moves, and a visit's result that did not reach the catalog (seen once in
    // about ten runs through a standby) is written again only at the next visit.
    let active_api = through(replicas.iter().find(|r| r.name == first).expect("active"));
    until("50 clusters visited", Duration::from_secs(120), || async {
        let clusters = clusters(&active_api).await?;
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
    // Until one of them takes over, the standbys answer the fleet status from their own view.
    for r in &replicas {
        let status = through(r)
            .fleet_status(&ListQuery::default())
            .await
            .expect("a standby answers the fleet status with no active replica");
        assert_eq!(
            status.counts.values().sum::<u64>(),
            SHOOTS as u64,
            "{:?}",
            status.counts
        );
        assert_eq!(
            status.counts.get("AgentMissing"),
            Some(&(SHOOTS as u64)),
            "{:?}",
            status.counts
        );
    }
    assert_eq!(
        lease_holder(&pg).map(|(h, _)| h),
        Some(first.clone()),
        "the fleet status above was answered before the takeover"
    );
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

/// Asks for a backup of every cluster through `url`, again while no replica is active (`503`,
/// nothing done); the backups made.
async fn back_up_all(url: &str) -> Vec<pxb_core::catalog::records::BackupRecord> {
    let request = BackupRequest {
        clusters: ClusterSelector {
            all: true,
            ..ClusterSelector::default()
        },
        namespaces: vec!["shop".into()],
        location: "primary".into(),
    };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http
            .post(format!("{url}/v1/orgs/acme/backups"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&request).expect("json"))
            .send()
            .await
            .expect("the replica answers");
        let status = answer.status().as_u16();
        if status == 503 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let text = answer.text().await.unwrap_or_default();
        assert_eq!(status, 202, "accepted: {text}");
        let list: pxb_core::api::rest::List<pxb_core::catalog::records::BackupRecord> =
            serde_json::from_str(&text).expect("backups");
        return list.items;
    }
}

/// Plays the agents: reports `phase` on every backup the clusters hold that does not have it
/// yet; the backups (cluster name, backup) reported on.
fn agents_report(fleet: &Fleet, shoots: std::ops::Range<usize>, phase: &str) -> Vec<(String, String)> {
    let mut reported = Vec::new();
    for i in shoots {
        let name = format!("shoot-{i:05}");
        let shoot = fleet.shoot(PROJECT, &name).expect("shoot");
        for b in shoot.report_backups(phase).expect("report") {
            reported.push((name.clone(), b));
        }
    }
    reported
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_replica_with_backups_running_loses_no_backup() {
    const N: usize = SHOOTS;
    let (pg, fleet, _dir, mut config) = setup(N, true);
    // Backups are seen running for as long as this test takes (the server's own clock runs).
    config.fleet.lease_secs = 600;
    let clock = Arc::new(SystemClock);
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(start_replica(&format!("r{i}"), &config, &clock).await);
    }
    let (first, epoch) = until("a replica is active", Duration::from_secs(30), || async {
        lease_holder(&pg)
    })
    .await;
    let standby = replicas.iter().find(|r| r.name != first).expect("standby");
    let api = Client::builder(&standby.url)
        .token(TOKEN)
        .build()
        .expect("client");
    onboard(&api, &standby.url).await;
    until("every cluster ready", Duration::from_secs(120), || async {
        let clusters = clusters(&api).await?;
        (clusters.len() == N && clusters.iter().all(|c| c.status.state == ClusterState::Ready)).then_some(())
    })
    .await;

    // A backup of every cluster starts; the agents report them running.
    let batch1 = back_up_all(&standby.url).await;
    assert_eq!(batch1.len(), N);
    let mut running = Vec::new();
    until("every cluster runs its backup", Duration::from_secs(60), || {
        running.extend(agents_report(&fleet, 0..N, "InProgress"));
        let n = running.len();
        async move { (n == N).then_some(()) }
    })
    .await;

    // Every replica in turn gives way to a new one, as a rolling update does: the new one joins,
    // the old one stops (SIGTERM: it releases the lease if it held it). Midway, half of the
    // backups end and a second backup of every cluster is asked for.
    let mut batch2 = Vec::new();
    let mut ended = Vec::new();
    for round in 0..3 {
        replicas.push(start_replica(&format!("n{round}"), &config, &clock).await);
        let old = replicas.remove(0);
        old.stop().await.expect("stops cleanly");
        if round == 1 {
            ended.extend(agents_report(&fleet, 0..N / 2, "Success"));
            batch2 = back_up_all(&replicas[0].url).await;
        }
    }
    assert_eq!(ended.len(), N / 2, "{ended:?}");
    assert_eq!(batch2.len(), N);
    // The last old replica may have released the lease just now: a new one takes it up.
    let (last, last_epoch) = until(
        "a new replica holds the lease",
        Duration::from_secs(30),
        || async { lease_holder(&pg).filter(|(h, _)| !h.is_empty()) },
    )
    .await;
    assert!(last.starts_with('n'), "a new replica holds the lease: {last}");
    assert!(last_epoch > epoch, "{last_epoch} after {epoch}");

    // Every backup ends, as its cluster reports: the rest of the first batch and the second.
    let mut reported = 0;
    until("every backup reported ended", Duration::from_secs(60), || {
        reported += agents_report(&fleet, 0..N, "Success").len();
        let n = reported;
        async move { (n == N / 2 + N).then_some(()) }
    })
    .await;
    let api = Client::builder(&replicas[0].url)
        .token(TOKEN)
        .build()
        .expect("client");
    let all = until(
        "every backup recorded as ended",
        Duration::from_secs(60),
        || async {
            let c = api.clone();
            let all = api
                .all(ListQuery::default(), move |q| {
                    let c = c.clone();
                    async move { c.list_backups("acme", &q).await }
                })
                .await
                .ok()?;
            all.iter().all(|b| b.phase == BackupPhase::Success).then_some(all)
        },
    )
    .await;
    let mut asked: Vec<String> = batch1.iter().chain(&batch2).map(|b| b.id.clone()).collect();
    asked.sort();
    let mut recorded: Vec<String> = all.iter().map(|b| b.id.clone()).collect();
    recorded.sort();
    assert_eq!(
        recorded, asked,
        "every acknowledged backup is recorded once, no other"
    );
    // Each cluster holds the two backups it was asked to run, no other, both ended.
    for i in 0..N {
        let shoot = fleet.shoot(PROJECT, &format!("shoot-{i:05}")).expect("shoot");
        let on_cluster = shoot.backups().expect("list");
        assert_eq!(on_cluster.len(), 2, "shoot {i}: {on_cluster:?}");
        assert!(
            on_cluster.iter().all(|(_, p)| p.as_deref() == Some("Success")),
            "shoot {i}: {on_cluster:?}"
        );
    }
    assert_eq!(running.len(), N, "{running:?}");
    for r in replicas {
        r.stop().await.expect("stops cleanly");
    }
}
