//! The `pxb-server` process across upgrades: restarted on the same catalog with a new
//! configuration, as a Helm upgrade restarts it on the same volume. The server's `mode`
//! (`federated` or `classic`) switched both ways, seen by a tenant's admin and on the cluster; a
//! catalog of an older schema migrated before the server is ready; one of a newer pxb refused and
//! left as it was.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use pxb_core::catalog::records::{BackupRecord, BackupView, Org};
use pxb_core::catalog::{Catalog, Kind};
use pxb_daemon::crd::{AGENT_NAMESPACE, BackupLocation};
use pxb_daemon::server::reconcile::secret_name;
use pxb_daemon::server::sqlite::{SCHEMA_VERSION, SqliteCatalog};
use pxb_harness::oidc::TestIssuer;
use pxb_harness::tls::TestCa;
use pxb_sim::{Fleet, FleetConfig, ProjectRole};
use serde_json::{Value, json};

/// The audience of the test issuer's tokens.
const AUDIENCE: &str = "api://pxb-modes";
/// The phrase an inactive classic location's status and every refusal with it carry.
const INACTIVE: &str = "classic locations are inactive while the server runs in federated mode";
/// The phrase an inactive imported cluster's status carries.
const INACTIVE_IMPORTED: &str = "imported clusters are inactive while the server runs in federated mode";
/// The shoot of the test.
const SHOOT: &str = "shoot-00000";
/// The clusters imported by kubeconfig in classic mode: shoots of a project no discovery reads.
const EDGE: &str = "edge-00000";
const LAB: &str = "edge-00001";

/// A `pxb-server` process; stopped with SIGTERM by [`Server::stop`], killed if dropped.
struct Server {
    child: Child,
    url: String,
    stderr: PathBuf,
}

impl Server {
    /// Stops it with SIGTERM and requires a clean exit within 20 s.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "pxb-server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            exit.success(),
            "exit status {exit}:\n{}",
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `pxb-server --config config` (its standard error in a file in `dir`): the running
/// server once it printed `READY`, or its exit status and standard error when it stopped instead.
fn start(config: &Path, dir: &Path) -> Result<Server, (std::process::ExitStatus, String)> {
    let stderr = dir.join(format!(
        "stderr-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pxb-server"));
    cmd.arg("--config")
        .arg(config)
        .env_remove("PXB_SECRETS_KEY")
        .env_remove("PXB_MODE")
        .env("PXB_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"));
    let mut child = cmd.spawn().expect("start pxb-server");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| l.strip_prefix("READY ").map(str::to_owned));
    match ready {
        Some(url) => Ok(Server { child, url, stderr }),
        None => {
            let status = child.wait().expect("wait");
            Err((status, std::fs::read_to_string(&stderr).unwrap_or_default()))
        }
    }
}

/// A REST call: status and JSON body.
async fn call(
    http: &reqwest::Client,
    url: &str,
    m: reqwest::Method,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http
        .request(m, url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(b) = body {
        r = r.header("content-type", "application/json").body(b.to_string());
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Waits up to 30 s for `check` to return `Some`, then panics with `what` and the last `Err`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The contents of the catalog's files (the database, its WAL and shared memory), by name.
fn catalog_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("catalog.db"))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).expect("read");
            (n, bytes)
        })
        .collect()
}

/// Whether `needle` is anywhere in the catalog's files.
fn catalog_holds(dir: &Path, needle: &str) -> bool {
    catalog_files(dir)
        .values()
        .any(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
}

/// The names of the org's locations in the catalog file, read with SQLite directly.
fn stored_locations(catalog: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(catalog).expect("open catalog");
    let mut stmt = conn
        .prepare("SELECT doc FROM records WHERE kind = ?1 AND org = 'acme' ORDER BY sort")
        .expect("prepare");
    stmt.query_map([Kind::Location.as_str()], |r| r.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|d| {
            let v: Value = serde_json::from_slice(&d.expect("row")).expect("json");
            v["name"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

/// The managed `BackupLocation`s on the shoot and the account keys of the managed Secrets.
async fn on_shoot(client: &kube::Client) -> Result<(Vec<String>, BTreeMap<String, String>), String> {
    let crs: Api<BackupLocation> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), AGENT_NAMESPACE);
    let managed = kube::api::ListParams::default().labels("pxb.io/managed-by=pxb-server");
    let mut names: Vec<String> = crs
        .list(&managed)
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    names.sort();
    let keys = secrets
        .list(&managed)
        .await
        .map_err(|e| e.to_string())?
        .items
        .into_iter()
        .map(|s| {
            let key = s
                .data
                .as_ref()
                .and_then(|d| d.get("accountKey"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            (s.metadata.name.unwrap_or_default(), key)
        })
        .collect();
    Ok((names, keys))
}

/// A refusal because of the server's mode: `409 conflict` naming the mode and how to change it.
fn refused_by_mode(status: u16, body: &Value, what: &str) {
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{what}: {body}"
    );
    assert!(
        msg.contains("the server runs in federated mode") && msg.contains("mode: classic"),
        "{what}: {msg}"
    );
}

/// The org's cluster named `name` from the list (retired ones included), or `Null`.
async fn listed_cluster(http: &reqwest::Client, url: &str, token: &str, name: &str) -> Value {
    let (status, list) = call(
        http,
        &format!("{url}/v1/orgs/acme/clusters"),
        reqwest::Method::GET,
        token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list["items"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits for the next visit of cluster `name` (its `lastSeen` changes).
async fn another_visit(http: &reqwest::Client, url: &str, token: &str, name: &str) {
    let seen = listed_cluster(http, url, token, name).await["status"]["lastSeen"].clone();
    wait_for("another visit", || async {
        let c = listed_cluster(http, url, token, name).await;
        (c["status"]["lastSeen"] != seen && c["status"]["lastSeen"].is_string())
            .then_some(())
            .ok_or_else(|| c.to_string())
    })
    .await;
}

/// An imported cluster the server keeps but does not use: listed `Ineligible`, with why.
fn inactive_imported(c: &Value, what: &str) {
    assert_eq!(
        (&c["source"], &c["status"]["state"]),
        (&json!("imported"), &json!("Ineligible")),
        "{what}: {c}"
    );
    assert!(
        c["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(INACTIVE_IMPORTED) && m.contains("mode: classic")),
        "{what}: {c}"
    );
}

/// A refusal because the location is inactive: `409 conflict` naming it and why.
fn refused_as_inactive(status: u16, body: &Value, what: &str) {
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{what}: {body}"
    );
    assert!(
        msg.contains("location vault is inactive") && msg.contains(INACTIVE),
        "{what}: {msg}"
    );
}

/// One catalog, one shoot, the server upgraded five times: federated (the default) → classic →
/// federated → federated with a secrets key → classic. In federated mode a tenant's admin cannot
/// store a credential, a location's or a cluster's kubeconfig (nothing is stored), key or not;
/// classic mode refuses to start without a secrets key, leaving the catalog as it was; in classic
/// mode a classic location is made and its credential delivered to the shoot, and clusters
/// imported by kubeconfig are visited; back in federated mode the location is listed inactive
/// with the reason, its CR and Secret leave the shoot and do not come back, a backup naming it is
/// refused, deleting works, and the federated location works throughout; the imported clusters
/// are listed inactive with the reason, never visited (their kubeconfig is not opened: the org
/// stays Ready without the key), work on them is refused, and one is removed; in classic mode
/// again the location is active and delivered again, and the imported cluster visited again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_mode_on_upgrade_keeps_classic_locations_inactive_and_loses_nothing() {
    use reqwest::Method as M;
    let dir = tempfile::tempdir().expect("dir");
    let catalog = dir.path().join("catalog.db");
    let fleet = Fleet::start(FleetConfig::default()).expect("simulator");
    fleet.add_project("dev").expect("project");
    fleet.add_shoots("dev", "shoot", 1).expect("shoot");
    // Clusters to import by kubeconfig (classic mode): no discovery reads their project.
    fleet.add_project("edge").expect("edge project");
    fleet.add_shoots("edge", "edge", 2).expect("edge shoots");
    let edge_kubeconfig = fleet
        .admin_kubeconfig("edge", EDGE, 24 * 3600)
        .expect("edge kubeconfig");
    let lab_kubeconfig = fleet
        .admin_kubeconfig("edge", LAB, 24 * 3600)
        .expect("lab kubeconfig");
    // Its client key: never in the catalog in clear.
    let edge_key = edge_kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("client-key-data:"))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("the kubeconfig has a client key");
    let edge = pxb_daemon::sim::shoot_client(&fleet, "edge", EDGE)
        .await
        .expect("edge client");
    pxb_daemon::sim::install_pxb(&edge).await.expect("CRDs on edge");
    let garden_token = fleet
        .add_service_account("dev", "pxb", ProjectRole::Admin)
        .expect("service account");
    let garden = dir.path().join("garden-dev.yaml");
    std::fs::write(&garden, fleet.garden_kubeconfig(&garden_token)).expect("garden kubeconfig");
    let shoot = pxb_daemon::sim::shoot_client(&fleet, "dev", SHOOT)
        .await
        .expect("shoot client");
    pxb_daemon::sim::install_pxb(&shoot).await.expect("CRDs");
    let ca = TestCa::generate().expect("ca");
    let issuer = TestIssuer::start(&ca).expect("issuer");
    let token = |subject: &str, groups: &[&str]| {
        issuer.token(issuer.claims_for(subject, AUDIENCE, groups, &[], 3600))
    };
    let (root, alice) = (token("root", &["ops"]), token("alice", &["acme-admins"]));
    let key_file = dir.path().join("secrets.key");
    std::fs::write(
        &key_file,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [6u8; 32]),
    )
    .expect("key");
    let secret = "AcmeStorageAccountKey0123456789abcdefghijklmnopqrstuv==";
    let config = dir.path().join("pxb-server.yaml");
    // The chart's configuration: the same but for `mode` (and the key that classic needs).
    let write_config = |mode: Option<&str>, key: bool| {
        let mut yaml = String::new();
        if let Some(m) = mode {
            yaml.push_str(&format!("mode: {m}\n"));
        }
        if key {
            yaml.push_str(&format!(
                "secrets: {{keyFile: {:?}}}\n",
                key_file.display().to_string()
            ));
        }
        yaml.push_str(&format!(
            "api: {{listen: '127.0.0.1:0', shutdownGraceSecs: 2}}\n\
             catalog: {{path: {:?}}}\n\
             auth: {{issuer: {:?}, audiences: [{AUDIENCE}], issuerCaFile: {:?}, providerAdminGroups: [ops]}}\n\
             gardenCredentials:\n  dev: {{kubeconfig: {:?}, orgs: [acme], projects: [dev]}}\n\
             fleet: {{callTimeoutMs: 1500, resyncSecs: 1, offlineBackoffSecs: 1, offlineBackoffMaxSecs: 2, \
             snapshotIntervalMs: 100}}\n",
            catalog.display().to_string(),
            issuer.issuer(),
            ca.ca_file().display().to_string(),
            garden.display().to_string(),
        ));
        std::fs::write(&config, yaml).expect("config");
    };
    let http = reqwest::Client::new();
    let location = |name: &str, classic: bool| {
        let mut l = json!({"name": name, "provider": "azure", "account": "acmestore", "container": name,
                           "clusters": {"all": true}});
        if classic {
            l["mode"] = json!("classic");
            l["credential"] = json!({"accountKey": secret});
        } else {
            l["clientId"] = json!("11111111-2222-3333-4444-555555555555");
        }
        l
    };
    let import = |name: &str, kubeconfig: &str| json!({"name": name, "kubeconfig": kubeconfig});
    let backup =
        |location: &str| json!({"clusters": {"all": true}, "namespaces": ["shop"], "location": location});
    let listed = |list: &Value, name: &str| -> Value {
        list["items"]
            .as_array()
            .and_then(|a| a.iter().find(|l| l["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };

    // 1. Federated, the default (no `mode` in the file, no key).
    write_config(None, false);
    let server = start(&config, dir.path()).expect("federated server");
    let api = |p: &str| format!("{}{p}", server.url);
    let (status, body) = call(
        &http,
        &api("/v1/orgs"),
        M::POST,
        &root,
        Some(json!({"id": "acme", "access": [{"role": "admin", "groups": ["acme-admins"]}]})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/discoveries"),
        M::POST,
        &alice,
        Some(json!({"id": "dev", "project": "dev", "credential": "dev", "intervalSecs": 5})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_for("the shoot is discovered", || async {
        let (_, list) = call(&http, &api("/v1/orgs/acme/clusters"), M::GET, &alice, None).await;
        (list["items"][0]["name"] == SHOOT)
            .then_some(())
            .ok_or_else(|| list.to_string())
    })
    .await;
    // The tenant's admin tries to make the server hold a credential: refused, nothing stored.
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/locations"),
        M::POST,
        &alice,
        Some(location("vault", true)),
    )
    .await;
    refused_by_mode(status, &body, "a classic location in federated mode");
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/locations"),
        M::POST,
        &alice,
        Some(location("primary", false)),
    )
    .await;
    assert_eq!((status, &body["active"]), (201, &json!(true)), "{body}");
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/locations/primary"),
        M::PUT,
        &alice,
        Some(json!({"credential": {"accountKey": secret}})),
    )
    .await;
    refused_by_mode(status, &body, "a credential for a federated location");
    // A cluster's kubeconfig is a credential too.
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/clusters"),
        M::POST,
        &alice,
        Some(import("edge", &edge_kubeconfig)),
    )
    .await;
    refused_by_mode(status, &body, "a kubeconfig import in federated mode");
    assert_eq!(
        listed_cluster(&http, &server.url, &alice, "edge").await,
        Value::Null
    );
    let (_, list) = call(&http, &api("/v1/orgs/acme/locations"), M::GET, &alice, None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "{list}");
    let (crs, secrets) = wait_for("the federated location reaches the shoot", || async {
        on_shoot(&shoot)
            .await
            .and_then(|s| (s.0 == ["primary"]).then_some(s.clone()).ok_or(format!("{s:?}")))
    })
    .await;
    assert_eq!((crs.len(), secrets.len()), (1, 0));
    server.stop();
    assert_eq!(stored_locations(&catalog), ["primary"]);
    assert!(
        !catalog_holds(dir.path(), secret) && !catalog_holds(dir.path(), &edge_key),
        "the refused credentials are nowhere in the catalog"
    );

    // 2. Classic without a secrets key: refused at start, the catalog as it was.
    write_config(Some("classic"), false);
    let before = catalog_files(dir.path());
    let (exit, stderr) = match start(&config, dir.path()) {
        Ok(s) => {
            s.stop();
            panic!("a classic server started without a secrets key");
        }
        Err(e) => e,
    };
    assert_eq!(exit.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("mode: classic needs a secrets key")
            && stderr.contains("secrets.keyFile")
            && stderr.contains("PXB_SECRETS_KEY"),
        "{stderr}"
    );
    assert!(catalog_files(dir.path()) == before, "the catalog changed");

    // 3. Classic with the key: classic locations are made and delivered; federated ones keep
    // working.
    write_config(Some("classic"), true);
    let server = start(&config, dir.path()).expect("classic server");
    let api = |p: &str| format!("{}{p}", server.url);
    for name in ["vault", "spare"] {
        let (status, body) = call(
            &http,
            &api("/v1/orgs/acme/locations"),
            M::POST,
            &alice,
            Some(location(name, true)),
        )
        .await;
        assert_eq!(
            (status, &body["active"], &body["hasCredential"]),
            (201, &json!(true), &json!(true)),
            "{body}"
        );
    }
    let vault_secret = secret_name("vault");
    wait_for("the classic locations reach the shoot", || async {
        let s = on_shoot(&shoot).await?;
        let want = BTreeMap::from([
            (secret_name("spare"), secret.to_owned()),
            (vault_secret.clone(), secret.to_owned()),
        ]);
        (s.0 == ["primary", "spare", "vault"] && s.1 == want)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/backups"),
        M::POST,
        &alice,
        Some(backup("vault")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Clusters imported by kubeconfig are visited; the locations reach them too.
    for (name, kubeconfig) in [("edge", &edge_kubeconfig), ("lab", &lab_kubeconfig)] {
        let (status, body) = call(
            &http,
            &api("/v1/orgs/acme/clusters"),
            M::POST,
            &alice,
            Some(import(name, kubeconfig)),
        )
        .await;
        assert_eq!((status, &body["source"]), (201, &json!("imported")), "{body}");
    }
    wait_for("the imported cluster is visited", || async {
        let s = on_shoot(&edge).await?;
        let c = listed_cluster(&http, &server.url, &alice, "edge").await;
        (s.0 == ["primary", "spare", "vault"] && s.1.len() == 2 && c["status"]["lastSeen"].is_string())
            .then_some(())
            .ok_or(format!("{s:?} {c}"))
    })
    .await;
    server.stop();
    assert_eq!(stored_locations(&catalog), ["primary", "spare", "vault"]);
    assert!(
        !catalog_holds(dir.path(), secret) && !catalog_holds(dir.path(), &edge_key),
        "the credentials are stored sealed only"
    );

    // 4. Federated again, the key gone from the configuration: nothing is lost, the classic
    // locations are inactive.
    write_config(Some("federated"), false);
    let server = start(&config, dir.path()).expect("federated server again");
    let api = |p: &str| format!("{}{p}", server.url);
    let (status, body) = call(&http, &api("/v1/orgs/acme"), M::GET, &alice, None).await;
    assert_eq!((status, &body["state"]), (200, &json!("Ready")), "{body}");
    let (_, list) = call(&http, &api("/v1/orgs/acme/locations"), M::GET, &alice, None).await;
    assert_eq!(listed(&list, "primary")["active"], json!(true), "{list}");
    for name in ["vault", "spare"] {
        let l = listed(&list, name);
        assert_eq!(
            (&l["active"], &l["mode"], &l["hasCredential"]),
            (&json!(false), &json!("classic"), &json!(true)),
            "{list}"
        );
        assert!(
            l["inactiveReason"].as_str().is_some_and(|r| r.contains(INACTIVE)),
            "{l}"
        );
    }
    let (status, one) = call(&http, &api("/v1/orgs/acme/locations/vault"), M::GET, &alice, None).await;
    assert_eq!((status, &one["active"]), (200, &json!(false)), "{one}");
    // Their CRs and credentials leave the shoot, and are not delivered again.
    wait_for("the inactive locations leave the shoot", || async {
        on_shoot(&shoot).await.and_then(|s| {
            (s.0 == ["primary"] && s.1.is_empty())
                .then_some(())
                .ok_or(format!("{s:?}"))
        })
    })
    .await;
    // The imported clusters are kept (the org is Ready although their kubeconfigs cannot be
    // opened without the key) but not used: listed with why, never visited.
    let edge_seen = listed_cluster(&http, &server.url, &alice, "edge").await["status"]["lastSeen"].clone();
    assert!(edge_seen.is_string(), "{edge_seen}");
    for name in ["edge", "lab"] {
        let c = listed_cluster(&http, &server.url, &alice, name).await;
        inactive_imported(&c, "an imported cluster in federated mode without the key");
    }
    // Two more visits later, still not.
    for _ in 0..2 {
        another_visit(&http, &server.url, &alice, SHOOT).await;
    }
    let c = listed_cluster(&http, &server.url, &alice, "edge").await;
    inactive_imported(&c, "after two visits of the shoot");
    assert_eq!(c["status"]["lastSeen"], edge_seen, "{c}");
    // Nothing touched the imported cluster: what classic mode wrote there is as it was.
    let s = on_shoot(&edge).await.expect("edge");
    assert_eq!(
        (s.0.as_slice(), s.1.len()),
        (
            &["primary".to_owned(), "spare".to_owned(), "vault".to_owned()][..],
            2
        ),
        "{s:?}"
    );
    // Work on it is refused with why.
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/locations/primary/sync"),
        M::POST,
        &alice,
        Some(json!({"cluster": "edge"})),
    )
    .await;
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        status == 409 && msg.contains("cluster edge is inactive") && msg.contains(INACTIVE_IMPORTED),
        "a sync on an inactive imported cluster: {status} {body}"
    );
    // No new import; an inactive one can be removed.
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/clusters"),
        M::POST,
        &alice,
        Some(import("edge2", &edge_kubeconfig)),
    )
    .await;
    refused_by_mode(
        status,
        &body,
        "a kubeconfig import in federated mode without the key",
    );
    let (status, body) = call(&http, &api("/v1/orgs/acme/clusters/lab"), M::DELETE, &alice, None).await;
    assert_eq!(status, 204, "{body}");
    let c = listed_cluster(&http, &server.url, &alice, "lab").await;
    assert_eq!(c["status"]["state"], json!("Retired"), "{c}");
    let s = on_shoot(&shoot).await.expect("shoot");
    assert_eq!(
        (s.0.as_slice(), s.1.len()),
        (&["primary".to_owned()][..], 0),
        "{s:?}"
    );
    // Work with them is refused with why; the federated location works.
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/backups"),
        M::POST,
        &alice,
        Some(backup("vault")),
    )
    .await;
    refused_as_inactive(status, &body, "a backup naming an inactive location");
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/locations/vault/validate"),
        M::POST,
        &alice,
        None,
    )
    .await;
    refused_as_inactive(status, &body, "a validation of an inactive location");
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/backups"),
        M::POST,
        &alice,
        Some(backup("primary")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Deleting works.
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/locations/spare"),
        M::DELETE,
        &alice,
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (_, list) = call(&http, &api("/v1/orgs/acme/locations"), M::GET, &alice, None).await;
    assert_eq!(listed(&list, "spare"), Value::Null, "{list}");
    server.stop();
    assert_eq!(stored_locations(&catalog), ["primary", "vault"]);

    // 4b. Federated with the key (kept for the support channel, say): the key changes nothing.
    // No import, and the imported cluster stays sealed and unvisited.
    write_config(Some("federated"), true);
    let server = start(&config, dir.path()).expect("federated server with the key");
    let api = |p: &str| format!("{}{p}", server.url);
    let (status, body) = call(&http, &api("/v1/orgs/acme"), M::GET, &alice, None).await;
    assert_eq!((status, &body["state"]), (200, &json!("Ready")), "{body}");
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/clusters"),
        M::POST,
        &alice,
        Some(import("edge2", &edge_kubeconfig)),
    )
    .await;
    refused_by_mode(
        status,
        &body,
        "a kubeconfig import in federated mode with the key",
    );
    assert_eq!(
        listed_cluster(&http, &server.url, &alice, "edge2").await,
        Value::Null
    );
    another_visit(&http, &server.url, &alice, SHOOT).await;
    let c = listed_cluster(&http, &server.url, &alice, "edge").await;
    inactive_imported(&c, "an imported cluster in federated mode with the key");
    assert_eq!(c["status"]["lastSeen"], edge_seen, "{c}");
    server.stop();

    // 5. Classic again: the same location is active and delivered again (the deleted one not).
    write_config(Some("classic"), true);
    let server = start(&config, dir.path()).expect("classic server again");
    let api = |p: &str| format!("{}{p}", server.url);
    let (status, one) = call(&http, &api("/v1/orgs/acme/locations/vault"), M::GET, &alice, None).await;
    assert_eq!(
        (status, &one["active"], &one["inactiveReason"]),
        (200, &json!(true), &Value::Null),
        "{one}"
    );
    wait_for("the classic location is delivered again", || async {
        let s = on_shoot(&shoot).await?;
        let want = BTreeMap::from([(vault_secret.clone(), secret.to_owned())]);
        (s.0 == ["primary", "vault"] && s.1 == want)
            .then_some(())
            .ok_or(format!("{s:?}"))
    })
    .await;
    let (status, body) = call(
        &http,
        &api("/v1/orgs/acme/backups"),
        M::POST,
        &alice,
        Some(backup("vault")),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // The imported cluster is visited again (the deleted location leaves it); the removed one
    // stays retired.
    wait_for("the imported cluster is visited again", || async {
        let s = on_shoot(&edge).await?;
        let c = listed_cluster(&http, &server.url, &alice, "edge").await;
        (s.0 == ["primary", "vault"]
            && c["status"]["lastSeen"] != edge_seen
            && c["status"]["state"] != "Ineligible")
            .then_some(())
            .ok_or(format!("{s:?} {c}"))
    })
    .await;
    let c = listed_cluster(&http, &server.url, &alice, "lab").await;
    assert_eq!(c["status"]["state"], json!("Retired"), "{c}");
    server.stop();
}

/// A catalog left at the schema before this pxb's by an older pxb-server (its backups without
/// the index tags a later migration writes) is migrated before the server answers: every `/readyz`
/// that says ready comes with the file at this pxb's schema, and the backups are found by the
/// tags the migration wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_catalog_is_migrated_before_the_server_is_ready() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("catalog.db");
    // What the first pxb-server wrote: an org and its backups (schema 1, no tags), then what
    // the pxb-server of the schema before this one left (its migrations applied).
    SqliteCatalog::migrate_file_to(&path, 1).expect("schema 1");
    let backups = 3000;
    {
        let mut conn = rusqlite::Connection::open(&path).expect("open");
        let tx = conn.transaction().expect("tx");
        let org = Catalog::put_of(
            &Org {
                id: "acme".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                ..Org::default()
            },
            None,
        )
        .expect("org");
        let records = (0..backups).map(|i| BackupRecord {
            org: "acme".into(),
            id: format!("backup-{i:05}"),
            cluster: "uid-one".into(),
            cluster_name: "one".into(),
            location: "loc".into(),
            location_name: "primary".into(),
            namespaces: vec![if i % 3 == 0 { "shop" } else { "blog" }.into()],
            phase: pxb_core::catalog::records::BackupPhase::Success,
            view: BackupView::Namespaces,
            created_ms: 1_700_000_000_000 + i,
            ..BackupRecord::default()
        });
        let puts = std::iter::once(org).chain(records.map(|b| Catalog::put_of(&b, None).expect("backup")));
        for p in puts {
            tx.execute(
                "INSERT INTO records (kind, org, id, revision, sort, cluster, location, status, time_ms, doc)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params![
                    p.kind.as_str(),
                    p.org,
                    p.id,
                    p.index.sort,
                    p.index.cluster,
                    p.index.location,
                    p.index.status,
                    p.index.time_ms,
                    p.doc
                ],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    SqliteCatalog::migrate_file_to(&path, SCHEMA_VERSION - 1).expect("the schema before");
    let version = || -> i64 {
        rusqlite::Connection::open(&path)
            .expect("open")
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version")
    };
    assert_eq!(version(), SCHEMA_VERSION - 1);

    // A port of our own, so /readyz can be asked before the server says READY.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let token = "migration-dev-token-0123456789abcdef";
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pxb-server"))
        .env("PXB_DEV_TOKEN", token)
        .env("PXB_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("PXB_CATALOG_PATH", &path)
        .env_remove("PXB_MODE")
        .env("PXB_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start pxb-server");
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut refused, mut ready) = (0u32, None);
    while ready.is_none() {
        assert!(
            Instant::now() < deadline,
            "not ready within 60 s:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "pxb-server stopped:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        match http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("readiness");
                if body["ready"] == true {
                    // Read after the answer: the file cannot have been migrated after it.
                    assert_eq!(version(), SCHEMA_VERSION, "ready before the migration: {body}");
                    ready = Some(body);
                }
            }
            Ok(r) => panic!("/readyz answered {}", r.status()),
            Err(_) => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout).lines().next().and_then(|l| l.ok());
    assert_eq!(line, Some(format!("READY {url}")));
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        log.contains("catalog schema migrated") && log.contains(&format!("version={SCHEMA_VERSION}")),
        "{log}"
    );
    // The backups are found by their namespace, a tag the migrations wrote.
    let mut found = 0;
    let mut after: Option<String> = None;
    loop {
        let mut params = vec![("namespace", "shop".to_owned()), ("limit", "1000".to_owned())];
        params.extend(after.clone().map(|a| ("after", a)));
        let q = url::Url::parse_with_params(&format!("{url}/v1/orgs/acme/backups"), &params).expect("url");
        let (status, page) = call(&http, q.as_str(), reqwest::Method::GET, token, None).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.iter().all(|b| b["namespaces"] == json!(["shop"])), "{page}");
        found += items.len();
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(found, (0..backups).filter(|i| i % 3 == 0).count());
    eprintln!("/readyz refused {refused} time(s) while the catalog was migrated");
    let server = Server {
        child,
        url,
        stderr: stderr_path,
    };
    server.stop();
}

/// A catalog of a newer pxb (a higher schema version; here also in another journal mode, as a
/// newer pxb might leave it) stops the server with a clear error, and not a byte of it changes.
#[test]
fn a_catalog_of_a_newer_pxb_stops_the_server_and_stays_as_it_was() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("catalog.db");
    SqliteCatalog::migrate_file_to(&path, SCHEMA_VERSION).expect("catalog");
    {
        let conn = rusqlite::Connection::open(&path).expect("open");
        let mode: String = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "delete");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("newer");
    }
    let before = catalog_files(dir.path());
    assert_eq!(before.keys().collect::<Vec<_>>(), ["catalog.db"]);
    let out = Command::new(env!("CARGO_BIN_EXE_pxb-server"))
        .env("PXB_API_LISTEN", "127.0.0.1:0")
        .env("PXB_CATALOG_PATH", &path)
        .env_remove("PXB_MODE")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "has schema version {}, newer than this pxb-server knows ({SCHEMA_VERSION}); run a newer pxb-server",
            SCHEMA_VERSION + 1
        )),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("READY"));
    assert!(catalog_files(dir.path()) == before, "the catalog changed");
}
