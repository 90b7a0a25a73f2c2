//! [`ServerConfig`]: the settings of `pxb-server`, from a YAML file with `PXB_…` environment
//! overrides.
//!
//! Every key can be overridden by an environment variable named `PXB_` followed by the key's path
//! in upper snake case: `api.listen` → `PXB_API_LISTEN`, `fleet.leaseSecs` → `PXB_FLEET_LEASE_SECS`.
//! The value is read as YAML, so `PXB_AUTH_OIDC_AUDIENCES='[a, b]'` sets a list.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use pxb_core::{Error, Result};

/// The commented default configuration `pxb-server --print-default-config` prints. A test checks
/// it parses to [`ServerConfig::default`].
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default-config.yaml");

/// All settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The REST API.
    pub api: ApiConfig,
    /// The catalog database.
    pub catalog: CatalogConfig,
    /// Login.
    pub auth: AuthConfig,
    /// Encryption of classic-mode secrets.
    pub secrets: SecretsConfig,
    /// How the server works the fleet.
    pub fleet: FleetConfig,
    /// Garden credentials discovery configurations may use, by name: a path to a kubeconfig file
    /// (a mounted Secret). Orgs refer to them by name; they never see the file.
    pub garden_credentials: BTreeMap<String, String>,
}

/// The REST API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds to let requests in flight finish on shutdown.
    pub shutdown_grace_secs: u64,
}

/// The catalog database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CatalogConfig {
    /// The SQLite file.
    pub path: String,
}

/// Login with Entra ID (OIDC) and provider-wide roles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The OIDC issuer, e.g. `https://login.microsoftonline.com/<tenant>/v2.0`; empty disables
    /// bearer-token login (then only `--dev-token` works).
    pub issuer: String,
    /// Accepted audiences (the API's application id URI or client id).
    pub audiences: Vec<String>,
    /// A PEM file with an extra CA to trust for the issuer.
    pub issuer_ca_file: String,
    /// Token groups whose members administer the whole provider (every org).
    pub provider_admin_groups: Vec<String>,
    /// App roles that administer the whole provider.
    pub provider_admin_roles: Vec<String>,
}

/// Encryption of classic-mode secrets at rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// A file holding a 32-byte key, base64. Alternatively set `PXB_SECRETS_KEY` to the key
    /// itself. Without a key, classic locations and imported clusters are refused.
    pub key_file: String,
}

/// How the server works the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Clusters worked on at once.
    pub concurrency: usize,
    /// Deadline of each call to a cluster, in milliseconds.
    pub call_timeout_ms: u64,
    /// Seconds between visits of a reachable cluster.
    pub resync_secs: u64,
    /// First delay before visiting an unreachable cluster again; doubles per failure.
    pub offline_backoff_secs: u64,
    /// Longest delay for an unreachable cluster.
    pub offline_backoff_max_secs: u64,
    /// A sync or validation request without a heartbeat for this long turns `Stalled`.
    pub lease_secs: u64,
    /// Agents older than this are `AgentOutdated`.
    pub min_agent_version: String,
    /// Install the agent (CRDs and manifests) on eligible clusters that lack it.
    pub install_agent: bool,
    /// The agent image zero-touch install deploys.
    pub agent_image: String,
    /// Lifetime of the shoot kubeconfigs requested from the garden, in seconds.
    pub kubeconfig_lifetime_secs: u64,
    /// How often the fleet-status snapshot is rebuilt, in milliseconds.
    pub snapshot_interval_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            shutdown_grace_secs: 10,
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            path: "/var/lib/pxb/catalog.db".into(),
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            concurrency: 256,
            call_timeout_ms: 5000,
            resync_secs: 30,
            offline_backoff_secs: 15,
            offline_backoff_max_secs: 300,
            lease_secs: 120,
            min_agent_version: crate::agent::api::VERSION.into(),
            install_agent: false,
            agent_image: format!("pxb-agent:{}", crate::agent::api::VERSION),
            kubeconfig_lifetime_secs: 3600,
            snapshot_interval_ms: 200,
        }
    }
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Applies `PXB_…` overrides from `var` to every key of `value` below `prefix`.
fn apply_env(
    value: &mut serde_json::Value,
    prefix: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    let serde_json::Value::Object(map) = value else {
        return Ok(());
    };
    for (key, v) in map.iter_mut() {
        let name = format!("{prefix}_{}", upper_snake(key));
        if let Some(raw) = var(&name) {
            let parsed: serde_json::Value = serde_saphyr::from_str(&raw)
                .map_err(|e| Error::invalid(format!("environment variable {name}: {e}")))?;
            // A plain scalar that YAML read as a number or bool stays a string where a string is due.
            *v = match (&*v, parsed) {
                (serde_json::Value::String(_), p) if !p.is_string() => serde_json::Value::String(raw),
                (_, p) => p,
            };
        }
        apply_env(v, &name, var)?;
    }
    Ok(())
}

impl ServerConfig {
    /// Reads `path` (YAML; missing keys take their defaults, unknown keys are errors) and applies
    /// the environment overrides of `var`.
    pub fn load(path: Option<&Path>, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let base = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("reading the configuration {}", p.display()), e))?;
                Self::from_yaml(&text).map_err(|e| {
                    Error::invalid(format!("the configuration {} is not valid: {e}", p.display()))
                })?
            }
            None => ServerConfig::default(),
        };
        let mut value = serde_json::to_value(&base).map_err(|e| Error::other(e.to_string()))?;
        apply_env(&mut value, "PXB", &var)?;
        let config: ServerConfig = serde_json::from_value(value)
            .map_err(|e| Error::invalid(format!("the configuration after PXB_ overrides: {e}")))?;
        config.check()?;
        Ok(config)
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(ServerConfig::default());
        }
        serde_saphyr::from_str(text).map_err(|e| Error::invalid(e.to_string()))
    }

    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<()> {
        let f = &self.fleet;
        if f.concurrency == 0 {
            return Err(Error::invalid("fleet.concurrency must be at least 1"));
        }
        if f.call_timeout_ms == 0 || f.resync_secs == 0 || f.lease_secs == 0 {
            return Err(Error::invalid(
                "fleet.callTimeoutMs, fleet.resyncSecs and fleet.leaseSecs must be positive",
            ));
        }
        semver::Version::parse(&f.min_agent_version).map_err(|e| {
            Error::invalid(format!(
                "fleet.minAgentVersion {:?} is not a version: {e}",
                f.min_agent_version
            ))
        })?;
        if !self.auth.issuer.is_empty() && self.auth.audiences.is_empty() {
            return Err(Error::invalid(
                "auth.audiences must name at least one audience when auth.issuer is set",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_config_is_the_default() {
        let parsed = ServerConfig::from_yaml(DEFAULT_CONFIG_YAML).expect("default config parses");
        assert_eq!(parsed, ServerConfig::default());
        assert!(
            DEFAULT_CONFIG_YAML
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 10
        );
    }

    #[test]
    fn environment_overrides_every_level() {
        let env: BTreeMap<&str, &str> = [
            ("PXB_API_LISTEN", "127.0.0.1:9999"),
            ("PXB_FLEET_LEASE_SECS", "7"),
            ("PXB_AUTH_AUDIENCES", "[a, b]"),
            ("PXB_AUTH_ISSUER", "https://issuer.test"),
            ("PXB_GARDEN_CREDENTIALS", "{dev: /etc/garden/dev}"),
            ("PXB_FLEET_MIN_AGENT_VERSION", "1"),
        ]
        .into_iter()
        .collect();
        let err = ServerConfig::load(None, |k| env.get(k).map(|v| v.to_string())).expect_err("bad version");
        assert!(err.to_string().contains("minAgentVersion"), "{err}");
        let c = ServerConfig::load(None, |k| {
            (k != "PXB_FLEET_MIN_AGENT_VERSION")
                .then(|| env.get(k).map(|v| v.to_string()))
                .flatten()
        })
        .expect("load");
        assert_eq!(c.api.listen, "127.0.0.1:9999");
        assert_eq!(c.fleet.lease_secs, 7);
        assert_eq!(c.auth.audiences, vec!["a", "b"]);
        assert_eq!(
            c.garden_credentials.get("dev").map(String::as_str),
            Some("/etc/garden/dev")
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let err = ServerConfig::from_yaml("api:\n  lisen: x\n").expect_err("typo");
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = ServerConfig::load(None, |k| (k == "PXB_FLEET_CONCURRENCY").then(|| "lots".into()))
            .expect_err("bad number");
        assert!(
            err.to_string().contains("concurrency") || err.to_string().contains("invalid"),
            "{err}"
        );
        let err = ServerConfig::from_yaml("fleet: {concurrency: 0}")
            .and_then(|c| c.check())
            .expect_err("zero");
        assert!(err.to_string().contains("concurrency"), "{err}");
    }
}
