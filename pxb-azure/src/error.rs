//! Mapping of Azure SDK errors onto `pxb_core::Error`, in words a platform engineer can act on.

use azure_core::error::ErrorKind;
use azure_storage_blob::StorageError;
use pxb_core::Error;

/// What was being done when an error happened, for the message.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Op<'a> {
    /// The verb: "list", "write", "read", "delete", "read properties of".
    pub verb: &'a str,
    /// The object (or prefix) it was done to, inside the location.
    pub target: &'a str,
    /// Whether the request was a create-only write (a failed condition then means "exists").
    pub create_only: bool,
}

/// Who the request was made as and where, for the message.
#[derive(Debug)]
pub(crate) struct Context {
    pub account: String,
    pub container: String,
    pub endpoint: String,
    pub identity: String,
    pub auth_hint: &'static str,
}

pub(crate) fn map(ctx: &Context, op: Op<'_>, err: azure_core::Error) -> Error {
    let Op {
        verb,
        target,
        create_only,
    } = op;
    let c = &ctx.container;
    match err.kind().clone() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => {
            let status = u16::from(status);
            let code = error_code.unwrap_or_default();
            let detail = StorageError::try_from(err)
                .ok()
                .and_then(|s| s.authentication_error_detail.or(s.message))
                .map(|m| format!(": {}", m.lines().next().unwrap_or_default()))
                .unwrap_or_default();
            let what =
                format!("{status} {code} on {verb} of {target:?} in container {c:?}{detail}");
            match (status, code.as_str()) {
                (404, "ContainerNotFound") => Error::not_found(format!(
                    "container {c:?} does not exist in storage account {:?} ({status} {code} on {verb})",
                    ctx.account
                )),
                (404, _) => Error::not_found(target),
                (409, "BlobAlreadyExists") => Error::already_exists(target),
                (412, _) if create_only => Error::already_exists(target),
                (412, _) => Error::precondition(what),
                (416, _) => Error::invalid(format!(
                    "{target}: the range starts at or past the end of the object"
                )),
                (403, "AuthenticationFailed") | (401, _) => Error::unauthenticated(format!(
                    "{status} on {verb}: storage account {:?} rejected the credentials of {}; {}{detail}",
                    ctx.account, ctx.identity, ctx.auth_hint
                )),
                (403, _) => Error::permission_denied(format!(
                    "{status} on {verb}: {} lacks permission on container {c:?} (it needs the \
                     Storage Blob Data Contributor role on the container or account; error code {code}){detail}",
                    ctx.identity
                )),
                (429, _) | (503, "ServerBusy") => Error::throttled(what),
                (500..=599, _) => Error::unavailable(what),
                _ => Error::invalid(what),
            }
        }
        ErrorKind::Credential => match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(inner) => rebuild(inner),
            None => {
                Error::unauthenticated(format!("cannot obtain a token for {}: {err}", ctx.identity))
            }
        },
        ErrorKind::Io | ErrorKind::Connection => transport(&ctx.endpoint, &err),
        _ if err.to_string().contains("https") => {
            Error::invalid(format!("{}: {err}", ctx.endpoint))
        }
        _ => {
            Error::other(format!("{verb} of {target:?} in container {c:?}: {err}")).with_source(err)
        }
    }
}

/// A connection-level failure: say whether TLS trust is the cause, since that is the usual one.
pub(crate) fn transport(endpoint: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    let chain = chain(err);
    if chain.contains("certificate") || chain.contains("UnknownIssuer") {
        Error::unavailable(format!(
            "TLS to {endpoint} failed: the server's certificate is not trusted ({chain}); pass the CA that \
             signed it with --ca-file (or SSL_CERT_FILE)"
        ))
    } else {
        Error::unavailable(format!("cannot reach {endpoint}: {chain}"))
    }
}

/// The messages of an error and its sources, joined.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Re-creates a pxb error carried inside an SDK error (errors are not `Clone`).
fn rebuild(e: &Error) -> Error {
    let m = e.message();
    match e {
        Error::Unauthenticated { .. } => Error::unauthenticated(m),
        Error::Unavailable { .. } => Error::unavailable(m),
        Error::Invalid { .. } => Error::invalid(m),
        Error::PermissionDenied { .. } => Error::permission_denied(m),
        Error::Throttled { .. } => Error::throttled(m),
        _ => Error::unauthenticated(e.to_string()),
    }
}
