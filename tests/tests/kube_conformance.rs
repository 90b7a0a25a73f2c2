//! The Kubernetes API conformance suite ([`pxb_tests::kube_conformance`]) against the real
//! kube-apiserver (one shared server, a namespace per test) and against a simulated shoot (a
//! fleet per test), check by check; plus what only one side can show: the namespace controller's
//! part of a namespace deletion, and `kubectl get pxb -A` on the real server.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DynamicObject, PostParams};
use pxb_tests::kube_conformance as suite;
use pxb_tests::real;
use pxb_tests::sim::{Fleet, FleetConfig, ShootSpec};
use serde_json::json;

/// A simulated shoot's admin client (and its fleet, which must outlive it).
async fn sim_client() -> (Fleet, kube::Client) {
    let fleet = Fleet::start(FleetConfig {
        bookmark_interval: Duration::from_secs(1),
        ..FleetConfig::default()
    })
    .expect("simulator starts");
    fleet.add_project("dev").expect("project");
    fleet.add_shoot("dev", ShootSpec::new("s1")).expect("shoot");
    let client = pxb_daemon::sim::shoot_client(&fleet, "dev", "s1")
        .await
        .expect("shoot client");
    (fleet, client)
}

/// The real server these checks share (one namespace each), compacting etcd every 5 s so that
/// expiry (410) shows within a test.
fn compacting() -> &'static real::RealCluster {
    static CLUSTER: std::sync::OnceLock<real::RealCluster> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        real::RealCluster::start_compacting_every(std::time::Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("the real cluster did not start: {e:#}"))
    })
}

/// The shared real server's admin client.
async fn real_client() -> kube::Client {
    let cluster = tokio::task::spawn_blocking(compacting)
        .await
        .expect("real cluster");
    real::admin_client(cluster).await.expect("admin client")
}

macro_rules! both {
    ($check:ident, $sim:ident, $real:ident, $ns:literal) => {
        #[tokio::test]
        async fn $sim() {
            let (_fleet, client) = sim_client().await;
            suite::$check(&client, $ns).await;
        }

        #[tokio::test]
        async fn $real() {
            let client = real_client().await;
            suite::$check(&client, $ns).await;
        }
    };
}

both!(
    create_get_and_conflicts,
    sim_create_get_and_conflicts,
    real_create_get_and_conflicts,
    "crud"
);
both!(paging, sim_paging, real_paging, "paging");
both!(selectors, sim_selectors, real_selectors, "selectors");
both!(patches, sim_patches, real_patches, "patches");
both!(
    server_side_apply,
    sim_server_side_apply,
    real_server_side_apply,
    "ssa"
);
both!(
    status_subresource,
    sim_status_subresource,
    real_status_subresource,
    "status"
);
both!(
    finalizers_and_deletion,
    sim_finalizers_and_deletion,
    real_finalizers_and_deletion,
    "finalizers"
);
both!(watches, sim_watches, real_watches, "watch");
both!(
    name_and_label_validation,
    sim_name_and_label_validation,
    real_name_and_label_validation,
    "names"
);
both!(tables, sim_tables, real_tables, "tables");

/// The simulator acts as the namespace controller: once the last finalizer of its content is
/// gone, a deleted namespace is gone with its content.
#[tokio::test]
async fn sim_namespace_deletion() {
    let (_fleet, client) = sim_client().await;
    suite::namespace_deletion(&client, "gone").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    assert!(
        matches!(nss.get("gone").await, Err(kube::Error::Api(s)) if s.code == 404),
        "the namespace is gone with its content"
    );
}

/// The real fixture has no namespace controller: the deleted namespace stays Terminating with
/// its content (which is not even marked for deletion) until someone finalizes it.
#[tokio::test]
async fn real_namespace_deletion() {
    let client = real_client().await;
    suite::namespace_deletion(&client, "gone").await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let n = nss.get("gone").await.expect("still there");
    assert_eq!(n.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    let held = Api::<ConfigMap>::namespaced(client.clone(), "gone")
        .get("held")
        .await
        .expect("content stays");
    assert!(held.metadata.deletion_timestamp.is_none());
}

/// The whole suite, in one simulated shoot (the checks share one server, as on the real one).
#[tokio::test]
async fn sim_run_all() {
    let (_fleet, client) = sim_client().await;
    suite::run_all(&client, "all").await;
}

/// `kubectl get pxb -A` (the `pxb` category of pxb's CRDs) lists a BackupLocation on the real
/// server after `install_pxb`.
#[tokio::test]
async fn real_kubectl_get_pxb_category() {
    let cluster = tokio::task::spawn_blocking(compacting)
        .await
        .expect("real cluster");
    tokio::task::spawn_blocking(move || real::install_pxb(cluster))
        .await
        .expect("join")
        .expect("install pxb");
    let client = real::admin_client(cluster).await.expect("admin client");
    suite::ensure_namespace(&client, "category").await;
    let locations: Api<DynamicObject> =
        Api::namespaced_with(client, "category", &suite::backup_locations_resource());
    let obj = json!({"apiVersion": "pxb.io/v1alpha1", "kind": "BackupLocation", "metadata": {"name": "primary"},
                     "spec": {"provider": "file", "container": "/backups"}});
    locations
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).expect("location"),
        )
        .await
        .expect("BackupLocation");
    // A discovery cache of its own: one shared with earlier kubectl runs may predate the CRDs.
    let cache = tempfile::tempdir().expect("cache dir");
    let cache = cache.path().to_string_lossy().into_owned();
    let out = real::kubectl(
        cluster,
        &cluster.admin_kubeconfig(),
        &["--cache-dir", &cache, "get", "pxb", "-A"],
    );
    let line = out
        .lines()
        .find(|l| l.contains("backuplocation.pxb.io/primary"))
        .unwrap_or_else(|| panic!("kubectl get pxb -A lists the BackupLocation:\n{out}"));
    assert!(line.starts_with("category "), "{line}");
    assert!(out.contains("NAMESPACE") && out.contains("PROVIDER"), "{out}");
    assert!(line.contains("file"), "{line}");
}
