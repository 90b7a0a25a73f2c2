//! The error body every failed request gets, and its stable codes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The JSON body of every error: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Stable code ([`ErrorCode`]): `bad_request`, `unauthenticated`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `already_exists`, `conflict`, `payload_too_large`,
    /// `unsupported_media_type`, `throttled`, `internal`, `unavailable`, `org_degraded`.
    pub code: String,
    /// For humans.
    pub message: String,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $status:literal;)*) => {
        /// The stable code of an API error, and the HTTP status that goes with it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// As the API spells it (`not_found`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status the server answers with.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// The code `s` spells, if it is one.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s {
                    $($code => Some(ErrorCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    /// The request is malformed or names something invalid.
    BadRequest = "bad_request", 400;
    /// No valid bearer token.
    Unauthenticated = "unauthenticated", 401;
    /// The caller lacks the role, or is not a member of the org.
    Forbidden = "forbidden", 403;
    /// No such thing (or not visible to the caller).
    NotFound = "not_found", 404;
    /// No such method on this path.
    MethodNotAllowed = "method_not_allowed", 405;
    /// A thing of that name exists.
    AlreadyExists = "already_exists", 409;
    /// The thing's state forbids this now (a lease held, a precondition failed).
    Conflict = "conflict", 409;
    /// The body is larger than the server takes.
    PayloadTooLarge = "payload_too_large", 413;
    /// The body is not JSON.
    UnsupportedMediaType = "unsupported_media_type", 415;
    /// Too many requests of the org in flight; retry shortly.
    Throttled = "throttled", 429;
    /// The server failed.
    Internal = "internal", 500;
    /// A dependency is unavailable; retry later.
    Unavailable = "unavailable", 503;
    /// The org could not be loaded and is not served.
    OrgDegraded = "org_degraded", 503;
}

impl ErrorCode {
    /// The [`crate::Error`] of this kind with `message`: the inverse of how the server maps
    /// errors onto codes, so that a caller of the API handles the same kinds as a caller of the
    /// library.
    pub fn error(self, message: impl std::fmt::Display) -> crate::Error {
        use crate::Error as E;
        match self {
            ErrorCode::BadRequest
            | ErrorCode::MethodNotAllowed
            | ErrorCode::PayloadTooLarge
            | ErrorCode::UnsupportedMediaType => E::invalid(message),
            ErrorCode::Unauthenticated => E::unauthenticated(message),
            ErrorCode::Forbidden => E::permission_denied(message),
            ErrorCode::NotFound => E::not_found(message),
            ErrorCode::AlreadyExists => E::already_exists(message),
            ErrorCode::Conflict => E::precondition(message),
            ErrorCode::Throttled => E::throttled(message),
            ErrorCode::Unavailable | ErrorCode::OrgDegraded => E::unavailable(message),
            ErrorCode::Internal => E::other(message),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
            assert!((400..600).contains(&c.status()), "{c}");
        }
        assert_eq!(ErrorCode::parse("teapot"), None);
    }
}
