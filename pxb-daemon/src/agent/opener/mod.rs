//! The `LocationOpener` seam: from a `BackupLocation`'s spec to the object store it names.
//!
//! [`AzureFileOpener`], the agent's default, opens `azure` locations as Azure Blob containers
//! (Workload Identity, or an account key or SAS token from a Secret in the agent's namespace) and
//! `file` locations as directories the agent sees. [`MemoryLocations`] is the in-memory twin:
//! every location an [`InMemory`](pxb_core::store::InMemory) store, nothing reached. The
//! `conformance` module (feature `conformance`) is the suite every opener runs.
//!
//! The agent opens a location for each validation, sync, verify, backup, restore and deletion;
//! what an opener refuses makes the location `Invalid` at the `configure` step with the reason.

use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig, HttpSettings};
use pxb_core::{LocalFileSystem, ObjectStore, TokenSource};

use super::AgentConfig;
use crate::crd::BackupLocationSpec;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod memory;

pub use memory::MemoryLocations;

/// A location's store, ready to use.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenedLocation {
    /// The location for messages: `azblob://container/prefix`, `file:///path`, ….
    pub display: String,
    /// The store.
    pub store: Arc<dyn ObjectStore>,
    /// The credential, when the store uses one (checked in the validation's authenticate step).
    pub token: Option<Arc<dyn TokenSource>>,
}

impl OpenedLocation {
    /// `store`, shown as `display`, without a credential of its own to check.
    pub fn new(display: impl Into<String>, store: Arc<dyn ObjectStore>) -> Self {
        Self {
            display: display.into(),
            store,
            token: None,
        }
    }

    /// The same location, whose validation also obtains a token from `token`.
    pub fn with_token(mut self, token: Option<Arc<dyn TokenSource>>) -> Self {
        self.token = token;
        self
    }
}

/// Opens the object store a `BackupLocation` describes. Object safe, so an agent holds one as
/// `Arc<dyn LocationOpener>` ([`AgentBuilder::location_opener`](super::AgentBuilder::location_opener)).
#[async_trait]
pub trait LocationOpener: Send + Sync + std::fmt::Debug {
    /// The store `spec` names. The error is the reason it cannot be opened, for humans: the
    /// location's `status.validation.reason` (step `configure`), or a backup's or restore's
    /// message.
    async fn open(&self, spec: &BackupLocationSpec) -> Result<OpenedLocation, String>;
}

/// The container a spec names, trimmed; refused when empty.
pub(crate) fn container_of(spec: &BackupLocationSpec) -> Result<&str, String> {
    let container = spec.container.trim();
    if container.is_empty() {
        return Err(
            "spec.container is empty: name the Azure container, or the directory for provider file".into(),
        );
    }
    Ok(container)
}

/// The prefix a spec names, without leading or trailing `/` (empty when none).
pub(crate) fn prefix_of(spec: &BackupLocationSpec) -> String {
    spec.prefix.as_deref().unwrap_or("").trim_matches('/').to_owned()
}

/// The refusal of a provider that is neither `azure` nor `file`.
pub(crate) fn unknown_provider(provider: &str) -> String {
    format!("unknown provider {provider:?}; expected azure or file")
}

/// The agent's default opener: `azure` locations as Azure Blob containers, `file` locations as
/// directories. Secrets of `secretRef` locations are read from the agent's namespace through
/// the kube client; Workload Identity defaults, the extra CA file and storage retries come from
/// the [`AgentConfig`].
#[derive(Clone)]
pub struct AzureFileOpener {
    client: kube::Client,
    config: AgentConfig,
}

impl std::fmt::Debug for AzureFileOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureFileOpener")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

impl AzureFileOpener {
    /// An opener reading Secrets through `client`, with the settings of `config`.
    pub fn new(client: kube::Client, config: AgentConfig) -> Self {
        Self { client, config }
    }

    async fn secret_auth(&self, spec: &BackupLocationSpec) -> Result<AzureAuth, String> {
        let namespace = &self.config.namespace;
        let name = spec
            .auth
            .secret_ref
            .as_ref()
            .map(|s| s.name.clone())
            .filter(|n| !n.is_empty())
            .ok_or("spec.auth.secretRef.name is required for auth mode secretRef")?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets
            .get(&name)
            .await
            .map_err(|e| format!("reading Secret {namespace}/{name}: {e}"))?;
        let data = secret.data.unwrap_or_default();
        let text = |key: &str| {
            data.get(key)
                .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if let Some(key) = text("accountKey") {
            Ok(AzureAuth::SharedKey { key })
        } else if let Some(token) = text("sasToken") {
            Ok(AzureAuth::Sas { token })
        } else {
            Err(format!(
                "Secret {namespace}/{name} has neither accountKey nor sasToken"
            ))
        }
    }
}

#[async_trait]
impl LocationOpener for AzureFileOpener {
    async fn open(&self, spec: &BackupLocationSpec) -> Result<OpenedLocation, String> {
        let container = container_of(spec)?;
        let prefix = prefix_of(spec);
        match spec.provider.as_str() {
            "file" => {
                if !container.starts_with('/') {
                    return Err(format!(
                        "spec.container {container:?} must be an absolute directory for provider file"
                    ));
                }
                let dir = std::path::Path::new(container).join(&prefix);
                let store = LocalFileSystem::new(&dir).map_err(|e| e.to_string())?;
                Ok(OpenedLocation::new(
                    format!("file://{}", dir.display()),
                    Arc::new(store),
                ))
            }
            "azure" => {
                let account = spec
                    .account
                    .clone()
                    .filter(|a| !a.trim().is_empty())
                    .or_else(|| spec.endpoint.as_deref().and_then(crate::location::infer_account))
                    .ok_or("spec.account is empty and cannot be taken from spec.endpoint")?;
                let auth = match spec.auth.mode.as_str() {
                    "workloadIdentity" => {
                        let mut wi = self.config.workload_identity.clone();
                        if let Some(id) = spec.auth.client_id.clone().filter(|c| !c.trim().is_empty()) {
                            wi.client_id = Some(id);
                        }
                        if let Some(t) = spec.auth.tenant_id.clone().filter(|t| !t.trim().is_empty()) {
                            wi.tenant_id = Some(t);
                        }
                        AzureAuth::WorkloadIdentity(wi)
                    }
                    "secretRef" => self.secret_auth(spec).await?,
                    other => {
                        return Err(format!(
                            "spec.auth.mode {other:?} is not supported; use workloadIdentity or secretRef"
                        ));
                    }
                };
                let mut config = AzureConfig::new(account, container, auth);
                config.endpoint = spec.endpoint.clone().filter(|e| !e.trim().is_empty());
                config.prefix = prefix.clone();
                config.ca_file = self.config.ca_file.clone();
                config.http = HttpSettings {
                    max_retries: self.config.max_retries,
                    ..HttpSettings::default()
                };
                let store = AzureBlobStore::new(config).map_err(|e| e.to_string())?;
                let token = store.token_source();
                let display = if prefix.is_empty() {
                    format!("azblob://{container}")
                } else {
                    format!("azblob://{container}/{prefix}")
                };
                Ok(OpenedLocation::new(display, Arc::new(store)).with_token(token))
            }
            other => Err(unknown_provider(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(provider: &str, container: &str) -> BackupLocationSpec {
        BackupLocationSpec {
            provider: provider.into(),
            container: container.into(),
            ..BackupLocationSpec::default()
        }
    }

    /// The twin runs the suite every opener runs.
    #[tokio::test]
    async fn the_twin_conforms() {
        let twin = MemoryLocations::new();
        conformance::run_all(&twin, &spec("azure", "backups")).await;
        conformance::run_all(&twin, &spec("file", "/var/lib/pxb/location")).await;
    }

    /// The default opener runs it with a `file` location (a directory; the kube client, needed
    /// only for the Secrets of `azure` locations, is never called).
    #[tokio::test]
    async fn the_default_opener_conforms_with_a_file_location() {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().expect("url")))
            .expect("client");
        let opener = AzureFileOpener::new(client, AgentConfig::default());
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().to_str().expect("utf-8");
        conformance::run_all(&opener, &spec("file", dir)).await;
    }

    /// An opener giving a new, empty store at each opening.
    #[derive(Debug)]
    struct Forgetful;

    #[async_trait]
    impl LocationOpener for Forgetful {
        async fn open(&self, spec: &BackupLocationSpec) -> Result<OpenedLocation, String> {
            container_of(spec)?;
            Ok(OpenedLocation::new(
                "memory://forgetful",
                Arc::new(pxb_core::InMemory::new()),
            ))
        }
    }

    /// The suite fails an opener whose openings of one spec do not share a store.
    #[tokio::test]
    #[should_panic(
        expected = "conformance: the object written through the first opening is not in the second"
    )]
    async fn the_suite_fails_an_opener_that_forgets() {
        conformance::run_all(&Forgetful, &spec("azure", "backups")).await;
    }

    /// The twin refuses what the default refuses for the spec alone, in the same words, and
    /// opens `azure` and `file` locations alike without reaching anything.
    #[tokio::test]
    async fn the_twin_refuses_like_the_default() {
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().expect("url")))
            .expect("client");
        let default = AzureFileOpener::new(client, AgentConfig::default());
        let twin = MemoryLocations::new();
        for bad in [spec("file", "  "), spec("azure", ""), spec("s3", "bucket")] {
            let want = default.open(&bad).await.expect_err("the default refuses");
            let got = twin.open(&bad).await.expect_err("the twin refuses");
            assert_eq!(got, want, "{bad:?}");
        }
        let opened = twin
            .open(&BackupLocationSpec {
                prefix: Some("/team-a/".into()),
                ..spec("azure", " backups ")
            })
            .await
            .expect("open");
        assert_eq!(opened.display, "memory://backups/team-a");
        assert!(opened.token.is_none());
    }
}
