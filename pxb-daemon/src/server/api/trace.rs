//! One `request` span around every API request, the outermost middleware: `request_id`,
//! `method`, `route` (the matched route template, e.g. `/v1/orgs/{org}/backups/{id}`, never the
//! raw path, so tenant names do not multiply the values) and `org` on the routes of an org. Every
//! line logged while the request is served carries them. The id is the caller's `x-request-id`
//! when it is a short token (at most [`pxb_telemetry::logs::MAX_REQUEST_ID_LEN`] letters, digits, `-`, `_` or `.`), else a
//! fresh random one; the response echoes it in `x-request-id`, so a caller can quote it.
//!
//! Each request ends with a `debug` line (`status`, `elapsed_ms`): `PXB_LOG=info,pxb_daemon=debug`
//! is an access log. A `5xx` is a `warn` line.
//!
//! Each request is counted on `/metrics` by `method`, `route` and `code`, and its latency observed
//! by `method` and `route` ([`Metrics::api_request`]). Label values stay bounded: the method is
//! one of the standard ones or `other`, the route a template of the router or `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::server::state::{Metrics, Server, UNMATCHED_ROUTE};

/// The header carrying a request's id, read from the request and written to the response.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static(pxb_telemetry::logs::REQUEST_ID_HEADER);

/// The org of a path under `/v1/orgs/{org}`, decoded as the router's path extractor decodes it,
/// when it is a valid org name (anything else is refused by the handler and not logged).
fn org_of(path: &str) -> Option<String> {
    let raw = path.strip_prefix("/v1/orgs/")?.split('/').next()?;
    let org = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
    crate::names::is_dns_label(&org).then(|| org.into_owned())
}

/// The `method` label of a request: its method when it is a standard one, else `other` (a
/// caller cannot add label values).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Serves `req` inside its `request` span, echoes its id in `x-request-id` and counts it in
/// the server's metrics.
pub(crate) async fn request_span(State(s): State<Server>, req: Request, next: Next) -> Response {
    let id = pxb_telemetry::logs::request_id(req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        route = tracing::field::Empty,
        org = tracing::field::Empty,
    );
    if let Some(route) = &route {
        span.record("route", route.as_str());
        if route.starts_with("/v1/orgs/{org}")
            && let Some(org) = org_of(req.uri().path())
        {
            span.record("org", org.as_str());
        }
    }
    let method = method_label(req.method());
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let elapsed_ms = elapsed.as_millis() as u64;
    let metrics: &Metrics = s.metrics();
    metrics.api_request(
        method,
        route.as_deref().unwrap_or(UNMATCHED_ROUTE),
        status,
        elapsed,
    );
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(status, elapsed_ms, "request failed");
        } else {
            tracing::debug!(status, elapsed_ms, "request served");
        }
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_org_is_read_as_the_router_decodes_it_and_only_when_it_is_a_name() {
        assert_eq!(org_of("/v1/orgs/acme/backups").as_deref(), Some("acme"));
        assert_eq!(org_of("/v1/orgs/ac%6De").as_deref(), Some("acme"));
        assert_eq!(org_of("/v1/orgs/a%0Ab/backups"), None);
        assert_eq!(org_of("/v1/orgs/Not_A_Name"), None);
        assert_eq!(org_of("/v1/fleet"), None);
    }

    #[test]
    fn only_standard_methods_become_label_values() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let custom = Method::from_bytes(b"BREW").expect("a method");
        assert_eq!(method_label(&custom), "other");
        assert_eq!(method_label(&Method::CONNECT), "other");
    }
}
