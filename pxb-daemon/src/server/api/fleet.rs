//! `/v1/fleet/status`: the fleet-wide status, read from the snapshot, of the orgs the caller sees.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;
use pxb_core::catalog::records::Role;
use pxb_core::clock::rfc3339;

use pxb_core::api::rest::FleetStatusView;

use super::errors::ApiResult;
use super::extract::Params;
use super::paging::{ListParams, cursor, cursor_of};
use super::scope::authorize;
use crate::server::auth::Caller;
use crate::server::state::{OrgState, Server};

pub(crate) async fn fleet_status(
    State(s): State<Server>,
    caller: Caller,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<FleetStatusView>> {
    let orgs = s.orgs();
    if let Some(org) = &p.org {
        authorize(&s, &caller, org, Role::Viewer)?;
    }
    let visible: BTreeSet<String> = orgs
        .into_iter()
        .filter_map(|(id, st)| match st {
            OrgState::Ready(o) if caller.role_in(&o).is_some() => Some(id),
            _ => None,
        })
        .collect();
    let orgs: Vec<String> = match &p.org {
        Some(o) => vec![o.clone()],
        None => visible.into_iter().collect(),
    };
    let after = cursor(&p.after, |b| {
        serde_json::from_slice::<(String, String, String)>(&b).ok()
    })?;
    let snap = s.snapshot();
    let now = s.clock().now();
    let (items, more) = snap.page(&orgs, p.state.as_deref(), after.as_ref(), p.page_size(), now);
    let next = if more {
        items
            .last()
            .map(|e| cursor_of(serde_json::json!([e.org, e.cluster, e.id]).to_string()))
    } else {
        None
    };
    Ok(Json(FleetStatusView {
        generated_at: snap.built_at.map(rfc3339),
        counts: snap
            .counts(&orgs)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        org_counts: snap.org_counts(&orgs),
        items,
        next,
    }))
}
