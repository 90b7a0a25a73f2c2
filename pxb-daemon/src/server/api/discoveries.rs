//! `/v1/orgs/{org}/discoveries`: the Gardener projects an org's clusters are discovered in.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::DiscoveryConfig;
use pxb_core::clock::rfc3339;

use pxb_core::api::rest::{CreateDiscovery, DiscoveryView};

use super::errors::{ApiError, ApiResult, deleted};
use super::extract::{Body, Params};
use super::paging::{List, ListParams, page_by};
use super::scope::{Admin, OrgScope, Viewer};
use crate::server::state::Server;

fn discovery_view(s: &Server, d: DiscoveryConfig) -> DiscoveryView {
    let status = s.discovery_status(&d.org, &d.id);
    DiscoveryView { config: d, status }
}

pub(crate) async fn list_discoveries(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<DiscoveryView>>> {
    let mut v = s.discoveries(scope.id());
    v.sort_by(|a, b| a.id.cmp(&b.id));
    let v: Vec<DiscoveryView> = v.into_iter().map(|d| discovery_view(&s, d)).collect();
    Ok(Json(page_by(v, &p, |d| d.config.id.clone())?))
}

pub(crate) async fn create_discovery(
    State(s): State<Server>,
    scope: OrgScope<Admin>,
    Body(b): Body<CreateDiscovery>,
) -> ApiResult<(StatusCode, Json<DiscoveryView>)> {
    if !crate::names::is_dns_label(&b.id) || !crate::names::is_dns_label(&b.project) {
        return Err(ApiError::bad_request("id and project must be DNS labels"));
    }
    let d = s
        .add_discovery(DiscoveryConfig {
            org: scope.org.id,
            id: b.id,
            project: b.project,
            credential: b.credential,
            interval_secs: b.interval_secs.unwrap_or(60).clamp(5, 86_400),
            created_at: rfc3339(s.clock().now()),
            provider_approved: scope.caller.provider_admin,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(discovery_view(&s, d))))
}

pub(crate) async fn get_discovery(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
) -> ApiResult<Json<DiscoveryView>> {
    s.discoveries(scope.id())
        .into_iter()
        .find(|d| d.id == scope.item())
        .map(|d| Json(discovery_view(&s, d)))
        .ok_or_else(|| ApiError::not_found(format!("discovery {}", scope.item())))
}

pub(crate) async fn delete_discovery(
    State(s): State<Server>,
    scope: OrgScope<Admin>,
) -> ApiResult<StatusCode> {
    let id = scope.item();
    deleted(s.remove_discovery(scope.id(), id).await?, "discovery", id)
}
