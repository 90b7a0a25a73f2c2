//! Lists: the shared query parameters ([`ListParams`]), pages ([`List`]) with opaque cursors, and
//! catalog lists filtered and paged by the catalog's indexes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pxb_core::catalog::{MAX_PAGE, Query, Record};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::errors::{ApiError, ApiResult};
use crate::server::state::Server;

/// Paging and filters shared by lists.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ListParams {
    /// Page size, 1 to 1000 (default 100; larger values are clamped to 1000).
    pub(crate) limit: Option<u64>,
    /// The `next` cursor of the previous page.
    pub(crate) after: Option<String>,
    /// Only items of this cluster (id, or name where the list says so).
    pub(crate) cluster: Option<String>,
    /// Only items of this location (name).
    pub(crate) location: Option<String>,
    /// Only items in this state or phase.
    pub(crate) state: Option<String>,
    /// Only items of this org (fleet status).
    pub(crate) org: Option<String>,
    /// Only items created at or after this time (RFC 3339).
    pub(crate) from: Option<String>,
    /// Only items created before this time (RFC 3339).
    pub(crate) to: Option<String>,
    /// Backups: only those created in the last `1h`, `24h`, `7d` or `30d`; `session` uses the
    /// caller's time bracket preference of this sign-in session. `from`/`to` narrow it further.
    pub(crate) bracket: Option<String>,
    /// Backups: only those covering this namespace.
    pub(crate) namespace: Option<String>,
    /// Backups: `namespaces` or `vms` (those holding KubeVirt virtual machines); `session` uses
    /// the caller's stored tab.
    pub(crate) view: Option<String>,
}

impl ListParams {
    /// The page size asked for, clamped to 1..=1000.
    pub(crate) fn limit(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, MAX_PAGE as u64) as usize
    }
}

/// A page of items.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct List<T> {
    /// The items.
    pub(crate) items: Vec<T>,
    /// Cursor of the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) next: Option<String>,
}

/// The cursor `after` as this server issued it, decoded by `decode`.
pub(crate) fn cursor<T>(
    after: &Option<String>,
    decode: impl FnOnce(Vec<u8>) -> Option<T>,
) -> ApiResult<Option<T>> {
    match after {
        Some(a) => Some(
            URL_SAFE_NO_PAD
                .decode(a)
                .ok()
                .and_then(decode)
                .ok_or_else(|| ApiError::bad_request("the page cursor is not one this server issued")),
        )
        .transpose(),
        None => Ok(None),
    }
}

/// The cursor naming `key`.
pub(crate) fn cursor_of(key: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(key)
}

/// Pages a list already in order by `key`.
pub(crate) fn page_by<T>(items: Vec<T>, p: &ListParams, key: impl Fn(&T) -> String) -> ApiResult<List<T>> {
    let after = cursor(&p.after, |b| String::from_utf8(b).ok())?;
    let limit = p.limit();
    let mut out: Vec<T> = items
        .into_iter()
        .filter(|i| after.as_ref().is_none_or(|a| key(i) > *a))
        .take(limit + 1)
        .collect();
    let next = if out.len() > limit {
        out.truncate(limit);
        out.last().map(|i| cursor_of(key(i)))
    } else {
        None
    };
    Ok(List { items: out, next })
}

/// Milliseconds since the epoch of the RFC 3339 time `s`, if given; `400` naming `what` when it
/// is not one.
pub(crate) fn time_ms(s: &Option<String>, what: &str) -> ApiResult<Option<i64>> {
    s.as_deref()
        .map(|t| {
            pxb_core::clock::parse_rfc3339(t)
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .ok_or_else(|| ApiError::bad_request(format!("{what} must be an RFC 3339 time")))
        })
        .transpose()
}

/// One page of `T` of `org` by the list parameters (`from` and `to` included).
pub(crate) async fn list_records<T: Record + Serialize>(
    s: &Server,
    org: &str,
    p: &ListParams,
) -> ApiResult<List<T>> {
    let (from, to) = (time_ms(&p.from, "from")?, time_ms(&p.to, "to")?);
    list_records_in(s, org, p, from, to, Vec::new()).await
}

/// One page of `T` of `org` by the list parameters, a time range and index tags.
pub(crate) async fn list_records_in<T: Record + Serialize>(
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
