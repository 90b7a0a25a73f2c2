//! The fleet simulator and the Gardener provider, over real HTTPS with the real kube client.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use pxb_core::cluster::{ClusterDiff, ClusterProvider, CredentialState, Eligibility, IneligibleReason};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider, kube_client};
use pxb_tests::sim::{Fault, Fleet, FleetConfig, ProjectRole, ShootSpec};
use serde_json::{Value, json};

fn fleet(min_seconds: u64) -> Fleet {
    Fleet::start(FleetConfig {
        kubeconfig_min_seconds: min_seconds,
        bookmark_interval: Duration::from_millis(300),
        ..FleetConfig::default()
    })
    .expect("simulator starts")
}

async fn garden_client(fleet: &Fleet, token: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&fleet.garden_kubeconfig(token)).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// A garden client for a new service account of `project` with `role`.
async fn sa_client(fleet: &Fleet, project: &str, name: &str, role: ProjectRole) -> kube::Client {
    let token = fleet
        .add_service_account(project, name, role)
        .expect("service account");
    garden_client(fleet, &token).await
}

/// POSTs to a garden path; returns the status code and body.
async fn post(client: &kube::Client, path: &str, body: Value) -> (u16, Value) {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .expect("request");
    match client.request::<Value>(req).await {
        Ok(v) => (201, v),
        Err(kube::Error::Api(s)) => (s.code, json!({"message": s.message, "reason": s.reason})),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn kubeconfig_request(seconds: Option<i64>) -> Value {
    let mut v = json!({"apiVersion": "authentication.gardener.cloud/v1alpha1", "kind": "AdminKubeconfigRequest", "spec": {}});
    if let Some(s) = seconds {
        v["spec"]["expirationSeconds"] = s.into();
    }
    v
}

/// The notBefore and notAfter of a DER certificate (UTCTime or GeneralizedTime), as Unix seconds.
fn validity(der: &[u8]) -> (i64, i64) {
    fn tlv(d: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = d[0];
        let (len, hdr) = if d[1] < 0x80 {
            (d[1] as usize, 2)
        } else {
            let n = (d[1] & 0x7f) as usize;
            (
                d[2..2 + n].iter().fold(0usize, |a, b| (a << 8) | *b as usize),
                2 + n,
            )
        };
        (tag, &d[hdr..hdr + len], &d[hdr + len..])
    }
    fn time(tag: u8, v: &[u8]) -> i64 {
        let s = std::str::from_utf8(v).expect("ascii time");
        let full = if tag == 0x17 {
            format!("20{s}")
        } else {
            s.to_owned()
        };
        let p = |r: std::ops::Range<usize>| full[r].parse::<i64>().expect("digits");
        let rfc3339 = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            p(0..4),
            p(4..6),
            p(6..8),
            p(8..10),
            p(10..12),
            p(12..14)
        );
        let t = pxb_core::clock::parse_rfc3339(&rfc3339).expect("a valid certificate time");
        pxb_core::clock::unix_secs(t) as i64
    }
    let (_, cert, _) = tlv(der);
    let (_, mut tbs, _) = tlv(cert);
    if tbs[0] == 0xa0 {
        tbs = tlv(tbs).2; // version
    }
    let rest = tlv(tbs).2; // serial
    let rest = tlv(rest).2; // signature algorithm
    let rest = tlv(rest).2; // issuer
    let (_, validity, _) = tlv(rest);
    let (t1, nb, rest) = tlv(validity);
    let (t2, na, _) = tlv(rest);
    (time(t1, nb), time(t2, na))
}

fn decode_kubeconfig(resp: &Value) -> (String, String) {
    let yaml = base64::engine::general_purpose::STANDARD
        .decode(resp["status"]["kubeconfig"].as_str().expect("kubeconfig"))
        .expect("base64");
    let yaml = String::from_utf8(yaml).expect("utf8");
    let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("yaml");
    let user = kc.auth_infos[0].auth_info.clone().expect("user");
    let cert = base64::engine::general_purpose::STANDARD
        .decode(user.client_certificate_data.expect("cert"))
        .expect("base64");
    (yaml, String::from_utf8(cert).expect("pem"))
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[tokio::test]
async fn garden_issues_kubeconfigs_by_gardener_rules() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_project("other").expect("project");
    fleet.add_shoot("dev", ShootSpec::new("ready")).expect("shoot");
    let mut creating = ShootSpec::new("creating");
    creating.creating = true;
    fleet.add_shoot("dev", creating).expect("shoot");
    let mut addressless = ShootSpec::new("addressless");
    addressless.advertised_addresses = false;
    fleet.add_shoot("dev", addressless).expect("shoot");
    fleet.add_shoot("other", ShootSpec::new("theirs")).expect("shoot");
    let admin = sa_client(&fleet, "dev", "pxb", ProjectRole::Admin).await;
    let viewer = sa_client(&fleet, "dev", "ro", ProjectRole::Viewer).await;
    let base = "/apis/core.gardener.cloud/v1beta1/namespaces/garden-dev/shoots";

    // 201 with a client certificate whose NotAfter is the expirationTimestamp.
    let (code, resp) = post(
        &admin,
        &format!("{base}/ready/adminkubeconfig"),
        kubeconfig_request(Some(600)),
    )
    .await;
    assert_eq!(code, 201, "{resp}");
    let expires =
        pxb_core::clock::parse_rfc3339(resp["status"]["expirationTimestamp"].as_str().expect("timestamp"))
            .map(pxb_core::clock::unix_secs)
            .expect("rfc3339") as i64;
    let (yaml, cert) = decode_kubeconfig(&resp);
    let (not_before, not_after) = validity(&pem_der(&cert));
    assert_eq!(
        not_after, expires,
        "certificate NotAfter equals expirationTimestamp"
    );
    assert!(
        not_before < expires - 600,
        "NotBefore is slightly earlier, for clock skew"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64;
    assert!((expires - now - 600).abs() <= 5, "expires in 600 s");
    assert!(
        yaml.contains("current-context: shoot--dev--ready-external"),
        "{yaml}"
    );
    assert!(!yaml.contains("token:"), "client certificate, not a token");

    // Default 3600 s, clamping above the maximum, 422 under 600 s.
    let (code, resp) = post(
        &admin,
        &format!("{base}/ready/adminkubeconfig"),
        kubeconfig_request(None),
    )
    .await;
    assert_eq!(
        (code, resp["spec"]["expirationSeconds"].as_i64()),
        (201, Some(3600))
    );
    let (code, resp) = post(
        &admin,
        &format!("{base}/ready/adminkubeconfig"),
        kubeconfig_request(Some(10 * 86_400)),
    )
    .await;
    assert_eq!(
        (code, resp["spec"]["expirationSeconds"].as_i64()),
        (201, Some(86_400)),
        "clamped"
    );
    let (code, resp) = post(
        &admin,
        &format!("{base}/ready/adminkubeconfig"),
        kubeconfig_request(Some(599)),
    )
    .await;
    assert_eq!(code, 422);
    assert!(
        resp["message"]
            .as_str()
            .expect("msg")
            .contains("less than 10 minutes"),
        "{resp}"
    );

    // 500 while being created, 422 without an address, 404 for an unknown shoot.
    let (code, _) = post(
        &admin,
        &format!("{base}/creating/adminkubeconfig"),
        kubeconfig_request(None),
    )
    .await;
    assert_eq!(code, 500);
    let (code, resp) = post(
        &admin,
        &format!("{base}/addressless/adminkubeconfig"),
        kubeconfig_request(None),
    )
    .await;
    assert_eq!(code, 422);
    assert!(
        resp["message"]
            .as_str()
            .expect("msg")
            .contains("no suitable advertised address")
    );
    let (code, _) = post(
        &admin,
        &format!("{base}/nope/adminkubeconfig"),
        kubeconfig_request(None),
    )
    .await;
    assert_eq!(code, 404);

    // RBAC: a viewer gets only viewer kubeconfigs; project A's token gets 403 on project B.
    let (code, _) = post(
        &viewer,
        &format!("{base}/ready/adminkubeconfig"),
        kubeconfig_request(None),
    )
    .await;
    assert_eq!(code, 403);
    let viewer_req = json!({"apiVersion": "authentication.gardener.cloud/v1alpha1", "kind": "ViewerKubeconfigRequest", "spec": {}});
    let (code, _) = post(&viewer, &format!("{base}/ready/viewerkubeconfig"), viewer_req).await;
    assert_eq!(code, 201);
    let (code, _) = post(
        &admin,
        "/apis/core.gardener.cloud/v1beta1/namespaces/garden-other/shoots/theirs/adminkubeconfig",
        kubeconfig_request(None),
    )
    .await;
    assert_eq!(code, 403);
    let theirs: Api<pxb_gardener::Shoot> = Api::namespaced(admin.clone(), "garden-other");
    match theirs.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("cross-project list must be refused, got {other:?}"),
    }
    let projects: Api<pxb_gardener::Project> = Api::all(admin.clone());
    assert!(projects.get("dev").await.is_ok(), "own project is readable");
    match projects.get("other").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("another project must be refused, got {other:?}"),
    }
    match projects.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "service accounts cannot list projects"),
        other => panic!("listing projects must be refused, got {other:?}"),
    }
    let anonymous = garden_client(&fleet, "not-a-token").await;
    match Api::<pxb_gardener::Shoot>::namespaced(anonymous, "garden-dev")
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401),
        other => panic!("an unknown token must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn shoot_shapes_follow_gardener() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_shoot("dev", ShootSpec::new("s1")).expect("shoot");
    let client = sa_client(&fleet, "dev", "pxb", ProjectRole::Admin).await;
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        "garden-dev",
        &kube::api::ApiResource {
            group: "core.gardener.cloud".into(),
            version: "v1beta1".into(),
            api_version: "core.gardener.cloud/v1beta1".into(),
            kind: "Shoot".into(),
            plural: "shoots".into(),
        },
    );
    let s = serde_json::to_value(api.get("s1").await.expect("shoot")).expect("json");
    assert_eq!(s["metadata"]["labels"]["shoot.gardener.cloud/status"], "healthy");
    assert_eq!(s["metadata"]["finalizers"], json!(["gardener"]));
    assert_eq!(s["spec"]["cloudProfile"]["kind"], "CloudProfile");
    assert_eq!(s["spec"]["kubernetes"]["version"], "1.33.4");
    assert_eq!(s["status"]["uid"], s["metadata"]["uid"]);
    assert_eq!(s["status"]["technicalID"], "shoot--dev--s1");
    assert_eq!(s["status"]["hibernated"], false);
    assert_eq!(s["status"]["lastOperation"]["type"], "Reconcile");
    assert_eq!(s["status"]["lastOperation"]["state"], "Succeeded");
    let names: Vec<&str> = s["status"]["advertisedAddresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["external", "internal", "service-account-issuer"]);
    assert!(
        s["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "APIServerAvailable" && c["status"] == "True")
    );
    // Field selectors Gardener supports on shoots; others are refused.
    let lp = ListParams::default().fields("spec.cloudProfile.Name=azure");
    assert_eq!(api.list(&lp).await.expect("list").items.len(), 1);
    let lp = ListParams::default().fields("spec.region=westeurope");
    assert!(matches!(api.list(&lp).await, Err(kube::Error::Api(s)) if s.code == 400));

    fleet.hibernate("dev", "s1").expect("hibernate");
    let s = serde_json::to_value(api.get("s1").await.expect("shoot")).expect("json");
    assert_eq!(
        (
            s["status"]["hibernated"].as_bool(),
            s["spec"]["hibernation"]["enabled"].as_bool()
        ),
        (Some(true), Some(true))
    );
    fleet.begin_deletion("dev", "s1").expect("delete");
    let s = serde_json::to_value(api.get("s1").await.expect("shoot")).expect("json");
    assert!(s["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(s["status"]["lastOperation"]["type"], "Delete");
    fleet.delete_shoot("dev", "s1").expect("delete");
    assert!(matches!(api.get("s1").await, Err(kube::Error::Api(s)) if s.code == 404));
}

async fn provider(
    fleet: &Fleet,
    project: &str,
    f: impl FnOnce(&mut GardenerConfig),
) -> std::sync::Arc<GardenerProvider> {
    let token = fleet
        .add_service_account(project, "pxb-server", ProjectRole::Admin)
        .expect("sa");
    let mut config = GardenerConfig::new(GardenAuth::Kubeconfig(fleet.garden_kubeconfig(&token)), project);
    config.request_timeout = Duration::from_secs(5);
    f(&mut config);
    GardenerProvider::connect(config).await.expect("provider")
}

#[tokio::test]
async fn discovery_classifies_shoots_with_reasons() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    for i in 0..3 {
        fleet
            .add_shoot("dev", ShootSpec::new(format!("ok-{i}")))
            .expect("shoot");
    }
    fleet
        .add_shoot("dev", ShootSpec::new("rc").version("1.30.0-rc.1"))
        .expect("shoot");
    fleet
        .add_shoot("dev", ShootSpec::new("old").version("1.29.8"))
        .expect("shoot");
    fleet
        .add_shoot("dev", ShootSpec::new("aws").provider("aws"))
        .expect("shoot");
    fleet
        .add_shoot("dev", ShootSpec::new("garbled").version("1.x"))
        .expect("shoot");
    fleet.add_shoot("dev", ShootSpec::new("sleepy")).expect("shoot");
    fleet.hibernate("dev", "sleepy").expect("hibernate");
    let mut creating = ShootSpec::new("creating");
    creating.creating = true;
    fleet.add_shoot("dev", creating).expect("shoot");
    fleet.add_shoot("dev", ShootSpec::new("leaving")).expect("shoot");
    fleet.begin_deletion("dev", "leaving").expect("deleting");
    let mut bare = ShootSpec::new("bare");
    bare.without_status = true;
    fleet.add_shoot("dev", bare).expect("shoot");
    let mut nowhere = ShootSpec::new("nowhere");
    nowhere.advertised_addresses = false;
    fleet.add_shoot("dev", nowhere).expect("shoot");
    // A Shoot whose fields have the wrong type (the simulator does not validate schemas).
    let shoot_type =
        pxb_tests::sim::store::ResourceType::new("core.gardener.cloud", "v1beta1", "Shoot", "shoots", true);
    fleet
        .garden_store()
        .create(
            &shoot_type,
            Some("garden-dev"),
            json!({"metadata": {"name": "wrongtype"}, "spec": {"kubernetes": {"version": 133}, "provider": {"type": "azure"}}}),
            false,
        )
        .expect("raw shoot");
    // Another project's shoots are never seen.
    fleet.add_project("other").expect("project");
    fleet.add_shoot("other", ShootSpec::new("theirs")).expect("shoot");

    let p = provider(&fleet, "dev", |c| c.page_size = 4).await;
    let clusters = p.discover().await.expect("discover");
    assert_eq!(
        clusters.len(),
        13,
        "all shoots of the project, over several pages"
    );
    let reason = |name: &str| {
        let c = clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} discovered"));
        match &c.eligibility {
            Eligibility::Eligible => None,
            Eligibility::Ineligible { reason, message } => {
                assert!(!message.is_empty());
                Some(*reason)
            }
        }
    };
    for name in ["ok-0", "ok-1", "ok-2", "rc"] {
        assert_eq!(reason(name), None, "{name} is eligible");
    }
    assert_eq!(reason("old"), Some(IneligibleReason::KubernetesVersion));
    assert_eq!(reason("aws"), Some(IneligibleReason::ProviderType));
    assert_eq!(reason("garbled"), Some(IneligibleReason::Malformed));
    assert_eq!(reason("sleepy"), Some(IneligibleReason::Hibernated));
    assert_eq!(reason("creating"), Some(IneligibleReason::NotReconciled));
    assert_eq!(reason("leaving"), Some(IneligibleReason::Deleting));
    assert_eq!(reason("bare"), Some(IneligibleReason::Malformed));
    assert_eq!(reason("nowhere"), Some(IneligibleReason::Malformed));
    assert_eq!(
        reason("wrongtype"),
        Some(IneligibleReason::Malformed),
        "one unreadable shoot does not fail the cycle"
    );
    assert_eq!(
        reason("wrongtype"),
        Some(IneligibleReason::Malformed),
        "one bad shoot does not fail the cycle"
    );
    let ok0 = clusters.iter().find(|c| c.name == "ok-0").expect("ok-0");
    let uid = fleet.garden_store().get(&shoot_type, Some("garden-dev"), "ok-0");
    assert_eq!(
        Some(ok0.id.0.as_str()),
        uid.expect("shoot")["status"]["uid"].as_str(),
        "identity is status.uid"
    );

    // The provider conforms to the seam's suite.
    pxb_core::cluster::conformance::run_all(p.as_ref())
        .await
        .expect("conforms");
}

/// `pxb-server`'s default discovery source (Gardener projects, reached with kubeconfig files)
/// passes the `DiscoverySource` suite on the simulator, its providers the `ClusterProvider` suite;
/// it names itself `gardener`, the `source` of its clusters in the API.
#[tokio::test]
async fn gardener_discovery_conforms_to_the_discovery_source_suite() {
    use pxb_core::cluster::{DiscoveryRequest, DiscoverySource, conformance};
    use pxb_daemon::server::GardenerDiscovery;

    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 3).expect("shoots");
    fleet.add_shoot("dev", ShootSpec::new("sleepy")).expect("shoot");
    fleet.hibernate("dev", "sleepy").expect("hibernate");
    // A project the credential cannot read.
    fleet.add_project("other").expect("project");
    fleet.add_shoot("other", ShootSpec::new("theirs")).expect("shoot");
    let token = fleet
        .add_service_account("dev", "pxb-server", ProjectRole::Admin)
        .expect("sa");
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("garden.yaml");
    std::fs::write(&kubeconfig, fleet.garden_kubeconfig(&token)).expect("kubeconfig");
    let source = GardenerDiscovery::default().with_credential("garden", kubeconfig.display().to_string());
    assert_eq!(source.name(), "gardener");
    let request = |credential: &str, project: &str| {
        let mut r = DiscoveryRequest::new(credential, project);
        r.interval = Duration::from_secs(2);
        r.request_timeout = Duration::from_secs(5);
        r
    };
    conformance::run_discovery(
        &source,
        &request("garden", "dev"),
        &request("garden", "nowhere"),
        true,
    )
    .await
    .expect("conforms");
    // Neither another project's nor an unknown credential starts a discovery.
    for (credential, project) in [("garden", "other"), ("unknown", "dev")] {
        let started = source
            .start(
                &request(credential, project),
                tokio::sync::mpsc::unbounded_channel().0,
            )
            .await;
        assert!(started.is_err(), "{credential}/{project} is refused");
    }
}

async fn next_diff(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<ClusterDiff>,
    within: Duration,
    what: impl Fn(&ClusterDiff) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let left = within.checked_sub(start.elapsed()).expect("diff arrives in time");
        let d = tokio::time::timeout(left, rx.recv())
            .await
            .expect("diff arrives in time")
            .expect("channel open");
        if what(&d) {
            return start.elapsed();
        }
    }
}

#[tokio::test]
async fn added_and_deleted_shoots_are_detected_within_one_cycle() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 5).expect("shoots");
    let interval = Duration::from_secs(3);
    let p = provider(&fleet, "dev", |c| {
        c.discovery_interval = interval;
        c.eager = false;
    })
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _running = p.spawn(tx);
    next_diff(&mut rx, interval * 2, |d| d.added.len() == 5).await;

    fleet.add_shoot("dev", ShootSpec::new("new-one")).expect("add");
    let took = next_diff(&mut rx, interval, |d| d.added.iter().any(|c| c.name == "new-one")).await;
    eprintln!("added shoot detected after {took:?}");
    fleet.delete_shoot("dev", "s-00002").expect("delete");
    let took = next_diff(&mut rx, interval, |d| {
        d.removed.iter().any(|c| c.name == "s-00002")
    })
    .await;
    eprintln!("deleted shoot detected after {took:?}");
    // The watch is cut, a change happens and the log is compacted before it can resume: the
    // provider's watch gets 410 Gone, re-lists, and still reports the change.
    fleet.garden_store().set_watches_down(true);
    fleet.hibernate("dev", "s-00003").expect("hibernate");
    fleet.garden_store().compact();
    fleet.garden_store().set_watches_down(false);
    next_diff(&mut rx, interval, |d| {
        d.changed.iter().any(|(old, new)| {
            new.name == "s-00003" && old.eligibility.is_eligible() && !new.eligibility.is_eligible()
        })
    })
    .await;
    // Under load the periodic re-list may report the change before the watch resumes; the
    // watch still resumes from the compacted version and gets its 410 within a cycle.
    let start = Instant::now();
    while fleet.garden_store().expired_watches() == 0 && start.elapsed() < interval * 2 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        fleet.garden_store().expired_watches() >= 1,
        "the watch was resumed from a compacted version"
    );
    assert_eq!(p.inventory().len(), 5);
}

#[tokio::test]
async fn credentials_are_renewed_before_expiry_and_expired_ones_refused() {
    // Gardener's floor is 600 s; the simulator's is lowered so expiry happens within the test.
    let fleet = fleet(4);
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 2).expect("shoots");
    let p = provider(&fleet, "dev", |c| {
        c.expiration = Duration::from_secs(6);
        c.renew_fraction = 0.5;
        c.renew_jitter = 0.05;
    })
    .await;
    let clusters = p.discover().await.expect("discover");
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let _running = p.spawn(tx);
    let id = clusters[0].id.clone();
    let first = p.access(&id).await.expect("access");
    let first_client = kube_client(&first).expect("client");
    let first_not_after = first.expires_at;

    // Keep using the provider's access well past the first certificate's NotAfter.
    let deadline = first_not_after + Duration::from_secs(7);
    let mut calls = 0;
    while SystemTime::now() < deadline {
        let a = p.access(&id).await.expect("access is always available");
        assert!(a.expires_at > SystemTime::now(), "never an expired credential");
        let nss: Api<Namespace> = Api::all(kube_client(&a).expect("client"));
        nss.list(&ListParams::default())
            .await
            .expect("the API accepts the current credential");
        assert!(matches!(
            p.credential_state(&id),
            CredentialState::Fresh { .. } | CredentialState::Renewing { .. }
        ));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(calls > 20);
    let stats = p.stats();
    assert!(stats.issued >= 6, "both shoots renewed several times: {stats:?}");
    assert_eq!(stats.failed, 0);

    // The first certificate has expired: the shoot API refuses it.
    let nss: Api<Namespace> = Api::all(first_client);
    match nss.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401, "expired certificate refused: {s:?}"),
        other => panic!("an expired certificate must be refused, got {other:?}"),
    }

    // A certificate from another shoot's CA is refused too.
    let other = p.access(&clusters[1].id).await.expect("access");
    let mut foreign = other.clone();
    foreign.server = p.access(&id).await.expect("access").server;
    foreign.ca_pem = p.access(&id).await.expect("access").ca_pem;
    let nss: Api<Namespace> = Api::all(kube_client(&foreign).expect("client"));
    match nss.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 401, "foreign certificate refused"),
        other => panic!("a foreign certificate must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn issuance_failures_are_reported_and_retried() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 1).expect("shoots");
    let token = fleet
        .add_service_account("dev", "pxb", ProjectRole::Admin)
        .expect("sa");
    let mut config = GardenerConfig::new(GardenAuth::Kubeconfig(fleet.garden_kubeconfig(&token)), "dev");
    config.retry_base = Duration::from_millis(200);
    let p = GardenerProvider::connect(config).await.expect("provider");
    let clusters = p.discover().await.expect("discover");
    let id = clusters[0].id.clone();
    fleet.revoke_token(&token);
    let err = p.access(&id).await.expect_err("revoked token");
    assert_eq!(err.kind(), "unauthenticated", "{err}");
    match p.credential_state(&id) {
        CredentialState::Failing { reason, attempts, .. } => {
            assert_eq!(attempts, 1);
            assert!(reason.contains("401"), "{reason}");
        }
        other => panic!("expected Failing, got {other:?}"),
    }
}

/// What is particular to a simulated shoot's API, reached with the provider's credentials: its
/// version, discovery, and the compaction a test can force. Kubernetes semantics are held to the
/// real API server by `tests/kube_conformance.rs` (the suite in `pxb_tests::kube_conformance`).
#[tokio::test]
async fn shoot_api_reports_its_version_and_discovery() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_shoot("dev", ShootSpec::new("s1")).expect("shoot");
    let p = provider(&fleet, "dev", |_| {}).await;
    let clusters = p.discover().await.expect("discover");
    let client = kube_client(&p.access(&clusters[0].id).await.expect("access")).expect("client");
    let version = client.apiserver_version().await.expect("version");
    assert_eq!(version.git_version, "v1.33.4");
    let discovery = kube::discovery::Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    assert!(discovery.groups().any(|g| g.name() == "apps"));

    // A test can compact a shoot's log: a watch from before then gets 410 Gone.
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "app"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "after"}})).expect("cm"),
    )
    .await
    .expect("create");
    fleet.shoot("dev", "s1").expect("shoot").api().compact();
    use futures::StreamExt as _;
    let mut stream = Box::pin(cms.watch(&WatchParams::default(), &rv).await.expect("watch"));
    match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
        Ok(Some(Ok(WatchEvent::Error(e)))) => assert_eq!(e.code, 410),
        Ok(Some(Err(kube::Error::Api(s)))) => assert_eq!(s.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test]
async fn faults_can_be_injected_and_lifted_at_run_time() {
    let fleet = fleet(600);
    fleet.add_project("dev").expect("project");
    fleet.add_shoot("dev", ShootSpec::new("s1")).expect("shoot");
    let kubeconfig = fleet.admin_kubeconfig("dev", "s1", 3600).expect("kubeconfig");
    let client = || async {
        let kc = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("yaml");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(2));
        // kube retries 503 by default; this test wants to see each answer.
        config.default_retry = false;
        Api::<Namespace>::all(kube::Client::try_from(config).expect("client"))
    };
    // Every call has a deadline, as pxb's own cluster calls do.
    let call = || async {
        let started = Instant::now();
        let api = client().await;
        let r = match tokio::time::timeout(Duration::from_secs(2), api.list(&ListParams::default())).await {
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("deadline exceeded".to_owned()),
        };
        (r, started.elapsed())
    };
    assert!(call().await.0.is_ok());

    fleet.set_fault("dev", "s1", Fault::Offline).expect("fault");
    let (r, took) = call().await;
    assert!(
        r.is_err() && took >= Duration::from_millis(1900),
        "blackhole hangs until the deadline: {took:?}"
    );

    fleet.set_fault("dev", "s1", Fault::Refused).expect("fault");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (r, took) = call().await;
    assert!(
        r.is_err() && took < Duration::from_secs(1),
        "refused fails fast: {took:?}"
    );

    fleet
        .set_fault("dev", "s1", Fault::Latency(Duration::from_millis(600)))
        .expect("fault");
    let (r, took) = call().await;
    assert!(
        r.is_ok() && took >= Duration::from_millis(600),
        "latency: {took:?}"
    );

    fleet
        .set_fault("dev", "s1", Fault::HttpError(503))
        .expect("fault");
    let (r, _) = call().await;
    assert!(r.as_ref().is_err_and(|e| e.contains("503")), "{r:?}");

    fleet
        .set_fault("dev", "s1", Fault::Flapping(Duration::from_millis(700)))
        .expect("fault");
    let (mut ok, mut failed) = (0, 0);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        match call().await.0 {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        ok > 0 && failed > 0,
        "flapping alternates: {ok} ok, {failed} failed"
    );

    fleet.set_fault("dev", "s1", Fault::None).expect("fault");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(call().await.0.is_ok(), "healthy again");

    fleet.hibernate("dev", "s1").expect("hibernate");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(call().await.0.is_err(), "a hibernated shoot's API is down");
    fleet.wake("dev", "s1").expect("wake");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(call().await.0.is_ok(), "woken up");

    fleet.delete_shoot("dev", "s1").expect("delete");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(call().await.0.is_err(), "a deleted shoot's API is gone");
}
