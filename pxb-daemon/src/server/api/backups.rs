//! `/v1/orgs/{org}/backups`: backups listed by the catalog's indexes (cluster, location, phase,
//! namespace, view and time), requested per cluster, and deleted through their cluster's agent.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use pxb_core::catalog::records::{BackupRecord, BackupView};

use pxb_core::api::rest::DeleteQuery as DeleteParams;

use super::errors::{ApiError, ApiResult};
use super::extract::{Body, Params};
use super::me::{Bracket, Tab, preferences_of};
use super::paging::{List, ListParams, list_records_in, time_ms};
use super::scope::{Operator, OrgScope, Viewer};
use crate::server::backups::{BackupRequest, DeleteOutcome};
use crate::server::state::Server;

pub(crate) async fn list_backups(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
    Params(mut p): Params<ListParams>,
) -> ApiResult<Json<List<BackupRecord>>> {
    let prefs = match (p.bracket.as_deref(), p.view.as_deref()) {
        (Some("session"), _) | (_, Some("session")) => Some(preferences_of(&s, &scope.caller).await?),
        _ => None,
    };
    let now_ms = pxb_core::clock::unix_ms(s.clock().now());
    let mut from = time_ms(&p.from, "from")?;
    let mut to = time_ms(&p.to, "to")?;
    if let Some(b) = p.bracket.clone() {
        // `session` is the caller's stored bracket: a preset or a custom one.
        let (kind, custom) = match (Bracket::parse(&b), &prefs) {
            (Some(Bracket::Session), Some(pr)) => (
                Bracket::parse(&pr.time_bracket.kind),
                Some(pr.time_bracket.clone()),
            ),
            (k, _) => (k, None),
        };
        match (kind, custom) {
            (Some(Bracket::Last(span)), _) => from = Some(from.unwrap_or(i64::MIN).max(now_ms - span)),
            (Some(Bracket::Custom), Some(c)) => {
                from = time_ms(&c.from, "timeBracket.from")?.or(from);
                to = time_ms(&c.to, "timeBracket.to")?.or(to);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "bracket {b:?} is not 1h, 24h, 7d, 30d or session"
                )));
            }
        }
    }
    let view = match (p.view.as_deref(), &prefs) {
        (None, _) => None,
        (Some("session"), Some(pr)) => Some(match pr.tab {
            Tab::Namespaces => BackupView::Namespaces,
            Tab::Vms => BackupView::Vms,
        }),
        (Some("namespaces"), _) => Some(BackupView::Namespaces),
        (Some("vms"), _) => Some(BackupView::Vms),
        (Some(v), _) => {
            return Err(ApiError::bad_request(format!(
                "view {v:?} is not namespaces, vms or session"
            )));
        }
    };
    if let Some(c) = &p.cluster
        && let Some(cl) = s.clusters(scope.id()).into_iter().find(|cl| cl.name == *c)
    {
        p.cluster = Some(cl.id);
    }
    p.from = None;
    p.to = None;
    // Namespace and view are index tags of the backup records (`BackupRecord::index`).
    let tags = p
        .namespace
        .iter()
        .map(|n| BackupRecord::namespace_tag(n))
        .chain(view.map(BackupView::tag))
        .collect();
    Ok(Json(list_records_in(&s, scope.id(), &p, from, to, tags).await?))
}

pub(crate) async fn create_backups(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
    Body(b): Body<BackupRequest>,
) -> ApiResult<(StatusCode, Json<List<BackupRecord>>)> {
    let items = s.create_backups(scope.id(), &b).await?;
    Ok((StatusCode::ACCEPTED, Json(List { items, next: None })))
}

pub(crate) async fn get_backup(
    State(s): State<Server>,
    scope: OrgScope<Viewer>,
) -> ApiResult<Json<BackupRecord>> {
    Ok(Json(s.backup(scope.id(), scope.item()).await?))
}

pub(crate) async fn delete_backup(
    State(s): State<Server>,
    scope: OrgScope<Operator>,
    Params(p): Params<DeleteParams>,
) -> ApiResult<(StatusCode, Json<DeleteOutcome>)> {
    let out = s.delete_backup(scope.id(), scope.item(), p.force).await?;
    let code = if out.record_removed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(out)))
}
