//! `pxb-server` visiting real API servers: shoots of the simulated garden backed by upstream
//! kube-apiserver ([`RealCluster`]), whose kubeconfigs the garden mints with the real server's
//! client CA ([`real_api_server`]). Discovery, kubeconfig requests and the fleet are simulated;
//! everything from the TLS handshake with a shoot onwards (authentication of the garden's
//! certificates, their expiry, RBAC, the CRDs' schemas, the status subresource) is the real
//! server's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt as _};
use pxb_core::api::rest::{BackupRequest, CreateDiscovery, CreateOrg, FleetStatusView, ListQuery};
use pxb_core::catalog::records::{ClusterSelector, ClusterState, Mode, Role, RoleBinding};
use pxb_core::cluster::{ClusterAccess, ClusterProvider as _};
use pxb_daemon::crd::{
    ApplicationBackup, ApplicationBackupStatus, BackupLocation, BackupLocationStatus, ValidationStatus,
};
use pxb_tests::control::{ControlPlane, real_api_server, wait_for};
use pxb_tests::real::{self, RealCluster};
use pxb_tests::sim::{ExternalApiServer, Fleet, FleetConfig, MintedCert, ProjectRole, ShootSpec};
use serde_json::{Value, json};

const PROJECT: &str = "acme";
/// The audience of the agent's ServiceAccount token on the real server (its default).
const KUBE_AUDIENCE: &str = "https://kubernetes.default.svc";

/// Two real clusters with pxb installed (`deploy/crds`, `deploy/agent`), started once per test
/// process; tests that share them keep to their own objects. Started side by side.
fn real_pair() -> &'static (Arc<RealCluster>, Arc<RealCluster>) {
    static PAIR: OnceLock<(Arc<RealCluster>, Arc<RealCluster>)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let start = || {
            let c = real::start();
            real::install_pxb(&c).expect("pxb installs on the real cluster");
            Arc::new(c)
        };
        let other = std::thread::spawn(start);
        let a = start();
        let b = other.join().expect("the second real cluster started");
        (a, b)
    })
}

/// A fleet whose kubeconfig floor is `min_seconds` (Gardener's is 600 s; lowered so expiry
/// happens within a test), with project `acme`.
fn fleet(min_seconds: u64) -> Fleet {
    let fleet = Fleet::start(FleetConfig {
        kubeconfig_min_seconds: min_seconds,
        ..FleetConfig::default()
    })
    .expect("fleet");
    fleet.add_project(PROJECT).expect("project");
    fleet
}

/// The garden's answer to an `AdminKubeconfigRequest` (or `ViewerKubeconfigRequest`) for
/// `shoot` lasting `seconds`, made as `token` through the garden API: the access it gives and the
/// `expirationTimestamp`.
async fn kubeconfig_from_garden(
    fleet: &Fleet,
    token: &str,
    shoot: &str,
    subresource: &str,
    seconds: u64,
) -> (ClusterAccess, SystemTime) {
    let kind = match subresource {
        "adminkubeconfig" => "AdminKubeconfigRequest",
        _ => "ViewerKubeconfigRequest",
    };
    let body = json!({"apiVersion": "authentication.gardener.cloud/v1alpha1", "kind": kind,
                      "spec": {"expirationSeconds": seconds}});
    let ca = reqwest::Certificate::from_pem(fleet.garden_ca_pem().as_bytes()).expect("garden CA");
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("http client");
    let url = format!(
        "{}/apis/core.gardener.cloud/v1beta1/namespaces/garden-{PROJECT}/shoots/{shoot}/{subresource}",
        fleet.garden_url()
    );
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("garden answers");
    assert_eq!(resp.status().as_u16(), 201, "{kind} for {shoot}");
    let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
    let expires =
        pxb_core::clock::parse_rfc3339(v["status"]["expirationTimestamp"].as_str().expect("timestamp"))
            .expect("RFC 3339");
    let yaml = base64::engine::general_purpose::STANDARD
        .decode(v["status"]["kubeconfig"].as_str().expect("kubeconfig"))
        .expect("base64");
    let yaml = String::from_utf8(yaml).expect("text");
    let access = pxb_gardener::parse_access(&yaml, SystemTime::now(), expires).expect("kubeconfig parses");
    (access, expires)
}

/// `GET path` on the real server with `access`'s certificate: the status code.
async fn status_of(access: &ClusterAccess, path: &str) -> u16 {
    let client = pxb_gardener::kube_client(access).expect("client");
    let req = http::Request::get(path).body(Vec::new()).expect("request");
    match client.request_text(req).await {
        Ok(_) => 200,
        Err(kube::Error::Api(s)) => s.code,
        Err(e) => panic!("GET {path} on {} failed below HTTP: {e}", access.server),
    }
}

/// Who the real server says `access`'s certificate is (a `SelfSubjectReview`): user and groups.
async fn whoami(access: &ClusterAccess) -> (String, Vec<String>) {
    let client = pxb_gardener::kube_client(access).expect("client");
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let req = http::Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .expect("request");
    let v: Value = client.request(req).await.expect("SelfSubjectReview");
    let info = &v["status"]["userInfo"];
    let groups = info["groups"]
        .as_array()
        .map(|g| g.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default();
    (info["username"].as_str().unwrap_or_default().to_owned(), groups)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_garden_mints_certificates_each_real_shoot_checks_for_itself() {
    let (a, b) = real_pair();
    let fleet = fleet(4);
    fleet
        .add_external_shoot(PROJECT, "real-a", real_api_server(a.clone()))
        .expect("real-a");
    fleet
        .add_external_shoot(PROJECT, "real-b", real_api_server(b.clone()))
        .expect("real-b");
    let token = fleet
        .add_service_account(PROJECT, "pxb", ProjectRole::Admin)
        .expect("service account");

    // The garden advertises the real servers, and its kubeconfigs point at them.
    let shoot = fleet.garden_store().get(
        &pxb_tests::sim::store::ResourceType::new("core.gardener.cloud", "v1beta1", "Shoot", "shoots", true),
        Some(&format!("garden-{PROJECT}")),
        "real-a",
    );
    let shoot = shoot.expect("the Shoot object");
    assert_eq!(
        shoot
            .pointer("/status/advertisedAddresses/0/url")
            .and_then(Value::as_str),
        Some(a.server_url().as_str()),
        "{shoot}"
    );
    let (for_a, _) = kubeconfig_from_garden(&fleet, &token, "real-a", "adminkubeconfig", 600).await;
    let (for_b, _) = kubeconfig_from_garden(&fleet, &token, "real-b", "adminkubeconfig", 600).await;
    assert_eq!(
        (for_a.server.as_str(), for_a.ca_pem.as_str()),
        (a.server_url().as_str(), a.ca_pem().as_str())
    );
    assert_eq!(for_b.server, b.server_url());

    // The real server authenticates the certificate as Gardener's: the requester, in
    // system:masters; and it authorizes it as such.
    let (user, groups) = whoami(&for_a).await;
    assert_eq!(user, format!("system:serviceaccount:garden-{PROJECT}:pxb"));
    assert!(
        groups.iter().any(|g| g == "system:masters") && groups.iter().any(|g| g == "system:authenticated"),
        "{groups:?}"
    );
    assert_eq!(
        status_of(&for_a, "/api/v1/namespaces/kube-system/secrets").await,
        200
    );
    assert_eq!(status_of(&for_b, "/api/v1/namespaces").await, 200);

    // A certificate the garden minted for real-a is no credential on real-b (another client CA):
    // the real server answers 401, both ways.
    let mut a_on_b = for_a.clone();
    a_on_b.server = for_b.server.clone();
    a_on_b.ca_pem = for_b.ca_pem.clone();
    assert_eq!(
        status_of(&a_on_b, "/api/v1/namespaces").await,
        401,
        "real-a's certificate on real-b"
    );
    let mut b_on_a = for_b.clone();
    b_on_a.server = for_a.server.clone();
    b_on_a.ca_pem = for_a.ca_pem.clone();
    assert_eq!(
        status_of(&b_on_a, "/api/v1/namespaces").await,
        401,
        "real-b's certificate on real-a"
    );

    // A viewer kubeconfig authenticates (its own group) but the shoot grants that group nothing
    // until it binds it: 403, not 401.
    let (viewer, _) = kubeconfig_from_garden(&fleet, &token, "real-a", "viewerkubeconfig", 600).await;
    let (_, groups) = whoami(&viewer).await;
    assert!(
        groups.iter().any(|g| g == pxb_tests::sim::VIEWER_GROUP),
        "{groups:?}"
    );
    assert_eq!(status_of(&viewer, "/api/v1/namespaces").await, 403);

    // A short-lived one works until its expirationTimestamp and is refused by the real server's
    // clock after it.
    let (short, expires) = kubeconfig_from_garden(&fleet, &token, "real-a", "adminkubeconfig", 4).await;
    let lifetime = expires.duration_since(SystemTime::now()).unwrap_or_default();
    assert!(
        lifetime <= Duration::from_secs(4),
        "expires in the 4 s asked for: {lifetime:?}"
    );
    assert_eq!(status_of(&short, "/api/v1/namespaces").await, 200, "fresh");
    // The certificate's NotAfter is the timestamp or up to a second later, never earlier.
    tokio::time::sleep(lifetime + Duration::from_secs(2)).await;
    assert_eq!(status_of(&short, "/api/v1/namespaces").await, 401, "expired");
}

/// Org `acme`, its admins' token, and a discovery of project `acme` with the control plane's
/// garden credential.
async fn org_discovering(cp: &ControlPlane) -> String {
    cp.admin_client()
        .create_org(&CreateOrg {
            id: "acme".into(),
            display_name: "Acme".into(),
            mode: Mode::default(),
            access: vec![RoleBinding {
                role: Role::Admin,
                groups: vec!["acme-admins".into()],
                app_roles: Vec::new(),
            }],
        })
        .await
        .expect("org");
    let acme = cp.token("alice", &["acme-admins"]);
    cp.client(&acme)
        .create_discovery(
            "acme",
            &CreateDiscovery {
                id: "dev".into(),
                project: PROJECT.into(),
                credential: PROJECT.into(),
                interval_secs: Some(5),
            },
        )
        .await
        .expect("discovery");
    acme
}

async fn fleet_status(cp: &ControlPlane, token: &str) -> Result<FleetStatusView, String> {
    cp.client(token)
        .fleet_status(&ListQuery {
            limit: Some(100),
            ..ListQuery::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// The agent's own client on a real cluster: the `pxb-agent` ServiceAccount's token, as its pod
/// would hold it, so what it may write is what `deploy/agent`'s RBAC grants.
async fn agent_client(cluster: &RealCluster) -> kube::Client {
    let token = real::service_account_token(
        cluster,
        "pxb-system",
        "pxb-agent",
        KUBE_AUDIENCE,
        Duration::from_secs(3600),
    )
    .expect("agent token");
    real::token_client(cluster, "pxb-agent", &token)
        .await
        .expect("agent client")
}

/// Writes `status` on a resource through its status subresource as the agent does (a merge
/// patch), retrying while the agent's RoleBinding reaches the authorizer.
async fn write_status<K>(api: &Api<K>, name: &str, status: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 403 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("the agent's status write on {name} was refused: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_visits_real_api_servers_among_simulated_shoots() {
    let (a, b) = real_pair();
    let admin_a = real::admin_client(a).await.expect("admin a");
    let admin_b = real::admin_client(b).await.expect("admin b");
    // real-b runs an agent older than the server accepts (its Deployment's version label): the
    // server must read each cluster's own state.
    Api::<Deployment>::namespaced(admin_b.clone(), "pxb-system")
        .patch(
            "pxb-agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pxb.io/version": "0.0.1"}}})),
        )
        .await
        .expect("label the agent outdated");

    // Kubeconfigs live 12 s (the garden's floor is lowered to 4 s): the server must re-issue them
    // several times during the scenario.
    let fleet = fleet(4);
    fleet
        .add_external_shoot(PROJECT, "real-a", real_api_server(a.clone()))
        .expect("real-a");
    fleet
        .add_external_shoot(PROJECT, "real-b", real_api_server(b.clone()))
        .expect("real-b");
    fleet.add_shoot(PROJECT, ShootSpec::new("sim-c")).expect("sim-c");
    fleet
        .shoot(PROJECT, "sim-c")
        .expect("sim-c")
        .simulate_agent()
        .expect("simulated agent");
    let cp = ControlPlane::start_on(fleet, PROJECT, |c| c.fleet.kubeconfig_lifetime_secs = 12)
        .await
        .expect("control plane");
    let acme = org_discovering(&cp).await;

    // Discovered and visited: each cluster's state as its own API server says.
    let version = pxb_daemon::agent::api::VERSION;
    let fleet = wait_for(
        "three clusters in their states",
        Duration::from_secs(60),
        || async {
            let f = fleet_status(&cp, &acme).await?;
            let states: Vec<(&str, ClusterState)> =
                f.items.iter().map(|e| (e.cluster.as_str(), e.state)).collect();
            let want = [
                ("real-a", ClusterState::Ready),
                ("real-b", ClusterState::AgentOutdated),
                ("sim-c", ClusterState::Ready),
            ];
            if states == want {
                Ok(Some(f))
            } else {
                Err(format!("{:?}", f.items))
            }
        },
    )
    .await
    .expect("fleet status");
    let entry = |name: &str| {
        fleet
            .items
            .iter()
            .find(|e| e.cluster == name)
            .expect("entry")
            .clone()
    };
    assert_eq!(entry("real-a").agent_version.as_deref(), Some(version));
    let b_entry = entry("real-b");
    assert_eq!(b_entry.agent_version.as_deref(), Some("0.0.1"));
    assert!(
        b_entry
            .message
            .as_deref()
            .is_some_and(|m| m.contains("0.0.1") && m.contains(version)),
        "{b_entry:?}"
    );

    // A federated location for every cluster lands on the real servers as a BackupLocation the
    // CRD's schema accepted.
    let client_id = pxb_tests::fixture::CLIENT_ID;
    cp.client(&acme)
        .create_location(
            "acme",
            &cp.azure_location(
                "primary",
                "real-shoots",
                ClusterSelector {
                    all: true,
                    ..ClusterSelector::default()
                },
            ),
        )
        .await
        .expect("location");
    let locations_a: Api<BackupLocation> = Api::namespaced(admin_a.clone(), "pxb-system");
    let locations_b: Api<BackupLocation> = Api::namespaced(admin_b.clone(), "pxb-system");
    for (name, api) in [("real-a", &locations_a), ("real-b", &locations_b)] {
        let cr = wait_for(
            &format!("the BackupLocation on {name}"),
            Duration::from_secs(30),
            || async { api.get_opt("primary").await.map_err(|e| e.to_string()) },
        )
        .await
        .expect("BackupLocation");
        assert_eq!(
            cr.labels().get("pxb.io/managed-by").map(String::as_str),
            Some("pxb-server"),
            "{name}: {cr:?}"
        );
        assert_eq!(
            cr.labels().get("pxb.io/org").map(String::as_str),
            Some("acme"),
            "{name}"
        );
        assert_eq!(
            (
                cr.spec.container.as_str(),
                cr.spec.account.as_deref(),
                cr.spec.auth.mode.as_str()
            ),
            (
                "real-shoots",
                Some(pxb_tests::azurite::ACCOUNT),
                "workloadIdentity"
            ),
            "{name}: {:?}",
            cr.spec
        );
        assert_eq!(cr.spec.auth.client_id.as_deref(), Some(client_id), "{name}");
        assert!(
            cr.status.is_none(),
            "nothing wrote a status yet on {name}: {:?}",
            cr.status
        );
    }

    // The "agents" of the real clusters report (with the agent's own ServiceAccount, through the
    // status subresource): real-a's storage refuses writes, real-b's is fine. The server reads
    // both back; sim-c's simulated agent reports Valid by itself.
    let now = pxb_core::clock::rfc3339(SystemTime::now());
    let report = |phase: &str, failed: Option<&str>| {
        serde_json::to_value(BackupLocationStatus {
            observed_generation: 1,
            validation: Some(ValidationStatus {
                phase: phase.into(),
                failed_step: failed.map(str::to_owned),
                reason: failed.map(|_| "403 AuthorizationPermissionMismatch from the container".to_owned()),
                last_checked: Some(now.clone()),
            }),
            ..BackupLocationStatus::default()
        })
        .expect("status")
    };
    let agent_a: Api<BackupLocation> = Api::namespaced(agent_client(a).await, "pxb-system");
    let agent_b: Api<BackupLocation> = Api::namespaced(agent_client(b).await, "pxb-system");
    write_status(&agent_a, "primary", report("Invalid", Some("write"))).await;
    write_status(&agent_b, "primary", report("Valid", None)).await;
    let phases = wait_for(
        "the clusters' reports in the server",
        Duration::from_secs(30),
        || async {
            let list = cp
                .client(&acme)
                .location_status("acme", "primary", &ListQuery::default())
                .await
                .map_err(|e| e.to_string())?;
            let mut p: Vec<(String, String, Option<String>)> = list
                .items
                .into_iter()
                .map(|s| {
                    (
                        s.cluster_name,
                        s.validation.phase.to_string(),
                        s.validation.failed_step,
                    )
                })
                .collect();
            p.sort();
            let want = vec![
                (
                    "real-a".to_owned(),
                    "Invalid".to_owned(),
                    Some("write".to_owned()),
                ),
                ("real-b".to_owned(), "Valid".to_owned(), None),
                ("sim-c".to_owned(), "Valid".to_owned(), None),
            ];
            if p == want {
                Ok(Some(p))
            } else {
                Err(format!("{p:?}"))
            }
        },
    )
    .await
    .expect("statuses");
    println!("location status: {phases:?}");
    // real-a is Degraded by its invalid location; the others keep their states.
    wait_for("real-a Degraded", Duration::from_secs(30), || async {
        let f = fleet_status(&cp, &acme).await?;
        let states: Vec<(String, ClusterState)> =
            f.items.iter().map(|e| (e.cluster.clone(), e.state)).collect();
        let ok = states
            == [
                ("real-a".to_owned(), ClusterState::Degraded),
                ("real-b".to_owned(), ClusterState::AgentOutdated),
                ("sim-c".to_owned(), ClusterState::Ready),
            ];
        if ok {
            Ok(Some(()))
        } else {
            Err(format!("{states:?}"))
        }
    })
    .await
    .expect("degraded");

    // A backup of real-b lands there as an ApplicationBackup; its agent's report comes back.
    Api::<Namespace>::all(admin_b.clone())
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("namespace"),
        )
        .await
        .expect("namespace shop");
    let made = cp
        .client(&acme)
        .create_backups(
            "acme",
            &BackupRequest {
                clusters: ClusterSelector {
                    names: vec!["real-b".into()],
                    ..ClusterSelector::default()
                },
                namespaces: vec!["shop".into()],
                location: "primary".into(),
            },
        )
        .await
        .expect("backup");
    let id = made.items.first().expect("one backup").id.clone();
    let backups_b: Api<ApplicationBackup> = Api::namespaced(admin_b.clone(), "pxb-system");
    let cr = wait_for(
        "the ApplicationBackup on real-b",
        Duration::from_secs(30),
        || async { backups_b.get_opt(&id).await.map_err(|e| e.to_string()) },
    )
    .await
    .expect("ApplicationBackup");
    assert_eq!(
        (
            cr.spec.location.as_str(),
            cr.spec.namespaces.clone(),
            cr.spec.reclaim_policy.as_str()
        ),
        ("primary", vec!["shop".to_owned()], "Delete"),
        "{:?}",
        cr.spec
    );
    let on_a: Api<ApplicationBackup> = Api::namespaced(admin_a.clone(), "pxb-system");
    assert!(
        on_a.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "a backup of real-b is not written to real-a"
    );
    let done = pxb_core::clock::rfc3339(SystemTime::now());
    let agent_backups: Api<ApplicationBackup> = Api::namespaced(agent_client(b).await, "pxb-system");
    let status = serde_json::to_value(ApplicationBackupStatus {
        phase: "Success".into(),
        backup_id: Some("data-0001".into()),
        start_timestamp: Some(done.clone()),
        completion_timestamp: Some(done),
        ..ApplicationBackupStatus::default()
    })
    .expect("status");
    write_status(&agent_backups, &id, status).await;
    let backup = wait_for(
        "the backup succeeds in the server",
        Duration::from_secs(30),
        || async {
            let b = cp
                .client(&acme)
                .get_backup("acme", &id)
                .await
                .map_err(|e| e.to_string())?;
            if b.phase.as_str() == "Success" {
                Ok(Some(b))
            } else {
                Err(format!("{b:?}"))
            }
        },
    )
    .await
    .expect("success");
    assert_eq!(backup.backup_id.as_deref(), Some("data-0001"), "{backup:?}");

    // Through all of this the server's kubeconfigs expired and were re-issued: the first
    // certificate it held for real-a is refused by the real server now, the current one is
    // accepted, and the visits never failed for it.
    let provider = cp
        .server()
        .providers()
        .into_iter()
        .next()
        .expect("a Gardener provider");
    let id_a = provider
        .inventory()
        .into_iter()
        .find(|c| c.name == "real-a")
        .expect("real-a discovered")
        .id;
    let first = provider.access(&id_a).await.expect("access");
    assert_eq!(
        status_of(&first, "/api/v1/namespaces").await,
        200,
        "the current certificate"
    );
    let renewed = wait_for(
        "a renewal of real-a's kubeconfig",
        Duration::from_secs(30),
        || async {
            let next = provider.access(&id_a).await.map_err(|e| e.to_string())?;
            Ok((next.client_cert_pem != first.client_cert_pem).then_some(next))
        },
    )
    .await
    .expect("renewed");
    let stats = provider.stats();
    assert!(stats.issued >= 4, "kubeconfigs were renewed: {stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
    let wait = first
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_secs(2)).await;
    assert_eq!(
        status_of(&first, "/api/v1/namespaces").await,
        401,
        "the replaced certificate, expired"
    );
    let latest = provider.access(&id_a).await.expect("access");
    assert_eq!(
        status_of(&latest, "/api/v1/namespaces").await,
        200,
        "the latest certificate"
    );
    assert!(renewed.expires_at > first.expires_at);
    let after_expiry = pxb_core::clock::rfc3339(first.expires_at + Duration::from_secs(1));
    wait_for(
        "a visit of real-a after the first certificate expired",
        Duration::from_secs(30),
        || async {
            let f = fleet_status(&cp, &acme).await?;
            let e = f
                .items
                .iter()
                .find(|e| e.cluster == "real-a")
                .cloned()
                .ok_or("no real-a")?;
            if e.state == ClusterState::Unreachable {
                return Err(format!("real-a unreachable: {e:?}"));
            }
            Ok(e.last_seen
                .as_ref()
                .is_some_and(|s| *s > after_expiry)
                .then_some(()))
        },
    )
    .await
    .expect("visited after expiry");
    let fleet = fleet_status(&cp, &acme).await.expect("fleet");
    for e in &fleet.items {
        assert_ne!(e.state, ClusterState::Unreachable, "{e:?}");
    }
    cp.shutdown().await;
}

/// A shoot whose client CA changed under the server's current kubeconfig (Gardener's CA
/// rotation: certificates of the old CA are refused) gets a new kubeconfig as soon as the real
/// server answers 401, not when the old one would have been renewed (here in about 48 minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_kubeconfig_is_reissued_at_once() {
    let cluster = Arc::new(real::start());
    real::install_pxb(&cluster).expect("pxb");
    // Until `rotated`, the garden signs with a CA the real server does not trust.
    let old_ca = pxb_tests::sim::pki::Ca::new("retired client CA").expect("CA");
    let rotated = Arc::new(AtomicBool::new(false));
    let real = real_api_server(cluster.clone());
    let mint = {
        let (rotated, real_mint) = (rotated.clone(), real.mint.clone());
        Arc::new(move |user: &str, groups: &[&str], ttl: Duration| {
            if rotated.load(Ordering::SeqCst) {
                return real_mint(user, groups, ttl);
            }
            // Validity does not matter: the real server does not trust this CA at all.
            let c = old_ca.client_cert(
                user,
                groups.first().copied().unwrap_or_default(),
                rcgen::date_time_ymd(2020, 1, 1),
                rcgen::date_time_ymd(2090, 1, 1),
            )?;
            Ok(MintedCert {
                cert_pem: c.cert_pem,
                key_pem: c.key_pem,
            })
        })
    };
    let fleet = fleet(600);
    fleet
        .add_external_shoot(PROJECT, "real-a", ExternalApiServer { mint, ..real })
        .expect("real-a");
    let cp = ControlPlane::start_on(fleet, PROJECT, |c| c.fleet.kubeconfig_lifetime_secs = 3600)
        .await
        .expect("control plane");
    let acme = org_discovering(&cp).await;
    let refused = wait_for(
        "real-a refuses the kubeconfig",
        Duration::from_secs(60),
        || async {
            let f = fleet_status(&cp, &acme).await?;
            let e = f.items.first().cloned().ok_or("no cluster yet")?;
            Ok((e.state == ClusterState::Unreachable).then_some(e))
        },
    )
    .await
    .expect("unreachable");
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("401") || m.contains("nauthorized")),
        "the reason names the refusal: {refused:?}"
    );
    rotated.store(true, Ordering::SeqCst);
    let started = Instant::now();
    wait_for(
        "real-a Ready with a new kubeconfig",
        // Well within the renewal (48 min): the first refused kubeconfig is replaced at once,
        // a refused successor after 15 s (pxb-gardener's refusal hold).
        Duration::from_secs(60),
        || async {
            let f = fleet_status(&cp, &acme).await?;
            let e = f.items.first().cloned().ok_or("no cluster")?;
            if e.state == ClusterState::Ready {
                Ok(Some(()))
            } else {
                Err(format!("{e:?}"))
            }
        },
    )
    .await
    .expect("the server recovers without waiting for the renewal");
    println!("recovered {:?} after the rotation", started.elapsed());
    cp.shutdown().await;
}
