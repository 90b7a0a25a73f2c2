//! The agent's log lines carry the span of what they are about: a location's reconcile names the
//! location, a backup's the backup and its location, a restore's the restore, the backup and the
//! location (JSON logs through pxb-telemetry, as `PXB_LOG_FORMAT=json` writes them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PostParams};
use pxb_daemon::agent::volumes::MemoryVolumes;
use pxb_daemon::agent::{AgentBuilder, AgentConfig};
use pxb_daemon::crd::{
    ApplicationBackup, ApplicationBackupSpec, ApplicationRestore, ApplicationRestoreSpec, BackupLocation,
    BackupLocationSpec,
};
use pxb_daemon::sim::{ShootFixture, install_pxb};
use serde_json::json;

/// Log lines written into a shared buffer.
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_log_in_spans_naming_their_objects() {
    // The process's only subscriber (this binary has this one test: a thread-local default
    // shared with other tests misses events whose callsite interest another test cached).
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let settings = pxb_telemetry::Settings {
        format: pxb_telemetry::LogFormat::Json,
        filter: "info".into(),
        ..pxb_telemetry::Settings::default()
    };
    let sink = buf.clone();
    let subscriber = settings
        .subscriber(move || Sink(sink.clone()))
        .expect("subscriber");
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let shoots = ShootFixture::start(1).await.expect("simulated shoot");
    let client = shoots.client(0).await.expect("client");
    install_pxb(&client).await.expect("install pxb");
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("ns"),
    )
    .await
    .expect("namespace");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "shop");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"color": "blue"}})).expect("cm"),
    )
    .await
    .expect("config map");
    let tmp = tempfile::tempdir().expect("tmp");
    let location = tmp.path().join("location");
    std::fs::create_dir_all(&location).expect("mkdir");
    let config = AgentConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        restore_root: tmp.path().join("restores"),
        ..AgentConfig::default()
    };
    let agent = AgentBuilder::new(config)
        .kube_client(client.clone())
        .volume_driver(Arc::new(MemoryVolumes::new(tmp.path().join("restores"))))
        .spawn()
        .await
        .expect("spawn");
    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
    let spec = BackupLocationSpec {
        provider: "file".into(),
        container: location.to_string_lossy().into_owned(),
        ..BackupLocationSpec::default()
    };
    locations
        .create(&PostParams::default(), &BackupLocation::new("local", spec))
        .await
        .expect("location");
    wait_for(&locations, "local", |l| {
        l.status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.phase == "Valid")
    })
    .await;
    let backups: Api<ApplicationBackup> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationBackupSpec {
        location: "local".into(),
        namespaces: vec!["shop".into()],
        reclaim_policy: "Retain".into(),
        ..ApplicationBackupSpec::default()
    };
    backups
        .create(&PostParams::default(), &ApplicationBackup::new("b1", spec))
        .await
        .expect("backup");
    let done = wait_for(&backups, "b1", |b| {
        b.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, "Success", "{status:?}");
    let id = status.backup_id.expect("id");
    let restores: Api<ApplicationRestore> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationRestoreSpec {
        location: "local".into(),
        backup_id: id.clone(),
        existing_resource_policy: "Retain".into(),
        ..ApplicationRestoreSpec::default()
    };
    restores
        .create(&PostParams::default(), &ApplicationRestore::new("r1", spec))
        .await
        .expect("restore");
    wait_for(&restores, "r1", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    agent.shutdown().await;

    let text = String::from_utf8(buf.lock().expect("logs").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not a JSON line: {l}")))
        .collect();
    // The span of the line saying `message`.
    let span_of = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .map(|l| l["span"].clone())
            .unwrap_or_else(|| panic!("no line {message:?} in:\n{text}"))
    };
    let span = span_of("location validated");
    assert_eq!(
        (&span["name"], &span["location"]),
        (&json!("reconcile"), &json!("local")),
        "{span}"
    );
    let span = span_of("backup finished");
    assert_eq!(
        (&span["backup"], &span["location"]),
        (&json!("b1"), &json!("local")),
        "{span}"
    );
    let span = span_of("restore finished");
    assert_eq!(
        (&span["restore"], &span["backup"], &span["location"]),
        (&json!("r1"), &json!(id), &json!("local")),
        "{span}"
    );
}
