//! One simulated shoot: its state in the garden, its own Kubernetes API server (a loopback port, a
//! per-shoot CA, client-certificate authentication) and the faults injected into that API.
//!
//! A shoot may instead stand for a real API server ([`ExternalApiServer`]): the garden then
//! advertises that server's URL and CA, and its kubeconfig requests mint client certificates
//! with that server's client CA, so everything past the garden is the real thing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::pki::{self, Ca, Issued};
use super::rest::{self, Body, RestOptions};
use super::store::{ApiError, ApiStore, ResourceType, shoot_types};

/// A fault injected into a shoot's API server; changeable at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Healthy.
    #[default]
    None,
    /// Connections are accepted and never answered (a blackhole).
    Offline,
    /// Connections are refused (nothing listens on the port).
    Refused,
    /// Every response is delayed by this much.
    Latency(Duration),
    /// Alternates between healthy and refused, each phase this long.
    Flapping(Duration),
    /// Every request is answered with this HTTP status (e.g. 503).
    HttpError(u16),
}

/// Lifecycle of a simulated shoot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being created: no CA yet (kubeconfig requests get 500), API down.
    Creating,
    /// Reconciled and running.
    Ready,
    /// Hibernated: API down, `status.hibernated` true.
    Hibernated,
    /// Being deleted: `deletionTimestamp` set, API still up.
    Deleting,
    /// Gone.
    Deleted,
}

/// Who a client certificate was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Full access (adminkubeconfig).
    Admin,
    /// Read-only, no secrets (viewerkubeconfig).
    Viewer,
}

/// A client certificate and its private key (PKCS#8), both PEM.
#[derive(Clone)]
pub struct MintedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for MintedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedCert").finish_non_exhaustive()
    }
}

/// Signs a client certificate for a user (the CN) in groups (one O each), valid from now for the
/// given duration, with the client CA of an [`ExternalApiServer`].
pub type Mint = Arc<dyn Fn(&str, &[&str], Duration) -> anyhow::Result<MintedCert> + Send + Sync>;

/// A real Kubernetes API server standing in for a shoot's (see [`crate::Fleet::add_external_shoot`]).
///
/// The garden advertises `url` and `ca_pem` for the shoot, and its `adminkubeconfig` and
/// `viewerkubeconfig` subresources call `mint` as Gardener's do: CN is the requesting user, the
/// group is `system:masters` for an admin and [`VIEWER_GROUP`] for a viewer, the lifetime is the
/// request's `expirationSeconds` (after the garden's floor and cap). The real server then decides
/// everything else: which certificates it accepts (its client CA, their validity), authorization,
/// the API's semantics.
#[derive(Clone)]
pub struct ExternalApiServer {
    /// The server's URL (`https://host:port`).
    pub url: String,
    /// The CA certificate that signed the server's serving certificate, PEM.
    pub ca_pem: String,
    /// Signs client certificates the server accepts.
    pub mint: Mint,
}

impl std::fmt::Debug for ExternalApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalApiServer")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The group of a viewer kubeconfig's certificate on an external shoot (Gardener's
/// `gardener.cloud:system:viewers`; the shoot grants it read access with its own bindings).
pub const VIEWER_GROUP: &str = "gardener.cloud:system:viewers";

/// The group of an admin kubeconfig's certificate on an external shoot, as Gardener issues it.
pub const ADMIN_GROUP: &str = "system:masters";

#[derive(Debug, Clone, Copy)]
struct IssuedCert {
    role: Role,
    not_before: i64,
    not_after: i64,
}

#[derive(Debug)]
pub(crate) struct ShootState {
    pub(crate) phase: Phase,
    pub(crate) fault: Fault,
    pub(crate) kubernetes_version: String,
    pub(crate) advertised: bool,
    pub(crate) managed_issuer: bool,
}

pub(crate) struct ShootPki {
    pub(crate) ca: Ca,
    tls: Arc<rustls::ServerConfig>,
}

/// A simulated shoot (see the module docs).
pub struct SimShoot {
    /// Project namespace in the garden.
    pub namespace: String,
    /// Shoot name.
    pub name: String,
    /// `shoot--<project>--<name>`.
    pub technical_id: String,
    /// Port of its API server (on 127.0.0.1; an external shoot's is its server's port).
    pub port: u16,
    pub(crate) state: Mutex<ShootState>,
    changed: watch::Sender<u64>,
    pki: OnceLock<ShootPki>,
    api: OnceLock<Arc<ApiStore>>,
    issued: Mutex<HashMap<[u8; 32], IssuedCert>>,
    backends: Mutex<HashMap<(String, String, String), std::net::SocketAddr>>,
    rest: RestOptions,
    external: Option<ExternalApiServer>,
}

impl std::fmt::Debug for SimShoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimShoot")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("port", &self.port)
            .field("external", &self.external)
            .finish_non_exhaustive()
    }
}

enum Mode {
    Serve { latency: Duration, error: Option<u16> },
    Blackhole,
    Refuse,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl SimShoot {
    pub(crate) fn new(
        namespace: &str,
        name: &str,
        project: &str,
        port: u16,
        state: ShootState,
        rest: RestOptions,
        external: Option<ExternalApiServer>,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            technical_id: format!("shoot--{project}--{name}"),
            port,
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            pki: OnceLock::new(),
            api: OnceLock::new(),
            issued: Mutex::new(HashMap::new()),
            backends: Mutex::new(HashMap::new()),
            rest,
            external,
        }
    }

    /// The real API server this shoot stands for, if it is an external one.
    pub fn external(&self) -> Option<&ExternalApiServer> {
        self.external.as_ref()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ShootState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state and wakes the listener and open connections.
    pub(crate) fn update(&self, f: impl FnOnce(&mut ShootState)) {
        f(&mut self.lock());
        self.changed.send_modify(|g| *g += 1);
    }

    /// Waits (up to 5 s) until the port is open or closed as the current phase and fault say, so
    /// a control call has taken effect when it returns. Flapping shoots are not waited for.
    pub(crate) fn settle(&self) {
        if self.external.is_some() {
            return;
        }
        let want_open = match self.mode() {
            (_, Some(_)) => return,
            (Mode::Refuse, None) => false,
            (_, None) => true,
        };
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let open = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
            if open == want_open {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// The API server's URL (an external shoot's is its real server's).
    pub fn url(&self) -> String {
        match &self.external {
            Some(e) => e.url.clone(),
            None => format!("https://127.0.0.1:{}", self.port),
        }
    }

    /// The shoot's Kubernetes objects (created on first use, with the default namespaces). An
    /// external shoot's objects are on its real server; this store is not served for it.
    pub fn api(&self) -> &Arc<ApiStore> {
        self.api.get_or_init(|| {
            let store = Arc::new(ApiStore::new(shoot_types()));
            let ns = ResourceType::new("", "v1", "Namespace", "namespaces", false);
            for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let _ = store.create(&ns, None, json!({"metadata": {"name": name}}), false);
            }
            store
        })
    }

    /// Makes the shoot look as if pxb's agent were installed and every location it is given were
    /// valid: `pxb-system`, pxb's CRDs (without their schemas, to stay small), the agent Deployment
    /// with its version label, and a write hook that acknowledges each `BackupLocation` request at
    /// once (validation `Valid`, sync `Completed` with nothing found). For fleet benchmarks, where
    /// thousands of real agents cannot run; scenario tests run real agents.
    pub fn simulate_agent(&self) -> anyhow::Result<()> {
        let store = self.api();
        let ns = ResourceType::new("", "v1", "Namespace", "namespaces", false);
        let _ = store.create(&ns, None, json!({"metadata": {"name": "pxb-system"}}), false);
        let crd_type = ResourceType::new(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        );
        for (_, yaml) in pxb_core::api::crd::crds_yaml()? {
            let mut crd: serde_json::Value = serde_saphyr::from_str(&yaml)?;
            if let Some(versions) = crd.pointer_mut("/spec/versions").and_then(|v| v.as_array_mut()) {
                for v in versions {
                    if let Some(m) = v.as_object_mut() {
                        m.remove("schema");
                        m.remove("additionalPrinterColumns");
                    }
                }
            }
            let _ = store.create(&crd_type, None, crd, false);
        }
        let deploy = ResourceType::new("apps", "v1", "Deployment", "deployments", true);
        let _ = store.create(
            &deploy,
            Some("pxb-system"),
            json!({"metadata": {"name": "pxb-agent", "namespace": "pxb-system",
                                "labels": {"app.kubernetes.io/name": "pxb-agent",
                                           "pxb.io/version": env!("CARGO_PKG_VERSION")}},
                   "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "pxb-agent"}}}}),
            false,
        );
        store.set_write_hook(super::store::WriteHook(Arc::new(acknowledge_as_agent)));
        Ok(())
    }

    /// The `ApplicationBackup`s in `pxb-system`: (name, the phase of their status, if any).
    pub fn backups(&self) -> anyhow::Result<Vec<(String, Option<String>)>> {
        let store = self.api();
        let Some(ty) = store.resolve("pxb.io", "v1alpha1", "applicationbackups") else {
            return Ok(Vec::new());
        };
        let page = store
            .list(&ty, Some("pxb-system"), &Default::default(), usize::MAX, None)
            .map_err(|e| anyhow::anyhow!("listing ApplicationBackups: {}", e.message))?;
        let text = |obj: &serde_json::Value, p: &str| {
            obj.pointer(p)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        Ok(page
            .items
            .iter()
            .map(|o| {
                (
                    text(o, "/metadata/name").unwrap_or_default(),
                    text(o, "/status/phase"),
                )
            })
            .collect())
    }

    /// Reports `phase` (`InProgress`, `Success`, `Failed`, …) as the status of every
    /// `ApplicationBackup` in `pxb-system` whose status says otherwise, as an agent running them
    /// would (with a heartbeat, and a completion time for an ended phase). For scenario tests
    /// whose shoots run [`simulate_agent`](Self::simulate_agent): the test decides when backups
    /// end. Returns the names of the backups it reported on.
    pub fn report_backups(&self, phase: &str) -> anyhow::Result<Vec<String>> {
        let store = self.api();
        let Some(ty) = store.resolve("pxb.io", "v1alpha1", "applicationbackups") else {
            return Ok(Vec::new());
        };
        let ended = !matches!(phase, "Pending" | "InProgress");
        let mut reported = Vec::new();
        for (name, now_phase) in self.backups()? {
            if now_phase.as_deref() == Some(phase) {
                continue;
            }
            let now = super::store::now_rfc3339();
            store
                .update_with(&ty, Some("pxb-system"), &name, true, false, |current| {
                    let mut next = current.clone();
                    let generation = next.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
                    let mut status = json!({"phase": phase, "heartbeat": now, "startTimestamp": now,
                                            "observedGeneration": generation});
                    if ended {
                        status["completionTimestamp"] = json!(now);
                    }
                    next["status"] = status;
                    Ok(next)
                })
                .map_err(|e| anyhow::anyhow!("reporting on ApplicationBackup {name}: {}", e.message))?;
            reported.push(name);
        }
        Ok(reported)
    }

    pub(crate) fn pki(&self) -> Result<&ShootPki, ApiError> {
        if let Some(p) = self.pki.get() {
            return Ok(p);
        }
        let make = || -> anyhow::Result<ShootPki> {
            let ca = Ca::new(&format!("{} CA", self.technical_id))?;
            let server = ca.server_cert(&[])?;
            let tls = pki::server_config(&server)?;
            Ok(ShootPki { ca, tls })
        };
        let pki =
            make().map_err(|e| ApiError::new(500, "InternalError", format!("creating the shoot CA: {e}")))?;
        Ok(self.pki.get_or_init(|| pki))
    }

    /// The shoot's CA certificate (PEM), created on first use; an external shoot's is its real
    /// server's.
    pub fn ca_pem(&self) -> Result<String, ApiError> {
        if let Some(e) = &self.external {
            return Ok(e.ca_pem.clone());
        }
        Ok(self.pki()?.ca.cert_pem.clone())
    }

    /// A client certificate for `user` in `role`, valid until `not_after`: minted by the real
    /// server's client CA for an external shoot, else issued by the shoot's CA and recorded.
    pub(crate) fn client_cert(
        &self,
        user: &str,
        role: Role,
        not_after: OffsetDateTime,
    ) -> Result<MintedCert, ApiError> {
        let Some(external) = &self.external else {
            let cert = self.issue_cert(user, role, not_after)?;
            return Ok(MintedCert {
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            });
        };
        let group = match role {
            Role::Admin => ADMIN_GROUP,
            Role::Viewer => VIEWER_GROUP,
        };
        // The minter starts its validity a moment later than `now` here, so the certificate's
        // NotAfter is never before the expirationTimestamp the garden reports.
        let seconds = (not_after - OffsetDateTime::now_utc())
            .as_seconds_f64()
            .ceil()
            .max(1.0);
        (external.mint)(user, &[group], Duration::from_secs(seconds as u64)).map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("signing the client certificate with the shoot's client CA: {e:#}"),
            )
        })
    }

    /// Routes the service proxy for `namespace/service:port` to `addr` (plain HTTP): what the
    /// shoot's endpoints and kube-proxy do for a pod behind a Service.
    pub fn register_service_backend(
        &self,
        namespace: &str,
        service: &str,
        port: &str,
        addr: std::net::SocketAddr,
    ) {
        self.backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.into(), service.into(), port.into()), addr);
    }

    /// Issues a client certificate for `user` valid until `not_after` and records it.
    fn issue_cert(&self, user: &str, role: Role, not_after: OffsetDateTime) -> Result<Issued, ApiError> {
        let pki = self.pki()?;
        let now = OffsetDateTime::now_utc();
        let not_before = now - time::Duration::minutes(1);
        let (cn, org) = match role {
            Role::Admin => (
                format!("gardener.cloud:admin:{user}"),
                "gardener.cloud:project:admins",
            ),
            Role::Viewer => (
                format!("gardener.cloud:viewer:{user}"),
                "gardener.cloud:project:viewers",
            ),
        };
        let cert = pki.ca.client_cert(&cn, org, not_before, not_after).map_err(|e| {
            ApiError::new(
                500,
                "InternalError",
                format!("signing the client certificate: {e}"),
            )
        })?;
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let t = unix_now();
        issued.retain(|_, c| c.not_after > t);
        issued.insert(
            pki::fingerprint(&cert.cert_der),
            IssuedCert {
                role,
                not_before: not_before.unix_timestamp(),
                not_after: not_after.unix_timestamp(),
            },
        );
        Ok(cert)
    }

    fn authenticate(&self, peer: Option<&[u8; 32]>) -> Option<Role> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let cert = issued.get(peer?)?;
        let now = unix_now();
        (cert.not_before <= now && now < cert.not_after).then_some(cert.role)
    }

    fn mode(&self) -> (Mode, Option<Duration>) {
        let st = self.lock();
        match st.phase {
            Phase::Creating | Phase::Hibernated | Phase::Deleted => return (Mode::Refuse, None),
            Phase::Ready | Phase::Deleting => {}
        }
        let serve = |latency| Mode::Serve { latency, error: None };
        match st.fault {
            Fault::None => (serve(Duration::ZERO), None),
            Fault::Offline => (Mode::Blackhole, None),
            Fault::Refused => (Mode::Refuse, None),
            Fault::Latency(d) => (serve(d), None),
            Fault::HttpError(code) => (
                Mode::Serve {
                    latency: Duration::ZERO,
                    error: Some(code),
                },
                None,
            ),
            Fault::Flapping(period) => {
                let p = period.as_millis().max(1);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let left = Duration::from_millis((p - now % p) as u64);
                if (now / p).is_multiple_of(2) {
                    (serve(Duration::ZERO), Some(left))
                } else {
                    (Mode::Refuse, Some(left))
                }
            }
        }
    }

    async fn handle(&self, peer: Option<[u8; 32]>, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if matches!(path, "/healthz" | "/readyz" | "/livez") {
            let mut r = Response::new(http_body_util::BodyExt::boxed_unsync(http_body_util::Full::new(
                bytes::Bytes::from_static(b"ok"),
            )));
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("text/plain"),
            );
            return r;
        }
        let Some(role) = self.authenticate(peer.as_ref()) else {
            return rest::error_response(&ApiError::new(401, "Unauthorized", "Unauthorized"));
        };
        let user = match role {
            Role::Admin => "gardener.cloud:admin",
            Role::Viewer => "gardener.cloud:viewer",
        };
        let authorize = move |t: &rest::Target| -> Result<(), ApiError> {
            let read = matches!(t.verb, "get" | "list" | "watch");
            if role == Role::Admin || (read && !(t.ty.group.is_empty() && t.ty.plural == "secrets")) {
                return Ok(());
            }
            Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} is forbidden: User \"{user}\" cannot {} resource \"{}\" in API group \"{}\"",
                    t.ty.qualified(),
                    t.verb,
                    t.ty.plural,
                    t.ty.group
                ),
            ))
        };
        let segs: Vec<String> = req.uri().path().split('/').map(str::to_owned).collect();
        // "" api v1 namespaces {ns} services {svc[:port]} proxy ...
        if segs.len() >= 8
            && segs[1] == "api"
            && segs[2] == "v1"
            && segs[3] == "namespaces"
            && segs[5] == "services"
            && segs[7] == "proxy"
        {
            if role != Role::Admin {
                return rest::error_response(&ApiError::new(
                    403,
                    "Forbidden",
                    format!(
                        "services \"{}\" is forbidden: User \"{user}\" cannot get resource \"services/proxy\"",
                        segs[6]
                    ),
                ));
            }
            let rest_path = format!("/{}", segs[8..].join("/"));
            return self.proxy(&segs[4], &segs[6], rest_path, req).await;
        }
        rest::handle(self.api(), &self.rest, req, &authorize).await
    }

    async fn proxy(&self, ns: &str, svc: &str, path: String, req: Request<Incoming>) -> Response<Body> {
        let (name, port) = svc.split_once(':').unwrap_or((svc, ""));
        let services = ResourceType::new("", "v1", "Service", "services", true);
        if let Err(e) = self.api().get(&services, Some(ns), name) {
            return rest::error_response(&e);
        }
        let addr = self
            .backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_owned(), name.to_owned(), port.to_owned()))
            .copied();
        let Some(addr) = addr else {
            return rest::error_response(&ApiError::new(
                503,
                "ServiceUnavailable",
                format!("no endpoints available for service \"{name}\""),
            ));
        };
        let unavailable = |e: String| {
            rest::error_response(&ApiError::new(
                503,
                "ServiceUnavailable",
                format!("error trying to reach service: {e}"),
            ))
        };
        let uri = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let method = req.method().clone();
        // As kube-apiserver's proxy: the caller's headers go on, but not its credentials (the
        // authentication filter removes `Authorization`) nor hop-by-hop headers.
        let forwarded: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)> = req
            .headers()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "authorization"
                        | "host"
                        | "connection"
                        | "keep-alive"
                        | "proxy-connection"
                        | "transfer-encoding"
                        | "upgrade"
                        | "te"
                        | "trailer"
                        | "content-length"
                )
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let body = match http_body_util::BodyExt::collect(req.into_body()).await {
            Ok(b) => b.to_bytes(),
            Err(e) => return unavailable(e.to_string()),
        };
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => return unavailable(format!("dial tcp {addr}: {e}")),
        };
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(x) => x,
            Err(e) => return unavailable(e.to_string()),
        };
        tokio::spawn(conn);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", addr.to_string());
        for (k, v) in forwarded {
            builder = builder.header(k, v);
        }
        let out = match builder.body(http_body_util::Full::new(body)) {
            Ok(r) => r,
            Err(e) => return unavailable(e.to_string()),
        };
        let resp = match sender.send_request(out).await {
            Ok(r) => r,
            Err(e) => return unavailable(e.to_string()),
        };
        let (parts, body) = resp.into_parts();
        // Streamed through, as kube-apiserver's proxy does: a client that stops reading stops
        // the backend (a broken backend body just ends the response).
        let frames = futures::stream::unfold(body, |mut body| async move {
            match http_body_util::BodyExt::frame(&mut body).await {
                Some(Ok(frame)) => Some((Ok::<_, std::convert::Infallible>(frame), body)),
                _ => None,
            }
        });
        let mut r = Response::new(http_body_util::BodyExt::boxed_unsync(
            http_body_util::StreamBody::new(frames),
        ));
        *r.status_mut() = parts.status;
        if let Some(ct) = parts.headers.get("content-type") {
            r.headers_mut().insert("content-type", ct.clone());
        }
        r
    }
}

async fn bind(port: u16) -> Option<TcpListener> {
    for _ in 0..200 {
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return Some(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    None
}

/// Runs a shoot's listener until the shoot is deleted: binds and unbinds the port as faults and
/// phases require, and serves each connection.
pub(crate) async fn run_listener(shoot: Arc<SimShoot>, first: TcpListener) {
    let mut listener = Some(first);
    let mut changed = shoot.changed.subscribe();
    loop {
        if shoot.phase() == Phase::Deleted {
            return;
        }
        let (mode, flip) = shoot.mode();
        let flip = async move {
            match flip {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        if matches!(mode, Mode::Refuse) {
            listener = None;
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                _ = flip => {}
            }
            continue;
        }
        if listener.is_none() {
            listener = bind(shoot.port).await;
            if listener.is_none() {
                tracing::warn!(port = shoot.port, shoot = %shoot.name, "simulator could not re-bind the shoot's port");
                return;
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        tokio::select! {
            r = l.accept() => if let Ok((tcp, _)) = r {
                tokio::spawn(serve_connection(shoot.clone(), tcp));
            },
            r = changed.changed() => if r.is_err() { return },
            _ = flip => {}
        }
    }
}

async fn until_not_blackhole(shoot: &SimShoot) {
    let mut changed = shoot.changed.subscribe();
    loop {
        if !matches!(shoot.mode().0, Mode::Blackhole) {
            return;
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

async fn serve_connection(shoot: Arc<SimShoot>, tcp: TcpStream) {
    match shoot.mode().0 {
        Mode::Blackhole => {
            until_not_blackhole(&shoot).await;
            drop(tcp);
            return;
        }
        Mode::Refuse => return,
        Mode::Serve { .. } => {}
    }
    let Ok(pki) = shoot.pki() else { return };
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.tls.clone());
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await else {
        return;
    };
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| pki::fingerprint(c));
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shoot = shoot.clone();
        async move {
            match shoot.mode().0 {
                Mode::Blackhole => {
                    until_not_blackhole(&shoot).await;
                    Err(std::io::Error::other("connection dropped by fault injection"))
                }
                Mode::Refuse => Err(std::io::Error::other("connection dropped by fault injection")),
                Mode::Serve { latency, error } => {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    if let Some(code) = error {
                        let reason = if code == 503 {
                            "ServiceUnavailable"
                        } else {
                            "InternalError"
                        };
                        return Ok(rest::error_response(&ApiError::new(
                            code,
                            reason,
                            "injected fault: the API server is failing",
                        )));
                    }
                    Ok(shoot.handle(peer, req).await)
                }
            }
        }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
        .await;
}

/// What a simulated agent writes when a `BackupLocation` asks for something.
fn acknowledge_as_agent(ty: &ResourceType, obj: &mut serde_json::Value) {
    if ty.kind != "BackupLocation" || ty.group != "pxb.io" {
        return;
    }
    let num = |p: &str| obj.pointer(p).and_then(serde_json::Value::as_i64).unwrap_or(0);
    let (validate, sync) = (num("/spec/validateRequest"), num("/spec/syncRequest"));
    let generation = num("/metadata/generation");
    let wants_sync = obj.pointer("/spec/sync").and_then(serde_json::Value::as_bool) == Some(true);
    if !obj.get("status").is_some_and(serde_json::Value::is_object) {
        obj["status"] = json!({});
    }
    let now = super::store::now_rfc3339();
    let status = &mut obj["status"];
    let observed = |s: &serde_json::Value, k: &str| s.get(k).and_then(serde_json::Value::as_i64);
    if observed(status, "observedValidateRequest") != Some(validate) || status.get("validation").is_none() {
        status["validation"] = json!({"phase": "Valid", "lastChecked": now});
        status["observedValidateRequest"] = validate.into();
    }
    if observed(status, "observedSyncRequest") != Some(sync) || (wants_sync && status.get("sync").is_none()) {
        status["sync"] = json!({"phase": "Completed", "request": sync, "started": now, "heartbeat": now,
                                "backupsFound": 0, "backupsImported": 0});
        status["observedSyncRequest"] = sync.into();
    }
    status["observedGeneration"] = generation.into();
}
