//! Pages of lists and the query parameters lists share.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::MAX_PAGE;

/// Paging and filters shared by lists.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    /// Page size, 1 to 1000 (default 100; larger values are clamped to 1000).
    pub limit: Option<u64>,
    /// The `next` cursor of the previous page.
    pub after: Option<String>,
    /// Only items of this cluster (id, or name where the list says so).
    pub cluster: Option<String>,
    /// Only items of this location (name).
    pub location: Option<String>,
    /// Only items in this state or phase.
    pub state: Option<String>,
    /// Only items of this org (fleet status).
    pub org: Option<String>,
    /// Only items created at or after this time (RFC 3339).
    pub from: Option<String>,
    /// Only items created before this time (RFC 3339).
    pub to: Option<String>,
    /// Backups: only those created in the last `1h`, `24h`, `7d` or `30d`; `session` uses the
    /// caller's time bracket preference of this sign-in session. `from`/`to` narrow it further.
    pub bracket: Option<String>,
    /// Backups: only those covering this namespace.
    pub namespace: Option<String>,
    /// Backups: `namespaces` or `vms` (those holding KubeVirt virtual machines); `session` uses
    /// the caller's stored tab.
    pub view: Option<String>,
}

impl ListQuery {
    /// The page size asked for, clamped to 1..=1000.
    pub fn page_size(&self) -> usize {
        self.limit.unwrap_or(100).clamp(1, MAX_PAGE as u64) as usize
    }
}

/// A page of items.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct List<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}
