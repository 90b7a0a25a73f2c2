//! Scenarios of the agent: its controllers run in-process against a cluster and Azurite with
//! Workload Identity. Each scenario runs on two backends ([`Backend`]):
//!
//! - the simulated shoot (HTTPS, client certificates from the simulated garden), where the agent
//!   uses the administrator's client;
//! - the real kube-apiserver (and etcd) of `pxb_tests::real`, with `deploy/crds` and
//!   `deploy/agent` applied, where the agent authenticates as its own ServiceAccount
//!   (`pxb-system/pxb-agent`, a TokenRequest token, as the kubelet projects it into the pod) and
//!   so works under exactly the RBAC that `deploy/agent/20-rbac.yaml` grants.
//!
//! The real server has no controller manager: no PersistentVolume controller (tests bind claims
//! themselves, as the simulator's scenarios already did), no garbage collector and no namespace
//! finalization. What the agent may and may not do under its RBAC is checked in
//! `the_agent_rbac_grants_what_it_needs_and_no_more`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource as _, ResourceExt as _};
use pxb_daemon::agent::AgentConfig;
use pxb_daemon::agent::locations::{self, Context};
use pxb_daemon::crd::{
    ApplicationBackup, ApplicationBackupSpec, BackupLocation, BackupLocationSpec, ValidationStatus,
};
use pxb_tests::fixture::{AzureFixture, CLIENT_ID, SECOND_CLIENT_ID};
use pxb_tests::objects::{apply, bind, tree};
use pxb_tests::real::RealCluster;
use serde_json::json;

/// Where a scenario runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// A simulated shoot; the agent uses the administrator's client.
    Simulator,
    /// The real kube-apiserver of a cluster of the test's own; the agent uses its
    /// ServiceAccount's token under `deploy/agent`'s RBAC.
    RealServer,
}

/// The cluster of one scenario: a client for the test's own setup and checks (the cluster's
/// administrator, or the server and tenants that create pxb's objects), and the client the
/// agent's controllers use.
struct Shoot {
    backend: Backend,
    /// The administrator.
    admin: kube::Client,
    /// The agent's identity: the administrator on the simulator, ServiceAccount
    /// `pxb-system/pxb-agent` on the real server.
    agent: kube::Client,
    sim: Option<pxb_tests::shoots::ShootFixture>,
    /// The real cluster (kept running for the scenario).
    real: Option<RealCluster>,
}

impl Shoot {
    /// A cluster with pxb's CRDs and namespace installed (on the real server: all of
    /// `deploy/crds` and `deploy/agent`, applied with kubectl).
    async fn start(backend: Backend) -> Self {
        match backend {
            Backend::Simulator => {
                let sim = pxb_tests::shoots::ShootFixture::start(1)
                    .await
                    .expect("simulated shoot");
                let admin = sim.client(0).await.expect("client");
                pxb_tests::shoots::install_pxb(&admin).await.expect("install pxb");
                Self {
                    backend,
                    agent: admin.clone(),
                    admin,
                    sim: Some(sim),
                    real: None,
                }
            }
            Backend::RealServer => {
                let (real, token) = tokio::task::spawn_blocking(|| {
                    let real = pxb_tests::real::start();
                    pxb_tests::real::install_pxb(&real).expect("install pxb on the real server");
                    let token = pxb_tests::real::service_account_token(
                        &real,
                        "pxb-system",
                        "pxb-agent",
                        pxb_tests::real::API_AUDIENCES[0],
                        Duration::from_secs(3600),
                    )
                    .expect("a token for pxb-agent");
                    (real, token)
                })
                .await
                .expect("start the real cluster");
                let admin = pxb_tests::real::admin_client(&real).await.expect("admin client");
                let agent = pxb_tests::real::token_client(&real, "pxb-agent", &token)
                    .await
                    .expect("the agent's client");
                // Bindings reach the authorizer a moment after they are written.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let own = Api::<BackupLocation>::namespaced(agent.clone(), "pxb-system")
                        .list(&Default::default())
                        .await;
                    let cluster = Api::<k8s_openapi::api::core::v1::Namespace>::all(agent.clone())
                        .list(&Default::default())
                        .await;
                    if own.is_ok() && cluster.is_ok() {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the agent's RBAC never took effect: {own:?} {cluster:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Self {
                    backend,
                    admin,
                    agent,
                    sim: None,
                    real: Some(real),
                }
            }
        }
    }
}

/// The Azure side of a scenario (CA, Azurite, the Entra ID stand-in, the projected token file).
///
/// On the real server the whole Workload Identity chain is real: the token file holds a
/// TokenRequest token of `pxb-system/pxb-agent` for `api://AzureADTokenExchange`, and the stand-in
/// grants a storage token only to an assertion whose issuer, subject and audience match a
/// federated credential of the client id and whose signature verifies against the keys the API
/// server publishes (OIDC discovery, fetched anonymously as Entra does). Both managed identities
/// trust the agent's ServiceAccount, as a tenant configures them.
fn azure(shoot: &Shoot) -> AzureFixture {
    match &shoot.real {
        None => AzureFixture::start(3600).expect("azure fixture"),
        Some(real) => AzureFixture::federated(
            real,
            &[
                (CLIENT_ID, "pxb-system", "pxb-agent"),
                (SECOND_CLIENT_ID, "pxb-system", "pxb-agent"),
            ],
            3600,
        )
        .expect("azure fixture federated with the real server's issuer"),
    }
}

/// The agent's settings for the fixture: its Workload Identity, trusting the test CA.
fn agent_config(fx: &AzureFixture) -> AgentConfig {
    let mut config = AgentConfig::default();
    config.workload_identity = fx.wi_options(CLIENT_ID);
    config.ca_file = Some(fx.ca.ca_file());
    config
}

fn azure_location(fx: &AzureFixture, container: &str, client_id: Option<&str>) -> BackupLocationSpec {
    let mut spec = BackupLocationSpec {
        provider: "azure".into(),
        account: Some(pxb_tests::azurite::ACCOUNT.into()),
        container: container.into(),
        endpoint: Some(fx.azurite.endpoint()),
        ..BackupLocationSpec::default()
    };
    spec.auth.mode = "workloadIdentity".into();
    spec.auth.client_id = client_id.map(str::to_owned);
    spec
}

async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, ok: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let obj = api.get(name).await.expect("get");
        if ok(&obj) {
            return obj;
        }
        assert!(Instant::now() < deadline, "{name}: {what}; last state {obj:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn validation(loc: &BackupLocation) -> Option<&ValidationStatus> {
    loc.status.as_ref().and_then(|s| s.validation.as_ref())
}

fn phase_is(phase: &'static str) -> impl Fn(&BackupLocation) -> bool {
    move |l| validation(l).is_some_and(|v| v.phase == phase)
}

async fn locations_are_validated_with_their_own_identities(backend: Backend) {
    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let fx = azure(&shoot);
    let containers = [fx.container_name("agent-a"), fx.container_name("agent-b")];
    for c in &containers {
        pxb_azure::AzureBlobStore::new(fx.key_config(c))
            .expect("store")
            .create_container()
            .await
            .expect("container");
    }
    let config = agent_config(&fx);
    let ctx = Context::new(shoot.agent.clone(), config);
    let controller = locations::spawn(ctx.clone());
    let api: Api<BackupLocation> = Api::namespaced(client, "pxb-system");
    let pp = PostParams::default();

    // The pod's identity, and a second identity named by the location itself.
    api.create(
        &pp,
        &BackupLocation::new("a", azure_location(&fx, &containers[0], None)),
    )
    .await
    .expect("create");
    api.create(
        &pp,
        &BackupLocation::new("b", azure_location(&fx, &containers[1], Some(SECOND_CLIENT_ID))),
    )
    .await
    .expect("create");
    wait_for(&api, "a", "becomes Valid", phase_is("Valid")).await;
    wait_for(&api, "b", "becomes Valid", phase_is("Valid")).await;
    let granted: Vec<String> = fx
        .entra
        .exchanges()
        .into_iter()
        .filter(|e| e.granted)
        .map(|e| e.client_id)
        .collect();
    assert!(granted.iter().any(|c| c == CLIENT_ID), "{granted:?}");
    assert!(granted.iter().any(|c| c == SECOND_CLIENT_ID), "{granted:?}");
    if let Some(real) = &shoot.real {
        // The assertions were checked against the real API server's published keys.
        let fetches = fx.entra.key_fetches();
        let jwks = format!("{}/openid/v1/jwks", real.issuer());
        assert!(
            fetches.iter().any(|f| f.url == jwks && f.status == Some(200)),
            "{fetches:?}"
        );
    }

    // An identity Entra does not know fails at the authenticate step, with Entra's reason.
    api.create(
        &pp,
        &BackupLocation::new(
            "c",
            azure_location(&fx, &containers[0], Some("00000000-0000-4000-8000-00000000dead")),
        ),
    )
    .await
    .expect("create");
    let c = wait_for(&api, "c", "becomes Invalid", phase_is("Invalid")).await;
    let v = validation(&c).expect("validation");
    assert_eq!(v.failed_step.as_deref(), Some("authenticate"), "{v:?}");
    assert!(
        v.reason.as_deref().is_some_and(|r| r.contains("AADSTS700016")),
        "{v:?}"
    );

    // A request counter asks for one more validation, acknowledged in the status.
    let before = validation(&api.get("a").await.expect("get")).cloned();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"validateRequest": 1}})),
    )
    .await
    .expect("request");
    let a = wait_for(&api, "a", "acknowledges the request", |l| {
        l.status
            .as_ref()
            .is_some_and(|s| s.observed_validate_request == 1)
    })
    .await;
    assert_eq!(validation(&a).map(|v| v.phase.as_str()), Some("Valid"));
    assert!(before.is_some());
    controller.abort();
}

async fn invalid_specs_are_reported_without_a_retry_loop(backend: Backend) {
    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let dir = tempfile::tempdir().expect("dir");
    let mut config = AgentConfig::default();
    config.workload_identity = pxb_azure::WorkloadIdentityOptions {
        client_id: Some(CLIENT_ID.into()),
        tenant_id: Some("t".into()),
        token_file: Some(dir.path().join("no-token")),
        authority_host: Some("https://127.0.0.1:1".into()),
    };
    let ctx: Arc<Context> = Context::new(shoot.agent.clone(), config);
    let controller = locations::spawn(ctx.clone());
    let api: Api<BackupLocation> = Api::namespaced(client, "pxb-system");
    let pp = PostParams::default();
    let spec = |provider: &str, container: &str| BackupLocationSpec {
        provider: provider.into(),
        container: container.into(),
        account: Some("acct".into()),
        ..BackupLocationSpec::default()
    };
    // The CRD's schema lists the providers: the real API server refuses an unknown one before
    // the agent sees it (the simulator does not check enums, so there the agent's own check runs).
    let s3 = api
        .create(&pp, &BackupLocation::new("s3", spec("s3", "bucket")))
        .await;
    let agent_sees_s3 = match (backend, s3) {
        (Backend::Simulator, created) => {
            created.expect("create");
            true
        }
        (Backend::RealServer, Err(kube::Error::Api(e))) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains("spec.provider: Unsupported value: \"s3\""),
                "{e:?}"
            );
            false
        }
        (Backend::RealServer, other) => panic!("the real server must refuse provider s3: {other:?}"),
    };
    api.create(&pp, &BackupLocation::new("empty", spec("azure", "")))
        .await
        .expect("create");
    let mut secretless = spec("azure", "backups");
    secretless.auth.mode = "secretRef".into();
    api.create(&pp, &BackupLocation::new("secretless", secretless))
        .await
        .expect("create");
    api.create(
        &pp,
        &BackupLocation::new("relative", spec("file", "relative/dir")),
    )
    .await
    .expect("create");
    let local = dir.path().join("backups");
    api.create(
        &pp,
        &BackupLocation::new("local", spec("file", &local.to_string_lossy())),
    )
    .await
    .expect("create");

    for (name, needle) in [
        ("s3", "unknown provider \"s3\""),
        ("empty", "spec.container is empty"),
        ("secretless", "secretRef.name is required"),
        ("relative", "must be an absolute directory"),
    ]
    .into_iter()
    .filter(|(name, _)| *name != "s3" || agent_sees_s3)
    {
        let loc = wait_for(&api, name, "becomes Invalid", phase_is("Invalid")).await;
        let v = validation(&loc).expect("validation");
        assert_eq!(v.failed_step.as_deref(), Some("configure"), "{name}: {v:?}");
        assert!(
            v.reason.as_deref().is_some_and(|r| r.contains(needle)),
            "{name}: {v:?}"
        );
    }
    wait_for(&api, "local", "becomes Valid", phase_is("Valid")).await;

    // Nothing is retried in a loop: no validation runs while nothing changes.
    let settled = ctx.validations();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        ctx.validations(),
        settled,
        "no validation without a change or a due interval"
    );

    // Fixing the spec (a new generation) validates again.
    api.patch(
        "relative",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"container": local.to_string_lossy()}})),
    )
    .await
    .expect("fix");
    let fixed = wait_for(&api, "relative", "becomes Valid once fixed", phase_is("Valid")).await;
    let v = validation(&fixed).expect("validation");
    assert_eq!(
        (v.failed_step.as_deref(), v.reason.as_deref()),
        (None, None),
        "old reasons are cleared"
    );
    controller.abort();
}

async fn sync_finds_other_clusters_backups_and_verify_finds_a_deleted_chunk(backend: Backend) {
    use pxb_core::backup::resources::{ResourceBackupOptions, backup_namespace_resources};
    use pxb_core::backup::volume::{VolumeBackupOptions, backup_volume};
    use pxb_core::backup::{Repository, layout};
    use pxb_core::resources::{InMemoryCluster, ResourceSelector};

    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let fx = azure(&shoot);
    let container = fx.container_name("agent-sync");
    let writer = Arc::new(pxb_azure::AzureBlobStore::new(fx.key_config(&container)).expect("store"));
    writer.create_container().await.expect("container");

    // Another cluster wrote a volume backup and the resource backup it belongs to into the location.
    let repo = Repository::new(writer.clone());
    let other = InMemoryCluster::new();
    other
        .seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .expect("seed");
    let data = tempfile::tempdir().expect("dir");
    for i in 0..4 {
        std::fs::write(data.path().join(format!("f{i}")), vec![i as u8; 700 * 1024]).expect("write");
    }
    let mut vopts = VolumeBackupOptions::new(data.path());
    vopts.cluster = Some("other-cluster".into());
    let volume = backup_volume(&repo, vopts).await.expect("volume");
    let opts = ResourceBackupOptions {
        selector: ResourceSelector::namespaces(["shop"]),
        cluster: Some("other-cluster".into()),
        tag: None,
        volumes: vec![pxb_core::backup::VolumeRef {
            namespace: "shop".into(),
            claim: "data".into(),
            backup: volume.id.clone(),
            spec: None,
        }],
    };
    let (resources, _) = backup_namespace_resources(&repo, &other, &opts)
        .await
        .expect("resources");

    let config = agent_config(&fx);
    let ctx = Context::new(shoot.agent.clone(), config);
    let controller = locations::spawn(ctx.clone());
    let api: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
    let mut spec = azure_location(&fx, &container, None);
    spec.sync = true;
    api.create(&PostParams::default(), &BackupLocation::new("shared", spec))
        .await
        .expect("create");
    let loc = wait_for(&api, "shared", "syncs once by itself", |l| {
        l.status
            .as_ref()
            .and_then(|s| s.sync.as_ref())
            .is_some_and(|s| s.phase == "Completed")
    })
    .await;
    let sync = loc.status.as_ref().and_then(|s| s.sync.clone()).expect("sync");
    assert_eq!((sync.backups_found, sync.backups_imported), (2, 2), "{sync:?}");
    let catalog = ctx.catalog("shared").expect("catalog");
    assert!(catalog.backups.contains_key(&resources.id) && catalog.backups.contains_key(&volume.id));
    assert!(
        catalog
            .backups
            .values()
            .all(|b| b.cluster.as_deref() == Some("other-cluster"))
    );

    // The catalog is served by the agent's read API (no object per backup in the cluster).
    let state = Arc::new(pxb_daemon::agent::api::ApiState {
        backups: pxb_daemon::agent::backups::Context::new(
            ctx.clone(),
            Arc::new(pxb_daemon::agent::volumes::MemoryVolumes::new(data.path())),
        ),
        ready: true.into(),
        token: None,
    });
    let (addr, server) = pxb_daemon::agent::api::bind("127.0.0.1:0".parse().expect("addr"), state)
        .await
        .expect("bind");
    if let Some(sim) = &shoot.sim {
        sim.fleet
            .shoot("dev", "shoot-00000")
            .expect("shoot")
            .register_service_backend("pxb-system", "pxb-agent", "http", addr);
        // Without its Service, the service proxy has nothing to reach. (`deploy/agent` creates the
        // Service on the real server.)
        let (code, body) = read_api(&shoot, addr, "/v1/status").await;
        assert_eq!(code, 404, "the proxy needs the Service: {body}");
        apply(
            &client,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "pxb-agent", "namespace": "pxb-system"},
                   "spec": {"selector": {"app": "pxb-agent"}, "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]}}),
        )
        .await;
    }
    let proxy = |path: &str| {
        let path = path.to_owned();
        let shoot = &shoot;
        async move {
            let (code, body) = read_api(shoot, addr, &path).await;
            assert_eq!(code, 200, "{path}: {body}");
            serde_json::from_str::<serde_json::Value>(&body).expect("a JSON answer")
        }
    };
    let status = proxy("/v1/status").await;
    assert_eq!(status["version"], pxb_daemon::agent::api::VERSION);
    assert_eq!(status["syncedLocations"], json!(["shared"]));
    let page = proxy("/v1/catalog?location=shared&cluster=other-cluster&limit=1").await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    let next = page["continue"].as_str().expect("continue").to_owned();
    let page2 = proxy(&format!("/v1/catalog?location=shared&limit=1&continue={next}")).await;
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(1), "{page2}");
    assert_ne!(page["items"][0]["id"], page2["items"][0]["id"]);
    let shop = proxy("/v1/catalog?location=shared&namespace=shop").await;
    assert_eq!(shop["items"][0]["id"], resources.id.to_string(), "{shop}");
    let none = proxy("/v1/catalog?location=shared&cluster=nobody").await;
    assert_eq!(none["items"], json!([]));
    let future = proxy("/v1/catalog?location=shared&since=2100-01-01T00:00:00Z").await;
    assert_eq!(future["items"], json!([]));
    let (code, body) = read_api(&shoot, addr, "/v1/catalog?location=shared&since=yesterday").await;
    assert_eq!(code, 400, "a bad time is a 400: {body}");
    let (code, metrics) = read_api(&shoot, addr, "/metrics").await;
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("pxb_agent_catalog_backups{location=\"shared\"} 2"),
        "{metrics}"
    );
    pxb_tests::promtool_check_metrics(&metrics).expect("the exposition passes promtool");

    // A chunk disappears behind the agent's back; a verify request finds the damaged backup.
    let chunk = pxb_core::store::list_all(writer.as_ref(), layout::CHUNKS);
    use futures::TryStreamExt as _;
    let chunks: Vec<_> = chunk.try_collect().await.expect("chunks");
    assert!(!chunks.is_empty());
    pxb_core::ObjectStore::delete(writer.as_ref(), &chunks[0].path)
        .await
        .expect("delete a chunk");
    api.patch(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"verifyRequest": 1}})),
    )
    .await
    .expect("request");
    let loc = wait_for(&api, "shared", "acknowledges the verify request", |l| {
        l.status.as_ref().is_some_and(|s| s.observed_verify_request == 1)
    })
    .await;
    let verify = loc
        .status
        .as_ref()
        .and_then(|s| s.verify.clone())
        .expect("verify");
    assert_eq!(verify.phase, "Completed", "{verify:?}");
    assert_eq!(verify.damaged_backups, vec![volume.id.to_string()], "{verify:?}");
    assert!(verify.missing_objects >= 1);
    // The resource backup counts the volume data taken with it: restoring it needs that too.
    let lost = verify.missing_by_backup.get(&volume.id.to_string()).copied();
    assert!(lost.is_some_and(|n| n >= 1), "{verify:?}");
    assert_eq!(
        verify.missing_by_backup.get(&resources.id.to_string()).copied(),
        lost,
        "{verify:?}"
    );
    assert_eq!(verify.backups_checked, 2);
    assert!(
        ctx.catalog("shared")
            .expect("catalog")
            .damaged
            .contains_key(&volume.id)
    );

    // A new backup appears; a sync request imports just that one.
    let (third, _) = backup_namespace_resources(&repo, &other, &opts)
        .await
        .expect("resources");
    api.patch(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"syncRequest": 1}})),
    )
    .await
    .expect("request");
    let loc = wait_for(&api, "shared", "acknowledges the sync request", |l| {
        l.status.as_ref().is_some_and(|s| s.observed_sync_request == 1)
    })
    .await;
    let sync = loc.status.as_ref().and_then(|s| s.sync.clone()).expect("sync");
    assert_eq!((sync.backups_found, sync.backups_imported), (3, 1), "{sync:?}");
    assert!(
        ctx.catalog("shared")
            .expect("catalog")
            .backups
            .contains_key(&third.id)
    );
    // Damaged backups say what is missing in the catalog.
    let all = proxy("/v1/catalog?location=shared").await;
    let damaged: Vec<&serde_json::Value> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|i| i.get("missingObjects").is_some())
        .collect();
    assert_eq!(damaged.len(), 1, "{all}");
    assert_eq!(damaged[0]["id"], volume.id.to_string());
    server.abort();
    controller.abort();

    // A restarted agent (new process state) rebuilds its catalog without being asked.
    let config = agent_config(&fx);
    let restarted = Context::new(shoot.agent.clone(), config);
    let controller = locations::spawn(restarted.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while restarted.catalog("shared").is_none_or(|c| c.backups.len() != 3) {
        assert!(
            Instant::now() < deadline,
            "the restarted agent re-syncs its catalog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    controller.abort();
}

/// GETs `path` of the agent's read API listening on `addr`; its status and body. On the simulator
/// through the shoot API server's service proxy, as the server reads it; on the real server
/// directly, since its service proxy refuses loopback endpoints (and no pod runs there).
async fn read_api(shoot: &Shoot, addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    match shoot.backend {
        Backend::Simulator => {
            let uri = format!("/api/v1/namespaces/pxb-system/services/pxb-agent:http/proxy{path}");
            let req = http::Request::get(uri)
                .body(kube::client::Body::empty())
                .expect("request");
            let resp = shoot.admin.send(req).await.expect("the service proxy answers");
            let code = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            (code, String::from_utf8_lossy(&body).into_owned())
        }
        Backend::RealServer => {
            let resp = reqwest::get(format!("http://{addr}{path}"))
                .await
                .expect("the read API answers");
            let code = resp.status().as_u16();
            (code, resp.text().await.expect("body"))
        }
    }
}

/// Creates the `BackupLocation` `tenant` on `container`, reached with the agent's own identity.
async fn tenant_location(client: &kube::Client, fx: &AzureFixture, container: &str) {
    Api::<BackupLocation>::namespaced(client.clone(), "pxb-system")
        .create(
            &PostParams::default(),
            &BackupLocation::new("tenant", azure_location(fx, container, None)),
        )
        .await
        .expect("location");
}

/// Creates `ApplicationBackup` `name` of `namespaces`, volumes included, on location `tenant`;
/// returns the backups' API.
async fn backup_of(
    client: &kube::Client,
    name: &str,
    namespaces: &[&str],
    reclaim_policy: &str,
) -> Api<ApplicationBackup> {
    let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationBackupSpec {
        location: "tenant".into(),
        namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
        include_volumes: true,
        reclaim_policy: reclaim_policy.into(),
        ..ApplicationBackupSpec::default()
    };
    api.create(&PostParams::default(), &ApplicationBackup::new(name, spec))
        .await
        .expect("backup");
    api
}

/// Object `name` in namespace `namespaces.0` and its restored copy in `namespaces.1`.
async fn original_and_copy<K>(client: &kube::Client, namespaces: (&str, &str), name: &str) -> (K, K)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let get = |ns: &str| Api::<K>::namespaced(client.clone(), ns);
    let a = get(namespaces.0).get(name).await.expect("original");
    let b = get(namespaces.1).get(name).await.expect("restored");
    (a, b)
}

async fn two_namespaces_with_a_volume_are_backed_up_and_restored_into_mapped_namespaces(backend: Backend) {
    use pxb_daemon::agent::backups;
    use pxb_daemon::agent::volumes::LocalPathDriver;

    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let fx = azure(&shoot);
    let container = fx.new_container("agent-backup").await.expect("container");

    // Two namespaces; one has a claim bound to a local-path volume holding files.
    let data = tempfile::tempdir().expect("volume dir");
    std::fs::create_dir_all(data.path().join("sub")).expect("mkdir");
    for i in 0..20 {
        std::fs::write(
            data.path().join(format!("small-{i}.txt")),
            format!("row {i}\n").repeat(50),
        )
        .expect("write");
    }
    std::fs::write(
        data.path().join("sub/big.bin"),
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
    )
    .expect("write");
    for obj in [
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "local-path"},
               "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "blog"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"}, "data": {"color": "blue"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theme", "namespace": "blog"}, "data": {"dark": "true"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "blog"},
               "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
        // A Service (the real server allocates its cluster IP, which a restore must not carry
        // over) and RBAC (the real server checks that the restoring agent holds what a Role grants).
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "blog"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "blog"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader", "namespace": "blog"},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "web-reader", "namespace": "blog"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "blog"}]}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                        "hostPath": {"path": data.path().to_string_lossy()},
                        "claimRef": {"namespace": "shop", "name": "data"}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path", "volumeName": "pv-data",
                        "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        apply(&client, obj).await;
    }
    bind(&client, "shop", "data").await;

    let restores = tempfile::tempdir().expect("restore root");
    let mut config = agent_config(&fx);
    config.cluster_name = Some("shoot-a".into());
    config.restore_root = restores.path().to_path_buf();
    let lctx = Context::new(shoot.agent.clone(), config);
    let bctx = backups::Context::new(
        lctx.clone(),
        Arc::new(LocalPathDriver::new(shoot.agent.clone(), restores.path())),
    );
    let controllers = [
        locations::spawn(lctx.clone()),
        backups::spawn(bctx.clone()),
        pxb_daemon::agent::restores::spawn(bctx.clone()),
    ];
    tenant_location(&client, &fx, &container).await;

    let backups_api = backup_of(&client, "app1", &["shop", "blog"], "Delete").await;
    let done = wait_for(&backups_api, "app1", "finishes", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, "Success", "{status:?}");
    assert_eq!(status.volumes.len(), 1, "{status:?}");
    assert_eq!(
        (status.volumes[0].claim.as_str(), status.volumes[0].phase.as_str()),
        ("data", "Success")
    );
    assert_eq!(status.volumes[0].files, 21);
    assert!(
        status.sizes.volume_bytes > 3_000_000 && status.progress.objects >= 7,
        "{status:?}"
    );
    assert!(status.heartbeat.is_some() && status.completion_timestamp.is_some());
    assert_eq!(status.observed_generation, 1);

    // The location holds a resource backup that lists its volume backup.
    let repo = pxb_core::backup::Repository::new(Arc::new(
        pxb_azure::AzureBlobStore::new(fx.key_config(&container)).expect("store"),
    ));
    let id = pxb_core::backup::BackupId::parse(status.backup_id.as_deref().expect("id")).expect("id");
    let manifest = repo.manifest(&id).await.expect("manifest");
    assert_eq!(manifest.cluster.as_deref(), Some("shoot-a"));
    assert_eq!(manifest.volumes.len(), 1);
    assert_eq!(manifest.namespaces, vec!["blog".to_owned(), "shop".to_owned()]);
    let files = pxb_core::backup::volume::read_index(&repo, &manifest.volumes[0].backup)
        .await
        .expect("index");
    assert_eq!(files.iter().filter(|f| f.path.ends_with(".txt")).count(), 20);

    // Restore into mapped namespaces of the same cluster.
    use pxb_daemon::crd::{ApplicationRestore, ApplicationRestoreSpec};
    let restores_api: Api<ApplicationRestore> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationRestoreSpec {
        location: "tenant".into(),
        backup_id: id.to_string(),
        namespace_mapping: [("shop", "shop-copy"), ("blog", "blog-copy")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
        existing_resource_policy: "Retain".into(),
        ..ApplicationRestoreSpec::default()
    };
    restores_api
        .create(&PostParams::default(), &ApplicationRestore::new("r1", spec))
        .await
        .expect("restore");
    let done = wait_for(&restores_api, "r1", "finishes", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, "Success", "{status:?}");
    assert_eq!(status.counts.failed, 0, "{status:?}");
    assert_eq!(
        (status.volumes.len(), status.volumes[0].files),
        (1, 21),
        "{status:?}"
    );

    // Objects are equal, in their new namespaces.
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    for (ns, copy, name) in [("shop", "shop-copy", "cfg"), ("blog", "blog-copy", "theme")] {
        let (a, b) = original_and_copy::<ConfigMap>(&client, (ns, copy), name).await;
        assert_eq!(a.data, b.data, "{ns}/{name}");
    }
    let (a, b) = original_and_copy::<Deployment>(&client, ("blog", "blog-copy"), "web").await;
    assert_eq!(a.spec, b.spec);
    let (a, b) = original_and_copy::<Service>(&client, ("blog", "blog-copy"), "web").await;
    let (a, b) = (a.spec.expect("spec"), b.spec.expect("spec"));
    assert_eq!((&a.ports, &a.selector), (&b.ports, &b.selector));
    assert_eq!(
        a.cluster_ip.is_some(),
        b.cluster_ip.is_some(),
        "the restored Service has a cluster IP of its own, as the original: {b:?}"
    );
    let (a, b) = original_and_copy::<Role>(&client, ("blog", "blog-copy"), "reader").await;
    assert_eq!(a.rules, b.rules);
    let binding = Api::<RoleBinding>::namespaced(client.clone(), "blog-copy")
        .get("web-reader")
        .await
        .expect("restored");
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        ("web", Some("blog-copy")),
        "the subject follows the namespace mapping"
    );

    // Files are equal, in a new volume bound to the restored claim.
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop-copy")
        .get("data")
        .await
        .expect("restored claim");
    let volume = claim.spec.and_then(|s| s.volume_name).expect("bound");
    assert_ne!(volume, "pv-data", "a new volume, not the original one");
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .expect("new volume");
    let dir = pv
        .spec
        .and_then(|s| s.host_path)
        .map(|h| h.path)
        .expect("hostPath");
    assert!(dir.starts_with(&*restores.path().to_string_lossy()), "{dir}");
    assert_eq!(
        tree(std::path::Path::new(&dir)),
        tree(data.path()),
        "restored files equal the originals"
    );

    // A subset of the backup's namespaces: only those objects (and volumes) are restored.
    let spec = ApplicationRestoreSpec {
        location: "tenant".into(),
        backup_id: id.to_string(),
        namespaces: vec!["blog".into()],
        namespace_mapping: [("blog".to_owned(), "blog-only".to_owned())].into(),
        existing_resource_policy: "Retain".into(),
        ..ApplicationRestoreSpec::default()
    };
    restores_api
        .create(&PostParams::default(), &ApplicationRestore::new("r2", spec))
        .await
        .expect("restore");
    let done = wait_for(&restores_api, "r2", "finishes", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.clone().expect("status");
    assert_eq!(
        status.phase, "PartialSuccess",
        "shop's objects are refused: {status:?}"
    );
    assert!(
        status.volumes.is_empty(),
        "shop's volume is not restored: {status:?}"
    );
    assert!(
        status.failures.iter().all(|f| f.reason.starts_with("refused:")),
        "{status:?}"
    );
    assert!(
        status.failures.iter().any(|f| f.kind == "ConfigMap"
            && f.name == "cfg"
            && f.reason
                .contains("namespace shop is not one of the restore's namespaces")),
        "{status:?}"
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), "blog-only")
            .get("theme")
            .await
            .is_ok()
    );

    // An archive changed in the location after the backup restores nothing.
    let archive = id
        .object_path(pxb_core::backup::resources::RESOURCES_OBJECT)
        .expect("path");
    let mut tampered = repo
        .store()
        .get(&archive)
        .await
        .expect("archive")
        .bytes()
        .await
        .expect("bytes")
        .to_vec();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    repo.store()
        .put(&archive, tampered.into(), pxb_core::store::PutOptions::default())
        .await
        .expect("tamper");
    let spec = ApplicationRestoreSpec {
        location: "tenant".into(),
        backup_id: id.to_string(),
        namespace_mapping: [("shop", "shop-3"), ("blog", "blog-3")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
        existing_resource_policy: "Retain".into(),
        ..ApplicationRestoreSpec::default()
    };
    let volumes_before = Api::<PersistentVolume>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("volumes")
        .items
        .len();
    restores_api
        .create(&PostParams::default(), &ApplicationRestore::new("r3", spec))
        .await
        .expect("restore");
    let done = wait_for(&restores_api, "r3", "finishes", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.phase, "Failed", "{status:?}");
    let message = status.message.clone().unwrap_or_default();
    assert!(message.contains("does not match its manifest"), "{message}");
    let volumes_after = Api::<PersistentVolume>::all(client.clone())
        .list(&Default::default())
        .await
        .expect("volumes")
        .items
        .len();
    assert_eq!(volumes_after, volumes_before, "no volume provisioned");
    for ns in ["shop-3", "blog-3"] {
        assert!(
            Api::<ConfigMap>::namespaced(client.clone(), ns)
                .list(&Default::default())
                .await
                .map(|l| l.items.is_empty())
                .unwrap_or(true),
            "nothing restored into {ns}"
        );
    }
    for c in controllers {
        c.abort();
    }
}

async fn deleting_a_backup_deletes_its_data_even_after_the_location_was_down(backend: Backend) {
    use pxb_daemon::agent::backups;
    use pxb_daemon::agent::volumes::LocalPathDriver;

    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let mut fx = azure(&shoot);
    let container = fx.new_container("agent-delete").await.expect("container");
    let data = tempfile::tempdir().expect("volume dir");
    std::fs::write(data.path().join("a.txt"), "hello").expect("write");
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"}, "data": {"a": "b"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": data.path().to_string_lossy()}, "claimRef": {"namespace": "shop", "name": "data"}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-data", "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        apply(&client, obj).await;
    }
    bind(&client, "shop", "data").await;
    let restores = tempfile::tempdir().expect("restore root");
    let mut config = agent_config(&fx);
    config.delete_retry = Duration::from_secs(1);
    let lctx = Context::new(shoot.agent.clone(), config);
    let bctx = backups::Context::new(
        lctx.clone(),
        Arc::new(LocalPathDriver::new(shoot.agent.clone(), restores.path())),
    );
    let controllers = [locations::spawn(lctx.clone()), backups::spawn(bctx.clone())];
    tenant_location(&client, &fx, &container).await;
    let repo = pxb_core::backup::Repository::new(Arc::new(
        pxb_azure::AzureBlobStore::new(fx.key_config(&container)).expect("store"),
    ));
    let api: Api<ApplicationBackup> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationBackupSpec {
        location: "tenant".into(),
        namespaces: vec!["shop".into()],
        include_volumes: true,
        reclaim_policy: "Delete".into(),
        ..ApplicationBackupSpec::default()
    };
    let succeeded = |b: &ApplicationBackup| b.status.as_ref().is_some_and(|s| s.phase == "Success");
    for name in ["b1", "b2"] {
        api.create(
            &PostParams::default(),
            &ApplicationBackup::new(name, spec.clone()),
        )
        .await
        .expect("backup");
        let b = wait_for(&api, name, "succeeds", succeeded).await;
        assert!(b.finalizers().iter().any(|f| f == backups::FINALIZER), "{b:?}");
    }
    assert_eq!(
        repo.list().await.expect("list").len(),
        4,
        "two resource and two volume backups"
    );

    // The location goes down; the deletion waits, saying why, and keeps the object.
    fx.azurite.stop();
    api.delete("b1", &Default::default()).await.expect("delete");
    let b1 = wait_for(&api, "b1", "reports why it cannot delete", |b| {
        b.status.as_ref().is_some_and(|s| {
            s.phase == "Deleting"
                && s.message
                    .as_deref()
                    .is_some_and(|m| m.contains("deleting the data"))
        })
    })
    .await;
    assert!(b1.meta().deletion_timestamp.is_some());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        api.get_opt("b1").await.expect("get").is_some(),
        "stays while the data cannot be deleted"
    );

    // Back up: the data goes, then the object.
    fx.azurite.restart().expect("restart Azurite");
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt("b1").await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "b1 is deleted once the location is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = repo.list().await.expect("list");
    assert_eq!(
        left.len(),
        2,
        "b1's resource and volume backups are gone: {left:?}"
    );

    // Force-delete drops the object and leaves the data.
    api.patch(
        "b2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {backups::FORCE_DELETE: "true"}}})),
    )
    .await
    .expect("annotate");
    api.delete("b2", &Default::default()).await.expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt("b2").await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "b2 is dropped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        repo.list().await.expect("list").len(),
        2,
        "force-delete leaves the data"
    );
    for c in controllers {
        c.abort();
    }
}

async fn a_backup_cut_short_by_an_agent_restart_does_not_stay_in_progress(backend: Backend) {
    use pxb_daemon::agent::backups;
    use pxb_daemon::agent::volumes::LocalPathDriver;

    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let fx = azure(&shoot);
    let container = fx.new_container("agent-restart").await.expect("container");
    // Enough incompressible data that the backup is still running when the agent goes away.
    let data = tempfile::tempdir().expect("volume dir");
    let mut rng = pxb_tests::bench::Rng(7);
    for i in 0..12 {
        let bytes: Vec<u8> = (0..4 << 20).map(|_| rng.next_u64() as u8).collect();
        std::fs::write(data.path().join(format!("blob-{i}")), bytes).expect("write");
    }
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": data.path().to_string_lossy()}, "claimRef": {"namespace": "shop", "name": "data"}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-data", "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        apply(&client, obj).await;
    }
    bind(&client, "shop", "data").await;
    let restores = tempfile::tempdir().expect("restore root");
    let agent = |client: kube::Client| {
        let mut config = agent_config(&fx);
        config.heartbeat_interval = Duration::from_millis(500);
        let lctx = Context::new(client.clone(), config);
        let bctx = backups::Context::new(
            lctx.clone(),
            Arc::new(LocalPathDriver::new(client, restores.path())),
        );
        [locations::spawn(lctx), backups::spawn(bctx)]
    };
    let first = agent(shoot.agent.clone());
    tenant_location(&client, &fx, &container).await;
    let api = backup_of(&client, "long", &["shop"], "Retain").await;
    wait_for(&api, "long", "starts", |b| {
        b.status.as_ref().is_some_and(|s| s.phase == "InProgress")
    })
    .await;
    // The agent dies mid-backup.
    for task in first {
        task.abort();
    }
    let stuck = api.get("long").await.expect("get");
    assert_eq!(
        stuck.status.as_ref().map(|s| s.phase.as_str()),
        Some("InProgress")
    );

    // A new agent finds it, runs it again from the start, and finishes it.
    let second = agent(shoot.agent.clone());
    let done = wait_for(&api, "long", "finishes after the restart", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, "Success", "{status:?}");
    assert_eq!(status.attempts, 2, "{status:?}");
    assert!(
        status.message.as_deref().is_some_and(|m| m.contains("restart")),
        "{status:?}"
    );
    assert_eq!(status.volumes[0].files, 12);
    for task in second {
        task.abort();
    }
}

/// Attack 5: a tenant's claim that names another namespace's volume in `spec.volumeName` (even
/// one that claims to be `Bound`) is refused at backup, with the reason in the backup's status,
/// and nothing of the volume is read or stored.
async fn a_claim_naming_another_namespaces_volume_is_refused_at_backup(backend: Backend) {
    use pxb_daemon::agent::backups;
    use pxb_daemon::agent::volumes::LocalPathDriver;

    let shoot = Shoot::start(backend).await;
    let client = shoot.admin.clone();
    let fx = azure(&shoot);
    let container = fx.new_container("agent-thief").await.expect("container");
    let data = tempfile::tempdir().expect("volume dir");
    std::fs::write(data.path().join("secret.txt"), "shop's secret").expect("write");
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "thief"}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "hostPath": {"path": data.path().to_string_lossy()}, "claimRef": {"namespace": "shop", "name": "data"}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-data", "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "thief"},
               "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv-data", "resources": {"requests": {"storage": "1Gi"}}}}),
    ] {
        apply(&client, obj).await;
    }
    bind(&client, "shop", "data").await;
    // The thief's claim even says it is bound; the volume's claimRef says otherwise.
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), "thief")
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Bound"}})),
        )
        .await
        .expect("status");
    let restores = tempfile::tempdir().expect("restore root");
    let lctx = Context::new(shoot.agent.clone(), agent_config(&fx));
    let bctx = backups::Context::new(
        lctx.clone(),
        Arc::new(LocalPathDriver::new(shoot.agent.clone(), restores.path())),
    );
    let controllers = [locations::spawn(lctx.clone()), backups::spawn(bctx.clone())];
    tenant_location(&client, &fx, &container).await;
    let api = backup_of(&client, "steal", &["thief"], "Retain").await;
    let done = wait_for(&api, "steal", "finishes", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.clone().expect("status");
    assert_eq!(status.volumes.len(), 1, "{status:?}");
    let v = &status.volumes[0];
    assert_eq!(
        (v.namespace.as_str(), v.claim.as_str(), v.phase.as_str()),
        ("thief", "data", "Failed"),
        "{status:?}"
    );
    let message = v.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("volume pv-data is not bound to it") && message.contains("claimRef is shop/data"),
        "{message}"
    );
    assert_eq!(
        (v.files, v.bytes, status.sizes.volume_bytes),
        (0, 0, 0),
        "{status:?}"
    );
    assert_ne!(status.phase, "Success", "{status:?}");
    // Nothing of the volume is in the location: no volume backup at all.
    let repo = pxb_core::backup::Repository::new(Arc::new(
        pxb_azure::AzureBlobStore::new(fx.key_config(&container)).expect("store"),
    ));
    let kinds: Vec<_> = repo
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(kinds, vec![pxb_core::backup::BackupKind::Resources], "{status:?}");
    for task in controllers {
        task.abort();
    }
}

/// The read API's Service is reachable by every pod of the cluster: `/v1/…` (backups of every
/// namespace, running operations) answers only callers with the agent's token, which the agent
/// keeps in a Secret of its namespace and the server reads with its admin kubeconfig; the API
/// server's service proxy passes the header on. Probes stay open.
///
/// Simulator only: it runs the agent as the simulator runs pods (`start_agent`, its read API
/// registered as the Service's backend) and reaches it through the service proxy; the real server
/// runs no pods and its service proxy refuses the loopback address the in-process agent listens
/// on. The token handling itself does not depend on the API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_answers_only_callers_with_the_agent_token() {
    use pxb_daemon::agent::api::{TOKEN_HEADER, TOKEN_SECRET};
    let fx = AzureFixture::start(3600).expect("fixture");
    let fleet = pxb_tests::sim::Fleet::start(pxb_tests::sim::FleetConfig::default()).expect("fleet");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "shoot", 1).expect("shoot");
    let agent = pxb_tests::control::start_agent(
        &fleet,
        "dev",
        "shoot-00000",
        fx.wi_options(CLIENT_ID),
        Some(fx.ca.ca_file()),
    )
    .await
    .expect("agent");
    let client = pxb_tests::control::shoot_client(&fleet, "dev", "shoot-00000")
        .await
        .expect("client");
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "pxb-system")
        .get(TOKEN_SECRET)
        .await
        .expect("the agent made its token Secret");
    let token = secret
        .data
        .and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()))
        .expect("a token");
    assert!(token.len() >= 32, "{token}");
    let http = reqwest::Client::new();
    let base = format!("http://{}", agent.api_addr);
    let get = |path: &str, token: Option<&str>| {
        let mut req = http.get(format!("{base}{path}"));
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        async move { req.send().await.expect("call").status().as_u16() }
    };
    // Any pod: probes and metrics yes, the data no.
    assert_eq!(get("/healthz", None).await, 200);
    assert_eq!(get("/readyz", None).await, 200);
    assert_eq!(get("/metrics", None).await, 200);
    let wrong = "0".repeat(token.len());
    for path in ["/v1/status", "/v1/operations", "/v1/catalog?location=primary"] {
        assert_eq!(get(path, None).await, 401, "{path} without the token");
        assert_eq!(get(path, Some(&wrong)).await, 401, "{path} with a wrong token");
        assert_eq!(
            get(path, Some(&token[..token.len() - 1])).await,
            401,
            "{path} with a prefix"
        );
    }
    assert_eq!(get("/v1/status", Some(&token)).await, 200);
    assert_eq!(get("/v1/operations", Some(&token)).await, 200);

    // Through the shoot API server's service proxy, as the server reads it.
    let proxy = |token: Option<String>| {
        let client = client.clone();
        async move {
            let mut req =
                http::Request::get("/api/v1/namespaces/pxb-system/services/pxb-agent:http/proxy/v1/status");
            if let Some(t) = token {
                req = req.header(TOKEN_HEADER, t);
            }
            let resp = client
                .send(req.body(kube::client::Body::from(Vec::new())).expect("request"))
                .await
                .expect("proxy");
            let code = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            (code, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (code, body) = proxy(None).await;
    assert_eq!(code, 401, "the proxy without the token: {body}");
    let (code, body) = proxy(Some(token.clone())).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("shoot-00000"), "{body}");

    // A restarted agent keeps the stored token.
    agent.shutdown().await;
    let mut config = agent_config(&fx);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let bare = pxb_daemon::agent::Agent::start(client.clone(), config)
        .await
        .expect("second agent");
    let r = http
        .get(format!("http://{}/v1/status", bare.api_addr))
        .header(TOKEN_HEADER, &token)
        .send()
        .await
        .expect("call");
    assert_eq!(r.status().as_u16(), 200, "the same token after a restart");
    bare.shutdown().await;
}

/// The whole agent (`Agent::start`: its token Secret, read API and controllers) as its own
/// ServiceAccount on the real server: it makes the API token Secret under `deploy/agent`'s RBAC
/// (Secrets: get and create in `pxb-system`, nothing else), answers `/v1/…` only with that token,
/// and a restarted agent reads the same token back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_starts_as_its_service_account_and_keeps_its_api_token_on_the_real_server() {
    use pxb_daemon::agent::api::{TOKEN_HEADER, TOKEN_SECRET};
    let shoot = Shoot::start(Backend::RealServer).await;
    let fx = azure(&shoot);
    let config = || {
        let mut config = agent_config(&fx);
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config
    };
    let agent = pxb_daemon::agent::Agent::start(shoot.agent.clone(), config())
        .await
        .expect("the agent starts as pxb-system/pxb-agent");
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(shoot.admin.clone(), "pxb-system")
        .get(TOKEN_SECRET)
        .await
        .expect("the agent made its token Secret");
    let token = secret
        .data
        .and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()))
        .expect("a token");
    assert!(token.len() >= 32, "{token}");
    let http = reqwest::Client::new();
    let status = |addr: std::net::SocketAddr, token: Option<String>| {
        let mut req = http.get(format!("http://{addr}/v1/status"));
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        async move { req.send().await.expect("call").status().as_u16() }
    };
    assert_eq!(status(agent.api_addr, None).await, 401);
    assert_eq!(status(agent.api_addr, Some(token.clone())).await, 200);
    agent.shutdown().await;
    let again = pxb_daemon::agent::Agent::start(shoot.agent.clone(), config())
        .await
        .expect("the agent starts again");
    assert_eq!(
        status(again.api_addr, Some(token)).await,
        200,
        "the same token after a restart"
    );
    again.shutdown().await;
}

/// Two tests of a scenario: on the simulator and on the real server.
macro_rules! on_both_backends {
    ($($scenario:ident => $on_sim:ident, $on_real:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_sim() {
            $scenario(Backend::Simulator).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $on_real() {
            $scenario(Backend::RealServer).await;
        }
    )*};
}

on_both_backends! {
    locations_are_validated_with_their_own_identities =>
        locations_are_validated_with_their_own_identities_on_the_simulator,
        locations_are_validated_with_their_own_identities_on_the_real_server;
    invalid_specs_are_reported_without_a_retry_loop =>
        invalid_specs_are_reported_without_a_retry_loop_on_the_simulator,
        invalid_specs_are_reported_without_a_retry_loop_on_the_real_server;
    sync_finds_other_clusters_backups_and_verify_finds_a_deleted_chunk =>
        sync_finds_other_clusters_backups_and_verify_finds_a_deleted_chunk_on_the_simulator,
        sync_finds_other_clusters_backups_and_verify_finds_a_deleted_chunk_on_the_real_server;
    two_namespaces_with_a_volume_are_backed_up_and_restored_into_mapped_namespaces =>
        two_namespaces_with_a_volume_are_backed_up_and_restored_into_mapped_namespaces_on_the_simulator,
        two_namespaces_with_a_volume_are_backed_up_and_restored_into_mapped_namespaces_on_the_real_server;
    deleting_a_backup_deletes_its_data_even_after_the_location_was_down =>
        deleting_a_backup_deletes_its_data_even_after_the_location_was_down_on_the_simulator,
        deleting_a_backup_deletes_its_data_even_after_the_location_was_down_on_the_real_server;
    a_backup_cut_short_by_an_agent_restart_does_not_stay_in_progress =>
        a_backup_cut_short_by_an_agent_restart_does_not_stay_in_progress_on_the_simulator,
        a_backup_cut_short_by_an_agent_restart_does_not_stay_in_progress_on_the_real_server;
    a_claim_naming_another_namespaces_volume_is_refused_at_backup =>
        a_claim_naming_another_namespaces_volume_is_refused_at_backup_on_the_simulator,
        a_claim_naming_another_namespaces_volume_is_refused_at_backup_on_the_real_server;
}

/// `deploy/agent` applied to a real cluster grants the agent's ServiceAccount what the agent
/// calls (the scenarios above run under it on the real server) and no more: `kubectl auth can-i`
/// as `system:serviceaccount:pxb-system:pxb-agent`, for what it must and must not be able to do.
#[test]
fn the_agent_rbac_grants_what_it_needs_and_no_more() {
    const AS: &str = "--as=system:serviceaccount:pxb-system:pxb-agent";
    let cluster = pxb_tests::real::start();
    pxb_tests::real::install_pxb(&cluster).expect("install pxb");
    let admin = cluster.admin_kubeconfig();
    // `kubectl auth can-i VERB RESOURCE [--subresource=S] (-n NS | -A) --as=…`: "yes" (exit 0) or
    // "no" (exit 1); anything else is an error.
    let can = |verb: &str, resource: &str, namespace: Option<&str>| -> bool {
        let (resource, sub) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(format!("--subresource={s}"))),
            None => (resource, None),
        };
        let mut args = vec!["auth", "can-i", verb, resource, AS];
        if let Some(s) = &sub {
            args.push(s);
        }
        match namespace {
            Some(ns) => args.extend(["-n", ns]),
            None => args.push("--all-namespaces"),
        }
        let out = pxb_tests::real::kubectl_output(&cluster, &admin, &args);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        match (answer.as_str(), out.status.code()) {
            ("yes", Some(0)) => true,
            ("no", Some(1)) => false,
            _ => panic!(
                "kubectl {args:?}: {answer} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    };
    // Bindings reach the authorizer a moment after they are written.
    pxb_tests::real::eventually(
        "the agent's bindings take effect",
        Duration::from_secs(30),
        || can("list", "namespaces", None) && can("watch", "backuplocations.pxb.io", Some("pxb-system")),
    )
    .expect("RBAC");

    let (own, ns) = (Some("pxb-system"), Some("shop"));
    #[rustfmt::skip]
    let table: &[(&str, &str, Option<&str>, bool, &str)] = &[
        // Its own objects, in pxb-system only: its controllers watch them, it sets finalizers and
        // statuses; the server and tenants create, update and delete them.
        ("watch", "backuplocations.pxb.io", own, true, "the location controller watches"),
        ("list", "applicationrestores.pxb.io", own, true, "the restore controller lists"),
        ("patch", "applicationbackups.pxb.io", own, true, "finalizers"),
        ("patch", "applicationbackups.pxb.io/status", own, true, "statuses"),
        ("patch", "backuplocations.pxb.io/status", own, true, "statuses"),
        ("patch", "applicationrestores.pxb.io/status", own, true, "statuses"),
        ("create", "applicationbackups.pxb.io", own, false, "the server creates backups"),
        ("update", "backuplocations.pxb.io", own, false, "it never PUTs"),
        ("delete", "applicationbackups.pxb.io", own, false, "tenants delete backups"),
        ("patch", "backuplocations.pxb.io/status", ns, false, "nothing of pxb outside pxb-system"),
        ("watch", "applicationbackups.pxb.io", ns, false, "nothing of pxb outside pxb-system"),
        ("get", "secrets", own, true, "location credentials, the read API's token"),
        ("create", "secrets", own, true, "the read API's token Secret"),
        // Backup: list every kind (custom resources too) and read Secrets; a backup tool must.
        ("list", "secrets", None, true, "a backup takes the Secrets of its namespaces"),
        ("list", "configmaps", ns, true, "backup"),
        ("list", "widgets.example.com", ns, true, "custom resources are backed up"),
        ("get", "namespaces", None, true, "backup records its namespaces"),
        ("get", "persistentvolumes", None, true, "backup records bound volumes"),
        ("get", "persistentvolumeclaims", ns, true, "the volume driver reads claims"),
        ("get", "storageclasses.storage.k8s.io", None, true, "backup records storage classes"),
        ("get", "customresourcedefinitions.apiextensions.k8s.io", None, true, "backup records CRDs"),
        ("watch", "configmaps", None, false, "nothing is watched outside pxb-system"),
        ("watch", "secrets", ns, false, "nothing is watched outside pxb-system"),
        // Restore: create (and delete to replace) the built-in namespaced kinds, create the
        // cluster-scoped objects a restore needs; nothing else.
        ("create", "namespaces", None, true, "restored namespaces"),
        ("create", "persistentvolumes", None, true, "provisioned volumes"),
        ("create", "storageclasses.storage.k8s.io", None, true, "storage classes of restored claims"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", None, true, "CRDs of restored objects"),
        ("create", "deployments.apps", ns, true, "restore"),
        ("delete", "deployments.apps", ns, true, "existingResourcePolicy Replace"),
        ("create", "pods", ns, true, "restore"),
        ("create", "rolebindings.rbac.authorization.k8s.io", ns, true, "restore (escalation-checked)"),
        ("delete", "namespaces", None, false, "a restore never deletes namespaces"),
        ("delete", "persistentvolumes", None, false, "nor volumes"),
        ("update", "persistentvolumes", None, false, "nor changes them"),
        ("update", "deployments.apps", ns, false, "never updates workloads"),
        ("patch", "deployments.apps", ns, false, "never patches workloads"),
        ("deletecollection", "secrets", ns, false, "deletes one object at a time"),
        ("create", "widgets.example.com", ns, false, "custom resources need a grant of their own"),
        // Escalation paths.
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", None, false, "no cluster-wide bindings"),
        ("create", "clusterroles.rbac.authorization.k8s.io", None, false, "no cluster roles"),
        ("escalate", "roles.rbac.authorization.k8s.io", ns, false, "no escalate"),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None, false, "no bind"),
        ("impersonate", "users", None, false, "no impersonation"),
        ("impersonate", "serviceaccounts", Some("kube-system"), false, "no impersonation"),
        ("create", "serviceaccounts/token", Some("kube-system"), false, "mints no tokens"),
        ("get", "pods/exec", ns, false, "no exec"),
        ("create", "pods/exec", ns, false, "no exec"),
        ("get", "pods/log", ns, false, "no logs"),
        ("get", "nodes/proxy", None, false, "no kubelet API"),
        ("create", "nodes/proxy", None, false, "no kubelet API"),
        ("get", "services/proxy", ns, false, "no service proxy"),
        ("create", "certificatesigningrequests.certificates.k8s.io", None, false, "no certificates"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io", None, false, "no webhooks"),
        ("create", "nodes", None, false, "no nodes"),
    ];
    let wrong: Vec<String> = table
        .iter()
        .filter(|(verb, resource, namespace, expected, _)| can(verb, resource, *namespace) != *expected)
        .map(|(verb, resource, namespace, expected, why)| {
            format!(
                "{verb} {resource} in {}: expected {} ({why})",
                namespace.unwrap_or("all namespaces"),
                if *expected { "yes" } else { "no" }
            )
        })
        .collect();
    assert!(wrong.is_empty(), "the agent's RBAC is off:\n{}", wrong.join("\n"));
}
