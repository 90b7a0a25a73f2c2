//! One `request` span around every API request, the outermost middleware: `request_id`,
//! `method`, `route` (the matched route template, e.g. `/v1/orgs/{org}/backups/{id}`, never the
//! raw path, so tenant names do not multiply the values) and `org` on the routes of an org. Every
//! line logged while the request is served carries them. The id is the caller's `x-request-id`
//! when it is a short token (at most [`MAX_ID_LEN`] letters, digits, `-`, `_` or `.`), else a
//! fresh random one; the response echoes it in `x-request-id`, so a caller can quote it.
//!
//! Each request ends with a `debug` line (`status`, `elapsed_ms`): `PXB_LOG=info,pxb_daemon=debug`
//! is an access log. A `5xx` is a `warn` line.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// The header carrying a request's id, read from the request and written to the response.
pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a caller.
pub(crate) const MAX_ID_LEN: usize = 64;

/// Whether `id` (from a caller's header) is taken as the request id: a short token that cannot
/// break a log line or stand for anything but an id.
fn acceptable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A fresh request id: 16 random hex digits.
fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The org of a path under `/v1/orgs/{org}`, decoded as the router's path extractor decodes it,
/// when it is a valid org name (anything else is refused by the handler and not logged).
fn org_of(path: &str) -> Option<String> {
    let raw = path.strip_prefix("/v1/orgs/")?.split('/').next()?;
    let org = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
    crate::names::is_dns_label(&org).then(|| org.into_owned())
}

/// Serves `req` inside its `request` span and echoes its id in `x-request-id`.
pub(crate) async fn request_span(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map_or_else(new_id, str::to_owned);
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
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed_ms = started.elapsed().as_millis() as u64;
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
    fn only_short_plain_tokens_are_taken_as_request_ids() {
        for ok in ["a", "7f3c-41aa_b.2", &"x".repeat(MAX_ID_LEN)] {
            assert!(acceptable(ok), "{ok:?}");
        }
        for bad in [
            "",
            &"x".repeat(MAX_ID_LEN + 1),
            "a b",
            "a\nlevel=ERROR",
            "Bearer abc",
            "id\"}",
            "ünï",
        ] {
            assert!(!acceptable(bad), "{bad:?}");
        }
        let id = new_id();
        assert!(acceptable(&id) && id.len() == 16, "{id}");
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn the_org_is_read_as_the_router_decodes_it_and_only_when_it_is_a_name() {
        assert_eq!(org_of("/v1/orgs/acme/backups").as_deref(), Some("acme"));
        assert_eq!(org_of("/v1/orgs/ac%6De").as_deref(), Some("acme"));
        assert_eq!(org_of("/v1/orgs/a%0Ab/backups"), None);
        assert_eq!(org_of("/v1/orgs/Not_A_Name"), None);
        assert_eq!(org_of("/v1/fleet"), None);
    }
}
