//! The support channel of a real `pxb-server`, switched by a ConfigMap on the upstream
//! kube-apiserver and talking to the stand-in telemetry service over mutual TLS: nothing leaves
//! the server while it is off (zero bytes reach the service), a patch turns it on within seconds
//! (registration with the org ↔ customer mapping, then uploads of health metrics and cluster ids,
//! nothing of the tenants'), another turns it off again, and a restarted server uses its sealed
//! certificate instead of registering again. The server reads the ConfigMap as a user that may
//! only get, list and watch that one object.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use pxb_core::catalog::records::{
    ClusterRecord, ClusterSelector, ClusterState, ClusterStatus, LocationRecord, Org, SupportInstallation,
};
use pxb_core::cluster::StaticClusters;
use pxb_daemon::server::config::ServerConfig;
use pxb_daemon::server::{Daemon, ServerBuilder, SupportToggle};
use pxb_harness::telemetry_service::TelemetryService;

const NS: &str = "pxb-support";
const CM: &str = "pxb-telemetry-config";

fn meta(name: &str) -> kube::api::ObjectMeta {
    kube::api::ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        ..Default::default()
    }
}

/// `enabled` of the ConfigMap.
async fn switch(admin: &kube::Client, on: bool) {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    let patch = serde_json::json!({"data": {"enabled": if on { "true" } else { "false" }}});
    api.patch(CM, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch the ConfigMap");
}

async fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_server(config: &ServerConfig, key: &str, toggle: SupportToggle) -> Daemon {
    ServerBuilder::new(config.clone())
        .secrets_key(key)
        .support_toggle(toggle)
        .build()
        .await
        .expect("server")
        .spawn()
        .expect("spawn")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_channel_follows_its_configmap_and_sends_nothing_while_off() {
    let cluster = pxb_tests::real::shared();
    let admin = pxb_tests::real::admin_client(cluster).await.expect("admin");
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: kube::api::ObjectMeta {
                    name: Some(NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), NS);
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: meta(CM),
            data: Some([("enabled".to_owned(), "false".to_owned())].into()),
            ..Default::default()
        },
    )
    .await
    .expect("ConfigMap");
    // The server's own identity may read that one ConfigMap, nothing else.
    Api::<Role>::namespaced(admin.clone(), NS)
        .create(
            &PostParams::default(),
            &Role {
                metadata: meta("pxb-server-telemetry"),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["configmaps".into()]),
                    resource_names: Some(vec![CM.into()]),
                    verbs: vec!["get".into(), "list".into(), "watch".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("role");
    Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .create(
            &PostParams::default(),
            &RoleBinding {
                metadata: meta("pxb-server-telemetry"),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "pxb-server-telemetry".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "User".into(),
                    name: "pxb-server".into(),
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .expect("binding");
    let server_client =
        pxb_tests::real::client(&cluster.kubeconfig_for("pxb-server", &[]).expect("kubeconfig"))
            .await
            .expect("client");
    let toggle = SupportToggle::ConfigMap {
        client: server_client,
        namespace: NS.into(),
        name: CM.into(),
    };

    let service = TelemetryService::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = dir.path().join("service-ca.pem");
    std::fs::write(&ca, service.ca_pem()).expect("ca");
    let mut config = ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    config.catalog.path = dir.path().join("catalog.db").display().to_string();
    config.telemetry.support.endpoint = service.endpoint();
    config.telemetry.support.ca_file = ca.display().to_string();
    config.telemetry.support.upload_interval_secs = 10;
    config
        .telemetry
        .support
        .customers
        .insert("acme".into(), "customer-4711".into());
    let key_bytes: [u8; 32] = rand::random();
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key_bytes);

    let daemon = start_server(&config, &key, toggle.clone()).await;
    let server = daemon.server.clone();
    server
        .create_org(Org {
            id: "acme".into(),
            display_name: "Acme".into(),
            ..Org::default()
        })
        .await
        .expect("org");
    let cluster_id = "6f1c2a3b-9d8e-4f70-a1b2-c3d4e5f60718";
    server
        .add_cluster(
            ClusterRecord {
                org: "acme".into(),
                id: cluster_id.into(),
                name: "tenant-secret-shoot".into(),
                source: "imported".into(),
                status: ClusterStatus {
                    state: ClusterState::Ready,
                    ..ClusterStatus::default()
                },
                ..ClusterRecord::default()
            },
            Arc::new(StaticClusters::new()),
        )
        .await
        .expect("cluster");
    server
        .add_cluster(
            ClusterRecord {
                org: "acme".into(),
                id: "imported-tenant-edge".into(),
                name: "tenant-edge".into(),
                source: "imported".into(),
                ..ClusterRecord::default()
            },
            Arc::new(StaticClusters::new()),
        )
        .await
        .expect("an imported cluster");
    server
        .create_location(
            LocationRecord {
                org: "acme".into(),
                name: "tenant-private-location".into(),
                provider: "azure".into(),
                account: Some("tenantstorage".into()),
                container: "tenant-container".into(),
                client_id: Some("00000000-0000-0000-0000-000000000001".into()),
                tenant_id: Some("00000000-0000-0000-0000-000000000002".into()),
                clusters: ClusterSelector {
                    all: true,
                    ..ClusterSelector::default()
                },
                ..LocationRecord::default()
            },
            None,
        )
        .await
        .expect("location");

    // Off: not one byte, not one connection.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((service.bytes_received(), service.connections()), (0, 0));
    let support = daemon.support.as_ref().expect("the channel exists");
    assert!(!support.status().enabled);

    // On: registration and uploads within seconds.
    switch(&admin, true).await;
    wait("registration", Duration::from_secs(30), || {
        service.registrations().len() == 1
    })
    .await;
    assert!(
        service.wait_for_uploads(1, Duration::from_secs(30)).await,
        "an upload"
    );
    let reg = &service.registrations()[0];
    assert_eq!(
        reg.orgs
            .iter()
            .map(|o| (o.org.as_str(), o.customer.as_str()))
            .collect::<Vec<_>>(),
        [("acme", "customer-4711")]
    );
    let stored = server
        .catalog()
        .get::<SupportInstallation>("", SupportInstallation::ID)
        .await
        .expect("installation")
        .value;
    assert_eq!(stored.installation_id, reg.installation_id);
    let sealed = stored.identity.expect("the certificate is kept, sealed");
    assert!(!sealed.ciphertext.contains("PRIVATE KEY"));
    wait("the cluster ids arrive", Duration::from_secs(30), || {
        let ids = service.cluster_uuids();
        ids.len() == 2
            && ids.contains(&(cluster_id.to_owned(), "acme".to_owned()))
            && ids.iter().any(|(id, org)| id.starts_with("h-") && org == "acme")
    })
    .await;
    let exposition = reqwest::get(format!("http://{}/metrics", daemon.addr))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    for line in [
        "pxb_server_support_enabled 1",
        "pxb_server_support_registered 1",
        "pxb_server_support_registrations_total 1",
    ] {
        assert!(
            exposition.lines().any(|l| l == line),
            "{line} not in:\n{exposition}"
        );
    }
    pxb_tests::promtool_check_metrics(&exposition).expect("promtool");
    let metrics = service.metrics();
    assert!(
        metrics.iter().all(|m| m.client_cn == reg.installation_id),
        "uploads with the registered certificate"
    );
    let sent = service.all_strings().join("\n");
    assert!(sent.contains("pxb.server.clusters"), "{sent}");
    for private in [
        "tenant-secret-shoot",
        "tenant-edge",
        "tenant-private-location",
        "tenant-container",
        "tenantstorage",
        key.as_str(),
    ] {
        assert!(!sent.contains(private), "{private} was sent:\n{sent}");
    }

    // Off again: nothing more arrives, also past an upload interval.
    switch(&admin, false).await;
    wait("the channel is off", Duration::from_secs(30), || {
        !support.status().enabled
    })
    .await;
    let (bytes, connections) = (service.bytes_received(), service.connections());
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        (service.bytes_received(), service.connections()),
        (bytes, connections),
        "nothing leaves the server once it is off"
    );
    daemon.shutdown().await;

    // A restart keeps the certificate (sealed in the catalog): on again, it uploads without
    // registering a second time.
    let uploads = service.metrics().len();
    let daemon = start_server(&config, &key, toggle).await;
    switch(&admin, true).await;
    wait("an upload after the restart", Duration::from_secs(30), || {
        service.metrics().len() > uploads
    })
    .await;
    assert_eq!(service.registrations().len(), 1, "no second registration");
    switch(&admin, false).await;
    daemon.shutdown().await;
}
