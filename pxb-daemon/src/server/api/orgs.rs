//! `/v1/orgs`: orgs as the caller may see them; created and changed by provider admins.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::{Mode, Org, Role};
use pxb_core::clock::rfc3339;

use pxb_core::api::rest::{CreateOrg, OrgHealth, OrgView, UpdateOrg};

use super::errors::{ApiError, ApiResult};
use super::extract::{Body, Params, Segments};
use super::paging::{List, ListParams, page_by};
use super::scope::{OrgScope, Viewer, authorize};
use crate::server::auth::Caller;
use crate::server::state::{OrgState, Server};

fn org_view(id: String, st: OrgState, admin: bool) -> OrgView {
    match st {
        OrgState::Ready(o) => OrgView {
            id: o.id,
            display_name: o.display_name,
            mode: o.mode,
            state: OrgHealth::Ready,
            reason: None,
            access: if admin { o.access } else { Vec::new() },
        },
        OrgState::Degraded { reason } => OrgView {
            id,
            display_name: String::new(),
            mode: Mode::Federated,
            state: OrgHealth::Degraded,
            reason: Some(reason),
            access: Vec::new(),
        },
    }
}

pub(crate) async fn list_orgs(
    State(s): State<Server>,
    caller: Caller,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<OrgView>>> {
    let visible: Vec<OrgView> = s
        .orgs()
        .into_iter()
        .filter_map(|(id, st)| {
            let role = match &st {
                OrgState::Ready(o) => caller.role_in(o),
                OrgState::Degraded { .. } => caller.provider_admin.then_some(Role::Admin),
            }?;
            Some(org_view(id, st, role == Role::Admin))
        })
        .collect();
    Ok(Json(page_by(visible, &p, |o| o.id.clone())?))
}

pub(crate) async fn create_org(
    State(s): State<Server>,
    caller: Caller,
    Body(b): Body<CreateOrg>,
) -> ApiResult<(StatusCode, Json<OrgView>)> {
    if !caller.provider_admin {
        return Err(ApiError::forbidden("only provider admins create orgs"));
    }
    if !crate::names::is_dns_label(&b.id) {
        return Err(ApiError::bad_request(format!(
            "org id {:?} must be a DNS label",
            b.id
        )));
    }
    let org = s
        .create_org(Org {
            id: b.id,
            display_name: b.display_name,
            mode: b.mode,
            access: b.access,
            created_at: rfc3339(s.clock().now()),
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(org_view(org.id.clone(), OrgState::Ready(org), true)),
    ))
}

pub(crate) async fn get_org(State(_): State<Server>, scope: OrgScope<Viewer>) -> ApiResult<Json<OrgView>> {
    let admin = scope.has(Role::Admin);
    let o = scope.org;
    Ok(Json(org_view(o.id.clone(), OrgState::Ready(o), admin)))
}

pub(crate) async fn update_org(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<UpdateOrg>,
) -> ApiResult<Json<OrgView>> {
    if !caller.provider_admin {
        // Org admins may not grant themselves more; only provider admins change orgs. Members
        // learn that; anyone else learns nothing of the org.
        authorize(&s, &caller, &seg[0], Role::Viewer)?;
        return Err(ApiError::forbidden("only provider admins change orgs"));
    }
    let org = s
        .update_org(&seg[0], |o| {
            if let Some(n) = b.display_name {
                o.display_name = n;
            }
            if let Some(m) = b.mode {
                o.mode = m;
            }
            if let Some(a) = b.access {
                o.access = a;
            }
        })
        .await?;
    Ok(Json(org_view(org.id.clone(), OrgState::Ready(org), true)))
}
