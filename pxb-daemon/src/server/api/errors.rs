//! API errors: an HTTP status, a stable code and a redacted message, sent as
//! `{"error": {"code": …, "message": …}}`. [`pxb_core::Error`] kinds map onto statuses and codes
//! here, in one place.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
pub(crate) struct ErrorBody {
    /// The error.
    pub(crate) error: ErrorDetail,
}

/// Code and message.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct ErrorDetail {
    /// Stable code: `bad_request`, `unauthenticated`, `forbidden`, `not_found`, `conflict`,
    /// `payload_too_large`, `unsupported_media_type`, `org_degraded`, `unavailable`, `internal`.
    pub(crate) code: String,
    /// For humans.
    pub(crate) message: String,
}

/// What handlers return.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

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

    /// `400 bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `403 forbidden`.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// `404 not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
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

/// `204` when `gone`, else `404` naming `what`.
pub(crate) fn deleted(gone: bool, what: &str, name: &str) -> ApiResult<StatusCode> {
    if gone {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("{what} {name}")))
    }
}
