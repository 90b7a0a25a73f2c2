//! The web console's routes, outside the versioned API: its files at `/` and `/assets/…`, its
//! sign-in settings at `/console/config.json`, `/console/session` (`POST` exchanges a one-time
//! code for a session token, `DELETE` ends the session of the bearer token) and `/console/code`
//! (`POST`: a new one-time code for a caller signed in with the development token).
//!
//! Every answer carries a strict Content-Security-Policy: scripts, styles and fonts from this
//! origin only, connections to this origin and the issuer's, no frames, no inline code. The
//! bundle's files have content hashes in their names and are cached for a year; `index.html` is
//! never cached.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::errors::{ApiError, ErrorCode};
use super::extract::Body;
use crate::server::auth::Caller;
use crate::server::console;
use crate::server::state::Server;

/// What the console asks for its sign-in (`/console/config.json`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsoleConfig {
    issuer: Option<String>,
    client_id: Option<String>,
    scopes: Vec<String>,
}

/// `POST /console/session`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Exchange {
    code: String,
}

/// `POST /console/session`'s answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Session {
    token: String,
    expires_at: String,
    subject: String,
}

/// The origin (`scheme://host[:port]`) of an absolute URL, if it has one worth naming in a CSP.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "https" | "http") {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then(|| format!("{scheme}://{host}"))
}

/// The Content-Security-Policy of every console answer.
pub(crate) fn csp(server: &Server) -> String {
    let connect = match origin(&server.config().auth.issuer) {
        Some(o) => format!("'self' {o}"),
        None => "'self'".into(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self'; connect-src {connect}; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'"
    )
}

fn secure_headers(server: &Server, headers: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(&csp(server)) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(
        axum::http::HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn accepts_gzip(req: &HeaderMap) -> bool {
    req.get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';').map(str::trim);
            parts.next() == Some("gzip") && parts.all(|p| p != "q=0" && p != "q=0.0")
        })
}

/// The console's file `path`, gzipped when the caller accepts it and the build made a `.gz`.
fn file(server: &Server, req: &HeaderMap, path: &str, cache: &'static str) -> Response {
    let Some(plain) = console::asset(path) else {
        return ApiError::new(ErrorCode::NotFound, "no such file of the console").into_response();
    };
    let gz = accepts_gzip(req)
        .then(|| console::asset(&format!("{path}.gz")))
        .flatten();
    let mut resp = gz.unwrap_or(plain).bytes.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gz.is_some() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    secure_headers(server, h);
    resp
}

/// `GET /`: the console's page.
pub(crate) async fn index(State(s): State<Server>, req: HeaderMap) -> Response {
    file(&s, &req, "index.html", "no-cache")
}

/// `GET /assets/{*path}`: the bundle's files (content-hashed names).
pub(crate) async fn assets(State(s): State<Server>, Path(path): Path<String>, req: HeaderMap) -> Response {
    if path.ends_with(".gz") || path.contains("..") {
        return ApiError::new(ErrorCode::NotFound, "no such file of the console").into_response();
    }
    file(
        &s,
        &req,
        &format!("assets/{path}"),
        "public, max-age=31536000, immutable",
    )
}

/// `GET /console/config.json`: the issuer and client the console signs in with.
pub(crate) async fn config(State(s): State<Server>) -> Response {
    let a = &s.config().auth;
    let entra = !a.issuer.is_empty() && !a.console_client_id.is_empty();
    let body = ConsoleConfig {
        issuer: entra.then(|| a.issuer.clone()),
        client_id: entra.then(|| a.console_client_id.clone()),
        scopes: if entra { a.console_scopes() } else { Vec::new() },
    };
    let mut resp = Json(body).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure_headers(&s, resp.headers_mut());
    resp
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /console/session`: a one-time code for a session token (`201`), or `401`.
pub(crate) async fn create_session(State(s): State<Server>, Body(b): Body<Exchange>) -> Response {
    let now = s.inner.clock.now();
    let Some((token, until, identity)) = s.inner.console.exchange(b.code.trim(), now) else {
        return no_store(
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the sign-in code is unknown, used or expired: ask for a new one",
            )
            .into_response(),
        );
    };
    tracing::info!(subject = %identity.subject, "console session started from a one-time code");
    let body = Session {
        token,
        expires_at: pxb_core::clock::rfc3339(until),
        subject: identity.subject,
    };
    no_store((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /console/code`'s answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Code {
    code: String,
    url_path: String,
}

/// `POST /console/code`: a one-time sign-in code for the caller, who must be signed in with the
/// development token (`403` otherwise: users of the issuer sign in at the issuer, and a code
/// must not outlive the token it came from; the development token never expires and works on
/// loopback only). How a test or a script opens the console again after signing out.
pub(crate) async fn create_code(State(s): State<Server>, caller: Caller) -> Response {
    if !caller.identity.dev {
        return ApiError::forbidden(
            "only the development token gets sign-in codes; sign in to the console with Entra ID",
        )
        .into_response();
    }
    if caller.identity.session.starts_with(console::SESSION_PREFIX) {
        // Else a session could chain codes into sessions that outlive it.
        return ApiError::forbidden("a console session gets no sign-in codes; use the development token")
            .into_response();
    }
    let code = s.console_sign_in_code(caller.identity);
    let body = Code {
        url_path: format!("/#/signin?code={code}"),
        code,
    };
    no_store((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /console/session`: ends the bearer token's console session (`204` either way: a
/// token of the issuer ends at the issuer).
pub(crate) async fn end_session(State(s): State<Server>, req: HeaderMap) -> StatusCode {
    let token = req
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("Bearer ").or_else(|| t.strip_prefix("bearer ")))
        .map(str::trim);
    if let Some(t) = token
        && s.inner.console.end(t)
    {
        tracing::info!("console session ended");
    }
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issuer_origin_goes_into_the_policy_and_nothing_else() {
        assert_eq!(
            origin("https://login.microsoftonline.com/tid/v2.0").as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            origin("https://127.0.0.1:8443/t/v2.0").as_deref(),
            Some("https://127.0.0.1:8443")
        );
        assert_eq!(origin("https://evil.example; script-src *"), None);
        assert_eq!(origin("javascript:alert(1)"), None);
        assert_eq!(origin(""), None);
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        let mut h = HeaderMap::new();
        assert!(!accepts_gzip(&h));
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("br, gzip;q=0.8"),
        );
        assert!(accepts_gzip(&h));
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip;q=0, br"));
        assert!(!accepts_gzip(&h));
    }
}
