//! The real Workload Identity chain, end to end with signatures: a real kube-apiserver mints the
//! ServiceAccount token (TokenRequest, audience `api://AzureADTokenExchange`), the token file
//! holds it as the kubelet projects it, the product's own Azure store (`pxb_azure::AzureBlobStore`
//! with Workload Identity) exchanges it at the Entra ID stand-in in federated mode, which checks
//! it against federated identity credentials and verifies its signature with the keys the API
//! server publishes (fetched anonymously from `/.well-known/openid-configuration` → `jwks_uri`),
//! and the access token then writes and reads a blob in Azurite over HTTPS.
//!
//! Then the attacks, each refused with Entra ID's reason visible in the product's error: another
//! ServiceAccount's token, a token for another audience, a token of another cluster (another
//! issuer, same names), a token signed by a key the issuer does not publish, a token whose claims
//! were edited, and tokens outside their time range.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use pxb_azure::AzureBlobStore;
use pxb_core::{ObjectPath, ObjectStore as _, PutOptions};
use pxb_harness::jwks;
use pxb_tests::fixture::{AzureFixture, CLIENT_ID, SECOND_CLIENT_ID};
use pxb_tests::real::{self, RealCluster, WORKLOAD_IDENTITY_AUDIENCE};
use serde_json::Value;

/// The ServiceAccount whose token the agent presents; federated with [`CLIENT_ID`].
const AGENT: &str = "pxb-agent";
/// Another ServiceAccount of the same namespace; federated with [`SECOND_CLIENT_ID`] only.
const INTRUDER: &str = "intruder";
/// The default audience of the API server's tokens.
const KUBERNETES_AUDIENCE: &str = "https://kubernetes.default.svc";
/// How long one store operation may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(60);

/// The federated fixture on `cluster`: `ns/pxb-agent` → [`CLIENT_ID`], `ns/intruder` →
/// [`SECOND_CLIENT_ID`]; the token file holds a real token of `ns/pxb-agent`.
fn federated(cluster: &RealCluster, ns: &str) -> AzureFixture {
    AzureFixture::federated(
        cluster,
        &[(CLIENT_ID, ns, AGENT), (SECOND_CLIENT_ID, ns, INTRUDER)],
        3600,
    )
    .expect("the federated Azure fixture")
}

/// A real TokenRequest token of `ns/sa` for `audience`, valid one hour.
fn token(cluster: &RealCluster, ns: &str, sa: &str, audience: &str) -> String {
    real::service_account_token(cluster, ns, sa, audience, Duration::from_secs(3600)).expect("TokenRequest")
}

fn header_and_claims(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut next = || -> Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(parts.next().expect("a JWT part"))
                .expect("base64url"),
        )
        .expect("JSON")
    };
    let header = next();
    (header, next())
}

/// `token` with its claims changed by `edit`, header and signature kept.
fn edit_claims(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let (_, mut claims) = header_and_claims(token);
    edit(&mut claims);
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

/// The product's Azure store with Workload Identity (fixture's token file, [`CLIENT_ID`]) writes
/// a blob into a new container and reads it back; the product's error otherwise.
async fn write_and_read(fx: &AzureFixture, tag: &str) -> Result<(), String> {
    let container = fx.new_container(tag).await.expect("container (account key)");
    let store = AzureBlobStore::new(fx.wi_config(&container)).expect("store");
    let path = ObjectPath::parse("wi/blob").expect("path");
    let data = Bytes::from_static(b"written with a real service-account token");
    let put = tokio::time::timeout(STEP, store.put(&path, data.clone(), PutOptions::default()))
        .await
        .expect("put did not finish in time");
    put.map_err(|e| e.to_string())?;
    let got = tokio::time::timeout(STEP, async { store.get(&path).await?.bytes().await })
        .await
        .expect("get did not finish in time")
        .map_err(|e| e.to_string())?;
    assert_eq!(got, data, "the blob read back");
    Ok(())
}

/// Projects `token` and requires the product to be refused with `code`; the product's error.
async fn refused(fx: &AzureFixture, tag: &str, token: &str, code: &str) -> String {
    fx.project_token(token).expect("project the token");
    let before = fx.entra.exchanges().len();
    let err = write_and_read(fx, tag)
        .await
        .expect_err("the stand-in must refuse this token");
    assert!(
        err.contains(code),
        "expected {code} in the product's error: {err}"
    );
    let exchanges = fx.entra.exchanges();
    assert!(
        exchanges.len() > before,
        "no exchange reached the stand-in: {err}"
    );
    assert!(
        exchanges[before..]
            .iter()
            .all(|e| !e.granted && e.assertion.trim() == token),
        "{exchanges:?}"
    );
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_service_account_token_writes_and_reads_a_blob() {
    let cluster = real::shared();
    let ns = "wi-roundtrip";
    let fx = federated(cluster, ns);
    // The token file is what the kubelet projects: a symlink into `..data`.
    let file = fx.token_file();
    assert!(
        std::fs::symlink_metadata(&file)
            .expect("token file")
            .file_type()
            .is_symlink(),
        "{} is not projected like the kubelet does",
        file.display()
    );
    let projected = std::fs::read_to_string(&file).expect("read the token file");
    let (header, claims) = header_and_claims(&projected);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert_eq!(claims["iss"], cluster.issuer().as_str());
    assert_eq!(claims["sub"], format!("system:serviceaccount:{ns}:{AGENT}"));
    assert_eq!(claims["aud"], serde_json::json!([WORKLOAD_IDENTITY_AUDIENCE]));

    write_and_read(&fx, "wi-real")
        .await
        .expect("write and read with a real token");
    let exchanges = fx.entra.exchanges();
    assert!(!exchanges.is_empty(), "no exchange reached the stand-in");
    assert!(
        exchanges
            .iter()
            .all(|e| e.granted && e.client_id == CLIENT_ID && e.assertion.trim() == projected),
        "{exchanges:?}"
    );
    // The keys came from the API server: its discovery document, then its JWKS.
    let fetches = fx.entra.key_fetches();
    let urls: Vec<&str> = fetches.iter().map(|f| f.url.as_str()).collect();
    assert_eq!(
        urls,
        [
            format!("{}/.well-known/openid-configuration", cluster.issuer()),
            format!("{}/openid/v1/jwks", cluster.issuer()),
        ],
        "{fetches:?}"
    );
    assert!(fetches.iter().all(|f| f.status == Some(200)), "{fetches:?}");

    // A second client (a fresh credential, so a fresh exchange) is verified from the cache.
    let exchanged = fx.entra.exchanges().len();
    write_and_read(&fx, "wi-real-again").await.expect("again");
    assert!(fx.entra.exchanges().len() > exchanged, "no second exchange");
    assert_eq!(fx.entra.key_fetches().len(), 2, "the keys are cached");

    // A rotated token (a new TokenRequest, projected again) is used as well.
    let rotated = token(cluster, ns, AGENT, WORKLOAD_IDENTITY_AUDIENCE);
    assert_ne!(rotated, projected);
    fx.project_token(&rotated).expect("rotate");
    write_and_read(&fx, "wi-rotated")
        .await
        .expect("with the rotated token");
    assert!(
        fx.entra
            .exchanges()
            .last()
            .is_some_and(|e| e.granted && e.assertion.trim() == rotated)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_of_another_service_account_is_refused() {
    let cluster = real::shared();
    let ns = "wi-other-sa";
    let fx = federated(cluster, ns);
    // A real, validly signed token of the right audience, of another ServiceAccount (one that
    // is itself federated, with another application).
    let theirs = token(cluster, ns, INTRUDER, WORKLOAD_IDENTITY_AUDIENCE);
    let err = refused(&fx, "wi-other-sa", &theirs, "AADSTS70021").await;
    assert!(
        err.contains(&format!(
            "Assertion Subject: 'system:serviceaccount:{ns}:{INTRUDER}'"
        )) && err.contains(&format!("Assertion Issuer: '{}'", cluster.issuer()))
            && err.contains(&format!("Assertion Audience: '{WORKLOAD_IDENTITY_AUDIENCE}'")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_for_another_audience_is_refused() {
    let cluster = real::shared();
    let ns = "wi-other-aud";
    let fx = federated(cluster, ns);
    // The agent's own ServiceAccount, but the API server's default audience.
    let for_kubernetes = token(cluster, ns, AGENT, KUBERNETES_AUDIENCE);
    let err = refused(&fx, "wi-other-aud", &for_kubernetes, "AADSTS70021").await;
    assert!(
        err.contains(&format!("Assertion Audience: '{KUBERNETES_AUDIENCE}'")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_from_another_cluster_is_refused() {
    let cluster = real::shared();
    let ns = "wi-other-cluster";
    let fx = federated(cluster, ns);
    write_and_read(&fx, "wi-before")
        .await
        .expect("the real token works");
    let fetched = fx.entra.key_fetches().len();

    // Another real cluster, the same namespace and ServiceAccount names: another issuer.
    let other = real::start();
    assert_ne!(other.issuer(), cluster.issuer());
    let _their_fixture = federated(&other, ns); // creates ns/pxb-agent there
    let theirs = token(&other, ns, AGENT, WORKLOAD_IDENTITY_AUDIENCE);
    let err = refused(&fx, "wi-other-cluster", &theirs, "AADSTS70021").await;
    assert!(
        err.contains(&format!("Assertion Issuer: '{}'", other.issuer())),
        "{err}"
    );
    assert_eq!(
        fx.entra.key_fetches().len(),
        fetched,
        "an issuer without a federated credential is never fetched"
    );

    // The same token claiming this cluster's issuer: its key id is not published here. The
    // stand-in fetches the keys again (an unknown kid may be a rotation) and still refuses.
    let relabelled = edit_claims(&theirs, |c| c["iss"] = cluster.issuer().into());
    let err = refused(&fx, "wi-relabelled", &relabelled, "AADSTS7000272").await;
    let their_kid = jwks::kid(&theirs).expect("kid");
    assert!(
        err.contains(&their_kid) && err.contains(&cluster.issuer()),
        "{err}"
    );
    assert_eq!(
        fx.entra.key_fetches().len(),
        fetched + 2,
        "an unknown kid makes the stand-in fetch the discovery document and keys again: {:?}",
        fx.entra.key_fetches()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_signed_with_a_key_the_issuer_does_not_publish_is_refused() {
    let cluster = real::shared();
    let ns = "wi-forged";
    let fx = federated(cluster, ns);
    let real_token = std::fs::read_to_string(fx.token_file()).expect("token");
    let (_, claims) = header_and_claims(&real_token);
    let real_kid = jwks::kid(&real_token).expect("kid");
    let key = jwks::generate_p256_key_pem().expect("a fresh key");

    // Every claim right, signed with the attacker's key under the issuer's real key id.
    let forged = jwks::sign_es256(&key, &real_kid, &claims).expect("sign");
    let err = refused(&fx, "wi-forged", &forged, "AADSTS50013").await;
    assert!(err.contains("signature"), "{err}");

    // The same under a key id of the attacker's own.
    let forged = jwks::sign_es256(&key, "attacker-key", &claims).expect("sign");
    refused(&fx, "wi-forged-kid", &forged, "AADSTS7000272").await;

    // The real token still works (the refusals are about the signature, not the claims).
    fx.project_token(&real_token).expect("project");
    write_and_read(&fx, "wi-genuine")
        .await
        .expect("the genuine token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_whose_claims_were_edited_is_refused() {
    let cluster = real::shared();
    let ns = "wi-edited";
    let fx = federated(cluster, ns);
    // The intruder's real token, its subject changed to the agent's, its signature kept: every
    // claim now matches the agent's federated credential.
    let theirs = token(cluster, ns, INTRUDER, WORKLOAD_IDENTITY_AUDIENCE);
    let edited = edit_claims(&theirs, |c| {
        c["sub"] = format!("system:serviceaccount:{ns}:{AGENT}").into();
        c["kubernetes.io"]["serviceaccount"]["name"] = AGENT.into();
    });
    let err = refused(&fx, "wi-edited", &edited, "AADSTS50013").await;
    assert!(err.contains("signature"), "{err}");
    // The agent's own token with a longer life written in: refused too.
    let own = std::fs::read_to_string(fx.token_file()).expect("token");
    let longer = edit_claims(&own, |c| {
        c["exp"] = (c["exp"].as_i64().expect("exp") + 86_400).into();
    });
    refused(&fx, "wi-longer", &longer, "AADSTS50013").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_outside_their_time_range_are_refused() {
    // TokenRequest will not mint a token shorter than 10 minutes, so these are signed with the
    // cluster's own service-account key (its sa.key) under its real key id: genuine signatures,
    // times the API server would never issue.
    let cluster = real::shared();
    let ns = "wi-time";
    let fx = federated(cluster, ns);
    let real_token = std::fs::read_to_string(fx.token_file()).expect("token");
    let (_, claims) = header_and_claims(&real_token);
    let kid = jwks::kid(&real_token).expect("kid");
    let sa_key = std::fs::read_to_string(cluster.dir().join("sa.key")).expect("sa.key");
    let now = pxb_harness::jwt::unix_now() as i64;
    let resign = |from: i64, to: i64| {
        let mut c = claims.clone();
        c["iat"] = from.into();
        c["nbf"] = from.into();
        c["exp"] = to.into();
        jwks::sign_es256(&sa_key, &kid, &c).expect("sign with sa.key")
    };

    // The control: re-signed with the real key and real times, it is accepted.
    let genuine = resign(now - 60, now + 3600);
    fx.project_token(&genuine).expect("project");
    write_and_read(&fx, "wi-resigned")
        .await
        .expect("a token signed with sa.key");

    // Not yet valid: the product sends it, Entra refuses it.
    let early = resign(now + 3600, now + 7200);
    let err = refused(&fx, "wi-early", &early, "AADSTS700024").await;
    assert!(err.contains("not within its valid time range"), "{err}");

    // Expired: the product does not even send it (it reads `exp`) ...
    let expired = resign(now - 7200, now - 3600);
    fx.project_token(&expired).expect("project");
    let before = fx.entra.exchanges().len();
    let err = write_and_read(&fx, "wi-expired").await.expect_err("expired");
    assert!(err.contains("expired"), "{err}");
    assert_eq!(fx.entra.exchanges().len(), before, "an expired token is not sent");
    // ... and the stand-in refuses it when it is sent anyway.
    let (status, answer) = fx
        .entra
        .exchange_directly(CLIENT_ID, &expired)
        .expect("a direct token request");
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error_codes"], serde_json::json!([700024]), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_stand_in_fetches_the_issuer_keys_anonymously() {
    // A cluster of its own, where issuer discovery is not yet open to anonymous clients: by
    // default only `system:serviceaccounts` may read it.
    let cluster = real::start();
    let ns = "wi-anonymous";
    let fx = AzureFixture::federated_without_anonymous_discovery(&cluster, &[(CLIENT_ID, ns, AGENT)], 3600)
        .expect("fixture");
    let err = write_and_read(&fx, "wi-closed")
        .await
        .expect_err("the keys cannot be fetched");
    assert!(err.contains("AADSTS50166"), "{err}");
    let fetches = fx.entra.key_fetches();
    let refused = fetches.first().expect("a fetch was attempted");
    assert_eq!(refused.status, Some(403), "{fetches:?}");
    // The API server saw no credential at all: it names the request's user `system:anonymous`.
    assert!(
        refused.detail.contains("system:anonymous")
            && refused.detail.contains("/.well-known/openid-configuration"),
        "{fetches:?}"
    );

    // What AKS and Gardener do: discovery readable by `system:unauthenticated`.
    pxb_tests::fixture::allow_anonymous_issuer_discovery(&cluster).expect("bind");
    write_and_read(&fx, "wi-open")
        .await
        .expect("with anonymous discovery");
    let fetches = fx.entra.key_fetches();
    assert!(
        fetches.iter().rev().take(2).all(|f| f.status == Some(200)),
        "{fetches:?}"
    );
}
