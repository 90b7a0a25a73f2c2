//! A fake Entra ID token endpoint for the Workload Identity exchange, over HTTPS.
//!
//! `POST /{tenant}/oauth2/v2.0/token` with the client-assertion form that `azure_identity` sends.
//! It answers like Entra ID, including its error shape (`error`, `error_description`,
//! `error_codes`), and checks what Entra would: the tenant, a known client id, the grant and
//! assertion types, the scope, that the assertion has not expired, and that the assertion equals
//! the projected token file as it is on disk at that moment (so a stale assertion after rotation is
//! refused). Access tokens it issues are JWTs Azurite accepts with `--oauth basic`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

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
}

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
}

impl FakeEntra {
    /// Starts the endpoint on a loopback port, on its own thread and runtime.
    pub fn start(ca: &TestCa, config: EntraConfig) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            config,
            seen: seen.clone(),
        });
        let server = BackgroundServer::start(Some(ca.rustls_server_config()?), move |req| {
            let state = state.clone();
            async move { state.handle(req).await }
        })?;
        Ok(Self { server, seen })
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
            "error_description": format!("AADSTS{code}: {description} Trace ID: 00000000-0000-0000-0000-000000000000"),
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
        let verdict = self.verdict(&form, &client_id, &assertion);
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

    /// `None` to grant; otherwise Entra's answer.
    fn verdict(
        &self,
        form: &std::collections::HashMap<String, String>,
        client_id: &str,
        assertion: &str,
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
