//! [`AzureConfig`] and [`AzureAuth`]: what an [`AzureBlobStore`](crate::AzureBlobStore) connects
//! to and how it authenticates, built in code (chainable `with_…` setters) or from the
//! environment ([`AzureConfig::from_env`]) with the rules of the `pxb` command line.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use pxb_core::{Error, Result, TokenSource};

use crate::auth::WorkloadIdentityOptions;
use crate::env::non_empty;
use crate::http::HttpSettings;

/// The variable naming the storage account (as for the `pxb` command line's `--azure-account`).
pub const ENV_ACCOUNT: &str = "AZURE_STORAGE_ACCOUNT";
/// The variable naming the blob service endpoint (as for `--azure-endpoint`).
pub const ENV_ENDPOINT: &str = "PXB_AZURE_ENDPOINT";
/// The variable naming a PEM file of extra CA certificates to trust (as for `pxb-agent`).
pub const ENV_CA_FILE: &str = "PXB_CA_FILE";
/// The variable holding the storage account key (`shared-key` authentication).
pub const ENV_STORAGE_KEY: &str = "AZURE_STORAGE_KEY";
/// The variable holding a SAS token (`sas` authentication).
pub const ENV_SAS_TOKEN: &str = "AZURE_STORAGE_SAS_TOKEN";

/// How a store authenticates to the storage account. `Debug` shows no secret.
///
/// Non-exhaustive: more methods may come; [`AzureAuth::name`] names any of them.
#[derive(Clone)]
#[non_exhaustive]
pub enum AzureAuth {
    /// Azure Workload Identity (federated mode; nothing secret is stored).
    WorkloadIdentity(WorkloadIdentityOptions),
    /// Any other [`TokenSource`] (an Entra ID bearer token for `https://storage.azure.com`).
    Token(Arc<dyn TokenSource>),
    /// The storage account key, base64 as shown by the portal (classic mode).
    SharedKey {
        /// The account key.
        key: String,
    },
    /// A shared access signature (the query string, with or without the leading `?`).
    Sas {
        /// The SAS token.
        token: String,
    },
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAuth::WorkloadIdentity(o) => f.debug_tuple("WorkloadIdentity").field(o).finish(),
            AzureAuth::Token(t) => f.debug_tuple("Token").field(&t.describe()).finish(),
            AzureAuth::SharedKey { .. } => f.write_str("SharedKey { key: [redacted] }"),
            AzureAuth::Sas { .. } => f.write_str("Sas { token: [redacted] }"),
        }
    }
}

impl AzureAuth {
    /// The secrets this method holds (an account key, a SAS token), for redaction.
    pub(crate) fn secrets(&self) -> Vec<String> {
        match self {
            AzureAuth::SharedKey { key } => vec![key.clone()],
            AzureAuth::Sas { token } => vec![token.clone()],
            AzureAuth::WorkloadIdentity(_) | AzureAuth::Token(_) => Vec::new(),
        }
    }

    /// The method's name, as on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            AzureAuth::WorkloadIdentity(_) => "workload-identity",
            AzureAuth::Token(_) => "token",
            AzureAuth::SharedKey { .. } => "shared-key",
            AzureAuth::Sas { .. } => "sas",
        }
    }

    /// The method named `method` (as for the `pxb` command line's `--auth`), with its settings
    /// from the process environment. See [`AzureAuth::from_env_with`].
    pub fn from_env(method: &str) -> Result<Self> {
        Self::from_env_with(method, |name| std::env::var(name).ok())
    }

    /// The method named `method`, with its settings from `lookup` (a variable's value by name;
    /// empty values count as unset):
    /// - `workload-identity`: [`WorkloadIdentityOptions::from_env_with`];
    /// - `shared-key`: the account key in `AZURE_STORAGE_KEY`, which must be set;
    /// - `sas`: the SAS token in `AZURE_STORAGE_SAS_TOKEN`, which must be set.
    ///
    /// Errors: [`Error::Invalid`] for another name or a missing variable.
    pub fn from_env_with(method: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| non_empty(&lookup, name);
        let required = |name: &str| {
            var(name).ok_or_else(|| Error::invalid(format!("{method} authentication needs {name} to be set")))
        };
        match method {
            "workload-identity" => Ok(AzureAuth::WorkloadIdentity(
                WorkloadIdentityOptions::from_env_with(&lookup),
            )),
            "shared-key" => Ok(AzureAuth::SharedKey {
                key: required(ENV_STORAGE_KEY)?,
            }),
            "sas" => Ok(AzureAuth::Sas {
                token: required(ENV_SAS_TOKEN)?,
            }),
            other => Err(Error::invalid(format!(
                "unknown Azure authentication method {other:?}: use workload-identity, shared-key or sas"
            ))),
        }
    }
}

/// The account name in a blob endpoint: the first host label of `https://<account>.blob...`, or
/// the first path segment of a path-style endpoint (`https://127.0.0.1:10000/<account>`). `None`
/// for an endpoint that names no account (an IP address without a path, not a URL).
pub fn account_from_endpoint(endpoint: &str) -> Option<String> {
    let url = url::Url::parse(endpoint).ok()?;
    if let Some(seg) = url
        .path_segments()
        .and_then(|mut s| s.next())
        .filter(|s| !s.is_empty())
    {
        return Some(seg.to_owned());
    }
    let host = url.host_str()?;
    host.parse::<std::net::IpAddr>()
        .is_err()
        .then(|| host.split('.').next().map(str::to_owned))
        .flatten()
}

/// Settings of an [`AzureBlobStore`](crate::AzureBlobStore).
///
/// Make one with [`AzureConfig::new`] or [`AzureConfig::from_env`], then adjust it with the
/// chainable `with_…` setters (or assign the public fields). Non-exhaustive: fields may be added,
/// so it cannot be written as a struct literal outside this crate.
///
/// ```
/// use pxb_azure::{AzureAuth, AzureConfig, HttpSettings};
///
/// let config = AzureConfig::new("tenanta", "backups", AzureAuth::SharedKey { key: "a2V5".into() })
///     .with_prefix("cluster-1")
///     .with_endpoint("https://tenanta.privatelink.blob.core.windows.net")
///     .with_ca_file("/etc/pxb/ca.pem")
///     .with_http(HttpSettings {
///         max_retries: 5,
///         ..HttpSettings::default()
///     })
///     .with_part_size(16 << 20)
///     .with_concurrency(8);
/// assert_eq!(config.endpoint(), "https://tenanta.privatelink.blob.core.windows.net");
/// assert_eq!(config.http.max_retries, 5);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AzureConfig {
    /// The storage account name.
    pub account: String,
    /// The blob service endpoint without trailing `/`; default `https://<account>.blob.core.windows.net`.
    /// Path-style endpoints (`https://127.0.0.1:10000/devstoreaccount1`) work too.
    pub endpoint: Option<String>,
    /// The container.
    pub container: String,
    /// A name prefix inside the container (no leading or trailing `/`; empty for none).
    pub prefix: String,
    /// How to authenticate.
    pub auth: AzureAuth,
    /// A PEM file of extra CA certificates to trust (for private endpoints and tests).
    pub ca_file: Option<PathBuf>,
    /// Timeouts and retries.
    pub http: HttpSettings,
    /// Size of one staged block of a large upload; also the largest single-request upload.
    pub part_size: usize,
    /// How many blocks of one upload are in flight at once.
    pub concurrency: usize,
    /// Overrides the storage REST API version (`x-ms-version`) the SDK sends.
    pub api_version: Option<String>,
}

impl AzureConfig {
    /// Settings with defaults: public-cloud endpoint, no prefix, 8 MiB blocks, 4 in flight.
    pub fn new(account: impl Into<String>, container: impl Into<String>, auth: AzureAuth) -> Self {
        Self {
            account: account.into(),
            endpoint: None,
            container: container.into(),
            prefix: String::new(),
            auth,
            ca_file: None,
            http: HttpSettings::default(),
            part_size: 8 << 20,
            concurrency: 4,
            api_version: None,
        }
    }

    /// Settings for `container` from the process environment. See [`AzureConfig::from_env_with`]
    /// for the variables.
    pub fn from_env(container: impl Into<String>) -> Result<Self> {
        Self::from_env_with(container, |name| std::env::var(name).ok())
    }

    /// Settings for `container` from `lookup` (a variable's value by name; empty values count as
    /// unset), by the rules of the `pxb` command line's location settings:
    ///
    /// | variable | sets |
    /// |---|---|
    /// | `AZURE_STORAGE_ACCOUNT` | [`account`](Self::account); when unset, taken from the endpoint (see [`account_from_endpoint`]) |
    /// | `PXB_AZURE_ENDPOINT` | [`endpoint`](Self::endpoint) (default `https://<account>.blob.core.windows.net`) |
    /// | `PXB_CA_FILE` | [`ca_file`](Self::ca_file) (the name `pxb-agent` reads; the command line has `--ca-file`) |
    /// | `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST` | the Workload Identity settings ([`WorkloadIdentityOptions::from_env_with`]) |
    ///
    /// Authentication is always [`AzureAuth::WorkloadIdentity`], the command line's default
    /// (`--auth workload-identity`): like the command line, the presence of `AZURE_STORAGE_KEY`
    /// or `AZURE_STORAGE_SAS_TOKEN` does not switch methods. To use one of those, choose it
    /// explicitly: `.with_auth(AzureAuth::from_env("shared-key")?)` (or `"sas"`).
    /// Other settings keep the defaults of [`AzureConfig::new`].
    ///
    /// Errors: [`Error::Invalid`] when neither `AZURE_STORAGE_ACCOUNT` nor an endpoint naming an
    /// account is set. Missing Workload Identity settings are reported when the store is built.
    ///
    /// ```
    /// use std::collections::HashMap;
    ///
    /// use pxb_azure::{AzureAuth, AzureConfig};
    ///
    /// let env = HashMap::from([
    ///     ("PXB_AZURE_ENDPOINT", "https://127.0.0.1:10000/devstoreaccount1"),
    ///     ("AZURE_STORAGE_KEY", "a2V5"),
    /// ]);
    /// let lookup = |name: &str| env.get(name).map(|v| v.to_string());
    /// let config = AzureConfig::from_env_with("backups", lookup)?
    ///     .with_auth(AzureAuth::from_env_with("shared-key", lookup)?);
    /// assert_eq!(config.account, "devstoreaccount1");
    /// assert_eq!(config.auth.name(), "shared-key");
    /// # Ok::<(), pxb_core::Error>(())
    /// ```
    pub fn from_env_with(
        container: impl Into<String>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let var = |name: &str| non_empty(&lookup, name);
        let endpoint = var(ENV_ENDPOINT);
        let account = var(ENV_ACCOUNT)
            .or_else(|| endpoint.as_deref().and_then(account_from_endpoint))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "an Azure Blob location needs {ENV_ACCOUNT} (or {ENV_ENDPOINT} naming the account)"
                ))
            })?;
        let auth = AzureAuth::WorkloadIdentity(WorkloadIdentityOptions::from_env_with(&lookup));
        let mut config = Self::new(account, container, auth);
        config.endpoint = endpoint;
        config.ca_file = var(ENV_CA_FILE).map(PathBuf::from);
        Ok(config)
    }

    /// The blob service endpoint in use.
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => format!("https://{}.blob.core.windows.net", self.account),
        }
    }

    /// Sets the storage [`account`](Self::account).
    pub fn with_account(mut self, account: impl Into<String>) -> Self {
        self.account = account.into();
        self
    }

    /// Sets the blob service [`endpoint`](Self::endpoint), e.g. a private endpoint or Azurite's
    /// `https://127.0.0.1:10000/devstoreaccount1`.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the [`container`](Self::container).
    pub fn with_container(mut self, container: impl Into<String>) -> Self {
        self.container = container.into();
        self
    }

    /// Sets the name [`prefix`](Self::prefix) inside the container.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets how to authenticate ([`auth`](Self::auth)).
    pub fn with_auth(mut self, auth: AzureAuth) -> Self {
        self.auth = auth;
        self
    }

    /// Trusts the extra CA certificates in the PEM file `path` ([`ca_file`](Self::ca_file)).
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Sets the timeouts and retries ([`http`](Self::http)).
    pub fn with_http(mut self, http: HttpSettings) -> Self {
        self.http = http;
        self
    }

    /// Sets the size of one staged block of a large upload ([`part_size`](Self::part_size); at
    /// least 1 MiB is used).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes;
        self
    }

    /// Sets how many blocks of one upload are in flight at once
    /// ([`concurrency`](Self::concurrency); at least 1 is used).
    pub fn with_concurrency(mut self, blocks: usize) -> Self {
        self.concurrency = blocks;
        self
    }

    /// Overrides the storage REST API version ([`api_version`](Self::api_version)).
    pub fn with_api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = Some(version.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn wi(config: &AzureConfig) -> &WorkloadIdentityOptions {
        match &config.auth {
            AzureAuth::WorkloadIdentity(o) => o,
            other => panic!("expected workload identity, got {other:?}"),
        }
    }

    #[test]
    fn from_env_reads_account_endpoint_ca_and_workload_identity() {
        let c = AzureConfig::from_env_with(
            "backups",
            env(&[
                ("AZURE_STORAGE_ACCOUNT", "tenanta"),
                (
                    "PXB_AZURE_ENDPOINT",
                    "https://tenanta.privatelink.blob.core.windows.net/",
                ),
                ("PXB_CA_FILE", "/etc/pxb/ca.pem"),
                ("AZURE_CLIENT_ID", "client"),
                ("AZURE_TENANT_ID", "tenant"),
                ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/secrets/token"),
                ("AZURE_AUTHORITY_HOST", "https://login.example"),
            ]),
        )
        .expect("config");
        assert_eq!(c.account, "tenanta");
        assert_eq!(c.container, "backups");
        assert_eq!(c.endpoint(), "https://tenanta.privatelink.blob.core.windows.net");
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/pxb/ca.pem")));
        assert_eq!(c.prefix, "");
        let o = wi(&c);
        assert_eq!(o.client_id.as_deref(), Some("client"));
        assert_eq!(o.tenant_id.as_deref(), Some("tenant"));
        assert_eq!(o.token_file, Some(PathBuf::from("/var/run/secrets/token")));
        assert_eq!(o.authority_host.as_deref(), Some("https://login.example"));
        // The other settings are those of `new`.
        let d = AzureConfig::new("tenanta", "backups", c.auth.clone());
        assert_eq!((c.part_size, c.concurrency), (d.part_size, d.concurrency));
        assert_eq!(c.api_version, None);
    }

    #[test]
    fn from_env_takes_the_account_from_the_endpoint() {
        let path_style = AzureConfig::from_env_with(
            "c",
            env(&[("PXB_AZURE_ENDPOINT", "https://127.0.0.1:10000/devstoreaccount1")]),
        )
        .expect("config");
        assert_eq!(path_style.account, "devstoreaccount1");
        let host_style = AzureConfig::from_env_with(
            "c",
            env(&[("PXB_AZURE_ENDPOINT", "https://tenantb.blob.core.windows.net")]),
        )
        .expect("config");
        assert_eq!(host_style.account, "tenantb");
        // An explicit account wins over the endpoint's.
        let explicit = AzureConfig::from_env_with(
            "c",
            env(&[
                ("AZURE_STORAGE_ACCOUNT", "other"),
                ("PXB_AZURE_ENDPOINT", "https://tenantb.blob.core.windows.net"),
            ]),
        )
        .expect("config");
        assert_eq!(explicit.account, "other");
    }

    #[test]
    fn from_env_without_an_account_is_invalid() {
        for vars in [
            &[][..],
            &[("AZURE_STORAGE_ACCOUNT", "  ")][..],
            &[("PXB_AZURE_ENDPOINT", "https://127.0.0.1:10000")][..],
        ] {
            let e = AzureConfig::from_env_with("c", env(vars)).expect_err("no account");
            assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
            assert!(e.to_string().contains("AZURE_STORAGE_ACCOUNT"), "{e}");
        }
    }

    #[test]
    fn from_env_chooses_workload_identity_even_with_a_key_or_sas_set() {
        let c = AzureConfig::from_env_with(
            "c",
            env(&[
                ("AZURE_STORAGE_ACCOUNT", "a"),
                ("AZURE_STORAGE_KEY", "a2V5"),
                ("AZURE_STORAGE_SAS_TOKEN", "sv=x&sig=y"),
                ("AZURE_CLIENT_ID", ""),
            ]),
        )
        .expect("config");
        assert_eq!(c.auth.name(), "workload-identity");
        // Empty values count as unset.
        assert_eq!(wi(&c).client_id, None);
        assert_eq!(c.endpoint, None);
        assert_eq!(c.ca_file, None);
    }

    #[test]
    fn auth_from_env_reads_what_each_method_needs() {
        let vars = env(&[
            ("AZURE_STORAGE_KEY", "a2V5"),
            ("AZURE_STORAGE_SAS_TOKEN", "?sv=x&sig=y"),
            ("AZURE_CLIENT_ID", "client"),
        ]);
        match AzureAuth::from_env_with("shared-key", &vars).expect("key") {
            AzureAuth::SharedKey { key } => assert_eq!(key, "a2V5"),
            other => panic!("{other:?}"),
        }
        match AzureAuth::from_env_with("sas", &vars).expect("sas") {
            AzureAuth::Sas { token } => assert_eq!(token, "?sv=x&sig=y"),
            other => panic!("{other:?}"),
        }
        match AzureAuth::from_env_with("workload-identity", &vars).expect("wi") {
            AzureAuth::WorkloadIdentity(o) => assert_eq!(o.client_id.as_deref(), Some("client")),
            other => panic!("{other:?}"),
        }
        let e = AzureAuth::from_env_with("shared-key", env(&[])).expect_err("no key");
        assert!(e.to_string().contains("AZURE_STORAGE_KEY"), "{e}");
        let e = AzureAuth::from_env_with("sas", env(&[("AZURE_STORAGE_SAS_TOKEN", "")])).expect_err("no sas");
        assert!(e.to_string().contains("AZURE_STORAGE_SAS_TOKEN"), "{e}");
        let e = AzureAuth::from_env_with("password", &vars).expect_err("unknown");
        assert!(matches!(e, Error::Invalid { .. }), "{e:?}");
    }

    #[test]
    fn setters_chain_and_debug_hides_secrets() {
        let c = AzureConfig::new(
            "a",
            "c",
            AzureAuth::Sas {
                token: "SECRET".into(),
            },
        )
        .with_account("b")
        .with_container("d")
        .with_prefix("p/q")
        .with_endpoint("https://127.0.0.1:10000/b")
        .with_ca_file("/ca.pem")
        .with_http(HttpSettings {
            max_retries: 0,
            ..HttpSettings::default()
        })
        .with_part_size(1 << 20)
        .with_concurrency(2)
        .with_api_version("2021-08-06")
        .with_auth(AzureAuth::SharedKey { key: "SECRET".into() });
        assert_eq!(
            (c.account.as_str(), c.container.as_str(), c.prefix.as_str()),
            ("b", "d", "p/q")
        );
        assert_eq!(c.endpoint(), "https://127.0.0.1:10000/b");
        assert_eq!(c.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!((c.http.max_retries, c.part_size, c.concurrency), (0, 1 << 20, 2));
        assert_eq!(c.api_version.as_deref(), Some("2021-08-06"));
        assert_eq!(c.auth.name(), "shared-key");
        assert!(!format!("{c:?}").contains("SECRET"));
    }

    #[test]
    fn account_from_endpoint_reads_host_or_path() {
        assert_eq!(
            account_from_endpoint("https://tenanta.blob.core.windows.net").as_deref(),
            Some("tenanta")
        );
        assert_eq!(
            account_from_endpoint("https://127.0.0.1:10000/devstoreaccount1").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(account_from_endpoint("https://127.0.0.1:10000"), None);
        assert_eq!(account_from_endpoint("not a url"), None);
    }
}
