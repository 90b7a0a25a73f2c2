//! The `pxb-agent` binary as a process: configured from its environment, against a simulated
//! shoot; it validates a location (logging in the location's span), serves its read API, and
//! stops cleanly on SIGTERM.

use std::io::{Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use pxb_daemon::crd::{BackupLocation, BackupLocationSpec};

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, "")
}

/// A GET with extra header lines (each ending in `\r\n`).
fn http_get_with(port: u16, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: agent\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_runs_and_stops_on_sigterm() {
    let fleet = pxb_sim::Fleet::start(pxb_sim::FleetConfig::default()).expect("simulator");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "shoot", 1).expect("shoot");
    let dir = tempfile::tempdir().expect("dir");
    // The agent reads a kubeconfig like any in-cluster or local client (this file is the test's).
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        fleet
            .admin_kubeconfig("dev", "shoot-00000", 3600)
            .expect("kubeconfig"),
    )
    .expect("write");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("read");
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config"),
    )
    .expect("client");
    pxb_daemon::sim::install_pxb(&client).await.expect("install pxb");

    let port = pxb_harness::free_port().expect("port");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_pxb-agent"))
        .env("KUBECONFIG", &kubeconfig)
        .env("PXB_LISTEN", format!("127.0.0.1:{port}"))
        .env("PXB_CLUSTER_NAME", "shoot-00000")
        .env("PXB_RESTORE_ROOT", dir.path().join("restores"))
        .env("PXB_LOG", "info")
        .env("PXB_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pxb-agent");

    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "the agent becomes ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The data needs the agent's token, which it keeps in a Secret of its namespace.
    assert_eq!(http_get(port, "/v1/status").map(|r| r.0), Some(401));
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "pxb-system")
        .get(pxb_daemon::agent::api::TOKEN_SECRET)
        .await
        .expect("token secret");
    let token = secret
        .data
        .and_then(|d| d.get("token").map(|t| String::from_utf8_lossy(&t.0).into_owned()))
        .expect("token");
    let header = format!("{}: {token}\r\n", pxb_daemon::agent::api::TOKEN_HEADER);
    let (_, status) = http_get_with(port, "/v1/status", &header).expect("status");
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["cluster"], "shoot-00000");
    // Every series (`pxb_agent_catalog_backups` has one per synced location: none yet), in the
    // Prometheus text format for a plain request (what promtool reads)...
    let (_, metrics) = http_get(port, "/metrics").expect("metrics");
    for line in [
        format!("pxb_agent_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        "pxb_agent_ready 1".into(),
        "# TYPE pxb_agent_location_validations_total counter".into(),
        "pxb_agent_operations_running 0".into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line:?} not in:\n{metrics}");
    }
    pxb_harness::promtool_check_metrics(&metrics).expect("the exposition passes promtool");
    // ... and in OpenMetrics for Prometheus, which prefers it.
    let accept =
        "Accept: application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3\r\n";
    let (_, openmetrics) = http_get_with(port, "/metrics", accept).expect("metrics");
    assert!(openmetrics.contains("# TYPE pxb_agent info\n"), "{openmetrics}");
    assert!(openmetrics.contains("\npxb_agent_ready 1\n"), "{openmetrics}");
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert_eq!(http_get(port, "/nope").map(|r| r.0), Some(404));

    let locations: Api<BackupLocation> = Api::namespaced(client.clone(), "pxb-system");
    let spec = BackupLocationSpec {
        provider: "file".into(),
        container: dir.path().join("backups").to_string_lossy().into_owned(),
        ..BackupLocationSpec::default()
    };
    locations
        .create(&PostParams::default(), &BackupLocation::new("local", spec))
        .await
        .expect("location");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let loc = locations.get("local").await.expect("get");
        if loc
            .status
            .as_ref()
            .and_then(|s| s.validation.as_ref())
            .is_some_and(|v| v.phase == "Valid")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent validates the location: {:?}",
            loc.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the agent exits after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    agent
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .expect("log");
    assert!(exit.success(), "{exit}: {log}");
    // PXB_LOG_FORMAT=json: one JSON object a line.
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not a JSON line: {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pxb-agent stopped"))),
        "{log}"
    );
    // The location's reconcile logs in its span, which names it.
    let validated = lines
        .iter()
        .find(|l| l["fields"]["message"] == "location validated")
        .unwrap_or_else(|| panic!("no validation line:\n{log}"));
    assert_eq!(validated["span"]["name"], "reconcile", "{validated}");
    assert_eq!(validated["span"]["location"], "local", "{validated}");
    assert!(
        validated["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["location"] == "local")),
        "{validated}"
    );
}

#[test]
fn a_bad_log_setting_stops_the_agent_with_a_clear_message() {
    for (var, value, says) in [
        (
            "PXB_LOG_FORMAT",
            "xml",
            "PXB_LOG_FORMAT=\"xml\" is not a log format (use \"text\" or \"json\")",
        ),
        (
            "PXB_LOG",
            "info,pxb=loud",
            "PXB_LOG=\"info,pxb=loud\" is not a valid log filter",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_pxb-agent"))
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .expect("run pxb-agent");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{var}={value}: {stderr}");
        assert!(stderr.starts_with(&format!("pxb-agent: {says}")), "{stderr}");
    }
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    let err = pxb_harness::promtool_check_metrics("# TYPE x counter\nx{le=\"1\" 1\n").expect_err("broken");
    assert!(err.to_string().contains("promtool"), "{err}");
    pxb_harness::promtool_check_metrics("# HELP x_total Things.\n# TYPE x_total counter\nx_total 1\n")
        .expect("valid");
}
