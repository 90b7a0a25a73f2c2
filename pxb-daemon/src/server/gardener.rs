//! The default discovery source: Gardener projects ([`GardenerDiscovery`]), reached with the
//! garden credentials of the configuration (`gardenCredentials`). The rest of the server knows
//! discoveries only through [`DiscoverySource`]; this file is the one that names
//! `pxb-gardener`'s provider.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pxb_core::cluster::{
    ClusterDiff, ClusterProvider, Discovery, DiscoveryRequest, DiscoverySource, DiscoveryStats,
};
use pxb_core::{Clock, Error, Result, SystemClock};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use tokio::sync::mpsc;

use super::config::ServerConfig;
use super::state::Server;

/// Discoveries of Gardener projects. A request's credential names a kubeconfig file (of a
/// project service account), read at every start, so a rotated file is picked up on the next
/// attempt; starting reads the project, which proves the credential and the project's name.
/// Each discovery's provider decides when kubeconfigs expire and are renewed by the discovery's
/// clock (the system's unless [`with_clock`](Self::with_clock) says otherwise).
#[derive(Clone, Debug)]
pub struct GardenerDiscovery {
    credentials: BTreeMap<String, String>,
    clock: Arc<dyn Clock>,
}

impl Default for GardenerDiscovery {
    fn default() -> Self {
        GardenerDiscovery {
            credentials: BTreeMap::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl GardenerDiscovery {
    /// The credentials of `config.gardenCredentials`, by name.
    pub fn from_config(config: &ServerConfig) -> Self {
        GardenerDiscovery {
            credentials: config
                .garden_credentials
                .iter()
                .map(|(name, c)| (name.clone(), c.kubeconfig.clone()))
                .collect(),
            clock: Arc::new(SystemClock),
        }
    }

    /// The clock the providers read to issue, expire and renew kubeconfigs (builder style; the
    /// server passes the one given to [`ServerBuilder::clock`](super::ServerBuilder::clock)).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Adds the credential `name`: the kubeconfig file at `path` (builder style).
    pub fn with_credential(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.credentials.insert(name.into(), path.into());
        self
    }
}

/// A running Gardener discovery: the provider, and its background tasks (stopped when dropped).
#[derive(Debug)]
struct GardenerRunning {
    provider: Arc<GardenerProvider>,
    _running: pxb_gardener::Running,
}

impl Discovery for GardenerRunning {
    fn provider(&self) -> Arc<dyn ClusterProvider> {
        self.provider.clone()
    }

    fn tracked(&self) -> usize {
        self.provider.tracked()
    }

    fn stats(&self) -> DiscoveryStats {
        let s = self.provider.stats();
        let mut out = DiscoveryStats::default();
        out.cycles_ok = s.discoveries;
        out.cycles_failed = s.discoveries_failed;
        // Counters of their own: `issued - renewed` read between the provider's two increments
        // would be one too low, a counter reset to Prometheus.
        out.issued_ok = s.first_issued;
        out.issued_failed = s.first_failed;
        out.renewed_ok = s.renewed;
        out.renewed_failed = s.renew_failed;
        out
    }
}

#[async_trait]
impl DiscoverySource for GardenerDiscovery {
    /// `gardener`: the `source` of every cluster it discovers.
    fn name(&self) -> &str {
        "gardener"
    }

    async fn start(
        &self,
        request: &DiscoveryRequest,
        diffs: mpsc::UnboundedSender<ClusterDiff>,
    ) -> Result<Box<dyn Discovery>> {
        let path = self.credentials.get(&request.credential).ok_or_else(|| {
            Error::invalid(format!(
                "no garden credential named {:?} is configured on the server (gardenCredentials)",
                request.credential
            ))
        })?;
        let kubeconfig = tokio::fs::read_to_string(path).await.map_err(|e| {
            Error::io(
                format!("reading the garden credential {:?}", request.credential),
                e,
            )
        })?;
        let mut cfg = GardenerConfig::new(GardenAuth::Kubeconfig(kubeconfig), &request.project);
        cfg.discovery_interval = request.interval;
        cfg.expiration = request.access_lifetime;
        cfg.request_timeout = request.request_timeout;
        let cfg = cfg.with_clock(self.clock.clone());
        let provider = GardenerProvider::connect(cfg).await?;
        // Reading the project proves the credential and the project name.
        provider.project_namespace().await?;
        let running = provider.spawn(diffs);
        Ok(Box::new(GardenerRunning {
            provider,
            _running: running,
        }))
    }
}

impl Server {
    /// The Gardener providers of the running discoveries (for tests and benchmarks); none when
    /// the server discovers through another [`DiscoverySource`].
    pub fn providers(&self) -> Vec<Arc<GardenerProvider>> {
        self.providers_of::<GardenerProvider>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the API reports as the `source` of a discovered shoot.
    #[test]
    fn gardener_names_itself_gardener() {
        assert_eq!(GardenerDiscovery::default().name(), "gardener");
    }
}
