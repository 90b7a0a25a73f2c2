//! Bearer-token validation (`pxb_azure::oidc`) against a real HTTPS test issuer: what is accepted,
//! every forgery and mismatch refused with its own error, and how often the issuer is asked.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pxb_azure::oidc::{OidcConfig, OidcError, OidcValidator, Principal};
use pxb_tests::fixture::TENANT_ID;
use pxb_tests::oidc::TestIssuer;
use pxb_tests::tls::TestCa;
use serde_json::{Value, json};

const AUD: &str = "api://pxb-server";

fn start() -> (TestCa, TestIssuer) {
    let ca = TestCa::generate().expect("test CA");
    let issuer = TestIssuer::start(&ca).expect("test issuer");
    (ca, issuer)
}

/// Validator settings for `issuer` and `audiences`, trusting its CA (other settings default).
fn oidc_config(issuer: &TestIssuer, audiences: &[&str]) -> OidcConfig {
    OidcConfig {
        extra_ca_pem: Some(issuer.ca_pem()),
        ..OidcConfig::new(issuer.issuer(), audiences.iter().copied())
    }
}

fn validator(config: OidcConfig) -> OidcValidator {
    OidcValidator::new(config).expect("valid settings")
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// `claims` with `key` set to `value`, or removed when `value` is null.
fn with(mut claims: Value, key: &str, value: Value) -> Value {
    if let Some(m) = claims.as_object_mut() {
        if value.is_null() {
            m.remove(key);
        } else {
            m.insert(key.to_owned(), value);
        }
    }
    claims
}

fn user(issuer: &TestIssuer) -> Value {
    issuer.claims_for("user-1", AUD, &["g-1"], &[], 600)
}

/// Asserts that `err` is what `matches` says, and that its message shows nothing of `token`.
fn assert_refused(err: &OidcError, token: &str, matches: bool) {
    assert!(matches, "unexpected error: {err:?}");
    let text = err.to_string();
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "the message echoes the token: {text}");
    }
    assert_eq!(err.http_status(), 401, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_is_accepted_and_mapped() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(
        &issuer,
        &[AUD, "00000000-0000-4000-8000-00000000a0d1"],
    ));
    let claims = issuer.claims_for("oid-7", AUD, &["g-admins", "g-ops"], &["Backup.Admin"], 600);
    let exp = claims["exp"].as_u64().expect("exp");
    let p = v
        .validate(&issuer.token(claims.clone()))
        .await
        .expect("valid token");
    assert_eq!(
        p,
        Principal {
            subject: "oid-7".into(),
            name: Some("oid-7@pxb.test".into()),
            tenant: Some(TENANT_ID.into()),
            groups: vec!["g-admins".into(), "g-ops".into()],
            roles: vec!["Backup.Admin".into()],
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
            session: None,
        }
    );
    // The sign-in session comes from `sid`.
    let with_sid = v
        .validate(&issuer.token(with(claims.clone(), "sid", json!("sess-1"))))
        .await
        .expect("valid token with sid");
    assert_eq!(with_sid.session.as_deref(), Some("sess-1"));
    // `oid` wins over `sub`; without `preferred_username`, `name` is used.
    let other = with(
        with(claims.clone(), "sub", json!("pairwise-sub")),
        "preferred_username",
        Value::Null,
    );
    let p = v
        .validate(&issuer.token(with(other, "name", json!("Ann Admin"))))
        .await
        .expect("valid token");
    assert_eq!(
        (p.subject.as_str(), p.name.as_deref()),
        ("oid-7", Some("Ann Admin"))
    );
    // Without `oid`, the subject is `sub`; the second audience is accepted too.
    let app = with(
        with(with(claims, "oid", Value::Null), "sub", json!("sub-7")),
        "aud",
        json!("00000000-0000-4000-8000-00000000a0d1"),
    );
    let p = v
        .validate(&format!(" {} ", issuer.token(app)))
        .await
        .expect("valid token");
    assert_eq!(p.subject, "sub-7");
    assert_eq!((issuer.discovery_fetches(), issuer.jwks_fetches()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_is_rejected_before_any_key_lookup() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let none = issuer.none_token(user(&issuer));
    // Also with a signature part that is not empty.
    let none_signed = format!("{none}{}", URL_SAFE_NO_PAD.encode(b"anything"));
    for token in [&none, &none_signed] {
        let err = v.validate(token).await.expect_err("alg none must be refused");
        assert_refused(
            &err,
            token,
            matches!(&err, OidcError::Algorithm(a) if a.contains("none")),
        );
    }
    assert_eq!(
        (issuer.discovery_fetches(), issuer.jwks_fetches()),
        (0, 0),
        "the algorithm is refused before the issuer is asked for keys"
    );
    // With the key cached, still refused.
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid token");
    let err = v.validate(&none).await.expect_err("alg none must be refused");
    assert!(matches!(err, OidcError::Algorithm(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_is_rejected_even_with_the_public_key_as_secret() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let secrets: Vec<(&str, Vec<u8>)> = vec![
        ("public key PEM", issuer.public_key_pem().into_bytes()),
        ("public key PKCS#1 DER", issuer.public_key_pkcs1_der()),
        ("modulus n", issuer.modulus()),
        (
            "modulus n base64url",
            URL_SAFE_NO_PAD.encode(issuer.modulus()).into_bytes(),
        ),
        ("a shared secret", b"pxb-shared-secret".to_vec()),
    ];
    for (what, secret) in &secrets {
        let token = issuer.hs256_token(user(&issuer), secret);
        let err = v.validate(&token).await.expect_err(what);
        assert_refused(
            &err,
            &token,
            matches!(&err, OidcError::Algorithm(a) if a.contains("HS256")),
        );
    }
    assert_eq!((issuer.discovery_fetches(), issuer.jwks_fetches()), (0, 0));
    // And with the RSA key cached.
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid token");
    for (what, secret) in &secrets {
        let err = v
            .validate(&issuer.hs256_token(user(&issuer), secret))
            .await
            .expect_err(what);
        assert!(matches!(err, OidcError::Algorithm(_)), "{what}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_is_rejected() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    // Cold: the keys are fetched, and the kid is not among them.
    let token = issuer.token_with_unknown_kid(user(&issuer));
    let err = v.validate(&token).await.expect_err("unknown kid");
    assert_refused(
        &err,
        &token,
        matches!(&err, OidcError::UnknownKey(k) if k.contains("bogus-")),
    );
    // Warm: the same (the signature would verify with the published key: no key is tried blindly).
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid token");
    let token = issuer.token_with_unknown_kid(user(&issuer));
    let err = v.validate(&token).await.expect_err("unknown kid");
    assert_refused(&err, &token, matches!(err, OidcError::UnknownKey(_)));
    // A token without kid is malformed.
    let mut parts: Vec<String> = issuer
        .token(user(&issuer))
        .split('.')
        .map(str::to_owned)
        .collect();
    parts[0] = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#);
    let err = v.validate(&parts.join(".")).await.expect_err("no kid");
    assert!(
        matches!(&err, OidcError::Malformed(m) if m.contains("kid")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_issuer_is_rejected() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let base = user(&issuer);
    for iss in [
        json!("https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0"),
        json!(format!("{}/", issuer.issuer())),
        json!([issuer.issuer()]),
        Value::Null,
    ] {
        let token = issuer.token(with(base.clone(), "iss", iss.clone()));
        let err = v.validate(&token).await.expect_err("wrong issuer");
        assert_refused(&err, &token, matches!(err, OidcError::Issuer(_)));
    }
    v.validate(&issuer.token(base)).await.expect("the right issuer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_audience_is_rejected() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let base = user(&issuer);
    for aud in [
        json!("api://another-api"),
        json!(["api://another-api", "https://storage.azure.com"]),
        json!([]),
        Value::Null,
    ] {
        let token = issuer.token(with(base.clone(), "aud", aud.clone()));
        let err = v.validate(&token).await.expect_err("wrong audience");
        assert_refused(&err, &token, matches!(err, OidcError::Audience));
    }
    let token = issuer.token(with(base, "aud", json!(["api://another-api", AUD])));
    v.validate(&token).await.expect("an array holding the audience");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_rejected() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let token = issuer.token(issuer.claims_for("user-1", AUD, &[], &[], -3600));
    let err = v.validate(&token).await.expect_err("expired");
    assert_refused(&err, &token, matches!(err, OidcError::Expired));
    let beyond_leeway = with(user(&issuer), "exp", json!(now() - 90));
    let err = v
        .validate(&issuer.token(beyond_leeway))
        .await
        .expect_err("expired");
    assert!(matches!(err, OidcError::Expired), "{err:?}");
    // Within the 60 s leeway: accepted.
    let within_leeway = with(user(&issuer), "exp", json!(now() - 20));
    v.validate(&issuer.token(within_leeway))
        .await
        .expect("within the leeway");
    // No exp at all: refused.
    let err = v
        .validate(&issuer.token(with(user(&issuer), "exp", Value::Null)))
        .await
        .expect_err("exp is required");
    assert!(
        matches!(&err, OidcError::Malformed(m) if m.contains("exp")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_not_yet_valid_is_rejected() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let token = issuer.token(with(user(&issuer), "nbf", json!(now() + 600)));
    let err = v.validate(&token).await.expect_err("nbf in the future");
    assert_refused(&err, &token, matches!(err, OidcError::NotYetValid));
    let within_leeway = with(user(&issuer), "nbf", json!(now() + 20));
    v.validate(&issuer.token(within_leeway))
        .await
        .expect("within the leeway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_token_fails_the_signature() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    let token = issuer.token(user(&issuer));
    v.validate(&token).await.expect("the original is valid");
    let parts: Vec<&str> = token.split('.').collect();
    // The payload with one more group, the signature kept.
    let elevated = with(user(&issuer), "groups", json!(["g-1", "g-admins"]));
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(elevated.to_string()),
        parts[2]
    );
    let err = v.validate(&forged).await.expect_err("tampered payload");
    assert_refused(&err, &forged, matches!(err, OidcError::Signature));
    // One bit of the signature flipped.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url signature");
    sig[10] ^= 1;
    let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    let err = v.validate(&flipped).await.expect_err("bad signature");
    assert_refused(&err, &flipped, matches!(err, OidcError::Signature));
    // No signature.
    let bare = format!("{}.{}.", parts[0], parts[1]);
    let err = v.validate(&bare).await.expect_err("no signature");
    assert!(
        matches!(err, OidcError::Signature | OidcError::Malformed(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_fetched_once_after_the_refresh_interval() {
    let (_ca, issuer) = start();
    let min_refresh = Duration::from_secs(2);
    let v = validator(OidcConfig {
        jwks_min_refresh: min_refresh,
        ..oidc_config(&issuer, &[AUD])
    });
    let old = issuer.token(user(&issuer));
    v.validate(&old).await.expect("valid token");
    assert_eq!(issuer.jwks_fetches(), 1);

    issuer.rotate(false).expect("rotate");
    let new = issuer.token(user(&issuer));
    // Within the interval after the last fetch, the new kid is not looked up again.
    let err = v.validate(&new).await.expect_err("too soon to refetch");
    assert!(matches!(err, OidcError::UnknownKey(_)), "{err:?}");
    assert_eq!(issuer.jwks_fetches(), 1);

    tokio::time::sleep(min_refresh + Duration::from_millis(300)).await;
    let p = v.validate(&new).await.expect("the new key is fetched");
    assert_eq!(p.subject, "user-1");
    assert_eq!(issuer.jwks_fetches(), 2, "exactly one refetch");
    for _ in 0..5 {
        v.validate(&new).await.expect("cached new key");
    }
    // The old key is no longer published.
    let err = v.validate(&old).await.expect_err("the old key was withdrawn");
    assert!(matches!(err, OidcError::UnknownKey(_)), "{err:?}");
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeping_the_old_key_accepts_both() {
    let (_ca, issuer) = start();
    let v = validator(OidcConfig {
        jwks_min_refresh: Duration::ZERO,
        ..oidc_config(&issuer, &[AUD])
    });
    let old = issuer.token(user(&issuer));
    v.validate(&old).await.expect("valid token");
    issuer.rotate(true).expect("rotate");
    let new = issuer.token(user(&issuer));
    v.validate(&new).await.expect("new key");
    v.validate(&old).await.expect("old key, still published");
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_bogus_kids_is_rate_limited() {
    let (_ca, issuer) = start();
    // Default interval (30 s): a burst right after a fetch causes none.
    let v = validator(oidc_config(&issuer, &[AUD]));
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid token");
    assert_eq!(issuer.jwks_fetches(), 1);
    let errors = burst(&v, &issuer, 50).await;
    assert!(
        errors.iter().all(|e| matches!(e, OidcError::UnknownKey(_))),
        "{errors:?}"
    );
    assert_eq!(issuer.jwks_fetches(), 1, "no fetch within the interval");

    // Once the interval has passed, a concurrent burst causes exactly one fetch.
    let min_refresh = Duration::from_secs(2);
    let v = validator(OidcConfig {
        jwks_min_refresh: min_refresh,
        ..oidc_config(&issuer, &[AUD])
    });
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid token");
    assert_eq!(issuer.jwks_fetches(), 2);
    tokio::time::sleep(min_refresh + Duration::from_millis(300)).await;
    let errors = burst(&v, &issuer, 50).await;
    assert!(
        errors.iter().all(|e| matches!(e, OidcError::UnknownKey(_))),
        "{errors:?}"
    );
    assert_eq!(issuer.jwks_fetches(), 3, "one refetch for the whole burst");
    let errors = burst(&v, &issuer, 50).await;
    assert_eq!(errors.len(), 50);
    assert_eq!(issuer.jwks_fetches(), 3, "none for the next burst");
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid tokens still pass");
    assert_eq!(issuer.jwks_fetches(), 3);
}

/// Validates `n` tokens with bogus kids concurrently; returns their errors.
async fn burst(v: &OidcValidator, issuer: &TestIssuer, n: usize) -> Vec<OidcError> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (v, token) = (v.clone(), issuer.token_with_unknown_kid(user(issuer)));
        tasks.spawn(async move { v.validate(&token).await });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r.expect("task") {
            errors.push(e);
        }
    }
    assert_eq!(errors.len(), n, "every bogus token is refused");
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_issuer_without_cache_is_unavailable() {
    let (_ca, issuer) = start();
    let config = oidc_config(&issuer, &[AUD]);
    let token = issuer.token(user(&issuer));
    drop(issuer);
    let v = validator(config);
    for _ in 0..2 {
        let err = v.validate(&token).await.expect_err("nothing listens");
        assert!(matches!(err, OidcError::Unavailable(_)), "{err:?}");
        assert_eq!(err.http_status(), 503);
        assert!(!err.to_string().contains(&token), "{err}");
    }

    // An issuer that answers 503.
    let (_ca, issuer) = start();
    issuer.set_failing(true);
    let v = validator(oidc_config(&issuer, &[AUD]));
    let err = v
        .validate(&issuer.token(user(&issuer)))
        .await
        .expect_err("failing issuer");
    assert!(
        matches!(&err, OidcError::Unavailable(m) if m.contains("503")),
        "{err:?}"
    );

    // An issuer whose certificate is not trusted.
    issuer.set_failing(false);
    let v = validator(OidcConfig::new(issuer.issuer(), [AUD]));
    let err = v
        .validate(&issuer.token(user(&issuer)))
        .await
        .expect_err("untrusted CA");
    assert!(matches!(err, OidcError::Unavailable(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_cached() {
    let (_ca, issuer) = start();
    let v = validator(oidc_config(&issuer, &[AUD]));
    // Concurrent validations on a cold cache share one fetch.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..30 {
        let (v, token) = (
            v.clone(),
            issuer.token(issuer.claims_for(&format!("user-{i}"), AUD, &[], &[], 600)),
        );
        tasks.spawn(async move { v.validate(&token).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("valid token");
    }
    for _ in 0..20 {
        v.validate(&issuer.token(user(&issuer)))
            .await
            .expect("valid token");
    }
    assert_eq!((issuer.discovery_fetches(), issuer.jwks_fetches()), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_keys_are_refetched_and_survive_an_outage() {
    let (_ca, issuer) = start();
    let max_age = Duration::from_millis(400);
    let v = validator(OidcConfig {
        jwks_max_age: max_age,
        jwks_min_refresh: Duration::ZERO,
        ..oidc_config(&issuer, &[AUD])
    });
    let token = issuer.token(user(&issuer));
    v.validate(&token).await.expect("valid token");
    v.validate(&token).await.expect("valid token");
    assert_eq!(issuer.jwks_fetches(), 1);
    tokio::time::sleep(max_age + Duration::from_millis(200)).await;
    v.validate(&token).await.expect("valid token");
    assert_eq!(issuer.jwks_fetches(), 2, "refetched once older than jwks_max_age");

    // The issuer fails: the cached keys stay good, an unknown kid cannot be checked.
    issuer.set_failing(true);
    tokio::time::sleep(max_age + Duration::from_millis(200)).await;
    let discoveries = issuer.discovery_fetches();
    v.validate(&token)
        .await
        .expect("stale key used while the issuer fails");
    assert!(issuer.discovery_fetches() > discoveries, "a refresh was tried");
    let err = v
        .validate(&issuer.token_with_unknown_kid(user(&issuer)))
        .await
        .expect_err("unknown kid");
    assert!(matches!(err, OidcError::Unavailable(_)), "{err:?}");

    issuer.set_failing(false);
    v.validate(&token).await.expect("valid token");
    assert_eq!(issuer.jwks_fetches(), 3, "refetched once the issuer is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_issuer_holds_no_validation_longer_than_the_deadline() {
    let (_ca, issuer) = start();
    let max_age = Duration::from_millis(300);
    let deadline = Duration::from_secs(2);
    let v = validator(OidcConfig {
        jwks_max_age: max_age,
        jwks_min_refresh: Duration::ZERO,
        timeout: deadline,
        ..oidc_config(&issuer, &[AUD])
    });
    let token = issuer.token(user(&issuer));
    v.validate(&token).await.expect("valid token");
    // The keys go stale and the issuer hangs far past the deadline (discovery and JWKS each).
    issuer.set_stall(Duration::from_secs(30));
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    // One validation starts the refresh; others arriving meanwhile with a known key do not
    // queue behind it, and none waits for longer than the refresh's own deadline.
    let refreshing = {
        let (v, token) = (v.clone(), token.clone());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = v.validate(&token).await;
            (r, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    v.validate(&token)
        .await
        .expect("stale known key while a refresh hangs");
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "a validation with a known key waited {:?} behind a hanging refresh",
        t.elapsed()
    );
    let t = Instant::now();
    let err = v
        .validate(&issuer.token_with_unknown_kid(user(&issuer)))
        .await
        .expect_err("unknown kid while the issuer hangs");
    assert!(matches!(err, OidcError::Unavailable(_)), "{err:?}");
    assert!(
        t.elapsed() < deadline + Duration::from_secs(1),
        "an unknown key waited {:?}, past the deadline {deadline:?}",
        t.elapsed()
    );
    let (r, took) = refreshing.await.expect("task");
    r.expect("the refreshing validation falls back to the known key");
    assert!(
        took < deadline + Duration::from_secs(1),
        "the refresh held its validation {took:?}, past the deadline {deadline:?}"
    );
    issuer.set_stall(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_trailing_slash_and_discovery_mismatch() {
    let (_ca, issuer) = start();
    // A configured issuer with a trailing slash finds the same discovery document; tokens'
    // `iss` must equal the issuer the document names.
    let v = validator(OidcConfig {
        issuer: format!("{}/", issuer.issuer()),
        ..oidc_config(&issuer, &[AUD])
    });
    v.validate(&issuer.token(user(&issuer)))
        .await
        .expect("valid token");

    // A discovery document naming another issuer is a configuration error.
    issuer.set_advertised_issuer(Some("https://login.microsoftonline.com/other-tenant/v2.0"));
    let v = validator(oidc_config(&issuer, &[AUD]));
    let err = v
        .validate(&issuer.token(user(&issuer)))
        .await
        .expect_err("issuer mismatch");
    assert!(
        matches!(&err, OidcError::Config(m) if m.contains("other-tenant")),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 500);
    assert_eq!(
        issuer.jwks_fetches(),
        1,
        "the JWKS of a mismatched issuer is not fetched"
    );
}
