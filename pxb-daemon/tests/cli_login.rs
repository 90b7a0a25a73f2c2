//! `pxb login --device-code` against a real OIDC issuer over HTTPS (the test issuer, with its
//! device authorization endpoint) and a real `pxb-server` that validates the token it yields.

mod support;

use support::pxb;

use std::path::Path;

use pxb_daemon::server::Daemon;
use pxb_daemon::server::config::{DEFAULT_CONFIG_YAML, ServerConfig};
use pxb_harness::oidc::{TestIssuer, USER_CODE};
use pxb_harness::tls::TestCa;

const AUDIENCE: &str = "api://pxb-test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_login_signs_in_through_the_issuer_and_the_server_accepts_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::generate().expect("ca");
    let issuer = TestIssuer::start(&ca).expect("issuer");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, issuer.ca_pem()).expect("ca file");

    let mut config = ServerConfig::from_yaml(DEFAULT_CONFIG_YAML).expect("config");
    config.api.listen = "127.0.0.1:0".into();
    config.catalog.path = dir.path().join("catalog.db").display().to_string();
    config.auth.issuer = issuer.issuer();
    config.auth.audiences = vec![AUDIENCE.into()];
    config.auth.issuer_ca_file = ca_file.display().to_string();
    config.auth.provider_admin_groups = vec!["pxb-provider-admins".into()];
    let daemon = Daemon::start(config, None, |_| None).await.expect("server");
    let server = format!("http://{}", daemon.addr);
    let ctx = dir.path().join("pxb.yaml");
    let login = |ctx: &Path| {
        let (server, iss, ca) = (server.clone(), issuer.issuer(), ca_file.display().to_string());
        let ctx = ctx.to_owned();
        tokio::task::spawn_blocking(move || {
            pxb(
                &ctx,
                &[
                    "login",
                    "--server",
                    &server,
                    "--device-code",
                    "--issuer",
                    &iss,
                    "--client-id",
                    "pxb-cli",
                    "--scope",
                    "api://pxb-test/.default",
                    "--ca-file",
                    &ca,
                ],
            )
        })
    };

    // The user declines: a clear error, no context written.
    issuer.set_device_login(None, 1);
    let out = login(&ctx).await.expect("join");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(USER_CODE), "the code is shown: {err}");
    assert!(err.contains("access_denied"), "{err}");
    assert!(!ctx.exists());

    // The user signs in after two polls: the token is stored and works.
    let claims = issuer.claims_for("alice", AUDIENCE, &["pxb-provider-admins"], &[], 3600);
    issuer.set_device_login(Some(claims), 2);
    let out = login(&ctx).await.expect("join");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("logged in as alice@pxb.test"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ctx2 = ctx.clone();
    let fleet = tokio::task::spawn_blocking(move || pxb(&ctx2, &["fleet", "status", "--json"]))
        .await
        .expect("join");
    assert!(
        fleet.status.success(),
        "{}",
        String::from_utf8_lossy(&fleet.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&fleet.stdout).expect("json");
    assert!(v["counts"].is_object(), "{v}");

    // The token flow with a token the issuer did not sign fails and keeps the context.
    let before = std::fs::read_to_string(&ctx).expect("ctx");
    let ctx3 = ctx.clone();
    let server3 = server.clone();
    let bad = tokio::task::spawn_blocking(move || {
        pxb(&ctx3, &["login", "--server", &server3, "--token", "forged"])
    })
    .await
    .expect("join");
    assert!(!bad.status.success());
    assert_eq!(std::fs::read_to_string(&ctx).expect("ctx"), before);
    daemon.shutdown().await;
}
