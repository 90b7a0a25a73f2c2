//! Opening a backup location from command-line or configuration settings.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig, WorkloadIdentityOptions};
use pxb_core::{Error, LocalFileSystem, LocationUrl, ObjectStore, Result, TokenSource};

/// How to authenticate to an Azure Blob location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMethod {
    /// Azure Workload Identity: exchange the pod's projected service-account token (federated mode).
    WorkloadIdentity,
    /// The storage account key from `AZURE_STORAGE_KEY` (classic mode).
    SharedKey,
    /// A SAS token from `AZURE_STORAGE_SAS_TOKEN`.
    Sas,
}

/// Settings that name and open a location.
#[derive(Debug, Clone, Args)]
pub struct LocationArgs {
    /// The location: `file:///abs/path` or `azblob://<container>[/<prefix>]`.
    #[arg(long, env = "PXB_LOCATION")]
    pub location: String,
    /// How to authenticate to an Azure Blob location.
    #[arg(long, value_enum, default_value = "workload-identity")]
    pub auth: AuthMethod,
    /// The storage account (default: taken from --azure-endpoint).
    #[arg(long, env = "AZURE_STORAGE_ACCOUNT")]
    pub azure_account: Option<String>,
    /// The blob endpoint (default: `https://<account>.blob.core.windows.net`).
    #[arg(long, env = "PXB_AZURE_ENDPOINT")]
    pub azure_endpoint: Option<String>,
    /// A PEM file of extra CA certificates to trust.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Workload Identity client id (default: `AZURE_CLIENT_ID`).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Workload Identity tenant id (default: `AZURE_TENANT_ID`).
    #[arg(long)]
    pub tenant_id: Option<String>,
    /// Workload Identity token file (default: `AZURE_FEDERATED_TOKEN_FILE`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// An opened location: the store, and the token source to check separately, if any.
#[derive(Debug, Clone)]
pub struct OpenedLocation {
    /// The location as given.
    pub url: LocationUrl,
    /// Its object store.
    pub store: Arc<dyn ObjectStore>,
    /// The credential in use, for an explicit authentication step.
    pub token: Option<Arc<dyn TokenSource>>,
}

/// The account name in a blob endpoint ([`pxb_azure::account_from_endpoint`]).
pub use pxb_azure::account_from_endpoint as infer_account;

impl LocationArgs {
    /// Opens the location. Reads credentials from the environment: `AZURE_STORAGE_KEY`,
    /// `AZURE_STORAGE_SAS_TOKEN`, and the Workload Identity variables.
    pub fn open(&self) -> Result<OpenedLocation> {
        let url = LocationUrl::parse(&self.location)?;
        match &url {
            LocationUrl::File { root } => {
                let store = Arc::new(LocalFileSystem::new(root)?);
                Ok(OpenedLocation {
                    url,
                    store,
                    token: None,
                })
            }
            LocationUrl::AzBlob { container, prefix } => {
                let account = self
                    .azure_account
                    .clone()
                    .or_else(|| self.azure_endpoint.as_deref().and_then(infer_account))
                    .ok_or_else(|| {
                        Error::invalid(
                            "an azblob:// location needs --azure-account (or AZURE_STORAGE_ACCOUNT)",
                        )
                    })?;
                let env = |var: &str| {
                    std::env::var(var).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
                        Error::invalid(format!("--auth {} needs {var} to be set", self.auth_name()))
                    })
                };
                let auth = match self.auth {
                    AuthMethod::WorkloadIdentity => AzureAuth::WorkloadIdentity(WorkloadIdentityOptions {
                        client_id: self.client_id.clone(),
                        tenant_id: self.tenant_id.clone(),
                        token_file: self.token_file.clone(),
                        authority_host: None,
                    }),
                    AuthMethod::SharedKey => AzureAuth::SharedKey {
                        key: env("AZURE_STORAGE_KEY")?,
                    },
                    AuthMethod::Sas => AzureAuth::Sas {
                        token: env("AZURE_STORAGE_SAS_TOKEN")?,
                    },
                };
                let mut cfg = AzureConfig::new(account, container.clone(), auth);
                cfg.prefix = prefix.clone();
                cfg.endpoint = self.azure_endpoint.clone();
                cfg.ca_file = self.ca_file.clone();
                let store = AzureBlobStore::new(cfg)?;
                let token = store.token_source();
                Ok(OpenedLocation {
                    url,
                    store: Arc::new(store),
                    token,
                })
            }
        }
    }

    fn auth_name(&self) -> &'static str {
        match self.auth {
            AuthMethod::WorkloadIdentity => "workload-identity",
            AuthMethod::SharedKey => "shared-key",
            AuthMethod::Sas => "sas",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_from_endpoint() {
        assert_eq!(
            infer_account("https://tenanta.blob.core.windows.net").as_deref(),
            Some("tenanta")
        );
        assert_eq!(
            infer_account("https://127.0.0.1:10000/devstoreaccount1").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(infer_account("https://127.0.0.1:10000"), None);
        assert_eq!(infer_account("not a url"), None);
    }
}
