//! How [`AzureBlobStore`] uses its [`TokenSource`]: how many times it asks, in which order, and
//! what the N-th failure does. The store's scenarios on Azurite answer "does a store with a good
//! identity work?"; these answer "how often is the identity provider asked?", which only a mock
//! that counts and orders the calls can: once per token (not per request or per retry), again
//! after a failure or a 401, and a failed renewal that leaves the still-valid token in use.
//!
//! The blob service is a stand-in on a loopback port over HTTPS that records each request's
//! `Authorization` header and answers from a script (404 `BlobNotFound` once the script is done).
//! Each mock checks its expected call counts when the store drops it at the end of a test.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use mockall::{Sequence, automock};
use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig, HttpSettings, STORAGE_SCOPE};
use pxb_core::{AccessToken, Error, ObjectPath, ObjectStore, Result, TokenSource};
use pxb_harness::server::BackgroundServer;
use pxb_harness::tls::TestCa;

/// The token source's calls, with owned arguments. `TokenSource` itself is not mocked directly:
/// mockall cannot mock a method taking `&[&str]` (a reference inside a reference), so
/// [`Scripted`] forwards each call to this mock.
#[automock]
trait Calls: Send + Sync {
    fn token(&self, scopes: Vec<String>) -> Result<AccessToken>;
}

/// A [`TokenSource`] whose every `token` call is an expectation of [`MockCalls`].
struct Scripted(MockCalls);

impl std::fmt::Debug for Scripted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scripted")
    }
}

#[async_trait]
impl TokenSource for Scripted {
    async fn token(&self, scopes: &[&str]) -> Result<AccessToken> {
        self.0.token(scopes.iter().map(|s| (*s).to_owned()).collect())
    }

    fn describe(&self) -> String {
        "the scripted identity".into()
    }
}

/// The blob service stand-in: what it was sent, and what it answers next.
struct Blobs {
    _server: BackgroundServer,
    _ca: TestCa,
    /// The `Authorization` header of each request, in order.
    seen: Arc<Mutex<Vec<String>>>,
    /// Statuses to answer, in order; then 404.
    script: Arc<Mutex<VecDeque<u16>>>,
    store: AzureBlobStore,
}

impl Blobs {
    /// A store on the stand-in whose token source is `calls`.
    fn start(calls: MockCalls) -> Blobs {
        let ca = TestCa::generate().expect("test CA");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (record, answers) = (seen.clone(), script.clone());
        let server = BackgroundServer::start(
            Some(ca.rustls_server_config().expect("TLS settings")),
            move |req: Request<hyper::body::Incoming>| {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("<none>")
                    .to_owned();
                record.lock().expect("lock").push(auth);
                let status = answers.lock().expect("lock").pop_front().unwrap_or(404);
                let code = match status {
                    404 => "BlobNotFound",
                    401 => "InvalidAuthenticationInfo",
                    _ => "ServerBusy",
                };
                async move {
                    Response::builder()
                        .status(status)
                        .header("x-ms-error-code", code)
                        .body(Full::new(Bytes::new()))
                        .expect("response")
                }
            },
        )
        .expect("blob service stand-in");
        // Retries as in production, only faster.
        let http = HttpSettings {
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            ..HttpSettings::default()
        };
        let config = AzureConfig::new(
            "devstoreaccount1",
            "backups",
            AzureAuth::Token(Arc::new(Scripted(calls))),
        )
        .with_endpoint(format!("https://127.0.0.1:{}/devstoreaccount1", server.port()))
        .with_ca_file(ca.ca_file())
        .with_http(http);
        let store = AzureBlobStore::new(config).expect("store");
        Blobs {
            _server: server,
            _ca: ca,
            seen,
            script,
            store,
        }
    }

    fn answer(&self, statuses: &[u16]) {
        self.script.lock().expect("lock").extend(statuses);
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }

    /// Reads the properties of `name` (absent: every call ends in 404 or in an error before it).
    async fn head(&self, name: &str) -> Result<()> {
        let path = ObjectPath::parse(name).expect("path");
        self.store.head(&path).await.map(|_| ())
    }
}

fn token(secret: &str, valid_for: Duration) -> AccessToken {
    AccessToken::new(secret, SystemTime::now() + valid_for)
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

const HOUR: Duration = Duration::from_secs(3600);

fn is_not_found(r: &Result<()>) -> bool {
    matches!(r, Err(Error::NotFound { .. }))
}

#[tokio::test]
async fn one_token_serves_every_request_and_every_retry() {
    let mut s = MockCalls::new();
    s.expect_token()
        .withf(|scopes| scopes == &[STORAGE_SCOPE])
        .times(1)
        .returning(|_| Ok(token("t1", HOUR)));
    let blobs = Blobs::start(s);
    // The first read is retried twice (503), the store's own retries; then three more reads.
    blobs.answer(&[503, 503]);
    for name in ["a", "b", "c", "d"] {
        let r = blobs.head(name).await;
        assert!(is_not_found(&r), "{name}: {r:?}");
    }
    assert_eq!(blobs.seen(), vec![bearer("t1"); 6], "3 tries of a, then b, c, d");
}

#[tokio::test]
async fn a_failed_fetch_fails_only_its_call_sends_nothing_and_the_next_call_asks_again() {
    let mut s = MockCalls::new();
    let mut order = Sequence::new();
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Err(Error::unavailable("Entra ID answered 503")));
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Ok(token("t2", HOUR)));
    let blobs = Blobs::start(s);
    let first = blobs.head("a").await;
    // The source's own error, kind and message, not a generic SDK one; and not retried (the
    // source decides about its retries), so it was asked once and nothing was sent.
    match &first {
        Err(e @ Error::Unavailable { .. }) => assert!(e.message().contains("Entra ID answered 503"), "{e}"),
        other => panic!("the token source's error, got {other:?}"),
    }
    assert!(
        blobs.seen().is_empty(),
        "sent without a token: {:?}",
        blobs.seen()
    );
    // The failure is not cached: the next call asks again and goes out with the new token.
    let second = blobs.head("a").await;
    assert!(is_not_found(&second), "{second:?}");
    let third = blobs.head("b").await;
    assert!(is_not_found(&third), "{third:?}");
    assert_eq!(blobs.seen(), [bearer("t2"), bearer("t2")]);
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_valid_token_in_use_and_the_next_call_renews() {
    let mut s = MockCalls::new();
    let mut order = Sequence::new();
    // Valid for 2 more minutes: inside the 5-minute window in which every call renews.
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Ok(token("t1", Duration::from_secs(120))));
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Err(Error::unavailable("Entra ID answered 503")));
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Ok(token("t3", HOUR)));
    let blobs = Blobs::start(s);
    for name in ["a", "b", "c", "d"] {
        let r = blobs.head(name).await;
        assert!(
            is_not_found(&r),
            "{name}: the failed renewal must not fail a call: {r:?}"
        );
    }
    assert_eq!(
        blobs.seen(),
        [bearer("t1"), bearer("t1"), bearer("t3"), bearer("t3")],
        "a: first token; b: renewal failed, t1 still valid; c: renewed; d: cached"
    );
}

#[tokio::test]
async fn a_401_drops_the_token_and_only_the_next_call_asks_for_a_new_one() {
    let mut s = MockCalls::new();
    let mut order = Sequence::new();
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Ok(token("revoked", HOUR)));
    s.expect_token()
        .times(1)
        .in_sequence(&mut order)
        .returning(|_| Ok(token("t2", HOUR)));
    let blobs = Blobs::start(s);
    blobs.answer(&[401]);
    let refused = blobs.head("a").await;
    assert!(
        matches!(refused, Err(Error::Unauthenticated { .. })),
        "a 401 is the credential's fault, not retried: {refused:?}"
    );
    for name in ["a", "b"] {
        let r = blobs.head(name).await;
        assert!(is_not_found(&r), "{name}: {r:?}");
    }
    assert_eq!(blobs.seen(), [bearer("revoked"), bearer("t2"), bearer("t2")]);
}
