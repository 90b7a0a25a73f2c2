//! Discovery: one task per [`DiscoveryConfig`], whose provider's diffs onboard, change and
//! retire clusters. [`Server::check_discovery`] refuses a credential not bound to the org or
//! project, and a project another discovery already onboards. The server knows its source only
//! through [`DiscoverySource`](pxb_core::cluster::DiscoverySource): the clusters' `source` is
//! the source's name, the metrics are what its discoveries count.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pxb_core::catalog::records::{ClusterRecord, ClusterState, DiscoveryConfig};
use pxb_core::clock::rfc3339;
use pxb_core::cluster::{
    ClusterDiff, ClusterInfo, ClusterProvider, Discovery, DiscoveryRequest, Eligibility,
};
use pxb_core::{Error, Result};
use tokio::sync::mpsc;

use super::state::{DiscoveryState, DiscoveryStatus, Key, ProviderCounts, Server, Tracked};

/// The `source` of the clusters imported through the API; no discovery source may take it.
const IMPORTED: &str = "imported";

impl Server {
    pub(crate) fn start_discovery(&self, d: DiscoveryConfig) {
        // Its lines carry the org and the discovery (never the credential's content).
        let span = tracing::info_span!("discovery", org = %d.org, discovery = %d.id, project = %d.project);
        let task = self.inner.runtime.spawn(tracing::Instrument::instrument(
            self.clone().run_discovery(d),
            span,
        ));
        let mut bg = self.inner.background.lock().unwrap_or_else(|e| e.into_inner());
        bg.retain(|t| !t.is_finished());
        bg.push(task);
    }

    /// The org's discovery configurations.
    pub fn discoveries(&self, org: &str) -> Vec<DiscoveryConfig> {
        let st = self.inner.lock();
        st.discoveries
            .values()
            .filter(|d| d.org == org)
            .cloned()
            .collect()
    }

    /// Adds a discovery configuration and starts it. Idempotent: the same configuration again
    /// returns the existing one.
    ///
    /// Refused (`PermissionDenied`) when the garden credential is not bound to the org or the
    /// project (see [`GardenCredential`](super::config::GardenCredential)), or unbound and `d.provider_approved` is not
    /// set (only a provider admin may set it); refused (`AlreadyExists`) when another discovery,
    /// in any org, already onboards the project.
    pub async fn add_discovery(&self, d: DiscoveryConfig) -> Result<DiscoveryConfig> {
        let key = (d.org.clone(), d.id.clone());
        {
            let mut st = self.inner.lock();
            if let Some(existing) = st.discoveries.get(&key) {
                return if existing.project == d.project
                    && existing.credential == d.credential
                    && existing.interval_secs == d.interval_secs
                {
                    Ok(existing.clone())
                } else {
                    Err(Error::already_exists(format!("discovery {} exists", d.id)))
                };
            }
            self.check_discovery(&d, st.discoveries.values())?;
            // Reserved under the same lock as the check, so two requests cannot both pass it.
            st.discoveries.insert(key.clone(), d.clone());
        }
        if let Err(e) = self.inner.catalog.put(&d, Some(0)).await {
            self.inner.lock().discoveries.remove(&key);
            return Err(e);
        }
        self.start_discovery(d.clone());
        Ok(d)
    }

    /// Why discovery `d` may not run beside `others` (discoveries of every org that claim
    /// projects before it), if it may not: its credential does not exist or is not bound to its
    /// org and project, or one of `others` already onboards its project (a project belongs to
    /// one org).
    fn check_discovery<'a>(
        &self,
        d: &DiscoveryConfig,
        others: impl Iterator<Item = &'a DiscoveryConfig>,
    ) -> Result<()> {
        let source = self.inner.discovery.name();
        if source.is_empty() || source == IMPORTED {
            return Err(Error::precondition(format!(
                "the server's discovery source calls itself {source:?}, which cannot tell its clusters \
                 from imported ones; it needs a name of its own"
            )));
        }
        let Some(cred) = self.inner.config.garden_credentials.get(&d.credential) else {
            return Err(Error::invalid(format!(
                "no garden credential named {:?} is configured on the server (gardenCredentials)",
                d.credential
            )));
        };
        if let Some(why) = cred.refusal(&d.credential, &d.org, &d.project, d.provider_approved) {
            return Err(Error::permission_denied(why));
        }
        if let Some(owner) = others
            .filter(|o| o.project == d.project && (o.org != d.org || o.id != d.id))
            .min_by_key(|o| first_claim(o))
        {
            return Err(Error::already_exists(if owner.org == d.org {
                format!(
                    "project {} is already discovered by discovery {} of this org",
                    d.project, owner.id
                )
            } else {
                format!(
                    "project {} is already onboarded into another org; a project belongs to one org",
                    d.project
                )
            }));
        }
        Ok(())
    }

    /// Removes a discovery configuration; its clusters are retired.
    pub async fn remove_discovery(&self, org: &str, id: &str) -> Result<bool> {
        let existed = self.inner.catalog.delete::<DiscoveryConfig>(org, id).await?;
        let key = (org.to_owned(), id.to_owned());
        let now = rfc3339(self.inner.clock.now());
        let retired: Vec<ClusterRecord> = {
            let mut st = self.inner.lock();
            st.discoveries.remove(&key);
            if let Some(d) = st.running.remove(&key) {
                // Under the lock the totals are read with: they never count it twice or not at all.
                *self.inner.metrics.retired_providers() += counts_of(d.as_ref());
            }
            st.discovery_status.remove(&key);
            st.dirty = true;
            st.clusters
                .values_mut()
                .filter(|t| {
                    t.record.org == org
                        && t.record.discovery.as_deref() == Some(id)
                        && t.record.retired_at.is_none()
                })
                .map(|t| {
                    t.record.retired_at = Some(now.clone());
                    t.record.status.state = ClusterState::Retired;
                    t.provider = None;
                    t.record.clone()
                })
                .collect()
        };
        self.inner.catalog.put_all(&retired).await?;
        Ok(existed)
    }

    async fn run_discovery(self, d: DiscoveryConfig) {
        let key = (d.org.clone(), d.id.clone());
        // A stored discovery is checked again: the configuration may have changed since it was
        // created, and of two discoveries of one project (stored before projects were claimed)
        // only the first runs.
        let refused = {
            let st = self.inner.lock();
            let earlier = st
                .discoveries
                .values()
                .filter(|o| first_claim(o) < first_claim(&d));
            self.check_discovery(&d, earlier).err()
        };
        if let Some(e) = refused {
            self.inner
                .metrics
                .discovery_starts_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(org = %d.org, discovery = %d.id, error = %e, "discovery refused");
            self.set_discovery_status(&key, DiscoveryState::Failing, Some(e.to_string()));
            return;
        }
        let fleet = &self.inner.config.fleet;
        let mut request = DiscoveryRequest::new(&d.credential, &d.project);
        request.interval = Duration::from_secs(d.interval_secs.max(5));
        request.access_lifetime = Duration::from_secs(fleet.kubeconfig_lifetime_secs);
        request.request_timeout = Duration::from_millis(fleet.call_timeout_ms.max(1000) * 3);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut backoff = Duration::from_secs(1);
        self.set_discovery_status(&key, DiscoveryState::Starting, None);
        // Starting proves the credential and the project (the source reads the project).
        let running = loop {
            if !self.inner.lock().discoveries.contains_key(&key) {
                return;
            }
            match self.inner.discovery.start(&request, tx.clone()).await {
                Ok(running) => break running,
                Err(e) => {
                    self.inner
                        .metrics
                        .discovery_starts_failed
                        .fetch_add(1, Ordering::Relaxed);
                    self.set_discovery_status(&key, DiscoveryState::Failing, Some(e.to_string()));
                    tracing::warn!(org = %d.org, discovery = %d.id, error = %e, "cannot start discovery; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        };
        // Only the running discovery sends now: the stream ends when it stops.
        drop(tx);
        let provider = running.provider();
        self.inner.lock().running.insert(key.clone(), running);
        self.set_discovery_status(&key, DiscoveryState::Running, None);
        tracing::info!(org = %d.org, discovery = %d.id, project = %d.project, "discovery started");
        while let Some(diff) = rx.recv().await {
            if !self.inner.lock().discoveries.contains_key(&key) {
                return;
            }
            if let Err(e) = self.apply_diff(&d, provider.clone(), diff).await {
                tracing::warn!(org = %d.org, discovery = %d.id, error = %e, "cannot record a discovery change");
            }
        }
    }

    fn set_discovery_status(&self, key: &Key, state: DiscoveryState, message: Option<String>) {
        let mut st = self.inner.lock();
        let changed = st
            .discovery_status
            .get(key)
            .is_none_or(|s| s.state != state || s.message != message);
        if changed {
            st.discovery_status.insert(
                key.clone(),
                DiscoveryStatus {
                    state,
                    message,
                    since: rfc3339(self.inner.clock.now()),
                    shoots: 0,
                },
            );
        }
    }

    /// How the discovery `id` of `org` is doing.
    pub fn discovery_status(&self, org: &str, id: &str) -> DiscoveryStatus {
        let key = (org.to_owned(), id.to_owned());
        let st = self.inner.lock();
        let mut status = st.discovery_status.get(&key).cloned().unwrap_or_default();
        status.shoots = st.running.get(&key).map_or(0, |d| d.tracked());
        status
    }

    /// The shoots each running discovery knows now, eligible or not: (org, discovery id, count).
    pub(crate) fn discovered_shoots(&self) -> Vec<(String, String, usize)> {
        let st = self.inner.lock();
        let mut out: Vec<_> = st
            .running
            .iter()
            .map(|((org, id), d)| (org.clone(), id.clone(), d.tracked()))
            .collect();
        out.sort();
        out
    }

    /// The providers of the running discoveries that are a `P` (for tests and benchmarks of that
    /// provider); none when the server discovers through a source whose providers are not.
    pub fn providers_of<P: ClusterProvider>(&self) -> Vec<Arc<P>> {
        self.inner
            .lock()
            .running
            .values()
            .filter_map(|d| {
                let any: Arc<dyn Any + Send + Sync> = d.provider();
                any.downcast::<P>().ok()
            })
            .collect()
    }

    /// What the providers counted (discovery cycles, access issued and renewed): those of the
    /// running discoveries and of the removed ones, so the totals never go down.
    pub(crate) fn provider_counts(&self) -> ProviderCounts {
        let st = self.inner.lock();
        let mut total = *self.inner.metrics.retired_providers();
        for d in st.running.values() {
            total += counts_of(d.as_ref());
        }
        total
    }

    /// Whether a discovery of the org runs (its provider connected).
    pub fn discovery_running(&self, org: &str, id: &str) -> bool {
        self.inner
            .lock()
            .running
            .contains_key(&(org.to_owned(), id.to_owned()))
    }

    fn record_of(
        &self,
        d: &DiscoveryConfig,
        info: &ClusterInfo,
        base: Option<&ClusterRecord>,
    ) -> ClusterRecord {
        let now = rfc3339(self.inner.clock.now());
        let (ineligible, hibernated) = match &info.eligibility {
            Eligibility::Eligible => (None, false),
            Eligibility::Ineligible { reason, message } => (
                (*reason != pxb_core::cluster::IneligibleReason::Hibernated)
                    .then(|| format!("{}: {message}", reason.as_str())),
                *reason == pxb_core::cluster::IneligibleReason::Hibernated,
            ),
        };
        let mut status = base.map(|b| b.status.clone()).unwrap_or_default();
        if hibernated {
            status.state = ClusterState::Hibernated;
            status.message = Some("the shoot is hibernated".into());
        } else if let Some(why) = &ineligible {
            status.state = ClusterState::Ineligible;
            status.message = Some(why.clone());
        } else if matches!(
            status.state,
            ClusterState::Hibernated | ClusterState::Ineligible | ClusterState::Retired
        ) {
            status.state = ClusterState::Unknown;
            status.message = None;
        }
        ClusterRecord {
            org: d.org.clone(),
            id: info.id.0.clone(),
            name: info.name.clone(),
            source: self.inner.discovery.name().to_owned(),
            discovery: Some(d.id.clone()),
            namespace: Some(info.namespace.clone()),
            provider_type: info.provider_type.clone(),
            kubernetes_version: info.kubernetes_version.clone(),
            region: info.region.clone(),
            labels: info.labels.clone(),
            ineligible,
            hibernated,
            service_account_issuer: info.service_account_issuer.clone(),
            first_seen: base.map(|b| b.first_seen.clone()).unwrap_or(now),
            retired_at: None,
            sealed_kubeconfig: None,
            status,
        }
    }

    async fn apply_diff(
        &self,
        d: &DiscoveryConfig,
        provider: Arc<dyn ClusterProvider>,
        diff: ClusterDiff,
    ) -> Result<()> {
        let now = self.inner.clock.now();
        let mut writes = Vec::new();
        {
            let mut st = self.inner.lock();
            for info in diff.added.iter().chain(diff.changed.iter().map(|(_, new)| new)) {
                let key = (d.org.clone(), info.id.0.clone());
                let base = st.clusters.get(&key).map(|t| t.record.clone());
                let record = self.record_of(d, info, base.as_ref());
                if base.as_ref() != Some(&record) {
                    writes.push(record.clone());
                }
                let t = st.clusters.entry(key).or_insert_with(|| Tracked {
                    record: record.clone(),
                    provider: None,
                    next_due: now,
                    failures: 0,
                    busy: false,
                });
                t.record = record;
                t.provider = Some(provider.clone());
                t.next_due = now;
                t.failures = 0;
            }
            for info in &diff.removed {
                let key = (d.org.clone(), info.id.0.clone());
                if let Some(t) = st.clusters.get_mut(&key) {
                    t.record.retired_at = Some(rfc3339(now));
                    t.record.status.state = ClusterState::Retired;
                    t.record.status.message = Some("the shoot was deleted; its backups stay listed".into());
                    t.provider = None;
                    writes.push(t.record.clone());
                }
            }
            st.dirty = true;
        }
        self.inner.catalog.put_all(&writes).await?;
        self.inner.wake.notify_one();
        Ok(())
    }
}

/// What the discovery `d` counted, as the server's metrics sum it.
fn counts_of(d: &dyn Discovery) -> ProviderCounts {
    let s = d.stats();
    ProviderCounts {
        discoveries_ok: s.cycles_ok,
        discoveries_failed: s.cycles_failed,
        issued_ok: s.issued_ok,
        issued_failed: s.issued_failed,
        renewed_ok: s.renewed_ok,
        renewed_failed: s.renewed_failed,
    }
}

/// The order in which discoveries claim a project: the first created (then org and id) owns it.
fn first_claim(d: &DiscoveryConfig) -> (String, String, String) {
    (d.created_at.clone(), d.org.clone(), d.id.clone())
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use pxb_core::catalog::MemoryCatalog;
    use pxb_core::catalog::records::Org;
    use pxb_core::cluster::{ClusterId, DiscoverySource, DiscoveryStats, StaticClusters, StaticDiscovery};

    use super::*;
    use crate::server::ServerBuilder;
    use crate::server::config::{GardenCredential, ServerConfig};

    fn cluster(name: &str) -> ClusterInfo {
        ClusterInfo::new(ClusterId(format!("uid-{name}")), name, "dev")
            .with_provider_type("azure")
            .with_kubernetes_version("1.33.0")
            .with_region("westeurope")
    }

    /// A [`StaticDiscovery`] serving `one` and `two` as project `dev` (credential `garden`),
    /// under the name `name`, whose discoveries report `stats`.
    #[derive(Debug)]
    struct Named {
        name: &'static str,
        stats: DiscoveryStats,
        inner: StaticDiscovery,
    }

    #[derive(Debug)]
    struct Counting(Box<dyn Discovery>, DiscoveryStats);

    impl Discovery for Counting {
        fn provider(&self) -> Arc<dyn ClusterProvider> {
            self.0.provider()
        }

        fn tracked(&self) -> usize {
            self.0.tracked()
        }

        fn stats(&self) -> DiscoveryStats {
            self.1
        }
    }

    #[async_trait]
    impl DiscoverySource for Named {
        fn name(&self) -> &str {
            self.name
        }

        async fn start(
            &self,
            request: &DiscoveryRequest,
            diffs: mpsc::UnboundedSender<ClusterDiff>,
        ) -> Result<Box<dyn Discovery>> {
            Ok(Box::new(Counting(
                self.inner.start(request, diffs).await?,
                self.stats,
            )))
        }
    }

    fn named(name: &'static str, stats: DiscoveryStats) -> Named {
        let inner = StaticDiscovery::new();
        let clusters = inner.insert("garden", "dev", Arc::new(StaticClusters::new()));
        clusters.insert(cluster("one"), None);
        clusters.insert(cluster("two"), None);
        Named { name, stats, inner }
    }

    /// A server over `source` with the org `acme`, which may discover `dev` with `garden`.
    async fn server(source: Named) -> Server {
        let mut config = ServerConfig::default();
        config.api.listen = "127.0.0.1:0".into();
        config.garden_credentials.insert(
            "garden".into(),
            GardenCredential::new("unused")
                .for_orgs(["acme"])
                .for_projects(["dev"]),
        );
        let built = ServerBuilder::new(config)
            .cluster_provider(Arc::new(source))
            .catalog(Arc::new(MemoryCatalog::new()))
            .build()
            .await
            .expect("build");
        let server = built.server().clone();
        server
            .create_org(Org {
                id: "acme".into(),
                ..Org::default()
            })
            .await
            .expect("org");
        server
    }

    fn dev() -> DiscoveryConfig {
        DiscoveryConfig {
            org: "acme".into(),
            id: "dev".into(),
            project: "dev".into(),
            credential: "garden".into(),
            interval_secs: 60,
            created_at: "2026-01-01T00:00:00Z".into(),
            provider_approved: false,
        }
    }

    /// The clusters of `acme` once `n` are known.
    async fn clusters(server: &Server, n: usize) -> Vec<ClusterRecord> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = server.clusters("acme");
            if found.len() == n {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not discovered: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The clusters' `source` is the name of the source that found them, and the metrics sum
    /// what its discoveries count, running and removed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clusters_carry_the_sources_name_and_metrics_its_counts() {
        let mut stats = DiscoveryStats::default();
        stats.cycles_ok = 7;
        stats.cycles_failed = 1;
        stats.issued_ok = 5;
        stats.renewed_failed = 2;
        let server = server(named("file-list", stats)).await;
        server.add_discovery(dev()).await.expect("discovery");
        let found = clusters(&server, 2).await;
        assert_eq!(
            found
                .iter()
                .map(|c| (c.name.as_str(), c.source.as_str()))
                .collect::<Vec<_>>(),
            [("one", "file-list"), ("two", "file-list")]
        );
        let counts = server.provider_counts();
        assert_eq!(
            (counts.discoveries_ok, counts.discoveries_failed, counts.issued_ok),
            (7, 1, 5)
        );
        assert_eq!(
            (counts.renewed_ok, counts.renewed_failed, counts.issued_failed),
            (0, 2, 0)
        );
        assert!(server.providers_of::<StaticClusters>().len() == 1);
        assert!(server.providers().is_empty(), "no Gardener provider");
        // A removed discovery's counts stay in the totals.
        assert!(server.remove_discovery("acme", "dev").await.expect("remove"));
        assert!(server.providers_of::<StaticClusters>().is_empty());
        assert_eq!(server.provider_counts().discoveries_ok, 7);
    }

    /// A source that calls itself `imported` (or nothing) would make its clusters look imported:
    /// the server refuses to discover through it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_named_like_imported_clusters_is_refused() {
        for name in ["imported", ""] {
            let server = server(named(name, DiscoveryStats::default())).await;
            let err = server.add_discovery(dev()).await.expect_err("refused");
            assert!(matches!(err, Error::Precondition { .. }), "{err}");
            assert!(err.to_string().contains("calls itself"), "{err}");
            assert!(server.clusters("acme").is_empty());
        }
    }
}
