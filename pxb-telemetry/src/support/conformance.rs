//! The support channel's conformance suite: `pub async fn` checks that every
//! [`TelemetryExporter`] runs against a telemetry service, which a [`ServiceProbe`] inspects and
//! steers. Each check panics with a message naming what broke, registers installations of its
//! own (fresh UUIDs) and leaves the service up.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{
    Batch, ClientIdentity, ClusterRef, ExportError, KeyAndCsr, LogRecord, MetricPoint, OrgMapping,
    RegistrationRequest, TelemetryExporter,
};

/// A metric point as it arrived at the service.
#[derive(Clone, Debug, PartialEq)]
pub struct ArrivedMetric {
    /// The metric name.
    pub name: String,
    /// The point's value.
    pub value: f64,
    /// The point's attributes.
    pub attributes: BTreeMap<String, String>,
}

/// A log record as it arrived at the service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrivedLog {
    /// The severity text (`WARN`, `INFO`, …).
    pub severity: String,
    /// The body.
    pub message: String,
}

/// Everything that arrived at the service for one installation, in arrival order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Arrived {
    /// Metric points, without the cluster metric ([`super::CLUSTER_METRIC`]).
    pub metrics: Vec<ArrivedMetric>,
    /// Log records.
    pub logs: Vec<ArrivedLog>,
    /// Onboarded clusters (the points of the cluster metric).
    pub clusters: Vec<ClusterRef>,
}

impl Arrived {
    /// What `batches` carry, as a service would see them.
    pub fn from_batches(batches: &[Batch]) -> Arrived {
        let mut arrived = Arrived::default();
        for b in batches {
            arrived.metrics.extend(b.metrics.iter().map(|m| ArrivedMetric {
                name: m.name.clone(),
                value: m.value,
                attributes: m.attributes.iter().cloned().collect(),
            }));
            arrived.logs.extend(b.logs.iter().map(|l| ArrivedLog {
                severity: l.level.as_str().to_owned(),
                message: l.message.clone(),
            }));
            arrived.clusters.extend(b.clusters.iter().cloned());
        }
        arrived
    }
}

/// Looks into and steers the service an exporter under test talks to.
#[async_trait]
pub trait ServiceProbe: Send + Sync {
    /// Everything that arrived for `installation_id`.
    async fn arrived(&self, installation_id: &str) -> Arrived;
    /// Revokes the certificates issued to `installation_id` so far.
    async fn revoke(&self, installation_id: &str);
    /// Makes the service answer 503 to everything (`true`) or work again.
    async fn set_down(&self, down: bool);
}

/// Runs every check.
pub async fn run_all(exporter: &dyn TelemetryExporter, probe: &dyn ServiceProbe) {
    registration_issues_a_certificate_for_the_installation(exporter).await;
    an_export_arrives_intact(exporter, probe).await;
    renewal_keeps_the_older_certificate_valid(exporter, probe).await;
    a_revoked_identity_is_revoked_until_registered_again(exporter, probe).await;
    a_down_service_is_unavailable(exporter, probe).await;
    bad_registrations_are_refused(exporter).await;
}

pub use super::new_installation_id;

/// A registration request for `installation_id` with a fresh key, and the key.
pub fn registration(installation_id: &str) -> (RegistrationRequest, KeyAndCsr) {
    let key = KeyAndCsr::generate(installation_id).expect("generating a key and CSR");
    let req = RegistrationRequest {
        installation_id: installation_id.to_owned(),
        csr_pem: key.csr_pem.clone(),
        orgs: vec![OrgMapping {
            org: "conf-org".into(),
            customer: "conf-customer".into(),
        }],
        version: "0.0.0-conformance".into(),
    };
    (req, key)
}

/// Registers `installation_id` (panics when that fails) and returns its identity.
pub async fn register(exporter: &dyn TelemetryExporter, installation_id: &str) -> ClientIdentity {
    let (req, key) = registration(installation_id);
    let issued = exporter
        .register(&req)
        .await
        .unwrap_or_else(|e| panic!("registering {installation_id}: {e}"));
    ClientIdentity::new(installation_id, key, issued)
}

/// The subject CN and notAfter of the first certificate in `pem`.
fn leaf_cn_and_not_after(pem: &str) -> (String, i64) {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap_or_else(|e| panic!("the issued certificate is not PEM: {e}\n{pem}"));
    let cert = block
        .parse_x509()
        .unwrap_or_else(|e| panic!("the issued certificate does not parse: {e}"));
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_else(|| panic!("the issued certificate has no subject CN: {}", cert.subject()))
        .to_owned();
    (cn, cert.validity().not_after.timestamp())
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Registration returns a certificate whose CN is the installation id and whose notAfter is
/// the one reported, in the future.
pub async fn registration_issues_a_certificate_for_the_installation(exporter: &dyn TelemetryExporter) {
    let id = new_installation_id();
    let (req, _key) = registration(&id);
    let issued = exporter.register(&req).await.expect("registration");
    let (cn, not_after) = leaf_cn_and_not_after(&issued.cert_pem);
    assert_eq!(cn, id, "the certificate's CN is the installation id");
    assert!(
        (not_after - unix_secs(issued.not_after)).abs() <= 1,
        "the reported notAfter ({}) is the certificate's ({not_after})",
        unix_secs(issued.not_after)
    );
    assert!(
        issued.not_after > SystemTime::now() + Duration::from_secs(60),
        "the certificate is valid for more than a minute"
    );
}

/// A batch for the checks: two gauges with attributes, a counter, two log records, two
/// clusters.
pub fn sample_batch(tag: &str) -> Batch {
    let now = SystemTime::now();
    Batch {
        collected_at: now,
        metrics: vec![
            MetricPoint::gauge("pxb.conf.clusters", 2.0).with_attribute("org", format!("{tag}-a")),
            MetricPoint::gauge("pxb.conf.clusters", 1.5).with_attribute("org", format!("{tag}-b")),
            MetricPoint::counter("pxb.conf.backups.failed", 7.0),
        ],
        logs: vec![
            LogRecord {
                time: now,
                level: tracing::Level::WARN,
                target: "pxb_daemon::server".into(),
                message: format!("{tag}: a visit was slow cluster=\"c-1\""),
            },
            LogRecord {
                time: now,
                level: tracing::Level::INFO,
                target: "pxb_daemon::server".into(),
                message: format!("{tag}: backup done"),
            },
        ],
        clusters: vec![
            ClusterRef {
                uuid: format!("{tag}-cluster-1"),
                org: format!("{tag}-a"),
            },
            ClusterRef {
                uuid: format!("{tag}-cluster-2"),
                org: format!("{tag}-b"),
            },
        ],
    }
}

/// Sorts metrics by name, then attributes, for comparisons that ignore grouping.
fn sorted(mut metrics: Vec<ArrivedMetric>) -> Vec<ArrivedMetric> {
    metrics.sort_by(|a, b| (&a.name, &a.attributes).cmp(&(&b.name, &b.attributes)));
    metrics
}

/// An export arrives with its metrics, log records and clusters intact, under its
/// installation.
pub async fn an_export_arrives_intact(exporter: &dyn TelemetryExporter, probe: &dyn ServiceProbe) {
    let id = new_installation_id();
    let identity = register(exporter, &id).await;
    assert_eq!(
        probe.arrived(&id).await,
        Arrived::default(),
        "nothing arrived before the export"
    );
    let batch = sample_batch("intact");
    exporter.export(&identity, &batch).await.expect("export");
    let arrived = probe.arrived(&id).await;
    let expected = Arrived::from_batches(std::slice::from_ref(&batch));
    assert_eq!(
        sorted(arrived.metrics.clone()),
        sorted(expected.metrics),
        "metrics arrive intact"
    );
    assert_eq!(arrived.logs, expected.logs, "log records arrive intact, in order");
    let mut clusters = arrived.clusters.clone();
    clusters.sort();
    assert_eq!(clusters, expected.clusters, "clusters arrive intact");
}

/// Registering again (renewal) gives a new certificate; the older one stays valid until it
/// expires.
pub async fn renewal_keeps_the_older_certificate_valid(
    exporter: &dyn TelemetryExporter,
    probe: &dyn ServiceProbe,
) {
    let id = new_installation_id();
    let first = register(exporter, &id).await;
    let second = register(exporter, &id).await;
    assert_ne!(
        first.cert_pem, second.cert_pem,
        "renewal issues a new certificate"
    );
    exporter
        .export(&second, &sample_batch("renewed"))
        .await
        .expect("export with the renewed certificate");
    exporter
        .export(&first, &sample_batch("older"))
        .await
        .expect("export with the older, still valid certificate");
    assert_eq!(probe.arrived(&id).await.logs.len(), 4, "both exports arrived");
}

/// After a revocation an export is [`ExportError::Revoked`]; registering again gives an
/// identity that works.
pub async fn a_revoked_identity_is_revoked_until_registered_again(
    exporter: &dyn TelemetryExporter,
    probe: &dyn ServiceProbe,
) {
    let id = new_installation_id();
    let identity = register(exporter, &id).await;
    exporter
        .export(&identity, &sample_batch("before"))
        .await
        .expect("export before the revocation");
    probe.revoke(&id).await;
    let after = exporter.export(&identity, &sample_batch("after")).await;
    assert_eq!(
        after,
        Err(ExportError::Revoked),
        "export with a revoked certificate"
    );
    let renewed = register(exporter, &id).await;
    exporter
        .export(&renewed, &sample_batch("renewed"))
        .await
        .expect("export after registering again");
    let messages: Vec<String> = probe
        .arrived(&id)
        .await
        .logs
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(
        !messages.iter().any(|m| m.starts_with("after")),
        "the revoked export was not recorded: {messages:?}"
    );
    assert!(messages.iter().any(|m| m.starts_with("renewed")), "{messages:?}");
}

/// While the service is down, exports and registrations are [`ExportError::Unavailable`];
/// then they work again.
pub async fn a_down_service_is_unavailable(exporter: &dyn TelemetryExporter, probe: &dyn ServiceProbe) {
    let id = new_installation_id();
    let identity = register(exporter, &id).await;
    probe.set_down(true).await;
    let export = exporter.export(&identity, &sample_batch("down")).await;
    let (req, _key) = registration(&new_installation_id());
    let registration = exporter.register(&req).await;
    probe.set_down(false).await;
    assert!(
        matches!(export, Err(ExportError::Unavailable(_))),
        "export while down: {export:?}"
    );
    assert!(
        matches!(registration, Err(ExportError::Unavailable(_))),
        "registration while down: {registration:?}"
    );
    exporter
        .export(&identity, &sample_batch("up"))
        .await
        .expect("export once up again");
}

/// A CSR that does not parse, a CSR whose CN is not the installation id, and an installation
/// id that is not a UUID are [`ExportError::Refused`].
pub async fn bad_registrations_are_refused(exporter: &dyn TelemetryExporter) {
    let id = new_installation_id();
    let (mut garbage, _key) = registration(&id);
    garbage.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n".into();
    let (mut other_cn, _key) = registration(&id);
    other_cn.csr_pem = KeyAndCsr::generate(&new_installation_id()).expect("key").csr_pem;
    let (not_uuid, _key) = registration("not-a-uuid");
    for (what, req) in [
        ("a CSR that does not parse", garbage),
        ("a CSR for another installation", other_cn),
        ("an installation id that is not a UUID", not_uuid),
    ] {
        let result = exporter.register(&req).await;
        assert!(
            matches!(result, Err(ExportError::Refused(_))),
            "{what}: {result:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::MemoryExporter;

    #[tokio::test]
    async fn memory_exporter_conforms() {
        let exporter = MemoryExporter::new();
        run_all(&exporter, &exporter).await;
    }

    #[test]
    fn installation_ids_are_v4_uuids() {
        let id = new_installation_id();
        assert!(crate::support::memory::is_uuid(&id), "{id}");
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_installation_id());
    }
}
