//! Simulated shoots reached the way pxb reaches them: a fleet, a Gardener provider over its garden
//! API, and kube clients built from the kubeconfigs the garden issues.

use std::sync::Arc;

use anyhow::Context as _;
use kube::api::{Api, PostParams};
use pxb_core::cluster::{ClusterInfo, ClusterProvider as _};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use serde_json::json;

use crate::sim::{Fleet, FleetConfig, ProjectRole};

/// A simulated project `dev` with ready shoots `shoot-00000`, … and a provider that discovered them.
#[derive(Debug)]
pub struct ShootFixture {
    /// The simulator.
    pub fleet: Fleet,
    /// The provider, connected with a service account that is admin of the project.
    pub provider: Arc<GardenerProvider>,
    /// The discovered shoots, in identity order.
    pub clusters: Vec<ClusterInfo>,
}

impl ShootFixture {
    /// Starts a fleet with `shoots` ready shoots and discovers them.
    pub async fn start(shoots: usize) -> anyhow::Result<Self> {
        let fleet = Fleet::start(FleetConfig::default())?;
        fleet.add_project("dev")?;
        fleet.add_shoots("dev", "shoot", shoots)?;
        let token = fleet.add_service_account("dev", "pxb", ProjectRole::Admin)?;
        let provider = GardenerProvider::connect(GardenerConfig::new(
            GardenAuth::Kubeconfig(fleet.garden_kubeconfig(&token)),
            "dev",
        ))
        .await?;
        let mut clusters = provider.discover().await?;
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            fleet,
            provider,
            clusters,
        })
    }

    /// A client for the `i`-th shoot (by name), from a freshly issued admin kubeconfig.
    pub async fn client(&self, i: usize) -> anyhow::Result<kube::Client> {
        let info = self.clusters.get(i).context("no such shoot")?;
        let access = self.provider.access(&info.id).await?;
        Ok(pxb_gardener::kube_client(&access)?)
    }
}

/// Installs pxb's CRDs and creates the `pxb-system` namespace on a cluster.
pub async fn install_pxb(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client.clone());
    for (name, yaml) in pxb_daemon::crd::crds_yaml()? {
        crds.create(&PostParams::default(), &serde_saphyr::from_str(&yaml)?)
            .await
            .with_context(|| format!("installing {name}"))?;
    }
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": pxb_daemon::crd::AGENT_NAMESPACE}}))?,
        )
        .await?;
    Ok(())
}
