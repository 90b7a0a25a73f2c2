//! [`ServerConfig`]: the settings of `pxb-server`, from a YAML file with `PXB_…` environment
//! overrides.
//!
//! Every key can be overridden by an environment variable named `PXB_` followed by the key's path
//! in upper snake case: `api.listen` → `PXB_API_LISTEN`, `fleet.leaseSecs` → `PXB_FLEET_LEASE_SECS`.
//! The value is read as YAML, so `PXB_AUTH_OIDC_AUDIENCES='[a, b]'` sets a list.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use pxb_core::catalog::records::Mode;
use pxb_core::{Error, Result};

/// The commented default configuration `pxb-server --print-default-config` prints. A test checks
/// it parses to [`ServerConfig::default`].
pub const DEFAULT_CONFIG_YAML: &str = include_str!("default-config.yaml");

/// All settings.
///
/// Non-exhaustive, like every section of it: start from [`ServerConfig::default`] (or
/// [`ServerConfig::load`]) and set the public fields, so that settings added later do not break
/// callers:
///
/// ```
/// use pxb_daemon::server::config::ServerConfig;
///
/// let mut config = ServerConfig::default();
/// config.api.listen = "127.0.0.1:0".into();
/// config.fleet.concurrency = 16;
/// config.check()?;
/// # Ok::<(), pxb_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The server's mode. `federated` (the default): the server never stores or hands out a
    /// cloud credential; agents reach locations with Workload Identity, classic locations are
    /// refused, and classic locations stored while the server ran in classic mode are kept but
    /// inactive (not sent to clusters; no backups, restores, validations, syncs or verifies).
    /// `classic`: classic locations too, their credentials sealed with the secrets key, which
    /// this mode requires.
    pub mode: Mode,
    /// The REST API.
    pub api: ApiConfig,
    /// The catalog database.
    pub catalog: CatalogConfig,
    /// Several replicas on one PostgreSQL catalog.
    pub replicas: ReplicasConfig,
    /// Login.
    pub auth: AuthConfig,
    /// Encryption of classic-mode secrets.
    pub secrets: SecretsConfig,
    /// How the server works the fleet.
    pub fleet: FleetConfig,
    /// Garden credentials discovery configurations may use, by name. Orgs refer to them by name;
    /// they never see the file. See [`GardenCredential`] for who may use one.
    pub garden_credentials: BTreeMap<String, GardenCredential>,
    /// Metrics of backups and the opt-in support channel.
    pub telemetry: TelemetryConfig,
}

/// Several `pxb-server` replicas sharing one PostgreSQL catalog: one active, the others standby
/// (see `pxb_daemon::server::replicas`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ReplicasConfig {
    /// Run as one of several replicas (needs `catalog.url`).
    pub enabled: bool,
    /// Seconds the active replica may go without renewing its lease before a standby takes
    /// over (it renews every third of it).
    pub lease_secs: u64,
    /// This replica's name, unique among them (the pod's name); a random one when empty.
    pub name: String,
    /// The URL the other replicas reach this one's API at (`http://<pod IP>:8080`); when empty,
    /// the address the API listens on.
    pub advertise: String,
}

impl Default for ReplicasConfig {
    fn default() -> Self {
        ReplicasConfig {
            enabled: false,
            lease_secs: 15,
            name: String::new(),
            advertise: String::new(),
        }
    }
}

/// Metrics of backups and the opt-in support channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// Hours a deleted backup's info series stays on `/metrics` (with `status="Deleted"` and
    /// the status it had in `previous_status`), then goes by itself.
    pub backup_info_retention_hours: u64,
    /// The most per-backup info series on `/metrics`: the most recently created backups, and
    /// the most recently deleted ones within the retention window. Bounds the scrape and the
    /// memory at any catalog size.
    pub backup_info_max_series: usize,
    /// The opt-in support channel (off until switched on at run time).
    pub support: SupportConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            backup_info_retention_hours: 24,
            backup_info_max_series: 10_000,
            support: SupportConfig::default(),
        }
    }
}

/// The opt-in support channel: health metrics, recent redacted log records and the ids of
/// onboarded clusters, sent to the provider's support service over mutual TLS
/// (`docs/telemetry.md`). Off by default; switched on and off at run time by the `enabled` key
/// of a ConfigMap or a file, never by this configuration alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SupportConfig {
    /// The telemetry service (`https://…`). Empty: the channel cannot be switched on.
    pub endpoint: String,
    /// A PEM file with the CA of the telemetry service; empty uses the system roots.
    pub ca_file: String,
    /// A file holding the registration token the support service gave, if it wants one.
    pub registration_token_file: String,
    /// The ConfigMap whose `enabled` key (`"true"`/`"false"`) switches the channel, watched
    /// through the Kubernetes API when the server runs in a cluster: `namespace/name`. The
    /// namespace defaults to the server's own (`POD_NAMESPACE`).
    pub config_map: String,
    /// Instead of the ConfigMap, a file (for example the ConfigMap mounted as a volume) whose
    /// content is `true` or `false`, read every two seconds.
    pub enabled_file: String,
    /// Seconds between uploads.
    pub upload_interval_secs: u64,
    /// The provider's customer id of each org, sent at registration so that support can map
    /// an org to a customer. Orgs not listed are sent with their org id only.
    pub customers: BTreeMap<String, String>,
}

impl Default for SupportConfig {
    fn default() -> Self {
        SupportConfig {
            endpoint: String::new(),
            ca_file: String::new(),
            registration_token_file: String::new(),
            config_map: "pxb-telemetry-config".into(),
            enabled_file: String::new(),
            upload_interval_secs: 300,
            customers: BTreeMap::new(),
        }
    }
}

/// A garden credential (a Gardener project service account's kubeconfig) and who may use it.
///
/// A credential reaches whatever its service account may read in the garden, so it is bound: a
/// discovery may use it only in the orgs listed in `orgs`, and only for the projects listed in
/// `projects` (any project when empty). A credential with no `orgs` is the provider's own: only
/// a provider admin may create a discovery with it, in any org. The short form `name: /path`
/// is such an unbound credential.
///
/// Independently of credentials, a Gardener project is onboarded into one org only: a second
/// discovery of the same project (in any org) is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct GardenCredential {
    /// Path of the kubeconfig file (for example a mounted Secret).
    pub kubeconfig: String,
    /// Orgs whose admins may create discoveries with it. Empty: provider admins only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orgs: Vec<String>,
    /// Projects it may discover. Empty: any project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
}

impl GardenCredential {
    /// An unbound credential (provider admins only) at `kubeconfig`.
    pub fn new(kubeconfig: impl Into<String>) -> Self {
        GardenCredential {
            kubeconfig: kubeconfig.into(),
            ..Self::default()
        }
    }

    /// Binds it to `orgs` (builder style).
    pub fn for_orgs<S: Into<String>>(mut self, orgs: impl IntoIterator<Item = S>) -> Self {
        self.orgs = orgs.into_iter().map(Into::into).collect();
        self
    }

    /// Restricts it to `projects` (builder style).
    pub fn for_projects<S: Into<String>>(mut self, projects: impl IntoIterator<Item = S>) -> Self {
        self.projects = projects.into_iter().map(Into::into).collect();
        self
    }

    /// Why a discovery of `project` in `org` may not use this credential (named `name`), or
    /// `None` when it may. `provider_admin` says whether the requester administers the provider.
    pub fn refusal(&self, name: &str, org: &str, project: &str, provider_admin: bool) -> Option<String> {
        if self.orgs.is_empty() {
            if !provider_admin {
                return Some(format!(
                    "garden credential {name:?} is not bound to any org; only a provider admin may use it \
                     (bind it to the org with `orgs` in gardenCredentials, or have a provider admin create the discovery)"
                ));
            }
        } else if !self.orgs.iter().any(|o| o == org) {
            return Some(format!("garden credential {name:?} is not bound to org {org}"));
        }
        if !self.projects.is_empty() && !self.projects.iter().any(|p| p == project) {
            return Some(format!(
                "garden credential {name:?} may not discover project {project} (allowed: {})",
                self.projects.join(", ")
            ));
        }
        None
    }
}

/// The full form of a garden credential, as written in the file.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GardenCredentialFull {
    kubeconfig: String,
    #[serde(default)]
    orgs: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
}

impl<'de> Deserialize<'de> for GardenCredential {
    /// Either a path (an unbound credential) or `{kubeconfig, orgs, projects}`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = GardenCredential;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a kubeconfig path or {kubeconfig, orgs, projects}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                Ok(GardenCredential::new(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let f = GardenCredentialFull::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(GardenCredential {
                    kubeconfig: f.kubeconfig,
                    orgs: f.orgs,
                    projects: f.projects,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The REST API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ApiConfig {
    /// Address to listen on.
    pub listen: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds to let requests in flight finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Requests of one org (`/v1/orgs/{org}/…`, by callers with a role in it) in flight at once;
    /// more get `429`, so that one tenant cannot take the API or the catalog from the others.
    pub max_requests_per_org: usize,
}

/// The catalog database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct CatalogConfig {
    /// The SQLite file: the catalog when `url` is empty.
    pub path: String,
    /// A PostgreSQL database instead of the SQLite file:
    /// `postgres://user@host:5432/database?sslmode=require`. No password in it (see
    /// `passwordFile`); TLS (`sslmode=require`) unless the database is on this machine.
    pub url: String,
    /// A file with the database password (for `url`).
    pub password_file: String,
    /// A PEM file with the CA certificates that sign the database's TLS certificate (for `url`);
    /// the system's roots when empty.
    pub ca_file: String,
    /// Connections to the database (for `url`).
    pub max_connections: usize,
}

/// Login with Entra ID (OIDC) and provider-wide roles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AuthConfig {
    /// The OIDC issuer, e.g. `https://login.microsoftonline.com/<tenant>/v2.0`; empty disables
    /// bearer-token login (then only `--dev-token` works).
    pub issuer: String,
    /// Accepted audiences (the API's application id URI or client id).
    pub audiences: Vec<String>,
    /// A PEM file with an extra CA to trust for the issuer.
    pub issuer_ca_file: String,
    /// Token groups whose members administer the whole provider (every org).
    pub provider_admin_groups: Vec<String>,
    /// App roles that administer the whole provider.
    pub provider_admin_roles: Vec<String>,
    /// The web console's client id at the issuer (a public client: a single-page application
    /// whose redirect URI is the console's address, `https://<server>/`); empty: the console
    /// offers no Entra ID sign-in.
    pub console_client_id: String,
    /// The scopes the console asks for; empty: `openid profile offline_access` and
    /// `<first audience>/.default`.
    pub console_scopes: Vec<String>,
}

impl AuthConfig {
    /// The scopes the console asks the issuer for.
    pub fn console_scopes(&self) -> Vec<String> {
        if !self.console_scopes.is_empty() {
            return self.console_scopes.clone();
        }
        let mut s: Vec<String> = ["openid", "profile", "offline_access"].map(String::from).to_vec();
        if let Some(a) = self.audiences.first() {
            s.push(format!("{}/.default", a.trim_end_matches('/')));
        }
        s
    }
}

/// Encryption of classic-mode secrets at rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct SecretsConfig {
    /// A file holding a 32-byte key, base64. Alternatively set `PXB_SECRETS_KEY` to the key
    /// itself. Required in classic mode; without a key, classic locations and imported clusters
    /// are refused.
    pub key_file: String,
}

/// How the configuration spells `mode`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Federated => "federated",
        Mode::Classic => "classic",
    }
}

/// The error of a classic-mode server without a secrets key: what [`ServerConfig::load`] (and
/// the server's build) say when `mode` is `classic` and neither `secrets.keyFile` nor
/// `PXB_SECRETS_KEY` gives a key.
pub(crate) fn classic_needs_a_key() -> Error {
    Error::invalid(
        "mode: classic needs a secrets key to seal classic credentials: set secrets.keyFile (a file \
         holding 32 random bytes, base64) or PXB_SECRETS_KEY, or run in mode: federated (the default)",
    )
}

/// How the server works the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct FleetConfig {
    /// Clusters worked on at once.
    pub concurrency: usize,
    /// Deadline of each call to a cluster, in milliseconds.
    pub call_timeout_ms: u64,
    /// Seconds between visits of a reachable cluster.
    pub resync_secs: u64,
    /// First delay before visiting an unreachable cluster again; doubles per failure.
    pub offline_backoff_secs: u64,
    /// Longest delay for an unreachable cluster.
    pub offline_backoff_max_secs: u64,
    /// A sync or validation request without a heartbeat for this long turns `Stalled`.
    pub lease_secs: u64,
    /// Agents older than this are `AgentOutdated`.
    pub min_agent_version: String,
    /// Install the agent (CRDs and manifests) on eligible clusters that lack it, and upgrade
    /// what it installed in place when the agent is outdated or runs another image than
    /// `agent_image` (only objects it created, never Helm-managed ones; not while a backup or
    /// restore runs; see [`crate::server::install`]).
    pub install_agent: bool,
    /// The agent image zero-touch install deploys and upgrades to.
    pub agent_image: String,
    /// Lifetime of the shoot kubeconfigs requested from the garden, in seconds.
    pub kubeconfig_lifetime_secs: u64,
    /// How often the fleet-status snapshot is rebuilt, in milliseconds.
    pub snapshot_interval_ms: u64,
    /// Most synced backups (found by syncs, not made by this server) imported per org; a sync
    /// that finds more says `import limit reached` in its status.
    pub max_synced_backups_per_org: u64,
    /// Largest page of an agent's catalog the server reads, in bytes; a larger one is refused.
    pub catalog_page_max_bytes: u64,
    /// Most pages of an agent's catalog read after one sync.
    pub catalog_max_pages: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 1 << 20,
            shutdown_grace_secs: 10,
            max_requests_per_org: 32,
        }
    }
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            path: "/var/lib/pxb/catalog.db".into(),
            url: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            max_connections: 16,
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            concurrency: 256,
            call_timeout_ms: 5000,
            resync_secs: 30,
            offline_backoff_secs: 15,
            offline_backoff_max_secs: 300,
            lease_secs: 120,
            min_agent_version: pxb_core::api::agent::VERSION.into(),
            install_agent: false,
            agent_image: format!("pxb-agent:{}", pxb_core::api::agent::VERSION),
            kubeconfig_lifetime_secs: 3600,
            snapshot_interval_ms: 200,
            max_synced_backups_per_org: 20_000,
            catalog_page_max_bytes: 8 << 20,
            catalog_max_pages: 100,
        }
    }
}

fn upper_snake(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Applies `PXB_…` overrides from `var` to every key of `value` below `prefix` (whose key path
/// is `path`, dotted, empty at the top), and records each applied override in `applied` as the
/// variable's name and the key's path.
fn apply_env(
    value: &mut serde_json::Value,
    prefix: &str,
    path: &str,
    var: &dyn Fn(&str) -> Option<String>,
    applied: &mut Vec<(String, String)>,
) -> Result<()> {
    let serde_json::Value::Object(map) = value else {
        return Ok(());
    };
    for (key, v) in map.iter_mut() {
        let name = format!("{prefix}_{}", upper_snake(key));
        let key_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        if let Some(raw) = var(&name) {
            let parsed: serde_json::Value = serde_saphyr::from_str(&raw)
                .map_err(|e| Error::invalid(format!("environment variable {name} ({key_path}): {e}")))?;
            // A plain scalar that YAML read as a number or bool stays a string where a string is due.
            *v = match (&*v, parsed) {
                (serde_json::Value::String(_), p) if !p.is_string() => serde_json::Value::String(raw),
                (_, p) => p,
            };
            applied.push((name.clone(), key_path.clone()));
        }
        apply_env(v, &name, &key_path, var, applied)?;
    }
    Ok(())
}

/// The override among `applied` (in order) that first makes `base` not a configuration: its
/// variable's name and key path, for an error that names them rather than only serde's type.
fn faulty_override<'a>(
    base: &serde_json::Value,
    applied: &'a [(String, String)],
    var: &dyn Fn(&str) -> Option<String>,
) -> Option<&'a (String, String)> {
    (0..applied.len()).find_map(|i| {
        let upto = &applied[..=i];
        let only = |n: &str| {
            if upto.iter().any(|(a, _)| a == n) {
                var(n)
            } else {
                None
            }
        };
        let mut v = base.clone();
        apply_env(&mut v, "PXB", "", &only, &mut Vec::new()).ok()?;
        serde_json::from_value::<ServerConfig>(v)
            .is_err()
            .then_some(&applied[i])
    })
}

/// Whether `s` can be a file's path in the configuration: no control characters (a newline or a
/// NUL cannot be in a path a Kubernetes volume gives) and no blanks around it (a quoting slip).
fn plausible_path(s: &str) -> bool {
    !s.chars().any(char::is_control) && s.trim() == s
}

impl ServerConfig {
    /// Reads `path` (YAML; missing keys take their defaults, unknown keys are errors) and applies
    /// the environment overrides of `var`.
    pub fn load(path: Option<&Path>, var: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let base = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("reading the configuration {}", p.display()), e))?;
                Self::from_yaml(&text).map_err(|e| {
                    Error::invalid(format!("the configuration {} is not valid: {e}", p.display()))
                })?
            }
            None => ServerConfig::default(),
        };
        let base = serde_json::to_value(&base).map_err(|e| Error::other(e.to_string()))?;
        let mut value = base.clone();
        let mut applied = Vec::new();
        apply_env(&mut value, "PXB", "", &var, &mut applied)?;
        let config: ServerConfig =
            serde_json::from_value(value).map_err(|e| match faulty_override(&base, &applied, &var) {
                Some((name, key)) => Error::invalid(format!("environment variable {name} ({key}): {e}")),
                None => Error::invalid(format!("the configuration after PXB_ overrides: {e}")),
            })?;
        config.check()?;
        let env_key = var("PXB_SECRETS_KEY").is_some_and(|k| !k.trim().is_empty());
        if config.mode == Mode::Classic && config.secrets.key_file.is_empty() && !env_key {
            return Err(classic_needs_a_key());
        }
        Ok(config)
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(ServerConfig::default());
        }
        serde_saphyr::from_str(text).map_err(|e| Error::invalid(e.to_string()))
    }

    /// Refuses settings that cannot work.
    pub fn check(&self) -> Result<()> {
        let f = &self.fleet;
        if self.api.max_requests_per_org == 0 {
            return Err(Error::invalid("api.maxRequestsPerOrg must be at least 1"));
        }
        if f.concurrency == 0 {
            return Err(Error::invalid("fleet.concurrency must be at least 1"));
        }
        if self.replicas.enabled && self.catalog.url.is_empty() {
            return Err(Error::invalid(
                "replicas.enabled needs a shared catalog: set catalog.url (PostgreSQL)",
            ));
        }
        if self.replicas.enabled && self.replicas.lease_secs < 3 {
            return Err(Error::invalid("replicas.leaseSecs must be at least 3"));
        }
        if !self.catalog.url.is_empty() && self.catalog.max_connections == 0 {
            return Err(Error::invalid("catalog.maxConnections must be at least 1"));
        }
        if f.catalog_page_max_bytes == 0 || f.catalog_max_pages == 0 {
            return Err(Error::invalid(
                "fleet.catalogPageMaxBytes and fleet.catalogMaxPages must be positive",
            ));
        }
        if f.call_timeout_ms == 0 || f.resync_secs == 0 || f.lease_secs == 0 {
            return Err(Error::invalid(
                "fleet.callTimeoutMs, fleet.resyncSecs and fleet.leaseSecs must be positive",
            ));
        }
        semver::Version::parse(&f.min_agent_version).map_err(|e| {
            Error::invalid(format!(
                "fleet.minAgentVersion {:?} is not a version: {e}",
                f.min_agent_version
            ))
        })?;
        self.check_telemetry()?;
        if !self.auth.issuer.is_empty() && self.auth.audiences.is_empty() {
            return Err(Error::invalid(
                "auth.audiences must name at least one audience when auth.issuer is set",
            ));
        }
        if !self.auth.console_client_id.is_empty() && self.auth.issuer.is_empty() {
            return Err(Error::invalid(
                "auth.consoleClientId needs auth.issuer: the console signs in at that issuer",
            ));
        }
        if let Some(bad) = self
            .auth
            .console_scopes
            .iter()
            .find(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\'))
        {
            return Err(Error::invalid(format!(
                "auth.consoleScopes: {bad:?} is not a scope (printable ASCII, no spaces or quotes)"
            )));
        }
        Ok(())
    }

    /// Refuses telemetry settings that cannot work; every message names its key.
    fn check_telemetry(&self) -> Result<()> {
        let t = &self.telemetry;
        if t.backup_info_retention_hours == 0 || t.backup_info_retention_hours > 24 * 366 {
            return Err(Error::invalid(format!(
                "telemetry.backupInfoRetentionHours must be between 1 and 8784 (a year), not {}",
                t.backup_info_retention_hours
            )));
        }
        if t.backup_info_max_series > 10_000_000 {
            return Err(Error::invalid(format!(
                "telemetry.backupInfoMaxSeries must be at most 10000000 (0 turns the series off), not {}",
                t.backup_info_max_series
            )));
        }
        let s = &t.support;
        if !(MIN_UPLOAD_INTERVAL_SECS..=MAX_UPLOAD_INTERVAL_SECS).contains(&s.upload_interval_secs) {
            return Err(Error::invalid(format!(
                "telemetry.support.uploadIntervalSecs must be between {MIN_UPLOAD_INTERVAL_SECS} and \
                 {MAX_UPLOAD_INTERVAL_SECS} (a day), not {}",
                s.upload_interval_secs
            )));
        }
        if !s.endpoint.is_empty() {
            let url = url::Url::parse(&s.endpoint).map_err(|e| {
                Error::invalid(format!(
                    "telemetry.support.endpoint {:?} is not a URL: {e}",
                    s.endpoint
                ))
            })?;
            if url.scheme() != "https" || url.host_str().is_none_or(str::is_empty) {
                return Err(Error::invalid(format!(
                    "telemetry.support.endpoint {:?} must be an https:// URL with a host (the channel uses mutual TLS)",
                    s.endpoint
                )));
            }
        }
        let config_map_ok = match s.config_map.split_once('/') {
            None => crate::names::is_subdomain(&s.config_map),
            Some((ns, name)) => crate::names::is_dns_label(ns) && crate::names::is_subdomain(name),
        };
        if !config_map_ok {
            return Err(Error::invalid(format!(
                "telemetry.support.configMap {:?} must be a ConfigMap's name (a DNS-1123 subdomain: \
                 lower-case letters, digits, '-' and '.') or namespace/name (the namespace a DNS-1123 label)",
                s.config_map
            )));
        }
        if !s.enabled_file.is_empty() && !plausible_path(&s.enabled_file) {
            return Err(Error::invalid(format!(
                "telemetry.support.enabledFile {:?} is not a usable path (control characters, or blanks around it)",
                s.enabled_file
            )));
        }
        for (org, customer) in &s.customers {
            if !crate::names::is_dns_label(org) {
                return Err(Error::invalid(format!(
                    "telemetry.support.customers: {org:?} is not an org id (org ids are DNS labels)"
                )));
            }
            if customer.trim().is_empty()
                || customer.trim() != customer
                || customer.len() > MAX_CUSTOMER_ID
                || customer.chars().any(char::is_control)
            {
                return Err(Error::invalid(format!(
                    "telemetry.support.customers: the customer id of org {org} must be 1 to \
                     {MAX_CUSTOMER_ID} bytes without control characters or blanks around it, not {customer:?} \
                     (leave an org out to send it without one)"
                )));
            }
        }
        Ok(())
    }
}

/// Fewest seconds between uploads of the support channel.
const MIN_UPLOAD_INTERVAL_SECS: u64 = 10;
/// Most seconds between uploads of the support channel (a day).
const MAX_UPLOAD_INTERVAL_SECS: u64 = 86_400;
/// Longest customer id in `telemetry.support.customers`, in bytes.
const MAX_CUSTOMER_ID: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_default_config_is_the_default() {
        let parsed = ServerConfig::from_yaml(DEFAULT_CONFIG_YAML).expect("default config parses");
        assert_eq!(parsed, ServerConfig::default());
        assert!(
            DEFAULT_CONFIG_YAML
                .lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
                > 10
        );
    }

    #[test]
    fn environment_overrides_every_level() {
        let env: BTreeMap<&str, &str> = [
            ("PXB_API_LISTEN", "127.0.0.1:9999"),
            ("PXB_FLEET_LEASE_SECS", "7"),
            ("PXB_AUTH_AUDIENCES", "[a, b]"),
            ("PXB_AUTH_ISSUER", "https://issuer.test"),
            ("PXB_GARDEN_CREDENTIALS", "{dev: /etc/garden/dev}"),
            ("PXB_FLEET_MIN_AGENT_VERSION", "1"),
        ]
        .into_iter()
        .collect();
        let err = ServerConfig::load(None, |k| env.get(k).map(|v| v.to_string())).expect_err("bad version");
        assert!(err.to_string().contains("minAgentVersion"), "{err}");
        let c = ServerConfig::load(None, |k| {
            (k != "PXB_FLEET_MIN_AGENT_VERSION")
                .then(|| env.get(k).map(|v| v.to_string()))
                .flatten()
        })
        .expect("load");
        assert_eq!(c.api.listen, "127.0.0.1:9999");
        assert_eq!(c.fleet.lease_secs, 7);
        assert_eq!(c.auth.audiences, vec!["a", "b"]);
        assert_eq!(
            c.garden_credentials.get("dev"),
            Some(&GardenCredential::new("/etc/garden/dev"))
        );
    }

    #[test]
    fn the_mode_is_federated_by_default_and_classic_needs_a_secrets_key() {
        let load = |env: &[(&str, &str)]| {
            let env: BTreeMap<String, String> =
                env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            ServerConfig::load(None, |k| env.get(k).cloned())
        };
        assert_eq!(ServerConfig::default().mode, Mode::Federated);
        assert_eq!(load(&[]).expect("defaults").mode, Mode::Federated);
        // Federated needs no key.
        assert_eq!(
            load(&[("PXB_MODE", "federated")]).expect("federated").mode,
            Mode::Federated
        );
        // Classic without a key (or with a blank one) is refused, naming both ways to give one.
        for env in [
            &[("PXB_MODE", "classic")][..],
            &[("PXB_MODE", "classic"), ("PXB_SECRETS_KEY", "  ")][..],
        ] {
            let err = load(env).expect_err("classic without a key").to_string();
            assert!(
                err.contains("mode: classic needs a secrets key")
                    && err.contains("secrets.keyFile")
                    && err.contains("PXB_SECRETS_KEY"),
                "{env:?}: {err}"
            );
        }
        let err = file_error("mode: classic\n");
        assert!(err.contains("mode: classic needs a secrets key"), "{err}");
        // With a key file or the key in the environment it loads (the key itself is read and
        // checked when the server is built).
        let c = load(&[("PXB_MODE", "classic"), ("PXB_SECRETS_KEY", "a2V5")]).expect("env key");
        assert_eq!(c.mode, Mode::Classic);
        let c = load(&[("PXB_MODE", "classic"), ("PXB_SECRETS_KEY_FILE", "/etc/pxb/key")]).expect("key file");
        assert_eq!(
            (c.mode, c.secrets.key_file.as_str()),
            (Mode::Classic, "/etc/pxb/key")
        );
        let c = ServerConfig::from_yaml("mode: classic\nsecrets: {keyFile: /etc/pxb/key}\n").expect("file");
        assert_eq!(c.mode, Mode::Classic);
        // Anything else is an error naming the variable and the key, or the file's line.
        let err = env_error(&[("PXB_MODE", "Classic")]);
        assert!(err.contains("PXB_MODE") && err.contains("(mode)"), "{err}");
        let err = file_error("mode: hybrid\n");
        assert!(err.contains("hybrid") && err.contains("classic"), "{err}");
    }

    #[test]
    fn garden_credentials_are_bound_to_orgs_and_projects() {
        let c = ServerConfig::from_yaml(
            "gardenCredentials:\n  provider: /etc/garden/p\n  acme:\n    kubeconfig: /etc/garden/acme\n    \
             orgs: [acme]\n    projects: [acme-prod]\n",
        )
        .expect("parses");
        let provider = &c.garden_credentials["provider"];
        let acme = &c.garden_credentials["acme"];
        assert_eq!(acme.kubeconfig, "/etc/garden/acme");
        assert_eq!(provider.refusal("provider", "acme", "x", true), None);
        let r = provider.refusal("provider", "acme", "x", false).expect("refused");
        assert!(r.contains("only a provider admin"), "{r}");
        assert_eq!(acme.refusal("acme", "acme", "acme-prod", false), None);
        let r = acme
            .refusal("acme", "globex", "acme-prod", true)
            .expect("refused");
        assert!(r.contains("not bound to org globex"), "{r}");
        let r = acme
            .refusal("acme", "acme", "globex-prod", false)
            .expect("refused");
        assert!(r.contains("may not discover project globex-prod"), "{r}");
        let err = ServerConfig::from_yaml("gardenCredentials:\n  x: {kubeconfig: /p, org: [a]}\n")
            .expect_err("typo");
        assert!(err.to_string().contains("org"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let err = ServerConfig::from_yaml("api:\n  lisen: x\n").expect_err("typo");
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = ServerConfig::load(None, |k| (k == "PXB_FLEET_CONCURRENCY").then(|| "lots".into()))
            .expect_err("bad number");
        // The variable and the key are named, not only serde's type.
        assert!(
            err.to_string().contains("PXB_FLEET_CONCURRENCY")
                && err.to_string().contains("fleet.concurrency"),
            "{err}"
        );
        let err = ServerConfig::from_yaml("fleet: {concurrency: 0}")
            .and_then(|c| c.check())
            .expect_err("zero");
        assert!(err.to_string().contains("concurrency"), "{err}");
    }

    /// The error of `yaml` (a configuration file's text), parsed and checked.
    fn yaml_error(yaml: &str) -> String {
        match ServerConfig::from_yaml(yaml).and_then(|c| c.check()) {
            Ok(()) => panic!("{yaml:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// The error of loading the defaults with the environment `env`.
    fn env_error(env: &[(&str, &str)]) -> String {
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match ServerConfig::load(None, |k| env.get(k).cloned()) {
            Ok(c) => panic!("{env:?} was accepted: {:?}", c.telemetry),
            Err(e) => e.to_string(),
        }
    }

    /// The error of loading a configuration file holding `yaml`.
    fn file_error(yaml: &str) -> String {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("pxb-server.yaml");
        std::fs::write(&path, yaml).expect("write");
        match ServerConfig::load(Some(&path), |_| None) {
            Ok(c) => panic!("{yaml:?} was accepted: {:?}", c.telemetry),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_telemetry_values_are_clear_errors_naming_the_key() {
        let cases: &[(&str, &str)] = &[
            (
                "telemetry: {backupInfoRetentionHours: 0}",
                "telemetry.backupInfoRetentionHours",
            ),
            (
                "telemetry: {backupInfoRetentionHours: 9000}",
                "telemetry.backupInfoRetentionHours",
            ),
            (
                "telemetry: {backupInfoMaxSeries: 10000001}",
                "telemetry.backupInfoMaxSeries",
            ),
            (
                "telemetry: {support: {uploadIntervalSecs: 5}}",
                "telemetry.support.uploadIntervalSecs",
            ),
            (
                "telemetry: {support: {uploadIntervalSecs: 86401}}",
                "telemetry.support.uploadIntervalSecs",
            ),
            (
                "telemetry: {support: {uploadIntervalSecs: 18446744073709551615}}",
                "telemetry.support.uploadIntervalSecs",
            ),
            (
                "telemetry: {support: {endpoint: 'http://telemetry.test'}}",
                "telemetry.support.endpoint",
            ),
            (
                "telemetry: {support: {endpoint: 'https://'}}",
                "telemetry.support.endpoint",
            ),
            (
                "telemetry: {support: {endpoint: 'https://a b'}}",
                "telemetry.support.endpoint",
            ),
            (
                "telemetry: {support: {configMap: ''}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {configMap: '/x'}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {configMap: 'x/'}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {configMap: 'a/b/c'}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {configMap: 'UPPER'}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {configMap: 'ns.with.dots/name'}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {configMap: ' pxb-telemetry-config'}}",
                "telemetry.support.configMap",
            ),
            (
                "telemetry: {support: {enabledFile: ' /etc/pxb/enabled'}}",
                "telemetry.support.enabledFile",
            ),
            (
                "telemetry: {support: {enabledFile: \"/etc/pxb/en\\nabled\"}}",
                "telemetry.support.enabledFile",
            ),
            (
                "telemetry: {support: {enabledFile: \"/etc/pxb/en\\0abled\"}}",
                "telemetry.support.enabledFile",
            ),
            (
                "telemetry: {support: {customers: {'': C-1}}}",
                "telemetry.support.customers",
            ),
            (
                "telemetry: {support: {customers: {acme: ''}}}",
                "telemetry.support.customers",
            ),
            (
                "telemetry: {support: {customers: {acme: '  '}}}",
                "telemetry.support.customers",
            ),
            (
                "telemetry: {support: {customers: {'Acme Corp': C-1}}}",
                "telemetry.support.customers",
            ),
            (
                "telemetry: {support: {customers: {acme: \"C-1\\nX-Forged: 1\"}}}",
                "telemetry.support.customers",
            ),
        ];
        for (yaml, key) in cases {
            let err = yaml_error(yaml);
            assert!(err.contains(key), "{yaml}: {err}");
        }
        // A negative number, from the file and from the environment, names the key (the file's
        // error quotes the line and points at the value; the environment's names the variable
        // and the key), not only serde's type.
        for (yaml, key) in [
            (
                "telemetry:\n  backupInfoRetentionHours: -1\n",
                "backupInfoRetentionHours: -1",
            ),
            (
                "telemetry:\n  backupInfoMaxSeries: -1\n",
                "backupInfoMaxSeries: -1",
            ),
            (
                "telemetry:\n  support:\n    uploadIntervalSecs: -1\n",
                "uploadIntervalSecs: -1",
            ),
        ] {
            let err = file_error(yaml);
            assert!(err.contains(key), "{yaml}: {err}");
        }
        for (var, key) in [
            (
                "PXB_TELEMETRY_BACKUP_INFO_RETENTION_HOURS",
                "telemetry.backupInfoRetentionHours",
            ),
            (
                "PXB_TELEMETRY_BACKUP_INFO_MAX_SERIES",
                "telemetry.backupInfoMaxSeries",
            ),
            (
                "PXB_TELEMETRY_SUPPORT_UPLOAD_INTERVAL_SECS",
                "telemetry.support.uploadIntervalSecs",
            ),
        ] {
            let err = env_error(&[(var, "-1")]);
            assert!(err.contains(var) && err.contains(key), "{var}=-1: {err}");
        }
        // The variable at fault is named when several are set.
        let err = env_error(&[
            ("PXB_API_LISTEN", "127.0.0.1:1"),
            ("PXB_TELEMETRY_SUPPORT_UPLOAD_INTERVAL_SECS", "many"),
            ("PXB_TELEMETRY_BACKUP_INFO_MAX_SERIES", "5"),
        ]);
        assert!(
            err.contains("PXB_TELEMETRY_SUPPORT_UPLOAD_INTERVAL_SECS"),
            "{err}"
        );
        assert!(!err.contains("PXB_API_LISTEN"), "{err}");
        // Out of range through the environment: the check names the key.
        for (var, value, key) in [
            (
                "PXB_TELEMETRY_BACKUP_INFO_RETENTION_HOURS",
                "0",
                "telemetry.backupInfoRetentionHours",
            ),
            (
                "PXB_TELEMETRY_SUPPORT_UPLOAD_INTERVAL_SECS",
                "18446744073709551615",
                "telemetry.support.uploadIntervalSecs",
            ),
            (
                "PXB_TELEMETRY_SUPPORT_CONFIG_MAP",
                "a/b/c",
                "telemetry.support.configMap",
            ),
        ] {
            let err = env_error(&[(var, value)]);
            assert!(err.contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn good_telemetry_values_are_accepted() {
        let c = ServerConfig::from_yaml(
            "telemetry:\n  backupInfoRetentionHours: 8784\n  backupInfoMaxSeries: 10000000\n  support:\n    \
             endpoint: https://telemetry.test:8443\n    configMap: ops/pxb-telemetry.config\n    \
             enabledFile: /etc/pxb/telemetry/enabled\n    uploadIntervalSecs: 86400\n    \
             customers: {acme: C-10042, globex-eu: 'Globex GmbH'}\n",
        )
        .expect("parses");
        c.check().expect("valid");
        for (retention, series, interval, config_map) in
            [(1, 0, 10, "pxb-telemetry-config"), (24, 10_000, 300, "a/b")]
        {
            let mut c = ServerConfig::default();
            c.telemetry.backup_info_retention_hours = retention;
            c.telemetry.backup_info_max_series = series;
            c.telemetry.support.upload_interval_secs = interval;
            c.telemetry.support.config_map = config_map.into();
            c.check().expect("valid");
        }
        let env = [("PXB_TELEMETRY_SUPPORT_UPLOAD_INTERVAL_SECS", "60")];
        let c = ServerConfig::load(None, |k| {
            env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        })
        .expect("loads");
        assert_eq!(c.telemetry.support.upload_interval_secs, 60);
    }
}
