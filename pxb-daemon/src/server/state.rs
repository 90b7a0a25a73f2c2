//! The server's shared state: [`Server`] (cheap to clone) over one `Inner` holding the
//! configuration, the seams (catalog, clock, authenticator, sealer), the org table, the fleet
//! bookkeeping under one lock ([`State`]) and the counters ([`Metrics`]).
//!
//! A leaf of the server: the files that work on the state (discovery, scheduler, orgs,
//! locations, clusters, sessions, backups) import it, it imports none of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::SystemTime;

use pxb_core::catalog::records::{
    BackupRecord, ClusterRecord, DiscoveryConfig, LocationRecord, LocationStatus, Org, RestoreRecord,
    ScheduleRecord,
};
use pxb_core::catalog::{Catalog, CatalogStore};
use pxb_core::cluster::{ClusterProvider, Discovery, DiscoverySource};
use pxb_core::{Clock, Error, Result};
use tokio::sync::{Notify, Semaphore};

use super::auth::Authenticator;
use super::backup_info::{BackupInfo, ObservedStore};
use super::config::ServerConfig;
use super::fleet::FleetSnapshot;
use super::seal::Sealer;

/// A cluster's key: (org, cluster id).
pub(crate) type Key = (String, String);

/// The seams [`Server::build`] takes (tests pass twins); [`ServerBuilder`](super::ServerBuilder)
/// sets these and the discovery source, with defaults.
#[derive(Debug)]
pub struct ServerDeps {
    /// The catalog.
    pub catalog: Arc<dyn CatalogStore>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Checks bearer tokens.
    pub authenticator: Arc<dyn Authenticator>,
    /// Seals classic secrets; `None` refuses classic mode.
    pub sealer: Option<Sealer>,
}

/// Whether an org's state could be loaded.
#[derive(Clone, Debug)]
pub enum OrgState {
    /// Loaded; served.
    Ready(Org),
    /// Not loadable; the reason is shown in `/readyz` and the API, and nothing of it is served.
    Degraded {
        /// Why.
        reason: String,
    },
}

/// A cluster the server knows: its record, how to reach it, and when it is visited next.
pub(crate) struct Tracked {
    pub(crate) record: ClusterRecord,
    pub(crate) provider: Option<Arc<dyn ClusterProvider>>,
    pub(crate) next_due: SystemTime,
    pub(crate) failures: u32,
    pub(crate) busy: bool,
}

impl Tracked {
    /// Whether the scheduler visits it: current, eligible, awake and reachable.
    pub(crate) fn visitable(&self) -> bool {
        self.record.retired_at.is_none()
            && self.record.ineligible.is_none()
            && !self.record.hibernated
            && self.provider.is_some()
    }
}

/// The fleet bookkeeping, under one lock ([`Inner::lock`]).
#[derive(Default)]
pub(crate) struct State {
    pub(crate) clusters: HashMap<Key, Tracked>,
    pub(crate) locations: BTreeMap<Key, LocationRecord>,
    pub(crate) statuses: HashMap<Key, LocationStatus>,
    pub(crate) discoveries: BTreeMap<Key, DiscoveryConfig>,
    /// Running discoveries, by (org, discovery id).
    pub(crate) running: HashMap<Key, Box<dyn Discovery>>,
    pub(crate) discovery_status: HashMap<Key, DiscoveryStatus>,
    /// Active backups and restores, by cluster.
    pub(crate) ops: HashMap<Key, ClusterOps>,
    pub(crate) schedules: BTreeMap<Key, ScheduleRecord>,
    /// Synced backups per org (counted once, then kept up to date by imports; see
    /// `Server::synced_count`).
    pub(crate) synced_counts: HashMap<String, u64>,
    pub(crate) dirty: bool,
}

/// The operations the server drives on one cluster.
#[derive(Debug, Default)]
pub(crate) struct ClusterOps {
    pub(crate) backups: BTreeMap<String, BackupRecord>,
    pub(crate) restores: BTreeMap<String, RestoreRecord>,
    pub(crate) forced: BTreeSet<String>,
}

pub use pxb_core::api::rest::{DiscoveryState, DiscoveryStatus};

/// Labels of `pxb_server_api_requests`: `method`, `route` (the route template, or
/// [`UNMATCHED_ROUTE`]) and `code` (the HTTP status).
pub(crate) type ApiRequestLabels = [(&'static str, String); 3];

/// Labels of `pxb_server_api_request_duration_seconds`: `method` and `route`.
pub(crate) type ApiRouteLabels = [(&'static str, String); 2];

/// A family of histograms, each made with the family's buckets.
pub(crate) type HistogramFamily<L> = pxb_telemetry::prometheus_client::metrics::family::Family<
    L,
    pxb_telemetry::prometheus_client::metrics::histogram::Histogram,
    fn() -> pxb_telemetry::prometheus_client::metrics::histogram::Histogram,
>;

/// The `route` of requests that matched no route: unknown paths never become label values.
pub(crate) const UNMATCHED_ROUTE: &str = "unmatched";

/// Buckets of the API's latency histogram, in seconds.
pub(crate) const API_DURATION_BUCKETS: [f64; 11] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets of the cluster visits' duration histogram, in seconds (a visit's deadline is four
/// call timeouts).
pub(crate) const VISIT_DURATION_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];

/// What the discovery providers counted (Gardener's: discovery cycles, kubeconfig requests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ProviderCounts {
    /// Full discovery cycles that listed the project.
    pub(crate) discoveries_ok: u64,
    /// Full discovery cycles that failed.
    pub(crate) discoveries_failed: u64,
    /// First kubeconfigs issued for a cluster (renewals not included).
    pub(crate) issued_ok: u64,
    /// First kubeconfig requests that failed.
    pub(crate) issued_failed: u64,
    /// Kubeconfigs renewed.
    pub(crate) renewed_ok: u64,
    /// Renewals that failed.
    pub(crate) renewed_failed: u64,
}

impl std::ops::AddAssign for ProviderCounts {
    fn add_assign(&mut self, o: Self) {
        self.discoveries_ok += o.discoveries_ok;
        self.discoveries_failed += o.discoveries_failed;
        self.issued_ok += o.issued_ok;
        self.issued_failed += o.issued_failed;
        self.renewed_ok += o.renewed_ok;
        self.renewed_failed += o.renewed_failed;
    }
}

/// Counters exposed on `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    /// Visits that reached their cluster.
    pub visits_ok: AtomicU64,
    /// Visits that did not.
    pub visits_failed: AtomicU64,
    /// Orphaned objects deleted from clusters.
    pub orphans_deleted: AtomicU64,
    /// CRs written.
    pub crs_written: AtomicU64,
    /// Requests that turned Stalled.
    pub stalled: AtomicU64,
    /// Fleet snapshots built.
    pub snapshots: AtomicU64,
    /// Backups found by syncs and imported into the catalog.
    pub imported: AtomicU64,
    /// Schedule slots fired.
    pub schedule_runs: AtomicU64,
    /// API requests by method, route template and status (lives across scrapes: `/metrics`
    /// registers clones of it).
    pub api_requests: pxb_telemetry::prometheus_client::metrics::family::Family<
        ApiRequestLabels,
        pxb_telemetry::prometheus_client::metrics::counter::Counter,
    >,
    /// API request latency by method and route template (`API_DURATION_BUCKETS`).
    pub api_request_duration: HistogramFamily<ApiRouteLabels>,
    /// How long cluster visits took (`VISIT_DURATION_BUCKETS`).
    pub visit_duration: pxb_telemetry::prometheus_client::metrics::histogram::Histogram,
    /// Discoveries that could not start (or were refused by the server's checks).
    pub discovery_starts_failed: AtomicU64,
    /// Kubeconfigs a cluster refused (`401`) in a visit.
    pub kubeconfigs_refused: AtomicU64,
    /// What the providers of removed discoveries had counted, so the totals never go down.
    pub(crate) retired_providers: Mutex<ProviderCounts>,
}

fn api_duration_histogram() -> pxb_telemetry::prometheus_client::metrics::histogram::Histogram {
    pxb_telemetry::prometheus_client::metrics::histogram::Histogram::new(API_DURATION_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            visits_ok: AtomicU64::default(),
            visits_failed: AtomicU64::default(),
            orphans_deleted: AtomicU64::default(),
            crs_written: AtomicU64::default(),
            stalled: AtomicU64::default(),
            snapshots: AtomicU64::default(),
            imported: AtomicU64::default(),
            schedule_runs: AtomicU64::default(),
            api_requests: Default::default(),
            api_request_duration: HistogramFamily::new_with_constructor(api_duration_histogram),
            visit_duration: pxb_telemetry::prometheus_client::metrics::histogram::Histogram::new(
                VISIT_DURATION_BUCKETS,
            ),
            discovery_starts_failed: AtomicU64::default(),
            kubeconfigs_refused: AtomicU64::default(),
            retired_providers: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts one API request: `method` (a known method or `other`), `route` (its template, or
    /// [`UNMATCHED_ROUTE`]), its status and how long it took.
    pub(crate) fn api_request(
        &self,
        method: &'static str,
        route: &str,
        status: u16,
        elapsed: std::time::Duration,
    ) {
        self.api_requests
            .get_or_create(&[
                ("method", method.to_owned()),
                ("route", route.to_owned()),
                ("code", status.to_string()),
            ])
            .inc();
        self.api_request_duration
            .get_or_create(&[("method", method.to_owned()), ("route", route.to_owned())])
            .observe(elapsed.as_secs_f64());
    }

    /// What the providers of removed discoveries had counted.
    pub(crate) fn retired_providers(&self) -> MutexGuard<'_, ProviderCounts> {
        self.retired_providers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What every clone of a [`Server`] shares.
pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    pub(crate) catalog: Catalog,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) authenticator: Arc<dyn Authenticator>,
    /// Where discoveries come from.
    pub(crate) discovery: Arc<dyn DiscoverySource>,
    pub(crate) sealer: Option<Sealer>,
    pub(crate) state: Mutex<State>,
    /// Orgs apart from the rest of the state, so API reads never wait on fleet bookkeeping.
    pub(crate) orgs: RwLock<BTreeMap<String, OrgState>>,
    pub(crate) snapshot: RwLock<Arc<FleetSnapshot>>,
    pub(crate) wake: Notify,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) metrics: Metrics,
    pub(crate) min_agent_version: semver::Version,
    /// The runtime background work runs on (the API may run on its own).
    pub(crate) runtime: tokio::runtime::Handle,
    /// Discovery tasks, stopped with the server's `Running`.
    pub(crate) background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Per sign-in session preferences (the time bracket), by (subject, session); bounded.
    pub(crate) sessions: Mutex<HashMap<(String, String), (SystemTime, serde_json::Value)>>,
    /// The web console's one-time codes and sessions.
    pub(crate) console: super::console::ConsoleSessions,
    /// API requests in flight per org (`api.maxRequestsPerOrg`).
    pub(crate) org_limits: OrgLimits,
    /// The per-backup info series.
    pub(crate) backup_info: Arc<BackupInfo>,
    /// The catalog's store as the server uses it (timed, feeding `backup_info`).
    pub(crate) observed_store: Arc<ObservedStore>,
    /// Whether this server may do the fleet's work now (a replica's hold on its lease); always
    /// when unset.
    pub(crate) acting: std::sync::OnceLock<Arc<dyn Fn() -> bool + Send + Sync>>,
    /// The support channel's state, once it runs (for `/metrics`).
    pub(crate) support_status:
        std::sync::OnceLock<tokio::sync::watch::Receiver<pxb_telemetry::support::SupportStatus>>,
}

/// Requests in flight per org (`api.maxRequestsPerOrg`), a semaphore each.
#[derive(Default)]
pub(crate) struct OrgLimits(Mutex<HashMap<String, Arc<Semaphore>>>);

impl OrgLimits {
    /// The semaphore of `org`, made with `max` permits on first use.
    pub(crate) fn semaphore(&self, org: &str, max: usize) -> Arc<Semaphore> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(org.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone()
    }
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

/// The key of a cluster record.
pub(crate) fn cluster_key(c: &ClusterRecord) -> Key {
    (c.org.clone(), c.id.clone())
}

impl Server {
    /// The server over `deps` and `discovery`, with the state of every org loaded from the
    /// catalog. An org whose records do not load is marked degraded and logged; the others are
    /// served. Nothing is contacted yet: see [`Server::spawn`].
    pub(crate) async fn assemble(
        config: ServerConfig,
        deps: ServerDeps,
        discovery: Arc<dyn DiscoverySource>,
    ) -> Result<Server> {
        config.check()?;
        let min_agent_version = semver::Version::parse(&config.fleet.min_agent_version)
            .map_err(|e| Error::invalid(format!("fleet.minAgentVersion: {e}")))?;
        let backup_info = Arc::new(BackupInfo::new(&config.telemetry));
        let raw_store = deps.catalog;
        let observed_store = Arc::new(ObservedStore::new(
            raw_store.clone(),
            backup_info.clone(),
            deps.clock.clone(),
        ));
        let catalog = Catalog::new(observed_store.clone());
        let inner = Arc::new(Inner {
            permits: Arc::new(Semaphore::new(config.fleet.concurrency)),
            config,
            catalog,
            clock: deps.clock,
            authenticator: deps.authenticator,
            discovery,
            sealer: deps.sealer,
            state: Mutex::new(State::default()),
            orgs: RwLock::new(BTreeMap::new()),
            snapshot: RwLock::new(Arc::new(FleetSnapshot::default())),
            wake: Notify::new(),
            metrics: Metrics::default(),
            min_agent_version,
            runtime: tokio::runtime::Handle::current(),
            background: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            console: Default::default(),
            org_limits: OrgLimits::default(),
            backup_info,
            observed_store,
            support_status: std::sync::OnceLock::new(),
            acting: std::sync::OnceLock::new(),
        });
        let server = Server { inner };
        server.load().await?;
        let orgs: Vec<String> = server.inner.orgs().keys().cloned().collect();
        let now_ms = pxb_core::clock::unix_ms(server.inner.clock.now());
        // The series are not worth failing the start for (failures are logged per org).
        server.inner.backup_info.backfill(&raw_store, &orgs, now_ms).await;
        server.rebuild_snapshot();
        Ok(server)
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The typed catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// API requests in flight per org.
    pub(crate) fn org_limits(&self) -> &OrgLimits {
        &self.inner.org_limits
    }

    /// Registers the per-backup info series (as of the clock's now) and the catalog latency.
    pub(crate) fn register_backup_metrics(
        &self,
        r: &mut pxb_telemetry::prometheus_client::registry::Registry,
        sees: &dyn Fn(&str) -> bool,
    ) {
        let now_ms = pxb_core::clock::unix_ms(self.inner.clock.now());
        super::backup_info::register(
            r,
            &self.inner.backup_info,
            &self.inner.observed_store,
            now_ms,
            sees,
        );
    }

    /// Whether this server may do the fleet's work now (see
    /// [`ServerBuilder::acting`](super::ServerBuilder::acting)).
    pub fn may_act(&self) -> bool {
        self.inner.acting.get().is_none_or(|check| check())
    }

    /// Whether this server runs as one of several replicas (its work gated by a lease).
    pub(crate) fn is_replica(&self) -> bool {
        self.inner.acting.get().is_some()
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The current fleet snapshot.
    pub fn snapshot(&self) -> Arc<FleetSnapshot> {
        self.inner
            .snapshot
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every org's state.
    pub fn orgs(&self) -> BTreeMap<String, OrgState> {
        self.inner.orgs().clone()
    }

    /// The org, if it is loaded; a degraded org is [`Error::Unavailable`].
    pub fn org(&self, id: &str) -> Result<Org> {
        match self.inner.orgs().get(id) {
            Some(OrgState::Ready(o)) => Ok(o.clone()),
            Some(OrgState::Degraded { reason }) => Err(Error::unavailable(format!(
                "org {id} is degraded and not served: {reason}"
            ))),
            None => Err(Error::not_found(format!("org {id}"))),
        }
    }

    /// Read-modify-write of one record through the catalog's revision check: reads it fresh,
    /// applies `change`, and writes it at the revision read. When another write came in between,
    /// it reads again and re-applies `change` (a few times, then `Unavailable`). A record deleted
    /// meanwhile is `NotFound`: nothing is resurrected, nothing another writer changed is lost.
    pub(crate) async fn modify<T: pxb_core::catalog::Record>(
        &self,
        org: &str,
        id: &str,
        mut change: impl FnMut(&mut T) -> Result<()>,
    ) -> Result<T> {
        for _ in 0..8 {
            let current = self.inner.catalog.get::<T>(org, id).await?;
            let mut value = current.value;
            change(&mut value)?;
            match self.inner.catalog.put(&value, Some(current.revision)).await {
                Ok(_) => return Ok(value),
                Err(Error::Precondition { .. }) => tokio::task::yield_now().await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::unavailable(format!(
            "{id} in org {org} keeps changing under concurrent writes; try again"
        )))
    }
}

impl Inner {
    /// The fleet bookkeeping (a poisoned lock is taken over, as everywhere in the server).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The orgs, for reading.
    pub(crate) fn orgs(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, OrgState>> {
        self.orgs.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The orgs, for writing.
    pub(crate) fn orgs_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, OrgState>> {
        self.orgs.write().unwrap_or_else(|e| e.into_inner())
    }
}
