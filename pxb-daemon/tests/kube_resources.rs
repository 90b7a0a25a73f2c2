//! `KubeCluster` through the real kube client against simulated shoots (HTTPS, per-shoot CA,
//! client certificates issued by the simulated garden and obtained through `pxb-gardener`): the
//! resource seams' conformance suite, and a resource backup and restore between two shoots.

use pxb_core::resources::{
    InMemoryCluster, ResourceSelector, ResourceSource, RestoreOptions, backup_resources, conformance,
    restore_resources, strip_server_fields, well_known_api_resources,
};
use pxb_core::{InMemory, ObjectPath};
use pxb_daemon::kube_cluster::KubeCluster;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_cluster_conforms_against_a_simulated_shoot() {
    let shoots = pxb_daemon::sim::ShootFixture::start(1)
        .await
        .expect("simulated shoot");
    let cluster = KubeCluster::new(shoots.client(0).await.expect("client"));
    conformance::ensure_namespace(&cluster, "conformance").await;
    conformance::run_all(&cluster, "conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_move_between_simulated_shoots() {
    let shoots = pxb_daemon::sim::ShootFixture::start(2)
        .await
        .expect("simulated shoots");
    let src = KubeCluster::new(shoots.client(0).await.expect("client"));
    let dst = KubeCluster::new(shoots.client(1).await.expect("client"));
    let seed = InMemoryCluster::new();
    seed.seed(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .expect("seed");
    seed.seed(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"replicas": 3}}))
        .expect("seed");
    for i in 0..700 {
        seed.seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("bulk-{i}"), "namespace": "shop", "labels": {"n": i.to_string()}}, "data": {"i": i.to_string()}}))
            .expect("seed");
    }
    // Load the source shoot through its API, then back up from it and restore into the other.
    let staging = InMemory::new();
    let staged = ObjectPath::parse("seed/resources").expect("path");
    let all = ResourceSelector {
        namespaces: vec!["shop".into()],
        ..ResourceSelector::default()
    };
    backup_resources(&seed, &all, &staging, &staged)
        .await
        .expect("stage");
    let loaded = restore_resources(&staging, &staged, &src, &RestoreOptions::default())
        .await
        .expect("load the source shoot");
    assert_eq!((loaded.created, loaded.failed), (702, 0));

    let store = InMemory::new();
    let path = ObjectPath::parse("b/resources").expect("path");
    let stats = backup_resources(&src, &all, &store, &path)
        .await
        .expect("backup from a shoot");
    assert_eq!(stats.objects, 702, "{stats:?}");
    let report = restore_resources(&store, &path, &dst, &RestoreOptions::default())
        .await
        .expect("restore into another shoot");
    assert_eq!(report.failed, 0, "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(report.created, 702);
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
