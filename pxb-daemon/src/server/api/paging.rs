//! Lists: the shared query parameters ([`ListParams`]), pages ([`List`]) with opaque cursors, and
//! catalog lists filtered and paged by the catalog's indexes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use pxb_core::catalog::{Query, Record};
use serde::Serialize;

pub(crate) use pxb_core::api::rest::{List, ListQuery as ListParams};

use super::errors::{ApiError, ApiResult};
use crate::server::state::Server;

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
    let limit = p.page_size();
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
                .map(pxb_core::clock::unix_ms)
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
        limit: p.page_size(),
        after: p.after.clone(),
        ..Query::default()
    };
    let page = s.catalog().list::<T>(&q).await?;
    Ok(List {
        items: page.items,
        next: page.next,
    })
}
