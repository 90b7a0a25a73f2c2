//! The default discovery source: Gardener projects ([`GardenerDiscovery`]), reached with the
//! garden credentials of the configuration (`gardenCredentials`). The rest of the server knows
//! discoveries only through [`DiscoverySource`]; this file is the one that names
//! `pxb-gardener`'s provider.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pxb_core::cluster::{ClusterDiff, ClusterProvider, Discovery, DiscoveryRequest, DiscoverySource};
use pxb_core::{Error, Result};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use tokio::sync::mpsc;

use super::config::ServerConfig;
use super::state::{ProviderCounts, Server};

/// Discoveries of Gardener projects. A request's credential names a kubeconfig file (of a
/// project service account), read at every start, so a rotated file is picked up on the next
/// attempt; starting reads the project, which proves the credential and the project's name.
#[derive(Clone, Debug, Default)]
pub struct GardenerDiscovery {
    credentials: BTreeMap<String, String>,
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
        }
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

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[async_trait]
impl DiscoverySource for GardenerDiscovery {
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
    /// The Gardener providers of the running discoveries (for metrics and benchmarks); none when
    /// the server discovers through another [`DiscoverySource`].
    pub fn providers(&self) -> Vec<Arc<GardenerProvider>> {
        self.inner
            .lock()
            .running
            .values()
            .filter_map(|d| d.as_any().downcast_ref::<GardenerRunning>())
            .map(|g| g.provider.clone())
            .collect()
    }

    /// What the providers counted (discovery cycles, kubeconfigs issued and renewed): those of
    /// the running discoveries and of the removed ones, so the totals never go down.
    pub(crate) fn provider_counts(&self) -> ProviderCounts {
        let st = self.inner.lock();
        let mut total = *self.inner.metrics.retired_providers();
        for d in st.running.values() {
            total += counts_of(d.as_ref());
        }
        total
    }
}

/// What the provider of the discovery `d` counted; nothing when it is not Gardener's.
pub(crate) fn counts_of(d: &dyn Discovery) -> ProviderCounts {
    let Some(g) = d.as_any().downcast_ref::<GardenerRunning>() else {
        return ProviderCounts::default();
    };
    let s = g.provider.stats();
    ProviderCounts {
        discoveries_ok: s.discoveries,
        discoveries_failed: s.discoveries_failed,
        // Counters of their own: `issued - renewed` read between the provider's two increments
        // would be one too low, a counter reset to Prometheus.
        issued_ok: s.first_issued,
        issued_failed: s.first_failed,
        renewed_ok: s.renewed,
        renewed_failed: s.renew_failed,
    }
}
