//! The caller: `/v1/whoami` and `/v1/me/preferences` (the tab stored per user, the time bracket
//! per sign-in session in memory).

use axum::Json;
use axum::extract::State;

pub(crate) use pxb_core::api::rest::{PreferencesView, Tab, UpdatePreferences, WhoAmI};

use super::errors::{ApiError, ApiResult};
use super::extract::Body;
use super::paging::time_ms;
use crate::server::auth::Caller;
use crate::server::state::{OrgState, Server};

/// A time bracket's kind, as a list's `bracket` or a preference's `timeBracket.kind` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bracket {
    /// The last span of this many milliseconds (`1h`, `24h`, `7d`, `30d`).
    Last(i64),
    /// From and to of the preference (`custom`).
    Custom,
    /// The caller's preference of this sign-in session (`session`, lists only).
    Session,
}

impl Bracket {
    /// The bracket `kind` names, if any.
    pub(crate) fn parse(kind: &str) -> Option<Bracket> {
        Some(match kind {
            "1h" => Bracket::Last(3_600_000),
            "24h" => Bracket::Last(86_400_000),
            "7d" => Bracket::Last(7 * 86_400_000),
            "30d" => Bracket::Last(30 * 86_400_000),
            "custom" => Bracket::Custom,
            "session" => Bracket::Session,
            _ => return None,
        })
    }
}

/// The caller's preferences: the stored tab and this session's time bracket.
pub(crate) async fn preferences_of(s: &Server, caller: &Caller) -> ApiResult<PreferencesView> {
    let id = &caller.identity;
    let stored = s.user_preferences(&id.subject).await?;
    let tab = stored
        .values
        .get("tab")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let time_bracket = s
        .session_value(&id.subject, &id.session)
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    Ok(PreferencesView { tab, time_bracket })
}

pub(crate) async fn whoami(State(s): State<Server>, caller: Caller) -> Json<WhoAmI> {
    let orgs = s
        .orgs()
        .into_values()
        .filter_map(|o| match o {
            OrgState::Ready(o) => caller.role_in(&o).map(|r| (o.id, r)),
            OrgState::Degraded { .. } => None,
        })
        .collect();
    Json(WhoAmI {
        subject: caller.identity.subject.clone(),
        name: caller.identity.name.clone(),
        provider_admin: caller.provider_admin,
        orgs,
    })
}

pub(crate) async fn get_preferences(
    State(s): State<Server>,
    caller: Caller,
) -> ApiResult<Json<PreferencesView>> {
    Ok(Json(preferences_of(&s, &caller).await?))
}

pub(crate) async fn put_preferences(
    State(s): State<Server>,
    caller: Caller,
    Body(b): Body<UpdatePreferences>,
) -> ApiResult<Json<PreferencesView>> {
    let id = &caller.identity;
    if let Some(t) = &b.time_bracket {
        match Bracket::parse(&t.kind) {
            Some(Bracket::Last(_)) if t.from.is_none() && t.to.is_none() => {}
            Some(Bracket::Custom) => {
                let from = time_ms(&t.from, "timeBracket.from")?;
                let to = time_ms(&t.to, "timeBracket.to")?;
                if !matches!((from, to), (Some(f), Some(t)) if f < t) {
                    return Err(ApiError::bad_request(
                        "a custom time bracket needs from before to",
                    ));
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "timeBracket.kind is 1h, 24h, 7d, 30d or custom (only custom takes from and to)",
                ));
            }
        }
        let value = serde_json::to_value(t).map_err(|e| ApiError::bad_request(e.to_string()))?;
        s.set_session_value(&id.subject, &id.session, value);
    }
    if let Some(tab) = b.tab {
        let mut prefs = s.user_preferences(&id.subject).await?;
        prefs.values.insert("tab".into(), serde_json::json!(tab));
        s.set_user_preferences(&prefs).await?;
    }
    Ok(Json(preferences_of(&s, &caller).await?))
}
