//! What the server and the agent agree on besides the custom resources: the agent's read API
//! (token header and Secret, version) and the labels and annotations on cluster objects.

/// The agent's (and the server's) version, reported by the read API and on the agent's
/// Deployment (`pxb.io/version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The header that carries the agent's API token.
pub const TOKEN_HEADER: &str = "x-pxb-agent-token";

/// The Secret (in the agent's namespace) holding the agent's API token under key `token`.
pub const TOKEN_SECRET: &str = "pxb-agent-api";

/// Annotation that drops a backup object without deleting its data.
pub const FORCE_DELETE: &str = "pxb.io/force-delete";

/// Label on everything the server creates on a cluster.
pub const MANAGED_BY: &str = "pxb.io/managed-by";

/// The value of [`MANAGED_BY`] on what the server creates.
pub const MANAGER: &str = "pxb-server";
