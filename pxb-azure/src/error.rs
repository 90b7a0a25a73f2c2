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
            let what = format!("{status} {code} on {verb} of {target:?} in container {c:?}{detail}");
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
                (403, "AuthenticationFailed") | (400, "InvalidAuthenticationInfo") | (401, _) => {
                    Error::unauthenticated(format!(
                        "{status} on {verb}: storage account {:?} rejected the credentials of {}; {}{detail}",
                        ctx.account, ctx.identity, ctx.auth_hint
                    ))
                }
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
        ErrorKind::Credential => match find_pxb(&err) {
            Some(inner) => rebuild(inner),
            None => Error::unauthenticated(format!(
                "cannot obtain a token for {}: {}",
                ctx.identity,
                chain(&err)
            )),
        },
        ErrorKind::Io | ErrorKind::Connection => transport(&ctx.endpoint, &err),
        _ if err.to_string().contains("https") => Error::invalid(format!("{}: {err}", ctx.endpoint)),
        _ => Error::other(format!("{verb} of {target:?} in container {c:?}: {err}")).with_source(err),
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
    pxb_core::describe_chain(err)
}

/// The pxb error a token source returned, wherever the SDK's wrapping put it.
fn find_pxb(err: &azure_core::Error) -> Option<&Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<Error>() {
            return Some(found);
        }
        if let Some(found) = e.downcast_ref::<azure_core::Error>().and_then(find_pxb) {
            return Some(found);
        }
        cur = e.source();
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::StatusCode;

    fn ctx() -> Context {
        Context {
            account: "acct".into(),
            container: "backups".into(),
            endpoint: "https://acct.blob.core.windows.net".into(),
            identity: "workload identity c1 (tenant t1)".into(),
            auth_hint: "check the federated credential",
        }
    }

    fn http(status: u16, code: &str) -> azure_core::Error {
        azure_core::Error::with_message(
            ErrorKind::HttpResponse {
                status: StatusCode::from(status),
                error_code: Some(code.into()),
                raw_response: None,
            },
            "server said no",
        )
    }

    const OP: Op<'static> = Op {
        verb: "write",
        target: "pxb-probe/1",
        create_only: false,
    };

    #[test]
    fn missing_role_names_the_role_and_container() {
        let e = map(&ctx(), OP, http(403, "AuthorizationPermissionMismatch"));
        assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("403 on write")
                && m.contains("Storage Blob Data Contributor")
                && m.contains("\"backups\""),
            "{m}"
        );
        assert!(m.contains("workload identity c1"), "{m}");
    }

    #[test]
    fn status_codes_map_to_variants() {
        assert!(matches!(
            map(&ctx(), OP, http(404, "BlobNotFound")),
            Error::NotFound { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(409, "BlobAlreadyExists")),
            Error::AlreadyExists { .. }
        ));
        let create = Op {
            create_only: true,
            ..OP
        };
        assert!(matches!(
            map(&ctx(), create, http(412, "ConditionNotMet")),
            Error::AlreadyExists { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(412, "ConditionNotMet")),
            Error::Precondition { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(503, "ServerBusy")),
            Error::Throttled { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(429, "TooManyRequests")),
            Error::Throttled { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(500, "InternalError")),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(403, "AuthenticationFailed")),
            Error::Unauthenticated { .. }
        ));
        assert!(matches!(
            map(&ctx(), OP, http(416, "InvalidRange")),
            Error::Invalid { .. }
        ));
    }

    #[test]
    fn token_source_errors_come_back_unchanged() {
        let inner = Error::unauthenticated("token exchange rejected by Entra ID: AADSTS700016");
        let wrapped =
            azure_core::Error::new(ErrorKind::Credential, inner).with_context("will not be retried");
        let e = map(&ctx(), OP, wrapped);
        assert!(matches!(e, Error::Unauthenticated { .. }));
        assert_eq!(e.message(), "token exchange rejected by Entra ID: AADSTS700016");
    }
}
