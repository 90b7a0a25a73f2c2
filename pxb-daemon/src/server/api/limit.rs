//! The per-org share of the API (`api.maxRequestsPerOrg`), a middleware in front of every route.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::errors::ErrorCode;
use crate::server::auth::Caller;
use crate::server::state::Server;

/// At most `api.maxRequestsPerOrg` requests of one org in flight; more get `429` at once. Only
/// requests whose caller has a role in the org count (and are refused): anyone else's request is
/// passed on to be refused with `403`, so another tenant cannot use up an org's share. The caller
/// found here is handed on in the request's extensions and not authenticated twice.
pub(crate) async fn per_org_limit(
    State(s): State<Server>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    // Decoded as the router's path extractor decodes it: `ac%6De` is org `acme` to the handler,
    // so it is to the limit too.
    let org = req
        .uri()
        .path()
        .strip_prefix("/v1/orgs/")
        .and_then(|r| r.split('/').next())
        .and_then(|o| percent_encoding::percent_decode_str(o).decode_utf8().ok())
        .filter(|o| !o.is_empty())
        .map(|o| o.into_owned());
    let Some(org) = org else {
        return next.run(req).await;
    };
    let Ok(o) = s.org(&org) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &s).await {
        Ok(c) if c.role_in(&o).is_some() => c,
        // Not authenticated or not of this org: the handler refuses it.
        _ => return next.run(Request::from_parts(parts, body)).await,
    };
    let max = s.config().api.max_requests_per_org;
    let Ok(_permit) = s.org_limits().semaphore(&org, max).try_acquire_owned() else {
        let mut r = ApiError::new(
            ErrorCode::Throttled,
            format!("org {org} has {max} requests in flight (api.maxRequestsPerOrg); retry shortly"),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}
