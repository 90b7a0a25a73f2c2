//! The fleet simulator: a Gardener garden API and one Kubernetes API server per shoot, in one
//! process, over HTTPS on loopback, with fault injection changeable at run time.
//!
//! - **Garden** ([`Fleet::garden_url`]): Projects, Shoots (the shapes of
//!   `core.gardener.cloud/v1beta1`, with status, conditions, lastOperation, advertised addresses and
//!   the status label), list/watch with the full protocol of [`rest`], and the `adminkubeconfig` and
//!   `viewerkubeconfig` subresources. Clients authenticate with service-account bearer tokens
//!   ([`Fleet::add_service_account`]); authorization is project-scoped.
//! - **Shoots** ([`SimShoot`]): each has its own port, its own CA and client-certificate
//!   authentication; certificates come only from the kubeconfig subresources, and one that is
//!   expired or from another shoot's CA gets 401. The API follows [`rest`] over [`store`].
//! - **Control** (library calls): add, delete, hibernate, wake shoots, change versions, inject
//!   [`Fault`]s.
//! - **External shoots** ([`Fleet::add_external_shoot`], [`ExternalApiServer`]): a shoot in the
//!   garden whose API server is a real one (kube-apiserver in a test): the garden advertises its
//!   URL and CA and mints kubeconfig certificates with its client CA, so the real server does the
//!   authentication (an expired or foreign certificate gets its 401), authorization and API.
//!   Faults cannot be injected into them, and hibernating one changes only its garden status.
//!
//! Deliberate differences from Gardener, so tests don't rely on them: the minimum kubeconfig
//! lifetime is configurable ([`FleetConfig::kubeconfig_min_seconds`], 600 s like Gardener by
//! default) so expiry can be tested in seconds; shoots are changed through this API, not by
//! writing Shoot objects.
//!
//! # Quick start: a project of shoots for a cluster provider's tests
//!
//! ```
//! use pxb_sim::store::Selectors;
//! use pxb_sim::{Fault, Fleet, FleetConfig, Phase, ProjectRole, ShootSpec};
//!
//! # fn main() -> anyhow::Result<()> {
//! // A garden on a loopback port (HTTPS with its own CA) and a project of three shoots, each
//! // with its own API server on loopback.
//! let fleet = Fleet::start(FleetConfig::default())?;
//! let namespace = fleet.add_project("dev")?;
//! fleet.add_shoots("dev", "shoot", 2)?;
//! fleet.add_shoot("dev", ShootSpec::new("old").version("1.30.2"))?;
//!
//! // What the provider under test gets: a garden kubeconfig of a member of the project.
//! let token = fleet.add_service_account("dev", "pxb", ProjectRole::Admin)?;
//! let kubeconfig = fleet.garden_kubeconfig(&token);
//! assert!(kubeconfig.contains(&fleet.garden_url()));
//!
//! // What it discovers there: the project's Shoot objects, as the garden API serves them.
//! let garden = fleet.garden_store();
//! let shoots = garden
//!     .resolve("core.gardener.cloud", "v1beta1", "shoots")
//!     .expect("the garden serves shoots");
//! let list = garden
//!     .list(&shoots, Some(&namespace), &Selectors::default(), 0, None)
//!     .map_err(|e| anyhow::anyhow!(e.message))?;
//! let names: Vec<&str> = list.items.iter().filter_map(|s| s["metadata"]["name"].as_str()).collect();
//! assert_eq!(names, ["old", "shoot-00000", "shoot-00001"]);
//! assert_eq!(list.items[0]["spec"]["kubernetes"]["version"], "1.30.2");
//!
//! // The fleet changes under it: a shoot hibernates, another's API server stops answering.
//! fleet.hibernate("dev", "shoot-00001")?;
//! assert_eq!(fleet.shoot("dev", "shoot-00001")?.phase(), Phase::Hibernated);
//! fleet.set_fault("dev", "shoot-00000", Fault::Offline)?;
//!
//! // Shoots are reached with the kubeconfigs the garden issues (here directly, for a test).
//! let admin = fleet.admin_kubeconfig("dev", "old", 600)?;
//! assert!(admin.contains(&fleet.shoot("dev", "old")?.url()));
//! # Ok(())
//! # }
//! ```

pub mod pki;
pub mod rest;
mod shoot;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use time::OffsetDateTime;

pub use shoot::{
    ADMIN_GROUP, ExternalApiServer, Fault, Mint, MintedCert, Phase, Role, SimShoot, VIEWER_GROUP,
};
use shoot::{ShootState, run_listener};
use store::{ApiError, ApiStore, Preconditions, ResourceType, now_rfc3339, rfc3339};

use rest::{Body, RestOptions, error_response, json_response};

/// The shoot annotation that asks Gardener for a managed service-account issuer.
const ISSUER_ANNOTATION: &str = "authentication.gardener.cloud/issuer";

/// Settings of a simulated fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Shortest kubeconfig lifetime accepted (Gardener: 600 s).
    pub kubeconfig_min_seconds: u64,
    /// Longest lifetime; longer requests are clamped (Gardener's default: 24 h).
    pub kubeconfig_max_seconds: u64,
    /// Lifetime when a request names none (Gardener: 3600 s).
    pub kubeconfig_default_seconds: u64,
    /// Bookmark interval of watches.
    pub bookmark_interval: Duration,
    /// Address of the garden API (`127.0.0.1:0` picks a port).
    pub garden_listen: std::net::SocketAddr,
    /// Worker threads of the simulator's runtime.
    pub worker_threads: usize,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            kubeconfig_min_seconds: 600,
            kubeconfig_max_seconds: 86_400,
            kubeconfig_default_seconds: 3600,
            bookmark_interval: Duration::from_secs(5),
            garden_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            worker_threads: 1,
        }
    }
}

/// A shoot to add.
#[derive(Debug, Clone)]
pub struct ShootSpec {
    /// Name.
    pub name: String,
    /// `spec.kubernetes.version`.
    pub kubernetes_version: String,
    /// `spec.provider.type`.
    pub provider_type: String,
    /// `spec.region`.
    pub region: String,
    /// Labels on the Shoot object.
    pub labels: BTreeMap<String, String>,
    /// Still being created (no CA, API down) until [`Fleet::finish_creation`].
    pub creating: bool,
    /// Whether `status.advertisedAddresses` is filled.
    pub advertised_addresses: bool,
    /// Annotated `authentication.gardener.cloud/issuer=managed`: the advertised
    /// `service-account-issuer` is Gardener's managed issuer
    /// (`…/projects/<project>/shoots/<uid>/issuer`) instead of the API server's own URL.
    pub managed_issuer: bool,
    /// Starts hibernated.
    pub hibernated: bool,
    /// Leaves out `status` entirely (a malformed shoot).
    pub without_status: bool,
    /// Backed by this real API server instead of a simulated one.
    pub external: Option<ExternalApiServer>,
}

impl ShootSpec {
    /// A ready Azure shoot on Kubernetes 1.33.4.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kubernetes_version: "1.33.4".into(),
            provider_type: "azure".into(),
            region: "westeurope".into(),
            labels: BTreeMap::new(),
            creating: false,
            advertised_addresses: true,
            managed_issuer: true,
            hibernated: false,
            without_status: false,
            external: None,
        }
    }
    /// Backed by `server`, a real API server, instead of a simulated one (see
    /// [`ExternalApiServer`]).
    pub fn external(mut self, server: ExternalApiServer) -> Self {
        self.external = Some(server);
        self
    }
    /// With this Kubernetes version.
    pub fn version(mut self, v: &str) -> Self {
        self.kubernetes_version = v.into();
        self
    }
    /// With this provider type.
    pub fn provider(mut self, p: &str) -> Self {
        self.provider_type = p.into();
        self
    }
}

/// A project member's role in the garden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectRole {
    /// May read shoots and request admin and viewer kubeconfigs.
    Admin,
    /// May read shoots and request viewer kubeconfigs only.
    Viewer,
}

#[derive(Debug, Clone)]
struct Subject {
    user: String,
    /// `None`: garden operator (reads everything).
    namespace: Option<String>,
    role: ProjectRole,
}

struct FleetInner {
    config: FleetConfig,
    garden: Arc<ApiStore>,
    garden_ca: pki::Ca,
    rest: RestOptions,
    tokens: Mutex<HashMap<String, Subject>>,
    projects: Mutex<BTreeMap<String, String>>,
    shoots: Mutex<HashMap<(String, String), Arc<SimShoot>>>,
    handle: tokio::runtime::Handle,
}

impl FleetInner {
    fn shoots(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<SimShoot>>> {
        self.shoots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running simulated fleet; everything stops when it is dropped.
pub struct Fleet {
    inner: Arc<FleetInner>,
    garden_port: u16,
    operator_token: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("garden_port", &self.garden_port)
            .finish_non_exhaustive()
    }
}

fn shoot_type() -> ResourceType {
    let mut t = ResourceType::new("core.gardener.cloud", "v1beta1", "Shoot", "shoots", true)
        .with_field_labels(&[
            "spec.seedName",
            "status.seedName",
            "spec.cloudProfileName",
            "spec.cloudProfile.Name",
            "spec.cloudProfile.Kind",
        ]);
    t.extra_subresources = vec![
        ("adminkubeconfig".into(), vec!["create"]),
        ("viewerkubeconfig".into(), vec!["create"]),
    ];
    t
}

fn project_type() -> ResourceType {
    ResourceType::new("core.gardener.cloud", "v1beta1", "Project", "projects", false)
}

fn namespace_type() -> ResourceType {
    ResourceType::new("", "v1", "Namespace", "namespaces", false)
}

fn token() -> String {
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A kubeconfig in YAML with one user, and one cluster and context per `(name, server)`; the
/// first is the current context.
pub fn kubeconfig_yaml(
    servers: &[(String, String)],
    ca_pem: &str,
    user: &str,
    credentials: &[(&str, String)],
) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut y = String::from("apiVersion: v1\nkind: Config\n");
    y += &format!(
        "current-context: {}\nclusters:\n",
        servers.first().map_or("", |s| s.0.as_str())
    );
    for (name, server) in servers {
        y += &format!(
            "- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n",
            b64(ca_pem)
        );
    }
    y += "contexts:\n";
    for (name, _) in servers {
        y += &format!("- name: {name}\n  context:\n    cluster: {name}\n    user: {user}\n");
    }
    y += &format!("users:\n- name: {user}\n  user:\n");
    for (k, v) in credentials {
        y += &format!("    {k}: {v}\n");
    }
    y += "preferences: {}\n";
    y
}

impl Fleet {
    /// Starts an empty fleet (a garden without projects) on its own runtime.
    pub fn start(config: FleetConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name("pxb-sim")
            .enable_all()
            .build()?;
        let garden_ca = pki::Ca::new("pxb-sim garden CA")?;
        let garden_tls = pki::server_config_no_client_auth(&garden_ca.server_cert(&[])?)?;
        let rest = RestOptions {
            kubernetes_version: "1.33.4".into(),
            bookmark_interval: config.bookmark_interval,
        };
        let garden = Arc::new(ApiStore::with_event_log(
            vec![namespace_type(), project_type(), shoot_type()],
            100_000,
        ));
        let std_listener =
            std::net::TcpListener::bind(config.garden_listen).context("binding the garden API")?;
        std_listener.set_nonblocking(true)?;
        let garden_port = std_listener.local_addr()?.port();
        let inner = Arc::new(FleetInner {
            config,
            garden,
            garden_ca,
            rest,
            tokens: Mutex::new(HashMap::new()),
            projects: Mutex::new(BTreeMap::new()),
            shoots: Mutex::new(HashMap::new()),
            handle: runtime.handle().clone(),
        });
        let operator_token = token();
        inner.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(
            operator_token.clone(),
            Subject {
                user: "system:pxb-sim:operator".into(),
                namespace: None,
                role: ProjectRole::Admin,
            },
        );
        let serving = inner.clone();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(garden_tls);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (inner, acceptor) = (serving.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req| {
                        let inner = inner.clone();
                        async move { Ok::<_, std::convert::Infallible>(garden_handle(&inner, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            inner,
            garden_port,
            operator_token,
            runtime: Some(runtime),
        })
    }

    /// The garden API's URL.
    pub fn garden_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.garden_port)
    }

    /// The garden CA certificate (PEM).
    pub fn garden_ca_pem(&self) -> &str {
        &self.inner.garden_ca.cert_pem
    }

    /// The garden's object store (for inspection).
    pub fn garden_store(&self) -> &Arc<ApiStore> {
        &self.inner.garden
    }

    /// A garden kubeconfig authenticating with `token`.
    pub fn garden_kubeconfig(&self, token: &str) -> String {
        kubeconfig_yaml(
            &[("garden".into(), self.garden_url())],
            self.garden_ca_pem(),
            "garden-user",
            &[("token", token.to_owned())],
        )
    }

    /// A bearer token of the garden operator, who may read everything.
    pub fn operator_token(&self) -> &str {
        &self.operator_token
    }

    /// Adds a project with namespace `garden-<name>`; returns the namespace.
    pub fn add_project(&self, name: &str) -> anyhow::Result<String> {
        let namespace = format!("garden-{name}");
        let g = &self.inner.garden;
        g.create(
            &namespace_type(),
            None,
            json!({"metadata": {"name": namespace, "labels": {"project.gardener.cloud/name": name, "gardener.cloud/role": "project"}}}),
            false,
        )
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        g.create(
            &project_type(),
            None,
            json!({"metadata": {"name": name},
                   "spec": {"namespace": namespace, "owner": {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "owner@example.com"}}}),
            false,
        )
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let _ = g.update_with(&project_type(), None, name, true, false, |cur| {
            let mut o = cur.clone();
            o["status"] = json!({"phase": "Ready", "observedGeneration": 1});
            Ok(o)
        });
        self.inner
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), namespace.clone());
        Ok(namespace)
    }

    fn project_namespace(&self, project: &str) -> anyhow::Result<String> {
        self.inner
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(project)
            .cloned()
            .with_context(|| format!("no project {project}"))
    }

    /// Adds a service account to `project` with `role`; returns its bearer token.
    pub fn add_service_account(
        &self,
        project: &str,
        name: &str,
        role: ProjectRole,
    ) -> anyhow::Result<String> {
        let namespace = self.project_namespace(project)?;
        let t = token();
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                t.clone(),
                Subject {
                    user: format!("system:serviceaccount:{namespace}:{name}"),
                    namespace: Some(namespace),
                    role,
                },
            );
        Ok(t)
    }

    /// Revokes a bearer token.
    pub fn revoke_token(&self, token: &str) {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    /// Adds a ready shoot `name` to `project` whose API server is the real one `server`: the
    /// garden advertises its URL and CA, and kubeconfig requests for it mint certificates with
    /// its client CA ([`ExternalApiServer`]).
    pub fn add_external_shoot(
        &self,
        project: &str,
        name: &str,
        server: ExternalApiServer,
    ) -> anyhow::Result<Arc<SimShoot>> {
        self.add_shoot(project, ShootSpec::new(name).external(server))
    }

    /// Adds a shoot to `project`; its API server starts listening at once (an external shoot's
    /// is already running).
    pub fn add_shoot(&self, project: &str, spec: ShootSpec) -> anyhow::Result<Arc<SimShoot>> {
        let namespace = self.project_namespace(project)?;
        let (std_listener, port) = match &spec.external {
            Some(e) => {
                let url = url::Url::parse(&e.url)
                    .with_context(|| format!("the external API server's URL {:?}", e.url))?;
                anyhow::ensure!(
                    url.scheme() == "https",
                    "the external API server's URL {:?} is not https",
                    e.url
                );
                let port = url
                    .port_or_known_default()
                    .with_context(|| format!("the external API server's URL {:?} has no port", e.url))?;
                (None, port)
            }
            None => {
                let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding a shoot API port")?;
                l.set_nonblocking(true)?;
                let port = l.local_addr()?.port();
                (Some(l), port)
            }
        };
        let phase = if spec.creating {
            Phase::Creating
        } else if spec.hibernated {
            Phase::Hibernated
        } else {
            Phase::Ready
        };
        let shoot = Arc::new(SimShoot::new(
            &namespace,
            &spec.name,
            project,
            port,
            ShootState {
                phase,
                fault: Fault::None,
                kubernetes_version: spec.kubernetes_version.clone(),
                advertised: spec.advertised_addresses,
                managed_issuer: spec.managed_issuer,
            },
            RestOptions {
                kubernetes_version: spec.kubernetes_version.clone(),
                bookmark_interval: self.inner.config.bookmark_interval,
            },
            spec.external.clone(),
        ));
        let mut labels = json!({});
        for (k, v) in &spec.labels {
            labels[k] = v.clone().into();
        }
        let obj = json!({
            "metadata": {"name": spec.name, "namespace": namespace, "labels": labels, "finalizers": ["gardener"]},
            "spec": {
                "cloudProfile": {"kind": "CloudProfile", "name": spec.provider_type},
                "cloudProfileName": spec.provider_type,
                "region": spec.region,
                "purpose": "production",
                "hibernation": {"enabled": spec.hibernated},
                "kubernetes": {"version": spec.kubernetes_version},
                "provider": {"type": spec.provider_type, "workers": [{"name": "w1", "minimum": 1, "maximum": 3,
                    "machine": {"type": "Standard_D4s_v5", "architecture": "amd64", "image": {"name": "gardenlinux", "version": "1443.10.0"}}}]},
                "seedName": format!("{}-eu1", spec.provider_type),
            }
        });
        let g = &self.inner.garden;
        g.create(&shoot_type(), Some(&namespace), obj, false)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        if !spec.without_status {
            self.write_status(&shoot)?;
        }
        self.inner
            .shoots()
            .insert((namespace, spec.name.clone()), shoot.clone());
        if let Some(std_listener) = std_listener {
            let listener = {
                let _guard = self.inner.handle.enter();
                tokio::net::TcpListener::from_std(std_listener)?
            };
            self.inner.handle.spawn(run_listener(shoot.clone(), listener));
        }
        Ok(shoot)
    }

    /// Adds `n` ready shoots named `<prefix>-00000`, `<prefix>-00001`, …
    pub fn add_shoots(&self, project: &str, prefix: &str, n: usize) -> anyhow::Result<()> {
        for i in 0..n {
            self.add_shoot(project, ShootSpec::new(format!("{prefix}-{i:05}")))?;
        }
        Ok(())
    }

    /// A shoot by project and name.
    pub fn shoot(&self, project: &str, name: &str) -> anyhow::Result<Arc<SimShoot>> {
        let ns = self.project_namespace(project)?;
        self.inner
            .shoots()
            .get(&(ns, name.to_owned()))
            .cloned()
            .with_context(|| format!("no shoot {project}/{name}"))
    }

    /// Number of shoots (all phases but deleted).
    pub fn shoot_count(&self) -> usize {
        self.inner.shoots().len()
    }

    /// Writes the shoot's status (and the spec and labels that follow its phase) to the garden.
    fn write_status(&self, shoot: &SimShoot) -> anyhow::Result<()> {
        let (phase, version, advertised, managed_issuer) = {
            let st = shoot.lock();
            (
                st.phase,
                st.kubernetes_version.clone(),
                st.advertised,
                st.managed_issuer,
            )
        };
        let g = &self.inner.garden;
        let ty = shoot_type();
        let health = match phase {
            Phase::Ready | Phase::Hibernated => "healthy",
            Phase::Creating | Phase::Deleting => "progressing",
            Phase::Deleted => "unknown",
        };
        g.update_with(&ty, Some(&shoot.namespace), &shoot.name, false, false, |cur| {
            let mut o = cur.clone();
            o["metadata"]["labels"]["shoot.gardener.cloud/status"] = health.into();
            if managed_issuer {
                o["metadata"]["annotations"][ISSUER_ANNOTATION] = "managed".into();
            } else if let Some(a) = o
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                a.remove(ISSUER_ANNOTATION);
            }
            o["spec"]["hibernation"]["enabled"] = (phase == Phase::Hibernated).into();
            o["spec"]["kubernetes"]["version"] = version.clone().into();
            Ok(o)
        })
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let url = shoot.url();
        let technical_id = shoot.technical_id.clone();
        let project = shoot
            .namespace
            .strip_prefix("garden-")
            .unwrap_or(&shoot.namespace)
            .to_owned();
        g.update_with(&ty, Some(&shoot.namespace), &shoot.name, true, false, |cur| {
            let mut o = cur.clone();
            let uid = cur.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            let now = now_rfc3339();
            let (op_type, state, progress) = match phase {
                Phase::Creating => ("Create", "Processing", 40),
                Phase::Ready | Phase::Hibernated => ("Reconcile", "Succeeded", 100),
                Phase::Deleting | Phase::Deleted => ("Delete", "Processing", 10),
            };
            let api_up = matches!(phase, Phase::Ready | Phase::Deleting);
            let cond = |t: &str| {
                let (s, reason) = match (phase, api_up) {
                    (Phase::Creating, _) => ("Progressing", "Progressing"),
                    (_, true) => ("True", "HealthzRequestSucceeded"),
                    (_, false) => ("False", "Hibernated"),
                };
                json!({"type": t, "status": s, "lastTransitionTime": now, "lastUpdateTime": now,
                       "reason": reason, "message": format!("{t} is {s}")})
            };
            let conditions: Vec<Value> = [
                "APIServerAvailable",
                "ControlPlaneHealthy",
                "ObservabilityComponentsHealthy",
                "EveryNodeReady",
                "SystemComponentsHealthy",
            ]
            .iter()
            .map(|t| cond(t))
            .collect();
            let mut status = json!({
                "hibernated": phase == Phase::Hibernated,
                "technicalID": technical_id,
                "seedName": cur.pointer("/spec/seedName").cloned().unwrap_or(Value::Null),
                "gardener": {"id": "pxb-sim", "name": "gardener-controller-manager", "version": "v1.120.0"},
                "lastOperation": {"type": op_type, "state": state, "progress": progress,
                                  "description": format!("{op_type} {state}"), "lastUpdateTime": now},
                "conditions": conditions,
                "observedGeneration": cur.pointer("/metadata/generation").cloned().unwrap_or(1.into()),
            });
            if phase != Phase::Creating {
                status["uid"] = uid.clone();
                status["clusterIdentity"] =
                    format!("{technical_id}-{}-pxb-sim", uid.as_str().unwrap_or("")).into();
                if advertised {
                    // Gardener's managed issuer, or else the API server's own URL.
                    let issuer = if managed_issuer {
                        format!(
                            "{url}/projects/{project}/shoots/{}/issuer",
                            uid.as_str().unwrap_or("")
                        )
                    } else {
                        url.clone()
                    };
                    status["advertisedAddresses"] = json!([
                        {"name": "external", "url": url},
                        {"name": "internal", "url": url},
                        {"name": "service-account-issuer", "url": issuer},
                    ]);
                }
            }
            o["status"] = status;
            Ok(o)
        })
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(())
    }

    fn transition(&self, project: &str, name: &str, f: impl FnOnce(&mut ShootState)) -> anyhow::Result<()> {
        let shoot = self.shoot(project, name)?;
        shoot.update(f);
        self.write_status(&shoot)?;
        shoot.settle();
        Ok(())
    }

    /// Finishes creating a shoot (`creating` in its spec): it gets its CA, uid and API.
    pub fn finish_creation(&self, project: &str, name: &str) -> anyhow::Result<()> {
        self.transition(project, name, |s| s.phase = Phase::Ready)
    }

    /// Hibernates a shoot: its API goes down and its status says hibernated.
    pub fn hibernate(&self, project: &str, name: &str) -> anyhow::Result<()> {
        self.transition(project, name, |s| s.phase = Phase::Hibernated)
    }

    /// Wakes a hibernated shoot.
    pub fn wake(&self, project: &str, name: &str) -> anyhow::Result<()> {
        self.transition(project, name, |s| s.phase = Phase::Ready)
    }

    /// Annotates a shoot `authentication.gardener.cloud/issuer=managed` (or removes the
    /// annotation) and reconciles it: its advertised `service-account-issuer` follows.
    pub fn set_managed_issuer(&self, project: &str, name: &str, managed: bool) -> anyhow::Result<()> {
        self.transition(project, name, |s| s.managed_issuer = managed)
    }

    /// Changes a shoot's Kubernetes version.
    pub fn set_version(&self, project: &str, name: &str, version: &str) -> anyhow::Result<()> {
        self.transition(project, name, |s| s.kubernetes_version = version.to_owned())
    }

    /// Injects a fault into a shoot's API server (for new and open connections); when it returns,
    /// the port is open or closed accordingly. An external shoot's real server takes no faults:
    /// an error.
    pub fn set_fault(&self, project: &str, name: &str, fault: Fault) -> anyhow::Result<()> {
        let shoot = self.shoot(project, name)?;
        anyhow::ensure!(
            shoot.external().is_none(),
            "shoot {project}/{name} is backed by a real API server ({}); faults cannot be injected into it",
            shoot.url()
        );
        shoot.update(|s| s.fault = fault);
        shoot.settle();
        Ok(())
    }

    /// Starts deleting a shoot: `deletionTimestamp` is set and the last operation is Delete; it
    /// disappears with [`Fleet::delete_shoot`].
    pub fn begin_deletion(&self, project: &str, name: &str) -> anyhow::Result<()> {
        let shoot = self.shoot(project, name)?;
        self.inner
            .garden
            .delete(
                &shoot_type(),
                Some(&shoot.namespace),
                name,
                &Preconditions::default(),
                false,
            )
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        self.transition(project, name, |s| s.phase = Phase::Deleting)
    }

    /// Deletes a shoot: its API server stops and the Shoot object disappears from the garden.
    pub fn delete_shoot(&self, project: &str, name: &str) -> anyhow::Result<()> {
        let shoot = self.shoot(project, name)?;
        let g = &self.inner.garden;
        let ty = shoot_type();
        let _ = g.delete(
            &ty,
            Some(&shoot.namespace),
            name,
            &Preconditions::default(),
            false,
        );
        g.update_with(&ty, Some(&shoot.namespace), name, false, false, |cur| {
            let mut o = cur.clone();
            o["metadata"]["finalizers"] = json!([]);
            Ok(o)
        })
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        shoot.update(|s| s.phase = Phase::Deleted);
        self.inner
            .shoots()
            .remove(&(shoot.namespace.clone(), name.to_owned()));
        Ok(())
    }

    /// Issues an admin kubeconfig directly (as the project's owner would), bypassing the garden
    /// API; for tests that need a shoot client without going through discovery.
    pub fn admin_kubeconfig(&self, project: &str, name: &str, seconds: u64) -> anyhow::Result<String> {
        let shoot = self.shoot(project, name)?;
        let not_after = OffsetDateTime::now_utc() + time::Duration::seconds(seconds as i64);
        let (yaml, _) = issue_kubeconfig(&shoot, "system:pxb-sim:operator", Role::Admin, not_after)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
        Ok(yaml)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for shoot in self.inner.shoots().values() {
            shoot.update(|s| s.phase = Phase::Deleted);
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn issue_kubeconfig(
    shoot: &SimShoot,
    user: &str,
    role: Role,
    not_after: OffsetDateTime,
) -> Result<(String, OffsetDateTime), ApiError> {
    let not_after = not_after.replace_nanosecond(0).unwrap_or(not_after);
    let cert = shoot.client_cert(user, role, not_after)?;
    let ca = shoot.ca_pem()?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let tid = &shoot.technical_id;
    let yaml = kubeconfig_yaml(
        &[
            (format!("{tid}-external"), shoot.url()),
            (format!("{tid}-internal"), shoot.url()),
        ],
        &ca,
        tid,
        &[
            ("client-certificate-data", b64(&cert.cert_pem)),
            ("client-key-data", b64(&cert.key_pem)),
        ],
    );
    Ok((yaml, not_after))
}

fn forbidden(subject: &Subject, verb: &str, resource: &str, ns: Option<&str>) -> ApiError {
    let where_ = ns.map_or_else(
        || " at the cluster scope".to_owned(),
        |n| format!(" in the namespace \"{n}\""),
    );
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{resource} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \
             \"core.gardener.cloud\"{where_}",
            subject.user
        ),
    )
}

async fn garden_handle(inner: &FleetInner, req: Request<Incoming>) -> Response<Body> {
    if matches!(req.uri().path(), "/healthz" | "/readyz" | "/livez") {
        return json_response(200, &json!("ok"));
    }
    let subject = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| {
            inner
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(t.trim())
                .cloned()
        });
    let Some(subject) = subject else {
        return error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
    };
    let segs: Vec<String> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if let [a, g, v, n, ns, s, name, sub] = segs.as_slice()
        && a == "apis"
        && g == "core.gardener.cloud"
        && v == "v1beta1"
        && n == "namespaces"
        && s == "shoots"
        && let Some(role) = match sub.as_str() {
            "adminkubeconfig" => Some(Role::Admin),
            "viewerkubeconfig" => Some(Role::Viewer),
            _ => None,
        }
    {
        if req.method() != Method::POST {
            return error_response(&ApiError::new(
                405,
                "MethodNotAllowed",
                "only POST (create) is allowed",
            ));
        }
        return match kubeconfig_request(inner, &subject, ns, name, role, req).await {
            Ok(v) => json_response(201, &v),
            Err(e) => error_response(&e),
        };
    }
    let authorize = |t: &rest::Target| -> Result<(), ApiError> {
        let read = matches!(t.verb, "get" | "list" | "watch");
        let Some(own) = subject.namespace.as_deref() else {
            return if read {
                Ok(())
            } else {
                Err(forbidden(&subject, t.verb, &t.ty.plural, t.namespace.as_deref()))
            };
        };
        let allowed = match t.ty.plural.as_str() {
            // A project member may get its own Project (not list all) and read its namespace's shoots.
            "projects" => {
                t.verb == "get"
                    && t.name
                        .as_deref()
                        .is_some_and(|n| Some(own) == project_namespace_of(inner, n).as_deref())
            }
            "namespaces" => t.verb == "get" && t.name.as_deref() == Some(own),
            "shoots" => read && t.namespace.as_deref() == Some(own),
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(forbidden(&subject, t.verb, &t.ty.plural, t.namespace.as_deref()))
        }
    };
    rest::handle(&inner.garden, &inner.rest, req, &authorize).await
}

fn project_namespace_of(inner: &FleetInner, project: &str) -> Option<String> {
    inner
        .projects
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(project)
        .cloned()
}

async fn kubeconfig_request(
    inner: &FleetInner,
    subject: &Subject,
    ns: &str,
    name: &str,
    role: Role,
    req: Request<Incoming>,
) -> Result<Value, ApiError> {
    let (kind, sub) = match role {
        Role::Admin => ("AdminKubeconfigRequest", "shoots/adminkubeconfig"),
        Role::Viewer => ("ViewerKubeconfigRequest", "shoots/viewerkubeconfig"),
    };
    let permitted = match subject.namespace.as_deref() {
        None => true,
        Some(own) => own == ns && (role == Role::Viewer || subject.role == ProjectRole::Admin),
    };
    if !permitted {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "shoots.core.gardener.cloud \"{name}\" is forbidden: User \"{}\" cannot create resource \"{sub}\" in \
                 API group \"core.gardener.cloud\" in the namespace \"{ns}\"",
                subject.user
            ),
        ));
    }
    let body = rest::read_json(req).await?;
    if let Some(k) = body.get("kind").and_then(Value::as_str)
        && k != kind
    {
        return Err(ApiError::bad_request(format!("expected kind {kind}, got {k}")));
    }
    let requested = match body.pointer("/spec/expirationSeconds") {
        None | Some(Value::Null) => inner.config.kubeconfig_default_seconds as i64,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| ApiError::bad_request("spec.expirationSeconds must be an integer"))?,
    };
    let min = inner.config.kubeconfig_min_seconds as i64;
    if requested < min {
        return Err(ApiError::invalid(format!(
            "{kind}.authentication.gardener.cloud \"{name}\" is invalid: spec.expirationSeconds: Invalid value: \
             {requested}: may not specify a duration less than {} minutes",
            min / 60
        )));
    }
    let seconds = requested.min(inner.config.kubeconfig_max_seconds as i64);
    let shoot = inner
        .shoots()
        .get(&(ns.to_owned(), name.to_owned()))
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("shoots.core.gardener.cloud \"{name}\" not found"),
            )
        })?;
    let (phase, advertised) = {
        let st = shoot.lock();
        (st.phase, st.advertised)
    };
    match phase {
        Phase::Creating => {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!(
                    "Internal error occurred: could not get cluster CA for shoot {ns}/{name}: secret \"ca\" not found"
                ),
            ));
        }
        Phase::Deleted => {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("shoots.core.gardener.cloud \"{name}\" not found"),
            ));
        }
        _ => {}
    }
    if !advertised {
        return Err(ApiError::invalid(
            "no suitable advertised address for kube-apiserver found in .status.advertisedAddresses",
        ));
    }
    let not_after = OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    let (yaml, not_after) = issue_kubeconfig(&shoot, &subject.user, role, not_after)?;
    Ok(json!({
        "apiVersion": "authentication.gardener.cloud/v1alpha1", "kind": kind, "metadata": {},
        "spec": {"expirationSeconds": seconds},
        "status": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(yaml),
                   "expirationTimestamp": rfc3339(not_after)}
    }))
}
