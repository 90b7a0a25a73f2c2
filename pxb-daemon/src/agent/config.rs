//! The agent's configuration, from its environment.

use std::path::PathBuf;
use std::time::Duration;

use pxb_azure::WorkloadIdentityOptions;
use pxb_core::{Error, Result};

/// Settings of an agent.
#[derive(Debug, Clone)]
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
    /// Reads the configuration from the environment (see the fields for the variables).
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
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
            workload_identity: WorkloadIdentityOptions {
                client_id: var("AZURE_CLIENT_ID"),
                tenant_id: var("AZURE_TENANT_ID"),
                token_file: var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from),
                authority_host: var("AZURE_AUTHORITY_HOST"),
            },
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
