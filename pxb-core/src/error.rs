//! The one error type of `pxb-core` and of every seam it defines.

use std::fmt;

/// A boxed error from a lower layer, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout `pxb-core` and the seams' implementations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors of the pxb library crates.
///
/// Callers branch on the variant; the message says, in words a platform engineer understands,
/// what failed and why. Implementations of the seams (object stores, credentials) map their own
/// errors onto these variants so the same caller code handles every backend.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object or resource does not exist.
    #[error("not found: {message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A create-only write found the object already there.
    #[error("already exists: {message}")]
    AlreadyExists {
        /// What already exists.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A condition attached to the request (for example an ETag) did not hold.
    #[error("precondition failed: {message}")]
    Precondition {
        /// Which condition failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The caller could not be authenticated: missing, expired or rejected credentials.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// Why authentication failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The caller is authenticated but not allowed to do this.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// What was denied and, where known, which permission is missing.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The remote side asked us to slow down; retry later.
    #[error("throttled: {message}")]
    Throttled {
        /// Details from the remote side.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The remote side could not be reached or failed transiently (network, TLS, timeouts, 5xx).
    #[error("unavailable: {message}")]
    Unavailable {
        /// What could not be reached and why.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The request itself is invalid (bad name, bad URL, bad range, bad configuration).
    #[error("invalid: {message}")]
    Invalid {
        /// What is invalid.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// Stored data is damaged or not in a format this version understands.
    #[error("corrupt: {message}")]
    Corrupt {
        /// Which object is damaged and how.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// A local I/O error that fits no other variant.
    #[error("i/o error: {message}")]
    Io {
        /// What was being done.
        message: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Anything else; the message says what.
    #[error("{message}")]
    Other {
        /// What happened.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

macro_rules! ctor {
    ($($(#[$doc:meta])* $fn:ident => $variant:ident),* $(,)?) => {
        impl Error {
            $(
                $(#[$doc])*
                pub fn $fn(message: impl fmt::Display) -> Self {
                    Error::$variant { message: message.to_string(), source: None }
                }
            )*
        }
    };
}

ctor! {
    /// A [`Error::NotFound`] without a source.
    not_found => NotFound,
    /// An [`Error::AlreadyExists`] without a source.
    already_exists => AlreadyExists,
    /// A [`Error::Precondition`] without a source.
    precondition => Precondition,
    /// An [`Error::Unauthenticated`] without a source.
    unauthenticated => Unauthenticated,
    /// A [`Error::PermissionDenied`] without a source.
    permission_denied => PermissionDenied,
    /// A [`Error::Throttled`] without a source.
    throttled => Throttled,
    /// An [`Error::Unavailable`] without a source.
    unavailable => Unavailable,
    /// An [`Error::Invalid`] without a source.
    invalid => Invalid,
    /// A [`Error::Corrupt`] without a source.
    corrupt => Corrupt,
    /// An [`Error::Other`] without a source.
    other => Other,
}

impl Error {
    /// An [`Error::Io`] with a description of what was being done.
    pub fn io(message: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            message: message.to_string(),
            source,
        }
    }

    /// Attaches `source` as the underlying error (no effect on [`Error::Io`]).
    pub fn with_source(mut self, err: impl Into<BoxError>) -> Self {
        match &mut self {
            Error::NotFound { source, .. }
            | Error::AlreadyExists { source, .. }
            | Error::Precondition { source, .. }
            | Error::Unauthenticated { source, .. }
            | Error::PermissionDenied { source, .. }
            | Error::Throttled { source, .. }
            | Error::Unavailable { source, .. }
            | Error::Invalid { source, .. }
            | Error::Corrupt { source, .. }
            | Error::Other { source, .. } => *source = Some(err.into()),
            Error::Io { .. } => {}
        }
        self
    }

    /// A short, stable name of the variant, for logs and machine-readable output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Precondition { .. } => "precondition",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Throttled { .. } => "throttled",
            Error::Unavailable { .. } => "unavailable",
            Error::Invalid { .. } => "invalid",
            Error::Corrupt { .. } => "corrupt",
            Error::Io { .. } => "io",
            Error::Other { .. } => "other",
        }
    }

    /// The message without the variant's prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::NotFound { message, .. }
            | Error::AlreadyExists { message, .. }
            | Error::Precondition { message, .. }
            | Error::Unauthenticated { message, .. }
            | Error::PermissionDenied { message, .. }
            | Error::Throttled { message, .. }
            | Error::Unavailable { message, .. }
            | Error::Invalid { message, .. }
            | Error::Corrupt { message, .. }
            | Error::Io { message, .. }
            | Error::Other { message, .. } => message,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Throttled { .. } | Error::Unavailable { .. })
    }

    /// The same error with its message passed through `redactor` and its source chain folded
    /// into the message, redacted too (a source is often an HTTP client's error naming the
    /// request URL, which may carry a SAS). The kind is kept.
    pub fn redacted(self, redactor: &crate::redact::Redactor) -> Self {
        let mut chain = self.message().to_owned();
        let mut cur = std::error::Error::source(&self);
        while let Some(e) = cur {
            let s = e.to_string();
            if !chain.contains(&s) {
                chain = format!("{chain}: {s}");
            }
            cur = e.source();
        }
        let message = redactor.redact(&chain).into_owned();
        match self {
            Error::NotFound { .. } => Error::not_found(message),
            Error::AlreadyExists { .. } => Error::already_exists(message),
            Error::Precondition { .. } => Error::precondition(message),
            Error::Unauthenticated { .. } => Error::unauthenticated(message),
            Error::PermissionDenied { .. } => Error::permission_denied(message),
            Error::Throttled { .. } => Error::throttled(message),
            Error::Unavailable { .. } => Error::unavailable(message),
            Error::Invalid { .. } => Error::invalid(message),
            Error::Corrupt { .. } => Error::corrupt(message),
            Error::Io { source, .. } => Error::Io {
                message,
                source: std::io::Error::from(source.kind()),
            },
            Error::Other { .. } => Error::other(message),
        }
    }

    /// The same error with `context` put in front of its message, e.g. the object's path.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        match &mut self {
            Error::NotFound { message, .. }
            | Error::AlreadyExists { message, .. }
            | Error::Precondition { message, .. }
            | Error::Unauthenticated { message, .. }
            | Error::PermissionDenied { message, .. }
            | Error::Throttled { message, .. }
            | Error::Unavailable { message, .. }
            | Error::Invalid { message, .. }
            | Error::Corrupt { message, .. }
            | Error::Io { message, .. }
            | Error::Other { message, .. } => *message = format!("{context}: {message}"),
        }
        self
    }
}

/// The messages of an error and its sources, joined with `: `; a source whose message an
/// earlier one already contains is left out (HTTP clients often repeat their cause).
pub fn describe_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chain_names_each_cause_once() {
        let inner = std::io::Error::other("connection refused");
        let outer = super::Error::unavailable("cannot reach x").with_source(inner);
        assert_eq!(
            super::describe_chain(&outer),
            "unavailable: cannot reach x: connection refused"
        );
        let same = super::Error::unavailable("cannot reach x: connection refused")
            .with_source(std::io::Error::other("connection refused"));
        assert_eq!(
            super::describe_chain(&same),
            "unavailable: cannot reach x: connection refused"
        );
    }

    use super::*;

    #[test]
    fn context_prefixes_and_kind_is_stable() {
        let e = Error::not_found("backups/x").context("get");
        assert_eq!(e.kind(), "not_found");
        assert_eq!(e.to_string(), "not found: get: backups/x");
        assert!(!e.is_transient());
        assert!(Error::throttled("slow down").is_transient());
    }

    #[test]
    fn with_source_keeps_the_chain() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::unavailable("put").with_source(io);
        let src = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(src.as_deref(), Some("disk on fire"));
    }
}
