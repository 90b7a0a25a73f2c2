//! [`OtlpExporter`]: the support channel's wire to the provider's telemetry service.
//!
//! Registration is `POST {endpoint}/v1/registrations` with a JSON body, over server-authenticated
//! TLS. Uploads are OTLP/HTTP binary protobuf (`POST /v1/metrics`, `POST /v1/logs`) over mutual
//! TLS with the client certificate the registration returned: the batch is converted to
//! `opentelemetry-proto` messages and encoded with `prost`.
//!
//! # Why not the `opentelemetry-otlp` crate
//!
//! It can use reqwest 0.13 (through `opentelemetry-http`), but it exports only what the
//! OpenTelemetry SDK's pipelines produce: its exporters take `opentelemetry_sdk`'s
//! `ResourceMetrics` and `SdkLogRecord`, whose fields are crate-private, so a [`Batch`] read from
//! pxb's own state could only be sent by running a `MeterProvider` with observable instruments
//! and a `LoggerProvider` bridge around it. It also folds the HTTP status into an
//! `OTelSdkError` string, while the channel must tell a revoked certificate (401) from a service
//! that is down (503), and it would have to be rebuilt on every certificate renewal anyway. The
//! request bodies are one `prost` encode each, so this module builds them itself.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1 as logs;
use opentelemetry_proto::tonic::metrics::v1 as metrics;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use serde::Deserialize;

use super::{
    Batch, ClientIdentity, ExportError, IssuedCertificate, MetricKind, RegistrationRequest, TelemetryExporter,
};

/// The metric that carries the onboarded clusters: a gauge of value 1 per cluster, with the
/// attributes `pxb.cluster.uuid` and `pxb.org`.
pub const CLUSTER_METRIC: &str = "pxb.support.cluster";

/// The `service.name` resource attribute of every upload.
const SERVICE_NAME: &str = "pxb-server";

/// The longest response body quoted in an error.
const MAX_QUOTED_BODY: usize = 512;

/// The exporter speaking the telemetry service's protocol over HTTPS ([module docs](self)).
pub struct OtlpExporter {
    endpoint: String,
    ca: Option<Vec<reqwest::Certificate>>,
    token: Option<String>,
    version: String,
    timeout: Duration,
    registration: reqwest::Client,
    /// The upload client of the last identity used (keyed by its certificate PEM).
    upload: Mutex<Option<(String, reqwest::Client)>>,
}

impl fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("endpoint", &self.endpoint)
            .field("custom_ca", &self.ca.is_some())
            .field("registration_token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("version", &self.version)
            .finish()
    }
}

/// Builds an [`OtlpExporter`] ([`OtlpExporter::builder`]).
pub struct OtlpExporterBuilder {
    endpoint: String,
    ca_pem: Option<String>,
    token: Option<String>,
    version: String,
    timeout: Duration,
}

impl fmt::Debug for OtlpExporterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpExporterBuilder")
            .field("endpoint", &self.endpoint)
            .field("custom_ca", &self.ca_pem.is_some())
            .field("registration_token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl OtlpExporterBuilder {
    /// Trusts only the CA certificates in `pem` (one or more) for the service's certificate,
    /// instead of the system's roots.
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Sends `Authorization: Bearer <token>` with registrations.
    pub fn registration_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The pxb version reported (registration `version`, resource `service.version`); default
    /// this crate's version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The timeout of each request (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The exporter; fails when the endpoint is not an `https` URL or the CA PEM holds no
    /// certificate.
    pub fn build(self) -> Result<OtlpExporter, ExportError> {
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| ExportError::Local(format!("telemetry endpoint {:?}: {e}", self.endpoint)))?;
        if url.scheme() != "https" {
            return Err(ExportError::Local(format!(
                "telemetry endpoint {:?} is not an https URL (uploads use mutual TLS)",
                self.endpoint
            )));
        }
        let ca = match &self.ca_pem {
            None => None,
            Some(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                    .map_err(|e| ExportError::Local(format!("telemetry CA PEM: {}", chain(&e))))?;
                if certs.is_empty() {
                    return Err(ExportError::Local("telemetry CA PEM holds no certificate".into()));
                }
                Some(certs)
            }
        };
        let registration = client(ca.as_deref(), self.timeout, None)?;
        Ok(OtlpExporter {
            endpoint: self.endpoint.trim_end_matches('/').to_owned(),
            ca,
            token: self.token,
            version: self.version,
            timeout: self.timeout,
            registration,
            upload: Mutex::new(None),
        })
    }
}

/// A reqwest client trusting `ca` (else the system's roots), presenting `identity` if given.
fn client(
    ca: Option<&[reqwest::Certificate]>,
    timeout: Duration,
    identity: Option<reqwest::Identity>,
) -> Result<reqwest::Client, ExportError> {
    let mut builder = hardened(reqwest::Client::builder()).timeout(timeout);
    if let Some(ca) = ca {
        builder = builder.tls_certs_only(ca.iter().cloned());
    }
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ExportError::Local(format!("building the HTTP client: {}", chain(&e))))
}

/// `builder`, hardened for the support channel: HTTPS only; no redirect followed (a redirect
/// could send the registration token or the uploads elsewhere: it is an error answer); no idle
/// connection kept (uploads are minutes apart, and a channel switched off must leave no
/// connection open: an upload in flight is abandoned, which closes its connection).
fn hardened(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
}

/// An error and its sources, joined by `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A transport failure: the service cannot be reached now.
fn unavailable(what: &str, e: &reqwest::Error) -> ExportError {
    ExportError::Unavailable(format!("{what}: {}", chain(e)))
}

/// The start of a response body, for an error message.
async fn quoted_body(response: reqwest::Response) -> String {
    let body = response.text().await.unwrap_or_default();
    let body = body.trim();
    match body.char_indices().nth(MAX_QUOTED_BODY) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_owned(),
    }
}

/// Whether a status means "try again later".
fn retry_later(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationResponse {
    certificate: String,
    not_after: String,
}

impl OtlpExporter {
    /// A builder for the service at `endpoint` (`https://…`, without `/v1/…`).
    pub fn builder(endpoint: impl Into<String>) -> OtlpExporterBuilder {
        OtlpExporterBuilder {
            endpoint: endpoint.into(),
            ca_pem: None,
            token: None,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The client presenting `identity`, built once per certificate.
    fn upload_client(&self, identity: &ClientIdentity) -> Result<reqwest::Client, ExportError> {
        let mut cached = self.upload.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((cert, client)) = cached.as_ref()
            && *cert == identity.cert_pem
        {
            return Ok(client.clone());
        }
        let pem = format!("{}\n{}", identity.cert_pem.trim_end(), identity.key_pem);
        let tls_identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|e| {
            ExportError::Local(format!("the stored client certificate or key: {}", chain(&e)))
        })?;
        let client = client(self.ca.as_deref(), self.timeout, Some(tls_identity))?;
        *cached = Some((identity.cert_pem.clone(), client.clone()));
        Ok(client)
    }

    async fn post_protobuf(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(), ExportError> {
        let url = format!("{}{path}", self.endpoint);
        let response = client
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| unavailable(&format!("POST {url}"), &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = quoted_body(response).await;
        Err(if status == reqwest::StatusCode::UNAUTHORIZED {
            ExportError::Revoked
        } else if retry_later(status) {
            ExportError::Unavailable(format!("POST {url}: {status}: {body}"))
        } else {
            ExportError::Rejected(format!("POST {url}: {status}: {body}"))
        })
    }
}

#[async_trait]
impl TelemetryExporter for OtlpExporter {
    async fn register(&self, req: &RegistrationRequest) -> Result<IssuedCertificate, ExportError> {
        let url = format!("{}/v1/registrations", self.endpoint);
        let body = serde_json::to_vec(req)
            .map_err(|e| ExportError::Local(format!("encoding the registration: {e}")))?;
        let mut request = self
            .registration
            .post(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(&format!("POST {url}"), &e))?;
        let status = response.status();
        if !status.is_success() {
            let body = quoted_body(response).await;
            let message = format!("POST {url}: {status}: {body}");
            return Err(if retry_later(status) {
                ExportError::Unavailable(message)
            } else {
                ExportError::Refused(message)
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(&format!("reading the answer of POST {url}"), &e))?;
        let answer: RegistrationResponse = serde_json::from_slice(&bytes).map_err(|e| {
            ExportError::Unavailable(format!("POST {url}: the answer is not a registration: {e}"))
        })?;
        let not_after = super::rfc3339::parse(&answer.not_after)
            .map_err(|e| ExportError::Unavailable(format!("POST {url}: notAfter: {e}")))?;
        Ok(IssuedCertificate {
            cert_pem: answer.certificate,
            not_after,
        })
    }

    async fn export(&self, identity: &ClientIdentity, batch: &Batch) -> Result<(), ExportError> {
        let client = self.upload_client(identity)?;
        let metrics = metrics_request(&identity.installation_id, &self.version, batch);
        if !metrics.resource_metrics.is_empty() {
            self.post_protobuf(&client, "/v1/metrics", metrics.encode_to_vec())
                .await?;
        }
        let logs = logs_request(&identity.installation_id, &self.version, batch);
        if !logs.resource_logs.is_empty() {
            self.post_protobuf(&client, "/v1/logs", logs.encode_to_vec())
                .await?;
        }
        Ok(())
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn resource(installation_id: &str, version: &str) -> Resource {
    Resource {
        attributes: vec![
            string_attribute("service.name", SERVICE_NAME),
            string_attribute("service.version", version),
            string_attribute("pxb.installation.id", installation_id),
        ],
        ..Resource::default()
    }
}

fn scope(version: &str) -> InstrumentationScope {
    InstrumentationScope {
        name: "pxb-telemetry.support".to_owned(),
        version: version.to_owned(),
        ..InstrumentationScope::default()
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The metrics of `batch` as an OTLP request: one `Metric` per name and kind (gauge, or
/// cumulative monotonic sum), its points stamped `collected_at`, and the clusters as
/// [`CLUSTER_METRIC`]. Empty (no resource) when there is nothing to send.
pub(crate) fn metrics_request(
    installation_id: &str,
    version: &str,
    batch: &Batch,
) -> ExportMetricsServiceRequest {
    let time_unix_nano = unix_nanos(batch.collected_at);
    let point =
        |value: metrics::number_data_point::Value, attributes: Vec<KeyValue>| metrics::NumberDataPoint {
            attributes,
            time_unix_nano,
            value: Some(value),
            ..metrics::NumberDataPoint::default()
        };
    let mut out: Vec<(String, MetricKind, Vec<metrics::NumberDataPoint>)> = Vec::new();
    for m in &batch.metrics {
        let attributes = m.attributes.iter().map(|(k, v)| string_attribute(k, v)).collect();
        let p = point(metrics::number_data_point::Value::AsDouble(m.value), attributes);
        match out
            .iter_mut()
            .find(|(name, kind, _)| *name == m.name && *kind == m.kind)
        {
            Some((_, _, points)) => points.push(p),
            None => out.push((m.name.clone(), m.kind, vec![p])),
        }
    }
    if !batch.clusters.is_empty() {
        let points = batch
            .clusters
            .iter()
            .map(|c| {
                point(
                    metrics::number_data_point::Value::AsInt(1),
                    vec![
                        string_attribute("pxb.cluster.uuid", &c.uuid),
                        string_attribute("pxb.org", &c.org),
                    ],
                )
            })
            .collect();
        out.push((CLUSTER_METRIC.to_owned(), MetricKind::Gauge, points));
    }
    if out.is_empty() {
        return ExportMetricsServiceRequest::default();
    }
    let metrics = out
        .into_iter()
        .map(|(name, kind, data_points)| metrics::Metric {
            name,
            data: Some(match kind {
                MetricKind::Gauge => metrics::metric::Data::Gauge(metrics::Gauge { data_points }),
                MetricKind::Counter => metrics::metric::Data::Sum(metrics::Sum {
                    data_points,
                    aggregation_temporality: metrics::AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
            }),
            ..metrics::Metric::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![metrics::ResourceMetrics {
            resource: Some(resource(installation_id, version)),
            scope_metrics: vec![metrics::ScopeMetrics {
                scope: Some(scope(version)),
                metrics,
                ..metrics::ScopeMetrics::default()
            }],
            ..metrics::ResourceMetrics::default()
        }],
    }
}

fn severity(level: tracing::Level) -> logs::SeverityNumber {
    match level {
        tracing::Level::TRACE => logs::SeverityNumber::Trace,
        tracing::Level::DEBUG => logs::SeverityNumber::Debug,
        tracing::Level::INFO => logs::SeverityNumber::Info,
        tracing::Level::WARN => logs::SeverityNumber::Warn,
        tracing::Level::ERROR => logs::SeverityNumber::Error,
    }
}

/// The log records of `batch` as an OTLP request: body the message, severity from the level,
/// the target as attribute `pxb.log.target`. Empty (no resource) when there are none.
pub(crate) fn logs_request(installation_id: &str, version: &str, batch: &Batch) -> ExportLogsServiceRequest {
    if batch.logs.is_empty() {
        return ExportLogsServiceRequest::default();
    }
    let observed = unix_nanos(batch.collected_at);
    let log_records = batch
        .logs
        .iter()
        .map(|r| logs::LogRecord {
            time_unix_nano: unix_nanos(r.time),
            observed_time_unix_nano: observed,
            severity_number: severity(r.level) as i32,
            severity_text: r.level.as_str().to_owned(),
            body: Some(AnyValue {
                value: Some(any_value::Value::StringValue(r.message.clone())),
            }),
            attributes: vec![string_attribute("pxb.log.target", &r.target)],
            ..logs::LogRecord::default()
        })
        .collect();
    ExportLogsServiceRequest {
        resource_logs: vec![logs::ResourceLogs {
            resource: Some(resource(installation_id, version)),
            scope_logs: vec![logs::ScopeLogs {
                scope: Some(scope(version)),
                log_records,
                ..logs::ScopeLogs::default()
            }],
            ..logs::ResourceLogs::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::support::{ClusterRef, LogRecord, MetricPoint};

    fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
        kvs.iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), value)
            })
            .collect()
    }

    fn batch() -> Batch {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Batch {
            collected_at: at,
            metrics: vec![
                MetricPoint::gauge("pxb.clusters", 2.0).with_attribute("org", "a"),
                MetricPoint::gauge("pxb.clusters", 1.0).with_attribute("org", "b"),
                MetricPoint::counter("pxb.backups.failed", 3.0),
            ],
            logs: vec![LogRecord {
                time: at,
                level: tracing::Level::WARN,
                target: "pxb_daemon::server".into(),
                message: "slow".into(),
            }],
            clusters: vec![ClusterRef {
                uuid: "c-1".into(),
                org: "a".into(),
            }],
        }
    }

    #[test]
    fn metrics_become_one_metric_per_name_with_the_resource_and_cluster_points() {
        let req = metrics_request("inst-1", "9.9.9", &batch());
        let decoded = ExportMetricsServiceRequest::decode(req.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded, req);
        let rm = &decoded.resource_metrics[0];
        assert_eq!(
            attrs(&rm.resource.as_ref().expect("resource").attributes),
            [
                ("service.name".to_owned(), "pxb-server".to_owned()),
                ("service.version".into(), "9.9.9".into()),
                ("pxb.installation.id".into(), "inst-1".into())
            ]
        );
        let metrics = &rm.scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["pxb.clusters", "pxb.backups.failed", CLUSTER_METRIC]);
        let Some(metrics::metric::Data::Gauge(g)) = &metrics[0].data else {
            panic!("pxb.clusters is a gauge: {:?}", metrics[0]);
        };
        assert_eq!(g.data_points.len(), 2);
        assert_eq!(g.data_points[1].time_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!(
            attrs(&g.data_points[1].attributes),
            [("org".to_owned(), "b".to_owned())]
        );
        let Some(metrics::metric::Data::Sum(s)) = &metrics[1].data else {
            panic!("a counter is a sum: {:?}", metrics[1]);
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            metrics::AggregationTemporality::Cumulative as i32
        );
        let Some(metrics::metric::Data::Gauge(c)) = &metrics[2].data else {
            panic!("clusters are a gauge: {:?}", metrics[2]);
        };
        assert_eq!(
            attrs(&c.data_points[0].attributes),
            [
                ("pxb.cluster.uuid".to_owned(), "c-1".to_owned()),
                ("pxb.org".into(), "a".into())
            ]
        );
        assert_eq!(
            c.data_points[0].value,
            Some(metrics::number_data_point::Value::AsInt(1))
        );
    }

    #[test]
    fn logs_carry_severity_body_and_target() {
        let req = logs_request("inst-1", "9.9.9", &batch());
        let record = &req.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.severity_number, logs::SeverityNumber::Warn as i32);
        assert_eq!(record.severity_text, "WARN");
        assert_eq!(
            record.body,
            Some(AnyValue {
                value: Some(any_value::Value::StringValue("slow".into()))
            })
        );
        assert_eq!(
            attrs(&record.attributes),
            [("pxb.log.target".to_owned(), "pxb_daemon::server".to_owned())]
        );
    }

    #[test]
    fn an_empty_batch_sends_nothing() {
        let empty = Batch {
            collected_at: SystemTime::now(),
            metrics: vec![],
            logs: vec![],
            clusters: vec![],
        };
        assert!(metrics_request("i", "v", &empty).resource_metrics.is_empty());
        assert!(logs_request("i", "v", &empty).resource_logs.is_empty());
    }

    #[test]
    fn the_builder_wants_https_and_a_ca_with_certificates() {
        let e = OtlpExporter::builder("http://telemetry.example")
            .build()
            .expect_err("http");
        assert!(e.to_string().contains("not an https URL"), "{e}");
        let e = OtlpExporter::builder("https://telemetry.example")
            .ca_pem("no pem here")
            .build()
            .expect_err("no CA");
        assert!(matches!(e, ExportError::Local(_)), "{e}");
        let ok = OtlpExporter::builder("https://telemetry.example/")
            .registration_token("tok-s3cr3t")
            .build()
            .expect("system roots");
        let shown = format!("{ok:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("\"https://telemetry.example\""), "{shown}");
    }

    #[tokio::test]
    async fn the_client_refuses_plain_http_urls() {
        let client = client(None, Duration::from_secs(5), None).expect("client");
        // A port nothing listens on: a refused connection would be a connect error.
        let e = client
            .get("http://127.0.0.1:9/v1/metrics")
            .send()
            .await
            .expect_err("http");
        assert!(
            e.is_builder() && !e.is_connect(),
            "refused before connecting: {e:?}"
        );
    }

    /// A plain HTTP server answering every request on `listener` with a redirect to
    /// `/elsewhere`; sends each connection's requests (their first lines) and whether the
    /// client closed it within 2 s of the answer.
    async fn redirecting_server(
        listener: tokio::net::TcpListener,
        seen: tokio::sync::mpsc::UnboundedSender<(String, bool)>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut request = Vec::new();
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let first = String::from_utf8_lossy(&request)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let answer =
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\ncontent-length: 0\r\n\r\n";
                if socket.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let closed = matches!(
                    tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await,
                    Ok(Ok(0) | Err(_))
                );
                let _ = seen.send((first, closed));
            });
        }
    }

    #[tokio::test]
    async fn the_client_follows_no_redirect_and_keeps_no_idle_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(redirecting_server(listener, tx));
        // The support channel's settings, but over plain HTTP to reach a test server.
        let client = hardened(reqwest::Client::builder())
            .https_only(false)
            .build()
            .expect("client");
        let response = client
            .post(format!("http://{addr}/v1/metrics"))
            .body("x")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
        drop(response);
        let (first, closed) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the server reports")
            .expect("a request");
        assert_eq!(first, "POST /v1/metrics HTTP/1.1");
        assert!(
            closed,
            "the connection was closed after the answer, not kept idle"
        );
        assert!(
            tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                .is_err(),
            "no second request (the redirect was not followed)"
        );
        drop(client);
        server.abort();
    }
}
