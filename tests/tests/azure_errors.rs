//! Bad credentials and bad setups against Azurite and the fake Entra ID: each fails fast (well
//! under 10 s) with its own specific error, and nothing is written.

use std::time::{Duration, Instant};

use pxb_azure::{AzureAuth, AzureBlobStore, STORAGE_SCOPE, WorkloadIdentity};
use pxb_core::{Error, ObjectPath, ObjectStore, PutOptions, TokenSource};
use pxb_tests::fixture::{AzureFixture, CLIENT_ID};

const FAST: Duration = Duration::from_secs(10);

fn path(s: &str) -> ObjectPath {
    ObjectPath::parse(s).expect("valid")
}

/// Runs `f`, asserting it finished within [`FAST`].
async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    assert!(start.elapsed() < FAST, "{what} took {:?}", start.elapsed());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_id_is_rejected_by_entra() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let auth = AzureAuth::WorkloadIdentity(fx.wi_options("00000000-dead-beef-0000-000000000000"));
    let store = AzureBlobStore::new(fx.config("unknown-client", auth))
        .expect("store builds; the exchange happens later");
    let err = timed("unknown client id", store.list("", None, 10))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("token exchange rejected by Entra ID"), "{msg}");
    assert!(
        msg.contains("AADSTS700016") && msg.contains("00000000-dead-beef"),
        "{msg}"
    );
    assert_eq!(
        fx.entra.exchanges().len(),
        1,
        "a 4xx from Entra ID is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenant_is_rejected_by_entra() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let mut opts = fx.wi_options(CLIENT_ID);
    opts.tenant_id = Some("other-tenant".into());
    let wi =
        WorkloadIdentity::new(opts, &Default::default(), Some(fx.ca.ca_pem.as_bytes())).expect("credential");
    let err = timed("unknown tenant", wi.token(&[STORAGE_SCOPE]))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    assert!(err.to_string().contains("AADSTS90002"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_file_fails_at_construction() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let mut opts = fx.wi_options(CLIENT_ID);
    opts.token_file = Some("/nonexistent/pxb/azure-identity-token".into());
    let err = AzureBlobStore::new(fx.config("missing-file", AzureAuth::WorkloadIdentity(opts)))
        .expect_err("must fail");
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("federated token file") && msg.contains("/nonexistent/pxb/azure-identity-token"),
        "{msg}"
    );
    assert!(fx.entra.exchanges().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_file_is_reported_without_a_round_trip() {
    let fx = AzureFixture::start(3600).expect("fixture");
    fx.rotate_token(-120).expect("write an expired token");
    let store = AzureBlobStore::new(fx.wi_config("expired")).expect("store");
    let err = timed(
        "expired token",
        store.put(&path("x"), "x".into(), PutOptions::default()),
    )
    .await
    .expect_err("must fail");
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(
        fx.entra.exchanges().is_empty(),
        "an expired assertion is not sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_rejects_an_assertion_that_is_not_the_current_token() {
    // A credential reading a stale copy of the token: the fake Entra ID compares with the live file.
    let fx = AzureFixture::start(3600).expect("fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("stale-token");
    std::fs::write(&stale, pxb_tests::jwt::service_account_token(3600)).expect("write");
    let mut opts = fx.wi_options(CLIENT_ID);
    opts.token_file = Some(stale);
    let wi = WorkloadIdentity::new(opts, &Default::default(), Some(fx.ca.ca_pem.as_bytes())).expect("wi");
    let err = timed("stale assertion", wi.token(&[STORAGE_SCOPE]))
        .await
        .expect_err("must be refused");
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    assert!(err.to_string().contains("AADSTS700213"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_file_is_used_at_once() {
    // Entra tokens live 240 s, under the 300 s refresh margin: every request exchanges again.
    let fx = AzureFixture::start(240).expect("fixture");
    let store = AzureBlobStore::new(fx.wi_config("rotation")).expect("store");
    store.create_container().await.expect("container");
    store
        .put(&path("before"), "1".into(), PutOptions::default())
        .await
        .expect("put before rotation");
    let new_token = fx.rotate_token(3600).expect("rotate");
    store
        .put(&path("after"), "2".into(), PutOptions::default())
        .await
        .expect("put after rotation");
    let exchanges = fx.entra.exchanges();
    assert!(
        exchanges.iter().all(|e| e.granted),
        "every exchange granted: {exchanges:?}"
    );
    let last = exchanges.last().expect("at least one exchange");
    assert_eq!(last.assertion, new_token, "the rotated assertion was used");
    assert!(
        exchanges.iter().any(|e| e.assertion != new_token),
        "the first assertion was used before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_account_key_is_rejected() {
    use base64::Engine;
    let fx = AzureFixture::start(3600).expect("fixture");
    let good = AzureBlobStore::new(fx.key_config("wrong-key")).expect("store");
    good.create_container().await.expect("container");
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let store = AzureBlobStore::new(fx.config("wrong-key", AzureAuth::SharedKey { key })).expect("store");
    let err = timed(
        "wrong key",
        store.put(&path("x"), "x".into(), PutOptions::default()),
    )
    .await
    .expect_err("must fail");
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("rejected the credentials") && msg.contains("account key"),
        "{msg}"
    );
    assert!(
        good.list("", None, 10).await.expect("list").objects.is_empty(),
        "nothing was written"
    );

    let bad = AzureBlobStore::new(fx.config(
        "wrong-key",
        AzureAuth::SharedKey {
            key: "not base64!".into(),
        },
    ));
    assert!(
        matches!(bad, Err(Error::Invalid { .. })),
        "a malformed key is refused up front"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_over_plain_http_is_refused() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let mut cfg = fx.wi_config("plain-http");
    cfg.endpoint = Some(format!("http://127.0.0.1:{}/devstoreaccount1", fx.azurite.port()));
    let err = AzureBlobStore::new(cfg).expect_err("must refuse");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("plain http"), "{err}");
    assert!(fx.entra.exchanges().is_empty(), "no token was even requested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_fast() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let mut cfg = fx.key_config("untrusted");
    cfg.ca_file = None;
    let store = AzureBlobStore::new(cfg).expect("store");
    let err = timed("untrusted certificate", store.list("", None, 10))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("not trusted") && err.to_string().contains("--ca-file"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_entra_fails_fast() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let mut opts = fx.wi_options(CLIENT_ID);
    opts.authority_host = Some(format!(
        "https://127.0.0.1:{}",
        pxb_tests::free_port().expect("port")
    ));
    let store = AzureBlobStore::new(fx.config("no-entra", AzureAuth::WorkloadIdentity(opts))).expect("store");
    let err = timed("unreachable Entra ID", store.list("", None, 10))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("Entra ID token endpoint"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_container_is_named() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let store = AzureBlobStore::new(fx.key_config("never-created")).expect("store");
    let err = timed("missing container", store.list("", None, 10))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("container \"never-created\" does not exist"),
        "{err}"
    );
}

/// Every error a store returns, whatever failed, is free of the credential it was given: a SAS
/// (which the SDK puts in every request URL), an account key, or a bearer token. Each failure
/// kind is driven with each credential, and the error's message, its `Debug` (sources included)
/// and its source chain are scanned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_error_carries_the_credential() {
    use base64::Engine;
    let fx = AzureFixture::start(3600).expect("fixture");
    AzureBlobStore::new(fx.key_config("secrets"))
        .expect("store")
        .create_container()
        .await
        .expect("container");
    let (sas, sig) = pxb_tests::azurite::dev_sas().expect("sas");
    // A SAS whose signature does not match (403), with a secret-looking signature of its own.
    let forged_sig = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let forged = sas.replace(&sig, &url_escape(&forged_sig));
    let wrong_key = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let bearer = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXQtdGVzdC1zdWJqZWN0In0.c2lnbmF0dXJlLXNlY3JldA";
    let closed = format!(
        "https://127.0.0.1:{}/{}",
        pxb_tests::free_port().expect("port"),
        pxb_tests::azurite::ACCOUNT
    );
    let secrets = [
        sig.clone(),
        url_escape(&sig),
        forged_sig.clone(),
        url_escape(&forged_sig),
        pxb_tests::azurite::ACCOUNT_KEY.to_owned(),
        wrong_key.clone(),
        bearer.to_owned(),
    ];
    let auths = [
        ("sas", AzureAuth::Sas { token: sas.clone() }),
        ("forged sas", AzureAuth::Sas { token: forged }),
        (
            "account key",
            AzureAuth::SharedKey {
                key: pxb_tests::azurite::ACCOUNT_KEY.into(),
            },
        ),
        ("wrong account key", AzureAuth::SharedKey { key: wrong_key }),
        (
            "bearer",
            AzureAuth::Token(std::sync::Arc::new(pxb_core::StaticToken::new(
                pxb_core::AccessToken::new(bearer, std::time::SystemTime::now() + Duration::from_secs(3600)),
            ))),
        ),
    ];
    let mut failures = 0;
    let mut redacted = 0;
    for (what, auth) in auths {
        // Each failure kind: refused connection, untrusted TLS, a missing container, a missing
        // object, and whatever the credential itself earns (403 for the wrong ones).
        let setups: Vec<(&str, pxb_azure::AzureConfig)> = vec![
            ("refused", {
                let mut c = fx.config("secrets", auth.clone());
                c.endpoint = Some(closed.clone());
                c
            }),
            ("untrusted", {
                let mut c = fx.config("secrets", auth.clone());
                c.ca_file = None;
                c
            }),
            ("no container", fx.config("never-created", auth.clone())),
            ("as is", fx.config("secrets", auth.clone())),
        ];
        for (kind, cfg) in setups {
            let store = match AzureBlobStore::new(cfg) {
                Ok(s) => s,
                Err(e) => {
                    redacted += usize::from(check_clean(&format!("{what}/{kind}/new"), &e, &secrets));
                    continue;
                }
            };
            let results = [
                store.list("", None, 10).await.err(),
                store.get(&path("missing/object")).await.err(),
                store
                    .put(&path("x/y"), "x".into(), PutOptions::default())
                    .await
                    .err(),
            ];
            for e in results.into_iter().flatten() {
                failures += 1;
                redacted += usize::from(check_clean(&format!("{what}/{kind}"), &e, &secrets));
            }
        }
    }
    assert!(failures >= 30, "the failures were driven: {failures}");
    // The SDK's errors did name the request URL with the SAS: those were redacted, not absent.
    assert!(
        redacted > 0,
        "no error needed redaction: the attack did not reach the secret"
    );
}

fn url_escape(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Asserts no secret is in `e`; says whether something was redacted from it.
fn check_clean(what: &str, e: &Error, secrets: &[String]) -> bool {
    let mut texts = vec![e.to_string(), format!("{e:?}")];
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        texts.push(s.to_string());
        cur = s.source();
    }
    for t in &texts {
        for s in secrets {
            assert!(
                !t.contains(s.as_str()),
                "{what}: the error carries a secret ({s}): {t}"
            );
        }
    }
    texts.iter().any(|t| t.contains(pxb_core::redact::REDACTED))
}

/// An Entra ID outage is reported as unavailable (retried later), not as a refused identity, and
/// with Entra's own code: its error descriptions end with escaped line breaks, which the SDK
/// could not read before pxb-azure rewrote them (every refusal became a serde message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_outage_is_reported_as_unavailable_with_entras_code() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let container = fx.new_container("entra-outage").await.expect("container");
    let mut cfg = fx.wi_config(&container);
    cfg.http.max_retries = 1;
    cfg.http.max_total = Duration::from_secs(2);
    let store = AzureBlobStore::new(cfg).expect("store");
    fx.entra.set_outage(Some(503));
    let err = timed("Entra ID outage", store.list("", None, 10))
        .await
        .expect_err("must fail");
    assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("503") && msg.contains("AADSTS90033"), "{msg}");
    assert!(!msg.contains("borrowed"), "{msg}");
    // Over: the same store works.
    fx.entra.set_outage(None);
    store.list("", None, 10).await.expect("list after the outage");
}
