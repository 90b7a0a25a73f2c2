//! The caller: who they are and their preferences.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::catalog::records::Role;

/// The identity of the caller.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WhoAmI {
    /// Subject.
    pub subject: String,
    /// Name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Administers every org.
    pub provider_admin: bool,
    /// Role per visible org.
    pub orgs: BTreeMap<String, Role>,
}

/// Which kind of backups a view shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tab {
    /// Namespace backups (the default).
    #[default]
    Namespaces,
    /// Virtual-machine backups (KubeVirt `VirtualMachine`s).
    Vms,
}

/// A time bracket for lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeBracket {
    /// `1h`, `24h` (the default), `7d`, `30d` or `custom`.
    #[schemars(extend("enum" = ["1h", "24h", "7d", "30d", "custom"]))]
    pub kind: String,
    /// Custom: from (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Custom: to (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl Default for TimeBracket {
    fn default() -> Self {
        TimeBracket {
            kind: "24h".into(),
            from: None,
            to: None,
        }
    }
}

/// The caller's preferences: the tab is stored per user and survives new logins; the time bracket
/// lasts for the sign-in session and is "last 24 hours" in a new one.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferencesView {
    /// Namespace or VM backups.
    pub tab: Tab,
    /// The time bracket of this session.
    pub time_bracket: TimeBracket,
}

/// Changes to the caller's preferences; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdatePreferences {
    /// Namespace or VM backups.
    #[serde(default)]
    pub tab: Option<Tab>,
    /// The time bracket for this session.
    #[serde(default)]
    pub time_bracket: Option<TimeBracket>,
}
