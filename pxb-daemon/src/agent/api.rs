//! The agent's small read-only HTTP API, served on the cluster-internal Service `pxb-agent`
//! (port `http`); the server reaches it through the shoot API server's service proxy, so no
//! inbound path into the tenant network is needed.
//!
//! - `GET /healthz`, `GET /readyz`: liveness and readiness (ready while the controllers run).
//! - `GET /metrics`: Prometheus metrics (OpenMetrics when the `Accept` header prefers it, else
//!   the Prometheus text format; [`pxb_telemetry::metrics::encode`]).
//! - `GET /v1/status`: version, cluster, namespace, synced locations.
//! - `GET /v1/catalog?location=NAME[&cluster=C][&namespace=N][&since=T][&until=T][&limit=N][&continue=ID]`:
//!   the backups the last sync found, oldest first, paged (`T` in Unix seconds or RFC 3339).
//! - `GET /v1/operations`: running backups and restores with their live progress.
//!
//! Anything else is 404; anything but GET is 405. Errors are JSON `{"error": "..."}`.
//!
//! Every request is served in a `request` span: `request_id`, `method` and `route` (the
//! endpoint's fixed path, or `(unmatched)`; never the raw path, and neither the query string nor
//! any header is logged). The id is the caller's [`REQUEST_ID`] header when it is a short token
//! (at most 64 letters, digits, `-`, `_` or `.`, as `pxb-server` accepts them), else a fresh
//! random one; the response echoes it in [`REQUEST_ID`]. Each request ends with a `debug` line
//! (`status`, `elapsed_ms`), a `warn` line for a `5xx`.
//!
//! The metrics are built at each scrape from the agent's state; the counters and histograms that
//! outlive a scrape are kept in [`metrics`](super::metrics), which lists its series.
//!
//! Who may read: the Service is reachable by every pod of the cluster, so the `/v1/…` endpoints
//! (backups of every namespace, running operations) answer only requests carrying the agent's
//! API token in the [`TOKEN_HEADER`] header (`401` otherwise). The token lives in the Secret
//! [`TOKEN_SECRET`] in the agent's namespace, created by the agent on start; only the cluster's
//! admins, the agent and `pxb-server` (through its admin kubeconfig) can read it. The API
//! server's proxy passes the header through (it strips only `Authorization`). Health and
//! metrics (counts, location names) stay open for probes and scrapers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pxb_core::backup::Summary;
use pxb_telemetry::prometheus_client::metrics::counter::Counter;
use pxb_telemetry::prometheus_client::metrics::family::Family;
use pxb_telemetry::prometheus_client::metrics::gauge::Gauge;
use pxb_telemetry::prometheus_client::metrics::info::Info;
use pxb_telemetry::prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::backups;
use pxb_core::clock::parse_rfc3339;

pub use pxb_core::api::agent::{TOKEN_HEADER, TOKEN_SECRET, VERSION};

/// The header carrying a request's id, read from the request and echoed in the response.
pub const REQUEST_ID: &str = pxb_telemetry::logs::REQUEST_ID_HEADER;

/// The endpoints, as `route` in the request span.
const ROUTES: [&str; 6] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/status",
    "/v1/catalog",
    "/v1/operations",
];

/// The route of `path` for the request span: one of [`ROUTES`], or `(unmatched)`.
fn route_of(path: &str) -> &'static str {
    let path = path.trim_end_matches('/');
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("(unmatched)")
}

/// The method for the request span: a standard method's name, else `(other)`.
fn method_of(method: &Method) -> &str {
    let standard = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    if standard.contains(method) {
        method.as_str()
    } else {
        "(other)"
    }
}

/// The largest catalog page.
pub(crate) const MAX_PAGE: usize = 1000;

/// Reads the API token from [`TOKEN_SECRET`] in `namespace`, creating the Secret with a fresh
/// random token when it does not exist (two agents racing both end with the stored one).
pub(crate) async fn ensure_token(client: &kube::Client, namespace: &str) -> pxb_core::Result<String> {
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), namespace);
    let read = |s: Secret| {
        s.data
            .and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()))
            .filter(|t| t.len() >= 32)
    };
    let fail = |what: &str, e: kube::Error| {
        pxb_core::Error::unavailable(format!(
            "{what} the API token Secret {namespace}/{TOKEN_SECRET}: {e}"
        ))
    };
    for _ in 0..3 {
        if let Some(s) = api.get_opt(TOKEN_SECRET).await.map_err(|e| fail("reading", e))? {
            return read(s).ok_or_else(|| {
                pxb_core::Error::invalid(format!(
                    "the Secret {namespace}/{TOKEN_SECRET} has no usable token (32 characters or more); delete it and restart the agent"
                ))
            });
        }
        let token: String = (0..2)
            .map(|_| format!("{:032x}", rand::random::<u128>()))
            .collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(TOKEN_SECRET.into()),
                namespace: Some(namespace.into()),
                labels: Some([("app.kubernetes.io/part-of".to_string(), "pxb".to_string())].into()),
                ..Default::default()
            },
            data: Some(
                [(
                    "token".to_string(),
                    k8s_openapi::ByteString(token.clone().into_bytes()),
                )]
                .into(),
            ),
            ..Default::default()
        };
        match api.create(&kube::api::PostParams::default(), &secret).await {
            Ok(_) => return Ok(token),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(fail("creating", e)),
        }
    }
    Err(pxb_core::Error::unavailable(format!(
        "the API token Secret {namespace}/{TOKEN_SECRET} keeps changing"
    )))
}

/// Compares without an early exit, so timing says nothing about the token.
fn same_token(given: &[u8], want: &[u8]) -> bool {
    given.len() == want.len() && given.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// What the API reads from.
#[derive(Debug)]
pub struct ApiState {
    /// The controllers' shared state.
    pub backups: Arc<backups::Context>,
    /// Whether the controllers are running (readiness).
    pub ready: AtomicBool,
    /// The token `/v1/…` requests must carry in [`TOKEN_HEADER`]; `None` leaves them open
    /// (for tests that call the API directly).
    pub token: Option<String>,
}

fn reply(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(code, &json!({"error": message.into()}))
}

fn text(code: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn time_param(q: &BTreeMap<String, String>, key: &str) -> Result<Option<u64>, String> {
    let Some(v) = q.get(key) else { return Ok(None) };
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(Some(secs));
    }
    parse_rfc3339(v)
        .map(|t| Some(pxb_core::clock::unix_secs(t)))
        .ok_or_else(|| format!("{key}={v:?} is neither Unix seconds nor RFC 3339"))
}

/// Answers one request; `token` is the [`TOKEN_HEADER`] it carried, `accept` its `Accept` header
/// (which chooses the metrics' format).
pub(crate) fn handle(
    state: &ApiState,
    method: &Method,
    path: &str,
    query: Option<&str>,
    token: Option<&[u8]>,
    accept: Option<&str>,
) -> Response<Full<Bytes>> {
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "this API is read-only");
    }
    if path.starts_with("/v1/")
        && let Some(want) = &state.token
        && !token.is_some_and(|t| same_token(t, want.as_bytes()))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            format!("send the agent's API token (Secret {TOKEN_SECRET}) in the {TOKEN_HEADER} header"),
        );
    }
    let q: BTreeMap<String, String> = query
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let lctx = &state.backups.locations;
    match path.trim_end_matches('/') {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready\n".into(),
            "text/plain",
        ),
        "/metrics" => {
            let e = pxb_telemetry::metrics::encode(&metrics(state), accept);
            text(StatusCode::OK, e.body, e.content_type)
        }
        "/v1/status" => reply(
            StatusCode::OK,
            &json!({"version": VERSION, "cluster": lctx.config.cluster_name, "namespace": lctx.config.namespace,
                    "ready": state.ready.load(Ordering::Relaxed), "syncedLocations": lctx.synced_locations()}),
        ),
        "/v1/operations" => reply(StatusCode::OK, &json!({"items": state.backups.operations()})),
        "/v1/catalog" => catalog(state, &q),
        _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

fn catalog(state: &ApiState, q: &BTreeMap<String, String>) -> Response<Full<Bytes>> {
    let Some(location) = q.get("location") else {
        return error(StatusCode::BAD_REQUEST, "the location parameter is required");
    };
    let (since, until) = match (time_param(q, "since"), time_param(q, "until")) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => MAX_PAGE,
        Some(Ok(l)) if (1..=MAX_PAGE).contains(&l) => l,
        Some(_) => return error(StatusCode::BAD_REQUEST, format!("limit must be 1 to {MAX_PAGE}")),
    };
    let Some(cat) = state.backups.locations.catalog(location) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("location {location} has not been synced by this agent"),
        );
    };
    let after = q.get("continue").cloned();
    let selected = cat
        .backups
        .iter()
        .filter(|(id, _)| after.as_deref().is_none_or(|a| id.as_str() > a))
        .map(|(_, s)| s)
        .filter(|s: &&Summary| {
            q.get("cluster")
                .is_none_or(|c| s.cluster.as_deref() == Some(c.as_str()))
        })
        .filter(|s| {
            q.get("namespace")
                .is_none_or(|n| s.namespaces.iter().any(|x| x == n))
        })
        .filter(|s| since.is_none_or(|t| s.created >= t) && until.is_none_or(|t| s.created < t));
    let mut items = Vec::new();
    let mut next = None;
    for s in selected {
        if items.len() == limit {
            next = items.last().map(|l: &Value| l["id"].clone());
            break;
        }
        let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
        if let Some(report) = cat.damaged.get(&s.id) {
            v["missingObjects"] = json!(report.missing);
            v["corruptObjects"] = json!(report.corrupt);
        }
        items.push(v);
    }
    let synced_at = cat
        .synced_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    reply(
        StatusCode::OK,
        &json!({"location": location, "syncedAt": synced_at, "items": items, "continue": next}),
    )
}

/// Answers `req` inside its `request` span (see the [module](self)) and echoes its id in
/// [`REQUEST_ID`].
pub(crate) fn answer<B>(state: &ApiState, req: &Request<B>) -> Response<Full<Bytes>> {
    let id = pxb_telemetry::logs::request_id(req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = method_of(req.method()),
        route = route_of(req.uri().path()),
    );
    let started = Instant::now();
    let _entered = span.enter();
    let token = req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes());
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let mut response = handle(
        state,
        req.method(),
        req.uri().path(),
        req.uri().query(),
        token,
        accept,
    );
    let status = response.status().as_u16();
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if status >= 500 {
        tracing::warn!(status, elapsed_ms, "request failed");
    } else {
        tracing::debug!(status, elapsed_ms, "request served");
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

/// The agent's metrics, built from its state at each scrape ([`pxb_telemetry::metrics`]).
fn metrics(state: &ApiState) -> Registry {
    let lctx = &state.backups.locations;
    let mut r = Registry::default();
    r.register(
        "pxb_agent",
        "The agent's version",
        Info::new(vec![("version", VERSION)]),
    );
    let ready: Gauge = Gauge::default();
    ready.set(i64::from(state.ready.load(Ordering::Relaxed)));
    r.register(
        "pxb_agent_ready",
        "Whether the agent's controllers are running",
        ready,
    );
    let validations: Counter = Counter::default();
    validations.inc_by(lctx.validations());
    r.register(
        "pxb_agent_location_validations",
        "Location validations run",
        validations,
    );
    let operations = state.backups.operations();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for op in &operations {
        *by_kind.entry(op.kind).or_default() += 1;
    }
    let running: Gauge = Gauge::default();
    running.set(i64::try_from(operations.len()).unwrap_or(i64::MAX));
    r.register(
        "pxb_agent_operations_running",
        "Backups and restores running",
        running,
    );
    let catalog = Family::<[(&'static str, String); 1], Gauge>::default();
    for name in lctx.synced_locations() {
        if let Some(c) = lctx.catalog(&name) {
            let n = i64::try_from(c.backups.len()).unwrap_or(i64::MAX);
            catalog.get_or_create(&[("location", name)]).set(n);
        }
    }
    r.register(
        "pxb_agent_catalog_backups",
        "Backups found by the last sync of a location",
        catalog,
    );
    lctx.metrics.register(&mut r, &by_kind);
    r
}

/// Serves the API on `listener` until the returned task is aborted, in the current span (each
/// request's span inside it).
pub(crate) fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>) -> tokio::task::JoinHandle<()> {
    let serving = async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(
                async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let r = answer(&state, &req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                }
                .in_current_span(),
            );
        }
    };
    tokio::spawn(serving.in_current_span())
}

/// Binds `addr` and serves the API there; returns the bound address and the task.
pub async fn bind(
    addr: SocketAddr,
    state: Arc<ApiState>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve(listener, state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request span names an endpoint by its fixed path, never by what the caller sent.
    #[test]
    fn spans_name_fixed_routes_and_standard_methods_only() {
        assert_eq!(route_of("/v1/catalog"), "/v1/catalog");
        assert_eq!(route_of("/metrics/"), "/metrics");
        for raw in ["/", "/v1/catalog/x", "/v1/orgs/acme", "/nope\nlevel=ERROR"] {
            assert_eq!(route_of(raw), "(unmatched)", "{raw:?}");
        }
        assert_eq!(method_of(&Method::DELETE), "DELETE");
        let odd = Method::from_bytes(b"BREW").expect("an extension method");
        assert_eq!(method_of(&odd), "(other)");
    }
}
