//! Kube client errors as [`pxb_core::Error`]s: the one mapping the agent and the server use.
//!
//! It lives here, not in `pxb-core` (which has `kube-core` only and would need the kube client for
//! [`kube::Error`]) and not only in `pxb-gardener`, so that the agent, which talks to its own
//! cluster and never to a garden, links no Gardener provider. `pxb-gardener` keeps the same
//! mapping for itself (`pxb_gardener::map_kube_error`); a test here keeps the two equal.

use pxb_core::Error;

/// Maps a kube client error onto pxb's error variants, keeping the API server's message and
/// naming what was being done.
pub(crate) fn map_kube_error(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(status) => {
            let msg = format!("{what}: {} ({} {})", status.message, status.code, status.reason);
            match status.code {
                404 => Error::not_found(msg),
                409 if status.reason == "AlreadyExists" => Error::already_exists(msg),
                409 => Error::precondition(msg),
                400 | 422 => Error::invalid(msg),
                401 => Error::unauthenticated(msg),
                403 => Error::permission_denied(msg),
                429 => Error::throttled(msg),
                _ => Error::unavailable(msg),
            }
        }
        other => Error::unavailable(format!("{what}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// API errors (code, reason) and what each maps to.
    const CASES: [(u16, &str, &str); 11] = [
        (404, "NotFound", "not_found"),
        (409, "AlreadyExists", "already_exists"),
        (409, "Conflict", "precondition"),
        (400, "BadRequest", "invalid"),
        (422, "Invalid", "invalid"),
        (401, "Unauthorized", "unauthenticated"),
        (403, "Forbidden", "permission_denied"),
        (429, "TooManyRequests", "throttled"),
        (500, "InternalError", "unavailable"),
        (503, "ServiceUnavailable", "unavailable"),
        (410, "Expired", "unavailable"),
    ];

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: format!("the server said {code}"),
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn api_errors_map_by_code_and_keep_the_servers_message() {
        for (code, reason, kind) in CASES {
            let e = map_kube_error("reading claim ns/data", api_error(code, reason));
            assert_eq!(e.kind(), kind, "{code} {reason}");
            assert!(
                e.to_string().ends_with(&format!(
                    "reading claim ns/data: the server said {code} ({code} {reason})"
                )),
                "{code} {reason}: {e}"
            );
        }
        let e = map_kube_error("listing pods", kube::Error::TlsRequired);
        assert_eq!(e.kind(), "unavailable");
        assert!(e.to_string().starts_with("unavailable: listing pods: "), "{e}");
    }

    /// The same mapping as `pxb-gardener`'s, kind and message (the server links both).
    #[cfg(feature = "server")]
    #[test]
    fn the_mapping_is_pxb_gardeners() {
        let others: [fn() -> kube::Error; 2] = [
            || kube::Error::TlsRequired,
            || kube::Error::LinesCodecMaxLineLengthExceeded,
        ];
        for (code, reason, _) in CASES {
            let ours = map_kube_error("x", api_error(code, reason));
            let theirs = pxb_gardener::map_kube_error("x", api_error(code, reason));
            assert_eq!(
                (ours.kind(), ours.to_string()),
                (theirs.kind(), theirs.to_string())
            );
        }
        for e in others {
            let (ours, theirs) = (map_kube_error("x", e()), pxb_gardener::map_kube_error("x", e()));
            assert_eq!(
                (ours.kind(), ours.to_string()),
                (theirs.kind(), theirs.to_string())
            );
        }
    }
}
