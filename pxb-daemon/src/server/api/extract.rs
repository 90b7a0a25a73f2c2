//! Extractors whose every rejection is an [`ApiError`] (a 4xx with a JSON body): the JSON body,
//! query parameters, the path's segments, and the authenticated [`Caller`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::errors::ApiError;
use super::errors::ErrorCode;
use crate::server::auth::{AuthError, Caller};
use crate::server::state::Server;

/// A JSON body whose rejections are [`ApiError`]s.
pub(crate) struct Body<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send the body as application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) => Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
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
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Params(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(format!("query: {}", e.body_text())))
    }
}

/// Path segments, each checked to be a DNS label (or an id of letters, digits, `-` and `.`), in
/// route order: the org, then the item (`{name}` or `{id}`).
pub(crate) struct Segments(pub(crate) Vec<String>);

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

/// The caller behind the request's bearer token: `401` without a valid one, `503` when the token
/// cannot be checked now. A caller the per-org limit already authenticated is taken from the
/// request's extensions.
impl FromRequestParts<Server> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, Self::Rejection> {
        if let Some(c) = parts.extensions.get::<Caller>() {
            return Ok(c.clone());
        }
        let unauth = |m: &str| ApiError::new(ErrorCode::Unauthenticated, m.to_owned());
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
                ErrorCode::Unavailable,
                format!("the token could not be checked: {m}"),
            )),
            Err(e) => Err(unauth(&e.to_string())),
        }
    }
}
