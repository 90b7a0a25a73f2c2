//! Building and running `pxb-server`: [`ServerBuilder`] composes the server from its
//! configuration and its seams (defaults for what is not set), [`BuiltServer`] is the server
//! loaded and its listener bound, and [`Daemon`] the running server (background tasks and the API
//! on its own thread), stopped by [`Daemon::shutdown`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pxb_core::catalog::CatalogStore;
use pxb_core::catalog::records::Mode;
use pxb_core::cluster::DiscoverySource;
use pxb_core::{Clock, Error, Result, SystemClock};

use super::api;
use super::auth::{Authenticator, Authenticators, DevToken, OidcAuthenticator};
use super::config::{ServerConfig, classic_needs_a_key, mode_name};
use super::gardener::GardenerDiscovery;
use super::scheduler::Running;
use super::seal::Sealer;
use super::sqlite::SqliteCatalog;
use super::state::{OrgState, Server, ServerDeps};
use super::support::{SupportRunning, SupportToggle, exporter_of};
use pxb_telemetry::support::TelemetryExporter;

/// Builds a `pxb-server` from its configuration and its seams. What is not set is the default:
///
/// - where clusters come from ([`cluster_provider`](Self::cluster_provider)): Gardener projects,
///   reached with the configuration's `gardenCredentials` ([`GardenerDiscovery`]);
/// - the catalog ([`catalog`](Self::catalog)): SQLite at `catalog.path`;
/// - logins ([`authenticator`](Self::authenticator)): Entra ID (OIDC) per `auth` (none when
///   `auth.issuer` is empty), plus the development token when one is given;
/// - the clock ([`clock`](Self::clock)): the system's. The default logins and the default
///   Gardener discovery read it too (token expiry, kubeconfig issuance and renewal);
/// - sealing of classic secrets: the key of `secrets.keyFile`, or the one given with
///   [`secrets_key`](Self::secrets_key).
///
/// [`build`](Self::build) loads the server and binds `api.listen`; [`BuiltServer::spawn`] starts
/// it. Twins of every seam make a server for tests that reaches nothing outside the process:
///
/// ```
/// use std::sync::Arc;
///
/// use pxb_core::catalog::MemoryCatalog;
/// use pxb_core::cluster::{StaticClusters, StaticDiscovery};
/// use pxb_core::ManualClock;
/// use pxb_daemon::server::ServerBuilder;
/// use pxb_daemon::server::auth::{Identity, StaticTokens};
/// use pxb_daemon::server::config::{GardenCredential, ServerConfig};
///
/// # #[tokio::main]
/// # async fn main() -> pxb_core::Result<()> {
/// let mut config = ServerConfig::default();
/// config.api.listen = "127.0.0.1:0".into();
/// // Org `acme` may discover project `dev` with the credential `garden`...
/// config.garden_credentials.insert(
///     "garden".into(),
///     GardenCredential::new("unused").for_orgs(["acme"]).for_projects(["dev"]),
/// );
/// // ...whose clusters are these (add some with `clusters.insert`).
/// let discovery = StaticDiscovery::new();
/// let _clusters = discovery.insert("garden", "dev", Arc::new(StaticClusters::new()));
/// let logins = StaticTokens::new().with("token-of-alice", Identity::new("alice").with_groups(["acme-admins"]));
///
/// let daemon = ServerBuilder::new(config)
///     .cluster_provider(Arc::new(discovery))
///     .catalog(Arc::new(MemoryCatalog::new()))
///     .authenticator(Arc::new(logins))
///     .clock(Arc::new(ManualClock::new(std::time::SystemTime::now())))
///     .build()
///     .await?
///     .spawn()?;
/// assert!(daemon.addr.ip().is_loopback());
/// println!("serving on http://{}", daemon.addr);
/// daemon.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
    discovery: Option<Arc<dyn DiscoverySource>>,
    catalog: Option<Arc<dyn CatalogStore>>,
    authenticator: Option<Arc<dyn Authenticator>>,
    clock: Option<Arc<dyn Clock>>,
    sealer: Option<Sealer>,
    secrets_key: Option<String>,
    dev_token: Option<String>,
    support_exporter: Option<Arc<dyn TelemetryExporter>>,
    support_toggle: Option<SupportToggle>,
    listener: Option<std::net::TcpListener>,
    acting: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
    without_support: bool,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("listen", &self.config.api.listen)
            .field("cluster_provider", &self.discovery)
            .field("catalog", &self.catalog)
            .field("authenticator", &self.authenticator)
            .field("clock", &self.clock)
            .field("sealer", &self.sealer)
            .field("secrets_key", &self.secrets_key.as_ref().map(|_| "<redacted>"))
            .field("dev_token", &self.dev_token.as_ref().map(|_| "<redacted>"))
            .field("support_exporter", &self.support_exporter)
            .field("support_toggle", &self.support_toggle)
            .field("listener", &self.listener)
            .field("acting", &self.acting.as_ref().map(|_| "<check>"))
            .field("without_support", &self.without_support)
            .finish()
    }
}

impl ServerBuilder {
    /// A server configured by `config`, with the default seams.
    pub fn new(config: ServerConfig) -> Self {
        ServerBuilder {
            config,
            discovery: None,
            catalog: None,
            authenticator: None,
            clock: None,
            sealer: None,
            secrets_key: None,
            dev_token: None,
            support_exporter: None,
            support_toggle: None,
            listener: None,
            acting: None,
            without_support: false,
        }
    }

    /// Starts no support channel, whatever the configuration says (a standby replica's view).
    pub(crate) fn without_support(mut self) -> Self {
        self.without_support = true;
        self
    }

    /// Serves the API on `listener` (already bound) instead of binding `api.listen`: a replica
    /// keeps its address when it turns from standby to active.
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// Does the fleet's work (visits, schedules, housekeeping) only while `check` says so: a
    /// replica's hold on its lease ([`super::replicas::Lease::may_act`]).
    pub fn acting(mut self, check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.acting = Some(Arc::new(check));
        self
    }

    /// The support channel's exporter, in place of the one `telemetry.support.endpoint` makes
    /// (for example the in-memory twin). The channel is off until switched on.
    pub fn support_exporter(mut self, exporter: Arc<dyn TelemetryExporter>) -> Self {
        self.support_exporter = Some(exporter);
        self
    }

    /// What switches the support channel, in place of the configured file or the ConfigMap
    /// of the cluster the server runs in.
    pub fn support_toggle(mut self, toggle: SupportToggle) -> Self {
        self.support_toggle = Some(toggle);
        self
    }

    /// Where clusters come from: each discovery configuration of an org starts a discovery of its
    /// project with its credential through `source`. The server still decides which org may use
    /// which credential and project (`gardenCredentials`' bindings).
    pub fn cluster_provider(mut self, source: Arc<dyn DiscoverySource>) -> Self {
        self.discovery = Some(source);
        self
    }

    /// Where the server keeps its state.
    pub fn catalog(mut self, catalog: Arc<dyn CatalogStore>) -> Self {
        self.catalog = Some(catalog);
        self
    }

    /// What checks bearer tokens, in place of the OIDC issuer of the configuration.
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(authenticator);
        self
    }

    /// The clock leases, schedules and expiry are measured with, the default seams' included:
    /// the OIDC authenticator compares tokens' expiry with it, and the Gardener discovery issues
    /// and renews kubeconfigs by it.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Seals classic secrets with `sealer`, in place of the configured key.
    pub fn sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// The secrets key (base64, as `PXB_SECRETS_KEY` holds it), in place of `secrets.keyFile`.
    pub fn secrets_key(mut self, key: impl Into<String>) -> Self {
        self.secrets_key = Some(key.into());
        self
    }

    /// DEVELOPMENT ONLY: also accept this static bearer token as a provider admin. Refused (at
    /// [`build`](Self::build)) unless it has 16 characters or more and `api.listen` is a loopback
    /// address; a warning is logged.
    pub fn dev_token(mut self, token: impl Into<String>) -> Self {
        self.dev_token = Some(token.into());
        self
    }

    /// Opens the catalog (migrating its schema first: the API listens only afterwards), sets up
    /// logins and sealing, loads every org (an org that does not load is degraded, logged and not
    /// served) and binds `api.listen`. Nothing is contacted and no task runs yet: see
    /// [`BuiltServer::spawn`]. With `mode: classic` and no secrets key it fails before it opens
    /// the catalog.
    pub async fn build(self) -> Result<BuiltServer> {
        let config = self.config;
        // The key first: a classic-mode server without one stops before it touches the catalog.
        let sealer = match self.sealer {
            Some(s) => Some(s),
            None => Sealer::from_config(&config.secrets.key_file, self.secrets_key)?,
        };
        if config.mode == Mode::Classic && sealer.is_none() {
            return Err(classic_needs_a_key());
        }
        let catalog: Arc<dyn CatalogStore> = match self.catalog {
            Some(c) => c,
            None => open_catalog(&config.catalog).await?,
        };
        // One clock for the server and its default seams: token expiry, kubeconfig renewal.
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let mut auths: Vec<Arc<dyn Authenticator>> = Vec::new();
        match self.authenticator {
            Some(a) => auths.push(a),
            None => auths.extend(oidc_of(&config, clock.clone())?),
        }
        if let Some(t) = self.dev_token {
            auths.push(dev_token(&config, t)?);
        }
        if auths.is_empty() {
            tracing::warn!("no login is configured (auth.issuer is empty): every API call will be refused");
        }
        let discovery = self
            .discovery
            .unwrap_or_else(|| Arc::new(GardenerDiscovery::from_config(&config).with_clock(clock.clone())));
        let listen = config.api.listen.clone();
        let mode = config.mode;
        let deps = ServerDeps {
            catalog,
            clock,
            authenticator: Arc::new(Authenticators(auths)),
            sealer,
        };
        let exporter = match self.support_exporter {
            _ if self.without_support => None,
            Some(e) => Some(e),
            None => exporter_of(&config.telemetry.support)?,
        };
        let server = Server::assemble(config, deps, discovery).await?;
        let support = match exporter {
            Some(exporter) => Some((server.installation_id().await?, exporter, self.support_toggle)),
            None => None,
        };
        tracing::info!(mode = mode_name(mode), "pxb-server mode");
        for (org, st) in server.orgs() {
            if let OrgState::Degraded { reason } = st {
                tracing::error!(%org, %reason, "org degraded");
            }
        }
        if let Some(check) = self.acting {
            let _ = server.inner.acting.set(check);
        }
        let listener = match self.listener {
            Some(l) => l
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(l))
                .map_err(|e| Error::io("taking over the API listener", e))?,
            None => tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| Error::io(format!("listening on {listen}"), e))?,
        };
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listen address", e))?;
        Ok(BuiltServer {
            server,
            listener,
            addr,
            support,
        })
    }
}

/// The Entra ID (OIDC) authenticator of `config.auth`, if an issuer is configured; it compares
/// tokens' `exp` and `nbf` with `clock`.
/// The catalog `config` names: the PostgreSQL database of `url` when it is set, else the SQLite
/// file of `path`.
pub async fn open_catalog(config: &super::config::CatalogConfig) -> Result<Arc<dyn CatalogStore>> {
    if config.url.is_empty() {
        return Ok(Arc::new(SqliteCatalog::open(&config.path).await?));
    }
    let mut options =
        super::postgres::PostgresOptions::new(&config.url).with_max_connections(config.max_connections);
    if !config.password_file.is_empty() {
        options = options.with_password_file(&config.password_file);
    }
    if !config.ca_file.is_empty() {
        options = options.with_ca_file(&config.ca_file);
    }
    let catalog = super::postgres::PostgresCatalog::connect(&options).await?;
    tracing::info!(database = catalog.database(), "catalog on PostgreSQL");
    Ok(Arc::new(catalog))
}

fn oidc_of(config: &ServerConfig, clock: Arc<dyn Clock>) -> Result<Option<Arc<dyn Authenticator>>> {
    if config.auth.issuer.is_empty() {
        return Ok(None);
    }
    let mut oidc = pxb_azure::oidc::OidcConfig::new(&config.auth.issuer, config.auth.audiences.clone());
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
        .map_err(|e| Error::invalid(format!("auth: {e}")))?
        .with_clock(clock);
    Ok(Some(Arc::new(OidcAuthenticator(v))))
}

/// The development token `t`, if `config` allows one.
fn dev_token(config: &ServerConfig, t: String) -> Result<Arc<dyn Authenticator>> {
    if t.len() < 16 {
        return Err(Error::invalid(
            "the development token must be at least 16 characters",
        ));
    }
    let loopback = config
        .api
        .listen
        .parse::<SocketAddr>()
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
    Ok(Arc::new(DevToken::new(t)))
}

/// A server loaded from its catalog with its listener bound, not running yet.
#[derive(Debug)]
pub struct BuiltServer {
    server: Server,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    support: Option<(String, Arc<dyn TelemetryExporter>, Option<SupportToggle>)>,
}

impl BuiltServer {
    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Where the API will listen.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts discovery, the cluster visits, housekeeping and the schedules (on the current Tokio
    /// runtime), and serves the API on a thread and runtime of its own, so reads (the fleet
    /// status above all) never queue behind cluster visits busy with TLS handshakes.
    pub fn spawn(self) -> Result<Daemon> {
        let BuiltServer {
            server,
            listener,
            addr,
            support,
        } = self;
        let running = server.spawn();
        let support = support.map(|(id, exporter, toggle)| server.start_support(id, exporter, toggle));
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
            support,
            _running: running,
            shutdown: Some(tx),
            api,
        })
    }
}

/// A configured, running `pxb-server`: the catalog opened, logins set up, background tasks
/// started, the API listening. What the `pxb-server` binary runs, and what tests start.
#[derive(Debug)]
pub struct Daemon {
    /// The server.
    pub server: Server,
    /// The API's address.
    pub addr: SocketAddr,
    /// The opt-in support channel, when `telemetry.support.endpoint` (or an exporter) is set.
    pub support: Option<SupportRunning>,
    _running: Running,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    api: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Daemon {
    /// The server with the default seams ([`ServerBuilder`]): the catalog at
    /// `config.catalog.path`, OIDC logins when `auth.issuer` is set, the development token only
    /// when `dev_token` is given (with a warning), the sealer from `env("PXB_SECRETS_KEY")` or
    /// `secrets.keyFile`; started.
    pub async fn start(
        config: ServerConfig,
        dev_token: Option<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Daemon> {
        let mut builder = ServerBuilder::new(config);
        if let Some(t) = dev_token {
            builder = builder.dev_token(t);
        }
        if let Some(key) = env("PXB_SECRETS_KEY") {
            builder = builder.secrets_key(key);
        }
        builder.build().await?.spawn()
    }

    /// Stops accepting requests, lets those in flight finish (up to `api.shutdownGraceSecs`),
    /// and stops the background tasks.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.support.take() {
            s.stop().await;
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

impl Server {
    /// The server over `deps`, discovering clusters in Gardener projects with the configuration's
    /// `gardenCredentials`, with the state of every org loaded from the catalog. An org whose
    /// records do not load is marked degraded and logged; the others are served. Nothing is
    /// contacted yet: see [`Server::spawn`]. [`ServerBuilder`] builds the whole daemon, with any
    /// seam replaced.
    pub async fn build(config: ServerConfig, deps: ServerDeps) -> Result<Server> {
        let discovery = Arc::new(GardenerDiscovery::from_config(&config));
        Server::assemble(config, deps, discovery).await
    }
}

#[cfg(test)]
mod tests {
    use pxb_core::catalog::MemoryCatalog;
    use pxb_core::cluster::{ClusterId, ClusterInfo, StaticClusters, StaticDiscovery};
    use serde_json::{Value, json};

    use base64::Engine as _;

    use super::*;
    use crate::server::auth::{Identity, StaticTokens};
    use crate::server::config::GardenCredential;

    fn cluster(name: &str) -> ClusterInfo {
        ClusterInfo::new(ClusterId(format!("uid-{name}")), name, "garden-dev")
            .with_provider_type("azure")
            .with_kubernetes_version("1.33.0")
            .with_region("westeurope")
    }

    /// A classic-mode server without a secrets key stops before it opens (or creates) the
    /// catalog, with a message naming both ways to give a key; with a key it builds.
    #[tokio::test]
    async fn a_classic_server_without_a_secrets_key_does_not_start() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("catalog.db");
        let mut config = ServerConfig::default();
        config.api.listen = "127.0.0.1:0".into();
        config.catalog.path = path.display().to_string();
        config.mode = Mode::Classic;
        let err = ServerBuilder::new(config.clone())
            .build()
            .await
            .expect_err("classic without a key");
        let msg = err.to_string();
        assert!(
            msg.contains("mode: classic needs a secrets key")
                && msg.contains("secrets.keyFile")
                && msg.contains("PXB_SECRETS_KEY"),
            "{msg}"
        );
        assert!(!path.exists(), "the catalog was not touched");
        let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        let built = ServerBuilder::new(config)
            .secrets_key(key)
            .build()
            .await
            .expect("classic with a key");
        assert!(path.exists());
        drop(built);
    }

    /// The REST calls of the mode tests: status and JSON body.
    struct Api {
        http: reqwest::Client,
        base: String,
    }

    impl Api {
        async fn call(&self, m: reqwest::Method, token: &str, p: &str, body: Option<Value>) -> (u16, Value) {
            let mut r = self
                .http
                .request(m, format!("{}{p}", self.base))
                .bearer_auth(token);
            if let Some(b) = body {
                r = r.header("content-type", "application/json").body(b.to_string());
            }
            let resp = r.send().await.expect("send");
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
    }

    /// The phrase every refusal and status of an inactive classic location carries.
    const INACTIVE: &str = "classic locations are inactive while the server runs in federated mode";

    /// A refusal of the server's mode: `409 conflict`, naming the mode and how to change it.
    fn refused_by_mode(status: u16, body: &Value, what: &str) {
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("conflict")),
            "{what}: {body}"
        );
        assert!(
            msg.contains("federated mode")
                && msg.contains("mode: classic")
                && msg.contains("PXB_MODE=classic"),
            "{what}: {msg}"
        );
    }

    /// One catalog, the server restarted on it in federated, classic, federated and classic mode
    /// (what an upgrade that switches the mode does): classic locations are refused in federated
    /// mode (nothing stored), made in classic mode, kept but inactive in federated mode (every
    /// operation with them refused with why, a schedule's slot missed with why; listed, read,
    /// changed without a credential and deleted), and active again in classic mode.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn classic_locations_follow_the_servers_mode_across_restarts() {
        use pxb_core::catalog::records::{BackupPhase, BackupRecord, LocationRecord};
        use pxb_core::catalog::{Catalog, Kind, Query};

        let catalog = Arc::new(MemoryCatalog::new());
        let clock = Arc::new(pxb_core::ManualClock::new(std::time::SystemTime::now()));
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let (root, alice) = ("token-of-the-provider-admin", "token-of-alice-acme-admin");
        let secret = "AccountKeyOfAcme0123456789abcdefghijklmnopqrstuvwxyz==";
        let start = |mode: Mode| {
            let (catalog, clock, key) = (catalog.clone(), clock.clone(), key.clone());
            async move {
                let mut config = ServerConfig::default();
                config.api.listen = "127.0.0.1:0".into();
                config.auth.provider_admin_groups = vec!["ops".into()];
                config.mode = mode;
                let logins = StaticTokens::new()
                    .with(root, Identity::new("root").with_groups(["ops"]))
                    .with(alice, Identity::new("alice").with_groups(["acme-admins"]));
                let mut b = ServerBuilder::new(config)
                    .catalog(catalog)
                    .clock(clock)
                    .authenticator(Arc::new(logins));
                // The federated server has no key at all, as a provider's would not.
                if mode == Mode::Classic {
                    b = b.secrets_key(key);
                }
                let daemon = b.build().await.expect("build").spawn().expect("spawn");
                let api = Api {
                    http: reqwest::Client::new(),
                    base: format!("http://{}", daemon.addr),
                };
                (daemon, api)
            }
        };
        let typed = Catalog::new(catalog.clone());
        let stored_locations = || async {
            typed
                .list_all::<LocationRecord>(&Query::org("acme"))
                .await
                .expect("locations")
        };
        let classic = |name: &str| {
            json!({"name": name, "provider": "azure", "account": "acmestore", "container": "backups",
                   "mode": "classic", "credential": {"accountKey": secret}, "clusters": {"all": true}})
        };
        use reqwest::Method as M;

        // Federated (the default): the tenant's admin cannot make the server hold a credential.
        let (daemon, api) = start(Mode::Federated).await;
        let (status, body) = api
            .call(
                M::POST,
                root,
                "/v1/orgs",
                Some(json!({"id": "acme", "access": [{"role": "admin", "groups": ["acme-admins"]}]})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = api
            .call(M::POST, alice, "/v1/orgs/acme/locations", Some(classic("vault")))
            .await;
        refused_by_mode(status, &body, "a classic location");
        // Also as a sasToken, and with the mode left to an org whose default is classic.
        let mut sas = classic("vault");
        sas["credential"] = json!({"sasToken": "sv=2024&sig=secret"});
        let (status, body) = api
            .call(M::POST, alice, "/v1/orgs/acme/locations", Some(sas))
            .await;
        refused_by_mode(status, &body, "a classic location with a SAS");
        let (status, body) = api
            .call(
                M::POST,
                root,
                "/v1/orgs",
                Some(json!({"id": "globex", "mode": "classic"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let mut defaulted = classic("vault");
        defaulted.as_object_mut().expect("object").remove("mode");
        let (status, body) = api
            .call(M::POST, root, "/v1/orgs/globex/locations", Some(defaulted))
            .await;
        refused_by_mode(status, &body, "a location classic by the org's default");
        // A federated location works as before; a credential for it is refused too.
        let (status, body) = api
            .call(
                M::POST,
                alice,
                "/v1/orgs/acme/locations",
                Some(
                    json!({"name": "primary", "provider": "file", "container": "/var/backups/acme",
                            "clusters": {"all": true}}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            (&body["active"], &body["inactiveReason"]),
            (&json!(true), &Value::Null),
            "{body}"
        );
        let (status, body) = api
            .call(
                M::PUT,
                alice,
                "/v1/orgs/acme/locations/primary",
                Some(json!({"credential": {"accountKey": secret}})),
            )
            .await;
        refused_by_mode(status, &body, "a credential for a federated location");
        let (_, list) = api.call(M::GET, alice, "/v1/orgs/acme/locations", None).await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
        let stored = stored_locations().await;
        assert_eq!(stored.len(), 1, "{stored:?}");
        assert!(stored.iter().all(|l| l.credential.is_none()), "{stored:?}");
        daemon.shutdown().await;

        // Classic: classic locations are made, federated ones keep working.
        let (daemon, api) = start(Mode::Classic).await;
        for name in ["vault", "spare"] {
            let (status, body) = api
                .call(M::POST, alice, "/v1/orgs/acme/locations", Some(classic(name)))
                .await;
            assert_eq!(status, 201, "{body}");
            assert_eq!(
                (&body["active"], &body["hasCredential"]),
                (&json!(true), &json!(true)),
                "{body}"
            );
        }
        let (status, body) = api
            .call(
                M::POST,
                alice,
                "/v1/orgs/acme/schedules",
                Some(
                    json!({"name": "hourly", "policy": {"kind": "interval", "minutes": 60, "retain": 3},
                            "clusters": {"all": true}, "namespaces": ["shop"], "location": "vault"}),
                ),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let vault = daemon.server.location("acme", "vault").expect("vault");
        let sealed = vault.credential.clone().expect("sealed credential");
        daemon.shutdown().await;
        // A backup it holds, as an agent reported it.
        let backup = BackupRecord {
            org: "acme".into(),
            id: "one-backup".into(),
            cluster: "uid-one".into(),
            cluster_name: "one".into(),
            location: vault.id.clone(),
            location_name: "vault".into(),
            namespaces: vec!["shop".into()],
            phase: BackupPhase::Success,
            backup_id: Some("20260101T000000Z-00000001".into()),
            created_ms: 1,
            completed_ms: Some(2),
            ..BackupRecord::default()
        };
        typed.put(&backup, Some(0)).await.expect("backup");

        // Federated again, without a key: the org loads, the classic locations are listed and
        // read, inactive with why, and nothing can be done with them but changes without a
        // credential and deletion.
        let (daemon, api) = start(Mode::Federated).await;
        let (status, body) = api.call(M::GET, root, "/v1/orgs/acme", None).await;
        assert_eq!((status, &body["state"]), (200, &json!("Ready")), "{body}");
        let (_, list) = api.call(M::GET, alice, "/v1/orgs/acme/locations", None).await;
        let by_name = |name: &str| {
            list["items"]
                .as_array()
                .and_then(|a| a.iter().find(|l| l["name"] == name))
                .cloned()
                .unwrap_or_else(|| panic!("{name} is listed: {list}"))
        };
        assert_eq!(by_name("primary")["active"], json!(true), "{list}");
        for name in ["vault", "spare"] {
            let l = by_name(name);
            assert_eq!(
                (&l["active"], &l["hasCredential"]),
                (&json!(false), &json!(true)),
                "{l}"
            );
            assert!(
                l["inactiveReason"].as_str().is_some_and(|r| r.contains(INACTIVE)),
                "{l}"
            );
        }
        let (status, one) = api
            .call(M::GET, alice, "/v1/orgs/acme/locations/vault", None)
            .await;
        assert_eq!((status, &one["active"]), (200, &json!(false)), "{one}");
        assert!(
            one["inactiveReason"]
                .as_str()
                .is_some_and(|r| r.contains(INACTIVE)),
            "{one}"
        );
        let inactive = |status: u16, body: &Value, what: &str| {
            let msg = body["error"]["message"].as_str().unwrap_or_default();
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (409, Some("conflict")),
                "{what}: {body}"
            );
            assert!(msg.contains("vault") && msg.contains(INACTIVE), "{what}: {msg}");
        };
        let refusals: Vec<(M, String, Option<Value>, &str)> = vec![
            (
                M::POST,
                "/v1/orgs/acme/backups".into(),
                Some(json!({"clusters": {"all": true}, "namespaces": ["shop"], "location": "vault"})),
                "a backup",
            ),
            (
                M::POST,
                "/v1/orgs/acme/restores".into(),
                Some(json!({"backup": backup.id})),
                "a restore",
            ),
            (
                M::DELETE,
                format!("/v1/orgs/acme/backups/{}", backup.id),
                None,
                "deleting a backup's data",
            ),
            (
                M::POST,
                "/v1/orgs/acme/schedules".into(),
                Some(
                    json!({"name": "daily", "policy": {"kind": "daily", "at": "02:00", "retain": 1},
                            "clusters": {"all": true}, "namespaces": ["shop"], "location": "vault"}),
                ),
                "a schedule",
            ),
            (
                M::POST,
                "/v1/orgs/acme/locations/vault/validate".into(),
                None,
                "a validation",
            ),
            (
                M::POST,
                "/v1/orgs/acme/locations/vault/verify".into(),
                None,
                "a verify",
            ),
            (
                M::POST,
                "/v1/orgs/acme/locations/vault/sync".into(),
                Some(json!({"cluster": "one"})),
                "a sync",
            ),
        ];
        for (m, path, body, what) in refusals {
            let (status, answer) = api.call(m, alice, &path, body).await;
            inactive(status, &answer, what);
        }
        let (status, body) = api
            .call(
                M::PUT,
                alice,
                "/v1/orgs/acme/locations/vault",
                Some(json!({"credential": {"accountKey": "another-key"}})),
            )
            .await;
        refused_by_mode(status, &body, "a new credential for an inactive location");
        let (status, body) = api
            .call(
                M::PUT,
                alice,
                "/v1/orgs/acme/locations/vault",
                Some(json!({"sync": true})),
            )
            .await;
        assert_eq!(
            (status, &body["active"], &body["sync"]),
            (200, &json!(false), &json!(true)),
            "{body}"
        );
        // The backup stays listed as it was.
        let (status, body) = api
            .call(
                M::GET,
                alice,
                &format!("/v1/orgs/acme/backups/{}", backup.id),
                None,
            )
            .await;
        assert_eq!((status, &body["phase"]), (200, &json!("Success")), "{body}");
        // A due slot of the schedule is recorded as missed, with why.
        daemon
            .server
            .add_cluster(
                pxb_core::catalog::records::ClusterRecord {
                    org: "acme".into(),
                    id: "uid-one".into(),
                    name: "one".into(),
                    source: "imported".into(),
                    ..Default::default()
                },
                Arc::new(StaticClusters::new()),
            )
            .await
            .expect("cluster");
        clock.advance(Duration::from_secs(2 * 3600));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let missed = loop {
            daemon.server.fire_due_schedules().await;
            let (_, list) = api.call(M::GET, alice, "/v1/orgs/acme/backups", None).await;
            let scheduled: Vec<Value> = list["items"]
                .as_array()
                .map(|a| a.iter().filter(|b| b["schedule"] == "hourly").cloned().collect())
                .unwrap_or_default();
            if !scheduled.is_empty() {
                break scheduled;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the schedule did not fire: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for b in &missed {
            assert_eq!(b["phase"], "Missed", "{b}");
            assert!(b["message"].as_str().is_some_and(|m| m.contains(INACTIVE)), "{b}");
        }
        // Deleting works.
        let (status, body) = api
            .call(M::DELETE, alice, "/v1/orgs/acme/locations/spare", None)
            .await;
        assert_eq!(status, 204, "{body}");
        let stored = stored_locations().await;
        assert_eq!(
            stored.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["primary", "vault"]
        );
        // The credential is still there, sealed as it was.
        let kept = stored.iter().find(|l| l.name == "vault").expect("vault");
        assert_eq!(kept.credential.as_ref(), Some(&sealed));
        let docs = catalog
            .list(Kind::Location, &Query::org("acme"))
            .await
            .expect("list");
        assert!(
            docs.items
                .iter()
                .all(|e| !String::from_utf8_lossy(&e.doc).contains(secret)),
            "only sealed"
        );
        daemon.shutdown().await;

        // Classic again: the same location is active, and works.
        let (daemon, api) = start(Mode::Classic).await;
        let (status, one) = api
            .call(M::GET, alice, "/v1/orgs/acme/locations/vault", None)
            .await;
        assert_eq!(
            (status, &one["active"], &one["inactiveReason"]),
            (200, &json!(true), &Value::Null),
            "{one}"
        );
        let (status, body) = api
            .call(M::POST, alice, "/v1/orgs/acme/locations/vault/validate", None)
            .await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = api
            .call(
                M::POST,
                alice,
                "/v1/orgs/acme/restores",
                Some(json!({"backup": backup.id})),
            )
            .await;
        // Now refused only for the cluster (never visited by this server), not for the location.
        assert!(
            !body.to_string().contains(INACTIVE) && (status == 201 || status == 409),
            "{status} {body}"
        );
        daemon.shutdown().await;
    }

    /// Every seam replaced by its twin: clusters come from the discovery source, logins from the
    /// static tokens, state from the memory catalog.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_server_of_twins_discovers_through_its_source() {
        let mut config = ServerConfig::default();
        config.api.listen = "127.0.0.1:0".into();
        config.auth.provider_admin_groups = vec!["ops".into()];
        config.garden_credentials.insert(
            "garden".into(),
            GardenCredential::new("unused")
                .for_orgs(["acme"])
                .for_projects(["dev"]),
        );
        let discovery = StaticDiscovery::new();
        let clusters = discovery.insert("garden", "dev", Arc::new(StaticClusters::new()));
        clusters.insert(cluster("one"), None);
        clusters.insert(cluster("two"), None);
        let token = "token-of-the-provider-admin";
        let logins = StaticTokens::new().with(token, Identity::new("root").with_groups(["ops"]));
        let daemon = ServerBuilder::new(config)
            .cluster_provider(Arc::new(discovery))
            .catalog(Arc::new(MemoryCatalog::new()))
            .authenticator(Arc::new(logins))
            .build()
            .await
            .expect("build")
            .spawn()
            .expect("spawn");
        let http = reqwest::Client::new();
        let url = |p: &str| format!("http://{}{p}", daemon.addr);
        let call = |m: reqwest::Method, p: &str, body: Option<Value>| {
            let mut r = http.request(m, url(p)).bearer_auth(token);
            if let Some(b) = body {
                r = r.header("content-type", "application/json").body(b.to_string());
            }
            async move {
                let resp = r.send().await.expect("send");
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.unwrap_or_default();
                (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
            }
        };
        let (status, body) = call(reqwest::Method::POST, "/v1/orgs", Some(json!({"id": "acme"}))).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = call(
            reqwest::Method::POST,
            "/v1/orgs/acme/discoveries",
            Some(json!({"id": "dev", "project": "dev", "credential": "garden"})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, list) = call(reqwest::Method::GET, "/v1/orgs/acme/clusters", None).await;
            let (_, d) = call(reqwest::Method::GET, "/v1/orgs/acme/discoveries/dev", None).await;
            let names: Vec<&str> = list["items"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
                .unwrap_or_default();
            if names == ["one", "two"] && d["status"]["state"] == "Running" && d["status"]["shoots"] == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not discovered: {list} {d}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A stranger is refused; the Gardener providers are none.
        let resp = http
            .get(url("/v1/orgs/acme/clusters"))
            .bearer_auth("not-a-token")
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status().as_u16(), 401);
        assert!(daemon.server.providers().is_empty());
        daemon.shutdown().await;
    }
}
