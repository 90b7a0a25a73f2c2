//! `/v1/orgs/{org}/locations`: backup locations, their assignment to clusters, their status per
//! cluster, and requests to validate, sync and verify them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::{LocationRecord, LocationStatus, SyncRun};
use pxb_core::clock::rfc3339;

use pxb_core::api::rest::{CreateLocation, CredentialInput, LocationView, SyncRequestBody, UpdateLocation};

use super::errors::{ApiError, ApiResult, deleted};
use super::extract::{Body, Params};
use super::paging::{List, ListParams, page_by};
use super::scope::{Admin, Operator, OrgScope, Viewer};
use crate::server::state::Server;

fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The view of `l` with whether the server uses it.
fn view(s: &Server, l: LocationRecord) -> LocationView {
    let reason = s.location_inactive_reason(&l);
    LocationView::from(l).with_inactive_reason(reason)
}

fn credential_of(c: Option<CredentialInput>) -> ApiResult<Option<(String, String)>> {
    match c {
        None => Ok(None),
        Some(CredentialInput {
            account_key: Some(k),
            sas_token: None,
        }) => Ok(Some(("accountKey".to_string(), k))),
        Some(CredentialInput {
            account_key: None,
            sas_token: Some(t),
        }) => Ok(Some(("sasToken".to_string(), t))),
        Some(_) => Err(ApiError::bad_request(
            "give exactly one of credential.accountKey and credential.sasToken",
        )),
    }
}

pub(crate) async fn list_locations(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<LocationView>>> {
    let v: Vec<LocationView> = s.locations(scope.id()).into_iter().map(|l| view(&s, l)).collect();
    Ok(Json(page_by(v, &p, |l| l.name.clone())?))
}

pub(crate) async fn create_location(
    State(s): State<Server>,
    scope: OrgScope<Admin>,
    Body(b): Body<CreateLocation>,
) -> ApiResult<(StatusCode, Json<LocationView>)> {
    let o = scope.org;
    if !crate::names::is_dns_label(&b.name) {
        return Err(ApiError::bad_request(format!(
            "location name {:?} must be a DNS label",
            b.name
        )));
    }
    if !matches!(b.provider.as_str(), "azure" | "file") {
        return Err(ApiError::bad_request("provider must be azure or file"));
    }
    if b.container.is_empty() || b.container.len() > 1024 {
        return Err(ApiError::bad_request("container must be 1 to 1024 characters"));
    }
    if b.provider == "file" && !b.container.starts_with('/') {
        return Err(ApiError::bad_request(
            "a file location's container is an absolute directory",
        ));
    }
    if let Some(e) = &b.endpoint
        && url::Url::parse(e).map_or(true, |u| u.scheme() != "https" || u.host_str().is_none())
    {
        return Err(ApiError::bad_request(format!(
            "endpoint {e:?} must be an https URL"
        )));
    }
    if b.prefix.as_ref().is_some_and(|p| p.len() > 512) || b.account.as_ref().is_some_and(|a| a.len() > 64) {
        return Err(ApiError::bad_request(
            "prefix is at most 512 characters and account at most 64",
        ));
    }
    let mode = b.mode.unwrap_or(o.mode);
    let secret = credential_of(b.credential)?;
    let loc = LocationRecord {
        org: o.id.clone(),
        id: new_id(),
        name: b.name,
        provider: b.provider,
        account: b.account,
        container: b.container,
        prefix: b.prefix,
        endpoint: b.endpoint,
        mode,
        client_id: b.client_id,
        tenant_id: b.tenant_id,
        cluster_client_ids: b.cluster_client_ids,
        credential: None,
        clusters: b.clusters,
        sync: b.sync,
        sync_request: 0,
        validate_request: 0,
        verify_request: 0,
        created_at: rfc3339(s.clock().now()),
    };
    let loc = s.create_location(loc, secret).await?;
    Ok((StatusCode::CREATED, Json(view(&s, loc))))
}

pub(crate) async fn get_location(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
) -> ApiResult<Json<LocationView>> {
    Ok(Json(view(&s, s.location(scope.id(), scope.item())?)))
}

pub(crate) async fn update_location(
    State(s): State<Server>,
    scope: OrgScope<Admin>,
    Body(b): Body<UpdateLocation>,
) -> ApiResult<Json<LocationView>> {
    let secret = credential_of(b.credential)?;
    let loc = s
        .update_location(
            scope.id(),
            scope.item(),
            |l| {
                if let Some(c) = b.clusters {
                    l.clusters = c;
                }
                if let Some(c) = b.client_id {
                    l.client_id = Some(c).filter(|c| !c.is_empty());
                }
                if let Some(t) = b.tenant_id {
                    l.tenant_id = Some(t).filter(|t| !t.is_empty());
                }
                if let Some(m) = b.cluster_client_ids {
                    l.cluster_client_ids = m;
                }
                if let Some(sync) = b.sync {
                    l.sync = sync;
                }
            },
            secret,
        )
        .await?;
    Ok(Json(view(&s, loc)))
}

pub(crate) async fn delete_location(
    State(s): State<Server>,
    scope: OrgScope<Admin>,
) -> ApiResult<StatusCode> {
    let name = scope.item();
    deleted(s.delete_location(scope.id(), name).await?, "location", name)
}

pub(crate) async fn location_status(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<LocationStatus>>> {
    let loc = s.location(scope.id(), scope.item())?;
    let v: Vec<LocationStatus> = s
        .location_statuses(scope.id(), &loc.id)
        .into_iter()
        .filter(|st| {
            p.cluster
                .as_ref()
                .is_none_or(|c| *c == st.cluster_name || *c == st.cluster)
        })
        .filter(|st| {
            p.state
                .as_ref()
                .is_none_or(|ph| st.validation.phase == ph.as_str())
        })
        .collect();
    Ok(Json(page_by(v, &p, |st| {
        format!("{}\u{0}{}", st.cluster_name, st.cluster)
    })?))
}

pub(crate) async fn validate_location(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
) -> ApiResult<(StatusCode, Json<LocationView>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&s, s.request_validation(scope.id(), scope.item()).await?)),
    ))
}

pub(crate) async fn sync_location(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
    Body(b): Body<SyncRequestBody>,
) -> ApiResult<(StatusCode, Json<SyncRun>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(s.request_sync(scope.id(), scope.item(), &b.cluster).await?),
    ))
}

pub(crate) async fn verify_location(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
) -> ApiResult<(StatusCode, Json<LocationView>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(view(&s, s.request_verify(scope.id(), scope.item()).await?)),
    ))
}
