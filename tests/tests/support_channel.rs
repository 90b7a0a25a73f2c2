//! The support channel (issue 17) against the stand-in telemetry service over real HTTPS:
//! `OtlpExporter` runs the exporter conformance suite, and one `SupportChannel` runs end to end
//! (off: not one byte; on: registration, then metrics, logs and clusters; off again: silence).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use pxb_harness::telemetry_service::{TelemetryService, TelemetryServiceOptions};
use pxb_telemetry::support::conformance::{self, Arrived, ArrivedLog, ArrivedMetric, ServiceProbe};
use pxb_telemetry::support::{
    CLUSTER_METRIC, ClusterRef, CredentialStore, ExportError, MemoryCredentialStore, MetricPoint, OrgMapping,
    OtlpExporter, SupportChannel, SupportSources, TelemetryExporter,
};
use tokio::sync::watch;

/// The stand-in seen through the conformance suite's probe.
struct Probe<'a>(&'a TelemetryService);

fn string_attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

#[async_trait]
impl ServiceProbe for Probe<'_> {
    async fn arrived(&self, installation_id: &str) -> Arrived {
        let mut arrived = Arrived::default();
        for upload in self.0.metrics() {
            if upload.client_cn != installation_id {
                continue;
            }
            let metrics = upload
                .request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics);
            for m in metrics {
                let points = match &m.data {
                    Some(metric::Data::Gauge(g)) => &g.data_points,
                    Some(metric::Data::Sum(s)) => &s.data_points,
                    other => panic!("{}: unexpected metric data {other:?}", m.name),
                };
                for p in points {
                    let attributes = string_attrs(&p.attributes);
                    if m.name == CLUSTER_METRIC {
                        arrived.clusters.push(ClusterRef {
                            uuid: attributes["pxb.cluster.uuid"].clone(),
                            org: attributes["pxb.org"].clone(),
                        });
                        continue;
                    }
                    let value = match p.value {
                        Some(number_data_point::Value::AsDouble(v)) => v,
                        Some(number_data_point::Value::AsInt(v)) => v as f64,
                        None => panic!("{}: a point without a value", m.name),
                    };
                    arrived.metrics.push(ArrivedMetric {
                        name: m.name.clone(),
                        value,
                        attributes,
                    });
                }
            }
        }
        for upload in self.0.logs() {
            if upload.client_cn != installation_id {
                continue;
            }
            let records = upload
                .request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records);
            for r in records {
                let message = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => panic!("a log body that is not a string: {other:?}"),
                };
                arrived.logs.push(ArrivedLog {
                    severity: r.severity_text.clone(),
                    message,
                });
            }
        }
        arrived
    }

    async fn revoke(&self, installation_id: &str) {
        self.0.revoke(installation_id);
    }

    async fn set_down(&self, down: bool) {
        self.0.set_down(down);
    }
}

fn exporter(service: &TelemetryService) -> OtlpExporter {
    OtlpExporter::builder(service.endpoint())
        .ca_pem(service.ca_pem())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("exporter")
}

#[tokio::test]
async fn otlp_exporter_conforms_against_the_stand_in_service() {
    let service = TelemetryService::start().await;
    conformance::run_all(&exporter(&service), &Probe(&service)).await;
}

#[tokio::test]
async fn a_registration_token_is_sent_and_without_it_registration_is_refused() {
    let service = TelemetryService::start_with(TelemetryServiceOptions {
        registration_token: Some("reg-token-1".into()),
        ..TelemetryServiceOptions::default()
    })
    .await;
    let id = conformance::new_installation_id();
    let (req, _key) = conformance::registration(&id);
    let without = exporter(&service).register(&req).await;
    assert!(matches!(without, Err(ExportError::Refused(_))), "{without:?}");
    let wrong = OtlpExporter::builder(service.endpoint())
        .ca_pem(service.ca_pem())
        .registration_token("other")
        .build()
        .expect("exporter")
        .register(&req)
        .await;
    assert!(matches!(wrong, Err(ExportError::Refused(_))), "{wrong:?}");
    let with = OtlpExporter::builder(service.endpoint())
        .ca_pem(service.ca_pem())
        .registration_token("reg-token-1")
        .build()
        .expect("exporter");
    with.register(&req).await.expect("registration with the token");
    assert_eq!(service.registrations().len(), 1);
}

#[tokio::test]
async fn a_service_the_client_does_not_trust_gets_no_registration() {
    let service = TelemetryService::start().await;
    let other_ca = TelemetryService::start().await.ca_pem();
    let untrusting = OtlpExporter::builder(service.endpoint())
        .ca_pem(other_ca)
        .build()
        .expect("exporter");
    let (req, _key) = conformance::registration(&conformance::new_installation_id());
    let result = untrusting.register(&req).await;
    assert!(matches!(result, Err(ExportError::Unavailable(_))), "{result:?}");
    assert!(service.registrations().is_empty());
}

/// Sources of a small installation: one org, one cluster, one health metric.
struct Sources;

#[async_trait]
impl SupportSources for Sources {
    async fn metrics(&self) -> Vec<MetricPoint> {
        vec![MetricPoint::gauge("pxb.backups.running", 2.0).with_attribute("org", "org-e2e")]
    }
    async fn clusters(&self) -> Vec<ClusterRef> {
        vec![ClusterRef {
            uuid: "2b7e1516-28ae-4d2a-abf7-158809cf4f3c".into(),
            org: "org-e2e".into(),
        }]
    }
    async fn orgs(&self) -> Vec<OrgMapping> {
        vec![OrgMapping {
            org: "org-e2e".into(),
            customer: "customer-42".into(),
        }]
    }
}

fn redact(line: &str) -> Cow<'_, str> {
    Cow::Owned(line.replace("hunter2", "[REDACTED]"))
}

async fn eventually(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_bodies(service: &TelemetryService) -> Vec<String> {
    service
        .logs()
        .iter()
        .flat_map(|u| u.request.resource_logs.clone())
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .filter_map(|r| match r.body?.value? {
            any_value::Value::StringValue(s) => Some(s),
            _ => None,
        })
        .collect()
}

/// Off: not a byte reaches the service. On: registration, then uploads of metrics, clusters and
/// the process' own (redacted) log records through `logs::Settings`' subscriber. Revoked: it
/// registers again. Off again: the byte count stops growing.
#[tokio::test]
async fn the_support_channel_end_to_end() {
    let service = TelemetryService::start().await;
    let id = conformance::new_installation_id();
    // The process' logging as `logs::init` sets it up (thread-local here; this test's runtime
    // is single-threaded, so the channel's task and the test log on this thread).
    let subscriber = pxb_telemetry::Settings::default()
        .redact_with(redact)
        .subscriber(std::io::sink)
        .expect("subscriber");
    let _logging = tracing::subscriber::set_default(subscriber);
    let store = Arc::new(MemoryCredentialStore::default());
    let (enabled, enabled_rx) = watch::channel(false);
    let handle = SupportChannel::builder(
        id.clone(),
        Arc::new(exporter(&service)),
        Arc::new(Sources),
        Arc::clone(&store) as Arc<dyn CredentialStore>,
        enabled_rx,
    )
    .interval(Duration::from_secs(1))
    .spawn();

    tracing::warn!(target: "pxb_daemon::server", "e2e-before: logged while off");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        (service.bytes_received(), service.connections()),
        (0, 0),
        "off: nothing leaves the process"
    );

    enabled.send(true).expect("enable");
    eventually(
        "the registration and a first upload",
        Duration::from_secs(20),
        || !service.metrics().is_empty(),
    )
    .await;
    tracing::warn!(target: "pxb_daemon::server", user = "ops", "e2e-on: password hunter2 rejected");
    tracing::info!(target: "hyper::client", "e2e-on: library info is not sent");
    eventually("the log record", Duration::from_secs(20), || {
        log_bodies(&service).iter().any(|b| b.starts_with("e2e-on"))
    })
    .await;

    let registrations = service.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    assert_eq!(registrations[0].installation_id, id);
    assert_eq!(
        (
            registrations[0].orgs[0].org.as_str(),
            registrations[0].orgs[0].customer.as_str()
        ),
        ("org-e2e", "customer-42")
    );
    let stored = store.get().expect("the identity is stored");
    assert_eq!(stored.installation_id, id);
    assert!(
        service.metrics().iter().all(|u| u.client_cn == id),
        "uploads carry the installation's certificate"
    );
    let resource = string_attrs(
        &service.metrics()[0].request.resource_metrics[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes,
    );
    assert_eq!(resource["service.name"], "pxb-server");
    assert_eq!(resource["pxb.installation.id"], id);
    assert_eq!(
        service.cluster_uuids(),
        [(
            "2b7e1516-28ae-4d2a-abf7-158809cf4f3c".to_owned(),
            "org-e2e".to_owned()
        )]
    );
    let arrived = Probe(&service).arrived(&id).await;
    assert!(
        arrived
            .metrics
            .iter()
            .any(|m| m.name == "pxb.backups.running" && m.value == 2.0 && m.attributes["org"] == "org-e2e"),
        "{arrived:?}"
    );
    let bodies = log_bodies(&service);
    assert!(
        bodies.contains(&"e2e-on: password [REDACTED] rejected user=…".to_owned()),
        "{bodies:?}"
    );
    assert!(
        !bodies.iter().any(|b| b.starts_with("e2e-before")),
        "nothing captured while off: {bodies:?}"
    );
    assert!(
        !bodies.iter().any(|b| b.contains("library info")),
        "INFO of other targets is not sent: {bodies:?}"
    );
    assert!(
        !service.all_strings().iter().any(|s| s.contains("hunter2")),
        "the secret never left the process"
    );

    // Revoked: the channel registers again and keeps uploading.
    service.revoke(&id);
    let uploads = service.metrics().len();
    eventually(
        "a second registration and uploads after it",
        Duration::from_secs(20),
        || service.registrations().len() == 2 && service.metrics().len() > uploads + 1,
    )
    .await;
    assert_ne!(store.get().expect("stored").cert_pem, stored.cert_pem);

    // Off again: the byte count stops growing.
    let mut status = handle.subscribe();
    enabled.send(false).expect("disable");
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| !s.enabled))
        .await
        .expect("the channel turns off")
        .expect("status");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (bytes, connections) = (service.bytes_received(), service.connections());
    tracing::warn!(target: "pxb_daemon::server", "e2e-after: logged while off again");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        (service.bytes_received(), service.connections()),
        (bytes, connections),
        "off again: nothing more leaves the process"
    );
    assert!(!log_bodies(&service).iter().any(|b| b.starts_with("e2e-after")));
    handle.stop().await;
}
