//! `pxb location check` as a user runs it: the real binary against Azurite over HTTPS, the fake
//! Entra ID, and a local directory.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pxb_azure::AzureBlobStore;
use pxb_harness::azure::{AzureFixture, CLIENT_ID, TENANT_ID};
use pxb_harness::azurite;

/// Runs `pxb` with a clean Azure environment plus `env`; returns its output and how long it took.
fn pxb(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pxb"));
    cmd.args(args);
    for var in [
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_AUTHORITY_HOST",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_ACCOUNT",
        "PXB_LOCATION",
        "PXB_AZURE_ENDPOINT",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    let start = Instant::now();
    let out = cmd.output().expect("run pxb");
    (out, start.elapsed())
}

/// Store settings for `container` in the fixture's Azurite with the development account key.
fn key_config(fx: &AzureFixture, container: &str) -> pxb_azure::AzureConfig {
    let mut c = pxb_azure::AzureConfig::new(
        azurite::ACCOUNT,
        container,
        pxb_azure::AzureAuth::SharedKey {
            key: azurite::ACCOUNT_KEY.into(),
        },
    );
    c.endpoint = Some(fx.azurite.endpoint());
    c.ca_file = Some(fx.ca.ca_file());
    c.http = pxb_azure::HttpSettings {
        max_retries: 2,
        ..pxb_azure::HttpSettings::default()
    };
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Setup {
    fx: AzureFixture,
    container: String,
}

impl Setup {
    async fn new() -> Self {
        let fx = AzureFixture::start(3600).expect("fixture");
        let container = fx.container_name("cli");
        AzureBlobStore::new(key_config(&fx, &container))
            .expect("store")
            .create_container()
            .await
            .expect("container");
        Self { fx, container }
    }

    fn args<'a>(&'a self, location: &'a str, endpoint: &'a str, ca: &'a str, auth: &'a str) -> Vec<&'a str> {
        vec![
            "location",
            "check",
            "--location",
            location,
            "--azure-endpoint",
            endpoint,
            "--ca-file",
            ca,
            "--auth",
            auth,
        ]
    }

    fn wi_env(&self, client_id: &'static str, token_file: &str) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_CLIENT_ID", client_id.to_string()),
            ("AZURE_TENANT_ID", TENANT_ID.to_string()),
            ("AZURE_FEDERATED_TOKEN_FILE", token_file.to_string()),
            ("AZURE_AUTHORITY_HOST", self.fx.entra.authority_host()),
        ]
    }
}

fn run(setup: &Setup, auth: &str, env: &[(&'static str, String)], extra: &[&str]) -> (Output, Duration) {
    let location = format!("azblob://{}/fleet/cluster-a", setup.container);
    let endpoint = setup.fx.azurite.endpoint();
    let ca = setup.fx.ca.ca_file().to_string_lossy().into_owned();
    let mut args = setup.args(&location, &endpoint, &ca, auth);
    args.extend_from_slice(extra);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    pxb(&args, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_with_workload_identity() {
    let s = Setup::new().await;
    let token = s.fx.token_file().to_string_lossy().into_owned();
    let (out, took) = run(&s, "workload-identity", &s.wi_env(CLIENT_ID, &token), &[]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "exit {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for step in ["configure", "authenticate", "list", "write", "read", "delete"] {
        assert!(
            text.lines().any(|l| l.starts_with("PASS") && l.contains(step)),
            "{step} not passed:\n{text}"
        );
    }
    assert!(text.contains("location OK"), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The probe is gone.
    let store = AzureBlobStore::new(key_config(&s.fx, &s.container)).expect("store");
    use pxb_core::ObjectStore;
    assert!(
        store.list("", None, 10).await.expect("list").objects.is_empty(),
        "probe left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_fast_on_a_wrong_client_id() {
    let s = Setup::new().await;
    let token = s.fx.token_file().to_string_lossy().into_owned();
    let (out, took) = run(
        &s,
        "workload-identity",
        &s.wi_env("11111111-0000-0000-0000-00000000dead", &token),
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let line = text.lines().find(|l| l.starts_with("FAIL")).unwrap_or_default();
    assert!(
        line.contains("authenticate") && line.contains("token exchange rejected by Entra ID"),
        "{text}"
    );
    assert!(line.contains("AADSTS700016"), "{text}");
    assert!(text.contains("FAILED at step \"authenticate\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_fast_on_a_missing_token_file() {
    let s = Setup::new().await;
    let (out, took) = run(
        &s,
        "workload-identity",
        &s.wi_env(CLIENT_ID, "/nonexistent/azure-identity-token"),
        &[],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let line = text.lines().find(|l| l.starts_with("FAIL")).unwrap_or_default();
    assert!(
        line.contains("configure") && line.contains("federated token file /nonexistent/azure-identity-token"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fails_fast_on_a_wrong_key() {
    use base64::Engine;
    let s = Setup::new().await;
    let key = base64::engine::general_purpose::STANDARD.encode([42u8; 64]);
    let (out, took) = run(&s, "shared-key", &[("AZURE_STORAGE_KEY", key)], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let line = text.lines().find(|l| l.starts_with("FAIL")).unwrap_or_default();
    assert!(
        line.contains("list") && line.contains("rejected the credentials"),
        "{text}"
    );
    assert!(
        line.contains("AZURE_STORAGE_KEY"),
        "the message says what to fix: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_with_shared_key_and_json() {
    let s = Setup::new().await;
    let (out, _) = run(
        &s,
        "shared-key",
        &[("AZURE_STORAGE_KEY", azurite::ACCOUNT_KEY.to_string())],
        &["--json"],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(doc["passed"], true);
    let steps: Vec<_> = doc["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        steps,
        ["configure", "list", "write", "read", "delete"],
        "no authenticate step without a token"
    );
    assert!(
        doc["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["outcome"] == "passed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_with_sas() {
    let s = Setup::new().await;
    let expiry = std::time::SystemTime::now() + Duration::from_secs(600);
    let sas = pxb_azure::account_sas(azurite::ACCOUNT, azurite::ACCOUNT_KEY, expiry).expect("sas");
    let (out, _) = run(&s, "sas", &[("AZURE_STORAGE_SAS_TOKEN", sas)], &[]);
    assert!(out.status.success(), "{}", stdout(&out));
    let (out, _) = run(&s, "sas", &[], &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text.contains("FAIL configure") && text.contains("AZURE_STORAGE_SAS_TOKEN"),
        "{text}"
    );
}

#[test]
fn check_of_a_local_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let loc = format!("file://{}", dir.path().display());
    let (out, _) = pxb(&["location", "check", "--location", &loc], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PASS list") && text.contains("PASS delete"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("pxb-probe"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "probe left behind"
    );
}

#[test]
fn check_of_a_bad_url_names_the_expected_form() {
    let (out, _) = pxb(
        &["location", "check", "--location", "s3://bucket/x", "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["steps"][0]["outcome"], "failed");
    assert!(
        doc["steps"][0]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("expected file:///"),
        "{doc}"
    );
}
