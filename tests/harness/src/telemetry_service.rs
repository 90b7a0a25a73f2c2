//! A stand-in for the telemetry service of the opt-in support channel (issue 17), over HTTPS on
//! loopback, speaking its protocol (registration with a CSR, then OTLP/HTTP uploads over mutual
//! TLS):
//!
//! - `POST /v1/registrations` (JSON): checks the registration token when one is configured
//!   (401), the JSON, that `installationId` is a UUID (canonical hyphenated form), that the CSR
//!   parses, is signed by its key, has an ECDSA P-256 key and the subject CN `installationId`
//!   (400 with the reason otherwise), then signs a client certificate (CN = installation id,
//!   extended key usage `clientAuth`, a random 128-bit serial) with its CA for
//!   [`TelemetryServiceOptions::cert_lifetime`] and answers 201
//!   `{"certificate": "<leaf PEM then CA PEM>", "notAfter": "<RFC 3339>"}`.
//! - `POST /v1/metrics` and `POST /v1/logs` (OTLP/HTTP binary protobuf): need a client
//!   certificate it issued, `Content-Type: application/x-protobuf` (415 otherwise) and a body that
//!   decodes as `ExportMetricsServiceRequest` / `ExportLogsServiceRequest` (400 otherwise), at
//!   most 8 MiB (413 beyond). It answers 200 with an empty `Export…ServiceResponse` and keeps the
//!   decoded request with the client certificate's CN and serial.
//! - While [`TelemetryService::set_down`] is on, every request is answered 503.
//! - While [`TelemetryService::set_hang`] is on, the service accepts connections, completes the
//!   TLS handshake and reads each request (its bytes are counted), but never answers: the request
//!   is held ([`TelemetryService::held`]) until the client gives up (its connection closes) or
//!   hanging is switched off (then it gets 503). A hung service, as opposed to one that is down.
//!
//! **How client certificates are required.** One listener serves both registration (which has no
//! client certificate yet) and uploads. TLS asks every client for a certificate but lets a client
//! without one finish the handshake; a certificate that is presented must chain to the service's
//! CA (the handshake fails otherwise). Uploads without a certificate are then refused with 401
//! `a client certificate is required for uploads` (the protocol allows this instead of a failed
//! handshake). A certificate the service issued whose serial was revoked
//! ([`TelemetryService::revoke`]) or whose `notAfter` has passed gets 401 `revoked`: an expired
//! certificate is deliberately let through the handshake (its chain and signatures are still
//! verified, at a moment within its validity) so the client learns, as the protocol says, to
//! register again.
//!
//! The service runs on its own thread and Tokio runtime, so it works under any test runtime;
//! dropping the handle stops the accept loop and every connection task.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Exemplar, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The metric whose data points are the onboarded clusters (`pxb.cluster.uuid`, `pxb.org`).
pub const SUPPORT_CLUSTER_METRIC: &str = "pxb.support.cluster";

/// The body of a 401 answer for a revoked or expired client certificate.
pub const REVOKED: &str = "revoked";

/// Settings of a [`TelemetryService`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryServiceOptions {
    /// Lifetime of the client certificates it issues (whole seconds count; default one hour).
    pub cert_lifetime: Duration,
    /// When set, registrations need `Authorization: Bearer <token>` (401 otherwise).
    pub registration_token: Option<String>,
}

impl Default for TelemetryServiceOptions {
    fn default() -> Self {
        Self {
            cert_lifetime: Duration::from_secs(3600),
            registration_token: None,
        }
    }
}

/// An organisation named in a registration, with the provider's customer id for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RegisteredOrg {
    /// The org id.
    pub org: String,
    /// The provider's customer id.
    pub customer: String,
}

/// One successful registration (a first one or a renewal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The installation id (also the certificate's CN).
    pub installation_id: String,
    /// The orgs the registration named.
    pub orgs: Vec<RegisteredOrg>,
    /// The issued certificate's serial, lowercase hex without separators.
    pub serial: String,
    /// The issued certificate's `notAfter`.
    pub not_after: OffsetDateTime,
    /// The pxb version the registration named.
    pub version: String,
}

/// An accepted upload, decoded, with the identity that sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received<T> {
    /// The decoded request.
    pub request: T,
    /// The client certificate's subject CN (the installation id).
    pub client_cn: String,
    /// The client certificate's serial, lowercase hex.
    pub client_serial: String,
}

/// A running stand-in telemetry service on `127.0.0.1`; stopped (accept loop and every
/// connection) when dropped.
pub struct TelemetryService {
    state: Arc<State>,
    port: u16,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl fmt::Debug for TelemetryService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryService")
            .field("endpoint", &self.endpoint())
            .field("options", &self.state.options)
            .finish_non_exhaustive()
    }
}

/// A certificate the service issued, found by its DER.
#[derive(Debug, Clone)]
struct Issued {
    installation_id: String,
    serial: String,
    not_after: OffsetDateTime,
}

#[derive(Default)]
struct Records {
    registrations: Vec<Registration>,
    issued: HashMap<Vec<u8>, Issued>,
    revoked: HashSet<String>,
    metrics: Vec<Received<ExportMetricsServiceRequest>>,
    logs: Vec<Received<ExportLogsServiceRequest>>,
}

/// A request the service held without answering while it hung ([`TelemetryService::set_hang`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The request's path (`/v1/metrics`, `/v1/registrations`, …).
    pub path: String,
    /// When its headers and body had arrived and the service started holding it.
    pub arrived: Instant,
    /// When it stopped being held: the client closed the connection (gave up), or hanging was
    /// switched off (it was answered 503). `None` while it is still held.
    pub ended: Option<Instant>,
}

struct State {
    options: TelemetryServiceOptions,
    ca: CertifiedIssuer<'static, KeyPair>,
    down: AtomicBool,
    hang: tokio::sync::watch::Sender<bool>,
    held: Mutex<Vec<Held>>,
    bytes: AtomicU64,
    connections: AtomicU64,
    records: Mutex<Records>,
    uploads: tokio::sync::watch::Sender<usize>,
}

impl State {
    fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held(&self) -> MutexGuard<'_, Vec<Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks a held request ended when dropped: when hyper drops the request's future because the
/// client closed the connection, or when the request is answered after hanging was switched off.
struct HeldGuard {
    state: Arc<State>,
    index: usize,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        if let Some(h) = self.state.held().get_mut(self.index) {
            h.ended.get_or_insert_with(Instant::now);
        }
    }
}

impl TelemetryService {
    /// Starts the service with default options (certificates for one hour, no registration
    /// token) on a port the kernel picks.
    ///
    /// # Panics
    ///
    /// When it cannot start (no loopback port, certificate generation failed): a fixture that
    /// cannot start is an error, never a skip.
    pub async fn start() -> Self {
        Self::start_with(TelemetryServiceOptions::default()).await
    }

    /// Starts the service with `options` on `127.0.0.1`, on a port the kernel picks, on its own
    /// thread and runtime.
    ///
    /// # Panics
    ///
    /// When it cannot start (see [`TelemetryService::start`]).
    pub async fn start_with(options: TelemetryServiceOptions) -> Self {
        Self::try_start(options).unwrap_or_else(|e| panic!("starting the telemetry stand-in: {e:#}"))
    }

    fn try_start(options: TelemetryServiceOptions) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pxb telemetry stand-in CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca)?;

        let (uploads, _) = tokio::sync::watch::channel(0usize);
        let ca_der = ca.der().clone();
        let state = Arc::new(State {
            options,
            ca,
            down: AtomicBool::new(false),
            hang: tokio::sync::watch::channel(false).0,
            held: Mutex::new(Vec::new()),
            bytes: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            records: Mutex::new(Records::default()),
            uploads,
        });

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der.clone())?;
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()?;
        let verifier = Arc::new(IssuedCertVerifier {
            inner,
            state: state.clone(),
        });
        let key = PrivateKeyDer::try_from(server_key.serialize_der()).map_err(|e| anyhow::anyhow!(e))?;
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![server_cert.der().clone(), ca_der], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("pxb-telemetry-stand-in")
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let loop_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("pxb-telemetry-stand-in".into())
            .spawn(move || {
                rt.block_on(accept_loop(std_listener, acceptor, loop_state, rx));
                // Dropping `rt` here cancels every connection task.
            })?;
        Ok(Self {
            state,
            port,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The endpoint to configure clients with: `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA (PEM) that signs the service's server certificate and the client certificates it
    /// issues; clients trust it (`caFile`).
    pub fn ca_pem(&self) -> String {
        self.state.ca.pem()
    }

    /// Every byte read from every accepted TCP connection so far, TLS handshakes included.
    pub fn bytes_received(&self) -> u64 {
        self.state.bytes.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Every successful registration so far, in order (renewals included).
    pub fn registrations(&self) -> Vec<Registration> {
        self.state.records().registrations.clone()
    }

    /// Revokes every certificate issued to `installation_id` so far: uploads with them get 401
    /// `revoked`. Certificates issued later (a new registration) are not affected.
    pub fn revoke(&self, installation_id: &str) {
        let mut records = self.state.records();
        let serials: Vec<String> = records
            .issued
            .values()
            .filter(|i| i.installation_id == installation_id)
            .map(|i| i.serial.clone())
            .collect();
        records.revoked.extend(serials);
    }

    /// While `down` is true, every request (registrations included) is answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// While `hang` is true, every request (registrations included) is read and then held
    /// without an answer ([`TelemetryService::held`]); TCP connections and TLS handshakes still
    /// succeed. Switching it off answers the requests still held with 503.
    pub fn set_hang(&self, hang: bool) {
        self.state.hang.send_replace(hang);
    }

    /// Every request held without an answer since the service started, in the order they
    /// arrived ([`TelemetryService::set_hang`]).
    pub fn held(&self) -> Vec<Held> {
        self.state.held().clone()
    }

    /// Every accepted metrics upload so far, decoded, in order.
    pub fn metrics(&self) -> Vec<Received<ExportMetricsServiceRequest>> {
        self.state.records().metrics.clone()
    }

    /// Every accepted logs upload so far, decoded, in order.
    pub fn logs(&self) -> Vec<Received<ExportLogsServiceRequest>> {
        self.state.records().logs.clone()
    }

    /// The onboarded clusters as `(pxb.cluster.uuid, pxb.org)`: the data points of the
    /// [`SUPPORT_CLUSTER_METRIC`] gauge in the latest metrics upload that carries that metric,
    /// per installation (client CN), installations in the order they first sent it. An upload
    /// with the metric but no points means no clusters. A point without one of the attributes
    /// gives an empty string for it.
    pub fn cluster_uuids(&self) -> Vec<(String, String)> {
        let records = self.state.records();
        let mut latest: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for upload in &records.metrics {
            let Some(points) = support_clusters(&upload.request) else {
                continue;
            };
            match latest.iter_mut().find(|(cn, _)| *cn == upload.client_cn) {
                Some(entry) => entry.1 = points,
                None => latest.push((upload.client_cn.clone(), points)),
            }
        }
        latest.into_iter().flat_map(|(_, points)| points).collect()
    }

    /// Every string found in the accepted uploads: attribute keys and string values (nested
    /// arrays and key-value lists included) of resources, scopes, data points, exemplars and log
    /// records; scope names and versions; metric names, descriptions and units; log bodies,
    /// severity texts and event names; schema URLs. For "no secrets, no tenant data" scans.
    pub fn all_strings(&self) -> Vec<String> {
        let records = self.state.records();
        let mut out = Vec::new();
        for m in &records.metrics {
            metrics_strings(&m.request, &mut out);
        }
        for l in &records.logs {
            logs_strings(&l.request, &mut out);
        }
        out
    }

    /// Waits until at least `n` uploads (metrics and logs together) have been accepted; false
    /// when `timeout` passes first.
    pub async fn wait_for_uploads(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.state.uploads.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n)).await,
            Ok(Ok(_))
        )
    }
}

impl Drop for TelemetryService {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    std_listener: std::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
        return;
    };
    loop {
        let tcp = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let counted = CountingStream {
                inner: tcp,
                state: state.clone(),
            };
            let Ok(tls) = acceptor.accept(counted).await else {
                return;
            };
            let peer: Arc<Option<Vec<u8>>> = Arc::new(
                tls.get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.as_ref().to_vec()),
            );
            let svc = hyper::service::service_fn(move |req| {
                let (state, peer) = (state.clone(), peer.clone());
                async move { Ok::<_, Infallible>(handle(&state, req, peer.as_deref()).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// A TCP stream that adds every byte read to the service's count.
struct CountingStream {
    inner: tokio::net::TcpStream,
    state: Arc<State>,
}

impl AsyncRead for CountingStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        this.state.bytes.fetch_add(read as u64, Ordering::SeqCst);
        r
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// WebPKI client-certificate verification against the service's CA, with unauthenticated
/// clients allowed, except that a certificate this service issued is verified at a moment
/// within its validity, so an expired one reaches the application and gets 401 `revoked`.
struct IssuedCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    state: Arc<State>,
}

impl fmt::Debug for IssuedCertVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertVerifier").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for IssuedCertVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let not_after = self
            .state
            .records()
            .issued
            .get(end_entity.as_ref())
            .map(|i| i.not_after.unix_timestamp());
        let now = match not_after {
            Some(not_after) if now.as_secs() > not_after.max(0) as u64 => {
                UnixTime::since_unix_epoch(Duration::from_secs(not_after.max(0) as u64))
            }
            _ => now,
        };
        self.inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

fn typed(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}

/// Whether the request's media type (parameters ignored) is `want`.
fn has_media_type(req: &Request<Incoming>, want: &str) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

/// The body, at most [`MAX_BODY_BYTES`]; the error answer otherwise. A larger body is read
/// and discarded (up to four times the limit) before the 413, so the client gets the answer
/// rather than a broken pipe.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    const DRAIN_LIMIT: usize = 4 * MAX_BODY_BYTES;
    let mut body = req.into_body();
    let mut data = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| text(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(chunk.len());
        if total <= MAX_BODY_BYTES {
            data.extend_from_slice(&chunk);
        } else if total > DRAIN_LIMIT {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    Ok(Bytes::from(data))
}

async fn handle(state: &Arc<State>, req: Request<Incoming>, peer: Option<&[u8]>) -> Response<Full<Bytes>> {
    if state.down.load(Ordering::SeqCst) {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the telemetry service is down");
    }
    if *state.hang.borrow() {
        return hang(state, req).await;
    }
    let path = req.uri().path().to_owned();
    let known = matches!(path.as_str(), "/v1/registrations" | "/v1/metrics" | "/v1/logs");
    if !known {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {path}: only POST", req.method()),
        );
    }
    match path.as_str() {
        "/v1/registrations" => register(state, req).await,
        "/v1/metrics" => {
            upload(state, req, peer, |request, client_cn, client_serial, records| {
                records.metrics.push(Received {
                    request,
                    client_cn,
                    client_serial,
                });
                ExportMetricsServiceResponse::default().encode_to_vec()
            })
            .await
        }
        _ => {
            upload(state, req, peer, |request, client_cn, client_serial, records| {
                records.logs.push(Received {
                    request,
                    client_cn,
                    client_serial,
                });
                ExportLogsServiceResponse::default().encode_to_vec()
            })
            .await
        }
    }
}

/// Reads the request, then holds it without an answer until hanging is switched off (503) or
/// the client goes away (hyper drops this future when the connection closes mid-request).
async fn hang(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let mut hang = state.hang.subscribe();
    // The whole request arrives (and is counted) before the service stops answering.
    let _ = read_body(req).await;
    let index = {
        let mut held = state.held();
        held.push(Held {
            path,
            arrived: Instant::now(),
            ended: None,
        });
        held.len() - 1
    };
    let _guard = HeldGuard {
        state: state.clone(),
        index,
    };
    let _ = hang.wait_for(|on| !*on).await;
    text(StatusCode::SERVICE_UNAVAILABLE, "the telemetry service hung")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationRequest {
    installation_id: String,
    csr: String,
    orgs: Vec<RegisteredOrg>,
    version: String,
}

/// Whether `s` is a UUID in the canonical hyphenated form (8-4-4-4-12 hex digits).
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn dn_value_str(v: &DnValue) -> Option<String> {
    match v {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        DnValue::TeletexString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

async fn register(state: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = &state.options.registration_token {
        let expected = format!("Bearer {token}");
        let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        if given != Some(expected.as_bytes()) {
            return text(StatusCode::UNAUTHORIZED, "registration token missing or wrong");
        }
    }
    if !has_media_type(&req, "application/json") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "registrations need Content-Type: application/json",
        );
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let reg: RegistrationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("invalid registration JSON: {e}")),
    };
    if !is_uuid(&reg.installation_id) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("installationId {:?} is not a UUID", reg.installation_id),
        );
    }
    let csr = match CertificateSigningRequestParams::from_pem(&reg.csr) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("the CSR does not parse: {e}")),
    };
    let cn = csr
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .and_then(dn_value_str);
    if cn.as_deref() != Some(reg.installation_id.as_str()) {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "the CSR's subject CN {cn:?} is not the installationId {:?}",
                reg.installation_id
            ),
        );
    }
    if csr.public_key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return text(
            StatusCode::BAD_REQUEST,
            "the CSR's key is not ECDSA P-256 (signed with SHA-256)",
        );
    }
    match issue(state, &reg.installation_id, csr) {
        Ok((pem, serial, not_after, der)) => {
            let not_after_text = not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            let mut records = state.records();
            records.issued.insert(
                der,
                Issued {
                    installation_id: reg.installation_id.clone(),
                    serial: serial.clone(),
                    not_after,
                },
            );
            records.registrations.push(Registration {
                installation_id: reg.installation_id,
                orgs: reg.orgs,
                serial,
                not_after,
                version: reg.version,
            });
            let body = serde_json::json!({"certificate": pem, "notAfter": not_after_text});
            typed(
                StatusCode::CREATED,
                "application/json",
                body.to_string().into_bytes(),
            )
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("signing the certificate: {e}"),
        ),
    }
}

/// Signs a client certificate for `installation_id` with the CSR's key: PEM (leaf then CA),
/// serial (hex), notAfter, leaf DER.
fn issue(
    state: &State,
    installation_id: &str,
    csr: CertificateSigningRequestParams,
) -> anyhow::Result<(String, String, OffsetDateTime, Vec<u8>)> {
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    let lifetime = time::Duration::seconds(i64::try_from(state.options.cert_lifetime.as_secs())?);
    let not_after = now + lifetime;
    let mut serial_bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so the hex is the DER INTEGER's content.
    serial_bytes[0] = (serial_bytes[0] & 0x7f).max(1);
    let serial: String = serial_bytes.iter().map(|b| format!("{b:02x}")).collect();

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, installation_id);
    params.not_before = now;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&serial_bytes));
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&state.ca)?;
    let pem = format!("{}{}", cert.pem(), state.ca.pem());
    Ok((pem, serial, not_after, cert.der().to_vec()))
}

async fn upload<T, F>(
    state: &Arc<State>,
    req: Request<Incoming>,
    peer: Option<&[u8]>,
    record: F,
) -> Response<Full<Bytes>>
where
    T: Message + Default,
    F: FnOnce(T, String, String, &mut Records) -> Vec<u8>,
{
    let Some(peer) = peer else {
        return text(
            StatusCode::UNAUTHORIZED,
            "a client certificate is required for uploads",
        );
    };
    let Some(issued) = state.records().issued.get(peer).cloned() else {
        return text(
            StatusCode::UNAUTHORIZED,
            "the client certificate was not issued by this service",
        );
    };
    let expired = OffsetDateTime::now_utc() > issued.not_after;
    if expired || state.records().revoked.contains(&issued.serial) {
        return text(StatusCode::UNAUTHORIZED, REVOKED);
    }
    if !has_media_type(&req, "application/x-protobuf") {
        return text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "uploads need Content-Type: application/x-protobuf",
        );
    }
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let request = match T::decode(body) {
        Ok(r) => r,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a protobuf {}: {e}",
                    std::any::type_name::<T>()
                        .rsplit("::")
                        .next()
                        .unwrap_or("message")
                ),
            );
        }
    };
    let answer = {
        let mut records = state.records();
        let answer = record(request, issued.installation_id, issued.serial, &mut records);
        let count = records.metrics.len() + records.logs.len();
        drop(records);
        state.uploads.send_replace(count);
        answer
    };
    typed(StatusCode::OK, "application/x-protobuf", answer)
}

/// The `(uuid, org)` points of the support-cluster gauge in `req`, `None` when it has no such
/// metric.
fn support_clusters(req: &ExportMetricsServiceRequest) -> Option<Vec<(String, String)>> {
    let mut found = None;
    for rm in &req.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in sm.metrics.iter().filter(|m| m.name == SUPPORT_CLUSTER_METRIC) {
                let points = found.get_or_insert_with(Vec::new);
                if let Some(metric::Data::Gauge(g)) = &m.data {
                    for p in &g.data_points {
                        points.push((
                            string_attribute(&p.attributes, "pxb.cluster.uuid"),
                            string_attribute(&p.attributes, "pxb.org"),
                        ));
                    }
                }
            }
        }
    }
    found
}

fn string_attribute(attrs: &[KeyValue], key: &str) -> String {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn push_nonempty(s: &str, out: &mut Vec<String>) {
    if !s.is_empty() {
        out.push(s.to_owned());
    }
}

fn any_value_strings(v: &AnyValue, out: &mut Vec<String>) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => push_nonempty(s, out),
        Some(any_value::Value::ArrayValue(a)) => {
            for v in &a.values {
                any_value_strings(v, out);
            }
        }
        Some(any_value::Value::KvlistValue(l)) => attributes_strings(&l.values, out),
        _ => {}
    }
}

fn attributes_strings(attrs: &[KeyValue], out: &mut Vec<String>) {
    for kv in attrs {
        push_nonempty(&kv.key, out);
        if let Some(v) = &kv.value {
            any_value_strings(v, out);
        }
    }
}

fn resource_strings(r: Option<&Resource>, out: &mut Vec<String>) {
    if let Some(r) = r {
        attributes_strings(&r.attributes, out);
        for e in &r.entity_refs {
            push_nonempty(&e.schema_url, out);
            push_nonempty(&e.r#type, out);
            for k in e.id_keys.iter().chain(&e.description_keys) {
                push_nonempty(k, out);
            }
        }
    }
}

fn scope_strings(s: Option<&InstrumentationScope>, out: &mut Vec<String>) {
    if let Some(s) = s {
        push_nonempty(&s.name, out);
        push_nonempty(&s.version, out);
        attributes_strings(&s.attributes, out);
    }
}

fn metrics_strings(req: &ExportMetricsServiceRequest, out: &mut Vec<String>) {
    for rm in &req.resource_metrics {
        resource_strings(rm.resource.as_ref(), out);
        push_nonempty(&rm.schema_url, out);
        for sm in &rm.scope_metrics {
            scope_strings(sm.scope.as_ref(), out);
            push_nonempty(&sm.schema_url, out);
            for m in &sm.metrics {
                push_nonempty(&m.name, out);
                push_nonempty(&m.description, out);
                push_nonempty(&m.unit, out);
                attributes_strings(&m.metadata, out);
                let mut point = |attrs: &[KeyValue], exemplars: &[Exemplar]| {
                    attributes_strings(attrs, out);
                    for e in exemplars {
                        attributes_strings(&e.filtered_attributes, out);
                    }
                };
                match &m.data {
                    Some(metric::Data::Gauge(g)) => g
                        .data_points
                        .iter()
                        .for_each(|p| point(&p.attributes, &p.exemplars)),
                    Some(metric::Data::Sum(s)) => s
                        .data_points
                        .iter()
                        .for_each(|p| point(&p.attributes, &p.exemplars)),
                    Some(metric::Data::Histogram(h)) => h
                        .data_points
                        .iter()
                        .for_each(|p| point(&p.attributes, &p.exemplars)),
                    Some(metric::Data::ExponentialHistogram(h)) => h
                        .data_points
                        .iter()
                        .for_each(|p| point(&p.attributes, &p.exemplars)),
                    Some(metric::Data::Summary(s)) => {
                        s.data_points.iter().for_each(|p| point(&p.attributes, &[]))
                    }
                    None => {}
                }
            }
        }
    }
}

fn logs_strings(req: &ExportLogsServiceRequest, out: &mut Vec<String>) {
    for rl in &req.resource_logs {
        resource_strings(rl.resource.as_ref(), out);
        push_nonempty(&rl.schema_url, out);
        for sl in &rl.scope_logs {
            scope_strings(sl.scope.as_ref(), out);
            push_nonempty(&sl.schema_url, out);
            for r in &sl.log_records {
                push_nonempty(&r.severity_text, out);
                push_nonempty(&r.event_name, out);
                if let Some(b) = &r.body {
                    any_value_strings(b, out);
                }
                attributes_strings(&r.attributes, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::time::Instant;

    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::number_data_point;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    };
    use rustls::pki_types::pem::PemObject;

    use super::*;

    const ID: &str = "3f0c8a52-9d1e-4b7a-8c2f-5e6d7a8b9c0d";

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn resource(id: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                kv("service.name", "pxb-server"),
                kv("service.version", "0.1.0"),
                kv("pxb.installation.id", id),
            ],
            ..Default::default()
        })
    }

    /// A metrics request with the support-cluster gauge, one point per `(uuid, org)`.
    fn clusters_request(id: &str, clusters: &[(&str, &str)]) -> ExportMetricsServiceRequest {
        let points = clusters
            .iter()
            .map(|(uuid, org)| NumberDataPoint {
                attributes: vec![kv("pxb.cluster.uuid", uuid), kv("pxb.org", org)],
                value: Some(number_data_point::Value::AsInt(1)),
                ..Default::default()
            })
            .collect();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource(id),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "pxb-support".into(),
                        ..Default::default()
                    }),
                    metrics: vec![Metric {
                        name: SUPPORT_CLUSTER_METRIC.into(),
                        data: Some(metric::Data::Gauge(Gauge { data_points: points })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn logs_request(id: &str, body: &str) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(id),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord {
                        severity_text: "WARN".into(),
                        body: Some(AnyValue {
                            value: Some(any_value::Value::KvlistValue(KeyValueList {
                                values: vec![kv("message", body)],
                            })),
                        }),
                        attributes: vec![kv("pxb.component", "catalog")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A fresh P-256 key and a PEM CSR with subject CN `cn`.
    fn csr(cn: &str) -> (KeyPair, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let pem = params.serialize_request(&key).expect("csr").pem().expect("pem");
        (key, pem)
    }

    fn client(svc: &TelemetryService, identity: Option<reqwest::Identity>) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(svc.ca_pem().as_bytes()).expect("CA");
        let mut b = reqwest::Client::builder().tls_certs_only([ca]);
        if let Some(identity) = identity {
            b = b.identity(identity);
        }
        b.build().expect("client")
    }

    async fn register_with(
        svc: &TelemetryService,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> (u16, String) {
        let mut req = client(svc, None)
            .post(format!("{}/v1/registrations", svc.endpoint()))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.expect("registration answered");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    fn registration_body(id: &str, csr: &str) -> serde_json::Value {
        serde_json::json!({
            "installationId": id,
            "csr": csr,
            "orgs": [{"org": "org-a", "customer": "cust-1"}],
            "version": "0.1.0",
        })
    }

    /// Registers `id` with a fresh key; the client identity (key, leaf, CA) and the 201 answer.
    async fn register(svc: &TelemetryService, id: &str) -> (reqwest::Identity, serde_json::Value) {
        let (key, csr) = csr(id);
        let (status, body) = register_with(svc, None, registration_body(id, &csr)).await;
        assert_eq!(status, 201, "registration: {body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        let cert = answer["certificate"].as_str().expect("certificate");
        let identity = reqwest::Identity::from_pem(format!("{}{cert}", key.serialize_pem()).as_bytes())
            .expect("identity");
        (identity, answer)
    }

    async fn post(
        client: &reqwest::Client,
        url: String,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let resp = client
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("upload answered");
        let status = resp.status().as_u16();
        (status, resp.bytes().await.expect("body").to_vec())
    }

    async fn post_metrics(
        svc: &TelemetryService,
        client: &reqwest::Client,
        req: &ExportMetricsServiceRequest,
    ) -> (u16, String) {
        let (status, body) = post(
            client,
            format!("{}/v1/metrics", svc.endpoint()),
            "application/x-protobuf",
            req.encode_to_vec(),
        )
        .await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Whether `der` holds a subject or issuer CN (`2.5.4.3`, UTF8String) equal to `cn`.
    fn der_has_cn(der: &[u8], cn: &str) -> bool {
        let mut needle = vec![0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, cn.len() as u8];
        needle.extend_from_slice(cn.as_bytes());
        der.windows(needle.len()).any(|w| w == needle.as_slice())
    }

    #[tokio::test]
    async fn counts_only_what_arrives_and_drop_closes_the_port() {
        let svc = TelemetryService::start().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            (svc.connections(), svc.bytes_received()),
            (0, 0),
            "nobody connected yet"
        );

        let port = svc.port;
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        tcp.write_all(b"GARBAGE").expect("write");
        let mut rest = Vec::new();
        // The service fails the handshake and closes the connection.
        let _ = tcp.read_to_end(&mut rest);
        assert_eq!(svc.connections(), 1);
        assert_eq!(svc.bytes_received(), 7, "exactly the bytes sent");

        // A TLS connection counts its handshake too.
        let (identity, _) = register(&svc, ID).await;
        drop(identity);
        assert_eq!(svc.connections(), 2);
        assert!(
            svc.bytes_received() > 7 + 500,
            "a handshake and a registration request are more than 500 bytes: {}",
            svc.bytes_received()
        );

        drop(svc);
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the port is closed once the service is dropped"
        );
    }

    #[tokio::test]
    async fn registration_issues_a_client_certificate_chaining_to_the_ca() {
        let svc = TelemetryService::start().await;
        let before = OffsetDateTime::now_utc();
        let (_, answer) = register(&svc, ID).await;

        let pem = answer["certificate"].as_str().expect("certificate");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM certificates");
        assert_eq!(chain.len(), 2, "leaf then CA");
        let ca = CertificateDer::from_pem_slice(svc.ca_pem().as_bytes()).expect("CA PEM");
        assert_eq!(chain[1], ca);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("root");
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .expect("verifier");
        verifier
            .verify_client_cert(&chain[0], &[], UnixTime::now())
            .expect("the leaf verifies as a client certificate against ca_pem");
        assert!(der_has_cn(&chain[0], ID), "the leaf's CN is the installation id");

        let regs = svc.registrations();
        assert_eq!(regs.len(), 1);
        let reg = &regs[0];
        assert_eq!(reg.installation_id, ID);
        assert_eq!(reg.version, "0.1.0");
        assert_eq!(
            reg.orgs,
            vec![RegisteredOrg {
                org: "org-a".into(),
                customer: "cust-1".into()
            }]
        );
        assert_eq!(reg.serial.len(), 32, "128-bit serial: {}", reg.serial);
        let serial_bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&reg.serial[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        let mut serial_der = vec![0x02, 0x10];
        serial_der.extend_from_slice(&serial_bytes);
        assert!(
            chain[0].windows(18).any(|w| w == serial_der.as_slice()),
            "the serial recorded is the certificate's"
        );
        let not_after = OffsetDateTime::parse(
            answer["notAfter"].as_str().expect("notAfter"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("RFC 3339");
        assert_eq!(not_after, reg.not_after);
        let lifetime = not_after - before;
        assert!(
            lifetime > time::Duration::seconds(3590) && lifetime <= time::Duration::seconds(3600),
            "one hour by default: {lifetime}"
        );
    }

    #[tokio::test]
    async fn registration_refuses_a_wrong_cn_garbage_and_non_uuids() {
        let svc = TelemetryService::start().await;
        let (_, other) = csr("5b7e1f20-0000-4000-8000-000000000001");
        let (status, body) = register_with(&svc, None, registration_body(ID, &other)).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("CN"), "{body}");

        let (status, body) = register_with(&svc, None, registration_body(ID, "not a CSR")).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("CSR does not parse"), "{body}");

        let (_, not_uuid_csr) = csr("cluster-admin");
        let (status, body) =
            register_with(&svc, None, registration_body("cluster-admin", &not_uuid_csr)).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("not a UUID"), "{body}");

        let (status, body) = register_with(&svc, None, serde_json::json!({"installationId": ID})).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("invalid registration JSON"), "{body}");

        assert!(svc.registrations().is_empty(), "nothing was registered");
    }

    #[tokio::test]
    async fn registration_token_is_required_when_configured() {
        let svc = TelemetryService::start_with(TelemetryServiceOptions {
            registration_token: Some("s3cret".into()),
            ..Default::default()
        })
        .await;
        let (_, csr) = csr(ID);
        for token in [None, Some("wrong")] {
            let (status, body) = register_with(&svc, token, registration_body(ID, &csr)).await;
            assert_eq!(status, 401, "token {token:?}: {body}");
        }
        assert!(svc.registrations().is_empty());
        let (status, body) = register_with(&svc, Some("s3cret"), registration_body(ID, &csr)).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(svc.registrations().len(), 1);
    }

    #[tokio::test]
    async fn uploads_with_the_issued_identity_are_decoded_and_recorded() {
        let svc = TelemetryService::start().await;
        let (identity, _) = register(&svc, ID).await;
        let serial = svc.registrations()[0].serial.clone();
        let http = client(&svc, Some(identity));

        let first = clusters_request(ID, &[("c-uuid-1", "org-a"), ("c-uuid-2", "org-b")]);
        let (status, body) = post_metrics(&svc, &http, &first).await;
        assert_eq!(
            (status, body.as_str()),
            (200, ""),
            "an empty ExportMetricsServiceResponse"
        );
        let logs = logs_request(ID, "backup of ns-1 failed");
        let (status, _) = post(
            &http,
            format!("{}/v1/logs", svc.endpoint()),
            "application/x-protobuf",
            logs.encode_to_vec(),
        )
        .await;
        assert_eq!(status, 200);
        assert!(svc.wait_for_uploads(2, Duration::from_secs(5)).await);

        assert_eq!(
            svc.metrics(),
            vec![Received {
                request: first,
                client_cn: ID.into(),
                client_serial: serial.clone(),
            }]
        );
        assert_eq!(
            svc.logs(),
            vec![Received {
                request: logs,
                client_cn: ID.into(),
                client_serial: serial,
            }]
        );
        assert_eq!(
            svc.cluster_uuids(),
            vec![
                ("c-uuid-1".into(), "org-a".into()),
                ("c-uuid-2".into(), "org-b".into())
            ]
        );
        let strings = svc.all_strings();
        for s in [
            "pxb-server",
            ID,
            "pxb-support",
            SUPPORT_CLUSTER_METRIC,
            "c-uuid-2",
            "backup of ns-1 failed",
            "message",
            "WARN",
            "catalog",
        ] {
            assert!(strings.iter().any(|x| x == s), "{s:?} not in {strings:?}");
        }

        // The latest upload carrying the metric is the current set of clusters.
        let (status, _) = post_metrics(&svc, &http, &clusters_request(ID, &[("c-uuid-2", "org-b")])).await;
        assert_eq!(status, 200);
        assert_eq!(svc.cluster_uuids(), vec![("c-uuid-2".into(), "org-b".into())]);
        assert!(svc.wait_for_uploads(3, Duration::from_secs(1)).await);
        let started = Instant::now();
        assert!(!svc.wait_for_uploads(4, Duration::from_millis(200)).await);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn uploads_without_an_issued_client_certificate_are_refused() {
        let svc = TelemetryService::start().await;
        let req = clusters_request(ID, &[("c-uuid-1", "org-a")]);
        let (status, body) = post_metrics(&svc, &client(&svc, None), &req).await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("client certificate is required"), "{body}");

        // A certificate from another CA fails the handshake.
        let key = KeyPair::generate().expect("key");
        let issuer = CertifiedIssuer::self_signed(
            {
                let mut p = CertificateParams::default();
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p
            },
            KeyPair::generate().expect("key"),
        )
        .expect("issuer");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, ID);
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let identity =
            reqwest::Identity::from_pem(format!("{}{}", key.serialize_pem(), cert.pem()).as_bytes())
                .expect("identity");
        let sent = client(&svc, Some(identity))
            .post(format!("{}/v1/metrics", svc.endpoint()))
            .header("content-type", "application/x-protobuf")
            .body(req.encode_to_vec())
            .send()
            .await;
        assert!(sent.is_err(), "a foreign client certificate is refused: {sent:?}");
        assert!(svc.metrics().is_empty());
    }

    #[tokio::test]
    async fn garbage_wrong_content_type_and_oversized_bodies_are_refused() {
        let svc = TelemetryService::start().await;
        let (identity, _) = register(&svc, ID).await;
        let http = client(&svc, Some(identity));
        let url = format!("{}/v1/metrics", svc.endpoint());

        let (status, body) = post(
            &http,
            url.clone(),
            "application/x-protobuf",
            b"not protobuf".to_vec(),
        )
        .await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        let (status, _) = post(
            &http,
            format!("{}/v1/logs", svc.endpoint()),
            "application/x-protobuf",
            b"not protobuf".to_vec(),
        )
        .await;
        assert_eq!(status, 400);

        let valid = clusters_request(ID, &[("c-uuid-1", "org-a")]).encode_to_vec();
        let (status, _) = post(&http, url.clone(), "application/json", valid).await;
        assert_eq!(status, 415);

        let (status, _) = post(
            &http,
            url,
            "application/x-protobuf",
            vec![0u8; MAX_BODY_BYTES + 1],
        )
        .await;
        assert_eq!(status, 413);
        assert!(svc.metrics().is_empty() && svc.logs().is_empty());
    }

    #[tokio::test]
    async fn revoked_certificates_get_401_revoked_until_registering_again() {
        let svc = TelemetryService::start().await;
        let (old_identity, _) = register(&svc, ID).await;
        let (renewed_identity, _) = register(&svc, ID).await;
        let (old, renewed) = (
            client(&svc, Some(old_identity)),
            client(&svc, Some(renewed_identity)),
        );
        let req = clusters_request(ID, &[("c-uuid-1", "org-a")]);
        // Renewal leaves the older certificate valid.
        assert_eq!(post_metrics(&svc, &old, &req).await.0, 200);
        assert_eq!(post_metrics(&svc, &renewed, &req).await.0, 200);

        svc.revoke(ID);
        assert_eq!(post_metrics(&svc, &old, &req).await, (401, REVOKED.to_string()));
        assert_eq!(
            post_metrics(&svc, &renewed, &req).await,
            (401, REVOKED.to_string())
        );
        assert_eq!(svc.metrics().len(), 2);

        let (fresh_identity, _) = register(&svc, ID).await;
        let fresh = client(&svc, Some(fresh_identity));
        assert_eq!(post_metrics(&svc, &fresh, &req).await.0, 200);
        let regs = svc.registrations();
        assert_eq!(
            svc.metrics().last().map(|m| m.client_serial.clone()),
            Some(regs[2].serial.clone())
        );
    }

    #[tokio::test]
    async fn expired_certificates_get_401_revoked_not_a_failed_handshake() {
        let svc = TelemetryService::start_with(TelemetryServiceOptions {
            cert_lifetime: Duration::from_secs(1),
            ..Default::default()
        })
        .await;
        let (identity, _) = register(&svc, ID).await;
        let not_after = svc.registrations()[0].not_after;
        let req = clusters_request(ID, &[("c-uuid-1", "org-a")]);
        // Past notAfter by more than a second, so a check in whole seconds sees it expired too.
        while OffsetDateTime::now_utc() <= not_after + time::Duration::milliseconds(1100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // A new client, so the expired certificate goes through a new handshake.
        let http = client(&svc, Some(identity));
        assert_eq!(post_metrics(&svc, &http, &req).await, (401, REVOKED.to_string()));
        assert!(svc.metrics().is_empty());
    }

    /// Waits until `done` holds for the service's held requests; false after `timeout`.
    async fn held_until(svc: &TelemetryService, timeout: Duration, done: impl Fn(&[Held]) -> bool) -> bool {
        let started = Instant::now();
        while !done(&svc.held()) {
            if started.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    #[tokio::test]
    async fn hang_reads_requests_and_never_answers_until_released() {
        let svc = TelemetryService::start().await;
        let (identity, _) = register(&svc, ID).await;
        let http = client(&svc, Some(identity));
        let req = clusters_request(ID, &[("c-uuid-1", "org-a")]);
        svc.set_hang(true);

        // A client that waits one second gets no answer: a timeout, not an error status.
        let (connections, bytes) = (svc.connections(), svc.bytes_received());
        let started = Instant::now();
        let sent = http
            .post(format!("{}/v1/metrics", svc.endpoint()))
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(1))
            .body(req.encode_to_vec())
            .send()
            .await;
        let err = sent.expect_err("no answer while hanging");
        assert!(err.is_timeout(), "{err:?}");
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert!(svc.connections() > connections, "the connection was accepted");
        assert!(
            svc.bytes_received() > bytes + req.encoded_len() as u64,
            "the handshake and the whole request arrived"
        );
        // The client gave up: the request is no longer held.
        assert!(
            held_until(&svc, Duration::from_secs(10), |h| h.len() == 1
                && h[0].ended.is_some())
            .await,
            "{:?}",
            svc.held()
        );
        let first = svc.held().remove(0);
        assert_eq!(first.path, "/v1/metrics");
        assert!(first.ended.expect("ended") >= first.arrived);

        // A client that waits is held, also a registration, until hanging is switched off.
        let waiting = {
            let http = http.clone();
            let url = format!("{}/v1/metrics", svc.endpoint());
            let body = req.encode_to_vec();
            tokio::spawn(async move {
                let resp = http
                    .post(url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .expect("answered once released");
                (resp.status().as_u16(), Instant::now())
            })
        };
        assert!(
            held_until(&svc, Duration::from_secs(10), |h| h.len() == 2
                && h[1].ended.is_none())
            .await,
            "{:?}",
            svc.held()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "still no answer");
        assert_eq!(svc.held()[1].ended, None, "still held");
        svc.set_hang(false);
        let (status, answered) = waiting.await.expect("task");
        assert_eq!(status, 503);
        let second = svc.held().remove(1);
        assert!(second.ended.is_some_and(|e| e <= answered), "{second:?}");
        assert!(svc.metrics().is_empty(), "nothing held was recorded");

        // Released: uploads are answered again.
        assert_eq!(post_metrics(&svc, &http, &req).await.0, 200);
        assert_eq!(svc.metrics().len(), 1);
        assert_eq!(svc.held().len(), 2, "nothing more was held");
    }

    #[tokio::test]
    async fn down_answers_503_to_everything_until_up_again() {
        let svc = TelemetryService::start().await;
        let (identity, _) = register(&svc, ID).await;
        let http = client(&svc, Some(identity));
        let req = clusters_request(ID, &[("c-uuid-1", "org-a")]);

        svc.set_down(true);
        assert_eq!(post_metrics(&svc, &http, &req).await.0, 503);
        let (_, csr) = csr(ID);
        assert_eq!(
            register_with(&svc, None, registration_body(ID, &csr)).await.0,
            503
        );
        assert!(svc.metrics().is_empty());
        assert_eq!(svc.registrations().len(), 1);

        svc.set_down(false);
        assert_eq!(post_metrics(&svc, &http, &req).await.0, 200);
        assert_eq!(svc.metrics().len(), 1);
    }
}
