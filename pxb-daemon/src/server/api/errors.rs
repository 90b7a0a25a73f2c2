//! API errors: an HTTP status, a stable code and a redacted message, sent as
//! `{"error": {"code": …, "message": …}}`. [`pxb_core::Error`] kinds map onto statuses and codes
//! here, in one place.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
pub(super) use pxb_core::api::rest::ErrorCode;
use pxb_core::api::rest::{ErrorBody, ErrorDetail};

/// An API error: a stable code (which sets the HTTP status) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, [`ErrorCode::status`] of `code`.
    pub status: StatusCode,
    /// Stable code.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
}

/// What handlers return.
pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// An error.
    /// The message is redacted ([`pxb_core::redact::redact`]): nothing token-shaped leaves
    /// the server in an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code,
            message: pxb_core::redact::redact(&message).into_owned(),
        }
    }

    /// `400 bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// `403 forbidden`.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `404 not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<pxb_core::Error> for ApiError {
    fn from(e: pxb_core::Error) -> Self {
        use pxb_core::Error as E;
        let code = match &e {
            E::NotFound { .. } => ErrorCode::NotFound,
            E::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            E::Precondition { .. } => ErrorCode::Conflict,
            E::Unauthenticated { .. } => ErrorCode::Unauthenticated,
            E::PermissionDenied { .. } => ErrorCode::Forbidden,
            E::Throttled { .. } => ErrorCode::Throttled,
            E::Unavailable { .. } => ErrorCode::Unavailable,
            E::Invalid { .. } => ErrorCode::BadRequest,
            _ => ErrorCode::Internal,
        };
        if code.status() >= 500 {
            tracing::error!(error = %e, "request failed");
        }
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().into(),
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
