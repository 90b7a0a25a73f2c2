//! The agent's log lines carry the span of what they are about: a location's reconcile names the
//! location, a backup's the backup and its location, a restore's the restore, the backup and the
//! location (JSON logs through pxb-telemetry, as `PXB_LOG_FORMAT=json` writes them), and every
//! line of the agent is inside its `agent` span naming the cluster (`PXB_CLUSTER_NAME`). Each data
//! operation has a span of its own inside them: `volume_backup` and `volume_restore` (naming the
//! namespace and the claim), `resource_backup` and `resource_restore`; so do the `pxb volume`
//! commands (`volume_backup` with the source and the tag, `volume_restore` with the backup and
//! the target), their fields plain names or `(invalid)`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim};
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
    // A claim whose data the volume twin knows.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "shop");
    claims
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
            .expect("claim"),
        )
        .await
        .expect("claim");
    let tmp = tempfile::tempdir().expect("tmp");
    let location = tmp.path().join("location");
    std::fs::create_dir_all(&location).expect("mkdir");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("orders.log"), "order 1 shipped\n".repeat(1000)).expect("write");
    let volumes = Arc::new(MemoryVolumes::new(tmp.path().join("restores")));
    volumes.insert("shop", "data", &data);
    let mut config = AgentConfig::default();
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.restore_root = tmp.path().join("restores");
    config.cluster_name = Some("prod-eu-1".into());
    let agent = AgentBuilder::new(config)
        .kube_client(client.clone())
        .volume_driver(volumes.clone())
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
        include_volumes: true,
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
    assert_eq!(
        status
            .volumes
            .iter()
            .map(|v| v.phase.as_str())
            .collect::<Vec<_>>(),
        ["Success"],
        "{status:?}"
    );
    let id = status.backup_id.expect("id");
    let restores: Api<ApplicationRestore> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationRestoreSpec {
        location: "local".into(),
        backup_id: id.clone(),
        namespace_mapping: [("shop".to_owned(), "shop-copy".to_owned())].into(),
        existing_resource_policy: "Retain".into(),
        ..ApplicationRestoreSpec::default()
    };
    restores
        .create(&PostParams::default(), &ApplicationRestore::new("r1", spec))
        .await
        .expect("restore");
    let restored = wait_for(&restores, "r1", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| ["Success", "PartialSuccess", "Failed"].contains(&s.phase.as_str()))
    })
    .await;
    let status = restored.status.expect("status");
    assert_eq!(status.volumes.len(), 1, "{status:?}");
    assert_eq!(status.volumes[0].phase, "Success", "{status:?}");
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

    // The data operations: each line in its own span, inside the reconcile's.
    let line_of = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .cloned()
            .unwrap_or_else(|| panic!("no line {message:?} in:\n{text}"))
    };
    // The names of the spans of `line` from the agent's reconcile in (the controller runtime's
    // own span is around it).
    let names = |line: &serde_json::Value| -> Vec<String> {
        let names: Vec<String> = line["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
            .collect();
        let from = names.iter().position(|n| n == "reconcile").unwrap_or(names.len());
        names[from..].to_vec()
    };
    // The agent's reconcile span of `line`.
    let reconcile = |line: &serde_json::Value| {
        line["spans"]
            .as_array()
            .expect("spans")
            .iter()
            .find(|s| s["name"] == "reconcile")
            .cloned()
            .unwrap_or_else(|| panic!("no reconcile span: {line}"))
    };
    let backed_up = line_of("volume backed up");
    assert_eq!(
        backed_up["span"],
        json!({"name": "volume_backup", "namespace": "shop", "claim": "data"}),
        "{backed_up}"
    );
    assert_eq!(names(&backed_up), ["reconcile", "volume_backup"], "{backed_up}");
    assert_eq!(reconcile(&backed_up)["backup"], "b1", "{backed_up}");
    assert_eq!(backed_up["fields"]["files"], 1, "{backed_up}");
    assert_eq!(backed_up["fields"]["bytes"], 16_000, "{backed_up}");
    let resources = line_of("resources backed up");
    assert_eq!(
        resources["span"],
        json!({"name": "resource_backup", "namespaces": 1}),
        "{resources}"
    );
    assert_eq!(resources["fields"]["id"], json!(id), "{resources}");
    assert_eq!(reconcile(&resources)["backup"], "b1", "{resources}");

    let restored = line_of("volume restored");
    assert_eq!(
        restored["span"],
        json!({"name": "volume_restore", "namespace": "shop-copy", "claim": "data"}),
        "{restored}"
    );
    assert_eq!(names(&restored), ["reconcile", "volume_restore"], "{restored}");
    assert_eq!(
        (&reconcile(&restored)["restore"], &reconcile(&restored)["backup"]),
        (&json!("r1"), &json!(id)),
        "{restored}"
    );
    assert_eq!(restored["fields"]["bytes"], 16_000, "{restored}");
    let resources = line_of("resources restored");
    assert_eq!(
        resources["span"],
        json!({"name": "resource_restore", "namespaces": 1}),
        "{resources}"
    );
    assert_eq!(
        names(&resources),
        ["reconcile", "resource_restore"],
        "{resources}"
    );
    // Data operations are not reconciles: the lines about the reconcile itself are not in them.
    assert_eq!(names(&line_of("backup finished")), ["reconcile"]);

    // Every line of the agent (its controllers, its data operations, its read API, its start
    // and stop) is inside the agent's span naming the cluster.
    let ours: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            let target = l["target"].as_str().unwrap_or_default();
            target.starts_with("pxb_daemon") || target.starts_with("pxb_core")
        })
        .collect();
    for message in [
        "pxb-agent started",
        "location validated",
        "volume backed up",
        "backup finished",
        "restore finished",
        "pxb-agent stopped",
    ] {
        assert!(
            ours.iter().any(|l| l["fields"]["message"] == message),
            "no line {message:?} of the agent in:\n{text}"
        );
    }
    for line in ours {
        let agent = line["spans"]
            .as_array()
            .and_then(|spans| spans.first())
            .unwrap_or_else(|| panic!("a line of the agent outside its span: {line}"));
        assert_eq!(
            (&agent["name"], &agent["cluster"]),
            (&json!("agent"), &json!("prod-eu-1")),
            "{line}"
        );
    }
}

/// The JSON log lines `pxb` writes to stderr with `PXB_LOG=info`.
fn pxb_logs(args: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pxb"))
        .args(args)
        .env_remove("PXB_LOCATION")
        .env("PXB_LOG", "info")
        .env("PXB_LOG_FORMAT", "json")
        .output()
        .expect("run pxb");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not a JSON line: {l}")))
        .collect()
}

/// `pxb volume backup` and `restore` log in spans of their own, naming the source and the tag,
/// the backup and the target; a value that is not a plain path (a newline in a directory name)
/// is `(invalid)` there, so it cannot forge a line.
#[test]
fn volume_commands_log_in_spans_naming_what_they_move() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().canonicalize().expect("canonical");
    let src = root.join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("a.txt"), "hello").expect("write");
    let loc = format!("file://{}", root.join("loc").display());
    let src_s = src.to_str().expect("utf-8");
    let logs = pxb_logs(&[
        "volume",
        "backup",
        "--location",
        &loc,
        "--path",
        src_s,
        "--tag",
        "nightly",
        "--json",
    ]);
    let line = logs
        .iter()
        .find(|l| l["fields"]["message"] == "volume backed up")
        .unwrap_or_else(|| panic!("no backup line in {logs:?}"));
    assert_eq!(
        line["span"],
        json!({"name": "volume_backup", "source": src_s, "tag": "nightly"}),
        "{line}"
    );
    assert_eq!(line["fields"]["files"], 1, "{line}");
    let id = line["fields"]["id"].as_str().expect("id").to_owned();

    let forged = root.join("out\n{\"forged\": 1}");
    let logs = pxb_logs(&[
        "volume",
        "restore",
        "--location",
        &loc,
        "--backup",
        "latest",
        "--tag",
        "nightly",
        "--target",
        forged.to_str().expect("utf-8"),
        "--json",
    ]);
    assert_eq!(
        std::fs::read_to_string(forged.join("a.txt")).expect("restored"),
        "hello"
    );
    let line = logs
        .iter()
        .find(|l| l["fields"]["message"] == "volume restored")
        .unwrap_or_else(|| panic!("no restore line in {logs:?}"));
    assert_eq!(
        line["span"],
        json!({"name": "volume_restore", "backup": "latest", "target": "(invalid)"}),
        "{line}"
    );
    assert_eq!(line["fields"]["id"], json!(id), "{line}");
}
