//! `pxb-demo`: pxb's main job so far, on embedded defaults, on one machine: a simulated fleet.
//!
//! 1. A simulated Gardener project with N shoots (default 20) on loopback, some of them
//!    ineligible (old Kubernetes, hibernated, another provider) and 10 % of the eligible ones
//!    blackholed (their API accepts connections and never answers).
//! 2. Discovery through the garden API with a project service account, with reasons for every
//!    ineligible shoot.
//! 3. Short-lived admin kubeconfigs for every eligible shoot, in memory.
//! 4. One probe per shoot, all at once, each with a deadline: the fleet status is complete after
//!    one deadline, however many shoots are offline.
//! 5. The backup locations an agent validates: a local directory (the embedded default), and an
//!    Azure Blob container reached with Workload Identity (Azurite over HTTPS + a fake Entra ID).
//!
//! `pxb-demo [--shoots N] [--no-azure]`

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use pxb_azure::{AzureBlobStore, STORAGE_SCOPE};
use pxb_core::cluster::{ClusterInfo, ClusterProvider, Eligibility};
use pxb_core::{CheckOptions, LocalFileSystem, check_location};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider, kube_client};
use pxb_tests::fixture::AzureFixture;
use pxb_tests::sim::{Fault, Fleet, FleetConfig, ProjectRole, ShootSpec};

const DEADLINE: Duration = Duration::from_secs(2);

async fn probe(provider: &GardenerProvider, c: &ClusterInfo) -> (String, String) {
    let work = async {
        let access = provider.access(&c.id).await.map_err(|e| e.to_string())?;
        let client = kube_client(&access).map_err(|e| e.to_string())?;
        let version = client.apiserver_version().await.map_err(|e| e.to_string())?;
        let nss = kube::Api::<Namespace>::all(client)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(format!("{}, {} namespaces", version.git_version, nss.items.len()))
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(detail)) => ("Ready".into(), detail),
        Ok(Err(e)) => ("Unreachable".into(), e),
        Err(_) => ("Unreachable".into(), format!("no answer within {DEADLINE:?}")),
    }
}

async fn fleet_demo(shoots: usize) -> anyhow::Result<bool> {
    println!("== simulated Gardener project 'demo' on 127.0.0.1 ==");
    let fleet = Fleet::start(FleetConfig::default())?;
    fleet.add_project("demo")?;
    fleet.add_shoots("demo", "shoot", shoots)?;
    fleet.add_shoot("demo", ShootSpec::new("legacy").version("1.29.8"))?;
    fleet.add_shoot("demo", ShootSpec::new("on-aws").provider("aws"))?;
    fleet.add_shoot("demo", ShootSpec::new("sleepy"))?;
    fleet.hibernate("demo", "sleepy")?;
    let offline = shoots.div_ceil(10);
    for i in 0..offline {
        fleet.set_fault(
            "demo",
            &format!("shoot-{:05}", (i * 10 + 3) % shoots),
            Fault::Offline,
        )?;
    }
    let token = fleet.add_service_account("demo", "pxb-server", ProjectRole::Admin)?;
    println!(
        "garden {} — {} shoots, {offline} of them blackholed",
        fleet.garden_url(),
        fleet.shoot_count()
    );

    let started = Instant::now();
    let config = GardenerConfig::new(GardenAuth::Kubeconfig(fleet.garden_kubeconfig(&token)), "demo");
    let provider = GardenerProvider::connect(config).await?;
    let clusters = provider.discover().await?;
    let eligible: Vec<&ClusterInfo> = clusters.iter().filter(|c| c.eligibility.is_eligible()).collect();
    println!(
        "\n== discovery: {} shoots, {} eligible ({:.0?}) ==",
        clusters.len(),
        eligible.len(),
        started.elapsed()
    );
    for c in &clusters {
        if let Eligibility::Ineligible { reason, message } = &c.eligibility {
            println!("  {:<14} ineligible  {:<18} {message}", c.name, reason.as_str());
        }
    }

    let t = Instant::now();
    let (issued, failed) = provider.ensure_all().await;
    println!(
        "\n== access: {issued} admin kubeconfigs issued in memory ({:.0?}), {} failed ==",
        t.elapsed(),
        failed.len()
    );

    let t = Instant::now();
    let provider = Arc::new(provider);
    let mut status: Vec<(String, String, String)> = futures::stream::iter(eligible.iter().copied())
        .map(|c| {
            let p = provider.clone();
            async move {
                let (state, detail) = probe(&p, c).await;
                (c.name.clone(), state, detail)
            }
        })
        .buffer_unordered(256)
        .collect()
        .await;
    status.sort();
    let ready = status.iter().filter(|s| s.1 == "Ready").count();
    println!(
        "\n== fleet status after one probe round ({:.1?}, deadline {DEADLINE:?} per shoot) ==",
        t.elapsed()
    );
    for (name, state, detail) in &status {
        println!("  {name:<14} {state:<12} {detail}");
    }
    println!(
        "  {ready} Ready, {} Unreachable, {} ineligible",
        status.len() - ready,
        clusters.len() - eligible.len()
    );
    Ok(ready == eligible.len() - offline && failed.is_empty())
}

async fn location_demo() -> anyhow::Result<bool> {
    println!("\n== backup locations, as an agent validates them ==");
    let opts = CheckOptions {
        scopes: vec![STORAGE_SCOPE.into()],
        ..CheckOptions::default()
    };
    let dir = tempfile::tempdir()?;
    let local = LocalFileSystem::new(dir.path())?;
    let r1 = check_location(&local.to_string(), &local, None, &opts).await;
    println!("{r1}\n");

    println!("starting Azurite (HTTPS, --oauth basic) and a fake Entra ID on 127.0.0.1 ...");
    let fx = AzureFixture::start(3600)?;
    let container = fx.container_name("demo");
    AzureBlobStore::new(fx.key_config(&container))?
        .create_container()
        .await?;
    println!(
        "federated token file {} (no storage key, no client secret)\n",
        fx.token_file().display()
    );
    let store = AzureBlobStore::new(fx.wi_config(&container))?;
    let token = store.token_source();
    let r2 = check_location(&format!("azblob://{container}"), &store, token.as_deref(), &opts).await;
    println!("{r2}\n");
    println!("Entra ID token exchanges: {}", fx.entra.exchanges().len());
    Ok(r1.passed && r2.passed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shoots = match args.iter().position(|a| a == "--shoots") {
        None => 20,
        Some(i) => match args.get(i + 1).and_then(|v| v.parse::<usize>().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("pxb-demo: --shoots needs a positive number");
                return ExitCode::FAILURE;
            }
        },
    };
    let azure = !args.iter().any(|a| a == "--no-azure");
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pxb-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let fleet_ok = fleet_demo(shoots).await?;
        let locations_ok = if azure { location_demo().await? } else { true };
        Ok::<_, anyhow::Error>(fleet_ok && locations_ok)
    };
    match rt.block_on(run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("pxb-demo: the fleet or a location did not come out as expected");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("pxb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
