//! A fake Entra ID token endpoint for the Workload Identity exchange, over HTTPS.
//!
//! `POST /{tenant}/oauth2/v2.0/token` with the client-assertion form that `azure_identity` sends.
//! It answers like Entra ID, including its error shape (`error`, `error_description`,
//! `error_codes`), and checks what Entra would: the tenant, a known client id, the grant and
//! assertion types, the scope, then the assertion, in one of two modes:
//!
//! - **Token-file mode** (`EntraConfig::federation` is `None`): the assertion has not expired and
//!   equals the projected token file as it is on disk at that moment (so a stale assertion after
//!   rotation is refused). Nothing is signed; nothing is verified.
//! - **Federated mode** ([`Federation`]): what Entra ID does with a federated identity credential.
//!   The assertion's `iss`, `sub` and one of its `aud` must equal a credential of the client id
//!   (`AADSTS70021` otherwise, naming the three); it must be within its time range (`nbf`..`exp`,
//!   `AADSTS700024`); its signature must verify (ES256 or RS256) with a key the issuer publishes:
//!   the stand-in fetches `<issuer>/.well-known/openid-configuration` and its `jwks_uri`
//!   anonymously over HTTPS, trusting only [`Federation::ca_pem`], caches the keys and fetches
//!   again when an assertion names an unknown `kid` (`AADSTS7000272` when it stays unknown,
//!   `AADSTS50166` when the issuer cannot be read, `AADSTS50013` when the signature does not
//!   match). [`FakeEntra::key_fetches`] lists every fetch with its answer.
//!
//! Access tokens it issues are JWTs Azurite accepts with `--oauth basic`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use crate::jwks::{IssuerKeys, KeyFetch, SignatureError};
use crate::jwt;
use crate::server::BackgroundServer;
use crate::tls::TestCa;

/// Settings of the fake endpoint.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// The tenant it serves.
    pub tenant_id: String,
    /// Client ids it knows.
    pub client_ids: Vec<String>,
    /// The projected token file whose current content is the only accepted assertion.
    pub token_file: PathBuf,
    /// Lifetime of issued access tokens, in seconds.
    pub token_lifetime_secs: u64,
    /// Federated mode when set: assertions are checked against these federated identity
    /// credentials and verified with the issuers' published keys, as Entra ID does, and
    /// `token_file` is not consulted. `None` keeps the token-file mode.
    pub federation: Option<Federation>,
}

/// The federated identity credentials of the directory and how to reach their issuers.
#[derive(Debug, Clone)]
pub struct Federation {
    /// The credentials, for any of `client_ids`.
    pub credentials: Vec<FederatedCredential>,
    /// The CA certificates (PEM, one or more) trusted when fetching issuers' discovery documents
    /// and keys over HTTPS. Nothing else is trusted.
    pub ca_pem: String,
}

/// A federated identity credential of one application (client id): Entra ID exchanges an
/// assertion whose `iss`, `sub` and one `aud` equal these (case-sensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    /// The application (client id) it belongs to.
    pub client_id: String,
    /// The issuer, e.g. the cluster's service-account issuer URL.
    pub issuer: String,
    /// The subject, `system:serviceaccount:<namespace>:<name>` for a Kubernetes ServiceAccount.
    pub subject: String,
    /// The audiences, usually `["api://AzureADTokenExchange"]`.
    pub audiences: Vec<String>,
}

impl FederatedCredential {
    /// The credential of a Kubernetes ServiceAccount `namespace/name` of `issuer`, for audience
    /// `api://AzureADTokenExchange`.
    pub fn service_account(client_id: &str, issuer: &str, namespace: &str, name: &str) -> Self {
        Self {
            client_id: client_id.into(),
            issuer: issuer.into(),
            subject: format!("system:serviceaccount:{namespace}:{name}"),
            audiences: vec![AZURE_AD_TOKEN_EXCHANGE.into()],
        }
    }
}

/// The audience Entra ID expects on federated assertions by default.
pub const AZURE_AD_TOKEN_EXCHANGE: &str = "api://AzureADTokenExchange";

/// What the endpoint saw: one entry per token request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The client id presented.
    pub client_id: String,
    /// The assertion presented.
    pub assertion: String,
    /// Whether a token was issued.
    pub granted: bool,
}

/// A running fake Entra ID endpoint; stopped when dropped.
#[derive(Debug)]
pub struct FakeEntra {
    server: BackgroundServer,
    seen: Arc<Mutex<Vec<Exchange>>>,
    keys: Option<Arc<IssuerKeys>>,
    ca_pem: String,
    tenant_id: String,
    outage: Arc<std::sync::atomic::AtomicU16>,
}

impl FakeEntra {
    /// Starts the endpoint on a loopback port, on its own thread and runtime.
    pub fn start(ca: &TestCa, config: EntraConfig) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keys = match &config.federation {
            Some(f) => Some(Arc::new(IssuerKeys::new(&f.ca_pem)?)),
            None => None,
        };
        let tenant_id = config.tenant_id.clone();
        let outage = Arc::new(std::sync::atomic::AtomicU16::new(0));
        let state = Arc::new(State {
            config,
            seen: seen.clone(),
            keys: keys.clone(),
            outage: outage.clone(),
        });
        let server = BackgroundServer::start(Some(ca.rustls_server_config()?), move |req| {
            let state = state.clone();
            async move { state.handle(req).await }
        })?;
        Ok(Self {
            server,
            seen,
            keys,
            ca_pem: ca.ca_pem.clone(),
            tenant_id,
            outage,
        })
    }

    /// While `Some(status)`, every token request is answered with that HTTP status and Entra's
    /// transient error (`AADSTS90033`), as during an Entra ID outage; `None` ends it.
    pub fn set_outage(&self, status: Option<u16>) {
        self.outage
            .store(status.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// Every fetch of an issuer's discovery document or keys so far, in order (federated mode;
    /// empty in token-file mode). The stand-in fetches without any credential.
    pub fn key_fetches(&self) -> Vec<KeyFetch> {
        self.keys.as_ref().map(|k| k.fetches()).unwrap_or_default()
    }

    /// Sends one token request for `client_id` with `assertion` straight to the endpoint, as
    /// `azure_identity` would (for assertions a client would not send, e.g. expired ones); the
    /// status and the JSON answer. Blocking.
    pub fn exchange_directly(
        &self,
        client_id: &str,
        assertion: &str,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let url = format!("{}/{}/oauth2/v2.0/token", self.authority_host(), self.tenant_id);
        let tls = Arc::new(crate::jwks::anonymous_client_config(&self.ca_pem)?);
        let (client_id, assertion) = (client_id.to_owned(), assertion.to_owned());
        let (status, body) = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(crate::jwks::post_form(
                    &url,
                    tls,
                    &[
                        ("grant_type", "client_credentials"),
                        ("client_id", &client_id),
                        ("scope", "https://storage.azure.com/.default"),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", &assertion),
                    ],
                ))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the request thread panicked"))??;
        Ok((status, serde_json::from_str(&body)?))
    }

    /// The authority host to configure clients with: `https://127.0.0.1:<port>`.
    pub fn authority_host(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.port())
    }

    /// Every token request so far, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct State {
    config: EntraConfig,
    seen: Arc<Mutex<Vec<Exchange>>>,
    keys: Option<Arc<IssuerKeys>>,
    outage: Arc<std::sync::atomic::AtomicU16>,
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn entra_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({
            "error": error,
            // Entra ID ends its descriptions with the trace, correlation and time, each after
            // `\r\n` (JSON escapes a client must decode).
            "error_description": format!(
                "AADSTS{code}: {}\r\nTrace ID: 00000000-0000-0000-0000-000000000000\r\nCorrelation ID: 00000000-0000-0000-0000-000000000000\r\nTimestamp: 2026-01-01 00:00:00Z",
                plain(description)
            ),
            "error_codes": [code],
            "timestamp": "2026-01-01 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        }),
    )
}

impl State {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return entra_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900144,
                    "Unreadable body.",
                );
            }
        };
        let outage = self.outage.load(std::sync::atomic::Ordering::Relaxed);
        if outage != 0 {
            return entra_error(
                StatusCode::from_u16(outage).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
            );
        }
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let get = |k: &str| form.get(k).cloned().unwrap_or_default();
        let tenant = &self.config.tenant_id;
        if path != format!("/{tenant}/oauth2/v2.0/token") {
            return entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                90002,
                &format!(
                    "Tenant '{}' not found.",
                    path.split('/').nth(1).unwrap_or_default()
                ),
            );
        }
        let client_id = get("client_id");
        let assertion = get("client_assertion");
        let mut exchange = Exchange {
            client_id: client_id.clone(),
            assertion: assertion.clone(),
            granted: false,
        };
        let mut verdict = self.verdict(&form, &client_id);
        if verdict.is_none() {
            verdict = match (&self.config.federation, &self.keys) {
                (Some(federation), Some(keys)) => {
                    federated_verdict(federation, keys, &client_id, &assertion).await
                }
                _ => self.token_file_verdict(&assertion),
            };
        }
        exchange.granted = verdict.is_none();
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).push(exchange);
        if let Some(err) = verdict {
            return err;
        }
        let now = jwt::unix_now();
        let lifetime = self.config.token_lifetime_secs;
        let access_token = jwt::encode(&serde_json::json!({
            "aud": "https://storage.azure.com",
            "iss": format!("https://sts.windows.net/{tenant}/"),
            "iat": now - 5, "nbf": now - 5, "exp": now + lifetime,
            "appid": client_id, "oid": format!("oid-{client_id}"), "tid": tenant, "sub": format!("oid-{client_id}"),
        }));
        json(
            StatusCode::OK,
            serde_json::json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token}),
        )
    }

    /// The checks of both modes before the assertion's: `None` to go on; otherwise Entra's answer.
    fn verdict(
        &self,
        form: &std::collections::HashMap<String, String>,
        client_id: &str,
    ) -> Option<Response<Full<Bytes>>> {
        let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        if get("grant_type") != "client_credentials" {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            ));
        }
        if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "Invalid client assertion type.",
            ));
        }
        if !self.config.client_ids.iter().any(|c| c == client_id) {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!(
                    "Application with identifier '{client_id}' was not found in the directory '{}'.",
                    self.config.tenant_id
                ),
            ));
        }
        if get("scope") != "https://storage.azure.com/.default" {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                70011,
                "The provided scope is not valid.",
            ));
        }
        None
    }

    /// Token-file mode: `None` to grant; otherwise Entra's answer.
    fn token_file_verdict(&self, assertion: &str) -> Option<Response<Full<Bytes>>> {
        let exp = jwt::claims(assertion).and_then(|c| c.get("exp")?.as_u64());
        if exp.is_none_or(|exp| exp <= jwt::unix_now()) {
            return Some(entra_error(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            ));
        }
        let on_disk = std::fs::read_to_string(&self.config.token_file).unwrap_or_default();
        if assertion != on_disk {
            return Some(entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700213,
                "No matching federated identity record found for presented assertion.",
            ));
        }
        None
    }
}

/// The link Entra ID appends to federated-credential errors.
const WIF_DOC: &str =
    "https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation";

/// `text` as Entra ID words its descriptions: names in single quotes, one line.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            '\r' | '\n' => ' ',
            c => c,
        })
        .collect()
}

/// A claim as Entra ID prints it: a string, or the strings of an array joined by `, `.
fn claim_text(claims: &serde_json::Value, name: &str) -> String {
    match &claims[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    }
}

/// `2024-06-04T11:40:28.0000000Z`, as Entra ID prints times.
fn entra_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.0000000Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|_| unix.to_string())
}

/// Federated mode: `None` to grant; otherwise Entra's answer. The order is Entra's: the
/// credential is found by the (unverified) claims, so no key of an issuer nobody trusts is ever
/// fetched; then time; then the signature with the trusted issuer's published keys.
async fn federated_verdict(
    federation: &Federation,
    keys: &IssuerKeys,
    client_id: &str,
    assertion: &str,
) -> Option<Response<Full<Bytes>>> {
    let assertion = assertion.trim();
    let Some(claims) = jwt::claims(assertion).filter(|c| c.is_object()) else {
        return Some(entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            50027,
            "JWT token is invalid or malformed.",
        ));
    };
    let (iss, sub) = (claim_text(&claims, "iss"), claim_text(&claims, "sub"));
    let audiences: Vec<String> = match &claims["aud"] {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let matching = federation.credentials.iter().find(|c| {
        c.client_id == client_id
            && c.issuer == iss
            && c.subject == sub
            && c.audiences.iter().any(|a| audiences.contains(a))
    });
    let Some(credential) = matching else {
        return Some(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            70021,
            &format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: \
                 '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. {WIF_DOC}",
                audiences.join(", ")
            ),
        ));
    };
    let now = jwt::unix_now() as i64;
    let exp = claims["exp"].as_i64();
    let nbf = claims["nbf"].as_i64().or_else(|| claims["iat"].as_i64());
    let in_range = exp.is_some_and(|exp| now < exp) && nbf.is_none_or(|nbf| nbf <= now);
    if !in_range {
        return Some(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion \
                 valid from {}, expiry time of assertion {}. Review the documentation at \
                 https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .",
                entra_time(now),
                nbf.map(entra_time).unwrap_or_else(|| "(none)".into()),
                exp.map(entra_time).unwrap_or_else(|| "(none)".into()),
            ),
        ));
    }
    let kid = crate::jwks::kid(assertion);
    let published = match keys.keys_for(&credential.issuer, kid.as_deref()).await {
        Ok(set) => set,
        Err(e) => {
            return Some(entra_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                50166,
                &format!(
                    "Request to External OIDC endpoint failed. [Issuer: '{}'. Reason: {}]",
                    credential.issuer, e
                ),
            ));
        }
    };
    match crate::jwks::verify_signature(assertion, &published) {
        Ok(()) => None,
        Err(SignatureError::UnknownKey) => Some(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000272,
            &format!(
                "The certificate with identifier {} used to sign the federated credential could not be \
                 found in the metadata of identity provider {}. Please validate that your Identity \
                 Provider's metadata exposes the key used to sign the incoming token.",
                kid.as_deref().unwrap_or("(none)"),
                credential.issuer
            ),
        )),
        Err(SignatureError::Algorithm(why) | SignatureError::Mismatch(why)) => Some(entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            50013,
            &format!(
                "Assertion failed signature validation. [Reason - The provided signature value did not \
                 match the expected signature value., Thumbprint of key used by client: '{}', Detail: {}]",
                kid.as_deref().unwrap_or("(none)"),
                why
            ),
        )),
    }
}
