//! Nothing blocks backups or the API (issue 17, the support channel): with the channel switched
//! on and the telemetry service hanging (it accepts the connection, completes the TLS handshake,
//! reads the upload and never answers), a backup and a restore through a real `pxb-server` and a
//! real agent reach `Success`, and API calls answer while an upload is held unanswered; the
//! channel's status says it is not delivering (no new upload, the last error, batches waiting),
//! and it delivers again once the service answers. Switched off by its file while an upload
//! hangs, the channel drops that request and nothing more reaches the service, also past an
//! upload interval.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use pxb_core::api::rest::{BackupRequest, CreateDiscovery, CreateOrg, ListQuery, RestoreRequest};
use pxb_core::catalog::records::{BackupRecord, ClusterSelector, Mode, RestoreRecord, Role, RoleBinding};
use pxb_daemon::client::Client;
use pxb_harness::telemetry_service::{Held, TelemetryService};
use pxb_telemetry::support::SupportStatus;
use pxb_tests::control::{ControlPlane, wait_for};
use reqwest::Method;

const PROJECT: &str = "acme";
const SHOOT: &str = "shoot-00000";
/// The channel's upload interval in this test (the smallest the configuration takes).
const INTERVAL: Duration = Duration::from_secs(10);
/// How long the channel's client waits for an answer (`OtlpExporter`'s default timeout).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(30);

fn status(cp: &ControlPlane) -> SupportStatus {
    cp.daemon
        .as_ref()
        .expect("the server runs")
        .support
        .as_ref()
        .expect("the support channel exists")
        .status()
}

/// The request the service holds now that arrived last, if any.
fn youngest_held(service: &TelemetryService) -> Option<(usize, Held)> {
    service
        .held()
        .into_iter()
        .enumerate()
        .filter(|(_, h)| h.ended.is_none())
        .max_by_key(|(_, h)| h.arrived)
}

async fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn backup_done(api: &Client, id: &str) -> BackupRecord {
    wait_for(
        &format!("backup {id} finishes"),
        Duration::from_secs(240),
        || async {
            let b = api.get_backup("acme", id).await.map_err(|e| e.to_string())?;
            if ["Pending", "InProgress"].contains(&b.phase.as_str()) {
                Err(format!("{} {:?}", b.phase.as_str(), b.message))
            } else {
                Ok(Some(b))
            }
        },
    )
    .await
    .expect("the backup finishes")
}

async fn restore_done(api: &Client, id: &str) -> RestoreRecord {
    wait_for(
        &format!("restore {id} finishes"),
        Duration::from_secs(240),
        || async {
            let r = api.get_restore("acme", id).await.map_err(|e| e.to_string())?;
            if ["Pending", "InProgress"].contains(&r.phase.as_str()) {
                Err(format!("{} {:?}", r.phase.as_str(), r.message))
            } else {
                Ok(Some(r))
            }
        },
    )
    .await
    .expect("the restore finishes")
}

/// `pxb_server_support_uploads_total` in the server's exposition.
async fn uploads_metric(cp: &ControlPlane, token: &str) -> u64 {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", cp.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("pxb_server_support_uploads_total "))
        .unwrap_or_else(|| panic!("no pxb_server_support_uploads_total in:\n{text}"))
        .trim()
        .parse()
        .expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_telemetry_service_blocks_no_backup_restore_or_api_call() {
    let service = TelemetryService::start().await;
    let own = tempfile::tempdir().expect("dir");
    let ca = own.path().join("telemetry-ca.pem");
    std::fs::write(&ca, service.ca_pem()).expect("ca");
    let switch = own.path().join("support-enabled");
    std::fs::write(&switch, "false\n").expect("switch");
    let (endpoint, ca_file, enabled_file) = (
        service.endpoint(),
        ca.display().to_string(),
        switch.display().to_string(),
    );
    let mut cp = ControlPlane::start(PROJECT, 1, move |c| {
        c.telemetry.support.endpoint = endpoint;
        c.telemetry.support.ca_file = ca_file;
        c.telemetry.support.enabled_file = enabled_file;
        c.telemetry.support.upload_interval_secs = INTERVAL.as_secs();
    })
    .await
    .expect("control plane");
    cp.start_agent(PROJECT, SHOOT).await.expect("agent");

    // Org acme discovering the project, a federated location on Azurite, namespace `shop`.
    cp.admin_client()
        .create_org(&CreateOrg {
            id: "acme".into(),
            display_name: "Acme".into(),
            mode: Mode::default(),
            access: vec![RoleBinding {
                role: Role::Admin,
                groups: vec!["acme-admins".into()],
                app_roles: Vec::new(),
            }],
        })
        .await
        .expect("org");
    let token = cp.token("alice", &["acme-admins"]);
    let alice = cp.client(&token);
    alice
        .create_discovery(
            "acme",
            &CreateDiscovery {
                id: "dev".into(),
                project: PROJECT.into(),
                credential: PROJECT.into(),
                interval_secs: Some(5),
            },
        )
        .await
        .expect("discovery");
    let container = cp.azure.new_container("nonblocking").await.expect("container");
    let every = ClusterSelector {
        all: true,
        ..ClusterSelector::default()
    };
    alice
        .create_location("acme", &cp.azure_location("primary", &container, every))
        .await
        .expect("location");
    wait_for("primary Valid", Duration::from_secs(120), || async {
        let st = alice
            .location_status("acme", "primary", &ListQuery::default())
            .await
            .map_err(|e| e.to_string())?;
        let phases: Vec<&str> = st.items.iter().map(|s| s.validation.phase.as_str()).collect();
        if phases == ["Valid"] {
            Ok(Some(()))
        } else {
            Err(format!("{phases:?}"))
        }
    })
    .await
    .expect("the agent validates the location");
    let shoot = cp.shoot_client(PROJECT, SHOOT).await.expect("shoot client");
    pxb_tests::control::seed_shop(&shoot).await.expect("shop");

    // On, with the service answering: it registers and delivers.
    std::fs::write(&switch, "true\n").expect("switch");
    assert!(
        service.wait_for_uploads(1, Duration::from_secs(60)).await,
        "an upload once switched on"
    );
    wait("the status counts the upload", Duration::from_secs(30), || {
        let s = status(&cp);
        s.enabled && s.registered && s.uploads >= 1
    })
    .await;

    // The service hangs: the next upload is read and held without an answer.
    service.set_hang(true);
    let delivered = status(&cp).uploads;
    let accepted = service.metrics().len() + service.logs().len();
    wait("an upload held by the hanging service", INTERVAL * 3, || {
        youngest_held(&service).is_some()
    })
    .await;
    let hang_began = service.held()[0].arrived;

    // A backup and a restore through the control plane and the agent.
    let made = alice
        .create_backups(
            "acme",
            &BackupRequest {
                clusters: ClusterSelector {
                    names: vec![SHOOT.into()],
                    ..ClusterSelector::default()
                },
                namespaces: vec!["shop".into()],
                location: "primary".into(),
            },
        )
        .await
        .expect("backup");
    let id = made.items.first().expect("one backup").id.clone();
    let b = backup_done(&alice, &id).await;
    assert_eq!(b.phase.as_str(), "Success", "{b:?}");
    assert!(b.objects >= 1, "the ConfigMap was backed up: {b:?}");
    let r = alice
        .create_restore(
            "acme",
            &RestoreRequest {
                backup: id.clone(),
                namespace_mapping: [("shop".to_owned(), "shop-restored".to_owned())].into(),
                ..RestoreRequest::default()
            },
        )
        .await
        .expect("restore");
    let r = restore_done(&alice, &r.id).await;
    assert_eq!(r.phase.as_str(), "Success", "{r:?}");
    assert_eq!(r.counts.failed, 0, "{r:?}");
    let cm = Api::<ConfigMap>::namespaced(shoot.clone(), "shop-restored")
        .get("orders")
        .await
        .expect("the restored ConfigMap");
    assert_eq!(cm.data.and_then(|d| d.get("a").cloned()).as_deref(), Some("1"));
    // All of it while the service hung: not one upload got through meanwhile.
    assert_eq!(
        service.metrics().len() + service.logs().len(),
        accepted,
        "the service accepted nothing while it hung"
    );
    assert_eq!(status(&cp).uploads, delivered, "no upload was delivered");
    println!(
        "backup and restore done {:?} after the service began to hang",
        hang_began.elapsed()
    );

    // API calls answer while an upload is held: each one finishes while a request the service
    // received before the call started is still unanswered (and its client still waits, as it
    // arrived less than the upload timeout ago).
    let paths = [
        "/v1/orgs/acme/backups",
        "/v1/orgs/acme/restores",
        "/v1/orgs/acme/locations",
        "/v1/fleet/status",
        "/metrics",
    ];
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        wait(
            "an upload held for less than half the upload timeout",
            UPLOAD_TIMEOUT * 4,
            || youngest_held(&service).is_some_and(|(_, h)| h.arrived.elapsed() < UPLOAD_TIMEOUT / 2),
        )
        .await;
        let (index, before) = youngest_held(&service).expect("held");
        let path = paths[i % paths.len()];
        let started = Instant::now();
        let (code, body) = cp.call(Method::GET, path, &token, None).await.expect("call");
        let took = started.elapsed();
        assert_eq!(code, 200, "GET {path}: {body}");
        let after = service.held()[index].clone();
        assert_eq!(
            after.ended,
            None,
            "GET {path} answered in {took:?} while the upload held since {:?} is unanswered",
            before.arrived.elapsed()
        );
        assert!(
            after.arrived <= started && after.arrived.elapsed() > took,
            "the upload has been hanging for longer than GET {path} took ({took:?})"
        );
        assert!(
            took < UPLOAD_TIMEOUT / 6,
            "GET {path} took {took:?}: it waited on the channel?"
        );
        slowest = slowest.max(took);
    }
    println!("20 API calls while an upload hung; the slowest took {slowest:?}");

    // The channel's status says it is not delivering: the hung upload timed out (its client
    // closed the connection), the error is kept, the batches wait, no upload was counted.
    wait("the status shows the failing upload", UPLOAD_TIMEOUT * 3, || {
        status(&cp).last_error.is_some()
    })
    .await;
    let stuck = status(&cp);
    assert!(stuck.enabled && stuck.registered, "{stuck:?}");
    assert_eq!(stuck.uploads, delivered, "{stuck:?}");
    assert!(stuck.pending_batches >= 1, "{stuck:?}");
    let error = stuck.last_error.clone().expect("last error");
    assert!(error.contains("unavailable"), "{error}");
    // The channel gave up on a held upload: its client closed the connection, which the service
    // notices when its connection task next runs (after the status may already show the error).
    wait(
        "the service sees the channel give up on a held upload",
        Duration::from_secs(10),
        || service.held().iter().any(|h| h.ended.is_some()),
    )
    .await;
    assert_eq!(
        uploads_metric(&cp, &token).await,
        delivered,
        "the exposition counts no new upload"
    );

    // The service answers again: the channel, backing off, delivers what waited.
    service.set_hang(false);
    wait("delivering again", Duration::from_secs(300), || {
        let s = status(&cp);
        s.uploads > delivered && s.last_error.is_none()
    })
    .await;
    assert!(service.metrics().len() + service.logs().len() > accepted);

    // Off by its file while an upload hangs: the channel drops the request and nothing more
    // reaches the service, also past an upload interval.
    service.set_hang(true);
    wait("an upload held again", INTERVAL * 4, || {
        youngest_held(&service).is_some()
    })
    .await;
    let (index, _) = youngest_held(&service).expect("held");
    std::fs::write(&switch, "false\n").expect("switch");
    wait("the channel is off", Duration::from_secs(30), || {
        !status(&cp).enabled
    })
    .await;
    wait(
        "the held upload's connection is closed",
        Duration::from_secs(10),
        || service.held()[index].ended.is_some(),
    )
    .await;
    let (bytes, connections) = (service.bytes_received(), service.connections());
    tokio::time::sleep(INTERVAL + Duration::from_secs(3)).await;
    assert_eq!(
        (service.bytes_received(), service.connections()),
        (bytes, connections),
        "nothing reaches the service once the channel is off"
    );
    let off = status(&cp);
    assert!(!off.enabled && off.pending_batches == 0, "{off:?}");
    cp.shutdown().await;
}
