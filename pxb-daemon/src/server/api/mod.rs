//! The REST API (axum), versioned under `/v1`, plus `/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json` and the web console (`/`, `/assets/…`, `/console/…`: `console.rs`).
//!
//! Errors are JSON `{"error": {"code": …, "message": …}}` with a stable code (`errors.rs`). Every
//! list is paged (`limit` up to 1000, `after` = the `next` cursor of the previous page) and
//! filtered (`paging.rs`). Bodies are limited in size and refuse unknown fields; path segments must
//! be DNS labels (`extract.rs`). Hostile input gets a 4xx, never a 5xx.
//!
//! Every operation is declared once in `routes.rs`: the router mounts it and [`openapi`] documents
//! it. Handlers of `/v1/orgs/{org}/…` take `OrgScope` (`scope.rs`), which checks the caller's role in
//! the org before the handler reads anything of it (`updateOrg`, for provider admins only, checks
//! membership first and then the provider role, as its own rule). The role is checked before the
//! query and the body are read: a caller without the role gets `403` whatever it sent. One file per resource holds its handlers and
//! the types of its requests and responses.
//!
//! Every request is served inside a `request` span (`request_id`, `method`, `route`, `org`), its
//! response carries `x-request-id`, and it is counted and timed on `/metrics` (`trace.rs`).

mod backups;
mod clusters;
pub(crate) mod console;
mod discoveries;
mod errors;
mod extract;
mod fleet;
pub(crate) mod health;
mod limit;
mod locations;
mod me;
pub mod openapi;
mod orgs;
mod paging;
mod restores;
mod routes;
mod schedules;
mod scope;
mod trace;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub(crate) use self::errors::ApiError;
use self::errors::ErrorCode;
use crate::server::state::Server;

/// The router over `server`, with the body limit from its configuration.
pub(crate) fn router(server: Server) -> Router {
    let limit = server.config().api.max_body_bytes;
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .route("/", get(console::index))
        .route("/assets/{*path}", get(console::assets))
        .route("/console/config.json", get(console::config))
        .route(
            "/console/session",
            axum::routing::post(console::create_session).delete(console::end_session),
        )
        .route("/console/code", axum::routing::post(console::create_code));
    for op in routes::operations() {
        router = router.route(op.op.path, (op.route)());
    }
    router
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            limit::per_org_limit,
        ))
        // Outermost: the throttled and the refused requests have their span and id too.
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            trace::request_span,
        ))
        .with_state(server)
}

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight finish.
pub(crate) async fn serve(
    server: Server,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
}
