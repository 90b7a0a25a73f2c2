//! The REST API (axum), versioned under `/v1`, plus `/healthz`, `/readyz`, `/metrics` and
//! `/openapi.json`.
//!
//! Errors are JSON `{"error": {"code": …, "message": …}}` with a stable code. Every list is paged
//! (`limit` up to 1000, `after` = the `next` cursor of the previous page) and filtered. Bodies are
//! limited in size and refuse unknown fields; path segments must be DNS labels. Hostile input gets
//! a 4xx, never a 5xx.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pxb_core::catalog::records::{
    BackupRecord, BackupView, ClusterRecord, ClusterSelector, DiscoveryConfig, LocationRecord,
    LocationStatus, Mode, Org, RestoreRecord, Role, RoleBinding, ScheduleRecord, SyncRun,
};
use pxb_core::catalog::{MAX_PAGE, Query, Record};
use pxb_core::clock::rfc3339;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::auth::{AuthError, Caller};
use super::{OrgState, Server};

/// An API error: HTTP status, stable code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `not_found`.
    pub code: &'static str,
    /// For humans.
    pub message: String,
}

/// The JSON body of every error.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable code: `bad_request`, `unauthenticated`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `org_degraded`, `unavailable`, `internal`.
    pub code: String,
    /// For humans.
    pub message: String,
}

impl ApiError {
    /// An error.
    /// The message is redacted ([`pxb_core::redact::redact`]): nothing token-shaped leaves
    /// the server in an error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status,
            code,
            message: pxb_core::redact::redact(&message).into_owned(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
}

impl From<pxb_core::Error> for ApiError {
    fn from(e: pxb_core::Error) -> Self {
        use pxb_core::Error as E;
        let (status, code) = match &e {
            E::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            E::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            E::Precondition { .. } => (StatusCode::CONFLICT, "conflict"),
            E::Unauthenticated { .. } => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            E::PermissionDenied { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            E::Throttled { .. } => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            E::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            E::Invalid { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
            },
        };
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// A JSON body whose rejections are [`ApiError`]s.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body could not be read: {e}"),
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "the body is not valid: {}",
                e.body_text()
            ))),
        }
    }
}

/// Query parameters whose rejections are [`ApiError`]s.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(format!("query: {}", e.body_text())))
    }
}

/// Path segments, each checked to be a DNS label (or an id of letters, digits, `-` and `.`).
pub struct Segments(pub Vec<String>);

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.contains("..")
}

impl<S: Send + Sync> FromRequestParts<S> for Segments {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(map) =
            axum::extract::Path::<BTreeMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e: PathRejection| ApiError::bad_request(format!("path: {}", e.body_text())))?;
        let mut out = Vec::new();
        // Path parameters come in route order: org, then the item.
        for key in ["org", "name", "id"] {
            if let Some(v) = map.get(key) {
                if !valid_segment(v) {
                    return Err(ApiError::bad_request(format!(
                        "{key} {v:?} is not a valid name (lower-case letters, digits, '-' and '.')"
                    )));
                }
                out.push(v.clone());
            }
        }
        Ok(Segments(out))
    }
}

impl FromRequestParts<Server> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let unauth = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", m.to_owned());
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauth("send a bearer token in the Authorization header"))?;
        let text = header
            .to_str()
            .map_err(|_| unauth("the Authorization header is not text"))?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or_else(|| unauth("the Authorization header must be 'Bearer <token>'"))?;
        match server.authenticate(token.trim()).await {
            Ok(c) => Ok(c),
            Err(AuthError::Unavailable(m)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the token could not be checked: {m}"),
            )),
            Err(e) => Err(unauth(&e.to_string())),
        }
    }
}

fn org_for(server: &Server, caller: &Caller, org: &str, role: Role) -> ApiResult<Org> {
    let denied = || ApiError::forbidden(format!("you have no access to org {org}"));
    match server.orgs().get(org) {
        Some(OrgState::Ready(o)) => {
            if caller.require(o, role) {
                Ok(o.clone())
            } else if caller.role_in(o).is_some() {
                Err(ApiError::forbidden(format!(
                    "this needs the {role:?} role in org {org}"
                )))
            } else {
                Err(denied())
            }
        }
        Some(OrgState::Degraded { reason }) if caller.provider_admin => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "org_degraded",
            format!("org {org} is degraded and not served: {reason}"),
        )),
        None if caller.provider_admin => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("org {org}"),
        )),
        _ => Err(denied()),
    }
}

/// Paging and filters shared by lists.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 100; larger values are clamped to 1000).
    pub limit: Option<u64>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Only items of this cluster (id, or name where the list says so).
    pub cluster: Option<String>,
    /// Only items of this location (name).
    pub location: Option<String>,
    /// Only items in this state or phase.
    pub state: Option<String>,
    /// Only items of this org (fleet status).
    pub org: Option<String>,
    /// Only items created at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only items created before this time (RFC 3339).
    pub to: Option<String>,
    /// Backups: only those created in the last `1h`, `24h`, `7d` or `30d`; `session` uses the
    /// caller's time bracket preference of this sign-in session. `from`/`to` narrow it further.
    pub bracket: Option<String>,
    /// Backups: only those covering this namespace.
    pub namespace: Option<String>,
    /// Backups: `namespaces` or `vms` (those holding KubeVirt virtual machines); `session` uses
    /// the caller's stored tab.
    pub view: Option<String>,
}

impl ListParams {
    fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, MAX_PAGE as u64) as usize
    }
}

/// A page of items.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Pages a list already in order by `key`.
fn page_by<T>(items: Vec<T>, p: &ListParams, key: impl Fn(&T) -> String) -> ApiResult<List<T>> {
    let after = match &p.after {
        Some(a) => Some(
            URL_SAFE_NO_PAD
                .decode(a)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("the page cursor is not one this server issued"))?,
        ),
        None => None,
    };
    let limit = p.limit();
    let mut out: Vec<T> = items
        .into_iter()
        .filter(|i| after.as_ref().is_none_or(|a| key(i) > *a))
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|i| URL_SAFE_NO_PAD.encode(key(i)))
    } else {
        None
    };
    Ok(List { items: out, next })
}

fn time_ms(s: &Option<String>, what: &str) -> ApiResult<Option<i64>> {
    s.as_deref()
        .map(|t| {
            crate::agent::parse_rfc3339(t)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .ok_or_else(|| ApiError::bad_request(format!("{what} must be an RFC 3339 time")))
        })
        .transpose()
}

/// Which kind of backups a view shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tab {
    /// Namespace backups (the default).
    #[default]
    Namespaces,
    /// Virtual-machine backups (KubeVirt `VirtualMachine`s).
    Vms,
}

/// A time bracket for lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeBracket {
    /// `1h`, `24h` (the default), `7d`, `30d` or `custom`.
    #[schemars(extend("enum" = ["1h", "24h", "7d", "30d", "custom"]))]
    pub kind: String,
    /// Custom: from (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Custom: to (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl Default for TimeBracket {
    fn default() -> Self {
        TimeBracket {
            kind: "24h".into(),
            from: None,
            to: None,
        }
    }
}

/// The caller's preferences: the tab is stored per user and survives new logins; the time bracket
/// lasts for the sign-in session and is "last 24 hours" in a new one.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferencesView {
    /// Namespace or VM backups.
    pub tab: Tab,
    /// The time bracket of this session.
    pub time_bracket: TimeBracket,
}

/// Changes to the caller's preferences; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePreferences {
    /// Namespace or VM backups.
    #[serde(default)]
    pub tab: Option<Tab>,
    /// The time bracket for this session.
    #[serde(default)]
    pub time_bracket: Option<TimeBracket>,
}

async fn preferences_of(s: &Server, caller: &Caller) -> ApiResult<PreferencesView> {
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

async fn get_preferences(State(s): State<Server>, caller: Caller) -> ApiResult<Json<PreferencesView>> {
    Ok(Json(preferences_of(&s, &caller).await?))
}

async fn put_preferences(
    State(s): State<Server>,
    caller: Caller,
    Body(b): Body<UpdatePreferences>,
) -> ApiResult<Json<PreferencesView>> {
    let id = &caller.identity;
    if let Some(t) = &b.time_bracket {
        match t.kind.as_str() {
            "1h" | "24h" | "7d" | "30d" if t.from.is_none() && t.to.is_none() => {}
            "custom" => {
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

/// The identity of the caller.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// Subject.
    pub subject: String,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Administers every org.
    pub provider_admin: bool,
    /// Role per visible org.
    pub orgs: BTreeMap<String, Role>,
}

/// An org as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgView {
    /// Id.
    pub id: String,
    /// For humans.
    pub display_name: String,
    /// Default location mode.
    pub mode: Mode,
    /// `Ready` or `Degraded`.
    pub state: String,
    /// Why it is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Role bindings (shown to admins).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<RoleBinding>,
}

/// A new org.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrg {
    /// Id, a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub id: String,
    /// For humans.
    #[serde(default)]
    pub display_name: String,
    /// Default mode of its locations.
    #[serde(default)]
    pub mode: Mode,
    /// Who may do what.
    #[serde(default)]
    pub access: Vec<RoleBinding>,
}

/// Changes to an org; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOrg {
    /// For humans.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Default mode of new locations.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Who may do what (replaces the bindings).
    #[serde(default)]
    pub access: Option<Vec<RoleBinding>>,
}

/// A discovery configuration with how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryView {
    /// The configuration.
    #[serde(flatten)]
    pub config: DiscoveryConfig,
    /// Its state.
    pub status: super::DiscoveryStatus,
}

fn discovery_view(s: &Server, d: DiscoveryConfig) -> DiscoveryView {
    let status = s.discovery_status(&d.org, &d.id);
    DiscoveryView { config: d, status }
}

/// A new discovery configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDiscovery {
    /// Id, a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub id: String,
    /// The Gardener project.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub project: String,
    /// The name of a garden credential configured on the server.
    pub credential: String,
    /// Seconds between full discovery cycles (default 60, at least 5).
    #[serde(default)]
    pub interval_secs: Option<u64>,
}

/// A classic credential.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialInput {
    /// A storage account key.
    #[serde(default)]
    pub account_key: Option<String>,
    /// A SAS token.
    #[serde(default)]
    pub sas_token: Option<String>,
}

/// A new backup location.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateLocation {
    /// Name, a DNS label; the `BackupLocation` CR on clusters has this name.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// `azure` or `file`.
    #[schemars(extend("enum" = ["azure", "file"]))]
    pub provider: String,
    /// Azure storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// Container (azure) or absolute directory (file).
    #[schemars(length(min = 1, max = 1024))]
    pub container: String,
    /// Name prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// Blob endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `federated` (default: the org's mode) or `classic`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Workload Identity client id for every cluster.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Entra tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Client ids per cluster name.
    #[serde(default)]
    pub cluster_client_ids: BTreeMap<String, String>,
    /// Classic mode: the credential (stored encrypted, never shown again).
    #[serde(default)]
    pub credential: Option<CredentialInput>,
    /// Which clusters get it.
    pub clusters: ClusterSelector,
    /// Sync its backups when it is first assigned to a cluster.
    #[serde(default)]
    pub sync: bool,
}

/// Changes to a location; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateLocation {
    /// Which clusters get it.
    #[serde(default)]
    pub clusters: Option<ClusterSelector>,
    /// Workload Identity client id for every cluster.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Entra tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Client ids per cluster name (replaces the map).
    #[serde(default)]
    pub cluster_client_ids: Option<BTreeMap<String, String>>,
    /// Sync its backups when it is first assigned to a cluster.
    #[serde(default)]
    pub sync: Option<bool>,
    /// Classic mode: a new credential.
    #[serde(default)]
    pub credential: Option<CredentialInput>,
}

/// A location as the API shows it (never its credential).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationView {
    /// Uid.
    pub id: String,
    /// Name.
    pub name: String,
    /// Provider.
    pub provider: String,
    /// Account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Container or directory.
    pub container: String,
    /// Prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Mode.
    pub mode: Mode,
    /// Client id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Per-cluster client ids.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cluster_client_ids: BTreeMap<String, String>,
    /// Whether a classic credential is stored.
    pub has_credential: bool,
    /// Assignment.
    pub clusters: ClusterSelector,
    /// Sync on assignment.
    pub sync: bool,
    /// Created.
    pub created_at: String,
}

impl From<LocationRecord> for LocationView {
    fn from(l: LocationRecord) -> Self {
        LocationView {
            id: l.id,
            name: l.name,
            provider: l.provider,
            account: l.account,
            container: l.container,
            prefix: l.prefix,
            endpoint: l.endpoint,
            mode: l.mode,
            client_id: l.client_id,
            cluster_client_ids: l.cluster_client_ids,
            has_credential: l.credential.is_some(),
            clusters: l.clusters,
            sync: l.sync,
            created_at: l.created_at,
        }
    }
}

/// A cluster as the API shows it (without the sealed kubeconfig of an imported one).
pub type ClusterView = ClusterRecord;

fn cluster_view(mut c: ClusterRecord) -> ClusterView {
    c.sealed_kubeconfig = None;
    c
}

/// A cluster to import (classic mode).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportCluster {
    /// Name, a DNS label.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 63)
    )]
    pub name: String,
    /// A kubeconfig with a client certificate (YAML); stored sealed, never shown again.
    #[schemars(length(min = 1, max = 262144))]
    pub kubeconfig: String,
}

/// Ask for a sync on one cluster.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SyncRequestBody {
    /// The cluster, by name.
    pub cluster: String,
}

/// The fleet status.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatusView {
    /// When the snapshot was built (RFC 3339).
    pub generated_at: Option<String>,
    /// Clusters per state among the visible orgs (or the `org` asked for), whatever the `state`
    /// filter.
    pub counts: BTreeMap<String, u64>,
    /// The clusters, ordered by org, name and id.
    pub items: Vec<super::fleet::FleetEntry>,
    /// Cursor of the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Readiness. Anyone may ask; only a provider admin (a bearer token) sees which orgs are
/// degraded and why.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Whether the server serves requests.
    pub ready: bool,
    /// How many orgs could not be loaded.
    pub degraded_org_count: usize,
    /// Orgs that could not be loaded, with the reason: for provider admins only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_orgs: Option<BTreeMap<String, String>>,
}

/// The router over `server`, with the body limit from its configuration.
pub fn router(server: Server) -> Router {
    let limit = server.config().api.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { Json(super::openapi::document()) }),
        )
        .route("/v1/whoami", get(whoami))
        .route("/v1/me/preferences", get(get_preferences).put(put_preferences))
        .route("/v1/fleet/status", get(fleet_status))
        .route("/v1/orgs", get(list_orgs).post(create_org))
        .route("/v1/orgs/{org}", get(get_org).put(update_org))
        .route(
            "/v1/orgs/{org}/discoveries",
            get(list_discoveries).post(create_discovery),
        )
        .route(
            "/v1/orgs/{org}/discoveries/{name}",
            get(get_discovery).delete(delete_discovery),
        )
        .route("/v1/orgs/{org}/clusters", get(list_clusters).post(import_cluster))
        .route(
            "/v1/orgs/{org}/clusters/{name}",
            get(get_cluster).delete(remove_cluster),
        )
        .route(
            "/v1/orgs/{org}/locations",
            get(list_locations).post(create_location),
        )
        .route(
            "/v1/orgs/{org}/locations/{name}",
            get(get_location).put(update_location).delete(delete_location),
        )
        .route("/v1/orgs/{org}/locations/{name}/status", get(location_status))
        .route(
            "/v1/orgs/{org}/locations/{name}/validate",
            post(validate_location),
        )
        .route("/v1/orgs/{org}/locations/{name}/sync", post(sync_location))
        .route("/v1/orgs/{org}/locations/{name}/verify", post(verify_location))
        .route("/v1/orgs/{org}/backups", get(list_backups).post(create_backups))
        .route(
            "/v1/orgs/{org}/backups/{id}",
            get(get_backup).delete(delete_backup),
        )
        .route("/v1/orgs/{org}/restores", get(list_restores).post(create_restore))
        .route("/v1/orgs/{org}/restores/{id}", get(get_restore))
        .route(
            "/v1/orgs/{org}/schedules",
            get(list_schedules).post(create_schedule),
        )
        .route(
            "/v1/orgs/{org}/schedules/{name}",
            get(get_schedule).put(update_schedule).delete(delete_schedule),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            per_org_limit,
        ))
        .with_state(server)
}

/// Requests in flight per org, for [`per_org_limit`].
#[derive(Default)]
pub(crate) struct OrgLimits(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
);

impl OrgLimits {
    fn semaphore(&self, org: &str, max: usize) -> std::sync::Arc<tokio::sync::Semaphore> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(org.to_owned())
            .or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(max)))
            .clone()
    }
}

/// At most `api.maxRequestsPerOrg` requests of one org in flight; more get `429` at once. Only
/// requests whose caller has a role in the org count (and are refused): anyone else's request is
/// passed on to be refused with `403`, so another tenant cannot use up an org's share. The caller
/// found here is handed on in the request's extensions and not authenticated twice.
async fn per_org_limit(State(s): State<Server>, req: Request, next: axum::middleware::Next) -> Response {
    let org = req
        .uri()
        .path()
        .strip_prefix("/v1/orgs/")
        .and_then(|r| r.split('/').next())
        .filter(|o| !o.is_empty())
        .map(str::to_owned);
    let Some(org) = org else {
        return next.run(req).await;
    };
    let Ok(o) = s.org(&org) else {
        return next.run(req).await;
    };
    let (mut parts, body) = req.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &s).await {
        Ok(c) if c.role_in(&o).is_some() => c,
        // Not authenticated or not of this org: the handler refuses it.
        _ => return next.run(Request::from_parts(parts, body)).await,
    };
    let max = s.config().api.max_requests_per_org;
    let Ok(_permit) = s.org_limits().semaphore(&org, max).try_acquire_owned() else {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            format!("org {org} has {max} requests in flight (api.maxRequestsPerOrg); retry shortly"),
        )
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    parts.extensions.insert(caller);
    next.run(Request::from_parts(parts, body)).await
}

async fn readyz(State(s): State<Server>, mut parts: Parts) -> Json<Readiness> {
    let degraded: BTreeMap<String, String> = s
        .orgs()
        .into_iter()
        .filter_map(|(id, st)| match st {
            OrgState::Degraded { reason } => Some((id, reason)),
            OrgState::Ready(_) => None,
        })
        .collect();
    // Org ids and reasons are not for anonymous callers (probes, the whole network).
    let admin = parts.headers.contains_key(header::AUTHORIZATION)
        && Caller::from_request_parts(&mut parts, &s)
            .await
            .is_ok_and(|c| c.provider_admin);
    Json(Readiness {
        ready: true,
        degraded_org_count: degraded.len(),
        degraded_orgs: admin.then_some(degraded),
    })
}

async fn metrics(State(s): State<Server>) -> impl IntoResponse {
    let snap = s.snapshot();
    let m = s.metrics();
    let mut out = String::new();
    out += "# HELP pxb_server_info The server's version.\n# TYPE pxb_server_info gauge\n";
    out += &format!(
        "pxb_server_info{{version=\"{}\"}} 1\n",
        crate::agent::api::VERSION
    );
    out += "# HELP pxb_server_clusters Clusters by state.\n# TYPE pxb_server_clusters gauge\n";
    for (state, n) in snap.total_counts() {
        out += &format!("pxb_server_clusters{{state=\"{state}\"}} {n}\n");
    }
    let orgs = s.orgs();
    let degraded = orgs
        .values()
        .filter(|o| matches!(o, OrgState::Degraded { .. }))
        .count();
    out += "# HELP pxb_server_orgs Orgs by state.\n# TYPE pxb_server_orgs gauge\n";
    out += &format!("pxb_server_orgs{{state=\"ready\"}} {}\n", orgs.len() - degraded);
    out += &format!("pxb_server_orgs{{state=\"degraded\"}} {degraded}\n");
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        *out += &format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
    };
    out +=
        "# HELP pxb_server_visits_total Cluster visits by result.\n# TYPE pxb_server_visits_total counter\n";
    out += &format!(
        "pxb_server_visits_total{{result=\"ok\"}} {}\n",
        m.visits_ok.load(Ordering::Relaxed)
    );
    out += &format!(
        "pxb_server_visits_total{{result=\"failed\"}} {}\n",
        m.visits_failed.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "pxb_server_orphans_deleted_total",
        "Orphaned objects deleted from clusters.",
        m.orphans_deleted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_crs_written_total",
        "BackupLocation CRs created or updated.",
        m.crs_written.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_requests_stalled_total",
        "Requests that lost their heartbeat lease.",
        m.stalled.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_backups_imported_total",
        "Backups found by syncs and imported into the catalog.",
        m.imported.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_schedule_runs_total",
        "Schedule slots fired.",
        m.schedule_runs.load(Ordering::Relaxed),
    );
    let (backups, restores) = s.active_operations();
    out += "# HELP pxb_server_operations_active Backups and restores the server drives now.\n";
    out += "# TYPE pxb_server_operations_active gauge\n";
    out += &format!("pxb_server_operations_active{{kind=\"backup\"}} {backups}\n");
    out += &format!("pxb_server_operations_active{{kind=\"restore\"}} {restores}\n");
    counter(
        &mut out,
        "pxb_server_snapshots_total",
        "Fleet status snapshots built.",
        m.snapshots.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn whoami(State(s): State<Server>, caller: Caller) -> Json<WhoAmI> {
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

fn org_view(id: String, st: OrgState, admin: bool) -> OrgView {
    match st {
        OrgState::Ready(o) => OrgView {
            id: o.id,
            display_name: o.display_name,
            mode: o.mode,
            state: "Ready".into(),
            reason: None,
            access: if admin { o.access } else { Vec::new() },
        },
        OrgState::Degraded { reason } => OrgView {
            id,
            display_name: String::new(),
            mode: Mode::Federated,
            state: "Degraded".into(),
            reason: Some(reason),
            access: Vec::new(),
        },
    }
}

async fn list_orgs(
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

async fn create_org(
    State(s): State<Server>,
    caller: Caller,
    Body(b): Body<CreateOrg>,
) -> ApiResult<(StatusCode, Json<OrgView>)> {
    if !caller.provider_admin {
        return Err(ApiError::forbidden("only provider admins create orgs"));
    }
    if !crate::agent::is_dns_label(&b.id) {
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

async fn get_org(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<OrgView>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    let admin = caller.require(&o, Role::Admin);
    Ok(Json(org_view(o.id.clone(), OrgState::Ready(o), admin)))
}

async fn update_org(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<UpdateOrg>,
) -> ApiResult<Json<OrgView>> {
    if !caller.provider_admin {
        // Org admins may not grant themselves more; only provider admins change orgs.
        org_for(&s, &caller, &seg[0], Role::Viewer)?;
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

async fn list_discoveries(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<DiscoveryView>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    let mut v = s.discoveries(&o.id);
    v.sort_by(|a, b| a.id.cmp(&b.id));
    let v: Vec<DiscoveryView> = v.into_iter().map(|d| discovery_view(&s, d)).collect();
    Ok(Json(page_by(v, &p, |d| d.config.id.clone())?))
}

async fn create_discovery(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<CreateDiscovery>,
) -> ApiResult<(StatusCode, Json<DiscoveryView>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    if !crate::agent::is_dns_label(&b.id) || !crate::agent::is_dns_label(&b.project) {
        return Err(ApiError::bad_request("id and project must be DNS labels"));
    }
    let d = s
        .add_discovery(DiscoveryConfig {
            org: o.id,
            id: b.id,
            project: b.project,
            credential: b.credential,
            interval_secs: b.interval_secs.unwrap_or(60).clamp(5, 86_400),
            created_at: rfc3339(s.clock().now()),
            provider_approved: caller.provider_admin,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(discovery_view(&s, d))))
}

async fn get_discovery(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<DiscoveryView>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    s.discoveries(&o.id)
        .into_iter()
        .find(|d| d.id == seg[1])
        .map(|d| Json(discovery_view(&s, d)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("discovery {}", seg[1]),
            )
        })
}

/// `204` when `gone`, else `404` naming `what`.
fn deleted(gone: bool, what: &str, name: &str) -> ApiResult<StatusCode> {
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {name}"),
        ))
    }
}

async fn delete_discovery(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<StatusCode> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    deleted(s.remove_discovery(&o.id, &seg[1]).await?, "discovery", &seg[1])
}

async fn list_clusters(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<ClusterView>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    let v: Vec<ClusterView> = s
        .clusters(&o.id)
        .into_iter()
        .filter(|c| p.state.as_ref().is_none_or(|st| c.status.state.as_str() == st))
        .map(cluster_view)
        .collect();
    Ok(Json(page_by(v, &p, |c| format!("{}\u{0}{}", c.name, c.id))?))
}

async fn get_cluster(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<ClusterView>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    s.clusters(&o.id)
        .into_iter()
        .filter(|c| c.name == seg[1] || c.id == seg[1])
        .min_by_key(|c| c.retired_at.is_some())
        .map(|c| Json(cluster_view(c)))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("cluster {}", seg[1])))
}

async fn import_cluster(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<ImportCluster>,
) -> ApiResult<(StatusCode, Json<ClusterView>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    if !crate::agent::is_dns_label(&b.name) {
        return Err(ApiError::bad_request(format!(
            "cluster name {:?} must be a DNS label",
            b.name
        )));
    }
    let c = s.import_cluster(&o.id, &b.name, &b.kubeconfig).await?;
    Ok((StatusCode::CREATED, Json(cluster_view(c))))
}

async fn remove_cluster(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<StatusCode> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    deleted(s.remove_imported(&o.id, &seg[1]).await?, "cluster", &seg[1])
}

async fn list_locations(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<LocationView>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    let v: Vec<LocationView> = s.locations(&o.id).into_iter().map(LocationView::from).collect();
    Ok(Json(page_by(v, &p, |l| l.name.clone())?))
}

fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn create_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<CreateLocation>,
) -> ApiResult<(StatusCode, Json<LocationView>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    if !crate::agent::is_dns_label(&b.name) {
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
    Ok((StatusCode::CREATED, Json(loc.into())))
}

async fn get_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<LocationView>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    Ok(Json(s.location(&o.id, &seg[1])?.into()))
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

async fn update_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<UpdateLocation>,
) -> ApiResult<Json<LocationView>> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    let secret = credential_of(b.credential)?;
    let loc = s
        .update_location(
            &o.id,
            &seg[1],
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
    Ok(Json(loc.into()))
}

async fn delete_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<StatusCode> {
    let o = org_for(&s, &caller, &seg[0], Role::Admin)?;
    deleted(s.delete_location(&o.id, &seg[1]).await?, "location", &seg[1])
}

async fn location_status(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<LocationStatus>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    let loc = s.location(&o.id, &seg[1])?;
    let v: Vec<LocationStatus> = s
        .location_statuses(&o.id, &loc.id)
        .into_iter()
        .filter(|st| {
            p.cluster
                .as_ref()
                .is_none_or(|c| *c == st.cluster_name || *c == st.cluster)
        })
        .filter(|st| p.state.as_ref().is_none_or(|ph| *ph == st.validation.phase))
        .collect();
    Ok(Json(page_by(v, &p, |st| {
        format!("{}\u{0}{}", st.cluster_name, st.cluster)
    })?))
}

async fn validate_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<(StatusCode, Json<LocationView>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(s.request_validation(&o.id, &seg[1]).await?.into()),
    ))
}

async fn sync_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<SyncRequestBody>,
) -> ApiResult<(StatusCode, Json<SyncRun>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(s.request_sync(&o.id, &seg[1], &b.cluster).await?),
    ))
}

async fn list_records<T: Record + Serialize>(s: &Server, org: &str, p: &ListParams) -> ApiResult<List<T>> {
    let (from, to) = (time_ms(&p.from, "from")?, time_ms(&p.to, "to")?);
    list_records_in(s, org, p, from, to, Vec::new()).await
}

/// One page of `T` of `org` by the list parameters, a time range and index tags.
async fn list_records_in<T: Record + Serialize>(
    s: &Server,
    org: &str,
    p: &ListParams,
    from: Option<i64>,
    to: Option<i64>,
    tags: Vec<String>,
) -> ApiResult<List<T>> {
    let location = p.location.as_ref().map(|name| {
        s.location(org, name)
            .map(|l| l.id)
            .unwrap_or_else(|_| name.clone())
    });
    let q = Query {
        org: Some(org.to_owned()),
        cluster: p.cluster.clone(),
        location,
        status: p.state.clone(),
        time_from_ms: from,
        time_to_ms: to,
        tags,
        limit: p.limit(),
        after: p.after.clone(),
        ..Query::default()
    };
    let page = s.catalog().list::<T>(&q).await?;
    Ok(List {
        items: page.items,
        next: page.next,
    })
}

fn bracket_ms(kind: &str) -> Option<i64> {
    Some(match kind {
        "1h" => 3_600_000,
        "24h" => 86_400_000,
        "7d" => 7 * 86_400_000,
        "30d" => 30 * 86_400_000,
        _ => return None,
    })
}

async fn list_backups(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(mut p): Params<ListParams>,
) -> ApiResult<Json<List<BackupRecord>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    let prefs = match (p.bracket.as_deref(), p.view.as_deref()) {
        (Some("session"), _) | (_, Some("session")) => Some(preferences_of(&s, &caller).await?),
        _ => None,
    };
    let now_ms = s
        .clock()
        .now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut from = time_ms(&p.from, "from")?;
    let mut to = time_ms(&p.to, "to")?;
    if let Some(b) = p.bracket.clone() {
        let (kind, custom) = match (b.as_str(), &prefs) {
            ("session", Some(pr)) => (pr.time_bracket.kind.clone(), Some(pr.time_bracket.clone())),
            (k, _) => (k.to_owned(), None),
        };
        match (bracket_ms(&kind), custom) {
            (Some(span), _) => from = Some(from.unwrap_or(i64::MIN).max(now_ms - span)),
            (None, Some(c)) if kind == "custom" => {
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
        && let Some(cl) = s.clusters(&o.id).into_iter().find(|cl| cl.name == *c)
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
    Ok(Json(list_records_in(&s, &o.id, &p, from, to, tags).await?))
}

async fn create_backups(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<super::backups::BackupRequest>,
) -> ApiResult<(StatusCode, Json<List<BackupRecord>>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    let items = s.create_backups(&o.id, &b).await?;
    Ok((StatusCode::ACCEPTED, Json(List { items, next: None })))
}

async fn get_backup(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<BackupRecord>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    Ok(Json(s.backup(&o.id, &seg[1]).await?))
}

/// Query of a backup delete.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeleteParams {
    /// Remove the record now and leave the data (for a cluster that is gone).
    #[serde(default)]
    pub force: bool,
}

async fn delete_backup(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<DeleteParams>,
) -> ApiResult<(StatusCode, Json<super::backups::DeleteOutcome>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    let out = s.delete_backup(&o.id, &seg[1], p.force).await?;
    let code = if out.record_removed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, Json(out)))
}

async fn create_restore(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<super::backups::RestoreRequest>,
) -> ApiResult<(StatusCode, Json<RestoreRecord>)> {
    // Creating cluster-scoped objects from a backup is a privilege of the org's admins.
    let role = if b.allow_cluster_kinds.is_empty() {
        Role::Operator
    } else {
        Role::Admin
    };
    let o = org_for(&s, &caller, &seg[0], role)?;
    let admin = caller.require(&o, Role::Admin);
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
        Json(s.create_restore(&o.id, &b, admin).await?),
    ))
}

async fn get_restore(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<RestoreRecord>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    Ok(Json(s.restore(&o.id, &seg[1]).await?))
}

async fn create_schedule(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<super::backups::ScheduleRequest>,
) -> ApiResult<(StatusCode, Json<ScheduleRecord>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    Ok((StatusCode::CREATED, Json(s.create_schedule(&o.id, &b).await?)))
}

async fn get_schedule(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<Json<ScheduleRecord>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    Ok(Json(s.schedule(&o.id, &seg[1])?))
}

/// Changes to a schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSchedule {
    /// Pause (true) or resume (false); a resumed schedule does not make up the paused slots.
    pub paused: bool,
}

async fn update_schedule(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Body(b): Body<UpdateSchedule>,
) -> ApiResult<Json<ScheduleRecord>> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    Ok(Json(s.pause_schedule(&o.id, &seg[1], b.paused).await?))
}

async fn delete_schedule(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<StatusCode> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    deleted(s.delete_schedule(&o.id, &seg[1]).await?, "schedule", &seg[1])
}

async fn verify_location(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
) -> ApiResult<(StatusCode, Json<LocationView>)> {
    let o = org_for(&s, &caller, &seg[0], Role::Operator)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(s.request_verify(&o.id, &seg[1]).await?.into()),
    ))
}

async fn list_restores(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<RestoreRecord>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    Ok(Json(list_records(&s, &o.id, &p).await?))
}

async fn list_schedules(
    State(s): State<Server>,
    caller: Caller,
    Segments(seg): Segments,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<List<ScheduleRecord>>> {
    let o = org_for(&s, &caller, &seg[0], Role::Viewer)?;
    Ok(Json(list_records(&s, &o.id, &p).await?))
}

async fn fleet_status(
    State(s): State<Server>,
    caller: Caller,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<FleetStatusView>> {
    let orgs = s.orgs();
    if let Some(org) = &p.org {
        org_for(&s, &caller, org, Role::Viewer)?;
    }
    let visible: std::collections::BTreeSet<String> = orgs
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
    let after = match &p.after {
        Some(a) => Some(
            URL_SAFE_NO_PAD
                .decode(a)
                .ok()
                .and_then(|b| serde_json::from_slice::<(String, String, String)>(&b).ok())
                .ok_or_else(|| ApiError::bad_request("the page cursor is not one this server issued"))?,
        ),
        None => None,
    };
    let snap = s.snapshot();
    let now = s.clock().now();
    let (items, more) = snap.page(&orgs, p.state.as_deref(), after.as_ref(), p.limit(), now);
    let next = if more {
        items
            .last()
            .map(|e| URL_SAFE_NO_PAD.encode(serde_json::json!([e.org, e.cluster, e.id]).to_string()))
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

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    server: Server,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(server))
        .with_graceful_shutdown(shutdown)
        .await
}
