//! `pxb demo`: pxb's main job on embedded defaults, on one machine: a simulated fleet run by a
//! real `pxb-server` with real agents.
//!
//! 1. A simulated Gardener project with N shoots (default 20) on loopback, plus shoots that are
//!    not eligible (old Kubernetes, another provider, hibernated); 10 % of the eligible ones are
//!    blackholed (their API accepts connections and never answers).
//! 2. A `pxb-agent` on every eligible shoot (in this process, with its own identity).
//! 3. `pxb-server` with its embedded SQLite catalog on a loopback port; an org, the project's
//!    discovery, and a backup location assigned to every cluster: a local directory, or an Azure
//!    Blob container reached by the agents with Workload Identity ([`DemoLocation::Azure`]; the
//!    test harness's `pxb-demo --location azurite` runs it on Azurite and a fake Entra ID).
//! 4. The fleet status and the location's status per cluster, as the API serves them, once the
//!    first pass is done: blackholed shoots are `Unreachable` after one deadline, and hold nothing
//!    up; then backup, restore, sync, verify and delete through the API.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let mut options = pxb_daemon::demo::DemoOptions::default();
//! options.shoots = 5;
//! options.serve = false; // stop after the flow
//! let ok = pxb_daemon::demo::run(options).await?;
//! assert!(ok, "the fleet did not come out as expected");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pxb_azure::WorkloadIdentityOptions;
use pxb_sim::{Fault, Fleet, FleetConfig, ProjectRole, ShootSpec};
use serde_json::{Value, json};

use crate::server::Daemon;
use crate::server::config::{GardenCredential, ServerConfig};

/// What the demo runs.
#[derive(Debug)]
#[non_exhaustive]
pub struct DemoOptions {
    /// Eligible shoots (at least 5).
    pub shoots: usize,
    /// The backup location every cluster gets.
    pub location: DemoLocation,
    /// Keep serving the API (printing its URL and a token) until Ctrl-C after the flow.
    pub serve: bool,
    /// The API's loopback address (`127.0.0.1:0` picks a port).
    pub listen: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            shoots: 20,
            location: DemoLocation::File,
            serve: true,
            listen: "127.0.0.1:0".into(),
        }
    }
}

/// The demo's backup location.
#[derive(Debug, Default)]
pub enum DemoLocation {
    /// A temporary local directory.
    #[default]
    File,
    /// An existing Azure Blob container, reached by every agent with Workload Identity.
    Azure(Box<AzureDemoLocation>),
}

/// An Azure Blob container for the demo.
pub struct AzureDemoLocation {
    /// The storage account.
    pub account: String,
    /// The container (it must exist).
    pub container: String,
    /// The blob endpoint.
    pub endpoint: String,
    /// The agents' pod identity (its `client_id` is the location's `clientId`).
    pub workload_identity: WorkloadIdentityOptions,
    /// Extra CA certificates the agents trust for the endpoint.
    pub ca_file: Option<std::path::PathBuf>,
    /// A line printed after the location's status (e.g. how many token exchanges were granted).
    pub note: Option<Box<dyn Fn() -> String + Send + Sync>>,
}

impl std::fmt::Debug for AzureDemoLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureDemoLocation")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The demo's flags, as `--help` prints them.
pub const USAGE: &str =
    "usage: pxb demo [--shoots N] [--location file|azurite] [--listen 127.0.0.1:PORT] [--exit]
  --shoots N        eligible simulated shoots (at least 5; default 20)
  --location L      file (a temporary directory, the default) or azurite (Azurite over HTTPS with
                    Workload Identity through a fake Entra ID; from the test harness's pxb-demo)
  --listen ADDR     the API's loopback address (default: a free port)
  --exit            stop after the flow instead of serving the API until Ctrl-C (--serve, the
                    default, is accepted too)";

/// Whether `args` ask for the usage (`--help`, `-h`).
pub fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

/// Parses the demo's flags (`--shoots N`, `--location file|azurite`, `--listen ADDR`, `--exit`)
/// into options and whether Azurite is asked for (which only the test harness's `pxb-demo`
/// provides).
pub fn parse_args(args: &[String]) -> Result<(DemoOptions, bool), String> {
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args.get(i + 1).cloned())
    };
    let shoots = match value("--shoots") {
        None => 20,
        Some(v) => match v.and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n >= 5 => n,
            _ => return Err("--shoots needs a number of at least 5".into()),
        },
    };
    let azure = match value("--location") {
        None => false,
        Some(Some(v)) if v == "azurite" || v == "azure" => true,
        Some(Some(v)) if v == "file" => false,
        Some(_) => return Err("--location is file (the default) or azurite".into()),
    };
    let listen = match value("--listen") {
        None => "127.0.0.1:0".to_owned(),
        Some(Some(v))
            if v.parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.ip().is_loopback()) =>
        {
            v
        }
        Some(_) => return Err("--listen needs a loopback address, e.g. 127.0.0.1:8080".into()),
    };
    if let Some(unknown) = args.iter().enumerate().find_map(|(i, a)| {
        let takes_value = |f: &str| matches!(f, "--shoots" | "--location" | "--listen");
        let is_value = i > 0 && takes_value(&args[i - 1]);
        (!is_value && !takes_value(a) && a != "--exit" && a != "--serve").then_some(a)
    }) {
        return Err(format!("unknown argument {unknown:?}\n{USAGE}"));
    }
    Ok((
        DemoOptions {
            shoots,
            location: DemoLocation::File,
            serve: !args.iter().any(|a| a == "--exit"),
            listen,
        },
        azure,
    ))
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: Value = serde_json::from_slice(&resp.bytes().await?).unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{method} {path}: {status} {body}");
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

/// Runs the demo with `options`; `Ok(false)` when the fleet did not come out as expected.
pub async fn run(options: DemoOptions) -> anyhow::Result<bool> {
    let args = options;
    println!("== simulated Gardener project 'demo' on 127.0.0.1 ==");
    let fleet = Fleet::start(FleetConfig::default())?;
    fleet.add_project("demo")?;
    fleet.add_shoots("demo", "shoot", args.shoots)?;
    fleet.add_shoot("demo", ShootSpec::new("legacy").version("1.29.8"))?;
    fleet.add_shoot("demo", ShootSpec::new("on-aws").provider("aws"))?;
    fleet.add_shoot("demo", ShootSpec::new("sleepy"))?;
    fleet.hibernate("demo", "sleepy")?;
    let token = fleet.add_service_account("demo", "pxb-server", ProjectRole::Admin)?;
    let dir = tempfile::tempdir()?;
    let garden = dir.path().join("garden-demo.yaml");
    std::fs::write(&garden, fleet.garden_kubeconfig(&token))?;
    println!("garden {} — {} shoots", fleet.garden_url(), fleet.shoot_count());

    let azure = match &args.location {
        DemoLocation::Azure(a) => Some(&**a),
        DemoLocation::File => None,
    };
    let t = Instant::now();
    let mut agents = Vec::new();
    for i in 0..args.shoots {
        let (wi, ca) = match azure {
            Some(a) => (a.workload_identity.clone(), a.ca_file.clone()),
            None => (WorkloadIdentityOptions::default(), None),
        };
        agents.push(crate::sim::start_agent(&fleet, "demo", &format!("shoot-{i:05}"), wi, ca).await?);
    }
    let offline: Vec<String> = (0..args.shoots.div_ceil(10))
        .map(|i| format!("shoot-{:05}", (i * 10 + 3) % args.shoots))
        .collect();
    for name in &offline {
        fleet.set_fault("demo", name, Fault::Offline)?;
    }
    println!(
        "\n== agents: pxb-agent on {} eligible shoots ({:.1?}); {} of them now blackholed ==",
        args.shoots,
        t.elapsed(),
        offline.len()
    );

    let mut config = ServerConfig::default();
    config.api.listen = args.listen.clone();
    config.catalog.path = dir.path().join("catalog.db").display().to_string();
    config
        .garden_credentials
        .insert("demo".into(), GardenCredential::new(garden.display().to_string()));
    config.fleet.call_timeout_ms = 2000;
    config.fleet.resync_secs = 5;
    let dev_token = format!("demo-{:032x}", rand::random::<u128>());
    let daemon = Daemon::start(config.clone(), Some(dev_token.clone()), |_| None).await?;
    let api = Api {
        http: reqwest::Client::new(),
        url: format!("http://{}", daemon.addr),
        token: dev_token,
    };
    println!(
        "\n== pxb-server on {} (catalog {}) ==",
        api.url, config.catalog.path
    );
    api.post("/v1/orgs", json!({"id": "demo", "displayName": "Demo tenant"}))
        .await?;
    api.post(
        "/v1/orgs/demo/discoveries",
        json!({"id": "demo", "project": "demo", "credential": "demo", "intervalSecs": 30}),
    )
    .await?;
    let backups = dir.path().join("backups");
    let location = match azure {
        Some(a) => {
            json!({"name": "primary", "provider": "azure", "account": a.account,
                   "container": a.container, "endpoint": a.endpoint,
                   "clientId": a.workload_identity.client_id,
                   "clusters": {"all": true}})
        }
        None => json!({"name": "primary", "provider": "file", "container": backups.display().to_string(),
                       "clusters": {"all": true}}),
    };
    let loc = api.post("/v1/orgs/demo/locations", location).await?;
    println!(
        "org 'demo', discovery of project 'demo', location 'primary' ({} {}, {}) on every cluster",
        loc["provider"].as_str().unwrap_or_default(),
        loc["container"].as_str().unwrap_or_default(),
        loc["mode"].as_str().unwrap_or_default()
    );

    let t = Instant::now();
    let expected_ready = args.shoots - offline.len();
    let mut fleet_status = Value::Null;
    while t.elapsed() < Duration::from_secs(120) {
        fleet_status = api.get("/v1/fleet/status?limit=1000").await?;
        let c = &fleet_status["counts"];
        let n = |s: &str| c[s].as_u64().unwrap_or(0) as usize;
        let valid: u64 = fleet_status["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["locations"]["valid"].as_u64())
            .sum();
        if n("Ready") == expected_ready
            && n("Unreachable") == offline.len()
            && n("Ineligible") + n("Hibernated") == 3
            && valid as usize == expected_ready
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "\n== fleet status once every reachable agent validated the location ({:.1?}) ==",
        t.elapsed()
    );
    for e in fleet_status["items"].as_array().into_iter().flatten() {
        let detail = match e["state"].as_str() {
            Some("Ready") | Some("Degraded") => format!(
                "agent {}, {} location(s) valid, seen {}s ago",
                e["agentVersion"].as_str().unwrap_or("?"),
                e["locations"]["valid"],
                e["stalenessSecs"]
            ),
            _ => e["message"].as_str().unwrap_or_default().to_owned(),
        };
        println!(
            "  {:<14} {:<12} {detail}",
            e["cluster"].as_str().unwrap_or_default(),
            e["state"].as_str().unwrap_or_default()
        );
    }
    println!("  {}", counts_line(&fleet_status));

    let st = api
        .get("/v1/orgs/demo/locations/primary/status?limit=1000")
        .await?;
    let items = st["items"].as_array().cloned().unwrap_or_default();
    let valid = items
        .iter()
        .filter(|s| s["validation"]["phase"] == "Valid")
        .count();
    println!(
        "\n== location 'primary': Valid on {valid} of {} clusters the server reached; validated by each agent with its own identity ==",
        items.len()
    );
    if let Some(note) = azure.and_then(|a| a.note.as_ref()) {
        println!("  {}", note());
    }
    let mut ok = valid == expected_ready
        && fleet_status["counts"]["Unreachable"].as_u64() == Some(offline.len() as u64);
    let online: Vec<String> = (0..args.shoots)
        .map(|i| format!("shoot-{i:05}"))
        .filter(|s| !offline.contains(s))
        .collect();
    ok &= operations(&api, &fleet, &online, &offline).await?;
    let end = api.get("/v1/fleet/status?limit=1000").await?;
    println!("\n== fleet status at the end: {} ==", counts_line(&end));

    if args.serve {
        println!(
            "\nserving until Ctrl-C; try: pxb login --server <API> --token <TOKEN> --org demo && pxb backups list"
        );
        println!("API {}", api.url);
        println!("TOKEN {}", api.token);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = tokio::signal::ctrl_c().await;
    }
    for a in agents {
        a.shutdown().await;
    }
    daemon.shutdown().await;
    Ok(ok)
}

/// The non-zero state counts of a fleet status, e.g. `4 Ready, 1 Unreachable`.
fn counts_line(status: &Value) -> String {
    let counts: Vec<String> = status["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    counts.join(", ")
}

/// Polls `path` until `done` holds (or `secs` pass); returns the last answer.
async fn wait_until(
    api: &Api,
    path: &str,
    secs: u64,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        let v = api.get(path).await?;
        if done(&v) || t.elapsed() > Duration::from_secs(secs) {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn final_phase(v: &Value) -> bool {
    !matches!(
        v["phase"].as_str(),
        Some("Pending" | "InProgress" | "Deleting") | None
    )
}

/// A namespace `shop` with a little application on `shoot`; with `vm`, also a KubeVirt
/// `VirtualMachine` (the KubeVirt CRD is installed on every seeded shoot, so VMs can be restored
/// there).
async fn seed(fleet: &Fleet, shoot: &str, vm: bool) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api as KApi, ApiResource, DynamicObject, GroupVersionKind, PostParams};
    let client = crate::sim::shoot_client(fleet, "demo", shoot).await?;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "virtualmachines.kubevirt.io"},
        "spec": {"group": "kubevirt.io", "scope": "Namespaced",
                 "names": {"kind": "VirtualMachine", "plural": "virtualmachines", "singular": "virtualmachine",
                           "listKind": "VirtualMachineList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))?;
    match KApi::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "shop"}}))?;
    KApi::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    for (name, value) in [("settings", "currency=EUR"), ("catalog", "items=42")] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": "shop"}}, "data": {"value": value}}),
        )?;
        KApi::<ConfigMap>::namespaced(client.clone(), "shop")
            .create(&PostParams::default(), &cm)
            .await?;
    }
    if vm {
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
            "virtualmachines",
        );
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "orders-db", "namespace": "shop"},
            "spec": {"running": true, "template": {"spec": {"domain": {"devices": {}}}}}
        }))?;
        KApi::<DynamicObject>::namespaced_with(client, "shop", &ar)
            .create(&PostParams::default(), &obj)
            .await?;
    }
    Ok(())
}

/// Backup, restore, sync, verify and delete through the API; prints what happens.
async fn operations(api: &Api, fleet: &Fleet, online: &[String], offline: &[String]) -> anyhow::Result<bool> {
    let [a, b, target, tenant] = [0, 1, 2, 3].map(|i| online[i].as_str());
    seed(fleet, a, true).await?;
    for s in [b, target] {
        seed(fleet, s, false).await?;
    }
    let mut names = vec![a.to_owned(), b.to_owned()];
    names.extend(offline.first().cloned());
    println!(
        "\n== backup of namespace 'shop' on {} (one per cluster, in parallel) ==",
        names.join(", ")
    );
    let made = api
        .post(
            "/v1/orgs/demo/backups",
            json!({"clusters": {"names": names}, "namespaces": ["shop"], "location": "primary"}),
        )
        .await?;
    let mut ok = true;
    let mut done = BTreeMap::new();
    for bk in made["items"].as_array().cloned().unwrap_or_default() {
        let id = bk["id"].as_str().unwrap_or_default().to_owned();
        let v = wait_until(api, &format!("/v1/orgs/demo/backups/{id}"), 120, final_phase).await?;
        println!(
            "  {:<36} {:<12} {:<8} {} objects, view {} {}",
            id,
            v["clusterName"].as_str().unwrap_or_default(),
            v["phase"].as_str().unwrap_or_default(),
            v["objects"],
            v["view"].as_str().unwrap_or_default(),
            v["message"].as_str().unwrap_or_default()
        );
        done.insert(v["clusterName"].as_str().unwrap_or_default().to_owned(), v);
    }
    ok &= done
        .get(a)
        .is_some_and(|v| v["phase"] == "Success" && v["view"] == "vms");
    ok &= done.get(b).is_some_and(|v| v["phase"] == "Success");
    ok &= offline
        .first()
        .is_none_or(|o| done.get(o).is_some_and(|v| v["phase"] == "Missed"));

    let source = done
        .get(a)
        .and_then(|v| v["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    println!("\n== restore of {source} into {target}, namespace shop -> shop-restored ==");
    let r = api
        .post(
            "/v1/orgs/demo/restores",
            json!({"backup": source, "cluster": target, "namespaceMapping": {"shop": "shop-restored"}}),
        )
        .await?;
    let r = wait_until(
        api,
        &format!("/v1/orgs/demo/restores/{}", r["id"].as_str().unwrap_or_default()),
        120,
        final_phase,
    )
    .await?;
    println!(
        "  {} {}: {} of {} objects created, {} failed",
        r["id"].as_str().unwrap_or_default(),
        r["phase"].as_str().unwrap_or_default(),
        r["counts"]["created"],
        r["counts"]["total"],
        r["counts"]["failed"]
    );
    ok &= r["phase"] == "Success";

    // A backup the tenant made on its own cluster, without the server: a sync finds it.
    seed(fleet, tenant, false).await?;
    {
        use crate::crd::{ApplicationBackup, ApplicationBackupSpec};
        use kube::api::{Api as KApi, PostParams};
        let client = crate::sim::shoot_client(fleet, "demo", tenant).await?;
        let crs: KApi<ApplicationBackup> = KApi::namespaced(client, "pxb-system");
        let mut own = ApplicationBackup::new(
            "tenant-own",
            ApplicationBackupSpec {
                location: "primary".into(),
                namespaces: vec!["shop".into()],
                reclaim_policy: "Retain".into(),
                ..ApplicationBackupSpec::default()
            },
        );
        own.metadata.namespace = Some("pxb-system".into());
        crs.create(&PostParams::default(), &own).await?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            let phase = crs
                .get("tenant-own")
                .await?
                .status
                .map(|s| s.phase)
                .unwrap_or_default();
            if phase == "Success" || phase == "Failed" {
                println!(
                    "\n== the tenant backed up 'shop' on {tenant} itself (ApplicationBackup tenant-own): {phase} =="
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    println!("\n== sync of location 'primary' on {target} ==");
    let run = api
        .post("/v1/orgs/demo/locations/primary/sync", json!({"cluster": target}))
        .await?;
    let st = wait_until(
        api,
        &format!("/v1/orgs/demo/locations/primary/status?cluster={target}"),
        120,
        |v| {
            let s = &v["items"][0]["sync"];
            s["request"] == run["request"] && matches!(s["phase"].as_str(), Some("Completed" | "Failed"))
        },
    )
    .await?;
    let sync = &st["items"][0]["sync"];
    println!(
        "  {}: {} backups found in the location",
        sync["phase"].as_str().unwrap_or_default(),
        sync["backupsFound"]
    );
    ok &= sync["phase"] == "Completed";
    let synced = wait_until(api, "/v1/orgs/demo/backups?limit=1000", 30, |v| {
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["synced"] == true)
    })
    .await?;
    let imported: Vec<&Value> = synced["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["synced"] == true)
        .collect();
    for b in &imported {
        println!(
            "  imported {} (synced, made by {}); the catalog already knew the backups this server made",
            b["id"].as_str().unwrap_or_default(),
            b["originCluster"].as_str().unwrap_or("?")
        );
    }
    ok &= imported.len() == 1 && imported[0]["originCluster"] == tenant;

    println!("\n== verify of location 'primary' (\"cloud file missing\" check) ==");
    api.post("/v1/orgs/demo/locations/primary/verify", json!({}))
        .await?;
    let st = wait_until(
        api,
        "/v1/orgs/demo/locations/primary/status?limit=1000",
        120,
        |v| {
            v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["verify"]["phase"] == "Completed")
        },
    )
    .await?;
    let verified = st["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["verify"]["phase"] == "Completed")
        .cloned()
        .unwrap_or_default();
    println!(
        "  checked {} backups on {}: {} objects missing",
        verified["verify"]["backupsChecked"],
        verified["clusterName"].as_str().unwrap_or_default(),
        verified["verify"]["missingObjects"]
    );
    ok &= verified["verify"]["phase"] == "Completed";

    let gone = done
        .get(b)
        .and_then(|v| v["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    println!("\n== delete of {gone} ==");
    let d = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/orgs/demo/backups/{gone}"),
            None,
        )
        .await?;
    println!("  {}", d["message"].as_str().unwrap_or_default());
    let t = Instant::now();
    let mut deleted = false;
    while t.elapsed() < Duration::from_secs(120) {
        let resp = api
            .http
            .get(format!("{}/v1/orgs/demo/backups/{gone}", api.url))
            .bearer_auth(&api.token)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "  {}",
        if deleted {
            "data and record deleted"
        } else {
            "still not deleted after 120 s"
        }
    );
    ok &= deleted;
    let list = api.get("/v1/orgs/demo/backups?limit=1000").await?;
    println!("\n== backups in the catalog ==");
    for bk in list["items"].as_array().into_iter().flatten() {
        let note = if bk["synced"] == true {
            format!("synced, made by {}", bk["originCluster"].as_str().unwrap_or("?"))
        } else {
            bk["message"].as_str().unwrap_or_default().to_owned()
        };
        println!(
            "  {:<36} {:<12} {:<8} {note}",
            bk["id"].as_str().unwrap_or_default(),
            bk["clusterName"].as_str().unwrap_or_default(),
            bk["phase"].as_str().unwrap_or_default(),
        );
    }
    Ok(ok)
}
