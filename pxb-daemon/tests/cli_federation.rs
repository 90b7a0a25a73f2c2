//! `pxb clusters federation` against a real `pxb-server` discovering a simulated Gardener
//! project: the issuer discovery recorded from the shoot's `status.advertisedAddresses` is the
//! one in the printed `az` commands, a shoot without the managed issuer gets the message to
//! annotate it, and once annotated (and reconciled) discovery picks its issuer up.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use pxb_core::api::rest::{CreateDiscovery, CreateLocation, CreateOrg};
use pxb_core::catalog::records::ClusterRecord;
use pxb_daemon::client::Client;
use pxb_daemon::server::Daemon;
use pxb_daemon::server::config::{GardenCredential, ServerConfig};
use pxb_sim::{Fleet, FleetConfig, ProjectRole, ShootSpec};
use serde_json::{Value, json};
use support::pxb;

const ORG: &str = "tenant";

/// Runs `pxb` off the async runtime (the server shares it).
async fn run(config: &Path, args: &[&str]) -> Output {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pxb(&config, &args)
    })
    .await
    .expect("pxb")
}

/// The commands of a printed script as the shell splits them (continuation lines joined,
/// comments left out).
fn commands(script: &str) -> Vec<Vec<String>> {
    script
        .replace(" \\\n", " ")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| shlex::split(l).unwrap_or_else(|| panic!("not shell words: {l:?}")))
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The cluster once `done` holds for it (discovery is asynchronous); at most 60 s.
async fn cluster_when(api: &Client, name: &str, done: impl Fn(&ClusterRecord) -> bool) -> ClusterRecord {
    let t = Instant::now();
    loop {
        match api.get_cluster(ORG, name).await {
            Ok(c) if done(&c) => return c,
            r => assert!(
                t.elapsed() < Duration::from_secs(60),
                "cluster {name} did not come out as expected: {r:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_prints_the_commands_for_the_issuer_discovery_recorded() {
    let fleet = Fleet::start(FleetConfig::default()).expect("fleet");
    fleet.add_project("dev").expect("project");
    fleet
        .add_shoot("dev", ShootSpec::new("shoot-a"))
        .expect("shoot-a");
    let mut plain = ShootSpec::new("shoot-b");
    plain.managed_issuer = false;
    fleet.add_shoot("dev", plain).expect("shoot-b");
    let token = fleet
        .add_service_account("dev", "pxb-server", ProjectRole::Admin)
        .expect("token");
    let dir = tempfile::tempdir().expect("dir");
    let garden = dir.path().join("garden.yaml");
    std::fs::write(&garden, fleet.garden_kubeconfig(&token)).expect("kubeconfig");

    let mut config = ServerConfig::default();
    config.api.listen = "127.0.0.1:0".into();
    config.catalog.path = dir.path().join("catalog.db").display().to_string();
    config
        .garden_credentials
        .insert("dev".into(), GardenCredential::new(garden.display().to_string()));
    config.fleet.call_timeout_ms = 2000;
    let dev_token = format!("test-{:032x}", rand::random::<u128>());
    let daemon = Daemon::start(config, Some(dev_token.clone()), |_| None)
        .await
        .expect("server");
    let url = format!("http://{}", daemon.addr);
    let api = Client::builder(&url).token(&dev_token).build().expect("client");
    api.create_org(&serde_json::from_value::<CreateOrg>(json!({"id": ORG})).expect("org"))
        .await
        .expect("create org");
    api.create_discovery(
        ORG,
        &serde_json::from_value::<CreateDiscovery>(json!({
            "id": "dev", "project": "dev", "credential": "dev", "intervalSecs": 30
        }))
        .expect("discovery"),
    )
    .await
    .expect("create discovery");
    api.create_location(
        ORG,
        &serde_json::from_value::<CreateLocation>(json!({
            "name": "primary", "provider": "azure", "account": "tenantbackups", "container": "backups",
            "tenantId": "72f988bf-0000-0000-0000-000000000000",
            "clusterClientIds": {"shoot-c": "22222222-2222-2222-2222-222222222222"},
            "clusters": {"all": true}
        }))
        .expect("location"),
    )
    .await
    .expect("create location");

    // Discovery recorded exactly what the shoot advertises: Gardener's managed issuer.
    let a = cluster_when(&api, "shoot-a", |c| c.service_account_issuer.is_some()).await;
    let shoot_url = fleet.shoot("dev", "shoot-a").expect("shoot").url();
    let issuer = format!("{shoot_url}/projects/dev/shoots/{}/issuer", a.id);
    assert_eq!(a.service_account_issuer.as_deref(), Some(issuer.as_str()));
    // Without the annotation, the API server's own issuer is advertised, and not recorded.
    let b = cluster_when(&api, "shoot-b", |_| true).await;
    assert_eq!(b.service_account_issuer, None);

    let config = dir.path().join("pxb.yaml");
    let out = run(
        &config,
        &["login", "--server", &url, "--token", &dev_token, "--org", ORG],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The cluster API shows the issuer.
    let out = run(&config, &["clusters", "list", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).expect("json");
    let shown: Vec<(&str, Option<&str>)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default(),
                c["serviceAccountIssuer"].as_str(),
            )
        })
        .collect();
    assert_eq!(shown, [("shoot-a", Some(issuer.as_str())), ("shoot-b", None)]);

    // The commands, as a script.
    let args = [
        "clusters",
        "federation",
        "shoot-a",
        "--location",
        "primary",
        "-g",
        "tenant-rg",
    ];
    let out = run(&config, &args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    let cmds = commands(&script);
    let fic = cmds
        .iter()
        .find(|c| c.starts_with(&["az", "identity", "federated-credential", "create"].map(String::from)))
        .unwrap_or_else(|| panic!("no federated credential in:\n{script}"));
    for (flag, value) in [
        ("--resource-group", "tenant-rg"),
        ("--identity-name", "pxb-agent"),
        ("--name", "shoot-a"),
        ("--issuer", issuer.as_str()),
        ("--subject", "system:serviceaccount:pxb-system:pxb-agent"),
        ("--audiences", "api://AzureADTokenExchange"),
    ] {
        assert!(
            fic.windows(2).any(|w| w == [flag, value]),
            "{flag} {value} not in {fic:?}"
        );
    }
    let first: Vec<&[String]> = cmds.iter().map(|c| &c[..3.min(c.len())]).collect();
    assert_eq!(
        first,
        [
            ["az", "identity", "create"].map(String::from).as_slice(),
            &["az", "identity", "federated-credential"].map(String::from),
            &["PRINCIPAL_ID=$(az", "identity", "show"].map(String::from),
            &["ACCOUNT_ID=$(az", "storage", "account"].map(String::from),
            &["az", "role", "assignment"].map(String::from),
            &["az", "identity", "show"].map(String::from),
        ]
    );
    assert!(
        script.contains("--scope \"$ACCOUNT_ID\"/blobServices/default/containers/backups"),
        "{script}"
    );
    // The same as JSON, with the parts on their own.
    let mut json_args = args.to_vec();
    json_args.extend(["--subscription", "3f1c0000-0000-0000-0000-000000000000"]);
    json_args.extend(["--storage-resource-group", "storage", "--json"]);
    let out = run(&config, &json_args).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let f: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(f["issuer"], issuer.as_str());
    assert_eq!(f["subject"], "system:serviceaccount:pxb-system:pxb-agent");
    assert_eq!(f["audience"], "api://AzureADTokenExchange");
    assert_eq!(f["credentialName"], "shoot-a");
    assert_eq!(
        f["scope"],
        "/subscriptions/3f1c0000-0000-0000-0000-000000000000/resourceGroups/storage/providers/\
         Microsoft.Storage/storageAccounts/tenantbackups/blobServices/default/containers/backups"
    );
    assert!(
        f["script"]
            .as_str()
            .expect("script")
            .contains(&format!("--issuer {issuer}"))
    );

    // No managed issuer: what to do instead, and no commands.
    let out = run(
        &config,
        &["clusters", "federation", "shoot-b", "--location", "primary"],
    )
    .await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("cluster shoot-b publishes no service-account issuer")
            && err.contains(
                "kubectl annotate shoot shoot-b -n garden-dev 'authentication.gardener.cloud/issuer=managed'"
            ),
        "{err}"
    );
    // Annotated and reconciled: discovery sees the issuer, and the commands follow.
    fleet
        .set_managed_issuer("dev", "shoot-b", true)
        .expect("annotate");
    let b = cluster_when(&api, "shoot-b", |c| c.service_account_issuer.is_some()).await;
    let b_url = fleet.shoot("dev", "shoot-b").expect("shoot").url();
    let b_issuer = format!("{b_url}/projects/dev/shoots/{}/issuer", b.id);
    assert_eq!(b.service_account_issuer.as_deref(), Some(b_issuer.as_str()));
    let out = run(
        &config,
        &["clusters", "federation", "shoot-b", "--location", "primary"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cmds = commands(&text(&out.stdout));
    assert!(
        cmds.iter()
            .any(|c| c.windows(2).any(|w| w == ["--issuer", b_issuer.as_str()])
                && c.windows(2).any(|w| w == ["--name", "shoot-b"])),
        "{cmds:?}"
    );

    // Unknown names are the server's 404s.
    let out = run(
        &config,
        &["clusters", "federation", "nope", "--location", "primary"],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    let out = run(
        &config,
        &["clusters", "federation", "shoot-a", "--location", "nowhere"],
    )
    .await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("nowhere"), "{}", text(&out.stderr));
    daemon.shutdown().await;
}
