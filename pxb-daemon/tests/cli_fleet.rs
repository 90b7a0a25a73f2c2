//! The whole flow through the `pxb` CLI against the demo fleet: `pxb demo` brings up the
//! simulated project, the server, the agents and a location, runs its own flow and serves; then
//! `pxb login` and the fleet commands drive backups, filters, a restore into another cluster with
//! namespace mapping, a schedule, deletes and the fleet status, and the results are checked.
//!
//! `pxb demo` runs the `pxb-demo` program beside `pxb`: the workspace test run builds it; after
//! changing the server alone, `cargo build -p pxb-tests --bin pxb-demo` refreshes it.

mod support;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use support::pxb;

use serde_json::Value;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        // Ctrl-C by process id: the demo stops its server and agents.
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(30) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if !std::thread::panicking() {
            panic!("the demo did not stop within 30 s of Ctrl-C");
        }
    }
}

fn ok_json(config: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = pxb(config, &all);
    assert!(
        out.status.success(),
        "pxb {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| b["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn the_cli_drives_the_demo_fleet_end_to_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("pxb.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pxb"))
        .args(["demo", "--shoots", "5", "--location", "file"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pxb demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);
    let (mut api, mut token, mut seen) = (String::new(), String::new(), String::new());
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if let Some(u) = line.strip_prefix("API ") {
            api = u.to_owned();
        }
        if let Some(t) = line.strip_prefix("TOKEN ") {
            token = t.to_owned();
            break;
        }
    }
    assert!(
        !api.is_empty() && !token.is_empty(),
        "the demo did not serve:\n{seen}"
    );
    // The demo's own flow went through: backup, Missed on the blackholed shoot, restore, sync,
    // verify, delete.
    for want in [
        "shoot-00000  Success",
        "shoot-00003  Missed",
        "objects created, 0 failed",
        "view vms",
        "Completed: 3 backups found",
        "(synced, made by shoot-00004)",
        "0 objects missing",
        "data and record deleted",
    ] {
        assert!(seen.contains(want), "{want:?} not in:\n{seen}");
    }

    // Login stores a context (0600); later commands need no flags.
    let out = pxb(
        &config,
        &["login", "--server", &api, "--token", &token, "--org", "demo"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config).expect("config").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let bad = pxb(
        &config,
        &["login", "--server", &api, "--token", "wrong-token-wrong-token"],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("login failed"));

    let clusters = ok_json(&config, &["clusters", "list"]);
    let names: Vec<&str> = clusters["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        names.contains(&"shoot-00000") && names.contains(&"sleepy"),
        "{names:?}"
    );
    let table = pxb(&config, &["clusters", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("NAME") && text.contains("Hibernated"), "{text}");

    // A backup with --wait.
    let made = ok_json(
        &config,
        &[
            "backups",
            "create",
            "--cluster",
            "shoot-00000",
            "-n",
            "shop",
            "--location",
            "primary",
            "--wait",
        ],
    );
    let id = ids(&made).pop().expect("one backup");
    assert_eq!(made["items"][0]["phase"], "Success", "{made}");
    assert!(made["items"][0]["objects"].as_u64().unwrap_or(0) >= 4, "{made}");
    assert_eq!(
        made["items"][0]["view"], "vms",
        "shop on shoot-00000 holds a VirtualMachine: {made}"
    );
    assert_eq!(made["items"][0]["virtualMachines"], 1);

    // "Cloud file missing": an object of another backup disappears from the location; a verify
    // finds it and the backup shows it.
    let loc_dir = seen
        .split("(file ")
        .nth(1)
        .and_then(|r| r.split(", ").next())
        .expect("the demo names its location directory")
        .to_owned();
    let other = ok_json(
        &config,
        &[
            "backups",
            "create",
            "--cluster",
            "shoot-00001",
            "-n",
            "shop",
            "--location",
            "primary",
            "--wait",
        ],
    );
    let other_id = ids(&other).pop().expect("one backup");
    let data_id = other["items"][0]["backupId"]
        .as_str()
        .expect("data id")
        .to_owned();
    let victim = Path::new(&loc_dir)
        .join("pxb/backups")
        .join(&data_id)
        .join("resources");
    assert!(victim.exists(), "{} is missing", victim.display());
    std::fs::remove_file(&victim).expect("remove");
    ok_json(&config, &["locations", "verify", "primary"]);
    let t = std::time::Instant::now();
    loop {
        let b = ok_json(&config, &["backups", "get", &other_id]);
        if b["missingObjects"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            t.elapsed().as_secs() < 90,
            "the verify never reported the missing object: {b}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let text = String::from_utf8_lossy(&pxb(&config, &["backups", "get", &other_id]).stdout).to_string();
    assert!(text.contains("cloud files missing: 1"), "{text}");

    // Filters: cluster by name, namespace, phase, view, time bracket.
    let mine = ok_json(
        &config,
        &["backups", "list", "--cluster", "shoot-00000", "--since", "1h"],
    );
    assert!(ids(&mine).contains(&id), "{mine}");
    assert!(ids(&ok_json(&config, &["backups", "list", "-n", "shop"])).contains(&id));
    assert!(ids(&ok_json(&config, &["backups", "list", "-n", "other"])).is_empty());
    let vms = ids(&ok_json(&config, &["backups", "list", "--view", "vms"]));
    let plain = ids(&ok_json(&config, &["backups", "list", "--view", "namespaces"]));
    assert!(vms.contains(&id) && !vms.contains(&other_id), "{vms:?}");
    assert!(plain.contains(&other_id) && !plain.contains(&id), "{plain:?}");
    let missed = ok_json(&config, &["backups", "list", "--status", "Missed"]);
    assert_eq!(ids(&missed).len(), 1, "{missed}");
    assert_eq!(missed["items"][0]["clusterName"], "shoot-00003");
    let bad = pxb(&config, &["backups", "list", "--since", "2h"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bracket"),
        "{bad:?}"
    );

    // Restore into another cluster with namespace mapping.
    let restored = ok_json(
        &config,
        &[
            "restores",
            "create",
            &id,
            "--cluster",
            "shoot-00004",
            "--map",
            "shop=shop-copy",
            "--wait",
        ],
    );
    assert_eq!(restored["phase"], "Success", "{restored}");
    assert_eq!(restored["clusterName"], "shoot-00004");
    assert!(
        restored["counts"]["created"].as_u64().unwrap_or(0) >= 4,
        "{restored}"
    );
    assert_eq!(restored["counts"]["failed"], 0, "{restored}");
    assert!(ids(&ok_json(&config, &["restores", "list"])).len() >= 2);

    // A schedule.
    let sched = ok_json(
        &config,
        &[
            "schedules",
            "create",
            "nightly",
            "--daily",
            "02:00",
            "--time-zone",
            "Europe/Berlin",
            "--retain",
            "3",
            "--all",
            "-n",
            "shop",
            "--location",
            "primary",
        ],
    );
    assert_eq!(sched["policy"]["kind"], "daily");
    assert!(sched["nextFireMs"].as_i64().unwrap_or(0) > 0);
    let text = String::from_utf8_lossy(&pxb(&config, &["schedules", "list"]).stdout).to_string();
    assert!(
        text.contains("nightly") && text.contains("daily 02:00 Europe/Berlin"),
        "{text}"
    );
    let bad = pxb(
        &config,
        &[
            "schedules",
            "create",
            "bad",
            "--daily",
            "25:00",
            "--all",
            "-n",
            "shop",
            "--location",
            "primary",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("HH:MM"));
    assert_eq!(
        ok_json(&config, &["schedules", "pause", "nightly"])["paused"],
        true
    );

    // Delete with --wait removes data and record; force-delete of the missed one keeps no record.
    let out = pxb(&config, &["backups", "delete", &id, "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let gone = pxb(&config, &["backups", "get", &id]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("404"));
    let missed_id = ids(&missed).pop().expect("missed");
    let forced = ok_json(&config, &["backups", "delete", &missed_id, "--force"]);
    assert_eq!(forced["dataRemains"], true);
    assert_eq!(forced["recordRemoved"], true);

    let fleet = ok_json(&config, &["fleet", "status"]);
    assert_eq!(fleet["counts"]["Ready"], 4, "{fleet}");
    assert_eq!(fleet["counts"]["Unreachable"], 1, "{fleet}");
    // The server's metrics count what happened, and pass promtool; Prometheus, which prefers
    // OpenMetrics, gets that.
    let (metrics, openmetrics) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let plain = reqwest::get(format!("{api}/metrics"))
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            let om = reqwest::Client::new()
                .get(format!("{api}/metrics"))
                .header(
                    "accept",
                    "application/openmetrics-text;version=1.0.0;q=0.5,*/*;q=0.1",
                )
                .send()
                .await
                .expect("metrics");
            let content_type = om.headers()["content-type"].to_str().expect("ascii").to_owned();
            (plain, (content_type, om.text().await.expect("text")))
        });
    assert_eq!(
        openmetrics.0,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(
        openmetrics.1.contains("# TYPE pxb_server_visits counter\n"),
        "{}",
        openmetrics.1
    );
    assert!(openmetrics.1.ends_with("# EOF\n"), "{}", openmetrics.1);
    for series in [
        "pxb_server_info{version=",
        "pxb_server_clusters{state=\"Ready\"} 4",
        "pxb_server_orgs{state=\"ready\"}",
        "pxb_server_orgs{state=\"degraded\"} 0",
        "pxb_server_visits_total{result=\"ok\"}",
        "pxb_server_visits_total{result=\"failed\"}",
        "pxb_server_orphans_deleted_total ",
        "pxb_server_crs_written_total ",
        "pxb_server_requests_stalled_total ",
        "pxb_server_schedule_runs_total ",
        "pxb_server_snapshots_total ",
        "pxb_server_operations_active{kind=\"restore\"}",
    ] {
        assert!(metrics.contains(series), "{series:?} not in:\n{metrics}");
    }
    assert!(
        metrics.contains("pxb_server_backups_imported_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("pxb_server_operations_active{kind=\"backup\"}"),
        "{metrics}"
    );
    pxb_harness::promtool_check_metrics(&metrics).expect("promtool");
    let completions = pxb(&config, &["completions", "bash"]);
    assert!(String::from_utf8_lossy(&completions.stdout).contains("_pxb"));
    drop(demo);
}
