//! The Azure fixture of the harness ([`pxb_harness::azure::AzureFixture`]: a test CA, Azurite over
//! HTTPS, a fake Entra ID and a projected token file) with the product-side settings built from it:
//! store configurations and Workload Identity options.
//!
//! Two ways to run the Entra ID stand-in:
//!
//! - [`AzureFixture::start`]: token-file mode. The assertion is accepted when it equals the token
//!   file's current content (an unsigned token the harness writes). No Kubernetes involved.
//! - [`AzureFixture::federated`]: the real Workload Identity chain against a
//!   [`RealCluster`](crate::real::RealCluster). Each `(client_id, namespace, service_account)`
//!   becomes a federated identity credential (issuer: the cluster's service-account issuer,
//!   subject `system:serviceaccount:<namespace>:<service_account>`, audience
//!   `api://AzureADTokenExchange`). The stand-in verifies assertions as Entra ID does: claims
//!   against the credentials, time, and the signature with the keys the cluster publishes at
//!   `<issuer>/.well-known/openid-configuration` → `jwks_uri`, fetched anonymously over HTTPS
//!   (the fixture binds `system:service-account-issuer-discovery` to `system:unauthenticated`, as
//!   AKS and Gardener do). The token file holds a real TokenRequest token of the *first*
//!   identity, laid out as the kubelet projects it; [`AzureFixture::project_token`] replaces it.
//!   [`wi_options`](AzureFixture::wi_options), [`wi_config`](AzureFixture::wi_config) and the rest
//!   work as in token-file mode.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use pxb_azure::{AzureAuth, AzureConfig, HttpSettings, WorkloadIdentityOptions};
pub use pxb_harness::azure::{CLIENT_ID, SECOND_CLIENT_ID, TENANT_ID};
use pxb_harness::entra::{FederatedCredential, Federation};

use crate::azurite;
use crate::real::{RealCluster, WORKLOAD_IDENTITY_AUDIENCE};

/// How long the token the federated fixture projects at start is valid.
const PROJECTED_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// CA, Azurite, fake Entra ID and token file; everything stops when dropped. Dereferences to the
/// harness's fixture (`ca`, `azurite`, `entra`, `token_file()`, …).
#[derive(Debug)]
pub struct AzureFixture(pxb_harness::azure::AzureFixture);

impl Deref for AzureFixture {
    type Target = pxb_harness::azure::AzureFixture;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for AzureFixture {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl AzureFixture {
    /// Starts everything; Entra issues access tokens valid for `token_lifetime_secs`.
    pub fn start(token_lifetime_secs: u64) -> anyhow::Result<Self> {
        Ok(Self(pxb_harness::azure::AzureFixture::start(
            token_lifetime_secs,
        )?))
    }

    /// The real Workload Identity chain against `cluster`; see the module docs. For each
    /// `(client_id, namespace, service_account)` of `identities` the stand-in gets a federated
    /// identity credential; the namespaces and ServiceAccounts are created when missing; the
    /// token file holds a real token (audience `api://AzureADTokenExchange`, valid 1 h) of the
    /// first identity. Binds issuer discovery to `system:unauthenticated` and waits until an
    /// anonymous client can read it. Entra issues access tokens valid `token_lifetime_secs`.
    /// Blocking (call it from async tests too; it does not need a runtime).
    pub fn federated(
        cluster: &RealCluster,
        identities: &[(&str, &str, &str)],
        token_lifetime_secs: u64,
    ) -> anyhow::Result<Self> {
        allow_anonymous_issuer_discovery(cluster)?;
        Self::federated_without_anonymous_discovery(cluster, identities, token_lifetime_secs)
    }

    /// [`federated`](Self::federated) without binding issuer discovery to
    /// `system:unauthenticated`: unless something else did, the stand-in's anonymous fetch of the
    /// keys is refused by the API server and every exchange fails (`AADSTS50166`).
    pub fn federated_without_anonymous_discovery(
        cluster: &RealCluster,
        identities: &[(&str, &str, &str)],
        token_lifetime_secs: u64,
    ) -> anyhow::Result<Self> {
        let (_, first_ns, first_sa) = *identities
            .first()
            .context("a federated fixture needs at least one identity")?;
        for (_, ns, sa) in identities {
            ensure_service_account(cluster, ns, sa)?;
        }
        let issuer = cluster.issuer();
        let credentials: Vec<FederatedCredential> = identities
            .iter()
            .map(|(client, ns, sa)| FederatedCredential::service_account(client, &issuer, ns, sa))
            .collect();
        let mut client_ids: Vec<String> = vec![CLIENT_ID.into(), SECOND_CLIENT_ID.into()];
        for c in &credentials {
            if !client_ids.contains(&c.client_id) {
                client_ids.push(c.client_id.clone());
            }
        }
        let ca_pem = cluster.ca_pem();
        let fx = Self(pxb_harness::azure::AzureFixture::start_with(
            token_lifetime_secs,
            move |config| {
                config.client_ids = client_ids;
                config.federation = Some(Federation { credentials, ca_pem });
            },
        )?);
        let token = crate::real::service_account_token(
            cluster,
            first_ns,
            first_sa,
            WORKLOAD_IDENTITY_AUDIENCE,
            PROJECTED_TOKEN_TTL,
        )?;
        fx.project_token(&token)?;
        Ok(fx)
    }

    /// Puts `token` in the token file the way the kubelet projects a volume (its atomic writer):
    /// the content goes to a fresh `..<timestamp>` directory, the `..data` symlink is switched to
    /// it by a rename, and the token file is a symlink to `..data/<name>`. A reader never sees a
    /// partial token.
    pub fn project_token(&self, token: &str) -> anyhow::Result<()> {
        project_like_kubelet(&self.token_file(), token)
    }

    /// A new, empty container (created with the account key), named after `tag`.
    pub async fn new_container(&self, tag: &str) -> anyhow::Result<String> {
        let container = self.container_name(tag);
        pxb_azure::AzureBlobStore::new(self.key_config(&container))?
            .create_container()
            .await?;
        Ok(container)
    }

    /// Workload Identity options pointing at the fake Entra ID, for `client_id`.
    pub fn wi_options(&self, client_id: &str) -> WorkloadIdentityOptions {
        WorkloadIdentityOptions {
            client_id: Some(client_id.into()),
            tenant_id: Some(TENANT_ID.into()),
            token_file: Some(self.token_file()),
            authority_host: Some(self.entra.authority_host()),
        }
    }

    /// Store settings for `container` in Azurite with `auth`, trusting the test CA, with short retries.
    pub fn config(&self, container: &str, auth: AzureAuth) -> AzureConfig {
        let mut c = AzureConfig::new(azurite::ACCOUNT, container, auth);
        c.endpoint = Some(self.azurite.endpoint());
        c.ca_file = Some(self.ca.ca_file());
        c.http = HttpSettings {
            max_retries: 2,
            ..HttpSettings::default()
        };
        c
    }

    /// Store settings using Workload Identity with the known client id.
    pub fn wi_config(&self, container: &str) -> AzureConfig {
        self.config(container, AzureAuth::WorkloadIdentity(self.wi_options(CLIENT_ID)))
    }

    /// Store settings using the development account key.
    pub fn key_config(&self, container: &str) -> AzureConfig {
        self.config(
            container,
            AzureAuth::SharedKey {
                key: azurite::ACCOUNT_KEY.into(),
            },
        )
    }
}

/// Binds the ClusterRole `system:service-account-issuer-discovery` to the group
/// `system:unauthenticated` (binding `pxb-anonymous-issuer-discovery`), as AKS and Gardener do so
/// that Entra ID can fetch the issuer's keys, and waits until an anonymous client reads the
/// discovery document. Idempotent.
pub fn allow_anonymous_issuer_discovery(cluster: &RealCluster) -> anyhow::Result<()> {
    let binding = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "pxb-anonymous-issuer-discovery"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "system:service-account-issuer-discovery"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group",
                      "name": "system:unauthenticated"}],
    });
    let (status, body) = cluster.request_as(
        cluster.admin_identity(),
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        Some(&binding),
    )?;
    anyhow::ensure!(
        status == 201 || status == 409,
        "binding issuer discovery to system:unauthenticated answered {status}: {body}"
    );
    let url = format!("{}/.well-known/openid-configuration", cluster.issuer());
    let ca = cluster.ca_pem();
    let mut last = String::new();
    crate::real::eventually(
        "anonymous read of the issuer's discovery document",
        Duration::from_secs(30),
        || match pxb_harness::jwks::get_blocking(&url, &ca) {
            Ok((200, _)) => true,
            Ok((s, b)) => {
                last = format!("{s}: {b}");
                false
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        },
    )
    .with_context(|| format!("last answer: {last}"))
}

/// Creates namespace `ns` and ServiceAccount `ns/sa` unless they exist.
fn ensure_service_account(cluster: &RealCluster, ns: &str, sa: &str) -> anyhow::Result<()> {
    let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
    let (status, body) = cluster.request_as(
        cluster.admin_identity(),
        "POST",
        "/api/v1/namespaces",
        Some(&namespace),
    )?;
    anyhow::ensure!(
        status == 201 || status == 409,
        "creating namespace {ns}: {status}: {body}"
    );
    let account = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}});
    let (status, body) = cluster.request_as(
        cluster.admin_identity(),
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        Some(&account),
    )?;
    anyhow::ensure!(
        status == 201 || status == 409,
        "creating ServiceAccount {ns}/{sa}: {status}: {body}"
    );
    Ok(())
}

/// The kubelet's atomic writer for one file of a projected volume: `dir/..<ts>/<name>` holds the
/// content, `dir/..data` links to `..<ts>` (switched by a rename), `dir/<name>` links to
/// `..data/<name>`; the previous `..<ts>` directory is removed.
fn project_like_kubelet(file: &Path, content: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::symlink;
    let dir = file.parent().context("the token file has no directory")?;
    let name = file.file_name().context("the token file has no name")?;
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let stamp = format!(
        "..{}_{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        rand::random::<u32>()
    );
    std::fs::create_dir(dir.join(&stamp))?;
    std::fs::write(dir.join(&stamp).join(name), content)?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    let is_link = std::fs::symlink_metadata(file).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        let link_tmp = dir.join(format!("..{}_link", name.to_string_lossy()));
        let _ = std::fs::remove_file(&link_tmp);
        symlink(Path::new("..data").join(name), &link_tmp)?;
        std::fs::rename(&link_tmp, file)?;
    }
    if let Some(previous) = previous
        && previous.as_os_str() != stamp.as_str()
    {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}
