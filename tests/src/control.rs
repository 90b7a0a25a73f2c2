//! A control plane for scenario tests: the simulated fleet, Azurite with Workload Identity, a
//! local OIDC issuer, a real `pxb-server` ([`Daemon`], the wiring the binary runs, listening on a
//! loopback port, with the SQLite catalog in a temporary directory) and real agents running
//! in-process against the simulated shoots.
//!
//! Scenarios call the API through the typed client ([`ControlPlane::client`], the one `pxb`
//! uses) and keep the raw helpers ([`ControlPlane::call`], [`ControlPlane::get_ok`]) for requests
//! the client cannot send: malformed bodies, forged paths, unusual statuses and headers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pxb_daemon::agent::Agent;
use pxb_daemon::client::Client;
use pxb_daemon::server::Daemon;
use pxb_daemon::server::config::{GardenCredential, ServerConfig};
use serde_json::Value;

use crate::fixture::{AzureFixture, CLIENT_ID};
use crate::oidc::TestIssuer;
use crate::real::RealCluster;
use crate::sim::{ExternalApiServer, Fleet, FleetConfig, MintedCert, ProjectRole};

/// The token group of provider admins in these scenarios.
pub const PROVIDER_ADMINS: &str = "pxb-provider-admins";
/// The API's audience in these scenarios.
pub const AUDIENCE: &str = "api://pxb-test";

/// Everything a server scenario needs; stopped when dropped.
pub struct ControlPlane {
    /// The simulated garden and shoots.
    pub fleet: Fleet,
    /// Azurite, fake Entra ID, the test CA.
    pub azure: AzureFixture,
    /// The OIDC issuer users log in with.
    pub issuer: TestIssuer,
    /// The running server.
    pub daemon: Option<Daemon>,
    /// Its base URL.
    pub url: String,
    /// The server's configuration.
    pub config: ServerConfig,
    /// Agents by shoot name.
    pub agents: BTreeMap<String, Agent>,
    /// Temporary files (catalog, garden kubeconfig).
    pub dir: tempfile::TempDir,
    /// The garden service-account token the server discovers with.
    pub garden_token: String,
    http: reqwest::Client,
    api: Client,
    /// The operations the typed clients of this control plane got an answer for.
    pub called: Called,
    /// The server's clock, when a scenario drives it ([`ControlPlane::use_clock`]).
    clock: Option<Arc<dyn pxb_core::Clock>>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// A fleet with project `project` holding `shoots` ready shoots named `shoot-00000`…, and a
    /// server configured for quick scenarios (1.5 s call deadline, 2 s resync and offline backoff,
    /// 5 s lease), adjusted by `tweak`. The garden credential is named after the project.
    pub async fn start(
        project: &str,
        shoots: usize,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let fleet = Fleet::start(FleetConfig::default())?;
        fleet.add_project(project)?;
        fleet.add_shoots(project, "shoot", shoots)?;
        Self::start_on(fleet, project, tweak).await
    }

    /// As [`ControlPlane::start`], on a fleet the caller made: its own [`FleetConfig`], and
    /// project `project` (which must exist) with whatever shoots it wants, such as shoots backed
    /// by real API servers ([`real_api_server`]).
    pub async fn start_on(
        fleet: Fleet,
        project: &str,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let token = fleet.add_service_account(project, "pxb", ProjectRole::Admin)?;
        let dir = tempfile::tempdir()?;
        let garden = dir.path().join(format!("garden-{project}.yaml"));
        std::fs::write(&garden, fleet.garden_kubeconfig(&token))?;
        let azure = AzureFixture::start(3600)?;
        let issuer = TestIssuer::start(&azure.ca)?;
        let mut config = ServerConfig::default();
        config.api.listen = "127.0.0.1:0".into();
        config.api.shutdown_grace_secs = 2;
        config.catalog.path = dir.path().join("catalog.db").display().to_string();
        config.auth.issuer = issuer.issuer();
        config.auth.audiences = vec![AUDIENCE.into()];
        config.auth.issuer_ca_file = azure.ca.ca_file().display().to_string();
        config.auth.provider_admin_groups = vec![PROVIDER_ADMINS.into()];
        // The scenarios onboard the project into org `acme`: the credential is bound to it.
        config.garden_credentials.insert(
            project.into(),
            GardenCredential::new(garden.display().to_string())
                .for_orgs(["acme"])
                .for_projects([project]),
        );
        config.fleet.call_timeout_ms = 1500;
        config.fleet.resync_secs = 2;
        config.fleet.offline_backoff_secs = 2;
        config.fleet.offline_backoff_max_secs = 4;
        config.fleet.lease_secs = 5;
        config.fleet.snapshot_interval_ms = 100;
        config.fleet.kubeconfig_lifetime_secs = 3600;
        tweak(&mut config);
        let daemon = Daemon::start(config.clone(), None, |_| None).await?;
        let url = format!("http://{}", daemon.addr);
        let called = Called::default();
        let api = api_client(&url, &called)?;
        Ok(Self {
            fleet,
            azure,
            issuer,
            daemon: Some(daemon),
            url,
            config,
            agents: BTreeMap::new(),
            dir,
            garden_token: token,
            http: reqwest::Client::new(),
            api,
            called,
            clock: None,
        })
    }

    /// Restarts the server on the same catalog with `clock` as its clock seam (for scenarios
    /// that move time: retention windows, schedules). Later restarts keep it.
    pub async fn use_clock(&mut self, clock: Arc<dyn pxb_core::Clock>) -> anyhow::Result<()> {
        self.clock = Some(clock);
        self.restart_server().await
    }

    /// Starts the server with this control plane's configuration (and clock, if one is set).
    async fn start_daemon(&self) -> anyhow::Result<Daemon> {
        Ok(match &self.clock {
            Some(clock) => pxb_daemon::server::ServerBuilder::new(self.config.clone())
                .clock(clock.clone())
                .build()
                .await?
                .spawn()?,
            None => Daemon::start(self.config.clone(), None, |_| None).await?,
        })
    }

    /// A bearer token for `subject` in `groups`, valid for an hour by the server's clock (which a
    /// scenario may have moved: [`ControlPlane::use_clock`]).
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        let mut claims = self.issuer.claims_for(subject, AUDIENCE, groups, &[], 3600);
        if let Some(clock) = &self.clock {
            let now = pxb_core::clock::unix_ms(clock.now()) / 1000;
            claims["iat"] = serde_json::json!(now - 300);
            claims["nbf"] = serde_json::json!(now - 300);
            claims["exp"] = serde_json::json!(now + 3600);
        }
        self.issuer.token(claims)
    }

    /// A provider admin's token.
    pub fn admin_token(&self) -> String {
        self.token("provider-admin", &[PROVIDER_ADMINS])
    }

    /// The typed client of the API with `token` (the provider admin's, a user's from
    /// [`ControlPlane::token`], or anything else). It calls the server that runs now: after
    /// [`ControlPlane::restart_server`] (a new port) ask for a new one.
    pub fn client(&self, token: &str) -> Client {
        self.api.with_token(token)
    }

    /// The typed client with the provider admin's token.
    pub fn admin_client(&self) -> Client {
        self.client(&self.admin_token())
    }

    /// The typed client without a token.
    pub fn anonymous_client(&self) -> Client {
        self.api.clone()
    }

    /// A federated location on Azurite's `container` with the fixture's Workload Identity
    /// client, assigned to `clusters`.
    pub fn azure_location(
        &self,
        name: &str,
        container: &str,
        clusters: pxb_core::catalog::records::ClusterSelector,
    ) -> pxb_core::api::rest::CreateLocation {
        pxb_core::api::rest::CreateLocation {
            name: name.into(),
            provider: "azure".into(),
            account: Some(crate::azurite::ACCOUNT.into()),
            container: container.into(),
            endpoint: Some(self.azure.azurite.endpoint()),
            client_id: Some(CLIENT_ID.into()),
            clusters,
            ..Default::default()
        }
    }

    /// Calls the API; returns the status and the JSON body (`Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b)?);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// GET that must answer 200.
    pub async fn get_ok(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        let (status, body) = self.call(reqwest::Method::GET, path, token, None).await?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        Ok(body)
    }

    /// The `pxb_server_backup_info` lines of the server's `/metrics` as `token` (none:
    /// anonymously) gets them, sorted; the whole scrape must pass `promtool check metrics`.
    pub async fn backup_info_lines(&self, token: Option<&str>) -> anyhow::Result<Vec<String>> {
        let mut req = reqwest::Client::new().get(format!("{}/metrics", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let text = req.send().await?.error_for_status()?.text().await?;
        crate::promtool_check_metrics(&text)?;
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("pxb_server_backup_info{"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        Ok(lines)
    }

    /// A client for a shoot, from a fresh admin kubeconfig (independent of the server's).
    pub async fn shoot_client(&self, project: &str, name: &str) -> anyhow::Result<kube::Client> {
        shoot_client(&self.fleet, project, name).await
    }

    /// Installs pxb on a shoot and starts a real agent for it in this process, with Workload
    /// Identity against Azurite (see [`start_agent`]).
    pub async fn start_agent(&mut self, project: &str, name: &str) -> anyhow::Result<()> {
        let agent = start_agent(
            &self.fleet,
            project,
            name,
            self.azure.wi_options(CLIENT_ID),
            Some(self.azure.ca.ca_file()),
        )
        .await?;
        self.agents.insert(name.into(), agent);
        Ok(())
    }

    /// Stops the server and starts it again on the same catalog (a new port).
    pub async fn restart_server(&mut self) -> anyhow::Result<()> {
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
        let daemon = self.start_daemon().await?;
        self.url = format!("http://{}", daemon.addr);
        self.api = api_client(&self.url, &self.called)?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// The running server.
    pub fn server(&self) -> &pxb_daemon::server::Server {
        &self.daemon.as_ref().expect("the server runs").server
    }

    /// Stops agents and the server; the fleet, Azurite and the files stay.
    pub async fn stop(&mut self) {
        for (_, a) in std::mem::take(&mut self.agents) {
            a.shutdown().await;
        }
        if let Some(d) = self.daemon.take() {
            d.shutdown().await;
        }
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }
}

/// The operation ids the typed clients of a control plane got an answer for.
pub type Called = std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>;

/// The typed client of the server at `url`, without a token, with the raw helpers' deadline;
/// every answer is recorded in `called`.
fn api_client(url: &str, called: &Called) -> anyhow::Result<Client> {
    let called = called.clone();
    Ok(Client::builder(url)
        .timeout(Duration::from_secs(30))
        .on_response(std::sync::Arc::new(move |op, _status| {
            called.lock().unwrap_or_else(|e| e.into_inner()).insert(op.id);
        }))
        .build()?)
}

pub use pxb_daemon::sim::{shoot_client, start_agent};

/// `cluster` as the API server of a shoot in the simulated garden
/// ([`Fleet::add_external_shoot`](crate::sim::Fleet::add_external_shoot)): its URL and CA, and
/// kubeconfig certificates signed by its client CA with the lifetime the garden grants
/// ([`RealCluster::client_identity_valid_for`]).
pub fn real_api_server(cluster: std::sync::Arc<RealCluster>) -> ExternalApiServer {
    ExternalApiServer {
        url: cluster.server_url(),
        ca_pem: cluster.ca_pem(),
        mint: std::sync::Arc::new(move |user: &str, groups: &[&str], ttl: Duration| {
            let id = cluster.client_identity_valid_for(user, groups, ttl)?;
            Ok(MintedCert {
                cert_pem: id.cert_pem,
                key_pem: id.key_pem,
            })
        }),
    }
}

/// Polls `probe` every 200 ms until it returns `Ok(Some(_))`; fails after `timeout` with the
/// last description `probe` gave (`Ok(None)` keeps waiting; the `Err` text is remembered).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_string(),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            anyhow::bail!("{what}: not within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates namespace `shop` with the ConfigMap `orders` on a shoot: a small application for
/// backup scenarios.
pub async fn seed_shop(kube: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::{Api, PostParams};
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}}))?;
    Api::<Namespace>::all(kube.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "orders", "namespace": "shop"}, "data": {"a": "1"}}),
    )?;
    Api::<ConfigMap>::namespaced(kube.clone(), "shop")
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}
