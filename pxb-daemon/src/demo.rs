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
use std::future::Future;
use std::time::{Duration, Instant};

use pxb_azure::WorkloadIdentityOptions;
use pxb_core::api::rest::{
    BackupRequest, CreateDiscovery, CreateLocation, CreateOrg, DeleteQuery, ErrorCode, FleetStatusView,
    ListQuery, RestoreRequest, SyncRequestBody,
};
use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, BackupView, ClusterSelector, ClusterState, LocationStatus, RequestPhase,
    RestorePhase, ValidationPhase, VerifyPhase,
};
use pxb_sim::{Fault, Fleet, FleetConfig, ProjectRole, ShootSpec};
use serde_json::json;

use crate::client::Client;
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
    /// Turn the opt-in support channel on and off against this telemetry service at the end.
    pub support: Option<DemoSupport>,
    /// Sign users in to the API and the console with this OpenID Connect issuer (besides the
    /// demo's development token).
    pub entra: Option<DemoEntra>,
}

/// An OpenID Connect issuer for the demo's sign-in (the test harness's Entra ID stand-in).
#[derive(Debug, Clone)]
pub struct DemoEntra {
    /// The issuer URL.
    pub issuer: String,
    /// The API's audience in its tokens.
    pub audience: String,
    /// The console's client id there.
    pub console_client_id: String,
    /// Its CA (PEM file).
    pub ca_file: std::path::PathBuf,
    /// The app role that makes a user a provider admin.
    pub provider_admin_role: String,
    /// The token group whose members are viewers of the demo's org.
    pub viewer_group: String,
}

/// A telemetry service for the demo's support channel (the test harness's stand-in).
pub struct DemoSupport {
    /// Its `https://` endpoint.
    pub endpoint: String,
    /// Its CA (PEM file).
    pub ca_file: std::path::PathBuf,
    /// What the service has received so far, in one line.
    pub note: Box<dyn Fn() -> String + Send + Sync>,
}

impl std::fmt::Debug for DemoSupport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoSupport")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Whether `args` ask for the support channel (`--support-channel`), which only the test
/// harness's `pxb-demo` provides a service for.
pub fn wants_support_channel(args: &[String]) -> bool {
    args.iter().any(|a| a == "--support-channel")
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            shoots: 20,
            location: DemoLocation::File,
            serve: true,
            listen: "127.0.0.1:0".into(),
            support: None,
            entra: None,
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
    "usage: pxb demo [--shoots N] [--location file|azurite] [--listen 127.0.0.1:PORT] [--exit] [--support-channel] [--entra-login]
  --shoots N        eligible simulated shoots (at least 5; default 20)
  --location L      file (a temporary directory, the default) or azurite (Azurite over HTTPS with
                    Workload Identity through a fake Entra ID; from the test harness's pxb-demo)
  --listen ADDR     the API's loopback address (default: a free port)
  --exit            stop after the flow instead of serving the API until Ctrl-C (--serve, the
                    default, is accepted too)
  --support-channel switch the opt-in support channel on and off at the end, against a stand-in
                    telemetry service (mutual TLS; from the test harness's pxb-demo)
  --entra-login     sign in to the API and the console with a stand-in Entra ID too (the
                    authorization code flow with PKCE; the user `operator` is a provider admin,
                    `viewer` (login_hint) a viewer of org demo;
                    from the test harness's pxb-demo)";

/// Whether `args` ask for sign-in with a stand-in Entra ID (`--entra-login`), which only the
/// test harness's `pxb-demo` provides.
pub fn wants_entra_login(args: &[String]) -> bool {
    args.iter().any(|a| a == "--entra-login")
}

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
        (!is_value
            && !takes_value(a)
            && !matches!(
                a.as_str(),
                "--exit" | "--serve" | "--support-channel" | "--entra-login"
            ))
        .then_some(a)
    }) {
        return Err(format!("unknown argument {unknown:?}\n{USAGE}"));
    }
    Ok((
        DemoOptions {
            shoots,
            location: DemoLocation::File,
            serve: !args.iter().any(|a| a == "--exit"),
            listen,
            support: None,
            entra: None,
        },
        azure,
    ))
}

/// The demo's org.
const ORG: &str = "demo";
/// The demo's location.
const LOCATION: &str = "primary";

/// A list query of one page of up to 1000 items.
fn page_of_1000() -> ListQuery {
    ListQuery {
        limit: Some(1000),
        ..ListQuery::default()
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
    // A second project nobody discovers yet: for trying onboarding (a discovery of project
    // `staging` with the garden credential `staging`) in the console or with the CLI.
    fleet.add_project("staging")?;
    fleet.add_shoots("staging", "stage", 3)?;
    let staging_token = fleet.add_service_account("staging", "pxb-server", ProjectRole::Admin)?;
    let staging = dir.path().join("garden-staging.yaml");
    std::fs::write(&staging, fleet.garden_kubeconfig(&staging_token))?;
    println!(
        "garden {} — {} shoots (project demo; project staging with 3 more, not discovered yet)",
        fleet.garden_url(),
        fleet.shoot_count()
    );

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
    config.garden_credentials.insert(
        "staging".into(),
        GardenCredential::new(staging.display().to_string()),
    );
    config.fleet.call_timeout_ms = 2000;
    config.fleet.resync_secs = 5;
    if let Some(e) = &args.entra {
        config.auth.issuer = e.issuer.clone();
        config.auth.audiences = vec![e.audience.clone()];
        config.auth.issuer_ca_file = e.ca_file.display().to_string();
        config.auth.console_client_id = e.console_client_id.clone();
        config.auth.provider_admin_roles = vec![e.provider_admin_role.clone()];
    }
    let support_file = dir.path().join("support-enabled");
    if let Some(sup) = &args.support {
        std::fs::write(&support_file, "false\n")?;
        config.telemetry.support.endpoint = sup.endpoint.clone();
        config.telemetry.support.ca_file = sup.ca_file.display().to_string();
        config.telemetry.support.enabled_file = support_file.display().to_string();
        config.telemetry.support.upload_interval_secs = 10;
    }
    let dev_token = format!("demo-{:032x}", rand::random::<u128>());
    let daemon = Daemon::start(config.clone(), Some(dev_token.clone()), |_| None).await?;
    let url = format!("http://{}", daemon.addr);
    let api = Client::builder(&url).token(&dev_token).build()?;
    println!("\n== pxb-server on {} (catalog {}) ==", url, config.catalog.path);
    // With a sign-in of its own, the tenant's viewers: members of the group `demo-viewers`.
    let access = match &args.entra {
        Some(e) => vec![pxb_core::catalog::records::RoleBinding {
            role: pxb_core::catalog::records::Role::Viewer,
            groups: vec![e.viewer_group.clone()],
            app_roles: Vec::new(),
        }],
        None => Vec::new(),
    };
    api.create_org(&CreateOrg {
        id: ORG.into(),
        display_name: "Demo tenant".into(),
        mode: Default::default(),
        access,
    })
    .await?;
    api.create_discovery(
        ORG,
        &CreateDiscovery {
            id: "demo".into(),
            project: "demo".into(),
            credential: "demo".into(),
            interval_secs: Some(30),
        },
    )
    .await?;
    let backups = dir.path().join("backups");
    let every = ClusterSelector {
        all: true,
        ..ClusterSelector::default()
    };
    let location = match azure {
        Some(a) => CreateLocation {
            name: LOCATION.into(),
            provider: "azure".into(),
            account: Some(a.account.clone()),
            container: a.container.clone(),
            prefix: None,
            endpoint: Some(a.endpoint.clone()),
            mode: None,
            client_id: a.workload_identity.client_id.clone(),
            tenant_id: None,
            cluster_client_ids: BTreeMap::new(),
            credential: None,
            clusters: every,
            sync: false,
        },
        None => CreateLocation {
            name: LOCATION.into(),
            provider: "file".into(),
            account: None,
            container: backups.display().to_string(),
            prefix: None,
            endpoint: None,
            mode: None,
            client_id: None,
            tenant_id: None,
            cluster_client_ids: BTreeMap::new(),
            credential: None,
            clusters: every,
            sync: false,
        },
    };
    let loc = api.create_location(ORG, &location).await?;
    let mode = serde_json::to_value(loc.mode)?;
    println!(
        "org 'demo', discovery of project 'demo', location 'primary' ({} {}, {}) on every cluster",
        loc.provider,
        loc.container,
        mode.as_str().unwrap_or_default()
    );

    let t = Instant::now();
    let expected_ready = args.shoots - offline.len();
    let mut fleet_status = None;
    while t.elapsed() < Duration::from_secs(120) {
        let status = api.fleet_status(&page_of_1000()).await?;
        let n = |s: ClusterState| count(&status, s) as usize;
        let valid: u64 = status.items.iter().map(|e| u64::from(e.locations.valid)).sum();
        let settled = n(ClusterState::Ready) == expected_ready
            && n(ClusterState::Unreachable) == offline.len()
            && n(ClusterState::Ineligible) + n(ClusterState::Hibernated) == 3
            && valid as usize == expected_ready;
        fleet_status = Some(status);
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "\n== fleet status once every reachable agent validated the location ({:.1?}) ==",
        t.elapsed()
    );
    for e in fleet_status.iter().flat_map(|f| &f.items) {
        let detail = match e.state {
            ClusterState::Ready | ClusterState::Degraded => format!(
                "agent {}, {} location(s) valid, seen {}s ago",
                e.agent_version.as_deref().unwrap_or("?"),
                e.locations.valid,
                or_null(e.staleness_secs)
            ),
            _ => e.message.clone().unwrap_or_default(),
        };
        println!("  {:<14} {:<12} {detail}", e.cluster, e.state.as_str());
    }
    println!("  {}", fleet_status.as_ref().map(counts_line).unwrap_or_default());

    let st = api.location_status(ORG, LOCATION, &page_of_1000()).await?;
    let items = st.items;
    let valid = items
        .iter()
        .filter(|s| s.validation.phase == ValidationPhase::Valid)
        .count();
    println!(
        "\n== location 'primary': Valid on {valid} of {} clusters the server reached; validated by each agent with its own identity ==",
        items.len()
    );
    if let Some(note) = azure.and_then(|a| a.note.as_ref()) {
        println!("  {}", note());
    }
    let mut ok = valid == expected_ready
        && fleet_status
            .as_ref()
            .and_then(|f| f.counts.get(ClusterState::Unreachable.as_str()))
            == Some(&(offline.len() as u64));
    let online: Vec<String> = (0..args.shoots)
        .map(|i| format!("shoot-{i:05}"))
        .filter(|s| !offline.contains(s))
        .collect();
    ok &= operations(&api, &fleet, &online, &offline).await?;
    ok &= backup_info(&url, &dev_token).await?;
    if let (Some(sup), Some(channel)) = (&args.support, &daemon.support) {
        ok &= support_channel(sup, channel, &support_file).await?;
    }
    let end = api.fleet_status(&page_of_1000()).await?;
    println!("\n== fleet status at the end: {} ==", counts_line(&end));

    if args.serve {
        println!(
            "\nserving until Ctrl-C; open CONSOLE in a browser (the code works once), or try: pxb login --server <API> --token <TOKEN> --org demo && pxb backups list"
        );
        println!("API {url}");
        // The console signed in as the demo's provider admin: a one-time code, never the token.
        let code = daemon
            .server
            .console_sign_in_code(crate::server::auth::Identity::development());
        println!("CONSOLE {url}/#/signin?code={code}");
        // Last: readers (the tests) stop reading and may close the pipe once they have it.
        println!("TOKEN {dev_token}");
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

/// The clusters of a fleet status in `state`.
/// Switches the support channel on through its file, waits for an upload, and off again.
async fn support_channel(
    sup: &DemoSupport,
    channel: &crate::server::SupportRunning,
    file: &std::path::Path,
) -> anyhow::Result<bool> {
    println!(
        "\n== opt-in support channel, against a stand-in telemetry service at {} ==",
        sup.endpoint
    );
    println!("  off (the default): {}", (sup.note)());
    std::fs::write(file, "true\n")?;
    let t = Instant::now();
    while channel.status().uploads == 0 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let on = channel.status();
    println!(
        "  switched on ({} says true): registered {}, {} upload(s) in {:.1?}",
        file.display(),
        on.registered,
        on.uploads,
        t.elapsed()
    );
    println!("  {}", (sup.note)());
    std::fs::write(file, "false\n")?;
    let t = Instant::now();
    while channel.status().enabled && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "  switched off again: {}",
        if channel.status().enabled {
            "still on after 30 s"
        } else {
            "nothing more is sent"
        }
    );
    Ok(on.registered && on.uploads > 0 && !channel.status().enabled)
}

/// Prints the per-backup info series of `/metrics`; the deleted backup's must be there with
/// `status="Deleted"` and the status it had.
async fn backup_info(url: &str, token: &str) -> anyhow::Result<bool> {
    // The per-backup series name tenants: only a token that sees the org gets them.
    let text = reqwest::Client::new()
        .get(format!("{url}/metrics"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("pxb_server_backup_info{"))
        .collect();
    println!(
        "\n== pxb_server_backup_info on /metrics ({} series; a deleted backup's stays for telemetry.backupInfoRetentionHours) ==",
        lines.len()
    );
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| !l.contains("status=\"Deleted\""));
    for l in sorted.iter().take(6) {
        println!("  {l}");
    }
    if lines.len() > 6 {
        println!("  … {} more", lines.len() - 6);
    }
    Ok(lines
        .iter()
        .any(|l| l.contains("status=\"Deleted\"") && l.contains("previous_status=\"")))
}

fn count(status: &FleetStatusView, state: ClusterState) -> u64 {
    status.counts.get(state.as_str()).copied().unwrap_or(0)
}

/// The non-zero state counts of a fleet status, e.g. `4 Ready, 1 Unreachable`.
fn counts_line(status: &FleetStatusView) -> String {
    let counts: Vec<String> = status
        .counts
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    counts.join(", ")
}

/// A value as JSON prints it: `null` when absent.
fn or_null<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// Calls `get` until `done` holds (or `secs` pass); returns the last answer.
async fn wait_until<T, F, Fut>(secs: u64, mut get: F, done: impl Fn(&T) -> bool) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, crate::client::ClientError>>,
{
    let t = Instant::now();
    loop {
        let v = get().await?;
        if done(&v) || t.elapsed() > Duration::from_secs(secs) {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
async fn operations(
    api: &Client,
    fleet: &Fleet,
    online: &[String],
    offline: &[String],
) -> anyhow::Result<bool> {
    let [a, b, target, tenant] = [0, 1, 2, 3].map(|i| online[i].as_str());
    let all = page_of_1000();
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
        .create_backups(
            ORG,
            &BackupRequest {
                clusters: ClusterSelector {
                    names,
                    ..ClusterSelector::default()
                },
                namespaces: vec!["shop".into()],
                location: LOCATION.into(),
            },
        )
        .await?;
    let mut ok = true;
    let mut done: BTreeMap<String, BackupRecord> = BTreeMap::new();
    for bk in made.items {
        let v = wait_until(120, || api.get_backup(ORG, &bk.id), |v| !v.phase.is_active()).await?;
        println!(
            "  {:<36} {:<12} {:<8} {} objects, view {} {}",
            bk.id,
            v.cluster_name,
            v.phase,
            v.objects,
            v.view.as_str(),
            v.message.as_deref().unwrap_or_default()
        );
        done.insert(v.cluster_name.clone(), v);
    }
    ok &= done
        .get(a)
        .is_some_and(|v| v.phase == BackupPhase::Success && v.view == BackupView::Vms);
    ok &= done.get(b).is_some_and(|v| v.phase == BackupPhase::Success);
    ok &= offline
        .first()
        .is_none_or(|o| done.get(o).is_some_and(|v| v.phase == BackupPhase::Missed));

    let source = done.get(a).map(|v| v.id.clone()).unwrap_or_default();
    println!("\n== restore of {source} into {target}, namespace shop -> shop-restored ==");
    let r = api
        .create_restore(
            ORG,
            &RestoreRequest {
                backup: source,
                cluster: Some(target.to_owned()),
                namespace_mapping: [("shop".to_owned(), "shop-restored".to_owned())].into(),
                ..RestoreRequest::default()
            },
        )
        .await?;
    let r = wait_until(120, || api.get_restore(ORG, &r.id), |r| !r.phase.is_active()).await?;
    println!(
        "  {} {}: {} of {} objects created, {} failed",
        r.id, r.phase, r.counts.created, r.counts.total, r.counts.failed
    );
    ok &= r.phase == RestorePhase::Success;

    // A backup the tenant made on its own cluster, without the server: a sync finds it.
    seed(fleet, tenant, false).await?;
    {
        use crate::crd::{ApplicationBackup, ApplicationBackupPhase, ApplicationBackupSpec};
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
            if matches!(
                phase,
                ApplicationBackupPhase::Success | ApplicationBackupPhase::Failed
            ) {
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
        .sync_location(
            ORG,
            LOCATION,
            &SyncRequestBody {
                cluster: target.to_owned(),
            },
        )
        .await?;
    let on_target = ListQuery {
        cluster: Some(target.to_owned()),
        ..ListQuery::default()
    };
    let st = wait_until(
        120,
        || api.location_status(ORG, LOCATION, &on_target),
        |v| {
            v.items.first().and_then(|s| s.sync.as_ref()).is_some_and(|s| {
                s.request == run.request && matches!(s.phase, RequestPhase::Completed | RequestPhase::Failed)
            })
        },
    )
    .await?;
    let sync = st.items.first().and_then(|s| s.sync.as_ref());
    println!(
        "  {}: {} backups found in the location",
        sync.map(|s| format!("{:?}", s.phase)).unwrap_or_default(),
        or_null(sync.map(|s| s.backups_found))
    );
    ok &= sync.is_some_and(|s| s.phase == RequestPhase::Completed);
    let synced = wait_until(
        30,
        || api.list_backups(ORG, &all),
        |v| v.items.iter().any(|b| b.synced),
    )
    .await?;
    let imported: Vec<&BackupRecord> = synced.items.iter().filter(|b| b.synced).collect();
    for b in &imported {
        println!(
            "  imported {} (synced, made by {}); the catalog already knew the backups this server made",
            b.id,
            b.origin_cluster.as_deref().unwrap_or("?")
        );
    }
    ok &= imported.len() == 1 && imported[0].origin_cluster.as_deref() == Some(tenant);

    println!("\n== verify of location 'primary' (\"cloud file missing\" check) ==");
    api.verify_location(ORG, LOCATION).await?;
    let verified_of = |s: &LocationStatus| {
        s.verify
            .as_ref()
            .is_some_and(|v| v.phase == VerifyPhase::Completed)
    };
    let st = wait_until(
        120,
        || api.location_status(ORG, LOCATION, &all),
        |v| v.items.iter().any(verified_of),
    )
    .await?;
    let verified = st.items.iter().find(|s| verified_of(s));
    let verify = verified.and_then(|s| s.verify.as_ref());
    println!(
        "  checked {} backups on {}: {} objects missing",
        or_null(verify.map(|v| v.backups_checked)),
        verified.map(|s| s.cluster_name.as_str()).unwrap_or_default(),
        or_null(verify.map(|v| v.missing_objects))
    );
    ok &= verify.is_some_and(|v| v.phase == VerifyPhase::Completed);

    let gone = done.get(b).map(|v| v.id.clone()).unwrap_or_default();
    println!("\n== delete of {gone} ==");
    let d = api.delete_backup(ORG, &gone, &DeleteQuery::default()).await?;
    println!("  {}", d.message);
    let t = Instant::now();
    let mut deleted = false;
    while t.elapsed() < Duration::from_secs(120) {
        match api.get_backup(ORG, &gone).await {
            Err(e) if e.status() == Some(ErrorCode::NotFound.status()) => {
                deleted = true;
                break;
            }
            Err(e @ crate::client::ClientError::Unreachable { .. }) => return Err(e.into()),
            _ => {}
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
    let list = api.list_backups(ORG, &all).await?;
    println!("\n== backups in the catalog ==");
    for bk in &list.items {
        let note = if bk.synced {
            format!("synced, made by {}", bk.origin_cluster.as_deref().unwrap_or("?"))
        } else {
            bk.message.clone().unwrap_or_default()
        };
        println!("  {:<36} {:<12} {:<8} {note}", bk.id, bk.cluster_name, bk.phase,);
    }
    Ok(ok)
}
