//! The agent's metrics and request spans, seen from outside: an agent on a simulated shoot
//! validates two locations (one valid, one not), backs up a namespace with a volume and restores
//! it, and its `/metrics` says so (validation phases and timestamps, duration histograms by
//! result, bytes read, stored and deduplicated, operations and heartbeats back to idle), in an
//! exposition promtool accepts. Its read API answers every request with an `x-request-id`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use pxb_daemon::agent::volumes::MemoryVolumes;
use pxb_daemon::agent::{AgentBuilder, AgentConfig};
use pxb_daemon::crd::{
    ApplicationBackup, ApplicationBackupSpec, ApplicationRestore, ApplicationRestoreSpec, BackupLocation,
    BackupLocationSpec,
};
use serde_json::json;

const FINAL: [&str; 3] = ["Success", "PartialSuccess", "Failed"];

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

/// `GET http://{addr}{path}` with `headers`: status, headers and body.
async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("the read API answers");
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    (code, headers, resp.text().await.expect("body"))
}

async fn scrape(addr: SocketAddr) -> String {
    let (code, _, body) = get(addr, "/metrics", &[]).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Scrapes until `ok` holds of the exposition (some series are updated just after the status
/// the test waited for is written); fails with the last one after 30 s.
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(addr).await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}; the last scrape:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// The value of the sample `series` (name and labels as the exposition writes them).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A shoot with pxb installed, namespace `shop` holding a ConfigMap and the bound claim `data`,
/// whose data (two files alike of 460 kB of repetitive text each) is known to `volumes`.
async fn shoot(
    data: &std::path::Path,
    volumes: &MemoryVolumes,
) -> (pxb_tests::shoots::ShootFixture, kube::Client) {
    let shoots = pxb_tests::shoots::ShootFixture::start(1)
        .await
        .expect("simulated shoot");
    let client = shoots.client(0).await.expect("client");
    pxb_tests::shoots::install_pxb(&client)
        .await
        .expect("install pxb");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}})).expect("ns"),
        )
        .await
        .expect("namespace");
    Api::<ConfigMap>::namespaced(client.clone(), "shop")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"color": "blue"}}))
                .expect("cm"),
        )
        .await
        .expect("config map");
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), "shop")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}))
            .expect("claim"),
        )
        .await
        .expect("claim");
    std::fs::create_dir_all(data).expect("mkdir");
    let text: String = (0..20_000).map(|i| format!("order {i:08} shipped\n")).collect();
    for name in ["orders.log", "orders-copy.log"] {
        std::fs::write(data.join(name), &text).expect("write");
    }
    std::fs::write(data.join("small.txt"), "hello").expect("write");
    volumes.insert("shop", "data", data);
    (shoots, client)
}

/// A location validation, a backup and a restore show in `/metrics` with exactly the values
/// they must have; the exposition passes promtool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validations_backups_and_restores_show_in_the_agent_metrics() {
    let tmp = tempfile::tempdir().expect("tmp");
    let volumes = Arc::new(MemoryVolumes::new(tmp.path().join("restores")));
    let (_shoots, client) = shoot(&tmp.path().join("data"), &volumes).await;
    let location = tmp.path().join("location");
    std::fs::create_dir_all(&location).expect("mkdir");
    let mut config = AgentConfig::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.restore_root = tmp.path().join("restores");
    let agent = AgentBuilder::new(config)
        .kube_client(client.clone())
        .volume_driver(volumes.clone())
        .spawn()
        .await
        .expect("spawn");
    let addr = agent.api_addr;

    // Nothing has happened yet: every result of the histograms at zero, nothing running.
    let idle = scrape(addr).await;
    for line in [
        "pxb_agent_backup_duration_seconds_count{result=\"Success\"} 0",
        "pxb_agent_restore_duration_seconds_count{result=\"Success\"} 0",
        "pxb_agent_backup_read_bytes_total 0",
        "pxb_agent_operations{kind=\"backup\",phase=\"InProgress\"} 0",
        "pxb_agent_operations{kind=\"restore\",phase=\"InProgress\"} 0",
    ] {
        assert!(has(&idle, line), "{line:?} not in:\n{idle}");
    }
    assert!(!idle.contains("pxb_agent_location_validation{"), "{idle}");

    // One valid location and one that cannot be built (a relative directory).
    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
    for (name, container) in [
        ("local", location.to_string_lossy().into_owned()),
        ("broken", "relative/dir".into()),
    ] {
        let spec = BackupLocationSpec {
            provider: "file".into(),
            container,
            ..BackupLocationSpec::default()
        };
        locations
            .create(&PostParams::default(), &BackupLocation::new(name, spec))
            .await
            .expect("location");
    }
    let validated = |phase: &'static str| {
        move |l: &BackupLocation| {
            l.status
                .as_ref()
                .and_then(|s| s.validation.as_ref())
                .is_some_and(|v| v.phase == phase)
        }
    };
    let local = wait_for(&locations, "local", validated("Valid")).await;
    wait_for(&locations, "broken", validated("Invalid")).await;
    let checked = local
        .status
        .and_then(|s| s.validation)
        .and_then(|v| v.last_checked)
        .expect("lastChecked");
    let checked = pxb_core::clock::unix_secs(pxb_core::clock::parse_rfc3339(&checked).expect("RFC 3339"));
    let lines = [
        "pxb_agent_location_validation{location=\"local\",phase=\"Valid\"} 1".to_owned(),
        "pxb_agent_location_validation{location=\"local\",phase=\"Invalid\"} 0".to_owned(),
        "pxb_agent_location_validation{location=\"local\",phase=\"Pending\"} 0".to_owned(),
        "pxb_agent_location_validation{location=\"broken\",phase=\"Invalid\"} 1".to_owned(),
        "pxb_agent_location_validation{location=\"broken\",phase=\"Valid\"} 0".to_owned(),
        format!("pxb_agent_location_last_validated_timestamp_seconds{{location=\"local\"}} {checked}"),
    ];
    scrape_until(addr, "the locations' validation series", |t| {
        lines.iter().all(|l| has(t, l))
    })
    .await;

    // A backup of the namespace with its volume.
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
            .is_some_and(|s| FINAL.contains(&s.phase.as_str()))
    })
    .await;
    let status = done.status.expect("status");
    assert_eq!(status.phase, "Success", "{status:?}");
    assert_eq!(status.volumes.len(), 1, "{status:?}");
    let text = scrape(addr).await;
    for line in [
        "pxb_agent_backup_duration_seconds_count{result=\"Success\"} 1",
        "pxb_agent_backup_duration_seconds_count{result=\"PartialSuccess\"} 0",
        "pxb_agent_backup_duration_seconds_count{result=\"Failed\"} 0",
        "pxb_agent_backup_duration_seconds_bucket{result=\"Success\",le=\"+Inf\"} 1",
        "pxb_agent_operations{kind=\"backup\",phase=\"InProgress\"} 0",
    ] {
        assert!(has(&text, line), "{line:?} not in:\n{text}");
    }
    let read = value(&text, "pxb_agent_backup_read_bytes_total").expect("read bytes");
    let stored = value(&text, "pxb_agent_backup_stored_bytes_total").expect("stored bytes");
    let dedup = value(&text, "pxb_agent_backup_deduplicated_bytes_total").expect("deduplicated bytes");
    // The volume's files and the namespace's objects were read; the status counts the same.
    assert!(read >= 2.0 * 460_000.0, "read {read}:\n{text}");
    assert_eq!(
        read as u64,
        status.sizes.volume_bytes + status.sizes.resource_bytes,
        "{status:?}"
    );
    assert_eq!(stored as u64, status.sizes.stored_bytes, "{status:?}");
    assert!(stored > 0.0 && read >= stored, "read {read}, stored {stored}");
    assert_eq!(dedup, read - stored, "{text}");
    // Repetitive text, and the second file is the first again: most of it was not uploaded.
    assert!(dedup > read / 2.0, "deduplicated {dedup} of {read}");

    // A restore of it into another namespace.
    let restores: Api<ApplicationRestore> = Api::namespaced(client.clone(), "pxb-system");
    let spec = ApplicationRestoreSpec {
        location: "local".into(),
        backup_id: status.backup_id.clone().expect("id"),
        namespace_mapping: BTreeMap::from([("shop".to_owned(), "shop-copy".to_owned())]),
        existing_resource_policy: "Retain".into(),
        ..ApplicationRestoreSpec::default()
    };
    restores
        .create(&PostParams::default(), &ApplicationRestore::new("r1", spec))
        .await
        .expect("restore");
    let done = wait_for(&restores, "r1", |r| {
        r.status
            .as_ref()
            .is_some_and(|s| FINAL.contains(&s.phase.as_str()))
    })
    .await;
    let restored = done.status.expect("status");
    assert_eq!(restored.phase, "Success", "{restored:?}");
    // The restore leaves the agent's table of running operations just after its status.
    let text = scrape_until(addr, "no restore running", |t| {
        has(t, "pxb_agent_operations{kind=\"restore\",phase=\"InProgress\"} 0")
    })
    .await;
    for line in [
        "pxb_agent_restore_duration_seconds_count{result=\"Success\"} 1",
        "pxb_agent_restore_duration_seconds_count{result=\"Failed\"} 0",
        "pxb_agent_backup_duration_seconds_count{result=\"Success\"} 1",
        "pxb_agent_operations{kind=\"backup\",phase=\"InProgress\"} 0",
        "pxb_agent_operations_running 0",
    ] {
        assert!(has(&text, line), "{line:?} not in:\n{text}");
    }
    // Nothing runs, so no heartbeat has an age.
    assert!(!text.contains("pxb_agent_heartbeat_age_seconds{"), "{text}");
    pxb_tests::promtool_check_metrics(&text).expect("the exposition passes promtool");

    // A deleted location's series go.
    locations
        .delete("broken", &DeleteParams::default())
        .await
        .expect("delete");
    let text = scrape_until(addr, "the deleted location's series go", |t| {
        !t.contains("location=\"broken\"")
    })
    .await;
    assert!(
        has(
            &text,
            "pxb_agent_location_validation{location=\"local\",phase=\"Valid\"} 1"
        ),
        "{text}"
    );
    agent.shutdown().await;
}

/// Every answer of the read API carries `x-request-id`: a fresh 16-hex-digit id, or the
/// caller's when it is a short plain token (never one that could forge a log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_api_answers_with_a_request_id() {
    let tmp = tempfile::tempdir().expect("tmp");
    let volumes = Arc::new(MemoryVolumes::new(tmp.path().join("restores")));
    let (_shoots, client) = shoot(&tmp.path().join("data"), &volumes).await;
    let mut config = AgentConfig::default();
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.restore_root = tmp.path().join("restores");
    let agent = AgentBuilder::new(config)
        .kube_client(client)
        .volume_driver(volumes)
        .spawn()
        .await
        .expect("spawn");
    let addr = agent.api_addr;
    let id_of = |h: &reqwest::header::HeaderMap| {
        h.get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fresh = |id: &Option<String>| {
        id.as_ref()
            .is_some_and(|i| i.len() == 16 && i.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let mut seen = Vec::new();
    // Every endpoint and outcome: 200, 401 (no token), 404, 400 would all carry it.
    for (path, code) in [
        ("/healthz", 200),
        ("/metrics", 200),
        ("/v1/status", 401),
        ("/nope", 404),
    ] {
        let (got, headers, body) = get(addr, path, &[]).await;
        assert_eq!(got, code, "{path}: {body}");
        let id = id_of(&headers);
        assert!(fresh(&id), "{path}: {id:?}");
        seen.push(id);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4, "each request has an id of its own: {seen:?}");
    let (_, headers, _) = get(addr, "/healthz", &[("x-request-id", "trace-7f3c.1")]).await;
    assert_eq!(id_of(&headers).as_deref(), Some("trace-7f3c.1"));
    for hostile in ["a b level=ERROR", &"x".repeat(65), "id\"}"] {
        let (_, headers, _) = get(addr, "/healthz", &[("x-request-id", hostile)]).await;
        let id = id_of(&headers);
        assert!(fresh(&id), "{hostile:?} must not be taken: {id:?}");
    }
    agent.shutdown().await;
}
