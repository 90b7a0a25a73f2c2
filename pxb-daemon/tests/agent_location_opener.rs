//! The agent opens its locations through the `LocationOpener` seam: built with the in-memory
//! twin (`MemoryLocations`), an `azure` location is validated, backed up to and read from memory,
//! with no Azure account, identity or network behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use pxb_core::backup::{BackupId, BackupKind, BackupStatus, Repository};
use pxb_daemon::agent::opener::MemoryLocations;
use pxb_daemon::agent::volumes::MemoryVolumes;
use pxb_daemon::agent::{AgentBuilder, AgentConfig};
use pxb_daemon::crd::{
    ApplicationBackup, ApplicationBackupPhase, ApplicationBackupSpec, BackupLocation, BackupLocationSpec,
    LocationValidationPhase,
};
use pxb_daemon::sim::{ShootFixture, install_pxb};
use serde_json::json;

async fn wait_for<K>(api: &Api<K>, name: &str, ok: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let obj = api.get(name).await.expect("get");
        if ok(&obj) {
            return obj;
        }
        assert!(Instant::now() < deadline, "{name}: last state {obj:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(client: &kube::Client, namespace: Option<&str>, obj: serde_json::Value) {
    let obj: kube::api::DynamicObject = serde_json::from_value(obj).expect("object");
    let gvk = kube::api::GroupVersionKind::try_from(obj.types.as_ref().expect("types")).expect("gvk");
    let (ar, _) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .expect("discover");
    let api: Api<kube::api::DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.create(&PostParams::default(), &obj).await.expect("create");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_the_memory_twin_backs_up_into_memory() {
    let shoots = ShootFixture::start(1).await.expect("simulated shoot");
    let client = shoots.client(0).await.expect("client");
    install_pxb(&client).await.expect("install pxb");
    create(
        &client,
        None,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
    )
    .await;
    create(
        &client,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"},
               "data": {"color": "blue"}}),
    )
    .await;
    create(
        &client,
        Some("shop"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data", "namespace": "shop"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("orders.log"), "order 1 shipped\n".repeat(1000)).expect("write");
    let volumes = Arc::new(MemoryVolumes::new(tmp.path().join("restores")));
    volumes.insert("shop", "data", &data);

    let twin = MemoryLocations::new();
    let mut config = AgentConfig::default();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.restore_root = tmp.path().join("restores");
    config.cluster_name = Some("shoot-00000".into());
    let agent = AgentBuilder::new(config)
        .kube_client(client.clone())
        .volume_driver(volumes)
        .location_opener(Arc::new(twin.clone()))
        .spawn()
        .await
        .expect("spawn");

    // An Azure location with Workload Identity and no identity to use: the default opener would
    // fail its authenticate step; the twin opens it in memory, and it passes every step.
    let spec = BackupLocationSpec {
        provider: "azure".into(),
        account: Some("pxbstore".into()),
        container: "backups".into(),
        prefix: Some("team-a".into()),
        ..BackupLocationSpec::default()
    };
    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
    locations
        .create(
            &PostParams::default(),
            &BackupLocation::new("primary", spec.clone()),
        )
        .await
        .expect("location");
    let loc = wait_for(&locations, "primary", |l| {
        l.status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.phase != LocationValidationPhase::Pending)
    })
    .await;
    let validation = loc.status.and_then(|s| s.validation).expect("validation");
    assert_eq!(
        (
            &validation.phase,
            validation.failed_step.as_deref(),
            validation.reason.as_deref()
        ),
        (&LocationValidationPhase::Valid, None, None),
        "{validation:?}"
    );
    // The validation's probe objects were written to that store and deleted again.
    let store = twin.store(&spec);
    assert!(store.is_empty(), "{store:?}");

    let backups: Api<ApplicationBackup> = Api::namespaced(client.clone(), "pxb-system");
    let backup = ApplicationBackupSpec {
        location: "primary".into(),
        namespaces: vec!["shop".into()],
        include_volumes: true,
        reclaim_policy: "Retain".into(),
        ..ApplicationBackupSpec::default()
    };
    backups
        .create(&PostParams::default(), &ApplicationBackup::new("b1", backup))
        .await
        .expect("backup");
    let done = wait_for(&backups, "b1", |b| {
        b.status.as_ref().is_some_and(|s| s.phase.is_final())
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, ApplicationBackupPhase::Success, "{status:?}");
    let id = BackupId::parse(status.backup_id.as_deref().expect("an id")).expect("id");
    agent.shutdown().await;

    // The backup is in the twin's store for that location, and only there.
    assert!(!store.is_empty(), "nothing was written to the twin");
    let repo = Repository::new(Arc::new(store));
    let manifest = repo.manifest(&id).await.expect("the backup's manifest");
    assert_eq!(
        (
            &manifest.kind,
            &manifest.status,
            manifest.cluster.as_deref(),
            &manifest.namespaces
        ),
        (
            &BackupKind::Resources,
            &BackupStatus::Completed,
            Some("shoot-00000"),
            &vec!["shop".to_owned()]
        ),
        "{manifest:?}"
    );
    assert_eq!(manifest.volumes.len(), 1, "{manifest:?}");
    let volume = repo
        .manifest(&manifest.volumes[0].backup)
        .await
        .expect("the volume backup's manifest");
    assert_eq!(
        (volume.stats.files, volume.stats.bytes),
        (1, 16_000),
        "{volume:?}"
    );
    let listed: Vec<BackupId> = repo
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert!(listed.contains(&id), "{listed:?}");
    let elsewhere = twin.store(&BackupLocationSpec {
        prefix: Some("team-b".into()),
        ..spec
    });
    assert!(elsewhere.is_empty(), "another prefix got data: {elsewhere:?}");
}
