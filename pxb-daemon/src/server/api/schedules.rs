//! `/v1/orgs/{org}/schedules`: backup schedules, paused and resumed.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::ScheduleRecord;

use pxb_core::api::rest::UpdateSchedule;

use super::errors::{ApiResult, deleted};
use super::extract::{Body, Params};
use super::paging::{List, ListParams, list_records};
use super::scope::{Operator, OrgScope, Viewer};
use crate::server::backups::ScheduleRequest;
use crate::server::state::Server;

pub(crate) async fn list_schedules(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<ScheduleRecord>>> {
    Ok(Json(list_records(&s, scope.id(), &p).await?))
}

pub(crate) async fn create_schedule(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
    Body(b): Body<ScheduleRequest>,
) -> ApiResult<(StatusCode, Json<ScheduleRecord>)> {
    Ok((
        StatusCode::CREATED,
        Json(s.create_schedule(scope.id(), &b).await?),
    ))
}

pub(crate) async fn get_schedule(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
) -> ApiResult<Json<ScheduleRecord>> {
    Ok(Json(s.schedule(scope.id(), scope.item())?))
}

pub(crate) async fn update_schedule(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
    Body(b): Body<UpdateSchedule>,
) -> ApiResult<Json<ScheduleRecord>> {
    Ok(Json(s.update_schedule(scope.id(), scope.item(), &b).await?))
}

pub(crate) async fn delete_schedule(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
) -> ApiResult<StatusCode> {
    let name = scope.item();
    deleted(s.delete_schedule(scope.id(), name).await?, "schedule", name)
}
