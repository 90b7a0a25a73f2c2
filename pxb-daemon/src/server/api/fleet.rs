//! `/v1/fleet/status`: the fleet-wide status, read from the snapshot, of the orgs the caller sees.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use pxb_core::catalog::records::Role;
use pxb_core::clock::rfc3339;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::errors::ApiResult;
use super::extract::Params;
use super::paging::{ListParams, cursor, cursor_of};
use super::scope::authorize;
use crate::server::auth::Caller;
use crate::server::fleet::FleetEntry;
use crate::server::state::{OrgState, Server};

/// The fleet status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FleetStatusView {
    /// When the snapshot was built (RFC 3339).
    pub(crate) generated_at: Option<String>,
    /// Clusters per state among the visible orgs (or the `org` asked for), whatever the `state`
    /// filter.
    pub(crate) counts: BTreeMap<String, u64>,
    /// The clusters, ordered by org, name and id.
    pub(crate) items: Vec<FleetEntry>,
    /// Cursor of the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<String>,
}

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
    let (items, more) = snap.page(&orgs, p.state.as_deref(), after.as_ref(), p.limit(), now);
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
        items,
        next,
    }))
}
