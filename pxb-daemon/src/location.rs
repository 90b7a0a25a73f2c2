//! Opening a backup location from command-line or configuration settings.
//!
//! [`LocationSettings`] holds everything that names and opens a location as values (an account
//! key or SAS token included), so an embedding program (the Python bindings) passes secrets
//! directly rather than through the environment. [`LocationSettings::with_env_defaults`] is the
//! one place the environment fills what was left unset, for the `pxb` command line
//! ([`LocationArgs`]) and the bindings alike.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig};
use pxb_core::{
    CheckOptions, CheckReport, Error, LocalFileSystem, LocationUrl, ObjectStore, Result, TokenSource,
    check_location,
};

/// Workload Identity's settings ([`LocationAuth::WorkloadIdentity`]).
pub use pxb_azure::WorkloadIdentityOptions;

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

/// How to authenticate to an Azure Blob location, with its settings as values. What is `None` is
/// taken from the environment by [`LocationSettings::with_env_defaults`]. `Debug` shows no secret.
#[derive(Clone)]
pub enum LocationAuth {
    /// Azure Workload Identity; unset options come from `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE` and `AZURE_AUTHORITY_HOST`.
    WorkloadIdentity(WorkloadIdentityOptions),
    /// The storage account key (`None`: `AZURE_STORAGE_KEY`).
    SharedKey {
        /// The account key, base64 as shown by the portal.
        key: Option<String>,
    },
    /// A SAS token (`None`: `AZURE_STORAGE_SAS_TOKEN`).
    Sas {
        /// The token, the query string with or without the leading `?`.
        token: Option<String>,
    },
}

impl LocationAuth {
    /// The method's name, as for the command line's `--auth`.
    pub fn name(&self) -> &'static str {
        match self {
            LocationAuth::WorkloadIdentity(_) => "workload-identity",
            LocationAuth::SharedKey { .. } => "shared-key",
            LocationAuth::Sas { .. } => "sas",
        }
    }
}

impl Default for LocationAuth {
    /// Workload Identity with every option from the environment, as `pxb` does by default.
    fn default() -> Self {
        LocationAuth::WorkloadIdentity(WorkloadIdentityOptions::default())
    }
}

impl fmt::Debug for LocationAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let given = |v: &Option<String>| if v.is_some() { "[redacted]" } else { "None" };
        match self {
            LocationAuth::WorkloadIdentity(o) => f.debug_tuple("WorkloadIdentity").field(o).finish(),
            LocationAuth::SharedKey { key } => write!(f, "SharedKey {{ key: {} }}", given(key)),
            LocationAuth::Sas { token } => write!(f, "Sas {{ token: {} }}", given(token)),
        }
    }
}

/// Everything that names and opens a location, as values: what `pxb`'s location flags say, and
/// what the Python bindings' `Location.open` takes. `Debug` shows no secret.
#[derive(Debug, Clone, Default)]
pub struct LocationSettings {
    /// The location: `file:///abs/path` or `azblob://<container>[/<prefix>]`.
    pub location: String,
    /// The storage account (`None`: `AZURE_STORAGE_ACCOUNT`, else taken from the endpoint).
    pub account: Option<String>,
    /// The blob endpoint (`None`: `PXB_AZURE_ENDPOINT`, else
    /// `https://<account>.blob.core.windows.net`).
    pub endpoint: Option<String>,
    /// A PEM file of extra CA certificates to trust.
    pub ca_file: Option<PathBuf>,
    /// How to authenticate to an Azure Blob location.
    pub auth: LocationAuth,
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
    /// The Azure store again, for container management (none for `file://`).
    azure: Option<Arc<AzureBlobStore>>,
}

impl OpenedLocation {
    /// Runs `pxb location check`'s steps against this location ([`check_location`]), each
    /// bounded by `step_timeout`, requesting a storage token in the authenticate step.
    pub async fn check(&self, step_timeout: Duration) -> CheckReport {
        let opts = CheckOptions {
            step_timeout,
            scopes: vec![pxb_azure::STORAGE_SCOPE.to_owned()],
        };
        check_location(
            &self.url.to_string(),
            self.store.as_ref(),
            self.token.as_deref(),
            &opts,
        )
        .await
    }

    /// Creates the Azure container of an `azblob://` location, succeeding if it exists already.
    /// A `file://` location's directory exists once it is opened: nothing to do.
    pub async fn create_container(&self) -> Result<()> {
        match &self.azure {
            Some(store) => store.create_container().await,
            None => Ok(()),
        }
    }
}

/// The account name in a blob endpoint ([`pxb_azure::account_from_endpoint`]).
pub use pxb_azure::account_from_endpoint as infer_account;

impl LocationArgs {
    /// The settings these flags name; the account key and SAS token are left to the environment.
    pub fn settings(&self) -> LocationSettings {
        LocationSettings {
            location: self.location.clone(),
            account: self.azure_account.clone(),
            endpoint: self.azure_endpoint.clone(),
            ca_file: self.ca_file.clone(),
            auth: match self.auth {
                AuthMethod::WorkloadIdentity => LocationAuth::WorkloadIdentity(WorkloadIdentityOptions {
                    client_id: self.client_id.clone(),
                    tenant_id: self.tenant_id.clone(),
                    token_file: self.token_file.clone(),
                    authority_host: None,
                }),
                AuthMethod::SharedKey => LocationAuth::SharedKey { key: None },
                AuthMethod::Sas => LocationAuth::Sas { token: None },
            },
        }
    }

    /// Opens the location ([`LocationSettings::open`]). Reads credentials from the environment:
    /// `AZURE_STORAGE_KEY`, `AZURE_STORAGE_SAS_TOKEN`, and the Workload Identity variables.
    pub fn open(&self) -> Result<OpenedLocation> {
        self.settings().open()
    }
}

impl LocationSettings {
    /// Settings for `location` with every other setting from the environment.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            ..Self::default()
        }
    }

    /// Fills what is unset from `lookup` (a variable's value by name; empty values count as
    /// unset), the defaults of the `pxb` command line: the account from `AZURE_STORAGE_ACCOUNT`,
    /// the endpoint from `PXB_AZURE_ENDPOINT`, Workload Identity's options from `AZURE_CLIENT_ID`,
    /// `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE` and `AZURE_AUTHORITY_HOST`, the account
    /// key from `AZURE_STORAGE_KEY` and the SAS token from `AZURE_STORAGE_SAS_TOKEN`. What is set
    /// stays, even if empty.
    pub fn with_env_defaults(mut self, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        self.account = self.account.or_else(|| var(pxb_azure::ENV_ACCOUNT));
        self.endpoint = self.endpoint.or_else(|| var(pxb_azure::ENV_ENDPOINT));
        self.auth = match self.auth {
            LocationAuth::WorkloadIdentity(o) => {
                let env = WorkloadIdentityOptions::from_env_with(var);
                LocationAuth::WorkloadIdentity(WorkloadIdentityOptions {
                    client_id: o.client_id.or(env.client_id),
                    tenant_id: o.tenant_id.or(env.tenant_id),
                    token_file: o.token_file.or(env.token_file),
                    authority_host: o.authority_host.or(env.authority_host),
                })
            }
            LocationAuth::SharedKey { key } => LocationAuth::SharedKey {
                key: key.or_else(|| var(pxb_azure::ENV_STORAGE_KEY)),
            },
            LocationAuth::Sas { token } => LocationAuth::Sas {
                token: token.or_else(|| var(pxb_azure::ENV_SAS_TOKEN)),
            },
        };
        self
    }

    /// Opens the location, with the environment's defaults for what is unset
    /// ([`with_env_defaults`](Self::with_env_defaults) over the process environment; a `file://`
    /// location reads none).
    pub fn open(&self) -> Result<OpenedLocation> {
        self.open_with_env(|name| std::env::var(name).ok())
    }

    /// [`open`](Self::open) with the environment's variables from `lookup`.
    pub fn open_with_env(&self, lookup: impl Fn(&str) -> Option<String>) -> Result<OpenedLocation> {
        let url = LocationUrl::parse(&self.location)?;
        match &url {
            LocationUrl::File { root } => {
                let store = Arc::new(LocalFileSystem::new(root)?);
                Ok(OpenedLocation {
                    url,
                    store,
                    token: None,
                    azure: None,
                })
            }
            LocationUrl::AzBlob { container, prefix } => {
                let settings = self.clone().with_env_defaults(lookup);
                let account = settings
                    .account
                    .clone()
                    .or_else(|| settings.endpoint.as_deref().and_then(infer_account))
                    .ok_or_else(|| {
                        Error::invalid(
                            "an azblob:// location needs --azure-account (or AZURE_STORAGE_ACCOUNT)",
                        )
                    })?;
                let method = settings.auth.name();
                let required = |value: Option<String>, var: &str| {
                    value
                        .filter(|v| !v.is_empty())
                        .ok_or_else(|| Error::invalid(format!("--auth {method} needs {var} to be set")))
                };
                let auth = match settings.auth {
                    LocationAuth::WorkloadIdentity(o) => AzureAuth::WorkloadIdentity(o),
                    LocationAuth::SharedKey { key } => AzureAuth::SharedKey {
                        key: required(key, pxb_azure::ENV_STORAGE_KEY)?,
                    },
                    LocationAuth::Sas { token } => AzureAuth::Sas {
                        token: required(token, pxb_azure::ENV_SAS_TOKEN)?,
                    },
                };
                let mut cfg = AzureConfig::new(account, container.clone(), auth);
                cfg.prefix = prefix.clone();
                cfg.endpoint = settings.endpoint;
                cfg.ca_file = settings.ca_file;
                let store = Arc::new(AzureBlobStore::new(cfg)?);
                let token = store.token_source();
                Ok(OpenedLocation {
                    url,
                    store: store.clone(),
                    token,
                    azure: Some(store),
                })
            }
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

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn env_defaults_fill_only_what_is_unset() {
        let lookup = env(&[
            ("AZURE_STORAGE_ACCOUNT", "fromenv"),
            ("PXB_AZURE_ENDPOINT", ""),
            ("AZURE_CLIENT_ID", "env-client"),
            ("AZURE_TENANT_ID", "env-tenant"),
            ("AZURE_AUTHORITY_HOST", "https://login.example"),
            ("AZURE_STORAGE_KEY", "env-key"),
        ]);
        let mut s = LocationSettings::new("azblob://container");
        s.auth = LocationAuth::WorkloadIdentity(WorkloadIdentityOptions {
            client_id: Some("given".into()),
            ..WorkloadIdentityOptions::default()
        });
        let s = s.with_env_defaults(&lookup);
        assert_eq!(s.account.as_deref(), Some("fromenv"));
        assert_eq!(s.endpoint, None, "an empty variable counts as unset");
        let LocationAuth::WorkloadIdentity(o) = &s.auth else {
            panic!("auth changed: {:?}", s.auth)
        };
        assert_eq!(o.client_id.as_deref(), Some("given"));
        assert_eq!(o.tenant_id.as_deref(), Some("env-tenant"));
        assert_eq!(o.authority_host.as_deref(), Some("https://login.example"));

        let given = LocationSettings {
            account: Some("given".into()),
            auth: LocationAuth::SharedKey {
                key: Some("given-key".into()),
            },
            ..LocationSettings::new("azblob://container")
        }
        .with_env_defaults(&lookup);
        assert_eq!(given.account.as_deref(), Some("given"));
        assert!(matches!(given.auth, LocationAuth::SharedKey { key: Some(ref k) } if k == "given-key"));
        let from_env = LocationSettings {
            auth: LocationAuth::SharedKey { key: None },
            ..LocationSettings::new("azblob://container")
        }
        .with_env_defaults(&lookup);
        assert!(matches!(from_env.auth, LocationAuth::SharedKey { key: Some(ref k) } if k == "env-key"));
    }

    #[test]
    fn missing_secrets_and_accounts_are_named() {
        let none = env(&[]);
        let mut s = LocationSettings::new("azblob://container");
        let e = s.open_with_env(&none).expect_err("no account");
        assert_eq!(
            e.to_string(),
            Error::invalid("an azblob:// location needs --azure-account (or AZURE_STORAGE_ACCOUNT)")
                .to_string()
        );
        s.account = Some("acct".into());
        s.auth = LocationAuth::Sas { token: None };
        let e = s.open_with_env(&none).expect_err("no SAS token");
        assert!(
            e.to_string()
                .contains("--auth sas needs AZURE_STORAGE_SAS_TOKEN to be set"),
            "{e}"
        );
        // A file:// location reads no credential.
        let dir = std::env::temp_dir().join(format!("pxb-location-test-{}", std::process::id()));
        let file = LocationSettings {
            location: format!("file://{}", dir.display()),
            auth: LocationAuth::SharedKey { key: None },
            ..LocationSettings::default()
        };
        assert!(file.open_with_env(&none).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = LocationSettings {
            auth: LocationAuth::SharedKey {
                key: Some("c2VjcmV0LWtleQ==".into()),
            },
            ..LocationSettings::new("azblob://container")
        };
        let shown = format!("{s:?}");
        assert!(!shown.contains("c2VjcmV0LWtleQ=="), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        let sas = format!(
            "{:?}",
            LocationAuth::Sas {
                token: Some("sig=abc".into())
            }
        );
        assert!(!sas.contains("sig=abc"), "{sas}");
    }
}
