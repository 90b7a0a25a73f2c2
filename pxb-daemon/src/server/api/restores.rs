//! `/v1/orgs/{org}/restores`: restores of a backup into its cluster or another one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::{RestoreRecord, Role};

use super::errors::{ApiError, ApiResult};
use super::extract::{Body, Params};
use super::paging::{List, ListParams, list_records};
use super::scope::{OrgScope, Viewer};
use crate::server::backups::RestoreRequest;
use crate::server::state::Server;

pub(crate) async fn list_restores(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<RestoreRecord>>> {
    Ok(Json(list_records(&s, scope.id(), &p).await?))
}

/// Any member gets past the extractor: the role a restore needs depends on its body, an operator
/// for a restore of namespaces, an admin to allow cluster-scoped kinds.
pub(crate) async fn create_restore(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Body(b): Body<RestoreRequest>,
) -> ApiResult<(StatusCode, Json<RestoreRecord>)> {
    // Creating cluster-scoped objects from a backup is a privilege of the org's admins.
    scope.require(if b.allow_cluster_kinds.is_empty() {
        Role::Operator
    } else {
        Role::Admin
    })?;
    let admin = scope.has(Role::Admin);
    if let Some(bad) = b.allow_cluster_kinds.iter().find(|k| {
        k.is_empty()
            || k.len() > 253
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    }) {
        return Err(ApiError::bad_request(format!(
            "allowClusterKinds: {bad:?} is not a kind (e.g. ClusterRoleBinding) or resource.group"
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(s.create_restore(scope.id(), &b, admin).await?),
    ))
}

pub(crate) async fn get_restore(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
) -> ApiResult<Json<RestoreRecord>> {
    Ok(Json(s.restore(scope.id(), scope.item()).await?))
}
