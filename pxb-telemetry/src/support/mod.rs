//! The opt-in support channel: health metrics, recent operational log records and the onboarded
//! clusters of an installation, sent to the provider's telemetry service (like Pure1 telemetry).
//!
//! # Overview
//!
//! - **Off by default; off means nothing leaves the process.** The channel ([`SupportChannel`])
//!   watches a `tokio::sync::watch::Receiver<bool>`. While it is `false` the channel's task only
//!   waits for it: no connection, no registration, no collection, and the log capture
//!   ([`LogBuffer`]) costs one relaxed atomic load per log event and keeps nothing. Turning it
//!   off interrupts a request in flight and discards what was collected but not yet sent.
//! - **Registration** on first enable: the channel generates an ECDSA P-256 key pair and a CSR
//!   whose subject CN is the installation id ([`KeyAndCsr`]), sends it with the provider
//!   customer ↔ org mapping ([`RegistrationRequest`]) and receives a signed client certificate
//!   ([`IssuedCertificate`]). Certificate and key ([`ClientIdentity`]) go to the embedder's
//!   [`CredentialStore`] (pxb-server seals them) and are loaded from it on the next start. The
//!   channel renews at 2/3 of the certificate's lifetime and registers again when an upload
//!   answers that the certificate was revoked or expired ([`ExportError::Revoked`]).
//! - **Uploads** every [`SupportChannelBuilder::interval`] (default 5 min; the first right after
//!   registration): a [`Batch`] of health metrics and onboarded clusters from the embedder's
//!   [`SupportSources`], and the log records captured since the last batch. Batches wait in a
//!   bounded queue while the service is down (the oldest is dropped and counted); attempts back
//!   off with jitter (1 s doubling to at most 5 min, ±20 %).
//! - **Nothing blocks the caller**: all of it runs on one spawned task; log capture pushes a
//!   formatted record into a ring under a lock held only for the push.
//!
//! # The seam
//!
//! [`TelemetryExporter`] is the wire: [`OtlpExporter`] speaks the protocol (registration as
//! JSON, uploads as OTLP/HTTP binary protobuf over mutual TLS); `MemoryExporter` (feature
//! `conformance`) is its in-memory twin. Both run the [`conformance`](self) suite (feature
//! `conformance`), which checks them against a service through a `ServiceProbe`.
//!
//! # Which log records are sent
//!
//! Records at WARN and ERROR from any target, and INFO records of pxb's own targets (`pxb`,
//! `pxb_*`): what an operator would look at first, without the INFO chatter of libraries. The
//! process' log filter (`PXB_LOG`) applies first: a record it filters out is not captured. A
//! record of pxb's own is its message followed by its fields, `name=value` for
//! [`SENT_FIELDS`] and `name=…` for the others; a record of another target (a library, which
//! formats whatever it handles into its message) is [`WITHHELD_MESSAGE`] followed by `name=…`
//! for each field: its level and target tell that something happened, nothing of what it was
//! about. Each is passed through the same [`Redactor`](crate::Redactor) as the process' log
//! lines ([`Settings::redact`](crate::Settings)), cut to [`MAX_MESSAGE_BYTES`]. Span fields are
//! not captured.

mod channel;
mod logbuf;
mod otlp;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
mod memory;

use std::fmt;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use channel::{
    CredentialStore, DEFAULT_INTERVAL, DEFAULT_MAX_PENDING, MemoryCredentialStore, StoreError,
    SupportChannel, SupportChannelBuilder, SupportHandle, SupportSources, SupportStatus,
};
pub use logbuf::{
    CaptureLayer, LogBuffer, MAX_MESSAGE_BYTES, Redactor, SENT_FIELDS, WITHHELD_MESSAGE, is_captured,
};
#[cfg(any(test, feature = "conformance"))]
pub use memory::{ExporterCall, MemoryExporter};
pub use otlp::{CLUSTER_METRIC, OtlpExporter, OtlpExporterBuilder};

/// Why a call to the telemetry service failed, and so what the channel does next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The client certificate was revoked or has expired (upload answered 401): register again
    /// with a new key, then retry.
    #[error("the telemetry service no longer accepts this installation's certificate (revoked or expired)")]
    Revoked,
    /// The service is down or unreachable (503, 5xx, connection refused, timeout): retry later,
    /// backing off.
    #[error("the telemetry service is unavailable: {0}")]
    Unavailable(String),
    /// The service refused the registration (400: bad CSR or installation id; 401: missing or
    /// wrong registration token). Retrying as is will not help: it needs an operator.
    #[error("the telemetry service refused the registration: {0}")]
    Refused(String),
    /// The service refused an upload for a reason other than the certificate (a 4xx other than
    /// 401): the batch is dropped, not retried.
    #[error("the telemetry service rejected the upload: {0}")]
    Rejected(String),
    /// A problem on this side: a key that does not parse, an endpoint that is not HTTPS, an HTTP
    /// client that could not be built. A bad stored identity is replaced by registering again.
    #[error("support channel client error: {0}")]
    Local(String),
}

/// A provider customer and the pxb org it maps to, sent at registration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrgMapping {
    /// The pxb org id.
    pub org: String,
    /// The provider's customer id for that org.
    pub customer: String,
}

/// What a registration sends (the JSON body of `POST /v1/registrations`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistrationRequest {
    /// The installation id (a UUID); the CSR's subject CN.
    pub installation_id: String,
    /// The PKCS#10 certificate signing request, PEM.
    #[serde(rename = "csr")]
    pub csr_pem: String,
    /// The provider customer ↔ org mapping.
    pub orgs: Vec<OrgMapping>,
    /// The pxb version.
    pub version: String,
}

/// The certificate a registration returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// PEM: the leaf, then its chain.
    pub cert_pem: String,
    /// When the certificate expires.
    pub not_after: SystemTime,
}

/// The client certificate and its key: what the channel uploads with, and what the embedder's
/// [`CredentialStore`] keeps (serde: timestamps as RFC 3339 strings). `Debug` does not show
/// the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIdentity {
    /// The installation id the certificate was issued for (its CN).
    pub installation_id: String,
    /// The certificate chain, PEM (leaf first).
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// When the certificate expires.
    #[serde(with = "rfc3339")]
    pub not_after: SystemTime,
    /// When this client received it; renewal is due at `issued_at + 2/3 (not_after - issued_at)`.
    #[serde(with = "rfc3339")]
    pub issued_at: SystemTime,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("installation_id", &self.installation_id)
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .field("not_after", &rfc3339::format(self.not_after))
            .field("issued_at", &rfc3339::format(self.issued_at))
            .finish()
    }
}

impl ClientIdentity {
    /// The identity made of a fresh key (`key`) and the certificate the service issued for it,
    /// received now.
    pub fn new(installation_id: &str, key: KeyAndCsr, issued: IssuedCertificate) -> ClientIdentity {
        ClientIdentity {
            installation_id: installation_id.to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: key.key_pem,
            not_after: issued.not_after,
            issued_at: SystemTime::now(),
        }
    }

    /// When renewal is due: 2/3 of the way from `issued_at` to `not_after`.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.issued_at).unwrap_or_default();
        self.issued_at + lifetime * 2 / 3
    }
}

/// A fresh ECDSA P-256 key and a CSR for it whose subject CN is the installation id. `Debug`
/// does not show the key.
#[derive(Clone)]
pub struct KeyAndCsr {
    /// The PKCS#10 CSR, PEM.
    pub csr_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &format_args!("<redacted>"))
            .finish()
    }
}

impl KeyAndCsr {
    /// Generates a key pair and a CSR with subject CN `common_name`.
    pub fn generate(common_name: &str) -> Result<KeyAndCsr, ExportError> {
        let local = |e: rcgen::Error| ExportError::Local(format!("generating the key and CSR: {e}"));
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(local)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(local)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let csr = params.serialize_request(&key).map_err(local)?;
        Ok(KeyAndCsr {
            csr_pem: csr.pem().map_err(local)?,
            key_pem: key.serialize_pem(),
        })
    }
}

/// Whether a metric point is a gauge (a value now) or a counter (a cumulative total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A value now (OTLP gauge).
    Gauge,
    /// A monotonic cumulative total since the process started (OTLP sum, cumulative).
    Counter,
}

/// One health metric value, e.g. `pxb.backups.failed{org="a"} = 2`.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    /// The metric name (OpenTelemetry style, dotted: `pxb.clusters.onboarded`).
    pub name: String,
    /// Gauge or counter.
    pub kind: MetricKind,
    /// The value.
    pub value: f64,
    /// The point's attributes, as name/value pairs.
    pub attributes: Vec<(String, String)>,
}

impl MetricPoint {
    /// A gauge point without attributes.
    pub fn gauge(name: impl Into<String>, value: f64) -> MetricPoint {
        MetricPoint {
            name: name.into(),
            kind: MetricKind::Gauge,
            value,
            attributes: Vec::new(),
        }
    }

    /// A counter point without attributes.
    pub fn counter(name: impl Into<String>, value: f64) -> MetricPoint {
        MetricPoint {
            kind: MetricKind::Counter,
            ..MetricPoint::gauge(name, value)
        }
    }

    /// This point with one more attribute.
    pub fn with_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> MetricPoint {
        self.attributes.push((name.into(), value.into()));
        self
    }
}

/// One captured log record, already redacted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// When it was logged.
    pub time: SystemTime,
    /// Its level.
    pub level: tracing::Level,
    /// Its target (usually the module path, `pxb_daemon::server`).
    pub target: String,
    /// The message, then the event's fields as `name=value`, redacted.
    pub message: String,
}

/// An onboarded cluster and the org it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterRef {
    /// The cluster's UUID.
    pub uuid: String,
    /// Its org.
    pub org: String,
}

/// What one upload carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// When the metrics and clusters were read (the timestamp of every metric point).
    pub collected_at: SystemTime,
    /// Health metrics.
    pub metrics: Vec<MetricPoint>,
    /// Log records captured since the previous batch.
    pub logs: Vec<LogRecord>,
    /// The onboarded clusters.
    pub clusters: Vec<ClusterRef>,
}

impl Batch {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.logs.is_empty() && self.clusters.is_empty()
    }
}

/// The wire to the telemetry service. Object safe; every implementation runs the
/// conformance suite (`conformance::run_all`, feature `conformance`).
#[async_trait]
pub trait TelemetryExporter: Send + Sync + fmt::Debug {
    /// Registers (or renews) the installation: sends the CSR and the org mapping, returns the
    /// signed client certificate.
    async fn register(&self, req: &RegistrationRequest) -> Result<IssuedCertificate, ExportError>;

    /// Uploads one batch, authenticated by `identity`.
    async fn export(&self, identity: &ClientIdentity, batch: &Batch) -> Result<(), ExportError>;
}

/// RFC 3339 timestamps for `SystemTime` (serde `with` module).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn format(t: SystemTime) -> String {
        jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |t| t.to_string())
    }

    pub(super) fn parse(s: &str) -> Result<SystemTime, String> {
        s.parse::<jiff::Timestamp>()
            .map(SystemTime::from)
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp: {e}"))
    }

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A random version 4 UUID.
pub fn new_installation_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn identity() -> ClientIdentity {
        let issued_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        ClientIdentity {
            installation_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n-----END PRIVATE KEY-----\n".into(),
            not_after: issued_at + Duration::from_secs(3 * 3600),
            issued_at,
        }
    }

    #[test]
    fn identity_debug_does_not_show_the_key() {
        let shown = format!("{:?}", identity());
        assert!(!shown.contains("SECRETKEY"), "{shown}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("0f8fad5b-d9cb-469f-a165-70867728950e"), "{shown}");
        assert!(shown.contains("2027-01-15T08:00:00Z"), "{shown}");
        let key = KeyAndCsr::generate("x").expect("generate");
        let shown = format!("{key:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("CERTIFICATE REQUEST"), "{shown}");
    }

    #[test]
    fn identity_round_trips_through_json_with_rfc3339_times() {
        let id = identity();
        let json = serde_json::to_value(&id).expect("serialize");
        assert_eq!(json["notAfter"], "2027-01-15T11:00:00Z");
        assert_eq!(json["issuedAt"], "2027-01-15T08:00:00Z");
        let back: ClientIdentity = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, id);
        assert_eq!(
            id.renew_at(),
            id.issued_at + Duration::from_secs(2 * 3600),
            "renewal at 2/3 of the lifetime"
        );
    }

    #[test]
    fn registration_request_is_camel_case_json() {
        let req = RegistrationRequest {
            installation_id: "id".into(),
            csr_pem: "csr".into(),
            orgs: vec![OrgMapping {
                org: "o".into(),
                customer: "c".into(),
            }],
            version: "1.2.3".into(),
        };
        assert_eq!(
            serde_json::to_value(&req).expect("json"),
            serde_json::json!({"installationId": "id", "csr": "csr", "orgs": [{"org": "o", "customer": "c"}], "version": "1.2.3"})
        );
    }

    #[test]
    fn the_csr_is_p256_with_the_installation_id_as_cn() {
        let key = KeyAndCsr::generate("0f8fad5b-d9cb-469f-a165-70867728950e").expect("generate");
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&key.csr_pem).expect("a valid CSR");
        assert_eq!(
            parsed.params.distinguished_name.get(&rcgen::DnType::CommonName),
            Some(&rcgen::DnValue::Utf8String(
                "0f8fad5b-d9cb-469f-a165-70867728950e".into()
            ))
        );
        let key_pair = rcgen::KeyPair::from_pem(&key.key_pem).expect("key parses");
        assert!(key_pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    }
}
