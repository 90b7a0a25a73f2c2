//! The agent's configuration, from its environment.

use std::path::PathBuf;
use std::time::Duration;

use pxb_azure::WorkloadIdentityOptions;
use pxb_core::{Error, Result};

/// Settings of an agent.
///
/// Non-exhaustive: start from [`AgentConfig::default`] or [`AgentConfig::from_env`] and set the
/// public fields, so that settings added later do not break callers:
///
/// ```
/// use pxb_daemon::agent::AgentConfig;
///
/// let mut config = AgentConfig::default();
/// config.listen = "127.0.0.1:0".parse()?;
/// config.cluster_name = Some("prod-eu".into());
/// assert_eq!(config.namespace, "pxb-system");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// The namespace it watches (`PXB_NAMESPACE`, default `pxb-system`).
    pub namespace: String,
    /// Where the read API listens (`PXB_LISTEN`, default `0.0.0.0:8080`).
    pub listen: std::net::SocketAddr,
    /// The cluster's name, recorded in every backup (`PXB_CLUSTER_NAME`).
    pub cluster_name: Option<String>,
    /// Where restored local-path volumes are created (`PXB_RESTORE_ROOT`, default
    /// `/var/lib/pxb/restores`).
    pub restore_root: PathBuf,
    /// Workload Identity defaults for locations that do not name their own client id or tenant:
    /// `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`.
    pub workload_identity: WorkloadIdentityOptions,
    /// Extra CA certificates to trust for locations (`PXB_CA_FILE`), e.g. a private endpoint's.
    pub ca_file: Option<PathBuf>,
    /// How often a valid location is validated again (`PXB_VALIDATE_INTERVAL_SECONDS`, default 600).
    pub validate_interval: Duration,
    /// How often a valid location is verified again once it was verified (`PXB_VERIFY_INTERVAL_SECONDS`,
    /// default 86400).
    pub verify_interval: Duration,
    /// How often a running operation writes its heartbeat (at most every 15 s).
    pub heartbeat_interval: Duration,
    /// How soon a deletion whose location could not be reached is tried again.
    pub delete_retry: Duration,
    /// Deadline of each step of a validation (`PXB_STEP_TIMEOUT_SECONDS`, default 8).
    pub step_timeout: Duration,
    /// Retries of each storage request.
    pub max_retries: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            namespace: crate::crd::AGENT_NAMESPACE.into(),
            listen: std::net::SocketAddr::from(([0, 0, 0, 0], 8080)),
            cluster_name: None,
            restore_root: PathBuf::from("/var/lib/pxb/restores"),
            workload_identity: WorkloadIdentityOptions::default(),
            ca_file: None,
            validate_interval: Duration::from_secs(600),
            verify_interval: Duration::from_secs(86_400),
            heartbeat_interval: Duration::from_secs(10),
            delete_retry: Duration::from_secs(15),
            step_timeout: Duration::from_secs(8),
            max_retries: 3,
        }
    }
}

impl AgentConfig {
    /// Reads the configuration from the environment (see the fields for the variables), on top
    /// of the file `PXB_CONFIG_FILE` names, if any: `KEY=VALUE` lines with the same names
    /// (`#` starts a comment); the environment wins.
    pub fn from_env() -> Result<Self> {
        let file = match std::env::var("PXB_CONFIG_FILE")
            .ok()
            .filter(|v| !v.trim().is_empty())
        {
            None => std::collections::BTreeMap::new(),
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| Error::io(format!("reading PXB_CONFIG_FILE {path}"), e))?;
                parse_env_file(&text).map_err(|e| Error::invalid(format!("{path}: {e}")))?
            }
        };
        Self::from_lookup(|name| {
            std::env::var(name)
                .ok()
                .or_else(|| file.get(name).cloned())
                .filter(|v| !v.trim().is_empty())
        })
    }

    /// The configuration from a lookup of variables (see [`AgentConfig::from_env`]).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let seconds = |name: &str, default: Duration| -> Result<Duration> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s > 0)
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        Error::invalid(format!("{name}={v:?} is not a positive number of seconds"))
                    }),
            }
        };
        let d = Self::default();
        Ok(Self {
            namespace: var("PXB_NAMESPACE").unwrap_or(d.namespace),
            listen: match var("PXB_LISTEN") {
                None => d.listen,
                Some(v) => v
                    .parse()
                    .map_err(|e| Error::invalid(format!("PXB_LISTEN={v:?} is not an address: {e}")))?,
            },
            cluster_name: var("PXB_CLUSTER_NAME"),
            restore_root: var("PXB_RESTORE_ROOT").map_or(d.restore_root, PathBuf::from),
            workload_identity: WorkloadIdentityOptions::from_env_with(&var),
            ca_file: var("PXB_CA_FILE").map(PathBuf::from),
            validate_interval: seconds("PXB_VALIDATE_INTERVAL_SECONDS", d.validate_interval)?,
            verify_interval: seconds("PXB_VERIFY_INTERVAL_SECONDS", d.verify_interval)?,
            heartbeat_interval: d.heartbeat_interval,
            delete_retry: d.delete_retry,
            step_timeout: seconds("PXB_STEP_TIMEOUT_SECONDS", d.step_timeout)?,
            max_retries: d.max_retries,
        })
    }
}

/// Parses `KEY=VALUE` lines; blank lines and `#` comments are skipped; values may be quoted.
pub(crate) fn parse_env_file(
    text: &str,
) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected KEY=VALUE", n + 1))?;
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_come_from_variables_with_clear_errors() {
        let vars = parse_env_file(
            "# agent\nPXB_NAMESPACE=backup\nPXB_LISTEN=\"127.0.0.1:9000\"\nPXB_VALIDATE_INTERVAL_SECONDS=60\n\nAZURE_CLIENT_ID=abc\n",
        )
        .expect("parse");
        let c = AgentConfig::from_lookup(|k| vars.get(k).cloned()).expect("config");
        assert_eq!(c.namespace, "backup");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.validate_interval, Duration::from_secs(60));
        assert_eq!(c.workload_identity.client_id.as_deref(), Some("abc"));
        assert_eq!(c.step_timeout, Duration::from_secs(8), "defaults stay");

        let err = AgentConfig::from_lookup(|k| (k == "PXB_VALIDATE_INTERVAL_SECONDS").then(|| "soon".into()))
            .expect_err("bad number");
        assert!(err.to_string().contains("PXB_VALIDATE_INTERVAL_SECONDS"), "{err}");
        let err = AgentConfig::from_lookup(|k| (k == "PXB_LISTEN").then(|| "nowhere".into()))
            .expect_err("bad address");
        assert!(err.to_string().contains("PXB_LISTEN"), "{err}");
        assert!(parse_env_file("JUSTAKEY").is_err());
    }
}
