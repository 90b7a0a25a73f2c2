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

/// Two ready shoots in a simulated project and a provider that can reach them.
async fn simulated_shoots() -> (
    pxb_tests::sim::Fleet,
    std::sync::Arc<pxb_gardener::GardenerProvider>,
    Vec<pxb_core::cluster::ClusterInfo>,
) {
    use pxb_core::cluster::ClusterProvider as _;
    let fleet = pxb_tests::sim::Fleet::start(pxb_tests::sim::FleetConfig::default()).expect("simulator");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "shoot", 2).expect("shoots");
    let token = fleet
        .add_service_account("dev", "pxb", pxb_tests::sim::ProjectRole::Admin)
        .expect("sa");
    let provider = pxb_gardener::GardenerProvider::connect(pxb_gardener::GardenerConfig::new(
        pxb_gardener::GardenAuth::Kubeconfig(fleet.garden_kubeconfig(&token)),
        "dev",
    ))
    .await
    .expect("provider");
    let clusters = provider.discover().await.expect("discover");
    (fleet, provider, clusters)
}

async fn shoot_cluster(
    provider: &pxb_gardener::GardenerProvider,
    info: &pxb_core::cluster::ClusterInfo,
) -> KubeCluster {
    use pxb_core::cluster::ClusterProvider as _;
    let access = provider.access(&info.id).await.expect("access");
    KubeCluster::new(pxb_gardener::kube_client(&access).expect("client"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_cluster_conforms_against_a_simulated_shoot() {
    let (_fleet, provider, clusters) = simulated_shoots().await;
    let cluster = shoot_cluster(&provider, &clusters[0]).await;
    conformance::ensure_namespace(&cluster, "conformance").await;
    conformance::run_all(&cluster, "conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_move_between_simulated_shoots() {
    let (_fleet, provider, clusters) = simulated_shoots().await;
    let src = shoot_cluster(&provider, &clusters[0]).await;
    let dst = shoot_cluster(&provider, &clusters[1]).await;
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
