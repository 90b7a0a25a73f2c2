//! pxb on the fleet simulator ([`pxb_sim`], the twin of the cluster-provider seam): kube clients
//! for simulated shoots, pxb installed on them, agents running in this process against them, and a
//! Gardener provider that discovered a simulated project. `pxb demo`, the scenario tests and a
//! provider's own tests use it.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use pxb_daemon::sim::ShootFixture;
//!
//! // A simulated project `dev` with two ready shoots, discovered through its garden API.
//! let shoots = ShootFixture::start(2).await?;
//! let client = shoots.client(0).await?;
//! pxb_daemon::sim::install_pxb(&client).await?;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use pxb_core::api::crd::{AGENT_NAMESPACE, crds_yaml};
use pxb_core::cluster::{ClusterInfo, ClusterProvider as _};
use pxb_gardener::{GardenAuth, GardenerConfig, GardenerProvider};
use pxb_sim::{Fleet, FleetConfig, ProjectRole};
use serde_json::json;

use crate::agent::{Agent, AgentBuilder, AgentConfig};

/// The agent's Deployment and Service as `deploy/agent` ships them.
const AGENT_DEPLOYMENT: &str = include_str!("../../deploy/agent/30-deployment.yaml");
const AGENT_SERVICE: &str = include_str!("../../deploy/agent/40-service.yaml");

/// A client for a simulated shoot, from a fresh admin kubeconfig.
pub async fn shoot_client(fleet: &Fleet, project: &str, name: &str) -> anyhow::Result<kube::Client> {
    let yaml = fleet.admin_kubeconfig(project, name, 3600)?;
    let now = SystemTime::now();
    let access = pxb_gardener::parse_access(&yaml, now, now + Duration::from_secs(3600))?;
    Ok(pxb_gardener::kube_client(&access)?)
}

/// Installs pxb's CRDs and creates the `pxb-system` namespace on a cluster.
pub async fn install_pxb(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (name, yaml) in crds_yaml()? {
        crds.create(&PostParams::default(), &serde_saphyr::from_str(&yaml)?)
            .await
            .with_context(|| format!("installing {name}"))?;
    }
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": AGENT_NAMESPACE}}))?,
        )
        .await?;
    Ok(())
}

/// Installs pxb on a simulated shoot (CRDs, `pxb-system`, the agent Deployment and Service from
/// `deploy/agent`) and starts a real agent for it in this process, with `workload_identity` as its
/// pod's identity and `ca_file` trusted for locations. Its read API listens on a loopback port,
/// registered as the backend of the agent's Service, so the server reaches it through the shoot's
/// service proxy as it would on a real cluster.
pub async fn start_agent(
    fleet: &Fleet,
    project: &str,
    name: &str,
    workload_identity: pxb_azure::WorkloadIdentityOptions,
    ca_file: Option<std::path::PathBuf>,
) -> anyhow::Result<Agent> {
    let client = shoot_client(fleet, project, name).await?;
    install_pxb(&client).await?;
    let deployment: Deployment = serde_saphyr::from_str(AGENT_DEPLOYMENT)?;
    Api::<Deployment>::namespaced(client.clone(), AGENT_NAMESPACE)
        .create(&PostParams::default(), &deployment)
        .await
        .context("creating the agent Deployment")?;
    let service: Service = serde_saphyr::from_str(AGENT_SERVICE)?;
    Api::<Service>::namespaced(client.clone(), AGENT_NAMESPACE)
        .create(&PostParams::default(), &service)
        .await
        .context("creating the agent Service")?;
    let config = AgentConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        cluster_name: Some(name.into()),
        workload_identity,
        ca_file,
        heartbeat_interval: Duration::from_secs(1),
        ..AgentConfig::default()
    };
    let agent = AgentBuilder::new(config).kube_client(client).spawn().await?;
    fleet.shoot(project, name)?.register_service_backend(
        AGENT_NAMESPACE,
        "pxb-agent",
        "http",
        agent.api_addr,
    );
    Ok(agent)
}

/// A simulated project `dev` with ready shoots `shoot-00000`, … and a Gardener provider that
/// discovered them through the simulated garden.
#[derive(Debug)]
pub struct ShootFixture {
    /// The simulator.
    pub fleet: Fleet,
    /// The provider, connected with a service account that is admin of the project.
    pub provider: Arc<GardenerProvider>,
    /// The discovered shoots, in name order.
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
