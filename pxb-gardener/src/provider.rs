//! [`GardenerProvider`]: discovery of a project's shoots and short-lived admin kubeconfigs for
//! them, kept in memory and renewed before they expire.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use pxb_core::cluster::{
    ClusterAccess, ClusterDiff, ClusterId, ClusterInfo, ClusterProvider, CredentialState, Eligibility,
};
use pxb_core::{Clock, Error, Result, SystemClock};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore, mpsc};

use crate::classify::{Policy, classify_object};
use crate::kubeconfig::parse_access;
use crate::types::{Project, Shoot};

/// The variable naming the garden kubeconfig file ([`GardenerConfig::from_env`]).
pub const ENV_GARDEN_KUBECONFIG: &str = "PXB_GARDEN_KUBECONFIG";
/// The variable naming the Gardener project ([`GardenerConfig::from_env`]).
pub const ENV_GARDEN_PROJECT: &str = "PXB_GARDEN_PROJECT";

/// How pxb authenticates to the garden.
///
/// Non-exhaustive: more methods may come.
#[derive(Clone)]
#[non_exhaustive]
pub enum GardenAuth {
    /// A kubeconfig (YAML text), e.g. of a project service account.
    Kubeconfig(String),
    /// A bearer token for `server`, trusting `ca_pem` (or the system roots when `None`).
    Token {
        /// Garden API URL.
        server: String,
        /// Bearer token.
        token: String,
        /// CA of the garden API, PEM.
        ca_pem: Option<String>,
    },
}

impl GardenAuth {
    /// The kubeconfig in the file at `path` (e.g. a mounted Secret of a project service
    /// account), read now: the garden client keeps it in memory.
    ///
    /// Errors: [`Error::Io`] when the file cannot be read, naming it.
    pub fn kubeconfig_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let yaml = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading the garden kubeconfig {}", path.display()), e))?;
        Ok(GardenAuth::Kubeconfig(yaml))
    }
}

impl std::fmt::Debug for GardenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GardenAuth::Kubeconfig(_) => f.write_str("Kubeconfig(<redacted>)"),
            GardenAuth::Token { server, .. } => {
                write!(f, "Token {{ server: {server:?}, token: <redacted> }}")
            }
        }
    }
}

/// Settings of a [`GardenerProvider`].
///
/// Make one with [`GardenerConfig::new`] or [`GardenerConfig::from_env`], then adjust it with the
/// chainable `with_…` setters (or assign the public fields). Non-exhaustive: fields may be added,
/// so it cannot be written as a struct literal outside this crate.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use pxb_core::SystemClock;
/// use pxb_gardener::{GardenAuth, GardenerConfig};
///
/// let kubeconfig = String::from("apiVersion: v1\nkind: Config\n"); // a project service account's
/// let config = GardenerConfig::new(GardenAuth::Kubeconfig(kubeconfig), "dev")
///     .with_expiration(Duration::from_secs(30 * 60))
///     .with_discovery_interval(Duration::from_secs(5 * 60))
///     .with_issue_concurrency(64)
///     .with_eager(false)
///     .with_clock(Arc::new(SystemClock)); // the default; a `ManualClock` in tests
/// assert_eq!(config.project, "dev");
/// assert_eq!(config.expiration, Duration::from_secs(1800));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GardenerConfig {
    /// Garden credentials.
    pub garden: GardenAuth,
    /// Project name.
    pub project: String,
    /// What makes a shoot eligible.
    pub policy: Policy,
    /// Kubeconfig lifetime to request (`expirationSeconds`; Gardener accepts 600 s to its maximum).
    pub expiration: Duration,
    /// Renew at this fraction of the lifetime the garden granted…
    pub renew_fraction: f64,
    /// …plus or minus up to this fraction of the lifetime, chosen at random per cluster, so the
    /// renewals of many clusters spread out.
    pub renew_jitter: f64,
    /// Full discovery cycle (the watch reports changes in between).
    pub discovery_interval: Duration,
    /// Page size of shoot lists.
    pub page_size: u32,
    /// Deadline of each garden request.
    pub request_timeout: Duration,
    /// Kubeconfig requests in flight at most.
    pub issue_concurrency: usize,
    /// Keep a fresh credential for every eligible cluster (instead of issuing on first use).
    pub eager: bool,
    /// First retry delay after a failed issuance; doubles up to `retry_max`.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// The wall clock that decides whether a credential is fresh, due for renewal or expired
    /// (default [`SystemClock`]; a [`pxb_core::ManualClock`] makes those decisions testable
    /// without waiting). Waiting itself (retry backoff, tick intervals) stays on tokio's timer.
    pub clock: Arc<dyn Clock>,
}

impl GardenerConfig {
    /// Defaults for `project` with `garden` credentials: 1 h kubeconfigs renewed at 80 % ± 10 %,
    /// discovery every minute, pages of 500, 15 s deadlines, 32 issuances in flight, eager.
    pub fn new(garden: GardenAuth, project: impl Into<String>) -> Self {
        Self {
            garden,
            project: project.into(),
            policy: Policy::default(),
            expiration: Duration::from_secs(3600),
            renew_fraction: 0.8,
            renew_jitter: 0.1,
            discovery_interval: Duration::from_secs(60),
            page_size: 500,
            request_timeout: Duration::from_secs(15),
            issue_concurrency: 32,
            eager: true,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
        }
    }

    /// Settings from the process environment; see [`GardenerConfig::from_env_with`].
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Settings from `lookup` (a variable's value by name; empty values count as unset):
    ///
    /// | variable | sets |
    /// |---|---|
    /// | `PXB_GARDEN_KUBECONFIG` | the path of the garden kubeconfig, e.g. a project service account's; read now ([`GardenAuth::kubeconfig_file`]) |
    /// | `PXB_GARDEN_PROJECT` | the Gardener [`project`](Self::project) (its name, not its namespace) |
    ///
    /// Both are required; every other setting keeps the defaults of [`GardenerConfig::new`].
    ///
    /// Errors: [`Error::Invalid`] when a variable is missing, [`Error::Io`] when the kubeconfig
    /// cannot be read. The kubeconfig itself is checked by [`GardenerProvider::connect`].
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let required = |name: &str, what: &str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| Error::invalid(format!("{name} is not set: it names {what}")))
        };
        let path = required(
            ENV_GARDEN_KUBECONFIG,
            "the garden kubeconfig file (e.g. a Gardener project service account's)",
        )?;
        let project = required(
            ENV_GARDEN_PROJECT,
            "the Gardener project whose shoots to discover",
        )?;
        let garden = GardenAuth::kubeconfig_file(&path).map_err(|e| e.context(ENV_GARDEN_KUBECONFIG))?;
        Ok(Self::new(garden, project.trim()))
    }

    /// Sets the garden credentials ([`garden`](Self::garden)).
    pub fn with_garden(mut self, garden: GardenAuth) -> Self {
        self.garden = garden;
        self
    }

    /// Sets the Gardener [`project`](Self::project).
    pub fn with_project(mut self, project: impl Into<String>) -> Self {
        self.project = project.into();
        self
    }

    /// Sets what makes a shoot eligible ([`policy`](Self::policy)).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the kubeconfig lifetime to request ([`expiration`](Self::expiration); Gardener accepts
    /// 600 s to its maximum).
    pub fn with_expiration(mut self, lifetime: Duration) -> Self {
        self.expiration = lifetime;
        self
    }

    /// Sets when a credential is renewed: at `fraction` of its lifetime
    /// ([`renew_fraction`](Self::renew_fraction), in `[0.1, 1)`) plus or minus up to `jitter` of
    /// it ([`renew_jitter`](Self::renew_jitter), in `[0, 0.5)`). Checked by
    /// [`GardenerProvider::connect`].
    pub fn with_renewal(mut self, fraction: f64, jitter: f64) -> Self {
        self.renew_fraction = fraction;
        self.renew_jitter = jitter;
        self
    }

    /// Sets the interval of full discovery cycles ([`discovery_interval`](Self::discovery_interval)).
    pub fn with_discovery_interval(mut self, interval: Duration) -> Self {
        self.discovery_interval = interval;
        self
    }

    /// Sets the page size of shoot lists ([`page_size`](Self::page_size)).
    pub fn with_page_size(mut self, shoots: u32) -> Self {
        self.page_size = shoots;
        self
    }

    /// Sets the deadline of each garden request ([`request_timeout`](Self::request_timeout)).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets how many kubeconfig requests may be in flight
    /// ([`issue_concurrency`](Self::issue_concurrency)).
    pub fn with_issue_concurrency(mut self, requests: usize) -> Self {
        self.issue_concurrency = requests;
        self
    }

    /// Sets whether a fresh credential is kept for every eligible cluster
    /// ([`eager`](Self::eager)) instead of issuing on first use.
    pub fn with_eager(mut self, eager: bool) -> Self {
        self.eager = eager;
        self
    }

    /// Sets the retry delays after a failed issuance: `base` first, doubling up to `max`
    /// ([`retry_base`](Self::retry_base), [`retry_max`](Self::retry_max)).
    pub fn with_retry(mut self, base: Duration, max: Duration) -> Self {
        self.retry_base = base;
        self.retry_max = max;
        self
    }

    /// Sets the wall clock the credential decisions read ([`clock`](Self::clock)).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

#[derive(Debug)]
struct Cred {
    access: Option<Arc<ClusterAccess>>,
    /// Credentials dropped in a row because the cluster refused them (reset by a renewal on
    /// schedule): each one more must have lived longer before it is dropped ([`refusal_hold`]).
    refusals: u32,
    /// When to renew (or retry, after a failure).
    due: SystemTime,
    attempts: u32,
    last_error: Option<String>,
    in_flight: bool,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// How long a credential must have lived before a refusal drops it, after `refusals` refused
/// ones in a row: at once for the first, then 15 s doubling, at most half the credential's
/// lifetime (a renewal on schedule comes anyway). Bounds what a cluster that refuses every
/// credential costs the garden.
fn refusal_hold(refusals: u32, lifetime: Duration) -> Duration {
    if refusals == 0 {
        return Duration::ZERO;
    }
    let hold = Duration::from_secs(15).saturating_mul(1 << (refusals - 1).min(16));
    hold.min(lifetime / 2)
}

impl Cred {
    fn new(due: SystemTime) -> Self {
        Self {
            access: None,
            refusals: 0,
            due,
            attempts: 0,
            last_error: None,
            in_flight: false,
            lock: Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    inventory: BTreeMap<ClusterId, ClusterInfo>,
    creds: HashMap<ClusterId, Cred>,
}

/// Counters of a provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderStats {
    /// Kubeconfigs issued (renewals included).
    pub issued: u64,
    /// Failed kubeconfig requests (failed renewals included).
    pub failed: u64,
    /// Of `issued`, the renewals: kubeconfigs issued for a cluster that held one (on schedule,
    /// or because the one it held expired).
    pub renewed: u64,
    /// Of `failed`, the renewals that failed.
    pub renew_failed: u64,
    /// Of `issued`, the first issuances: kubeconfigs issued for a cluster that held none. A
    /// counter of its own (not `issued - renewed`, which a read between the two increments
    /// sees one too low).
    pub first_issued: u64,
    /// Of `failed`, the first issuances that failed (a counter of its own, like
    /// `first_issued`).
    pub first_failed: u64,
    /// Full discovery cycles run.
    pub discoveries: u64,
    /// Full discovery cycles that failed (listing the project's shoots).
    pub discoveries_failed: u64,
    /// Clusters tracked.
    pub clusters: usize,
    /// Credentials held.
    pub credentials: usize,
}

/// The Gardener [`ClusterProvider`] (see the crate docs).
pub struct GardenerProvider {
    config: GardenerConfig,
    client: kube::Client,
    namespace: OnceCell<String>,
    state: Mutex<State>,
    permits: Semaphore,
    issued: AtomicU64,
    failed: AtomicU64,
    renewed: AtomicU64,
    renew_failed: AtomicU64,
    first_issued: AtomicU64,
    first_failed: AtomicU64,
    discoveries: AtomicU64,
    discoveries_failed: AtomicU64,
    issued_per_second: Mutex<BTreeMap<u64, u32>>,
}

impl std::fmt::Debug for GardenerProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GardenerProvider")
            .field("project", &self.config.project)
            .finish_non_exhaustive()
    }
}

/// Maps a kube client error onto pxb's error variants, keeping the API server's message and
/// naming what was being done.
pub fn map_kube_error(what: &str, e: kube::Error) -> Error {
    match e {
        kube::Error::Api(status) => {
            let msg = format!("{what}: {} ({} {})", status.message, status.code, status.reason);
            match status.code {
                404 => Error::not_found(msg),
                409 if status.reason == "AlreadyExists" => Error::already_exists(msg),
                409 => Error::precondition(msg),
                400 | 422 => Error::invalid(msg),
                401 => Error::unauthenticated(msg),
                403 => Error::permission_denied(msg),
                429 => Error::throttled(msg),
                _ => Error::unavailable(msg),
            }
        }
        other => Error::unavailable(format!("{what}: {other}")),
    }
}

fn unix(t: SystemTime) -> u64 {
    pxb_core::clock::unix_secs(t)
}

/// When to renew a credential issued at `issued` that expires at `expires`: at `fraction` of its
/// lifetime, moved by `offset` (a fraction of the lifetime in `[-jitter, jitter]`), kept between
/// half of the lifetime and 5 % before expiry.
pub fn renew_time(issued: SystemTime, expires: SystemTime, fraction: f64, offset: f64) -> SystemTime {
    let lifetime = expires
        .duration_since(issued)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    let at = (fraction + offset).clamp(0.5, 0.95) * lifetime;
    issued + Duration::from_secs_f64(at)
}

impl GardenerProvider {
    /// Connects to the garden (no request is made yet).
    pub async fn connect(config: GardenerConfig) -> Result<Arc<Self>> {
        let kube_config = match &config.garden {
            GardenAuth::Kubeconfig(yaml) => {
                let kc = kube::config::Kubeconfig::from_yaml(yaml)
                    .map_err(|e| Error::invalid(format!("the garden kubeconfig is not valid: {e}")))?;
                kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                    .await
                    .map_err(|e| Error::invalid(format!("the garden kubeconfig is not usable: {e}")))?
            }
            GardenAuth::Token {
                server,
                token,
                ca_pem,
            } => {
                let url = server
                    .parse()
                    .map_err(|e| Error::invalid(format!("garden URL {server:?}: {e}")))?;
                let mut c = kube::Config::new(url);
                c.auth_info.token = Some(token.clone().into());
                if let Some(pem) = ca_pem {
                    use rustls::pki_types::CertificateDer;
                    use rustls::pki_types::pem::PemObject as _;
                    let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
                        .map(|c| c.map(|c| c.to_vec()))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| Error::invalid(format!("the garden CA is not PEM: {e}")))?;
                    c.root_cert = Some(roots);
                }
                c
            }
        };
        let mut kube_config = kube_config;
        kube_config.connect_timeout = Some(config.request_timeout);
        kube_config.read_timeout = Some(config.request_timeout);
        let client = kube::Client::try_from(kube_config)
            .map_err(|e| Error::invalid(format!("building the garden client: {e}")))?;
        if !(0.1..1.0).contains(&config.renew_fraction) || !(0.0..0.5).contains(&config.renew_jitter) {
            return Err(Error::invalid(
                "renew_fraction must be in [0.1, 1) and renew_jitter in [0, 0.5)",
            ));
        }
        Ok(Arc::new(Self {
            permits: Semaphore::new(config.issue_concurrency.max(1)),
            config,
            client,
            namespace: OnceCell::new(),
            state: Mutex::new(State::default()),
            issued: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            renewed: AtomicU64::new(0),
            renew_failed: AtomicU64::new(0),
            first_issued: AtomicU64::new(0),
            first_failed: AtomicU64::new(0),
            discoveries: AtomicU64::new(0),
            discoveries_failed: AtomicU64::new(0),
            issued_per_second: Mutex::new(BTreeMap::new()),
        }))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configuration.
    pub fn config(&self) -> &GardenerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> ProviderStats {
        let st = self.state();
        ProviderStats {
            issued: self.issued.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            renewed: self.renewed.load(Ordering::Relaxed),
            renew_failed: self.renew_failed.load(Ordering::Relaxed),
            first_issued: self.first_issued.load(Ordering::Relaxed),
            first_failed: self.first_failed.load(Ordering::Relaxed),
            discoveries: self.discoveries.load(Ordering::Relaxed),
            discoveries_failed: self.discoveries_failed.load(Ordering::Relaxed),
            clusters: st.inventory.len(),
            credentials: st.creds.values().filter(|c| c.access.is_some()).count(),
        }
    }

    /// Kubeconfigs issued per second (Unix second → count), for measuring how renewals spread.
    pub fn issued_per_second(&self) -> BTreeMap<u64, u32> {
        self.issued_per_second
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The clusters as last discovered, in identity order.
    pub fn inventory(&self) -> Vec<ClusterInfo> {
        self.state().inventory.values().cloned().collect()
    }

    /// How many shoots the inventory holds.
    pub fn tracked(&self) -> usize {
        self.state().inventory.len()
    }

    /// One garden request with the configured deadline; errors name `what` was being done.
    async fn garden_call<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<T> {
        tokio::time::timeout(self.config.request_timeout, call)
            .await
            .map_err(|_| Error::unavailable(format!("{what}: the garden did not answer in time")))?
            .map_err(|e| map_kube_error(what, e))
    }

    /// The project's namespace, from its Project object (read once).
    pub async fn project_namespace(&self) -> Result<String> {
        let project = &self.config.project;
        let ns = self
            .namespace
            .get_or_try_init(|| async {
                let api: Api<Project> = Api::all(self.client.clone());
                let p = self
                    .garden_call(&format!("reading project {project}"), api.get(project))
                    .await?;
                p.spec
                    .namespace
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| Error::precondition(format!("project {project} has no namespace yet")))
            })
            .await?;
        Ok(ns.clone())
    }

    /// Lists the project's shoots page by page, classifying each page as it arrives (so only one
    /// page of full Shoot objects is in memory at a time).
    async fn list_clusters(&self) -> Result<Vec<ClusterInfo>> {
        let ns = self.project_namespace().await?;
        let api = self.shoot_api(&ns);
        let mut shoots = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().limit(self.config.page_size);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = self
                .garden_call(&format!("listing shoots in {ns}"), api.list(&lp))
                .await?;
            shoots.extend(page.items.iter().map(|s| classify_object(s, &self.config.policy)));
            token = page.metadata.continue_.filter(|c| !c.is_empty());
            if token.is_none() {
                return Ok(shoots);
            }
        }
    }

    /// Replaces the inventory with `clusters`, returning what changed.
    fn replace_all(&self, clusters: Vec<ClusterInfo>) -> ClusterDiff {
        let after: BTreeMap<ClusterId, ClusterInfo> =
            clusters.into_iter().map(|c| (c.id.clone(), c)).collect();
        let mut st = self.state();
        let diff = ClusterDiff::between(&st.inventory, &after);
        st.inventory = after;
        self.sync_creds(&mut st);
        diff
    }

    /// Shoots are read untyped and converted one by one (see [`classify_object`]).
    fn shoot_api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &ApiResource::erase::<Shoot>(&()))
    }

    fn upsert(&self, info: ClusterInfo) -> ClusterDiff {
        let mut st = self.state();
        let mut diff = ClusterDiff::default();
        // A shoot that got its status.uid changes identity from metadata.uid only if they differ.
        let stale: Vec<ClusterId> = st
            .inventory
            .values()
            .filter(|c| c.id != info.id && c.name == info.name && c.namespace == info.namespace)
            .map(|c| c.id.clone())
            .collect();
        for id in stale {
            if let Some(old) = st.inventory.remove(&id) {
                diff.removed.push(old);
            }
        }
        match st.inventory.insert(info.id.clone(), info.clone()) {
            None => diff.added.push(info),
            Some(old) if old != info => diff.changed.push((old, info)),
            Some(_) => {}
        }
        self.sync_creds(&mut st);
        diff
    }

    fn remove(&self, info: ClusterInfo) -> ClusterDiff {
        let mut st = self.state();
        let mut diff = ClusterDiff::default();
        let gone: Vec<ClusterId> = st
            .inventory
            .values()
            .filter(|c| c.id == info.id || (c.name == info.name && c.namespace == info.namespace))
            .map(|c| c.id.clone())
            .collect();
        for id in gone {
            if let Some(old) = st.inventory.remove(&id) {
                diff.removed.push(old);
            }
        }
        self.sync_creds(&mut st);
        diff
    }

    /// Drops credentials of clusters that are gone or ineligible; schedules eager issuance.
    fn sync_creds(&self, st: &mut State) {
        let State { inventory, creds } = st;
        creds.retain(|id, _| inventory.get(id).is_some_and(|c| c.eligibility.is_eligible()));
        if self.config.eager {
            let now = self.config.clock.now();
            for c in inventory.values().filter(|c| c.eligibility.is_eligible()) {
                creds.entry(c.id.clone()).or_insert_with(|| Cred::new(now));
            }
        }
    }

    /// One full discovery: lists the project's shoots, classifies them, updates the inventory and
    /// returns the clusters and what changed since the last one.
    pub async fn discover_diff(&self) -> Result<(Vec<ClusterInfo>, ClusterDiff)> {
        let clusters = self.list_clusters().await.inspect_err(|_| {
            self.discoveries_failed.fetch_add(1, Ordering::Relaxed);
        })?;
        let diff = self.replace_all(clusters);
        self.discoveries.fetch_add(1, Ordering::Relaxed);
        Ok((self.inventory(), diff))
    }

    async fn request_kubeconfig(&self, namespace: &str, name: &str) -> Result<ClusterAccess> {
        let what = format!("requesting an admin kubeconfig for shoot {namespace}/{name}");
        let body = json!({"apiVersion": "authentication.gardener.cloud/v1alpha1", "kind": "AdminKubeconfigRequest",
                          "spec": {"expirationSeconds": self.config.expiration.as_secs()}});
        let req = http::Request::post(format!(
            "/apis/core.gardener.cloud/v1beta1/namespaces/{namespace}/shoots/{name}/adminkubeconfig"
        ))
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .map_err(|e| Error::other(format!("{what}: {e}")))?;
        let issued_at = self.config.clock.now();
        let resp: Value = self.garden_call(&what, self.client.request(req)).await?;
        let expires = resp
            .pointer("/status/expirationTimestamp")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::invalid(format!("{what}: the response has no status.expirationTimestamp"))
            })?;
        let expires_at = pxb_core::clock::parse_rfc3339(expires).ok_or_else(|| {
            Error::invalid(format!("{what}: expirationTimestamp {expires:?} is not RFC 3339"))
        })?;
        let b64 = resp
            .pointer("/status/kubeconfig")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(format!("{what}: the response has no status.kubeconfig")))?;
        let yaml = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| Error::invalid(format!("{what}: status.kubeconfig is not base64: {e}")))?;
        let yaml = String::from_utf8(yaml)
            .map_err(|_| Error::invalid(format!("{what}: the kubeconfig is not text")))?;
        parse_access(&yaml, issued_at, expires_at).map_err(|e| e.context(&what))
    }

    /// Issues a new credential for `id` unless a fresh one appeared meanwhile (`force` issues
    /// anyway). Concurrent calls for one cluster are serialised.
    async fn refresh(&self, id: &ClusterId, force: bool) -> Result<Arc<ClusterAccess>> {
        let (name, namespace, lock) = {
            let mut st = self.state();
            let info = st.inventory.get(id).ok_or_else(|| {
                Error::not_found(format!("no cluster {id} in project {}", self.config.project))
            })?;
            if let Eligibility::Ineligible { message, .. } = &info.eligibility {
                return Err(Error::precondition(format!(
                    "shoot {} is not eligible: {message}",
                    info.name
                )));
            }
            let (name, namespace) = (info.name.clone(), info.namespace.clone());
            let cred = st
                .creds
                .entry(id.clone())
                .or_insert_with(|| Cred::new(self.config.clock.now()));
            (name, namespace, cred.lock.clone())
        };
        let _one = lock.lock().await;
        if !force {
            let st = self.state();
            let now = self.config.clock.now();
            if let Some(a) = st.creds.get(id).and_then(|c| {
                c.access
                    .as_ref()
                    .filter(|a| c.due > now && a.valid_at(now, margin(a)))
            }) {
                return Ok(a.clone());
            }
        }
        if let Some(c) = self.state().creds.get_mut(id) {
            c.in_flight = true;
        }
        let result = {
            let _permit = self.permits.acquire().await;
            self.request_kubeconfig(&namespace, &name).await
        };
        let now = self.config.clock.now();
        let mut st = self.state();
        let Some(cred) = st.creds.get_mut(id) else {
            // Removed while we were issuing: hand out what we got, keep nothing.
            return result.map(Arc::new);
        };
        cred.in_flight = false;
        // A renewal replaces a credential the cluster held (the cluster refused none since).
        let renewal = cred.access.is_some();
        match result {
            Ok(access) => {
                let offset = (rand::random::<f64>() * 2.0 - 1.0) * self.config.renew_jitter;
                cred.due = renew_time(
                    access.issued_at,
                    access.expires_at,
                    self.config.renew_fraction,
                    offset,
                );
                cred.attempts = 0;
                cred.last_error = None;
                if cred.access.is_some() {
                    // A renewal on schedule: the previous credential was not refused.
                    cred.refusals = 0;
                }
                let access = Arc::new(access);
                cred.access = Some(access.clone());
                drop(st);
                self.count_issued(renewal);
                *self
                    .issued_per_second
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(unix(now))
                    .or_default() += 1;
                Ok(access)
            }
            Err(e) => {
                cred.attempts += 1;
                let exp = self.config.retry_base.as_secs_f64() * 2f64.powi(cred.attempts.min(16) as i32 - 1);
                let delay =
                    exp.min(self.config.retry_max.as_secs_f64()) * (0.8 + 0.4 * rand::random::<f64>());
                cred.due = now + Duration::from_secs_f64(delay);
                cred.last_error = Some(e.to_string());
                drop(st);
                self.count_failed(renewal);
                Err(e)
            }
        }
    }

    /// Counts a kubeconfig issued: a renewal or a first issuance.
    fn count_issued(&self, renewal: bool) {
        self.issued.fetch_add(1, Ordering::Relaxed);
        if renewal {
            self.renewed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.first_issued.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a failed kubeconfig request: a renewal or a first issuance.
    fn count_failed(&self, renewal: bool) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if renewal {
            self.renew_failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.first_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Issues credentials for every eligible cluster that lacks a fresh one, `issue_concurrency`
    /// at a time; returns how many succeeded and the failures.
    pub async fn ensure_all(&self) -> (usize, Vec<(ClusterId, Error)>) {
        let ids: Vec<ClusterId> = self
            .state()
            .inventory
            .values()
            .filter(|c| c.eligibility.is_eligible())
            .map(|c| c.id.clone())
            .collect();
        let results: Vec<(ClusterId, Result<Arc<ClusterAccess>>)> = futures::stream::iter(ids)
            .map(|id| async move {
                let r = self.refresh(&id, false).await;
                (id, r)
            })
            .buffer_unordered(self.config.issue_concurrency.max(1))
            .collect()
            .await;
        let mut ok = 0;
        let mut failed = Vec::new();
        for (id, r) in results {
            match r {
                Ok(_) => ok += 1,
                Err(e) => failed.push((id, e)),
            }
        }
        (ok, failed)
    }

    /// Starts every credential renewal (or retry) that is due; returns how many started.
    pub fn renew_due(self: &Arc<Self>) -> usize {
        let now = self.config.clock.now();
        let due: Vec<ClusterId> = {
            let mut st = self.state();
            st.creds
                .iter_mut()
                .filter(|(_, c)| !c.in_flight && c.due <= now)
                .map(|(id, c)| {
                    c.in_flight = true;
                    id.clone()
                })
                .collect()
        };
        for id in &due {
            let me = self.clone();
            let id = id.clone();
            tokio::spawn(async move {
                if let Err(e) = me.refresh(&id, true).await {
                    tracing::warn!(cluster = %id, error = %e, "kubeconfig renewal failed; retrying with backoff");
                }
            });
        }
        due.len()
    }

    /// Runs discovery (a full cycle every `discovery_interval`, the watch in between) and
    /// credential renewal until the returned handle is dropped. Every non-empty change is sent
    /// to `diffs`.
    pub fn spawn(self: &Arc<Self>, diffs: mpsc::UnboundedSender<ClusterDiff>) -> Running {
        let discovery = tokio::spawn(self.clone().discovery_loop(diffs));
        let me = self.clone();
        let renewals = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                me.renew_due();
            }
        });
        Running {
            tasks: vec![discovery, renewals],
        }
    }

    async fn discovery_loop(self: Arc<Self>, diffs: mpsc::UnboundedSender<ClusterDiff>) {
        let send = |d: ClusterDiff| {
            if !d.is_empty() {
                let _ = diffs.send(d);
            }
        };
        let mut backoff = self.config.retry_base;
        let ns = loop {
            match self.project_namespace().await {
                Ok(ns) => break ns,
                Err(e) => {
                    tracing::warn!(project = %self.config.project, error = %e, "cannot read the project; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        };
        let api = self.shoot_api(&ns);
        let watch_config = watcher::Config::default().page_size(self.config.page_size);
        let mut events = watcher(api, watch_config).default_backoff().boxed();
        let mut ticker = tokio::time::interval(self.config.discovery_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Option<Vec<ClusterInfo>> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => match self.discover_diff().await {
                    Ok((_, d)) => send(d),
                    Err(e) => tracing::warn!(project = %self.config.project, error = %e, "discovery cycle failed"),
                },
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Init)) => batch = Some(Vec::new()),
                    Some(Ok(watcher::Event::InitApply(s))) => match batch.as_mut() {
                        Some(b) => b.push(classify_object(&s, &self.config.policy)),
                        None => send(self.upsert(classify_object(&s, &self.config.policy))),
                    },
                    Some(Ok(watcher::Event::InitDone)) => {
                        if let Some(b) = batch.take() {
                            send(self.replace_all(b));
                        }
                    }
                    Some(Ok(watcher::Event::Apply(s))) => send(self.upsert(classify_object(&s, &self.config.policy))),
                    Some(Ok(watcher::Event::Delete(s))) => send(self.remove(classify_object(&s, &self.config.policy))),
                    Some(Err(e)) => tracing::warn!(error = %e, "shoot watch failed; it restarts with backoff"),
                    None => return,
                },
            }
        }
    }
}

fn margin(a: &ClusterAccess) -> Duration {
    (a.lifetime() / 10).min(Duration::from_secs(60))
}

/// Background tasks of a provider; stopped when dropped.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl ClusterProvider for GardenerProvider {
    async fn discover(&self) -> Result<Vec<ClusterInfo>> {
        Ok(self.discover_diff().await?.0)
    }

    async fn access(&self, id: &ClusterId) -> Result<ClusterAccess> {
        {
            let st = self.state();
            let info = st.inventory.get(id).ok_or_else(|| {
                Error::not_found(format!("no cluster {id} in project {}", self.config.project))
            })?;
            if let Eligibility::Ineligible { message, .. } = &info.eligibility {
                return Err(Error::precondition(format!(
                    "shoot {} is not eligible: {message}",
                    info.name
                )));
            }
            let now = self.config.clock.now();
            if let Some(a) = st
                .creds
                .get(id)
                .and_then(|c| c.access.as_ref().filter(|a| a.valid_at(now, margin(a))))
            {
                return Ok((**a).clone());
            }
        }
        let a = self.refresh(id, false).await?;
        if !a.valid_at(self.config.clock.now(), Duration::ZERO) {
            return Err(Error::unauthenticated(format!(
                "the garden issued an already expired kubeconfig for cluster {id}"
            )));
        }
        Ok((*a).clone())
    }

    fn refused(&self, id: &ClusterId, access: &ClusterAccess) {
        let mut st = self.state();
        let Some(c) = st.creds.get_mut(id) else {
            return;
        };
        let Some(current) = c
            .access
            .as_ref()
            .filter(|a| a.client_cert_pem == access.client_cert_pem)
        else {
            return;
        };
        let age = self
            .config
            .clock
            .now()
            .duration_since(current.issued_at)
            .unwrap_or_default();
        let hold = refusal_hold(c.refusals, current.lifetime());
        if age < hold {
            // A cluster that refuses fresh credentials too is not cured by more of them: it gets
            // one per `hold` at most, however often it is visited.
            tracing::debug!(cluster = %id, refusals = c.refusals, ?hold, "the cluster refused its kubeconfig again; keeping it for now");
            return;
        }
        // The next `access` issues a new one (the renewal stays as planned, so the two do not
        // both issue).
        tracing::warn!(cluster = %id, "the cluster refused its kubeconfig; the next visit gets a new one");
        c.access = None;
        c.refusals += 1;
    }

    fn credential_state(&self, id: &ClusterId) -> CredentialState {
        let st = self.state();
        let Some(c) = st.creds.get(id) else {
            return CredentialState::Missing;
        };
        let now = self.config.clock.now();
        let valid = c.access.as_ref().filter(|a| a.valid_at(now, Duration::ZERO));
        if c.in_flight {
            return CredentialState::Renewing {
                expires_at: valid.map(|a| a.expires_at),
            };
        }
        if let Some(reason) = &c.last_error {
            return CredentialState::Failing {
                reason: reason.clone(),
                attempts: c.attempts,
                expires_at: valid.map(|a| a.expires_at),
                retry_at: c.due,
            };
        }
        match (&c.access, valid) {
            (_, Some(a)) => CredentialState::Fresh {
                expires_at: a.expires_at,
                renew_at: c.due,
            },
            (Some(a), None) => CredentialState::Expired { since: a.expires_at },
            (None, None) => CredentialState::Missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn renewal_lands_at_the_fraction_with_bounded_jitter() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t1 = t0 + Duration::from_secs(3600);
        assert_eq!(renew_time(t0, t1, 0.8, 0.0), t0 + Duration::from_secs(2880));
        assert_eq!(renew_time(t0, t1, 0.8, 0.1), t0 + Duration::from_secs(3240));
        assert_eq!(renew_time(t0, t1, 0.8, -0.1), t0 + Duration::from_secs(2520));
        // Never after 95 % of the lifetime, never before half of it.
        assert_eq!(renew_time(t0, t1, 0.9, 0.3), t0 + Duration::from_secs(3420));
        assert_eq!(renew_time(t0, t1, 0.4, -0.3), t0 + Duration::from_secs(1800));
        // A zero lifetime renews at once.
        assert_eq!(renew_time(t0, t0, 0.8, 0.0), t0);
    }

    /// A file in the temp directory, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let path = std::env::temp_dir().join(format!("pxb-gardener-{}-{name}", std::process::id()));
            std::fs::write(&path, content).expect("write the temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn from_env_reads_the_kubeconfig_file_and_the_project() {
        let file = TempFile::new("garden.yaml", "apiVersion: v1\nkind: Config\n");
        let path = file.0.to_string_lossy().into_owned();
        let c = GardenerConfig::from_env_with(env(&[
            ("PXB_GARDEN_KUBECONFIG", &path),
            ("PXB_GARDEN_PROJECT", " dev "),
        ]))
        .expect("config");
        assert_eq!(c.project, "dev");
        match &c.garden {
            GardenAuth::Kubeconfig(yaml) => assert_eq!(yaml, "apiVersion: v1\nkind: Config\n"),
            other => panic!("{other:?}"),
        }
        // Everything else is `new`'s default.
        let d = GardenerConfig::new(c.garden.clone(), "dev");
        assert_eq!(
            (
                c.expiration,
                c.discovery_interval,
                c.page_size,
                c.issue_concurrency,
                c.eager
            ),
            (
                d.expiration,
                d.discovery_interval,
                d.page_size,
                d.issue_concurrency,
                d.eager
            )
        );
    }

    #[test]
    fn from_env_names_what_is_missing() {
        let file = TempFile::new("missing.yaml", "apiVersion: v1\n");
        let path = file.0.to_string_lossy().into_owned();
        let e =
            GardenerConfig::from_env_with(env(&[("PXB_GARDEN_PROJECT", "dev")])).expect_err("no kubeconfig");
        assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("PXB_GARDEN_KUBECONFIG"), "{e}");
        let e = GardenerConfig::from_env_with(env(&[
            ("PXB_GARDEN_KUBECONFIG", &path),
            ("PXB_GARDEN_PROJECT", ""),
        ]))
        .expect_err("no project");
        assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("PXB_GARDEN_PROJECT"), "{e}");
        let e = GardenerConfig::from_env_with(env(&[
            ("PXB_GARDEN_KUBECONFIG", "/nonexistent/pxb/garden.yaml"),
            ("PXB_GARDEN_PROJECT", "dev"),
        ]))
        .expect_err("unreadable kubeconfig");
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/pxb/garden.yaml"), "{e}");
    }

    #[test]
    fn setters_chain() {
        let policy = Policy {
            provider_type: "gcp".into(),
            ..Policy::default()
        };
        let c = GardenerConfig::new(GardenAuth::Kubeconfig(String::new()), "a")
            .with_project("b")
            .with_garden(GardenAuth::Token {
                server: "https://garden".into(),
                token: "SECRET".into(),
                ca_pem: None,
            })
            .with_policy(policy)
            .with_expiration(Duration::from_secs(600))
            .with_renewal(0.5, 0.2)
            .with_discovery_interval(Duration::from_secs(5))
            .with_page_size(10)
            .with_request_timeout(Duration::from_secs(3))
            .with_issue_concurrency(2)
            .with_eager(false)
            .with_retry(Duration::from_millis(10), Duration::from_secs(2))
            .with_clock(Arc::new(pxb_core::ManualClock::new(UNIX_EPOCH)));
        assert_eq!(c.project, "b");
        assert_eq!(c.clock.now(), UNIX_EPOCH);
        assert_eq!(c.policy.provider_type, "gcp");
        assert_eq!(c.expiration, Duration::from_secs(600));
        assert_eq!((c.renew_fraction, c.renew_jitter), (0.5, 0.2));
        assert_eq!(
            (c.discovery_interval, c.request_timeout),
            (Duration::from_secs(5), Duration::from_secs(3))
        );
        assert_eq!((c.page_size, c.issue_concurrency, c.eager), (10, 2, false));
        assert_eq!(
            (c.retry_base, c.retry_max),
            (Duration::from_millis(10), Duration::from_secs(2))
        );
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    /// A provider for an unreachable garden (nothing here makes a request) reading `clock`, with
    /// one eligible cluster holding a credential issued at `t0` for an hour, renewed at 80 %.
    async fn provider_with_credential(
        clock: &pxb_core::ManualClock,
        t0: SystemTime,
    ) -> (Arc<GardenerProvider>, ClusterId, ClusterAccess) {
        let garden = GardenAuth::Token {
            server: "https://127.0.0.1:9".into(),
            token: "t".into(),
            ca_pem: None,
        };
        let config = GardenerConfig::new(garden, "dev")
            .with_eager(false)
            .with_renewal(0.8, 0.0)
            .with_clock(Arc::new(clock.clone()));
        let p = GardenerProvider::connect(config).await.expect("provider");
        let id = ClusterId("uid-1".into());
        let access = ClusterAccess {
            server: "https://shoot.invalid".into(),
            ca_pem: String::new(),
            client_cert_pem: String::new(),
            client_key_pem: String::new(),
            issued_at: t0,
            expires_at: t0 + Duration::from_secs(3600),
        };
        let mut st = p.state();
        st.inventory.insert(
            id.clone(),
            ClusterInfo::new(id.clone(), "s1", "garden-dev")
                .with_provider_type("azure")
                .with_kubernetes_version("1.31.0")
                .with_region("westeurope"),
        );
        let mut cred = Cred::new(t0);
        cred.due = renew_time(access.issued_at, access.expires_at, 0.8, 0.0);
        cred.access = Some(Arc::new(access.clone()));
        st.creds.insert(id.clone(), cred);
        drop(st);
        (p, id, access)
    }

    /// A cluster that refuses its kubeconfig gets a new one at its next visit, but one that
    /// refuses every kubeconfig does not make the provider ask the garden at every visit: each
    /// further refused credential must have lived longer (15 s, 30 s, …) before it is dropped.
    #[tokio::test]
    async fn refused_credentials_are_dropped_with_a_growing_hold() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = pxb_core::ManualClock::new(t0);
        let (p, id, access) = provider_with_credential(&clock, t0).await;
        let holds = |p: &GardenerProvider| {
            let st = p.state();
            let c = st.creds.get(&id).expect("cred");
            (c.access.is_some(), c.refusals)
        };
        // A credential of another generation is not dropped by a refusal of this one.
        let other = ClusterAccess {
            client_cert_pem: "another".into(),
            ..access.clone()
        };
        p.refused(&id, &other);
        assert_eq!(holds(&p), (true, 0));
        // The first refusal drops it at once.
        p.refused(&id, &access);
        assert_eq!(holds(&p), (false, 1));
        // Its successor (issued at t1), refused: kept until it is 15 s old, then dropped.
        let put = |p: &GardenerProvider, a: &ClusterAccess| {
            p.state().creds.get_mut(&id).expect("cred").access = Some(Arc::new(a.clone()));
        };
        let t1 = t0 + Duration::from_secs(3);
        let second = ClusterAccess {
            issued_at: t1,
            client_cert_pem: "second".into(),
            ..access.clone()
        };
        put(&p, &second);
        clock.set(t1 + Duration::from_secs(14));
        p.refused(&id, &second);
        assert_eq!(holds(&p), (true, 1), "kept: not 15 s old");
        clock.set(t1 + Duration::from_secs(15));
        p.refused(&id, &second);
        assert_eq!(holds(&p), (false, 2));
        // The next must be 30 s old.
        let t2 = t1 + Duration::from_secs(20);
        let third = ClusterAccess {
            issued_at: t2,
            client_cert_pem: "third".into(),
            ..access.clone()
        };
        put(&p, &third);
        clock.set(t2 + Duration::from_secs(29));
        p.refused(&id, &third);
        assert_eq!(holds(&p), (true, 2));
        clock.set(t2 + Duration::from_secs(30));
        p.refused(&id, &third);
        assert_eq!(holds(&p), (false, 3));
        // The hold is at most half a credential's lifetime.
        assert_eq!(refusal_hold(0, Duration::from_secs(3600)), Duration::ZERO);
        assert_eq!(
            refusal_hold(3, Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refusal_hold(40, Duration::from_secs(3600)),
            Duration::from_secs(1800)
        );
    }

    #[tokio::test]
    async fn credential_decisions_follow_the_injected_clock() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = pxb_core::ManualClock::new(t0);
        let (p, id, access) = provider_with_credential(&clock, t0).await;
        let renew_at = t0 + Duration::from_secs(2880);
        let fresh = CredentialState::Fresh {
            expires_at: access.expires_at,
            renew_at,
        };

        // Fresh at t0 (long expired by the system clock): handed out from memory, not renewed.
        assert_eq!(p.credential_state(&id), fresh);
        assert_eq!(
            p.access(&id).await.expect("cached access").expires_at,
            access.expires_at
        );
        assert_eq!(p.renew_due(), 0);
        clock.set(renew_at - Duration::from_secs(1));
        assert_eq!(p.renew_due(), 0, "not due a second before renew_at");
        assert_eq!(p.credential_state(&id), fresh);

        // Past the expiry, without waiting: expired.
        clock.set(access.expires_at);
        assert_eq!(
            p.credential_state(&id),
            CredentialState::Expired {
                since: access.expires_at
            }
        );
        // Clocks do jump back: fresh again.
        clock.set(t0 + Duration::from_secs(60));
        assert_eq!(p.credential_state(&id), fresh);

        // At renew_at the renewal starts (the request itself is left unanswered here).
        clock.set(renew_at);
        assert_eq!(p.renew_due(), 1);
        assert_eq!(
            p.credential_state(&id),
            CredentialState::Renewing {
                expires_at: Some(access.expires_at)
            }
        );
        assert_eq!(p.renew_due(), 0, "one renewal at a time");
    }

    /// Failed requests are counted as renewals when the cluster held a credential and as first
    /// issuances when it held none; a discovery cycle that cannot list the shoots is counted too.
    #[tokio::test]
    async fn failed_renewals_issuances_and_discoveries_are_counted_apart() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = pxb_core::ManualClock::new(t0);
        let (p, id, _) = provider_with_credential(&clock, t0).await;
        assert_eq!(p.stats().renew_failed, 0);
        // The garden does not answer: the renewal of the held credential fails.
        p.refresh(&id, true).await.expect_err("no garden");
        let s = p.stats();
        assert_eq!((s.issued, s.failed, s.renewed, s.renew_failed), (0, 1, 0, 1));
        // Without a credential the request is a first issuance.
        p.state().creds.get_mut(&id).expect("cred").access = None;
        p.refresh(&id, true).await.expect_err("no garden");
        let s = p.stats();
        assert_eq!((s.issued, s.failed, s.renewed, s.renew_failed), (0, 2, 0, 1));
        assert_eq!((s.first_issued, s.first_failed), (0, 1));
        p.discover_diff().await.expect_err("no garden");
        let s = p.stats();
        assert_eq!((s.discoveries, s.discoveries_failed), (0, 1));
    }

    #[test]
    fn garden_auth_debug_hides_secrets() {
        let a = GardenAuth::Token {
            server: "https://g".into(),
            token: "SECRET".into(),
            ca_pem: None,
        };
        assert!(!format!("{a:?}").contains("SECRET"));
        assert!(!format!("{:?}", GardenAuth::Kubeconfig("token: SECRET".into())).contains("SECRET"));
    }

    /// First issuances and their failures as a scrape reads them.
    fn first_counts(s: &ProviderStats) -> (u64, u64) {
        (s.first_issued, s.first_failed)
    }

    /// Every counter a scrape reads only goes up, even while kubeconfigs are being counted on
    /// other threads (a counter that goes down is a counter reset to Prometheus).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn counters_never_go_down_while_counting() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = pxb_core::ManualClock::new(t0);
        let (p, _, _) = provider_with_credential(&clock, t0).await;
        const N: u64 = 200_000;
        let writer = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || {
                for i in 0..N {
                    // Mostly renewals: a first issuance in ten.
                    let renewal = i % 10 != 0;
                    p.count_issued(renewal);
                    p.count_failed(renewal);
                }
            })
        };
        let read = |s: &ProviderStats| {
            let (first, first_failed) = first_counts(s);
            [s.issued, s.failed, s.renewed, s.renew_failed, first, first_failed]
        };
        let mut last = read(&p.stats());
        let mut scrapes = 0u64;
        while !writer.is_finished() || scrapes == 0 {
            let now = read(&p.stats());
            for (i, (a, b)) in last.iter().zip(&now).enumerate() {
                assert!(b >= a, "counter {i} went down from {a} to {b} (scrape {scrapes})");
            }
            last = now;
            scrapes += 1;
        }
        writer.join().expect("writer");
        let s = p.stats();
        assert_eq!(
            (s.issued, s.failed, s.renewed, s.renew_failed),
            (N, N, N - N / 10, N - N / 10)
        );
        assert_eq!(first_counts(&s), (N / 10, N / 10));
    }
}
