//! `KubeCluster` through the real kube client against the Kubernetes API façade of the test
//! harness: the resource seams' conformance suite, and a resource backup and restore between two
//! clusters.

use std::sync::Arc;

use pxb_core::resources::{
    InMemoryCluster, ResourceSelector, ResourceSource, RestoreOptions, backup_resources, conformance,
    restore_resources, strip_server_fields, well_known_api_resources,
};
use pxb_core::{InMemory, ObjectPath};
use pxb_daemon::kube_cluster::KubeCluster;
use pxb_tests::kubeapi::FakeApiServer;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_cluster_conforms() {
    let server = FakeApiServer::start(Arc::new(InMemoryCluster::new())).expect("server");
    let cluster = KubeCluster::new(server.client().expect("client"));
    conformance::ensure_namespace(&cluster, "conformance").await;
    conformance::run_all(&cluster, "conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_move_between_clusters_through_kube() {
    let source = Arc::new(InMemoryCluster::new());
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop", "uid": "x"}, "data": {"a": "b"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"replicas": 3}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": "shop"}, "data": {}}),
    ] {
        source.seed(obj).expect("seed");
    }
    for i in 0..700 {
        source.seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("bulk-{i}"), "namespace": "shop"}})).expect("seed");
    }
    let (src_server, dst_server) = (
        FakeApiServer::start(source.clone()).expect("server"),
        FakeApiServer::start(Arc::new(InMemoryCluster::new())).expect("server"),
    );
    let (src, dst) = (
        KubeCluster::new(src_server.client().expect("c")),
        KubeCluster::new(dst_server.client().expect("c")),
    );
    let store = InMemory::new();
    let path = ObjectPath::parse("b/resources").expect("path");
    let selector = ResourceSelector {
        namespaces: vec!["shop".into()],
        ..ResourceSelector::default()
    };
    let stats = backup_resources(&src, &selector, &store, &path)
        .await
        .expect("backup through kube");
    assert_eq!(stats.objects, 703, "{stats:?}");
    let report = restore_resources(&store, &path, &dst, &RestoreOptions::default())
        .await
        .expect("restore through kube");
    assert_eq!(report.failed, 0, "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(report.created, 703);
    let deployments = well_known_api_resources()
        .into_iter()
        .find(|r| r.kind == "Deployment")
        .expect("kind");
    let mut got = ResourceSource::get(&dst, &deployments, Some("shop"), "web")
        .await
        .expect("get")
        .expect("restored");
    let mut want = ResourceSource::get(&src, &deployments, Some("shop"), "web")
        .await
        .expect("get")
        .expect("source");
    strip_server_fields(&deployments, &mut got);
    strip_server_fields(&deployments, &mut want);
    assert_eq!(got, want);
}
