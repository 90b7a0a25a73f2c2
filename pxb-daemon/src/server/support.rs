//! The opt-in support channel, wired into the server ([`pxb_telemetry::support`]).
//!
//! - **Off until switched on at run time**: by the `enabled` key of ConfigMap
//!   `telemetry.support.configMap` (default `pxb-telemetry-config` in the server's namespace),
//!   watched through the Kubernetes API when the server runs in a cluster, or by the file
//!   `telemetry.support.enabledFile` (`true`/`false`, read every two seconds). A missing
//!   ConfigMap, key or file, or any other value, is off. Without an endpoint there is no channel.
//! - **What it sends** ([`ServerSources`]): counts of the server's own state (clusters by state,
//!   orgs, visits, active operations) and the ids of onboarded clusters with their org id; the
//!   orgs' customer ids from `telemetry.support.customers` at registration; recent redacted log
//!   records (WARN and above of any target, INFO of pxb) from
//!   [`pxb_telemetry::support::LogBuffer::global`]: pxb's own with their message and the values
//!   only of fields that hold counts, codes and states ([`pxb_telemetry::support::SENT_FIELDS`]);
//!   other targets' (libraries such as the Kubernetes client) as `[message withheld]` with field
//!   names only. The names of clusters, namespaces, backups, locations and objects in other
//!   fields stay home (`name=…`).
//! - **Its identity** ([`CatalogCredentials`]): the installation id is made once and kept in the
//!   catalog ([`SupportInstallation`]); the client certificate and key are kept there sealed with
//!   the server's secrets key. Without a key they stay in memory, and a restarted server
//!   registers again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use pxb_core::catalog::records::{ClusterState, SupportInstallation};
use pxb_core::{Error, Result};
use pxb_telemetry::support::{
    ClientIdentity, ClusterRef, CredentialStore, MetricPoint, OrgMapping, OtlpExporter, StoreError,
    SupportChannel, SupportHandle, SupportSources, TelemetryExporter,
};
use tokio::sync::watch;

use super::config::SupportConfig;
use super::state::{OrgState, Server};

/// The sealing context of the client identity.
const SEAL_CONTEXT: &str = "pxb-support-identity";

/// How often the `enabledFile` is read.
const FILE_POLL: Duration = Duration::from_secs(2);

/// What switches the channel on and off.
#[derive(Clone)]
pub enum SupportToggle {
    /// The `enabled` key of this ConfigMap, watched with this client.
    ConfigMap {
        /// A client of the cluster the server runs in.
        client: kube::Client,
        /// The ConfigMap's namespace.
        namespace: String,
        /// The ConfigMap's name.
        name: String,
    },
    /// A file holding `true` or `false`.
    File(std::path::PathBuf),
}

impl std::fmt::Debug for SupportToggle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SupportToggle::ConfigMap { namespace, name, .. } => write!(f, "ConfigMap {namespace}/{name}"),
            SupportToggle::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

/// The ConfigMap's namespace and name from `telemetry.support.configMap` (`name` or
/// `namespace/name`); the namespace defaults to the server's own.
pub(crate) fn config_map_of(config: &SupportConfig, own_namespace: Option<String>) -> (String, String) {
    match config.config_map.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (
            own_namespace.unwrap_or_else(|| "pxb-system".into()),
            config.config_map.clone(),
        ),
    }
}

/// The namespace the server runs in: `POD_NAMESPACE`, else the service account's.
fn own_namespace() -> Option<String> {
    std::env::var("POD_NAMESPACE").ok().or_else(|| {
        std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            .ok()
            .map(|s| s.trim().to_owned())
    })
}

/// The real exporter for `config`, or `None` when no endpoint is configured.
pub(crate) fn exporter_of(config: &SupportConfig) -> Result<Option<Arc<dyn TelemetryExporter>>> {
    if config.endpoint.is_empty() {
        return Ok(None);
    }
    let mut b = OtlpExporter::builder(&config.endpoint).version(pxb_core::api::agent::VERSION);
    if !config.ca_file.is_empty() {
        let pem = std::fs::read_to_string(&config.ca_file)
            .map_err(|e| Error::io(format!("reading telemetry.support.caFile {}", config.ca_file), e))?;
        b = b.ca_pem(pem);
    }
    if !config.registration_token_file.is_empty() {
        let token = std::fs::read_to_string(&config.registration_token_file).map_err(|e| {
            Error::io(
                format!(
                    "reading telemetry.support.registrationTokenFile {}",
                    config.registration_token_file
                ),
                e,
            )
        })?;
        b = b.registration_token(token.trim());
    }
    let e = b
        .build()
        .map_err(|e| Error::invalid(format!("telemetry.support: {e}")))?;
    Ok(Some(Arc::new(e)))
}

/// The toggle `config` asks for, when none was given: the file, else the ConfigMap through the
/// in-cluster client (made on the task, as it may read files); `None` outside a cluster.
fn default_toggle(config: &SupportConfig) -> Option<SupportToggle> {
    if !config.enabled_file.is_empty() {
        return Some(SupportToggle::File(config.enabled_file.clone().into()));
    }
    None
}

/// Follows `toggle` into `tx` until the sender's receivers are gone.
async fn follow(toggle: Option<SupportToggle>, config: SupportConfig, tx: watch::Sender<bool>) {
    let toggle = match toggle {
        Some(t) => t,
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            match kube::Client::try_default().await {
                Ok(client) => {
                    let (namespace, name) = config_map_of(&config, own_namespace());
                    SupportToggle::ConfigMap {
                        client,
                        namespace,
                        name,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "support channel: no client of this cluster to watch its ConfigMap; it stays off");
                    return;
                }
            }
        }
        None => {
            tracing::info!(
                "support channel: not in a cluster and no telemetry.support.enabledFile; it stays off"
            );
            return;
        }
    };
    tracing::info!(toggle = ?toggle, "support channel: off until switched on");
    match toggle {
        SupportToggle::File(path) => loop {
            let on = std::fs::read_to_string(&path).is_ok_and(|s| s.trim().eq_ignore_ascii_case("true"));
            set(&tx, on);
            tokio::select! {
                _ = tokio::time::sleep(FILE_POLL) => {}
                _ = tx.closed() => return,
            }
        },
        SupportToggle::ConfigMap {
            client,
            namespace,
            name,
        } => {
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
            let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut events = std::pin::pin!(watcher::watcher(api, cfg));
            // The set seen during a (re)list: a ConfigMap deleted while the watch was down is off.
            let mut listed = false;
            loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = tx.closed() => return,
                };
                match event {
                    None => return,
                    Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                        listed = true;
                        set(&tx, enabled(&cm));
                    }
                    Some(Ok(watcher::Event::Delete(_))) => set(&tx, false),
                    Some(Ok(watcher::Event::Init)) => listed = false,
                    Some(Ok(watcher::Event::InitDone)) => {
                        if !listed {
                            set(&tx, false);
                        }
                    }
                    Some(Err(e)) => {
                        // Keeps the last state; the watcher starts again after a pause.
                        tracing::warn!(configmap = %format!("{namespace}/{name}"), error = %e, "support channel: cannot watch its ConfigMap");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        }
    }
}

fn enabled(cm: &ConfigMap) -> bool {
    cm.data
        .as_ref()
        .and_then(|d| d.get("enabled"))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn set(tx: &watch::Sender<bool>, on: bool) {
    tx.send_if_modified(|v| {
        let changed = *v != on;
        if changed {
            tracing::info!(enabled = on, "support channel switched");
        }
        *v = on;
        changed
    });
}

/// What the channel reads of the server, for installation `installation_id`.
struct ServerSources(Server, String);

/// What is sent of a cluster's id: the id itself when it is a UUID (a Gardener shoot's uid),
/// else (an imported cluster's `imported-<name>`, a shoot without a uid) `h-` and 32 hex digits
/// of a BLAKE3 hash of the installation id and the cluster id, so no name leaves the server.
/// (Whoever knows the installation id and guesses a name can confirm the guess.)
fn sent_cluster_id(installation_id: &str, id: &str) -> String {
    let uuid = id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    if uuid {
        id.to_owned()
    } else {
        let h = pxb_core::backup::ChunkId::of(format!("{installation_id}\n{id}").as_bytes()).to_hex();
        format!("h-{}", &h[..32])
    }
}

#[async_trait]
impl SupportSources for ServerSources {
    async fn metrics(&self) -> Vec<MetricPoint> {
        let s = &self.0;
        let snap = s.snapshot();
        let mut out: Vec<MetricPoint> = snap
            .total_counts()
            .into_iter()
            .map(|(state, n)| {
                MetricPoint::gauge("pxb.server.clusters", n as f64).with_attribute("state", state)
            })
            .collect();
        let orgs = s.orgs();
        let degraded = orgs
            .values()
            .filter(|o| matches!(o, OrgState::Degraded { .. }))
            .count();
        out.push(MetricPoint::gauge("pxb.server.orgs", orgs.len() as f64));
        out.push(MetricPoint::gauge("pxb.server.orgs.degraded", degraded as f64));
        let m = s.metrics();
        out.push(
            MetricPoint::counter("pxb.server.visits", m.visits_ok.load(Ordering::Relaxed) as f64)
                .with_attribute("result", "ok"),
        );
        out.push(
            MetricPoint::counter(
                "pxb.server.visits",
                m.visits_failed.load(Ordering::Relaxed) as f64,
            )
            .with_attribute("result", "failed"),
        );
        let (backups, restores) = s.active_operations();
        out.push(
            MetricPoint::gauge("pxb.server.operations.active", backups as f64)
                .with_attribute("kind", "backup"),
        );
        out.push(
            MetricPoint::gauge("pxb.server.operations.active", restores as f64)
                .with_attribute("kind", "restore"),
        );
        out
    }

    async fn clusters(&self) -> Vec<ClusterRef> {
        let st = self.0.inner.lock();
        st.clusters
            .values()
            .filter(|t| t.record.retired_at.is_none() && t.record.status.state != ClusterState::Retired)
            .map(|t| ClusterRef {
                uuid: sent_cluster_id(&self.1, &t.record.id),
                org: t.record.org.clone(),
            })
            .collect()
    }

    async fn orgs(&self) -> Vec<OrgMapping> {
        let customers = &self.0.inner.config.telemetry.support.customers;
        self.0
            .orgs()
            .into_keys()
            .map(|org| OrgMapping {
                customer: customers.get(&org).cloned().unwrap_or_default(),
                org,
            })
            .collect()
    }
}

/// The client identity in the catalog, sealed; in memory only without a sealer.
struct CatalogCredentials {
    server: Server,
    memory: std::sync::Mutex<Option<ClientIdentity>>,
}

#[async_trait]
impl CredentialStore for CatalogCredentials {
    async fn load(&self) -> std::result::Result<Option<ClientIdentity>, StoreError> {
        if let Some(id) = self.memory.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(Some(id));
        }
        let Some(sealer) = &self.server.inner.sealer else {
            return Ok(None);
        };
        let rec = self
            .server
            .catalog()
            .find::<SupportInstallation>("", SupportInstallation::ID)
            .await?;
        let Some(sealed) = rec.and_then(|r| r.value.identity) else {
            return Ok(None);
        };
        let plain = sealer.open(&sealed, SEAL_CONTEXT)?;
        Ok(Some(serde_json::from_slice(&plain)?))
    }

    async fn save(&self, identity: &ClientIdentity) -> std::result::Result<(), StoreError> {
        *self.memory.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity.clone());
        let Some(sealer) = &self.server.inner.sealer else {
            tracing::warn!(
                "support channel: no secrets key, so its client certificate is kept in memory only (a restart registers again)"
            );
            return Ok(());
        };
        let sealed = sealer.seal(&serde_json::to_vec(identity)?, SEAL_CONTEXT)?;
        let c = self.server.catalog();
        let mut rec = c
            .find::<SupportInstallation>("", SupportInstallation::ID)
            .await?
            .map(|v| v.value)
            .unwrap_or_else(|| installation(identity.installation_id.clone()));
        rec.identity = Some(sealed);
        c.put(&rec, None).await?;
        Ok(())
    }
}

fn installation(installation_id: String) -> SupportInstallation {
    SupportInstallation {
        org: String::new(),
        id: SupportInstallation::ID.into(),
        installation_id,
        identity: None,
    }
}

/// The support channel of a running server, and what switches it.
#[derive(Debug)]
pub struct SupportRunning {
    handle: SupportHandle,
    toggle: tokio::task::JoinHandle<()>,
}

impl SupportRunning {
    /// The channel's state now (on or off, registered, uploads, errors).
    pub fn status(&self) -> pxb_telemetry::support::SupportStatus {
        self.handle.status()
    }

    /// Stops the channel and its toggle.
    pub async fn stop(self) {
        self.toggle.abort();
        self.handle.stop().await;
    }
}

impl Server {
    /// This installation's id, made and stored on first use.
    pub(crate) async fn installation_id(&self) -> Result<String> {
        let c = self.catalog();
        if let Some(v) = c.find::<SupportInstallation>("", SupportInstallation::ID).await? {
            return Ok(v.value.installation_id);
        }
        let rec = installation(pxb_telemetry::support::new_installation_id());
        match c.put(&rec, Some(0)).await {
            Ok(_) => Ok(rec.installation_id),
            // Another start made it meanwhile: take that one.
            Err(Error::Precondition { .. } | Error::AlreadyExists { .. }) => Ok(c
                .get::<SupportInstallation>("", SupportInstallation::ID)
                .await?
                .value
                .installation_id),
            Err(e) => Err(e),
        }
    }

    /// Starts the support channel of installation `installation_id` (off until `toggle`, or
    /// the configured one, switches it on) with `exporter`, on the current runtime.
    pub(crate) fn start_support(
        &self,
        installation_id: String,
        exporter: Arc<dyn TelemetryExporter>,
        toggle: Option<SupportToggle>,
    ) -> SupportRunning {
        let config = self.inner.config.telemetry.support.clone();
        let (tx, rx) = watch::channel(false);
        let toggle = toggle.or_else(|| default_toggle(&config));
        let interval = Duration::from_secs(config.upload_interval_secs);
        let toggle_task = tokio::spawn(follow(toggle, config, tx));
        let handle = SupportChannel::builder(
            installation_id.clone(),
            exporter,
            Arc::new(ServerSources(self.clone(), installation_id.clone())),
            Arc::new(CatalogCredentials {
                server: self.clone(),
                memory: std::sync::Mutex::new(None),
            }),
            rx,
        )
        .interval(interval)
        .version(pxb_core::api::agent::VERSION)
        .spawn();
        let _ = self.inner.support_status.set(handle.subscribe());
        SupportRunning {
            handle,
            toggle: toggle_task,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_map_defaults_to_the_servers_namespace() {
        let mut c = SupportConfig::default();
        assert_eq!(
            config_map_of(&c, Some("pxb".into())),
            ("pxb".into(), "pxb-telemetry-config".into())
        );
        assert_eq!(
            config_map_of(&c, None),
            ("pxb-system".into(), "pxb-telemetry-config".into())
        );
        c.config_map = "ops/support".into();
        assert_eq!(
            config_map_of(&c, Some("pxb".into())),
            ("ops".into(), "support".into())
        );
    }

    #[test]
    fn cluster_ids_leave_as_uuids_or_as_hashes() {
        let uuid = "6f1c2a3b-9d8e-4f70-a1b2-c3d4e5f60718";
        assert_eq!(sent_cluster_id("inst", uuid), uuid);
        let h = sent_cluster_id("inst", "imported-prod-eu");
        assert!(h.starts_with("h-") && h.len() == 34 && !h.contains("prod"), "{h}");
        assert_eq!(h, sent_cluster_id("inst", "imported-prod-eu"), "stable");
        assert_ne!(
            h,
            sent_cluster_id("other", "imported-prod-eu"),
            "per installation"
        );
        assert_ne!(
            sent_cluster_id("inst", "garden-acme/shoot-1"),
            "garden-acme/shoot-1"
        );
    }

    #[test]
    fn only_true_enables() {
        let cm = |v: Option<&str>| ConfigMap {
            data: v.map(|v| [("enabled".to_owned(), v.to_owned())].into_iter().collect()),
            ..ConfigMap::default()
        };
        assert!(enabled(&cm(Some("true"))));
        assert!(enabled(&cm(Some(" True\n"))));
        for off in [None, Some("false"), Some("yes"), Some("1"), Some("")] {
            assert!(!enabled(&cm(off)), "{off:?}");
        }
    }
}
