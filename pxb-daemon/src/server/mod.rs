//! `pxb-server`: the central control plane.
//!
//! [`Server`] holds the org state loaded from the [`Catalog`] (orgs, discovery configurations,
//! clusters, locations and their per-cluster status), consumes the cluster provider's diffs,
//! visits every eligible cluster with bounded concurrency ([`reconcile`]), keeps the
//! [`fleet::FleetSnapshot`] fresh, and serves the REST API ([`api`]).
//!
//! Architecture Invariant: the server never waits on a cluster without a deadline. Visits run on
//! their own tasks under a semaphore; an unreachable cluster is a state with a backoff, never a
//! blocked loop, and the fleet status is read from a snapshot without touching a cluster.
//!
//! Architecture Invariant: shoot kubeconfigs live in the providers' memory only; the catalog never
//! sees one. Classic secrets are stored sealed ([`seal::Sealer`]).

pub mod api;
pub mod auth;
pub mod backups;
pub mod config;
pub mod fleet;
pub mod install;
pub mod openapi;
pub mod operations;
pub mod reconcile;
pub mod seal;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use pxb_core::catalog::records::{
    ClusterRecord, ClusterState, ClusterStatus, DiscoveryConfig, LocationRecord, LocationStatus, Mode, Org,
    RequestPhase, SyncRun,
};
use pxb_core::catalog::{Catalog, CatalogStore, Kind, Query};
use pxb_core::clock::rfc3339;
use pxb_core::cluster::{ClusterDiff, ClusterId, ClusterInfo, ClusterProvider, CredentialState, Eligibility};
use pxb_core::{Clock, Error, Result};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use tokio::sync::{Notify, Semaphore, mpsc};

use self::auth::Authenticator;
use self::config::ServerConfig;
use self::fleet::FleetSnapshot;
use self::reconcile::{Desired, VisitInput};
use self::seal::Sealer;

/// A cluster's key: (org, cluster id).
type Key = (String, String);

/// How long an imported kubeconfig is trusted to be valid; the cluster itself rejects it once its
/// certificate expires, and the cluster turns Unreachable with the reason.
const IMPORTED_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the server is built from; tests pass fakes.
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

struct Tracked {
    record: ClusterRecord,
    provider: Option<Arc<dyn ClusterProvider>>,
    next_due: SystemTime,
    failures: u32,
    busy: bool,
}

impl Tracked {
    fn visitable(&self) -> bool {
        self.record.retired_at.is_none()
            && self.record.ineligible.is_none()
            && !self.record.hibernated
            && self.provider.is_some()
    }
}

struct Discovery {
    _running: pxb_gardener::Running,
    provider: Arc<GardenerProvider>,
}

#[derive(Default)]
struct State {
    clusters: HashMap<Key, Tracked>,
    locations: BTreeMap<Key, LocationRecord>,
    statuses: HashMap<Key, LocationStatus>,
    discoveries: BTreeMap<Key, DiscoveryConfig>,
    running: HashMap<Key, Discovery>,
    discovery_status: HashMap<Key, DiscoveryStatus>,
    /// Active backups and restores, by cluster.
    ops: HashMap<Key, backups::ClusterOps>,
    schedules: BTreeMap<Key, pxb_core::catalog::records::ScheduleRecord>,
    /// Synced backups per org (counted once, then kept up to date by imports; see
    /// `Server::synced_count`).
    synced_counts: HashMap<String, u64>,
    dirty: bool,
}

/// How a discovery is doing.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryStatus {
    /// `Starting`, `Running` or `Failing` (retried with backoff).
    pub state: String,
    /// Why it fails, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Since when (RFC 3339).
    pub since: String,
    /// Shoots the discovery knows (eligible or not).
    #[serde(default)]
    pub shoots: usize,
}

/// Counters exposed on `/metrics`.
#[derive(Debug, Default)]
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
}

pub(crate) struct Inner {
    config: ServerConfig,
    catalog: Catalog,
    clock: Arc<dyn Clock>,
    authenticator: Arc<dyn Authenticator>,
    sealer: Option<Sealer>,
    state: Mutex<State>,
    /// Orgs apart from the rest of the state, so API reads never wait on fleet bookkeeping.
    orgs: RwLock<BTreeMap<String, OrgState>>,
    snapshot: RwLock<Arc<FleetSnapshot>>,
    wake: Notify,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    min_agent_version: semver::Version,
    /// The runtime background work runs on (the API may run on its own).
    runtime: tokio::runtime::Handle,
    /// Discovery tasks, stopped with the server's `Running`.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Per sign-in session preferences (the time bracket), by (subject, session); bounded.
    sessions: Mutex<HashMap<(String, String), (SystemTime, serde_json::Value)>>,
    /// API requests in flight per org (`api.maxRequestsPerOrg`).
    org_limits: api::OrgLimits,
}

/// How soon a cluster with running backups or restores is visited again (their progress).
const ACTIVE_OPS_REVISIT: Duration = Duration::from_secs(2);

/// Sessions whose preferences are kept at most (the least recently used go first).
const MAX_SESSIONS: usize = 10_000;

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

/// Background tasks of a server; stopped when dropped.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server: Server,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let discoveries = std::mem::take(
            &mut *self
                .server
                .inner
                .background
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in discoveries {
            t.abort();
        }
        // Dropping the providers' handles stops their watches and renewals.
        self.server.inner.lock().running.clear();
    }
}

fn cluster_key(c: &ClusterRecord) -> Key {
    (c.org.clone(), c.id.clone())
}

fn credential_text(s: &CredentialState) -> String {
    match s {
        CredentialState::Missing => "Missing".into(),
        CredentialState::Fresh { expires_at, .. } => format!("Fresh until {}", rfc3339(*expires_at)),
        CredentialState::Renewing { .. } => "Renewing".into(),
        CredentialState::Expired { since } => format!("Expired since {}", rfc3339(*since)),
        CredentialState::Failing { reason, attempts, .. } => {
            format!("Failing ({attempts} attempts): {reason}")
        }
    }
}

impl Server {
    /// Loads the state of every org from the catalog. An org whose records do not load is marked
    /// degraded and logged; the others are served. Nothing is contacted yet: see [`Server::spawn`].
    pub async fn build(config: ServerConfig, deps: ServerDeps) -> Result<Server> {
        config.check()?;
        let min_agent_version = semver::Version::parse(&config.fleet.min_agent_version)
            .map_err(|e| Error::invalid(format!("fleet.minAgentVersion: {e}")))?;
        let catalog = Catalog::new(deps.catalog);
        let inner = Arc::new(Inner {
            permits: Arc::new(Semaphore::new(config.fleet.concurrency)),
            config,
            catalog,
            clock: deps.clock,
            authenticator: deps.authenticator,
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
            org_limits: api::OrgLimits::default(),
        });
        let server = Server { inner };
        server.load().await?;
        server.rebuild_snapshot();
        Ok(server)
    }

    async fn load(&self) -> Result<()> {
        let store = self.inner.catalog.store().clone();
        let mut q = Query {
            limit: pxb_core::catalog::MAX_PAGE,
            ..Query::default()
        };
        let mut entries = Vec::new();
        loop {
            let page = store.list(Kind::Org, &q).await?;
            entries.extend(page.items);
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        for entry in entries {
            let org_id = entry.org.clone();
            let loaded = match Catalog::decode::<Org>(&entry) {
                Ok(org) => self.load_org(org.value).await,
                Err(e) => Err(e),
            };
            let mut st = self.inner.lock();
            match loaded {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(org = %org_id, error = %e, "cannot load the org; it is degraded and not served");
                    self.inner.orgs_mut().insert(
                        org_id.clone(),
                        OrgState::Degraded {
                            reason: e.to_string(),
                        },
                    );
                    st.clusters.retain(|k, _| k.0 != org_id);
                    st.locations.retain(|k, _| k.0 != org_id);
                    st.statuses.retain(|k, _| k.0 != org_id);
                    st.discoveries.retain(|k, _| k.0 != org_id);
                    st.ops.retain(|k, _| k.0 != org_id);
                    st.schedules.retain(|k, _| k.0 != org_id);
                }
            }
        }
        Ok(())
    }

    async fn load_org(&self, org: Org) -> Result<()> {
        let c = &self.inner.catalog;
        let q = Query::org(&org.id);
        let discoveries = c.list_all::<DiscoveryConfig>(&q).await?;
        let clusters = c.list_all::<ClusterRecord>(&q).await?;
        let locations = c.list_all::<LocationRecord>(&q).await?;
        let statuses = c.list_all::<LocationStatus>(&q).await?;
        for l in &locations {
            self.inner.open_secret(l)?;
        }
        self.load_operations(&org.id).await?;
        let mut imported: HashMap<String, Arc<dyn ClusterProvider>> = HashMap::new();
        for cl in clusters.iter().filter(|c| c.retired_at.is_none()) {
            if cl.sealed_kubeconfig.is_some() {
                imported.insert(cl.id.clone(), self.inner.imported_provider(cl)?);
            }
        }
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        for d in discoveries {
            st.discoveries.insert((d.org.clone(), d.id.clone()), d);
        }
        for cl in clusters {
            let provider = imported.remove(&cl.id);
            st.clusters.insert(
                cluster_key(&cl),
                Tracked {
                    record: cl,
                    provider,
                    next_due: now,
                    failures: 0,
                    busy: false,
                },
            );
        }
        for l in locations {
            st.locations.insert((l.org.clone(), l.id.clone()), l);
        }
        for s in statuses {
            st.statuses.insert((s.org.clone(), s.id.clone()), s);
        }
        drop(st);
        self.inner.orgs_mut().insert(org.id.clone(), OrgState::Ready(org));
        Ok(())
    }

    /// Starts discovery, the cluster visits, the lease sweep and the snapshot builder.
    pub fn spawn(&self) -> Running {
        let discoveries: Vec<DiscoveryConfig> = self.inner.lock().discoveries.values().cloned().collect();
        for d in discoveries {
            self.start_discovery(d);
        }
        Running {
            tasks: vec![
                tokio::spawn(self.clone().scheduler()),
                tokio::spawn(self.clone().housekeeping()),
                tokio::spawn(self.clone().schedules_loop()),
            ],
            server: self.clone(),
        }
    }

    fn start_discovery(&self, d: DiscoveryConfig) {
        let task = self.inner.runtime.spawn(self.clone().run_discovery(d));
        let mut bg = self.inner.background.lock().unwrap_or_else(|e| e.into_inner());
        bg.retain(|t| !t.is_finished());
        bg.push(task);
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
    pub(crate) fn org_limits(&self) -> &api::OrgLimits {
        &self.inner.org_limits
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

    /// Creates an org (idempotent for an identical request).
    pub async fn create_org(&self, org: Org) -> Result<Org> {
        if let Some(existing) = self.inner.orgs().get(&org.id) {
            return match existing {
                OrgState::Ready(o)
                    if o.display_name == org.display_name && o.access == org.access && o.mode == org.mode =>
                {
                    Ok(o.clone())
                }
                _ => Err(Error::already_exists(format!("org {} exists", org.id))),
            };
        }
        self.inner.catalog.put(&org, Some(0)).await?;
        self.inner
            .orgs_mut()
            .insert(org.id.clone(), OrgState::Ready(org.clone()));
        Ok(org)
    }

    /// Changes an org's display name, default mode or role bindings.
    pub async fn update_org(&self, id: &str, change: impl FnOnce(&mut Org)) -> Result<Org> {
        let mut org = self.org(id)?;
        let revision = self.inner.catalog.get::<Org>(id, id).await?.revision;
        change(&mut org);
        self.inner.catalog.put(&org, Some(revision)).await?;
        self.inner
            .orgs_mut()
            .insert(org.id.clone(), OrgState::Ready(org.clone()));
        Ok(org)
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
    /// project (see [`config::GardenCredential`]), or unbound and `d.provider_approved` is not
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
            st.running.remove(&key);
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
            tracing::error!(org = %d.org, discovery = %d.id, error = %e, "discovery refused");
            self.set_discovery_status(&key, "Failing", Some(e.to_string()));
            return;
        }
        let Some(path) = self
            .inner
            .config
            .garden_credentials
            .get(&d.credential)
            .map(|c| c.kubeconfig.clone())
        else {
            return;
        };
        let mut backoff = Duration::from_secs(1);
        self.set_discovery_status(&key, "Starting", None);
        let provider = loop {
            if !self.inner.lock().discoveries.contains_key(&key) {
                return;
            }
            let attempt = async {
                let kubeconfig = tokio::fs::read_to_string(&path)
                    .await
                    .map_err(|e| Error::io(format!("reading the garden credential {:?}", d.credential), e))?;
                let mut cfg = GardenerConfig::new(GardenAuth::Kubeconfig(kubeconfig), &d.project);
                cfg.discovery_interval = Duration::from_secs(d.interval_secs.max(5));
                cfg.expiration = Duration::from_secs(self.inner.config.fleet.kubeconfig_lifetime_secs);
                cfg.request_timeout =
                    Duration::from_millis(self.inner.config.fleet.call_timeout_ms.max(1000) * 3);
                let provider = GardenerProvider::connect(cfg).await?;
                // Reading the project proves the credential and the project name.
                provider.project_namespace().await?;
                Ok::<_, Error>(provider)
            };
            match attempt.await {
                Ok(p) => break p,
                Err(e) => {
                    self.set_discovery_status(&key, "Failing", Some(e.to_string()));
                    tracing::warn!(org = %d.org, discovery = %d.id, error = %e, "cannot start discovery; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let running = provider.spawn(tx);
        self.inner.lock().running.insert(
            key.clone(),
            Discovery {
                _running: running,
                provider: provider.clone(),
            },
        );
        self.set_discovery_status(&key, "Running", None);
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

    fn set_discovery_status(&self, key: &Key, state: &str, message: Option<String>) {
        let mut st = self.inner.lock();
        let changed = st
            .discovery_status
            .get(key)
            .is_none_or(|s| s.state != state || s.message != message);
        if changed {
            st.discovery_status.insert(
                key.clone(),
                DiscoveryStatus {
                    state: state.into(),
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
        let mut status = st
            .discovery_status
            .get(&key)
            .cloned()
            .unwrap_or_else(|| DiscoveryStatus {
                state: "Starting".into(),
                ..DiscoveryStatus::default()
            });
        status.shoots = st.running.get(&key).map_or(0, |d| d.provider.tracked());
        status
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
            source: "gardener".into(),
            discovery: Some(d.id.clone()),
            namespace: Some(info.namespace.clone()),
            provider_type: info.provider_type.clone(),
            kubernetes_version: info.kubernetes_version.clone(),
            region: info.region.clone(),
            labels: info.labels.clone(),
            ineligible,
            hibernated,
            first_seen: base.map(|b| b.first_seen.clone()).unwrap_or(now),
            retired_at: None,
            sealed_kubeconfig: None,
            status,
        }
    }

    async fn apply_diff(
        &self,
        d: &DiscoveryConfig,
        provider: Arc<GardenerProvider>,
        diff: ClusterDiff,
    ) -> Result<()> {
        let now = self.inner.clock.now();
        let mut writes = Vec::new();
        {
            let mut st = self.inner.lock();
            let dynp: Arc<dyn ClusterProvider> = provider;
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
                t.provider = Some(dynp.clone());
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

    /// Tracks a cluster reached through `provider` (an imported cluster, or tests); the record is
    /// stored.
    pub async fn add_cluster(&self, record: ClusterRecord, provider: Arc<dyn ClusterProvider>) -> Result<()> {
        self.inner.catalog.put(&record, None).await?;
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        st.clusters.insert(
            cluster_key(&record),
            Tracked {
                record,
                provider: Some(provider),
                next_due: now,
                failures: 0,
                busy: false,
            },
        );
        st.dirty = true;
        drop(st);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Imports a cluster by a client-certificate kubeconfig (classic mode). The kubeconfig is
    /// sealed in the catalog and opened into memory only; the cluster is visited like any other.
    pub async fn import_cluster(&self, org: &str, name: &str, kubeconfig: &str) -> Result<ClusterRecord> {
        let sealer = self.inner.sealer.as_ref().ok_or_else(|| {
            Error::precondition("importing clusters needs a secrets key (secrets.keyFile or PXB_SECRETS_KEY)")
        })?;
        let now = self.inner.clock.now();
        // Checked before anything is stored.
        pxb_gardener::parse_access(kubeconfig, now, now + IMPORTED_VALIDITY)?;
        if self
            .clusters(org)
            .iter()
            .any(|c| c.name == name && c.retired_at.is_none())
        {
            return Err(Error::already_exists(format!(
                "cluster {name} exists in org {org}"
            )));
        }
        let id = format!("imported-{name}");
        let record = ClusterRecord {
            org: org.to_owned(),
            id: id.clone(),
            name: name.to_owned(),
            source: "imported".into(),
            discovery: None,
            namespace: None,
            provider_type: String::new(),
            kubernetes_version: String::new(),
            region: String::new(),
            labels: BTreeMap::new(),
            ineligible: None,
            hibernated: false,
            first_seen: rfc3339(now),
            retired_at: None,
            sealed_kubeconfig: Some(sealer.seal(kubeconfig.as_bytes(), &format!("{org}/cluster/{id}"))?),
            status: ClusterStatus::default(),
        };
        let provider = self.inner.imported_provider(&record)?;
        self.add_cluster(record.clone(), provider).await?;
        Ok(record)
    }

    /// Removes an imported cluster: its kubeconfig is forgotten and the record retired (its
    /// backups stay listed). Discovered clusters leave with their shoot.
    pub async fn remove_imported(&self, org: &str, name: &str) -> Result<bool> {
        let now = rfc3339(self.inner.clock.now());
        let record = {
            let mut st = self.inner.lock();
            let Some(t) = st
                .clusters
                .values_mut()
                .find(|t| t.record.org == org && t.record.name == name && t.record.retired_at.is_none())
            else {
                return Ok(false);
            };
            if t.record.source != "imported" {
                return Err(Error::precondition(format!(
                    "cluster {name} comes from discovery {}; it leaves when its shoot is deleted",
                    t.record.discovery.as_deref().unwrap_or("?")
                )));
            }
            t.record.retired_at = Some(now);
            t.record.sealed_kubeconfig = None;
            t.record.status.state = ClusterState::Retired;
            t.record.status.message = Some("removed; its backups stay listed".into());
            t.provider = None;
            let record = t.record.clone();
            st.dirty = true;
            record
        };
        self.inner.catalog.put(&record, None).await?;
        Ok(true)
    }

    /// The org's clusters (from memory), ordered by name.
    pub fn clusters(&self, org: &str) -> Vec<ClusterRecord> {
        let st = self.inner.lock();
        let mut v: Vec<ClusterRecord> = st
            .clusters
            .values()
            .filter(|t| t.record.org == org)
            .map(|t| t.record.clone())
            .collect();
        v.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        v
    }

    /// The org's locations, ordered by name.
    pub fn locations(&self, org: &str) -> Vec<LocationRecord> {
        let st = self.inner.lock();
        let mut v: Vec<LocationRecord> = st.locations.values().filter(|l| l.org == org).cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The location named `name` of `org`.
    pub fn location(&self, org: &str, name: &str) -> Result<LocationRecord> {
        self.inner
            .lock()
            .locations
            .values()
            .find(|l| l.org == org && l.name == name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("location {name} in org {org}")))
    }

    /// The per-cluster status of a location, ordered by cluster name.
    pub fn location_statuses(&self, org: &str, location_id: &str) -> Vec<LocationStatus> {
        let st = self.inner.lock();
        let mut v: Vec<LocationStatus> = st
            .statuses
            .values()
            .filter(|s| s.org == org && s.location == location_id)
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.cluster_name, &a.cluster).cmp(&(&b.cluster_name, &b.cluster)));
        v
    }

    /// Creates a location (idempotent for an identical request); `secret` is the classic
    /// credential (`accountKey`/`sasToken`, value), sealed before it is stored.
    pub async fn create_location(
        &self,
        mut loc: LocationRecord,
        secret: Option<(String, String)>,
    ) -> Result<LocationRecord> {
        if let Ok(existing) = self.location(&loc.org, &loc.name) {
            let same = existing.container == loc.container
                && existing.provider == loc.provider
                && existing.clusters == loc.clusters
                && existing.mode == loc.mode;
            return if same && secret.is_none() {
                Ok(existing)
            } else {
                Err(Error::already_exists(format!("location {} exists", loc.name)))
            };
        }
        match (loc.mode, secret) {
            (Mode::Federated, Some(_)) => {
                return Err(Error::invalid(
                    "a federated location takes no credential: agents use Workload Identity",
                ));
            }
            (Mode::Classic, None) => {
                return Err(Error::invalid(
                    "a classic location needs a credential (accountKey or sasToken)",
                ));
            }
            (Mode::Classic, Some((kind, value))) => self.inner.seal_credential(&mut loc, kind, &value)?,
            (Mode::Federated, None) => {}
        }
        self.inner.catalog.put(&loc, Some(0)).await?;
        self.inner
            .lock()
            .locations
            .insert((loc.org.clone(), loc.id.clone()), loc.clone());
        self.wake_org(&loc.org);
        Ok(loc)
    }

    /// Deletes a location. Its CRs are deleted from every cluster on the next visit, including
    /// clusters offline now (on their next successful visit).
    pub async fn delete_location(&self, org: &str, name: &str) -> Result<bool> {
        let Ok(loc) = self.location(org, name) else {
            return Ok(false);
        };
        let status_ids: Vec<String> = self
            .location_statuses(org, &loc.id)
            .into_iter()
            .map(|s| s.id)
            .collect();
        self.inner.catalog.delete::<LocationRecord>(org, &loc.id).await?;
        for id in &status_ids {
            self.inner.catalog.delete::<LocationStatus>(org, id).await?;
        }
        {
            let mut st = self.inner.lock();
            st.locations.remove(&(org.to_owned(), loc.id.clone()));
            for id in status_ids {
                st.statuses.remove(&(org.to_owned(), id));
            }
            st.dirty = true;
        }
        self.wake_org(org);
        Ok(true)
    }

    /// Changes a location's assignment and identity settings (and, for a classic location, its
    /// credential). Clusters get the change on their next visit; clusters no longer selected lose
    /// its CR (and Secret) then.
    pub async fn update_location(
        &self,
        org: &str,
        name: &str,
        change: impl FnOnce(&mut LocationRecord),
        secret: Option<(String, String)>,
    ) -> Result<LocationRecord> {
        let id = self.location(org, name)?.id;
        // The change applies to the stored record at its revision (memory may lag behind a write
        // that just landed).
        let stored = self.inner.catalog.get::<LocationRecord>(org, &id).await?;
        let revision = stored.revision;
        let mut loc = stored.value;
        change(&mut loc);
        if let Some((kind, value)) = secret {
            if loc.mode != Mode::Classic {
                return Err(Error::invalid(
                    "a federated location takes no credential: agents use Workload Identity",
                ));
            }
            self.inner.seal_credential(&mut loc, kind, &value)?;
        }
        // Another update in between fails with a conflict instead of being overwritten.
        self.save_location(loc, Some(revision)).await
    }

    /// Stores a changed location (at `revision` when given), keeps it in memory and wakes the
    /// org's clusters to apply it.
    async fn save_location(&self, loc: LocationRecord, revision: Option<u64>) -> Result<LocationRecord> {
        self.inner.catalog.put(&loc, revision).await?;
        self.inner
            .lock()
            .locations
            .insert((loc.org.clone(), loc.id.clone()), loc.clone());
        self.wake_org(&loc.org);
        Ok(loc)
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

    /// Asks every cluster of the location to validate it now.
    pub async fn request_validation(&self, org: &str, name: &str) -> Result<LocationRecord> {
        let id = self.location(org, name)?.id;
        // Only the counter changes: a credential rotated meanwhile is kept.
        let loc = self
            .modify::<LocationRecord>(org, &id, |l| {
                l.validate_request += 1;
                Ok(())
            })
            .await?;
        let now = rfc3339(self.inner.clock.now());
        let mut st = self.inner.lock();
        st.locations.insert((org.to_owned(), loc.id.clone()), loc.clone());
        for s in st
            .statuses
            .values_mut()
            .filter(|s| s.org == org && s.location == loc.id)
        {
            s.validation.request = loc.validate_request;
            s.validation.requested_at = Some(now.clone());
        }
        drop(st);
        self.wake_org(org);
        Ok(loc)
    }

    /// Asks `cluster` (by name) to sync the location. Refused while a sync there holds its lease;
    /// a stalled one is superseded.
    pub async fn request_sync(&self, org: &str, name: &str, cluster: &str) -> Result<SyncRun> {
        let loc = self.location(org, name)?;
        let now = self.inner.clock.now();
        let (key, status) = {
            let st = self.inner.lock();
            let c = st
                .clusters
                .values()
                .find(|t| t.record.org == org && t.record.name == cluster && t.record.retired_at.is_none())
                .ok_or_else(|| Error::not_found(format!("cluster {cluster} in org {org}")))?;
            let id = LocationStatus::id_of(&loc.id, &c.record.id);
            let status = st.statuses.get(&(org.to_owned(), id.clone())).cloned().ok_or_else(|| {
                Error::precondition(format!(
                    "location {name} is not assigned to cluster {cluster} yet (or the cluster was never reached)"
                ))
            })?;
            ((org.to_owned(), id), status)
        };
        let mut status = status;
        reconcile::apply_leases(
            &mut status,
            now,
            Duration::from_secs(self.inner.config.fleet.lease_secs),
        );
        if let Some(run) = &status.sync
            && run.phase.is_active()
        {
            return Err(Error::precondition(format!(
                "a sync of location {name} on cluster {cluster} is {:?} since {} (last heartbeat {}); \
                 wait for it, or for its lease to expire",
                run.phase,
                run.requested_at,
                run.heartbeat.as_deref().unwrap_or("none")
            )));
        }
        let previous = status.sync.as_ref().map(|r| (r.request, r.phase));
        let run = SyncRun {
            request: previous.map(|p| p.0).unwrap_or(0) + 1,
            phase: RequestPhase::Pending,
            requested_at: rfc3339(now),
            message: match previous {
                Some((n, RequestPhase::Stalled)) => Some(format!("supersedes stalled request {n}")),
                _ => None,
            },
            ..SyncRun::default()
        };
        status.sync = Some(run.clone());
        self.inner.catalog.put(&status, None).await?;
        let mut st = self.inner.lock();
        st.statuses.insert(key, status.clone());
        if let Some(t) = st.clusters.get_mut(&(org.to_owned(), status.cluster.clone())) {
            t.next_due = now;
        }
        st.dirty = true;
        drop(st);
        self.inner.wake.notify_one();
        Ok(run)
    }

    fn wake_org(&self, org: &str) {
        let keys: Vec<Key> = self
            .inner
            .lock()
            .clusters
            .keys()
            .filter(|k| k.0 == org)
            .cloned()
            .collect();
        self.wake_clusters(keys);
    }

    /// Makes the clusters `keys` due now (unless they are backed off as unreachable).
    fn wake_clusters(&self, keys: impl IntoIterator<Item = Key>) {
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        for k in keys {
            if let Some(t) = st.clusters.get_mut(&k)
                && t.failures == 0
            {
                t.next_due = now;
            }
        }
        st.dirty = true;
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Rebuilds the fleet snapshot now.
    pub fn rebuild_snapshot(&self) {
        let now = self.inner.clock.now();
        let snap = {
            let mut st = self.inner.lock();
            st.dirty = false;
            FleetSnapshot::build(st.clusters.values().map(|t| &t.record), st.statuses.values(), now)
        };
        *self.inner.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.inner.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    async fn housekeeping(self) {
        let every = Duration::from_millis(self.inner.config.fleet.snapshot_interval_ms.max(10));
        let lease = Duration::from_secs(self.inner.config.fleet.lease_secs);
        loop {
            tokio::time::sleep(every).await;
            // Leases: a request on a cluster that is not visited (hibernated, offline) still stalls.
            let now = self.inner.clock.now();
            let stalled: Vec<LocationStatus> = {
                let mut st = self.inner.lock();
                let mut changed = Vec::new();
                for s in st.statuses.values_mut() {
                    let before = (s.sync.as_ref().map(|r| r.phase), s.validation.phase.clone());
                    reconcile::apply_leases(s, now, lease);
                    if before != (s.sync.as_ref().map(|r| r.phase), s.validation.phase.clone()) {
                        changed.push(s.clone());
                    }
                }
                if !changed.is_empty() {
                    st.dirty = true;
                }
                changed
            };
            if !stalled.is_empty() {
                self.inner
                    .metrics
                    .stalled
                    .fetch_add(stalled.len() as u64, Ordering::Relaxed);
                for s in &stalled {
                    tracing::warn!(org = %s.org, location = %s.location, cluster = %s.cluster_name, "request stalled");
                }
                if let Err(e) = self.inner.catalog.put_all(&stalled).await {
                    tracing::warn!(error = %e, "cannot record stalled requests");
                }
            }
            let stalled_ops = self.stall_silent_operations(lease).await;
            if stalled_ops > 0 {
                self.inner
                    .metrics
                    .stalled
                    .fetch_add(stalled_ops as u64, Ordering::Relaxed);
                tracing::warn!(count = stalled_ops, "backups or restores stalled");
            }
            if self.inner.lock().dirty {
                self.rebuild_snapshot();
            }
        }
    }

    async fn schedules_loop(self) {
        loop {
            self.fire_due_schedules().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn scheduler(self) {
        loop {
            let now = self.inner.clock.now();
            let free = self.inner.permits.available_permits();
            let due: Vec<Key> = if free == 0 {
                Vec::new()
            } else {
                let mut st = self.inner.lock();
                let cap = org_visit_cap(self.inner.config.fleet.concurrency);
                let due = fair_pick(&st.clusters, now, free, cap);
                for k in &due {
                    if let Some(t) = st.clusters.get_mut(k) {
                        t.busy = true;
                    }
                }
                due
            };
            for key in due {
                let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.visit(key).await;
                    drop(permit);
                });
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn desired_for(&self, st: &State, cluster: &ClusterRecord) -> std::result::Result<Vec<Desired>, String> {
        if !matches!(self.inner.orgs().get(&cluster.org), Some(OrgState::Ready(_))) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for l in st
            .locations
            .values()
            .filter(|l| l.org == cluster.org && l.clusters.selects(cluster))
        {
            let secret = self.inner.open_secret(l).map_err(|e| e.to_string())?;
            out.push(Desired {
                location: l.clone(),
                secret,
            });
        }
        Ok(out)
    }

    async fn visit(&self, key: Key) {
        let fleet = &self.inner.config.fleet;
        let call = Duration::from_millis(fleet.call_timeout_ms);
        let now = self.inner.clock.now();
        let prepared = {
            let st = self.inner.lock();
            st.clusters.get(&key).map(|t| {
                // Statuses of this cluster: one lookup per location of the org.
                let statuses = st
                    .locations
                    .values()
                    .filter(|l| l.org == key.0)
                    .filter_map(|l| {
                        st.statuses
                            .get(&(key.0.clone(), LocationStatus::id_of(&l.id, &key.1)))
                            .map(|s| (l.id.clone(), s.clone()))
                    })
                    .collect::<BTreeMap<_, _>>();
                (
                    t.record.clone(),
                    t.provider.clone(),
                    self.desired_for(&st, &t.record),
                    statuses,
                )
            })
        };
        let Some((record, Some(provider), desired, statuses)) = prepared else {
            self.release(&key);
            return;
        };
        let id = ClusterId(record.id.clone());
        let mut active_ops = false;
        let result = match desired {
            Err(e) => Err(format!("cannot prepare the cluster's locations: {e}")),
            Ok(desired) => {
                let input = VisitInput {
                    cluster: record.clone(),
                    desired,
                    statuses: statuses.clone(),
                    now,
                    lease: Duration::from_secs(fleet.lease_secs),
                    min_agent_version: self.inner.min_agent_version.clone(),
                    install_agent: fleet.install_agent.then(|| fleet.agent_image.clone()),
                };
                let names: BTreeMap<String, String> = input
                    .desired
                    .iter()
                    .map(|d| (d.location.id.clone(), d.location.name.clone()))
                    .collect();
                let mut ops_input = self.operations_input(&key);
                active_ops = !ops_input.is_empty();
                let work = async {
                    let client = client_for(&provider, &id, call).await?;
                    let out = reconcile::visit(&client, input).await?;
                    let (imports, verified) = finished_runs(&statuses, &out.statuses, &names);
                    ops_input.imports = imports;
                    let ops = operations::visit(&client, ops_input).await;
                    Ok((out, ops, verified))
                };
                match tokio::time::timeout(call * 4, work).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {:?}", call * 4)),
                }
            }
        };
        let (result, ops, verified) = match result {
            Ok((out, ops, verified)) => (Ok(out), Some(ops), verified),
            Err(e) => (Err(e), None, Vec::new()),
        };
        let credential = credential_text(&provider.credential_state(&id));
        let after = self.inner.clock.now();
        let (cluster_rec, status_recs, stale) = {
            let mut st = self.inner.lock();
            let Some(t) = st.clusters.get_mut(&key) else {
                return;
            };
            t.busy = false;
            // Discovery may have hibernated, retired or disqualified the cluster while the visit
            // ran; its state from discovery then stands.
            let before = (!t.visitable()).then(|| (t.record.status.state, t.record.status.message.clone()));
            let mut status_recs: Vec<LocationStatus> = Vec::new();
            let mut stale: Vec<String> = Vec::new();
            match result {
                Ok(out) => {
                    t.failures = 0;
                    // Running backups and restores report progress: their cluster is visited
                    // again soon rather than at the next resync.
                    let every = if active_ops {
                        ACTIVE_OPS_REVISIT.min(Duration::from_secs(fleet.resync_secs))
                    } else {
                        Duration::from_secs(fleet.resync_secs)
                    };
                    t.next_due = after + every;
                    t.record.status = ClusterStatus {
                        credential: Some(credential),
                        ..out.status
                    };
                    self.inner.metrics.visits_ok.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .metrics
                        .orphans_deleted
                        .fetch_add(out.orphans_deleted as u64, Ordering::Relaxed);
                    self.inner
                        .metrics
                        .crs_written
                        .fetch_add(out.written as u64, Ordering::Relaxed);
                    if out.orphans_deleted > 0 {
                        tracing::info!(org = %key.0, cluster = %record.name, deleted = out.orphans_deleted, "orphaned objects deleted");
                    }
                    status_recs = out.statuses;
                    // Locations no longer assigned here: their status on this cluster goes too.
                    stale = statuses
                        .values()
                        .filter(|old| !status_recs.iter().any(|s| s.id == old.id))
                        .map(|old| old.id.clone())
                        .collect();
                }
                Err(e) => {
                    t.failures += 1;
                    t.next_due = after
                        + offline_backoff(
                            Duration::from_secs(fleet.offline_backoff_secs),
                            Duration::from_secs(fleet.offline_backoff_max_secs),
                            t.failures,
                        );
                    let last_seen = t.record.status.last_seen.clone();
                    t.record.status = ClusterStatus {
                        state: ClusterState::Unreachable,
                        message: Some(e.clone()),
                        credential: Some(credential),
                        agent_version: t.record.status.agent_version.clone(),
                        last_seen,
                        last_attempt: Some(rfc3339(after)),
                    };
                    self.inner.metrics.visits_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(org = %key.0, cluster = %record.name, error = %e, failures = t.failures, "cluster unreachable");
                    for mut s in statuses.into_values() {
                        reconcile::apply_leases(&mut s, after, Duration::from_secs(fleet.lease_secs));
                        status_recs.push(s);
                    }
                }
            }
            if let Some((state, message)) = before {
                t.record.status.state = state;
                t.record.status.message = message;
            }
            let cluster_rec = t.record.clone();
            // A location deleted while the visit ran must not come back through its status.
            status_recs.retain(|s| st.locations.contains_key(&(s.org.clone(), s.location.clone())));
            for s in &mut status_recs {
                let key = (s.org.clone(), s.id.clone());
                // A sync or validation requested while the visit ran must not be lost.
                if let Some(current) = st.statuses.get(&key) {
                    reconcile::keep_newer_requests(current, s);
                }
                st.statuses.insert(key, s.clone());
            }
            for id in &stale {
                st.statuses.remove(&(key.0.clone(), id.clone()));
            }
            st.dirty = true;
            (cluster_rec, status_recs, stale)
        };
        for id in stale {
            if let Err(e) = self.inner.catalog.delete::<LocationStatus>(&key.0, &id).await {
                tracing::warn!(org = %key.0, status = %id, error = %e, "cannot delete a stale location status");
            }
        }
        let mut puts = Vec::with_capacity(1 + status_recs.len());
        let encoded = Catalog::put_of(&cluster_rec, None)
            .map(|p| puts.push(p))
            .and_then(|_| {
                for s in &status_recs {
                    puts.push(Catalog::put_of(s, None)?);
                }
                Ok(())
            });
        let written = match encoded {
            Ok(()) => self.inner.catalog.store().put(puts).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(org = %key.0, cluster = %record.name, error = %e, "cannot record the cluster's status");
        }
        match ops {
            Some(Ok(out)) => self.absorb_operations(&key, out).await,
            Some(Err(e)) => {
                tracing::warn!(org = %key.0, cluster = %record.name, error = %e, "backups and restores not driven in this visit");
            }
            None => {}
        }
        for (location, missing) in verified {
            self.absorb_verify(&key.0, &location, &missing).await;
        }
    }

    fn release(&self, key: &Key) {
        if let Some(t) = self.inner.lock().clusters.get_mut(key) {
            t.busy = false;
        }
    }

    /// Whether a discovery of the org runs (its provider connected).
    pub fn discovery_running(&self, org: &str, id: &str) -> bool {
        self.inner
            .lock()
            .running
            .contains_key(&(org.to_owned(), id.to_owned()))
    }

    /// The providers of running discoveries (for metrics and benchmarks).
    pub fn providers(&self) -> Vec<Arc<GardenerProvider>> {
        self.inner
            .lock()
            .running
            .values()
            .map(|d| d.provider.clone())
            .collect()
    }

    /// A user's stored preferences (they survive new logins and restarts).
    pub async fn user_preferences(&self, user: &str) -> Result<pxb_core::catalog::records::Preferences> {
        Ok(self
            .inner
            .catalog
            .find::<pxb_core::catalog::records::Preferences>("", user)
            .await?
            .map(|v| v.value)
            .unwrap_or_else(|| pxb_core::catalog::records::Preferences {
                user: user.to_owned(),
                values: BTreeMap::new(),
            }))
    }

    /// Stores a user's preferences.
    pub async fn set_user_preferences(&self, prefs: &pxb_core::catalog::records::Preferences) -> Result<()> {
        self.inner.catalog.put(prefs, None).await.map(|_| ())
    }

    /// A value kept for one sign-in session only.
    pub fn session_value(&self, user: &str, session: &str) -> Option<serde_json::Value> {
        let mut m = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.inner.clock.now();
        m.get_mut(&(user.to_owned(), session.to_owned()))
            .map(|(used, v)| {
                *used = now;
                v.clone()
            })
    }

    /// Keeps a value for one sign-in session; the least recently used sessions are forgotten
    /// beyond a bound.
    pub fn set_session_value(&self, user: &str, session: &str, value: serde_json::Value) {
        let mut m = self.inner.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_SESSIONS
            && let Some(oldest) = m
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        m.insert(
            (user.to_owned(), session.to_owned()),
            (self.inner.clock.now(), value),
        );
    }

    /// Checks a bearer token.
    pub async fn authenticate(&self, token: &str) -> std::result::Result<auth::Caller, auth::AuthError> {
        let id = self.inner.authenticator.authenticate(token).await?;
        let a = &self.inner.config.auth;
        Ok(auth::Caller::new(
            id,
            &a.provider_admin_groups,
            &a.provider_admin_roles,
        ))
    }
}

/// Syncs that completed and verifies that finished in a visit (comparing the statuses before and
/// after): the syncs' locations (id, name) have their catalogs imported, and the verifies'
/// results (location id, missing objects by backup id) are recorded on the backups.
#[allow(clippy::type_complexity)]
fn finished_runs(
    before: &BTreeMap<String, LocationStatus>,
    after: &[LocationStatus],
    names: &BTreeMap<String, String>,
) -> (Vec<(String, String)>, Vec<(String, BTreeMap<String, u64>)>) {
    let mut imports = Vec::new();
    let mut verified = Vec::new();
    for s in after {
        let old = before.get(&s.location);
        if let Some(run) = &s.sync
            && run.phase == RequestPhase::Completed
            && old
                .and_then(|o| o.sync.as_ref())
                .is_none_or(|o| o.request != run.request || o.phase != RequestPhase::Completed)
            && let Some(name) = names.get(&s.location)
        {
            imports.push((s.location.clone(), name.clone()));
        }
        if let Some(v) = &s.verify
            && v.phase == "Completed"
            && old
                .and_then(|o| o.verify.as_ref())
                .is_none_or(|o| o.completed != v.completed)
        {
            verified.push((s.location.clone(), v.missing_by_backup.clone()));
        }
    }
    (imports, verified)
}

/// How long an unreachable cluster waits for its next visit after `failures` failed ones in a
/// row: `base`, doubling per failure, at most `max`. Offline clusters thus take fewer and fewer of
/// the visit slots.
pub fn offline_backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// A client for one visit. Not kept between visits: an idle connection per cluster would cost
/// thousands of open TLS sessions across a fleet.
async fn client_for(
    provider: &Arc<dyn ClusterProvider>,
    id: &ClusterId,
    call: Duration,
) -> std::result::Result<kube::Client, String> {
    let access = tokio::time::timeout(call * 2, provider.access(id))
        .await
        .map_err(|_| "no kubeconfig within the deadline".to_string())?
        .map_err(|e| format!("no credential: {e}"))?;
    let mut config = pxb_gardener::kube_config(&access).map_err(|e| e.to_string())?;
    config.connect_timeout = Some(call);
    config.read_timeout = Some(call);
    config.write_timeout = Some(call);
    kube::Client::try_from(config).map_err(|e| format!("building a client: {e}"))
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn orgs(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, OrgState>> {
        self.orgs.read().unwrap_or_else(|e| e.into_inner())
    }

    fn orgs_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, OrgState>> {
        self.orgs.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A provider handing out the opened kubeconfig of an imported cluster.
    fn imported_provider(&self, c: &ClusterRecord) -> Result<Arc<dyn ClusterProvider>> {
        let sealed = c
            .sealed_kubeconfig
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("cluster {} has no kubeconfig", c.name)))?;
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            Error::precondition(format!(
                "cluster {} has a sealed kubeconfig and the server has no secrets key",
                c.name
            ))
        })?;
        let yaml = sealer.open(sealed, &format!("{}/cluster/{}", c.org, c.id))?;
        let yaml = String::from_utf8(yaml)
            .map_err(|_| Error::corrupt(format!("the kubeconfig of {} is not text", c.name)))?;
        let now = self.clock.now();
        let access = pxb_gardener::parse_access(&yaml, now, now + IMPORTED_VALIDITY)?;
        let p = pxb_core::cluster::StaticClusters::new();
        p.insert(
            ClusterInfo {
                id: ClusterId(c.id.clone()),
                name: c.name.clone(),
                namespace: String::new(),
                provider_type: "imported".into(),
                kubernetes_version: String::new(),
                region: String::new(),
                labels: c.labels.clone(),
                eligibility: Eligibility::Eligible,
            },
            Some(access),
        );
        Ok(Arc::new(p))
    }

    /// The context a location's credential is sealed for, so it opens for no other record.
    fn credential_context(l: &LocationRecord) -> String {
        format!("{}/location/{}", l.org, l.id)
    }

    /// Seals `value` as the classic credential of `loc`.
    fn seal_credential(&self, loc: &mut LocationRecord, kind: String, value: &str) -> Result<()> {
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            Error::precondition("classic locations need a secrets key (secrets.keyFile or PXB_SECRETS_KEY)")
        })?;
        let sealed = sealer.seal(value.as_bytes(), &Self::credential_context(loc))?;
        loc.credential = Some(pxb_core::catalog::records::SealedCredential { kind, sealed });
        Ok(())
    }

    /// The opened classic secret of `l`, or `None` for a federated location.
    fn open_secret(&self, l: &LocationRecord) -> Result<Option<(String, Vec<u8>)>> {
        let Some(c) = &l.credential else {
            return Ok(None);
        };
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            Error::precondition(format!(
                "location {} has a sealed credential and the server has no secrets key",
                l.name
            ))
        })?;
        let plain = sealer.open(&c.sealed, &Self::credential_context(l))?;
        Ok(Some((c.kind.clone(), plain)))
    }
}

/// A configured, running `pxb-server`: the catalog opened, logins set up, background tasks
/// started, the API listening. What the `pxb-server` binary runs, and what tests start.
#[derive(Debug)]
pub struct Daemon {
    /// The server.
    pub server: Server,
    /// The API's address.
    pub addr: std::net::SocketAddr,
    _running: Running,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    api: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Daemon {
    /// Opens the catalog at `config.catalog.path`, builds the authenticators (OIDC when
    /// `auth.issuer` is set; the development token only when `dev_token` is given, with a
    /// warning), the sealer (`env("PXB_SECRETS_KEY")` or `secrets.keyFile`), and starts serving.
    pub async fn start(
        config: ServerConfig,
        dev_token: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Daemon> {
        let catalog = sqlite::SqliteCatalog::open(&config.catalog.path).await?;
        let mut auths: Vec<Arc<dyn Authenticator>> = Vec::new();
        if !config.auth.issuer.is_empty() {
            let mut oidc =
                pxb_azure::oidc::OidcConfig::new(&config.auth.issuer, config.auth.audiences.clone());
            if !config.auth.issuer_ca_file.is_empty() {
                let pem = std::fs::read_to_string(&config.auth.issuer_ca_file).map_err(|e| {
                    Error::io(
                        format!("reading auth.issuerCaFile {}", config.auth.issuer_ca_file),
                        e,
                    )
                })?;
                oidc.extra_ca_pem = Some(pem);
            }
            let v = pxb_azure::oidc::OidcValidator::new(oidc)
                .map_err(|e| Error::invalid(format!("auth: {e}")))?;
            auths.push(Arc::new(auth::OidcAuthenticator(v)));
        }
        if let Some(t) = dev_token {
            if t.len() < 16 {
                return Err(Error::invalid(
                    "the development token must be at least 16 characters",
                ));
            }
            let loopback = config
                .api
                .listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback());
            if !loopback {
                return Err(Error::invalid(format!(
                    "the development token is accepted only when api.listen is a loopback address, not {:?}",
                    config.api.listen
                )));
            }
            tracing::warn!(
                "DEVELOPMENT MODE: a static bearer token grants provider administration; never use a development token in production"
            );
            auths.push(Arc::new(auth::DevToken::new(t)));
        }
        if auths.is_empty() {
            tracing::warn!("no login is configured (auth.issuer is empty): every API call will be refused");
        }
        let sealer = Sealer::from_config(&config.secrets.key_file, env("PXB_SECRETS_KEY"))?;
        let listen = config.api.listen.clone();
        let server = Server::build(
            config,
            ServerDeps {
                catalog: Arc::new(catalog),
                clock: Arc::new(pxb_core::SystemClock),
                authenticator: Arc::new(auth::Authenticators(auths)),
                sealer,
            },
        )
        .await?;
        for (org, st) in server.orgs() {
            if let OrgState::Degraded { reason } = st {
                tracing::error!(%org, %reason, "org degraded");
            }
        }
        let running = server.spawn();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listen address", e))?;
        // The API gets its own thread and runtime, so reads (the fleet status above all) never
        // queue behind cluster visits busy with TLS handshakes.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let std_listener = listener
            .into_std()
            .map_err(|e| Error::io("preparing the API listener", e))?;
        let api_server = server.clone();
        let api = std::thread::Builder::new()
            .name("pxb-api".into())
            .spawn(move || -> std::io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener)?;
                    api::serve(api_server, listener, async move {
                        let _ = rx.await;
                    })
                    .await
                })
            })
            .map_err(|e| Error::io("starting the API thread", e))?;
        tracing::info!(%addr, "pxb-server listening");
        Ok(Daemon {
            server,
            addr,
            _running: running,
            shutdown: Some(tx),
            api,
        })
    }

    /// Stops accepting requests, lets those in flight finish (up to `api.shutdownGraceSecs`),
    /// and stops the background tasks.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let grace = Duration::from_secs(self.server.config().api.shutdown_grace_secs);
        let deadline = tokio::time::Instant::now() + grace;
        while !self.api.is_finished() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if self.api.is_finished() {
            match self.api.join() {
                Ok(Ok(())) => tracing::info!("pxb-server stopped"),
                Ok(Err(e)) => tracing::warn!(error = %e, "the API stopped with an error"),
                Err(_) => tracing::warn!("the API thread panicked"),
            }
        } else {
            tracing::warn!("requests still running after the grace period; stopping anyway");
        }
    }
}

/// How many visits one org may have in flight while the fleet has other orgs: three quarters of
/// the fleet's concurrency (at least one), so that an org whose clusters all hang until their
/// deadline never holds every visit slot.
fn org_visit_cap(concurrency: usize) -> usize {
    (concurrency * 3 / 4).max(1)
}

/// Up to `free` due clusters to visit now, fairly between orgs: each org's due clusters in the
/// order they fell due, and each slot to the waiting org with the fewest visits in flight, so a
/// few clusters of one org are not queued behind thousands of another's. An org at `cap` visits
/// in flight gets no more while the fleet has other orgs (so slots stay free for them to fall
/// due); the fleet's only org may use every slot.
fn fair_pick(clusters: &HashMap<Key, Tracked>, now: SystemTime, free: usize, cap: usize) -> Vec<Key> {
    /// Per org: visits in flight, and due clusters with when they fell due.
    type OrgQueue<'a> = (usize, Vec<(SystemTime, &'a Key)>);
    let mut by_org: BTreeMap<&str, OrgQueue<'_>> = BTreeMap::new();
    for (k, t) in clusters.iter().filter(|(_, t)| t.busy || t.visitable()) {
        let entry = by_org.entry(k.0.as_str()).or_default();
        if t.busy {
            entry.0 += 1;
        } else if t.visitable() && t.next_due <= now {
            entry.1.push((t.next_due, k));
        }
    }
    // With other orgs in the fleet, the cap holds even while they have nothing due: a quarter of
    // the slots stays free for them, so one falling due is not queued behind hanging visits.
    let shared = by_org.len() > 1;
    let mut queues: Vec<(usize, std::collections::VecDeque<&Key>)> = by_org
        .into_values()
        .filter(|(_, due)| !due.is_empty())
        .map(|(busy, mut due)| {
            due.sort();
            (busy, due.into_iter().map(|(_, k)| k).collect())
        })
        .collect();
    let mut out = Vec::with_capacity(free.min(clusters.len()));
    while out.len() < free {
        // The waiting org with the fewest visits in flight goes next (the first by id on a tie);
        // one at its cap only when it is the fleet's only org.
        let next = queues
            .iter_mut()
            .filter(|(busy, q)| !q.is_empty() && (*busy < cap || !shared))
            .min_by_key(|(busy, _)| *busy);
        let Some((busy, q)) = next else { break };
        if let Some(k) = q.pop_front() {
            out.push(k.clone());
            *busy += 1;
        }
    }
    out
}

/// The order in which discoveries claim a project: the first created (then org and id) owns it.
fn first_claim(d: &DiscoveryConfig) -> (String, String, String) {
    (d.created_at.clone(), d.org.clone(), d.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_clusters_are_visited_less_and_less_often() {
        let (base, max) = (Duration::from_secs(15), Duration::from_secs(300));
        let waits: Vec<u64> = (1..=7).map(|f| offline_backoff(base, max, f).as_secs()).collect();
        assert_eq!(waits, vec![15, 30, 60, 120, 240, 300, 300]);
        assert_eq!(offline_backoff(base, max, 0), base);
        assert_eq!(offline_backoff(base, max, u32::MAX), max);
    }

    fn tracked(org: &str, n: usize, busy: usize, due: SystemTime) -> Vec<(Key, Tracked)> {
        let provider: Arc<dyn ClusterProvider> = Arc::new(pxb_core::cluster::StaticClusters::new());
        (0..n)
            .map(|i| {
                let key = (org.to_owned(), format!("{org}-{i:05}"));
                let t = Tracked {
                    record: ClusterRecord::default(),
                    provider: Some(provider.clone()),
                    next_due: due + Duration::from_millis(i as u64),
                    failures: 0,
                    busy: i < busy,
                };
                (key, t)
            })
            .collect()
    }

    #[test]
    fn visits_are_shared_fairly_between_orgs() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = t0 + Duration::from_secs(60);
        let count = |picked: &[Key], org: &str| picked.iter().filter(|k| k.0 == org).count();
        // An org with thousands of clusters due first does not queue another's few behind them.
        let mut clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 0, t0).into_iter().collect();
        clusters.extend(tracked("calm", 3, 0, t0 + Duration::from_secs(30)));
        let picked = fair_pick(&clusters, now, 8, org_visit_cap(8));
        assert_eq!(picked.len(), 8);
        assert_eq!(count(&picked, "calm"), 3, "{picked:?}");
        // The flood's own come in the order they fell due.
        let flood: Vec<&str> = picked
            .iter()
            .filter(|k| k.0 == "flood")
            .map(|k| k.1.as_str())
            .collect();
        assert_eq!(
            flood,
            [
                "flood-00000",
                "flood-00001",
                "flood-00002",
                "flood-00003",
                "flood-00004"
            ]
        );
        // An org at its cap (3/4 of the slots) gets no more while another waits...
        let mut clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 6, t0).into_iter().collect();
        clusters.extend(tracked("calm", 3, 0, t0));
        let picked = fair_pick(&clusters, now, 2, org_visit_cap(8));
        assert_eq!(count(&picked, "calm"), 2, "{picked:?}");
        // ...or while another org has nothing due yet (its share stays free for it)...
        let mut clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 6, t0).into_iter().collect();
        clusters.extend(tracked("calm", 3, 0, now + Duration::from_secs(5)));
        assert!(fair_pick(&clusters, now, 2, org_visit_cap(8)).is_empty());
        // ...and takes every free slot when it is the fleet's only org.
        let clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 6, t0).into_iter().collect();
        assert_eq!(fair_pick(&clusters, now, 2, org_visit_cap(8)).len(), 2);
        // Slots go to the org with the fewest visits in flight.
        let mut clusters: HashMap<Key, Tracked> = tracked("a", 100, 3, t0).into_iter().collect();
        clusters.extend(tracked("b", 100, 0, t0));
        clusters.extend(tracked("c", 100, 1, t0));
        let picked = fair_pick(&clusters, now, 4, 100);
        assert_eq!(
            (count(&picked, "a"), count(&picked, "b"), count(&picked, "c")),
            (0, 3, 1),
            "{picked:?}"
        );
        // Nothing not yet due, busy, or not visitable.
        let clusters: HashMap<Key, Tracked> = tracked("later", 10, 0, now + Duration::from_secs(1))
            .into_iter()
            .collect();
        assert!(fair_pick(&clusters, now, 8, 6).is_empty());
    }
}
