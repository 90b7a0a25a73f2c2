//! The clock given to [`ServerBuilder::clock`] reaches the server's default seams: the Entra ID
//! (OIDC) authenticator compares a token's expiry with it, and the default Gardener discovery
//! issues and renews kubeconfigs by it. A [`ManualClock`] moved past a token's expiry gets the
//! token refused while the wall clock is still well within its lifetime; a kubeconfig is issued
//! at the manual clock's time and renewed when the manual clock reaches its renewal time.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pxb_core::catalog::MemoryCatalog;
use pxb_core::cluster::{ClusterProvider as _, CredentialState};
use pxb_core::{Clock as _, ManualClock};
use pxb_daemon::server::ServerBuilder;
use pxb_daemon::server::config::{GardenCredential, ServerConfig};
use pxb_harness::oidc::TestIssuer;
use pxb_harness::tls::TestCa;
use pxb_sim::{Fleet, FleetConfig, ProjectRole};
use serde_json::{Value, json};

/// The audience of the test issuer's tokens.
const AUDIENCE: &str = "api://pxb-server-clock";
/// How long the test's bearer token is valid, by the issuer (the wall clock).
const TOKEN_LIFETIME_SECS: i64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_clock_reaches_the_default_authenticator_and_gardener_discovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A garden with one project and one shoot, and the server's project service account.
    let fleet = Fleet::start(FleetConfig::default()).expect("simulator starts");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "s", 1).expect("shoot");
    let garden_token = fleet
        .add_service_account("dev", "pxb-server", ProjectRole::Admin)
        .expect("service account");
    let garden = dir.path().join("garden-dev.yaml");
    std::fs::write(&garden, fleet.garden_kubeconfig(&garden_token)).expect("garden kubeconfig");
    // The issuer of the logins (real time: its `exp` is the wall clock's now + 600 s).
    let ca = TestCa::generate().expect("test CA");
    let issuer = TestIssuer::start(&ca).expect("test issuer");

    let mut config = ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    config.auth.issuer = issuer.issuer();
    config.auth.audiences = vec![AUDIENCE.into()];
    config.auth.issuer_ca_file = ca.ca_file().display().to_string();
    config.auth.provider_admin_groups = vec!["ops".into()];
    config.garden_credentials.insert(
        "dev".into(),
        GardenCredential::new(garden.display().to_string())
            .for_orgs(["acme"])
            .for_projects(["dev"]),
    );
    let start = SystemTime::now();
    let clock = ManualClock::new(start);
    // Only the catalog and the clock are given: logins and discovery are the defaults.
    let daemon = ServerBuilder::new(config)
        .catalog(Arc::new(MemoryCatalog::new()))
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("build")
        .spawn()
        .expect("spawn");
    let root = issuer.token(issuer.claims_for("root", AUDIENCE, &["ops"], &[], TOKEN_LIFETIME_SECS));
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = http
            .request(method, format!("http://{}{path}", daemon.addr))
            .bearer_auth(&root);
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b.to_string());
        }
        async move {
            let resp = r.send().await.expect("send");
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
    };

    // While the manual clock stands at the start, the token is accepted.
    let (status, body) = call(reqwest::Method::GET, "/v1/orgs", None).await;
    assert_eq!(status, 200, "a fresh token is accepted: {body}");
    let (status, body) = call(reqwest::Method::POST, "/v1/orgs", Some(json!({"id": "acme"}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        reqwest::Method::POST,
        "/v1/orgs/acme/discoveries",
        Some(json!({"id": "dev", "project": "dev", "credential": "dev", "intervalSecs": 5})),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The default discovery is Gardener's, and its provider reads the manual clock: the shoot's
    // kubeconfig is issued at the manual clock's time, which the wall clock has left behind.
    let deadline = Instant::now() + Duration::from_secs(30);
    let provider = loop {
        if let Some(p) = daemon.server.providers().into_iter().find(|p| p.tracked() == 1) {
            break p;
        }
        assert!(Instant::now() < deadline, "the Gardener discovery did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = provider.discover().await.expect("discover")[0].id.clone();
    let first = provider.access(&id).await.expect("access");
    assert!(SystemTime::now() > start, "the wall clock moved on");
    assert_eq!(
        first.issued_at, start,
        "the kubeconfig is issued at the manual clock's time"
    );
    let CredentialState::Fresh { expires_at, renew_at } = provider.credential_state(&id) else {
        panic!("fresh after issuance: {:?}", provider.credential_state(&id));
    };
    assert_eq!(expires_at, first.expires_at);
    assert!(renew_at > start, "{renew_at:?}");

    // The manual clock past the token's expiry (and the validator's leeway): refused, though by
    // the wall clock the token has minutes left.
    let expired = start + Duration::from_secs(TOKEN_LIFETIME_SECS as u64 + 120);
    assert!(
        renew_at > expired,
        "the test moves the clock past the token's expiry before the kubeconfig's renewal"
    );
    clock.set(expired);
    let (status, body) = call(reqwest::Method::GET, "/v1/orgs", None).await;
    assert_eq!(
        status, 401,
        "a token expired by the server's clock is refused: {body}"
    );
    assert!(
        SystemTime::now() < start + Duration::from_secs(TOKEN_LIFETIME_SECS as u64 - 60),
        "the wall clock is still within the token's lifetime"
    );
    // Back at the start, the same token is accepted again: the clock decided, not the wall time.
    clock.set(start);
    let (status, body) = call(reqwest::Method::GET, "/v1/orgs", None).await;
    assert_eq!(status, 200, "{body}");

    // Nothing is renewed while the manual clock stands before renew_at; at renew_at the
    // provider's renewal loop issues a new kubeconfig, at the manual clock's time.
    assert_eq!(provider.stats().renewed, 0, "no renewal before renew_at");
    clock.set(renew_at);
    let deadline = Instant::now() + Duration::from_secs(20);
    while provider.stats().renewed == 0 {
        assert!(
            Instant::now() < deadline,
            "the kubeconfig was not renewed when the manual clock reached renew_at ({:?})",
            provider.credential_state(&id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let renewed = loop {
        if let CredentialState::Fresh { renew_at: next, .. } = provider.credential_state(&id) {
            break next;
        }
        assert!(Instant::now() < deadline, "the renewal finishes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        renewed > renew_at,
        "the next renewal is scheduled from the new issuance"
    );
    assert_eq!(
        provider.access(&id).await.expect("access").issued_at,
        clock.now(),
        "the renewed kubeconfig is issued at the manual clock's time"
    );
    daemon.shutdown().await;
}
