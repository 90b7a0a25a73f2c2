//! The fixtures of this crate served to tests written in other languages (the Python bindings'
//! pytest suite), by the `pxb-fixture` binary: the same real parts the Rust scenarios use, started
//! in one process, described by one JSON line on stdout, and stopped when the test process lets
//! go of them.
//!
//! - [`start_azure`]: an [`AzureFixture`] (test CA, Azurite over HTTPS, the Entra ID stand-in, a
//!   token file), described by [`AzureDescription`];
//! - [`start_control_plane`]: a [`ControlPlane`] (simulated garden and shoots with real agents,
//!   the real `pxb-server` with the OIDC test issuer, Azurite with Workload Identity), described
//!   by [`ControlPlaneDescription`];
//! - [`serve`]: prints the description and waits until stdin reaches end of file (the test
//!   process died or closed the pipe), or SIGTERM or SIGINT arrives, keeping the token file fresh
//!   meanwhile.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Serialize;

use crate::control::{ControlPlane, PROVIDER_ADMINS};
use crate::fixture::{AzureFixture, CLIENT_ID, SECOND_CLIENT_ID, TENANT_ID};

/// How long the account SAS of a description is valid.
const SAS_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How long the bearer tokens of a control plane's description are valid.
const TOKEN_LIFETIME_SECS: i64 = 12 * 3600;
/// How long each projected token written to the token file is valid.
const PROJECTED_TOKEN_SECS: i64 = 3600;
/// How often the token file gets a fresh token (well within [`PROJECTED_TOKEN_SECS`]).
const TOKEN_ROTATION: Duration = Duration::from_secs(20 * 60);

/// Everything a client needs to reach the Azure fixture: Azurite (classic auth: key or SAS) and
/// Workload Identity through the Entra ID stand-in. The JSON keys are the field names.
#[derive(Clone, Debug, Serialize)]
pub struct AzureDescription {
    /// Azurite's blob endpoint, path-style with the account, as the Rust tests configure stores
    /// with it: `https://127.0.0.1:<port>/devstoreaccount1`.
    pub blob_endpoint: String,
    /// The storage account (`devstoreaccount1`).
    pub account: String,
    /// The account's key (base64), for shared-key auth.
    pub account_key: String,
    /// An account SAS (query string without `?`: service, containers and blobs; read, write,
    /// delete, list, add, create), valid for a day.
    pub sas: String,
    /// PEM file of the test CA that signed Azurite's and the Entra stand-in's certificates.
    pub ca_file: String,
    /// The Entra ID stand-in as the authority host of `azure_identity` (`AZURE_AUTHORITY_HOST`):
    /// `https://127.0.0.1:<port>`; the token endpoint is `<host>/<tenant_id>/oauth2/v2.0/token`.
    pub authority_host: String,
    /// The managed identity's client id the stand-in knows (`AZURE_CLIENT_ID`).
    pub client_id: String,
    /// A second client id the stand-in knows (per-location identities).
    pub second_client_id: String,
    /// The tenant (`AZURE_TENANT_ID`).
    pub tenant_id: String,
    /// The projected service-account token file (`AZURE_FEDERATED_TOKEN_FILE`), rotated while
    /// the fixture runs.
    pub token_file: String,
    /// A prefix no other fixture process uses; tests name containers `<prefix>-<name>`.
    pub container_prefix: String,
}

impl AzureDescription {
    /// The description of `fx`, with a fresh container prefix.
    pub fn of(fx: &AzureFixture) -> anyhow::Result<Self> {
        let sas = pxb_azure::account_sas(
            crate::azurite::ACCOUNT,
            crate::azurite::ACCOUNT_KEY,
            SystemTime::now() + SAS_VALIDITY,
        )?;
        Ok(Self {
            blob_endpoint: fx.azurite.endpoint(),
            account: crate::azurite::ACCOUNT.into(),
            account_key: crate::azurite::ACCOUNT_KEY.into(),
            sas,
            ca_file: path_string(&fx.ca.ca_file()),
            authority_host: fx.entra.authority_host(),
            client_id: CLIENT_ID.into(),
            second_client_id: SECOND_CLIENT_ID.into(),
            tenant_id: TENANT_ID.into(),
            token_file: path_string(&fx.token_file()),
            container_prefix: container_prefix(),
        })
    }
}

/// A fresh container-name prefix: `py` and 10 hex digits (a valid start of a container name; a
/// `-<name>` suffix of lowercase letters and digits keeps it valid).
pub fn container_prefix() -> String {
    format!("py{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

/// Starts an [`AzureFixture`] (access tokens valid an hour) and describes it.
pub fn start_azure() -> anyhow::Result<(AzureFixture, AzureDescription)> {
    let fx = AzureFixture::start(3600).context("starting the Azure fixture")?;
    let description = AzureDescription::of(&fx)?;
    Ok((fx, description))
}

/// What [`start_control_plane`] starts.
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// The Gardener project of the simulated garden.
    pub project: String,
    /// Ready shoots in it, named `shoot-00000`, `shoot-00001`, ….
    pub shoots: usize,
    /// Whether a real agent (in this process) runs on every shoot; without agents the clusters
    /// are `AgentMissing`.
    pub agents: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            project: "acme".into(),
            shoots: 3,
            agents: true,
        }
    }
}

/// Everything an API client needs to drive the control plane: the server, tokens of its users,
/// the garden, and what a federated location on Azurite is made of. The JSON keys are the field
/// names.
#[derive(Clone, Debug, Serialize)]
pub struct ControlPlaneDescription {
    /// The server's base URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// A provider admin's bearer token (group `pxb-provider-admins`): may create orgs.
    pub admin_token: String,
    /// Bearer tokens by user: `acme-admin` (group `acme-admins`), `acme-viewer` (group
    /// `acme-viewers`), `globex-admin` (group `globex-admins`); they get roles once an org binds
    /// those groups (`CreateOrg.access`).
    pub tokens: BTreeMap<String, String>,
    /// The token group of provider admins.
    pub provider_admin_group: String,
    /// The OIDC audience the server accepts.
    pub audience: String,
    /// A garden kubeconfig file for the project (a service account with the `admin` role), as a
    /// `GardenerProvider` or the server uses it.
    pub garden_kubeconfig: String,
    /// The Gardener project.
    pub project: String,
    /// The shoots' names.
    pub shoots: Vec<String>,
    /// Whether an agent runs on every shoot.
    pub agents: bool,
    /// The name of the garden credential the server knows for the project
    /// (`CreateDiscovery.credential`).
    pub credential: String,
    /// The one org whose admins may use that credential (provider admins may too).
    pub org: String,
    /// Azurite's blob endpoint (`CreateLocation.endpoint`).
    pub blob_endpoint: String,
    /// The storage account (`CreateLocation.account`).
    pub account: String,
    /// A container that exists, empty, for a location (`CreateLocation.container`).
    pub container: String,
    /// A prefix for further containers (`<prefix>-<name>`).
    pub container_prefix: String,
    /// An account SAS (query string without `?`) to create them with, valid a day.
    pub sas: String,
    /// The Workload Identity client id the agents' tokens are exchanged for
    /// (`CreateLocation.client_id`).
    pub client_id: String,
    /// The Entra tenant (`CreateLocation.tenant_id`, optional).
    pub tenant_id: String,
    /// PEM file of the test CA (Azurite, the Entra stand-in, the OIDC issuer).
    pub ca_file: String,
}

/// Starts a [`ControlPlane`] with `options` (and an agent on every shoot unless told otherwise),
/// creates a container for a location, and describes it.
pub async fn start_control_plane(
    options: &ControlPlaneOptions,
) -> anyhow::Result<(ControlPlane, ControlPlaneDescription)> {
    let mut cp = ControlPlane::start(&options.project, options.shoots, |_| {})
        .await
        .context("starting the control plane")?;
    let shoots: Vec<String> = (0..options.shoots).map(|i| format!("shoot-{i:05}")).collect();
    if options.agents {
        for shoot in &shoots {
            cp.start_agent(&options.project, shoot)
                .await
                .with_context(|| format!("starting the agent of {shoot}"))?;
        }
    }
    let container_prefix = container_prefix();
    let container = format!("{container_prefix}-location");
    pxb_azure::AzureBlobStore::new(cp.azure.key_config(&container))?
        .create_container()
        .await
        .with_context(|| format!("creating container {container}"))?;
    let token = |subject: &str, group: &str| {
        cp.issuer.token(cp.issuer.claims_for(
            subject,
            crate::control::AUDIENCE,
            &[group],
            &[],
            TOKEN_LIFETIME_SECS,
        ))
    };
    let tokens = BTreeMap::from([
        ("acme-admin".to_owned(), token("alice", "acme-admins")),
        ("acme-viewer".to_owned(), token("victor", "acme-viewers")),
        ("globex-admin".to_owned(), token("gina", "globex-admins")),
    ]);
    let (credential, bound) = cp
        .config
        .garden_credentials
        .get_key_value(&options.project)
        .context("the control plane has no garden credential for its project")?;
    let garden_kubeconfig = bound.kubeconfig.clone();
    let org = bound
        .orgs
        .first()
        .context("the garden credential is bound to no org")?
        .clone();
    let description = ControlPlaneDescription {
        url: cp.url.clone(),
        admin_token: token("provider-admin", PROVIDER_ADMINS),
        tokens,
        provider_admin_group: PROVIDER_ADMINS.into(),
        audience: crate::control::AUDIENCE.into(),
        garden_kubeconfig,
        project: options.project.clone(),
        shoots,
        agents: options.agents,
        credential: credential.clone(),
        org,
        blob_endpoint: cp.azure.azurite.endpoint(),
        account: crate::azurite::ACCOUNT.into(),
        container,
        container_prefix,
        sas: pxb_azure::account_sas(
            crate::azurite::ACCOUNT,
            crate::azurite::ACCOUNT_KEY,
            SystemTime::now() + SAS_VALIDITY,
        )?,
        client_id: CLIENT_ID.into(),
        tenant_id: TENANT_ID.into(),
        ca_file: path_string(&cp.azure.ca.ca_file()),
    };
    Ok((cp, description))
}

/// Why [`serve`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Stdin reached end of file (or could not be read).
    StdinClosed,
    /// SIGTERM.
    Terminated,
    /// SIGINT.
    Interrupted,
}

/// Prints `description` as one JSON line on stdout, then waits until stdin reaches end of file
/// or SIGTERM or SIGINT arrives, writing a fresh token to `azure`'s token file every 20 minutes
/// meanwhile. The caller stops what it started afterwards.
pub async fn serve(description: &impl Serialize, azure: &AzureFixture) -> anyhow::Result<Release> {
    use tokio::signal::unix::{SignalKind, signal};
    // Signal handlers first, so a SIGTERM right after the line is not fatal.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut closed = stdin_closed();
    let line = serde_json::to_string(description)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let mut rotation = tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_ROTATION, TOKEN_ROTATION);
    loop {
        tokio::select! {
            _ = &mut closed => return Ok(Release::StdinClosed),
            _ = term.recv() => return Ok(Release::Terminated),
            _ = int.recv() => return Ok(Release::Interrupted),
            _ = rotation.tick() => {
                azure.rotate_token(PROJECTED_TOKEN_SECS).context("rotating the token file")?;
            }
        }
    }
}

/// Resolves when stdin reaches end of file or fails. Reads on a plain thread (not the runtime's
/// blocking pool), so a process that stops for a signal does not wait for the read.
fn stdin_closed() -> tokio::sync::oneshot::Receiver<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    rx
}

fn path_string(path: &Path) -> String {
    path.display().to_string()
}
