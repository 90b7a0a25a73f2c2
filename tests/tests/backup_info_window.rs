//! The bounded window of `pxb_server_backup_info` refills while the server runs: a backup whose
//! series lost its place to a deleted backup's comes back when that one expires, as a restart
//! would show it (docs/telemetry.md, "The backup info series").

use std::sync::Arc;
use std::time::Duration;

use pxb_core::api::rest::CreateOrg;
use pxb_core::catalog::records::{BackupPhase, BackupRecord, Mode, Role, RoleBinding};
use pxb_tests::control::ControlPlane;

const HOUR_MS: i64 = 3_600_000;

/// The sorted `pxb_server_backup_info` lines the provider admin gets.
async fn backup_info_lines(cp: &ControlPlane) -> Vec<String> {
    cp.backup_info_lines(Some(&cp.admin_token()))
        .await
        .expect("metrics")
}

fn line(id: &str, status: &str, previous: Option<&str>) -> String {
    format!(
        "pxb_server_backup_info{{org=\"acme\",cluster=\"shoot-a\",backup=\"{id}\",location=\"primary\",\
         schedule=\"\",view=\"namespaces\",status=\"{status}\"{}}} 1",
        previous
            .map(|p| format!(",previous_status=\"{p}\""))
            .unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_pushed_out_by_a_deleted_one_comes_back_when_that_one_goes_as_a_restart_shows() {
    let mut cp = ControlPlane::start("acme", 1, |c| {
        c.telemetry.backup_info_retention_hours = 1;
        c.telemetry.backup_info_max_series = 2;
    })
    .await
    .expect("control plane");
    let clock = Arc::new(pxb_core::clock::SkewedClock::new());
    cp.use_clock(clock.clone())
        .await
        .expect("the server on a clock the test moves");
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

    // Three backups (as a sync imports them: written to the catalog), two series.
    let now = pxb_core::clock::unix_ms(pxb_core::Clock::now(&*clock));
    for (id, age) in [("b1", 3), ("b2", 2), ("b3", 1)] {
        let record = BackupRecord {
            org: "acme".into(),
            id: id.into(),
            cluster: "c-a".into(),
            cluster_name: "shoot-a".into(),
            location: "l-primary".into(),
            location_name: "primary".into(),
            phase: BackupPhase::Success,
            created_ms: now - age * HOUR_MS,
            ..BackupRecord::default()
        };
        cp.server().catalog().put(&record, None).await.expect("put");
    }
    let both = [line("b2", "Success", None), line("b3", "Success", None)];
    assert_eq!(backup_info_lines(&cp).await, both, "the two most recent");

    // b1's Deleted series is the most recent: b2 loses its place, also across a restart.
    let removed = cp.server().catalog().delete::<BackupRecord>("acme", "b1").await;
    assert!(removed.expect("delete"), "b1 was there");
    let deleted = [
        line("b1", "Deleted", Some("Success")),
        line("b3", "Success", None),
    ];
    assert_eq!(backup_info_lines(&cp).await, deleted);
    cp.restart_server().await.expect("restart");
    assert_eq!(backup_info_lines(&cp).await, deleted, "after a restart");

    // The window passes: b1's series goes and b2's comes back while the server runs (the scrape
    // that drops b1's wakes the upkeep) ...
    clock.advance(Duration::from_secs(3600));
    pxb_tests::control::wait_for("b2 is back", Duration::from_secs(30), || async {
        let lines = backup_info_lines(&cp).await;
        if lines == both {
            Ok(Some(()))
        } else {
            Err(format!("{lines:#?}"))
        }
    })
    .await
    .expect("the series refill");
    // ... which is what a restart shows.
    cp.restart_server().await.expect("restart");
    assert_eq!(backup_info_lines(&cp).await, both, "after a restart");
    cp.shutdown().await;
}
