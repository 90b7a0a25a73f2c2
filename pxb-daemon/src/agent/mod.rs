//! `pxb-agent`: the per-cluster executor. It reconciles pxb's custom resources in its namespace
//! (see [`crate::crd`]) and reaches each backup location with the cluster's own identity.
//!
//! [`AgentBuilder`] wires it from an [`AgentConfig`] over its seams (the kube client, the
//! [`volumes::VolumeDriver`], the [`opener::LocationOpener`], the [`pxb_core::Clock`]) into a
//! running [`Agent`]: the location controller ([`locations`]: validation, sync into an in-memory
//! catalog, verify), the backup controller ([`backups`]: resources and volume data through the
//! volume driver), the restore controller ([`restores`]) and the read API ([`api`]), with
//! heartbeats while anything runs. All of it runs in the agent's `agent` span, naming the
//! cluster ([`AgentConfig::cluster_name`]) as `cluster`, so every line it logs says which
//! cluster it is about.

pub mod api;
pub mod backups;
mod config;
mod controller;
pub mod locations;
mod metrics;
pub mod opener;
pub mod restores;
pub mod volumes;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use pxb_core::{Clock, SystemClock};
use tracing::Instrument as _;

pub use config::AgentConfig;

use opener::{AzureFileOpener, LocationOpener};
use volumes::{LocalPathDriver, VolumeDriver};

/// Builds an [`Agent`] from its configuration and the seams it runs over: the cluster's API (a
/// kube client), the [`VolumeDriver`], the [`LocationOpener`] and the [`Clock`]. Each has a
/// default one call away: the kube client from the environment (in-cluster service account or
/// kubeconfig), [`LocalPathDriver`] restoring under [`AgentConfig::restore_root`],
/// [`AzureFileOpener`] (Azure Blob and `file` locations), and the system clock.
///
/// [`build`](Self::build) wires the controllers' shared state ([`BuiltAgent`]);
/// [`BuiltAgent::spawn`] starts the controllers and the read API. [`spawn`](Self::spawn) does
/// both.
///
/// ```no_run
/// # async fn example() -> pxb_core::Result<()> {
/// use std::sync::Arc;
///
/// use pxb_daemon::agent::volumes::MemoryVolumes;
/// use pxb_daemon::agent::{AgentBuilder, AgentConfig};
///
/// let config = AgentConfig::from_env()?;
/// let client = kube::Client::try_default().await.expect("a kube client");
/// let agent = AgentBuilder::new(config)
///     .kube_client(client)
///     .volume_driver(Arc::new(MemoryVolumes::new("/tmp/restores")))
///     .clock(Arc::new(pxb_core::ManualClock::new(std::time::SystemTime::now())))
///     .build()
///     .await?
///     .spawn()
///     .await?;
/// println!("the read API listens on {}", agent.api_addr);
/// agent.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until it is built"]
pub struct AgentBuilder {
    config: AgentConfig,
    client: Option<kube::Client>,
    driver: Option<Arc<dyn VolumeDriver>>,
    opener: Option<Arc<dyn LocationOpener>>,
    clock: Option<Arc<dyn Clock>>,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("config", &self.config)
            .field("driver", &self.driver)
            .field("opener", &self.opener)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// A builder for an agent with `config` and every seam at its default.
    pub fn new(config: AgentConfig) -> Self {
        Self {
            config,
            client: None,
            driver: None,
            opener: None,
            clock: None,
        }
    }

    /// The cluster's API (default: `kube::Client::try_default()`, the in-cluster service account
    /// or the kubeconfig of the environment).
    pub fn kube_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Where volume data is found and restored (default: [`LocalPathDriver`] over the kube
    /// client, restoring under [`AgentConfig::restore_root`]).
    pub fn volume_driver(mut self, driver: Arc<dyn VolumeDriver>) -> Self {
        self.driver = Some(driver);
        self
    }

    /// How a `BackupLocation` becomes an object store (default: [`AzureFileOpener`] over the
    /// kube client, for `azure` and `file` locations; [`opener::MemoryLocations`] is the
    /// in-memory twin).
    pub fn location_opener(mut self, opener: Arc<dyn LocationOpener>) -> Self {
        self.opener = Some(opener);
        self
    }

    /// Where the agent reads the time (default: [`SystemClock`]): heartbeats, timestamps and ages
    /// in statuses, when a location is due again, the ids of the backups it writes.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Fills in the defaults and wires the controllers' shared state; nothing runs yet.
    ///
    /// Errors: [`pxb_core::Error::Invalid`] when no kube client was given and none can be made
    /// from the environment.
    pub async fn build(self) -> pxb_core::Result<BuiltAgent> {
        let client = match self.client {
            Some(c) => c,
            None => kube::Client::try_default().await.map_err(|e| {
                pxb_core::Error::invalid(format!(
                    "no Kubernetes API to work with (neither an in-cluster service account nor a kubeconfig): {e}"
                ))
            })?,
        };
        let driver = self.driver.unwrap_or_else(|| {
            Arc::new(LocalPathDriver::new(
                client.clone(),
                self.config.restore_root.clone(),
            ))
        });
        let opener = self
            .opener
            .unwrap_or_else(|| Arc::new(AzureFileOpener::new(client.clone(), self.config.clone())));
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let locations = locations::Context::with_seams(client, self.config, clock, opener);
        let backups = backups::Context::new(locations.clone(), driver);
        Ok(BuiltAgent { backups })
    }

    /// [`build`](Self::build), then [`BuiltAgent::spawn`].
    pub async fn spawn(self) -> pxb_core::Result<Agent> {
        self.build().await?.spawn().await
    }
}

/// An agent wired over its seams, not yet running (see [`AgentBuilder`]).
#[derive(Debug)]
pub struct BuiltAgent {
    backups: Arc<backups::Context>,
}

impl BuiltAgent {
    /// The location controller's shared state (the client, the configuration, the catalogs).
    pub fn locations(&self) -> &Arc<locations::Context> {
        &self.backups.locations
    }

    /// The backup and restore controllers' shared state (with the volume driver).
    pub fn backups(&self) -> &Arc<backups::Context> {
        &self.backups
    }

    /// Starts the controllers and the read API: reads (or creates) the API token Secret, binds
    /// [`AgentConfig::listen`], then runs the location, backup and restore controllers, all in
    /// the agent's span (`agent`, with the field `cluster`).
    pub async fn spawn(self) -> pxb_core::Result<Agent> {
        let bctx = self.backups;
        let lctx = bctx.locations.clone();
        let span = agent_span(&lctx.config);
        let listen = lctx.config.listen;
        let token = api::ensure_token(&lctx.client, &lctx.config.namespace)
            .instrument(span.clone())
            .await?;
        let state = Arc::new(api::ApiState {
            backups: bctx.clone(),
            ready: false.into(),
            token: Some(token),
        });
        // The read API's tasks and the controllers' are spawned in the span, and carry it.
        let (api_addr, server) = api::bind(listen, state.clone())
            .instrument(span.clone())
            .await
            .map_err(|e| pxb_core::Error::io(format!("listening on {listen}"), e))?;
        let controllers = span.in_scope(|| {
            vec![
                locations::spawn(lctx),
                backups::spawn(bctx.clone()),
                restores::spawn(bctx),
            ]
        });
        state.ready.store(true, Ordering::Relaxed);
        span.in_scope(|| tracing::info!(%api_addr, version = api::VERSION, "pxb-agent started"));
        Ok(Agent {
            api_addr,
            state,
            controllers,
            server,
            span,
        })
    }
}

/// The span every line of an agent is logged in: `agent`, naming the cluster
/// ([`AgentConfig::cluster_name`], when it is set) as `cluster`, a plain name or `(invalid)`.
/// The agent does not know its organisation, so there is no `org`. At level `ERROR`, so that every
/// filter letting a line through keeps its span (a span's level says only when it is recorded).
fn agent_span(config: &AgentConfig) -> tracing::Span {
    let cluster = config.cluster_name.as_deref().map(controller::span_field);
    tracing::error_span!("agent", cluster)
}

/// A running agent: the controllers and the read API (what `pxb-agent` runs). Made by
/// [`AgentBuilder`].
#[derive(Debug)]
pub struct Agent {
    /// Where the read API listens.
    pub api_addr: std::net::SocketAddr,
    state: Arc<api::ApiState>,
    controllers: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
    span: tracing::Span,
}

impl Agent {
    /// Starts the controllers and the read API for this cluster, with the default volume driver
    /// and clock: `AgentBuilder::new(config).kube_client(client).spawn()`.
    pub async fn start(client: kube::Client, config: AgentConfig) -> pxb_core::Result<Self> {
        AgentBuilder::new(config).kube_client(client).spawn().await
    }

    /// Stops taking work, records in each running operation's status that it was interrupted
    /// (the next agent resumes it), and stops.
    pub async fn shutdown(self) {
        let span = self.span.clone();
        self.drain().instrument(span).await;
    }

    async fn drain(self) {
        self.state.ready.store(false, Ordering::Relaxed);
        for c in &self.controllers {
            c.abort();
        }
        let bctx = &self.state.backups;
        let lctx = &bctx.locations;
        let api: kube::Api<crate::crd::ApplicationBackup> =
            kube::Api::namespaced(lctx.client.clone(), &lctx.config.namespace);
        for op in bctx.operations().into_iter().filter(|o| o.kind == "backup") {
            let patch = serde_json::json!({"status": {"heartbeat": lctx.now_rfc3339(),
                "message": "interrupted by an agent shutdown; the next agent resumes it"}});
            let _ = api
                .patch_status(
                    &op.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await;
        }
        self.server.abort();
        tracing::info!("pxb-agent stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, UNIX_EPOCH};

    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, PostParams};
    use serde_json::json;

    use super::*;
    use crate::crd::{ApplicationBackup, ApplicationBackupSpec, BackupLocation, BackupLocationSpec};

    /// A simulated shoot with pxb's CRDs and namespace; a client for it.
    async fn shoot() -> (pxb_sim::Fleet, kube::Client) {
        let fleet = pxb_sim::Fleet::start(pxb_sim::FleetConfig::default()).expect("fleet");
        fleet.add_project("dev").expect("project");
        fleet.add_shoots("dev", "shoot", 1).expect("shoot");
        let kubeconfig = fleet
            .admin_kubeconfig("dev", "shoot-00000", 3600)
            .expect("kubeconfig");
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        let client = kube::Client::try_from(config).expect("client");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for (_, yaml) in crate::crd::crds_yaml().expect("CRDs") {
            crds.create(
                &PostParams::default(),
                &serde_saphyr::from_str(&yaml).expect("CRD"),
            )
            .await
            .expect("install the CRD");
        }
        for obj in [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "pxb-system"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"},
                   "data": {"color": "blue"}}),
        ] {
            let obj: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
            let (ar, _) = kube::discovery::pinned_kind(
                &client,
                &kube::api::GroupVersionKind::try_from(obj.types.as_ref().expect("types")).expect("gvk"),
            )
            .await
            .expect("discover");
            let api: Api<kube::api::DynamicObject> = match obj.metadata.namespace.as_deref() {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                None => Api::all_with(client.clone(), &ar),
            };
            api.create(&PostParams::default(), &obj).await.expect("create");
        }
        (fleet, client)
    }

    async fn wait_for<K>(api: &Api<K>, name: &str, ok: impl Fn(&K) -> bool) -> K
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let obj = api.get(name).await.expect("get");
            if ok(&obj) {
                return obj;
            }
            assert!(Instant::now() < deadline, "{name}: last state {obj:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An agent built with a clock of its own reads the time from it, and only from it: every
    /// timestamp it writes into statuses, the time a sync is reported at and the ids of the
    /// backups it writes are that clock's, days away from the system's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_agent_reads_the_time_from_its_clock() {
        let (_fleet, client) = shoot().await;
        let tmp = tempfile::tempdir().expect("tmp");
        let location = tmp.path().join("location");
        std::fs::create_dir_all(&location).expect("mkdir");
        // 2026-01-01T10:10:00Z, whatever the system's time.
        let at = UNIX_EPOCH + Duration::from_secs(1_767_262_200);
        let clock = pxb_core::ManualClock::new(at);
        let config = AgentConfig {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            restore_root: tmp.path().join("restores"),
            ..AgentConfig::default()
        };
        let built = AgentBuilder::new(config)
            .kube_client(client.clone())
            .volume_driver(Arc::new(volumes::MemoryVolumes::new(tmp.path().join("restores"))))
            .clock(Arc::new(clock.clone()))
            .build()
            .await
            .expect("build");
        let lctx = built.locations().clone();
        let agent = built.spawn().await.expect("spawn");

        let locations: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
        let spec = BackupLocationSpec {
            provider: "file".into(),
            container: location.to_string_lossy().into_owned(),
            sync: true,
            ..BackupLocationSpec::default()
        };
        locations
            .create(&PostParams::default(), &BackupLocation::new("local", spec))
            .await
            .expect("location");
        let loc = wait_for(&locations, "local", |l| {
            l.status.as_ref().is_some_and(|s| {
                s.validation
                    .as_ref()
                    .is_some_and(|v| v.phase == crate::crd::LocationValidationPhase::Valid)
                    && s.sync
                        .as_ref()
                        .is_some_and(|s| s.phase == crate::crd::RunPhase::Completed)
            })
        })
        .await;
        let status = loc.status.expect("status");
        let stamp = "2026-01-01T10:10:00Z";
        assert_eq!(
            status.validation.and_then(|v| v.last_checked).as_deref(),
            Some(stamp)
        );
        let sync = status.sync.expect("sync");
        assert_eq!(
            (sync.started.as_deref(), sync.heartbeat.as_deref()),
            (Some(stamp), Some(stamp))
        );
        assert_eq!(lctx.catalog("local").and_then(|c| c.synced_at), Some(at));

        let backups: Api<ApplicationBackup> = Api::namespaced(client.clone(), "pxb-system");
        let spec = ApplicationBackupSpec {
            location: "local".into(),
            namespaces: vec!["shop".into()],
            include_volumes: true,
            reclaim_policy: "Retain".into(),
            ..ApplicationBackupSpec::default()
        };
        backups
            .create(&PostParams::default(), &ApplicationBackup::new("b1", spec))
            .await
            .expect("backup");
        let done = wait_for(&backups, "b1", |b| {
            b.status.as_ref().is_some_and(|s| s.phase.is_final())
        })
        .await;
        let status = done.status.expect("status");
        assert_eq!(
            status.phase,
            crate::crd::ApplicationBackupPhase::Success,
            "{status:?}"
        );
        assert_eq!(
            (
                status.start_timestamp.as_deref(),
                status.completion_timestamp.as_deref(),
                status.heartbeat.as_deref()
            ),
            (Some(stamp), Some(stamp), Some(stamp))
        );
        let id = status.backup_id.expect("id");
        assert!(id.starts_with("20260101T101000Z-"), "{id}");
        agent.shutdown().await;
    }
    /// Every reconcile runs in a span naming its objects, so each line it logs (and those of the
    /// data operations inside it) says what it is about: a location's carry `location`, a
    /// backup's `backup` and `location`, a restore's `restore`, `backup` (the id) and `location`,
    /// as the JSON lines of `pxb_telemetry` show them.
    #[test]
    fn only_plain_names_become_span_fields() {
        assert_eq!(controller::span_field("primary"), "primary");
        assert_eq!(
            controller::span_field("20261122T040013Z-152e3f84"),
            "20261122T040013Z-152e3f84"
        );
        for hostile in [
            "",
            "a b",
            "a\nlevel=ERROR forged",
            "x\u{1b}[31m",
            &"a".repeat(254),
        ] {
            assert_eq!(controller::span_field(hostile), "(invalid)", "{hostile:?}");
        }
    }
}
