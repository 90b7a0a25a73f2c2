//! `/v1/orgs/{org}/clusters`: the org's cluster inventory, and clusters imported by kubeconfig.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::ClusterRecord;

use pxb_core::api::rest::ImportCluster;

use super::errors::{ApiError, ApiResult, deleted};
use super::extract::{Body, Params};
use super::paging::{List, ListParams, page_by};
use super::scope::{Admin, OrgScope, Viewer};
use crate::server::state::Server;

/// A cluster as the API shows it (without the sealed kubeconfig of an imported one).
pub(crate) type ClusterView = ClusterRecord;

fn cluster_view(mut c: ClusterRecord) -> ClusterView {
    c.sealed_kubeconfig = None;
    c
}

pub(crate) async fn list_clusters(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<ClusterView>>> {
    let v: Vec<ClusterView> = s
        .clusters(scope.id())
        .into_iter()
        .filter(|c| p.state.as_ref().is_none_or(|st| c.status.state.as_str() == st))
        .map(cluster_view)
        .collect();
    Ok(Json(page_by(v, &p, |c| format!("{}\u{0}{}", c.name, c.id))?))
}

pub(crate) async fn get_cluster(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
) -> ApiResult<Json<ClusterView>> {
    let name = scope.item();
    s.clusters(scope.id())
        .into_iter()
        .filter(|c| c.name == name || c.id == name)
        .min_by_key(|c| c.retired_at.is_some())
        .map(|c| Json(cluster_view(c)))
        .ok_or_else(|| ApiError::not_found(format!("cluster {name}")))
}

pub(crate) async fn import_cluster(
    State(s): State<Server>,
    scope: OrgScope<Admin>,
    Body(b): Body<ImportCluster>,
) -> ApiResult<(StatusCode, Json<ClusterView>)> {
    if !crate::names::is_dns_label(&b.name) {
        return Err(ApiError::bad_request(format!(
            "cluster name {:?} must be a DNS label",
            b.name
        )));
    }
    let c = s.import_cluster(scope.id(), &b.name, &b.kubeconfig).await?;
    Ok((StatusCode::CREATED, Json(cluster_view(c))))
}

pub(crate) async fn remove_cluster(State(s): State<Server>, scope: OrgScope<Admin>) -> ApiResult<StatusCode> {
    let name = scope.item();
    deleted(s.remove_imported(scope.id(), name).await?, "cluster", name)
}
