//! The `ClusterProvider` seam: where clusters come from and how pxb gets short-lived access to
//! them. `pxb-gardener` implements it over the Gardener API; [`StaticClusters`] is the in-memory
//! twin for tests; [`conformance`] is the suite every implementation runs.
//!
//! The [`DiscoverySource`] seam starts one discovery per configured project and credential: a
//! [`Discovery`] that sends each change as a [`ClusterDiff`] and hands out its clusters' provider.
//! `pxb-server` starts its discoveries through it, with Gardener as the default, and records
//! each cluster as coming from the source's [`name`](DiscoverySource::name);
//! [`StaticDiscovery`] is the twin over [`StaticClusters`].

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{Error, Result};

/// The stable identity of a cluster (for Gardener: the shoot's `status.uid`). A cluster that is
/// deleted and re-created under the same name gets a new identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterId(pub String);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a discovered cluster is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum IneligibleReason {
    /// Not on the supported infrastructure provider.
    ProviderType,
    /// Kubernetes below the supported floor.
    KubernetesVersion,
    /// Hibernated: its API server is down.
    Hibernated,
    /// Being deleted.
    Deleting,
    /// Not reconciled yet (being created, or its first reconcile has not finished).
    NotReconciled,
    /// Its description is incomplete or unreadable.
    Malformed,
}

impl IneligibleReason {
    /// A short stable name, e.g. `kubernetesVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            IneligibleReason::ProviderType => "providerType",
            IneligibleReason::KubernetesVersion => "kubernetesVersion",
            IneligibleReason::Hibernated => "hibernated",
            IneligibleReason::Deleting => "deleting",
            IneligibleReason::NotReconciled => "notReconciled",
            IneligibleReason::Malformed => "malformed",
        }
    }
}

/// Whether pxb serves a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Eligibility {
    /// Served.
    Eligible,
    /// Not served, with the reason and a message for humans.
    Ineligible {
        /// Why.
        reason: IneligibleReason,
        /// Details, e.g. `Kubernetes 1.29.8 is below the supported 1.30`.
        message: String,
    },
}

impl Eligibility {
    /// Whether the cluster is served.
    pub fn is_eligible(&self) -> bool {
        matches!(self, Eligibility::Eligible)
    }
}

/// A discovered cluster.
///
/// Non-exhaustive: build one with [`ClusterInfo::new`] and the `with_…` setters (or set the
/// public fields), so that fields added later do not break providers.
///
/// ```
/// use pxb_core::cluster::{ClusterId, ClusterInfo, Eligibility, IneligibleReason};
///
/// let info = ClusterInfo::new(ClusterId("uid-prod-eu".into()), "prod-eu", "garden-dev")
///     .with_provider_type("azure")
///     .with_kubernetes_version("1.33.4")
///     .with_region("westeurope")
///     .with_labels([("team", "shop")])
///     .with_eligibility(Eligibility::Ineligible {
///         reason: IneligibleReason::Hibernated,
///         message: "hibernated".into(),
///     });
/// assert_eq!(info.labels["team"], "shop");
/// assert_eq!(info.service_account_issuer, None);
/// assert!(!info.eligibility.is_eligible());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ClusterInfo {
    /// Stable identity.
    pub id: ClusterId,
    /// Name (for Gardener: the shoot name).
    pub name: String,
    /// Where it is listed (for Gardener: the project namespace).
    pub namespace: String,
    /// Infrastructure provider type, e.g. `azure`.
    pub provider_type: String,
    /// Kubernetes version as reported.
    pub kubernetes_version: String,
    /// Region.
    pub region: String,
    /// Labels of the cluster object.
    pub labels: BTreeMap<String, String>,
    /// The URL of the service-account issuer that a cloud identity (an Entra federated credential)
    /// can trust, when the cluster publishes one (for Gardener: the managed issuer of a shoot
    /// annotated `authentication.gardener.cloud/issuer=managed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_issuer: Option<String>,
    /// Whether it is served.
    pub eligibility: Eligibility,
}

impl ClusterInfo {
    /// The cluster `id`, named `name` and listed in `namespace`: no provider type, Kubernetes
    /// version, region, labels or service-account issuer, and [`Eligibility::Eligible`] (a
    /// provider that does not serve it says so with [`with_eligibility`](Self::with_eligibility)).
    pub fn new(id: ClusterId, name: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            namespace: namespace.into(),
            provider_type: String::new(),
            kubernetes_version: String::new(),
            region: String::new(),
            labels: BTreeMap::new(),
            service_account_issuer: None,
            eligibility: Eligibility::Eligible,
        }
    }

    /// Sets the infrastructure [`provider_type`](Self::provider_type), e.g. `azure`.
    pub fn with_provider_type(mut self, provider_type: impl Into<String>) -> Self {
        self.provider_type = provider_type.into();
        self
    }

    /// Sets the [`kubernetes_version`](Self::kubernetes_version) as reported.
    pub fn with_kubernetes_version(mut self, version: impl Into<String>) -> Self {
        self.kubernetes_version = version.into();
        self
    }

    /// Sets the [`region`](Self::region).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    /// Sets the [`labels`](Self::labels) (replacing any set before).
    pub fn with_labels<K: Into<String>, V: Into<String>>(
        mut self,
        labels: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.labels = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        self
    }

    /// Sets the URL of the [`service_account_issuer`](Self::service_account_issuer) a cloud
    /// identity can trust.
    pub fn with_service_account_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.service_account_issuer = Some(issuer.into());
        self
    }

    /// Sets whether it is served ([`eligibility`](Self::eligibility)).
    pub fn with_eligibility(mut self, eligibility: Eligibility) -> Self {
        self.eligibility = eligibility;
        self
    }
}

/// What changed between two discovery results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterDiff {
    /// New clusters.
    pub added: Vec<ClusterInfo>,
    /// Clusters that are gone.
    pub removed: Vec<ClusterInfo>,
    /// Clusters whose description changed: `(before, after)`.
    pub changed: Vec<(ClusterInfo, ClusterInfo)>,
}

impl ClusterDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// The difference from `before` to `after`, in identity order.
    pub fn between(
        before: &BTreeMap<ClusterId, ClusterInfo>,
        after: &BTreeMap<ClusterId, ClusterInfo>,
    ) -> Self {
        let mut diff = ClusterDiff::default();
        for (id, new) in after {
            match before.get(id) {
                None => diff.added.push(new.clone()),
                Some(old) if old != new => diff.changed.push((old.clone(), new.clone())),
                Some(_) => {}
            }
        }
        for (id, old) in before {
            if !after.contains_key(id) {
                diff.removed.push(old.clone());
            }
        }
        diff
    }
}

/// Short-lived access to a cluster's API server. Secret material is redacted in `Debug` and never
/// serialized.
#[derive(Clone)]
pub struct ClusterAccess {
    /// API server URL.
    pub server: String,
    /// CA certificate of the API server, PEM.
    pub ca_pem: String,
    /// Client certificate, PEM.
    pub client_cert_pem: String,
    /// Client private key, PEM.
    pub client_key_pem: String,
    /// When it was issued.
    pub issued_at: SystemTime,
    /// When it stops working (as the issuer reported it).
    pub expires_at: SystemTime,
}

impl fmt::Debug for ClusterAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterAccess")
            .field("server", &self.server)
            .field("expires_at", &self.expires_at)
            .field("client_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterAccess {
    /// Whether it is still valid at `now` with `margin` to spare.
    pub fn valid_at(&self, now: SystemTime, margin: Duration) -> bool {
        now + margin < self.expires_at
    }

    /// Its total lifetime.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.issued_at)
            .unwrap_or(Duration::ZERO)
    }
}

/// The state of a cluster's credential, for status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum CredentialState {
    /// None was requested yet.
    Missing,
    /// Valid; renewal is scheduled.
    Fresh {
        /// Expiry.
        expires_at: SystemTime,
        /// When renewal is due.
        renew_at: SystemTime,
    },
    /// Being renewed; the current one (if any) is still valid.
    Renewing {
        /// Expiry of the current one.
        expires_at: Option<SystemTime>,
    },
    /// Expired and not renewed.
    Expired {
        /// When it expired.
        since: SystemTime,
    },
    /// Issuing failed; retried with backoff.
    Failing {
        /// The last error.
        reason: String,
        /// Consecutive failures.
        attempts: u32,
        /// Expiry of the current one, if one is still valid.
        expires_at: Option<SystemTime>,
        /// Next attempt.
        retry_at: SystemTime,
    },
}

/// Discovers clusters and issues short-lived access to them.
///
/// `Any` lets a caller that knows the implementation get it back from an
/// `Arc<dyn ClusterProvider>` (upcast to `Arc<dyn Any + Send + Sync>`, then
/// [`downcast`](Arc::downcast)), for statistics and benchmarks of that implementation.
#[async_trait]
pub trait ClusterProvider: Any + Send + Sync + fmt::Debug {
    /// One full discovery: every cluster the provider sees, classified, in identity order.
    async fn discover(&self) -> Result<Vec<ClusterInfo>>;

    /// Valid access to an eligible cluster: a cached credential while it is fresh, otherwise a new
    /// one. Never returns an expired credential. [`Error::NotFound`] for an unknown cluster,
    /// [`Error::Precondition`] for an ineligible one.
    async fn access(&self, id: &ClusterId) -> Result<ClusterAccess>;

    /// The state of the credential of `id`.
    fn credential_state(&self, id: &ClusterId) -> CredentialState;

    /// The cluster refused `access` (HTTP 401) although it had not expired: its CA was rotated,
    /// or the credential was revoked. A provider that issues credentials drops that one, so the
    /// next [`access`](Self::access) issues a new one instead of handing out the refused one
    /// until its renewal is due; a credential issued meanwhile is kept. The default does nothing
    /// (fixed access cannot be renewed).
    fn refused(&self, id: &ClusterId, access: &ClusterAccess) {
        let _ = (id, access);
    }
}

/// The in-memory twin: a fixed set of clusters with fixed access, for tests.
#[derive(Debug, Default)]
pub struct StaticClusters {
    clusters: Mutex<BTreeMap<ClusterId, (ClusterInfo, Option<ClusterAccess>)>>,
}

impl StaticClusters {
    /// An empty provider.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a cluster, with the access it hands out.
    pub fn insert(&self, info: ClusterInfo, access: Option<ClusterAccess>) {
        self.clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.id.clone(), (info, access));
    }

    /// Removes a cluster.
    pub fn remove(&self, id: &ClusterId) {
        self.clusters.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

#[async_trait]
impl ClusterProvider for StaticClusters {
    async fn discover(&self) -> Result<Vec<ClusterInfo>> {
        Ok(self
            .clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(i, _)| i.clone())
            .collect())
    }

    async fn access(&self, id: &ClusterId) -> Result<ClusterAccess> {
        let map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let (info, access) = map
            .get(id)
            .ok_or_else(|| Error::not_found(format!("no cluster {id}")))?;
        if let Eligibility::Ineligible { message, .. } = &info.eligibility {
            return Err(Error::precondition(format!(
                "cluster {} is not eligible: {message}",
                info.name
            )));
        }
        match access {
            Some(a) if a.valid_at(SystemTime::now(), Duration::ZERO) => Ok(a.clone()),
            Some(_) => Err(Error::unauthenticated(format!(
                "the credential of cluster {} expired",
                info.name
            ))),
            None => Err(Error::unavailable(format!(
                "no access configured for cluster {}",
                info.name
            ))),
        }
    }

    fn credential_state(&self, id: &ClusterId) -> CredentialState {
        let map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id).and_then(|(_, a)| a.as_ref()) {
            None => CredentialState::Missing,
            Some(a) if a.valid_at(SystemTime::now(), Duration::ZERO) => CredentialState::Fresh {
                expires_at: a.expires_at,
                renew_at: a.expires_at,
            },
            Some(a) => CredentialState::Expired { since: a.expires_at },
        }
    }
}

/// What a discovery watches: a project, reached with a named credential, and how it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryRequest {
    /// The credential's name, as the caller's configuration names it (never the secret itself).
    pub credential: String,
    /// The project (for Gardener: the project name) whose clusters are discovered.
    pub project: String,
    /// Between full discovery cycles.
    pub interval: Duration,
    /// How long issued cluster access should be valid.
    pub access_lifetime: Duration,
    /// The deadline of each request to the provider's API.
    pub request_timeout: Duration,
}

impl DiscoveryRequest {
    /// `project` with `credential`: a full cycle every minute, access for an hour, 10 s per
    /// request.
    pub fn new(credential: impl Into<String>, project: impl Into<String>) -> Self {
        DiscoveryRequest {
            credential: credential.into(),
            project: project.into(),
            interval: Duration::from_secs(60),
            access_lifetime: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// A running discovery. It stops (its watches, its credential renewals) when dropped.
pub trait Discovery: Send + Sync + fmt::Debug {
    /// The provider of the clusters it found: access to them, their credentials' state.
    fn provider(&self) -> Arc<dyn ClusterProvider>;

    /// How many clusters it knows now, eligible or not.
    fn tracked(&self) -> usize;

    /// What it counted since it started, for metrics. The default counts nothing.
    fn stats(&self) -> DiscoveryStats {
        DiscoveryStats::default()
    }
}

/// What a running [`Discovery`] counted since it started: its full discovery cycles and the
/// access it issued. A source that does not count something leaves it at zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStats {
    /// Full discovery cycles that listed the project.
    pub cycles_ok: u64,
    /// Full discovery cycles that failed.
    pub cycles_failed: u64,
    /// First access issued for a cluster (renewals not included).
    pub issued_ok: u64,
    /// First access requests that failed.
    pub issued_failed: u64,
    /// Access renewed (replacing one held).
    pub renewed_ok: u64,
    /// Renewals that failed.
    pub renewed_failed: u64,
}

/// Where discoveries come from: given a request naming a credential and a project, a running
/// [`Discovery`] of that project's clusters.
#[async_trait]
pub trait DiscoverySource: Send + Sync + fmt::Debug {
    /// The source's name: short, stable and lowercase (`gardener` for Gardener projects,
    /// `static` for [`StaticDiscovery`]). `pxb-server` records it as the `source` of every
    /// cluster the source discovers, so it is part of the API's output. `imported` is taken: it
    /// marks the clusters imported through the API, and the server refuses to discover through
    /// a source that calls itself so.
    fn name(&self) -> &str;

    /// Connects to `request.project` with `request.credential` and proves both: an unknown or
    /// refused credential and a missing project are errors (callers retry with backoff). Then
    /// discovers until the returned [`Discovery`] is dropped, sending every non-empty change to
    /// `diffs`; the first change adds every cluster found.
    async fn start(
        &self,
        request: &DiscoveryRequest,
        diffs: mpsc::UnboundedSender<ClusterDiff>,
    ) -> Result<Box<dyn Discovery>>;
}

/// The in-memory twin of [`DiscoverySource`], for tests: one [`StaticClusters`] per (credential,
/// project). A discovery sends what its clusters hold at start, then every change found by
/// polling them once per `request.interval`.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    projects: Mutex<BTreeMap<(String, String), Arc<StaticClusters>>>,
}

impl StaticDiscovery {
    /// No projects.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `clusters` as `project` to discoveries with `credential`; returns them, to change.
    pub fn insert(
        &self,
        credential: impl Into<String>,
        project: impl Into<String>,
        clusters: Arc<StaticClusters>,
    ) -> Arc<StaticClusters> {
        self.projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((credential.into(), project.into()), clusters.clone());
        clusters
    }
}

#[derive(Debug)]
struct StaticRunning {
    clusters: Arc<StaticClusters>,
    known: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StaticRunning {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discovery for StaticRunning {
    fn provider(&self) -> Arc<dyn ClusterProvider> {
        self.clusters.clone()
    }

    fn tracked(&self) -> usize {
        self.known.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl DiscoverySource for StaticDiscovery {
    fn name(&self) -> &str {
        "static"
    }

    async fn start(
        &self,
        request: &DiscoveryRequest,
        diffs: mpsc::UnboundedSender<ClusterDiff>,
    ) -> Result<Box<dyn Discovery>> {
        let key = (request.credential.clone(), request.project.clone());
        let clusters = self
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned()
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no project {} for credential {}",
                    request.project, request.credential
                ))
            })?;
        let by_id = |v: Vec<ClusterInfo>| -> BTreeMap<ClusterId, ClusterInfo> {
            v.into_iter().map(|c| (c.id.clone(), c)).collect()
        };
        let mut known = by_id(clusters.discover().await?);
        let count = Arc::new(AtomicUsize::new(known.len()));
        let first = ClusterDiff::between(&BTreeMap::new(), &known);
        if !first.is_empty() {
            let _ = diffs.send(first);
        }
        let (source, counter, every) = (clusters.clone(), count.clone(), request.interval);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Ok(now) = source.discover().await else {
                    continue;
                };
                let now = by_id(now);
                let diff = ClusterDiff::between(&known, &now);
                counter.store(now.len(), Ordering::Relaxed);
                known = now;
                if !diff.is_empty() && diffs.send(diff).is_err() {
                    return;
                }
            }
        });
        Ok(Box::new(StaticRunning {
            clusters,
            known: count,
            task,
        }))
    }
}

/// The conformance suite of [`ClusterProvider`]s.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    use std::collections::BTreeSet;
    use std::time::{Duration, SystemTime};

    use super::{
        ClusterDiff, ClusterId, ClusterProvider, CredentialState, DiscoveryRequest, DiscoverySource,
    };
    use crate::{Error, Result};

    fn check(cond: bool, what: impl std::fmt::Display) -> Result<()> {
        if cond {
            Ok(())
        } else {
            Err(Error::other(format!("conformance: {what}")))
        }
    }

    /// Runs every check. The provider must see at least one eligible and one ineligible cluster.
    pub async fn run_all(p: &dyn ClusterProvider) -> Result<()> {
        let clusters = p.discover().await?;
        let ids: BTreeSet<&ClusterId> = clusters.iter().map(|c| &c.id).collect();
        check(ids.len() == clusters.len(), "discovered identities are unique")?;
        check(
            clusters.windows(2).all(|w| w[0].id < w[1].id),
            "discovery is in identity order",
        )?;
        let eligible = clusters
            .iter()
            .find(|c| c.eligibility.is_eligible())
            .ok_or_else(|| Error::other("conformance: needs an eligible cluster"))?;
        let ineligible = clusters
            .iter()
            .find(|c| !c.eligibility.is_eligible())
            .ok_or_else(|| Error::other("conformance: needs an ineligible cluster"))?;

        let a = p.access(&eligible.id).await?;
        check(
            a.valid_at(SystemTime::now(), Duration::ZERO),
            "access is not expired when handed out",
        )?;
        check(
            !a.server.is_empty() && !a.ca_pem.is_empty(),
            "access names a server and its CA",
        )?;
        check(
            matches!(
                p.credential_state(&eligible.id),
                CredentialState::Fresh { .. } | CredentialState::Renewing { .. }
            ),
            format!(
                "credential state after access is fresh, got {:?}",
                p.credential_state(&eligible.id)
            ),
        )?;
        let again = p.access(&eligible.id).await?;
        check(
            again.valid_at(SystemTime::now(), Duration::ZERO),
            "a second access is valid",
        )?;

        match p.access(&ineligible.id).await {
            Err(Error::Precondition { .. }) => {}
            other => check(
                false,
                format!("access to an ineligible cluster is a Precondition error, got {other:?}"),
            )?,
        }
        match p.access(&ClusterId("no-such-cluster".into())).await {
            Err(Error::NotFound { .. }) => {}
            other => check(
                false,
                format!("access to an unknown cluster is NotFound, got {other:?}"),
            )?,
        }
        check(
            p.credential_state(&ClusterId("no-such-cluster".into())) == CredentialState::Missing,
            "an unknown cluster has no credential",
        )?;
        Ok(())
    }

    /// Checks a [`DiscoverySource`]: it names itself (non-empty, lowercase ASCII letters, digits
    /// and `-`, not `imported`); `known` names a project with at least one cluster, reached with
    /// its credential; `unknown` one the source must refuse. A discovery of `known` first adds
    /// what its provider discovers, counts it, and runs the [`ClusterProvider`] checks
    /// ([`run_all`]) when `provider_checks` is set (the project then needs an eligible and an
    /// ineligible cluster).
    pub async fn run_discovery(
        source: &dyn DiscoverySource,
        known: &DiscoveryRequest,
        unknown: &DiscoveryRequest,
        provider_checks: bool,
    ) -> Result<()> {
        let name = source.name();
        check(
            !name.is_empty()
                && name != "imported"
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            format!("the source's name {name:?} is lowercase letters, digits and '-', not \"imported\""),
        )?;
        check(
            source
                .start(unknown, tokio::sync::mpsc::unbounded_channel().0)
                .await
                .is_err(),
            "a discovery of an unknown project or credential is refused",
        )?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ClusterDiff>();
        let running = source.start(known, tx).await?;
        let first = tokio::time::timeout(std::time::Duration::from_secs(30), rx.recv())
            .await
            .map_err(|_| Error::other("conformance: no first change within 30 s"))?
            .ok_or_else(|| Error::other("conformance: the change stream ended"))?;
        check(
            !first.added.is_empty(),
            "the first change adds the project's clusters",
        )?;
        check(
            first.removed.is_empty() && first.changed.is_empty(),
            "the first change only adds",
        )?;
        let provider = running.provider();
        let mut discovered: Vec<ClusterId> = provider.discover().await?.into_iter().map(|c| c.id).collect();
        discovered.sort();
        let mut added: Vec<ClusterId> = first.added.iter().map(|c| c.id.clone()).collect();
        added.sort();
        check(
            added == discovered,
            "the first change adds what the provider discovers",
        )?;
        check(
            running.tracked() == discovered.len(),
            format!(
                "the discovery tracks {} clusters, its provider discovers {}",
                running.tracked(),
                discovered.len()
            ),
        )?;
        if provider_checks {
            run_all(provider.as_ref()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, eligibility: Eligibility) -> ClusterInfo {
        ClusterInfo {
            id: ClusterId(id.into()),
            name: format!("c-{id}"),
            namespace: "garden-dev".into(),
            provider_type: "azure".into(),
            kubernetes_version: "1.33.4".into(),
            region: "westeurope".into(),
            labels: BTreeMap::new(),
            service_account_issuer: None,
            eligibility,
        }
    }

    #[tokio::test]
    async fn static_clusters_conform() {
        let p = StaticClusters::new();
        let now = SystemTime::now();
        p.insert(
            info("a", Eligibility::Eligible),
            Some(ClusterAccess {
                server: "https://127.0.0.1:1".into(),
                ca_pem: "ca".into(),
                client_cert_pem: "cert".into(),
                client_key_pem: "key".into(),
                issued_at: now,
                expires_at: now + Duration::from_secs(3600),
            }),
        );
        p.insert(
            info(
                "b",
                Eligibility::Ineligible {
                    reason: IneligibleReason::Hibernated,
                    message: "hibernated".into(),
                },
            ),
            None,
        );
        conformance::run_all(&p).await.expect("conforms");
    }

    #[tokio::test]
    async fn static_discovery_conforms_and_follows_changes() {
        let source = StaticDiscovery::new();
        let now = SystemTime::now();
        let clusters = source.insert("cred", "dev", Arc::new(StaticClusters::new()));
        clusters.insert(
            info("a", Eligibility::Eligible),
            Some(ClusterAccess {
                server: "https://127.0.0.1:1".into(),
                ca_pem: "ca".into(),
                client_cert_pem: "cert".into(),
                client_key_pem: "key".into(),
                issued_at: now,
                expires_at: now + Duration::from_secs(3600),
            }),
        );
        clusters.insert(
            info(
                "b",
                Eligibility::Ineligible {
                    reason: IneligibleReason::Hibernated,
                    message: "hibernated".into(),
                },
            ),
            None,
        );
        let mut known = DiscoveryRequest::new("cred", "dev");
        known.interval = Duration::from_millis(20);
        let unknown = DiscoveryRequest::new("other", "dev");
        conformance::run_discovery(&source, &known, &unknown, true)
            .await
            .expect("conforms");
        // Changes to the clusters are sent as they are found.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let running = source.start(&known, tx).await.expect("start");
        assert_eq!(rx.recv().await.expect("first").added.len(), 2);
        clusters.remove(&ClusterId("a".into()));
        let d = rx.recv().await.expect("change");
        assert_eq!(
            d.removed.iter().map(|c| c.id.0.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(running.tracked(), 1);
    }

    /// A source that delegates to a [`StaticDiscovery`] under another name.
    #[derive(Debug)]
    struct Renamed(&'static str, StaticDiscovery);

    #[async_trait]
    impl DiscoverySource for Renamed {
        fn name(&self) -> &str {
            self.0
        }

        async fn start(
            &self,
            request: &DiscoveryRequest,
            diffs: mpsc::UnboundedSender<ClusterDiff>,
        ) -> Result<Box<dyn Discovery>> {
            self.1.start(request, diffs).await
        }
    }

    #[tokio::test]
    async fn the_suite_refuses_a_source_without_a_usable_name() {
        let known = DiscoveryRequest::new("cred", "dev");
        let unknown = DiscoveryRequest::new("other", "dev");
        for bad in ["", "imported", "Gardener", "my source"] {
            let source = Renamed(bad, StaticDiscovery::new());
            source
                .1
                .insert("cred", "dev", Arc::new(StaticClusters::new()))
                .insert(info("a", Eligibility::Eligible), None);
            let err = conformance::run_discovery(&source, &known, &unknown, false)
                .await
                .expect_err("refused");
            assert!(err.to_string().contains("the source's name"), "{bad:?}: {err}");
        }
        let source = Renamed("file-list", StaticDiscovery::new());
        source
            .1
            .insert("cred", "dev", Arc::new(StaticClusters::new()))
            .insert(info("a", Eligibility::Eligible), None);
        conformance::run_discovery(&source, &known, &unknown, false)
            .await
            .expect("a good name passes");
        assert_eq!(StaticDiscovery::new().name(), "static");
    }

    #[test]
    fn diff_reports_added_removed_and_changed() {
        let mut before = BTreeMap::new();
        for id in ["a", "b", "c"] {
            before.insert(ClusterId(id.into()), info(id, Eligibility::Eligible));
        }
        let mut after = before.clone();
        after.remove(&ClusterId("a".into()));
        after.insert(ClusterId("d".into()), info("d", Eligibility::Eligible));
        let hibernated = Eligibility::Ineligible {
            reason: IneligibleReason::Hibernated,
            message: "hibernated".into(),
        };
        after.insert(ClusterId("b".into()), info("b", hibernated));
        let d = ClusterDiff::between(&before, &after);
        assert_eq!(d.added.iter().map(|c| c.id.0.as_str()).collect::<Vec<_>>(), ["d"]);
        assert_eq!(
            d.removed.iter().map(|c| c.id.0.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(d.changed.len(), 1);
        assert!(!d.changed[0].1.eligibility.is_eligible());
        assert!(ClusterDiff::between(&after, &after).is_empty());
    }

    #[test]
    fn new_defaults_every_other_field_and_the_setters_set_them() {
        let bare = ClusterInfo::new(ClusterId("a".into()), "c-a", "garden-dev");
        assert_eq!(
            bare,
            ClusterInfo {
                id: ClusterId("a".into()),
                name: "c-a".into(),
                namespace: "garden-dev".into(),
                provider_type: String::new(),
                kubernetes_version: String::new(),
                region: String::new(),
                labels: BTreeMap::new(),
                service_account_issuer: None,
                eligibility: Eligibility::Eligible,
            }
        );
        let hibernated = Eligibility::Ineligible {
            reason: IneligibleReason::Hibernated,
            message: "hibernated".into(),
        };
        let full = ClusterInfo::new(ClusterId("a".into()), "c-a", "garden-dev")
            .with_provider_type("azure")
            .with_kubernetes_version("1.33.4")
            .with_region("westeurope")
            .with_labels([("team", "shop")])
            .with_service_account_issuer("https://issuer.test/a")
            .with_eligibility(hibernated.clone());
        let mut expected = info("a", hibernated);
        expected.labels.insert("team".into(), "shop".into());
        expected.service_account_issuer = Some("https://issuer.test/a".into());
        assert_eq!(full, expected);
    }

    #[test]
    fn access_debug_redacts_the_key() {
        let now = SystemTime::now();
        let a = ClusterAccess {
            server: "https://x".into(),
            ca_pem: String::new(),
            client_cert_pem: String::new(),
            client_key_pem: "SECRET-KEY".into(),
            issued_at: now,
            expires_at: now,
        };
        assert!(!format!("{a:?}").contains("SECRET-KEY"));
    }
}
