//! What tenants control reaches the server through their clusters: ids that do not fit
//! Kubernetes' rules for names and labels, and an agent (or anything answering on its Service)
//! that answers the catalog read with whatever it likes. A real `Server` (in-memory catalog, its
//! scheduler running) visits simulated shoots whose API servers refuse, as kube-apiserver does,
//! names and labels that break apimachinery's rules.
//!
//! Each test is an attack that succeeded before its fix: with raw ids in labels the simulated API
//! server refused every object (422), and without bounds the server read endless catalog pages
//! and imported every summary (see the unbounded control run in the second test).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource as _, ResourceExt as _};
use pxb_core::SystemClock;
use pxb_core::catalog::records::{
    BackupRecord, ClusterRecord, ClusterSelector, ClusterState, LocationRecord, LocationStatus, Org,
};
use pxb_core::catalog::{MemoryCatalog, Query};
use pxb_core::cluster::{ClusterId, ClusterInfo, StaticClusters};
use pxb_daemon::crd::{AGENT_NAMESPACE, ApplicationBackup, BackupLocation};
use pxb_daemon::names;
use pxb_daemon::server::backups::BackupRequest;
use pxb_daemon::server::config::ServerConfig;
use pxb_daemon::server::{Server, ServerDeps, auth};
use pxb_sim::store::{label_value_errors, qualified_name_errors};
use pxb_sim::{Fleet, FleetConfig};
use serde_json::{Value, json};

async fn server(tweak: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut config = ServerConfig::default();
    config.fleet.call_timeout_ms = 2000;
    config.fleet.resync_secs = 1;
    config.fleet.lease_secs = 60;
    config.fleet.snapshot_interval_ms = 100;
    tweak(&mut config);
    Server::build(
        config,
        ServerDeps {
            catalog: Arc::new(MemoryCatalog::new()),
            clock: Arc::new(SystemClock),
            authenticator: Arc::new(auth::Authenticators(Vec::new())),
            sealer: None,
        },
    )
    .await
    .expect("server")
}

/// Shoot `shoot-00000` of `project` with pxb's CRDs, `pxb-system`, the agent's Deployment and
/// Service (no agent answers behind them); a client for it; and the cluster registered in `org`
/// under `name` with id `id`.
async fn shoot(
    fleet: &Fleet,
    server: &Server,
    project: &str,
    org: &str,
    name: &str,
    id: &str,
) -> kube::Client {
    fleet.add_project(project).expect("project");
    fleet.add_shoots(project, "shoot", 1).expect("shoot");
    let provider = Arc::new(StaticClusters::new());
    let access = register(
        fleet,
        server,
        &provider,
        (project, "shoot-00000"),
        (org, name, id),
    )
    .await;
    let client = pxb_gardener::kube_client(&access).expect("client");
    pxb_daemon::sim::install_pxb(&client).await.expect("install");
    // The agent's Deployment, so that the cluster is `Ready` once visited: without it a visit
    // that comes before the backup is asked for makes the cluster `AgentMissing` and the backup
    // `Missed` (the test raced the scheduler's first visit).
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/agent/30-deployment.yaml"
        ))
        .expect("manifest"),
    )
    .expect("deployment");
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), AGENT_NAMESPACE)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("agent deployment");
    let service: k8s_openapi::api::core::v1::Service = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/agent/40-service.yaml"
        ))
        .expect("manifest"),
    )
    .expect("service");
    Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), AGENT_NAMESPACE)
        .create(&PostParams::default(), &service)
        .await
        .expect("agent service");
    client
}

/// Registers simulated shoot `(project, shoot)` in `server` as cluster `(org, name, id)`, with
/// a fresh admin kubeconfig served by `provider`; returns the access.
async fn register(
    fleet: &Fleet,
    server: &Server,
    provider: &Arc<StaticClusters>,
    (project, shoot): (&str, &str),
    (org, name, id): (&str, &str, &str),
) -> pxb_core::cluster::ClusterAccess {
    let yaml = fleet.admin_kubeconfig(project, shoot, 3600).expect("kubeconfig");
    let now = SystemTime::now();
    let access = pxb_gardener::parse_access(&yaml, now, now + Duration::from_secs(3600)).expect("access");
    provider.insert(
        ClusterInfo::new(ClusterId(id.into()), name, format!("garden-{project}"))
            .with_provider_type("azure")
            .with_kubernetes_version("1.31.0")
            .with_region("westeurope"),
        Some(access.clone()),
    );
    server
        .add_cluster(
            ClusterRecord {
                org: org.into(),
                id: id.into(),
                name: name.into(),
                source: "imported".into(),
                ..ClusterRecord::default()
            },
            provider.clone(),
        )
        .await
        .expect("cluster");
    access
}

async fn org(server: &Server, id: &str) {
    server
        .create_org(Org {
            id: id.into(),
            display_name: format!("Org {}", id.len()),
            ..Org::default()
        })
        .await
        .expect("org");
}

fn location(org: &str, id: &str, sync: bool) -> LocationRecord {
    LocationRecord {
        org: org.into(),
        id: id.into(),
        name: "primary".into(),
        provider: "azure".into(),
        account: Some("tenantstore".into()),
        container: "backups".into(),
        client_id: Some("00000000-0000-0000-0000-000000000001".into()),
        tenant_id: Some("00000000-0000-0000-0000-000000000002".into()),
        clusters: ClusterSelector {
            all: true,
            ..ClusterSelector::default()
        },
        sync,
        ..LocationRecord::default()
    }
}

/// Polls `probe` every 200 ms until it gives `Some`; panics with `what` after `timeout`.
async fn wait<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every label and annotation key and every label value of `meta` is one kube-apiserver takes.
fn assert_valid_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    for (k, v) in meta.labels.iter().flatten() {
        assert!(qualified_name_errors(k).is_empty(), "label key {k:?}");
        assert!(label_value_errors(v).is_empty(), "label {k}={v:?}");
    }
    for k in meta.annotations.iter().flatten().map(|(k, _)| k) {
        assert!(qualified_name_errors(k).is_empty(), "annotation key {k:?}");
    }
    let name = meta.name.as_deref().unwrap_or_default();
    assert!(pxb_sim::store::is_dns1123_subdomain(name), "name {name:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_longer_than_a_label_still_make_objects_the_cluster_takes_and_orphans_still_go() {
    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    // What this test is about is the objects' metadata, not timing: calls get the default's
    // time, so that a busy machine (the other tests of this binary run beside it) does not turn
    // visits into timeouts and their back-off.
    let server = server(|c| c.fleet.call_timeout_ms = 10_000).await;
    // An org id and a location id longer than a label value may be, with characters no label
    // takes; a cluster name that makes backup ids longer than 63 (`<cluster>-<stamp>-<hex>`).
    let org_id = format!("org-{}", "tenant".repeat(12));
    let loc_id = format!("Location/{}", "L".repeat(70));
    let cluster = format!("c{}", "x".repeat(59));
    org(&server, &org_id).await;
    let client = shoot(&fleet, &server, "acme", &org_id, &cluster, "id-long").await;
    let _running = server.spawn();
    // The backup is asked for after the first visit, always (it used to race it): the cluster
    // must be one that takes backups then.
    wait("the cluster is visited", Duration::from_secs(60), || async {
        let state = server.clusters(&org_id)[0].status.state;
        (state != ClusterState::Unknown).then_some(())
    })
    .await;
    server
        .create_location(location(&org_id, &loc_id, false), None)
        .await
        .expect("location");
    let backups = server
        .create_backups(
            &org_id,
            &BackupRequest {
                clusters: ClusterSelector {
                    all: true,
                    ..ClusterSelector::default()
                },
                namespaces: vec!["shop".into()],
                location: "primary".into(),
            },
        )
        .await
        .expect("backups");
    let backup_id = backups[0].id.clone();
    assert!(backup_id.len() > 63, "{backup_id}");

    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let apps: Api<ApplicationBackup> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    // Before the fix the simulated API server refused both objects (422: the label values are
    // longer than 63): the location was Invalid on the cluster and the backup Failed.
    let primary = wait(
        "the BackupLocation is written",
        Duration::from_secs(60),
        || async { locations.get_opt("primary").await.ok().flatten() },
    )
    .await;
    assert_valid_meta(&primary.metadata);
    assert_eq!(primary.annotations().get(names::ORIGINAL_ORG), Some(&org_id));
    assert_eq!(primary.annotations().get(names::ORIGINAL_UID), Some(&loc_id));
    let deadline = Instant::now() + Duration::from_secs(60);
    let app = loop {
        if let Some(app) = apps
            .list(&ListParams::default())
            .await
            .ok()
            .and_then(|l| l.items.into_iter().next())
        {
            break app;
        }
        assert!(
            Instant::now() < deadline,
            "the ApplicationBackup is not written within 60 s: the backup is {:?}, the cluster {:?}",
            server
                .backup(&org_id, &backup_id)
                .await
                .map(|b| (b.phase, b.message)),
            server.clusters(&org_id)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_valid_meta(&app.metadata);
    assert_eq!(app.annotations().get(names::ORIGINAL_UID), Some(&backup_id));
    let record = server.backup(&org_id, &backup_id).await.expect("record");
    assert_ne!(record.phase, "Failed", "{:?}", record.message);
    let statuses: Vec<LocationStatus> = server.location_statuses(&org_id, &loc_id);
    assert!(
        statuses.iter().all(|s| s.validation.phase != "Invalid"),
        "{statuses:?}"
    );

    // Orphan detection matches the hashed labels: the wanted object stays (same uid across
    // visits), a stray one of the org mirroring no location goes.
    let uid = primary.meta().uid.clone();
    let mut stray = BackupLocation::new("stray", primary.spec.clone());
    stray.metadata.labels = Some(pxb_daemon::server::reconcile::labels(
        &org_id,
        &format!("{loc_id}-gone"),
    ));
    locations
        .create(&PostParams::default(), &stray)
        .await
        .expect("stray");
    wait("the stray object is deleted", Duration::from_secs(30), || async {
        locations.get_opt("stray").await.ok()?.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = locations.get("primary").await.expect("primary stays");
    assert_eq!(
        again.meta().uid,
        uid,
        "the wanted object was deleted and made again"
    );
    assert_eq!(
        server.metrics().orphans_deleted.load(Ordering::Relaxed),
        1,
        "only the stray object went"
    );

    // The location goes: its object is an orphan now.
    assert!(server.delete_location(&org_id, "primary").await.expect("delete"));
    wait(
        "the location's object is deleted",
        Duration::from_secs(30),
        || async { locations.get_opt("primary").await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// What a hostile catalog backend serves.
#[derive(Clone, Copy)]
enum Backend {
    /// `n` summaries on one page.
    Honest(u64),
    /// Pages of 1000 summaries, each with a new cursor, forever.
    EndlessPages,
    /// `n` pages of 1000 summaries.
    Pages(u64),
    /// Empty pages, each with a new cursor, forever.
    EmptyPages,
    /// One page whose body never ends.
    EndlessBody,
}

/// Counters of a backend: pages answered, bytes sent.
#[derive(Default)]
struct Served {
    pages: AtomicU64,
    bytes: AtomicU64,
}

fn summary(i: u64) -> Value {
    json!({"id": format!("20260101T000000Z-{i:08x}"), "kind": "resources", "created": 1_767_225_600u64,
           "status": "completed", "namespaces": ["shop"], "tag": format!("app/x{i}"),
           "bytes": 1, "stored_bytes": 1, "items": 1})
}

/// Starts a backend on loopback answering `/v1/catalog` as `kind`.
async fn backend(kind: Backend) -> (std::net::SocketAddr, Arc<Served>) {
    use axum::extract::{Query as Q, State};
    use std::collections::HashMap;
    let served = Arc::new(Served::default());
    let app = axum::Router::new()
        .route(
            "/v1/catalog",
            axum::routing::get(
                move |State(served): State<Arc<Served>>, Q(q): Q<HashMap<String, String>>| async move {
                    served.pages.fetch_add(1, Ordering::Relaxed);
                    let page: u64 = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
                    let body = match kind {
                        Backend::Honest(n) => json!({"items": (0..n).map(summary).collect::<Vec<_>>()}),
                        Backend::EndlessPages => json!({
                            "items": (page * 1000..(page + 1) * 1000).map(summary).collect::<Vec<_>>(),
                            "continue": (page + 1).to_string(),
                        }),
                        Backend::Pages(n) => json!({
                            "items": (page * 1000..(page + 1) * 1000).map(summary).collect::<Vec<_>>(),
                            "continue": (page + 1 < n).then(|| (page + 1).to_string()),
                        }),
                        Backend::EmptyPages => json!({"items": [], "continue": (page + 1).to_string()}),
                        Backend::EndlessBody => {
                            let s = served.clone();
                            let head = futures::stream::once(async {
                                Ok::<_, std::convert::Infallible>(bytes::Bytes::from_static(b"{\"items\": ["))
                            });
                            let rest = futures::stream::unfold(0u64, move |i| {
                                let s = s.clone();
                                async move {
                                    let mut chunk = String::new();
                                    for j in 0..500 {
                                        chunk.push_str(&summary(i * 500 + j).to_string());
                                        chunk.push(',');
                                    }
                                    s.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                    Some((Ok(bytes::Bytes::from(chunk)), i + 1))
                                }
                            });
                            use futures::StreamExt as _;
                            return axum::response::Response::new(axum::body::Body::from_stream(
                                head.chain(rest),
                            ));
                        }
                    };
                    let text = body.to_string();
                    served.bytes.fetch_add(text.len() as u64, Ordering::Relaxed);
                    axum::response::Response::new(axum::body::Body::from(text))
                },
            ),
        )
        .with_state(served.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, served)
}

/// Org `org` with cluster `<org>-cluster` on project `<org>` whose agent Service is answered by
/// `kind`, and a location `primary` that syncs; the test plays the agent and reports the first
/// sync done. Returns what the backend served.
async fn tenant(fleet: &Fleet, server: &Server, org_id: &str, kind: Backend) -> Arc<Served> {
    org(server, org_id).await;
    let client = shoot(
        fleet,
        server,
        org_id,
        org_id,
        &format!("{org_id}-cluster"),
        &format!("id-{org_id}"),
    )
    .await;
    let (addr, served) = backend(kind).await;
    fleet
        .shoot(org_id, "shoot-00000")
        .expect("shoot")
        .register_service_backend(AGENT_NAMESPACE, "pxb-agent", "http", addr);
    server
        .create_location(location(org_id, &format!("loc-{org_id}"), true), None)
        .await
        .expect("location");
    let locations: Api<BackupLocation> = Api::namespaced(client, AGENT_NAMESPACE);
    wait(
        "the BackupLocation is written",
        Duration::from_secs(30),
        || async { locations.get_opt("primary").await.ok().flatten() },
    )
    .await;
    let status = json!({"status": {"observedSyncRequest": 0,
        "sync": {"phase": "Completed", "request": 0, "backupsFound": 1_000_000u64}}});
    locations
        .patch_status("primary", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("report the sync");
    served
}

async fn synced(server: &Server, org: &str) -> usize {
    server
        .catalog()
        .list_all::<BackupRecord>(&Query::org(org))
        .await
        .expect("list")
        .into_iter()
        .filter(|b| b.synced)
        .count()
}

fn sync_message(server: &Server, org: &str) -> String {
    server
        .location_statuses(org, &format!("loc-{org}"))
        .into_iter()
        .find_map(|s| s.sync.and_then(|r| r.message))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_cannot_make_the_server_read_or_import_without_bound() {
    // Control: with the bounds as good as off (what the server did before), every page is read
    // and every summary imported, far past what the bounded server below allows (5 pages, 50
    // per org). (Endless pages held the visit until its deadline, then failed it.)
    {
        let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
        let server = server(|c| {
            c.fleet.max_synced_backups_per_org = u64::MAX;
            c.fleet.catalog_max_pages = u64::MAX;
            c.fleet.catalog_page_max_bytes = u64::MAX;
        })
        .await;
        let _running = server.spawn();
        let served = tenant(&fleet, &server, "unbounded", Backend::Pages(20)).await;
        wait(
            "the unbounded server imports everything",
            Duration::from_secs(120),
            || async { (synced(&server, "unbounded").await == 20_000).then_some(()) },
        )
        .await;
        assert_eq!(served.pages.load(Ordering::Relaxed), 20);
    }

    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    let server = server(|c| {
        c.fleet.max_synced_backups_per_org = 50;
        c.fleet.catalog_max_pages = 5;
        c.fleet.catalog_page_max_bytes = 1 << 20;
    })
    .await;
    let _running = server.spawn();
    let pages = tenant(&fleet, &server, "acme", Backend::EndlessPages).await;
    let empty = tenant(&fleet, &server, "hooli", Backend::EmptyPages).await;
    let body = tenant(&fleet, &server, "initech", Backend::EndlessBody).await;
    let honest = tenant(&fleet, &server, "globex", Backend::Honest(3)).await;

    // A million summaries on endless pages: reading stops at what the org may hold, 50 are
    // imported (the org's limit), and the sync status says so.
    let message = wait(
        "acme's import stops at its limit",
        Duration::from_secs(60),
        || async {
            let m = sync_message(&server, "acme");
            m.contains("import limit reached").then_some(m)
        },
    )
    .await;
    assert!(
        message.contains("import limit reached: 50 of 1000000 imported"),
        "{message}"
    );
    assert!(message.contains("stopped after 50 backups"), "{message}");
    assert_eq!(synced(&server, "acme").await, 50);
    assert_eq!(pages.pages.load(Ordering::Relaxed), 1);

    // Endless empty pages: 5 read, then the read stops and says so.
    let message = wait(
        "hooli's read stops at the page bound",
        Duration::from_secs(60),
        || async {
            let m = sync_message(&server, "hooli");
            m.contains("stopped after").then_some(m)
        },
    )
    .await;
    assert!(message.contains("stopped after 5 pages"), "{message}");
    assert_eq!(empty.pages.load(Ordering::Relaxed), 5);

    // An endless body: refused past 1 MiB, nothing imported, and the status says why.
    let message = wait(
        "initech's read stops at the page bound",
        Duration::from_secs(60),
        || async {
            let m = sync_message(&server, "initech");
            m.contains("larger than").then_some(m)
        },
    )
    .await;
    assert!(message.contains("larger than 1048576 bytes"), "{message}");
    assert_eq!(synced(&server, "initech").await, 0);
    let sent = body.bytes.load(Ordering::Relaxed);
    assert!(sent < 16 << 20, "the backend kept sending: {sent} bytes");

    // Another org is unaffected.
    wait("globex imports its backups", Duration::from_secs(60), || async {
        (synced(&server, "globex").await == 3).then_some(())
    })
    .await;
    assert_eq!(honest.pages.load(Ordering::Relaxed), 1);
    assert!(!sync_message(&server, "globex").contains("limit"));

    // Later visits neither read again nor lose the message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pages.pages.load(Ordering::Relaxed), 1);
    assert_eq!(empty.pages.load(Ordering::Relaxed), 5);
    assert!(sync_message(&server, "acme").contains("import limit reached"));
}

/// One org's clusters that all hang until the call deadline (a blackholed API server each) do
/// not hold up another org's visits: the scheduler shares visit slots between orgs. Before the
/// fix the calm org's cluster waited behind every hanging one (40 clusters, 4 slots, 2 s each:
/// about 20 s); now it is visited in the first round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_orgs_hanging_clusters_do_not_hold_up_another_orgs_visits() {
    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    let server = server(|c| {
        c.fleet.concurrency = 4;
        c.fleet.call_timeout_ms = 2000;
        c.fleet.resync_secs = 60;
        c.fleet.offline_backoff_secs = 60;
        c.fleet.offline_backoff_max_secs = 60;
    })
    .await;
    org(&server, "flood").await;
    org(&server, "calm").await;
    let add = |project: &'static str, prefix: &'static str, n: usize, org: &'static str, hang: bool| {
        let (fleet, server) = (&fleet, &server);
        async move {
            fleet.add_project(project).expect("project");
            fleet.add_shoots(project, prefix, n).expect("shoots");
            let provider = Arc::new(StaticClusters::new());
            for i in 0..n {
                let name = format!("{prefix}-{i:05}");
                if hang {
                    fleet
                        .set_fault(project, &name, pxb_sim::Fault::Offline)
                        .expect("fault");
                }
                let id = format!("{org}-{i}");
                register(fleet, server, &provider, (project, &name), (org, &name, &id)).await;
            }
        }
    };
    // The flood's clusters are known first, so they fall due first.
    add("flood", "hang", 40, "flood", true).await;
    add("calm", "ok", 1, "calm", false).await;
    let started = Instant::now();
    let _running = server.spawn();
    let state = wait(
        "the calm org's cluster is visited",
        Duration::from_secs(60),
        || async {
            let c = server.clusters("calm");
            (c[0].status.state != ClusterState::Unknown).then(|| c[0].status.state)
        },
    )
    .await;
    let took = started.elapsed();
    assert_eq!(state, ClusterState::AgentMissing, "reached, without an agent");
    assert!(
        took < Duration::from_secs(5),
        "the calm org's only cluster waited {took:?} behind the flood's hanging ones"
    );
    // The flood is still being worked through meanwhile.
    let flood_visited = server
        .clusters("flood")
        .iter()
        .filter(|c| c.status.state == ClusterState::Unreachable)
        .count();
    assert!(flood_visited < 40, "{flood_visited}");
}

/// A restore restores the namespaces its request names, or else those this server recorded for
/// the backup: never the ones the location lists (whoever can write it could list any). A backup
/// a sync imported has only the location's word, so its restore must name them; and restoring
/// into `pxb-system` or `kube-*` (where a workload gets cluster-wide rights) is for org admins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_take_their_namespaces_from_the_server_not_the_location() {
    use pxb_core::catalog::records::BackupPhase;
    use pxb_daemon::server::backups::RestoreRequest;
    let server = server(|_| {}).await;
    org(&server, "acme").await;
    server
        .add_cluster(
            ClusterRecord {
                org: "acme".into(),
                id: "c1".into(),
                name: "shoot-a".into(),
                source: "imported".into(),
                ..ClusterRecord::default()
            },
            Arc::new(StaticClusters::new()),
        )
        .await
        .expect("cluster");
    let loc = server
        .create_location(location("acme", "loc1", false), None)
        .await
        .expect("location");
    let record = |id: &str, synced: bool| BackupRecord {
        org: "acme".into(),
        id: id.into(),
        cluster: "c1".into(),
        cluster_name: "shoot-a".into(),
        location: loc.id.clone(),
        location_name: loc.name.clone(),
        namespaces: vec!["shop".into()],
        phase: BackupPhase::Success,
        backup_id: Some(format!("data-{id}")),
        synced,
        ..BackupRecord::default()
    };
    server
        .catalog()
        .put_all(&[record("made-here", false), record("imported", true)])
        .await
        .expect("records");
    let req = |backup: &str| RestoreRequest {
        backup: backup.into(),
        ..RestoreRequest::default()
    };
    // Made by this server: its recorded namespaces, whatever the location says now.
    let r = server
        .create_restore("acme", &req("made-here"), false)
        .await
        .expect("restore");
    assert_eq!(r.namespaces, ["shop"]);
    // Imported by a sync: the request must say.
    let err = server
        .create_restore("acme", &req("imported"), false)
        .await
        .expect_err("must name them");
    assert!(err.to_string().contains("name the namespaces"), "{err}");
    let named = RestoreRequest {
        namespaces: vec!["shop".into()],
        ..req("imported")
    };
    let r = server
        .create_restore("acme", &named, false)
        .await
        .expect("restore");
    assert_eq!(r.namespaces, ["shop"]);
    // Into the agent's namespace or kube-*: admins only.
    for target in ["pxb-system", "kube-system"] {
        let mapped = RestoreRequest {
            namespace_mapping: [("shop".to_string(), target.to_string())].into(),
            ..req("made-here")
        };
        let err = server
            .create_restore("acme", &mapped, false)
            .await
            .expect_err("operator");
        assert!(
            matches!(err, pxb_core::Error::PermissionDenied { .. }),
            "{target}: {err}"
        );
        server
            .create_restore("acme", &mapped, true)
            .await
            .expect("an admin may");
    }
}
