//! `pxb-agent`: the per-cluster executor. It reconciles pxb's custom resources in its namespace
//! (see [`crate::crd`]) and reaches each backup location with the cluster's own identity.
//!
//! So far: [`AgentConfig`], the location controller ([`locations`]: validation, sync into an
//! in-memory catalog, verify), the backup controller ([`backups`]: resources and volume data
//! through the [`volumes::VolumeDriver`] seam), with heartbeats while anything runs.

pub mod api;
pub mod backups;
mod config;
pub mod locations;
pub mod restores;
pub mod volumes;

pub use config::AgentConfig;

/// A running agent: the controllers and the read API (what `pxb-agent` runs).
#[derive(Debug)]
pub struct Agent {
    /// Where the read API listens.
    pub api_addr: std::net::SocketAddr,
    state: std::sync::Arc<api::ApiState>,
    controllers: Vec<tokio::task::JoinHandle<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Starts the controllers and the read API for this cluster.
    pub async fn start(client: kube::Client, config: AgentConfig) -> pxb_core::Result<Self> {
        let listen = config.listen;
        let token = api::ensure_token(&client, &config.namespace).await?;
        let driver = std::sync::Arc::new(volumes::LocalPathDriver::new(
            client.clone(),
            config.restore_root.clone(),
        ));
        let lctx = locations::Context::new(client, config);
        let bctx = backups::Context::new(lctx.clone(), driver);
        let state = std::sync::Arc::new(api::ApiState {
            backups: bctx.clone(),
            ready: false.into(),
            token: Some(token),
        });
        let (api_addr, server) = api::bind(listen, state.clone())
            .await
            .map_err(|e| pxb_core::Error::io(format!("listening on {listen}"), e))?;
        let controllers = vec![
            locations::spawn(lctx),
            backups::spawn(bctx.clone()),
            restores::spawn(bctx),
        ];
        state.ready.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(%api_addr, version = api::VERSION, "pxb-agent started");
        Ok(Self {
            api_addr,
            state,
            controllers,
            server,
        })
    }

    /// Stops taking work, records in each running operation's status that it was interrupted
    /// (the next agent resumes it), and stops.
    pub async fn shutdown(self) {
        self.state
            .ready
            .store(false, std::sync::atomic::Ordering::Relaxed);
        for c in &self.controllers {
            c.abort();
        }
        let bctx = &self.state.backups;
        let api: kube::Api<crate::crd::ApplicationBackup> =
            kube::Api::namespaced(bctx.locations.client.clone(), &bctx.locations.config.namespace);
        for op in bctx.operations().into_iter().filter(|o| o.kind == "backup") {
            let patch = serde_json::json!({"status": {"heartbeat": now_rfc3339(),
                "message": "interrupted by an agent shutdown; the next agent resumes it"}});
            let _ = api
                .patch_status(
                    &op.name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await;
        }
        self.server.abort();
        tracing::info!("pxb-agent stopped");
    }
}

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

/// Current UTC time as Kubernetes formats it (`2026-01-01T10:10:00Z`).
pub fn now_rfc3339() -> String {
    pxb_core::clock::rfc3339(std::time::SystemTime::now())
}

/// Whether `s` is a valid namespace name (an RFC 1123 label).
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Parses a Kubernetes timestamp.
pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// `v` with an explicit `null` for each of `keys` it lacks, so a merge patch clears old values.
pub(crate) fn with_nulls(v: impl serde::Serialize, keys: &[&str]) -> Value {
    let mut v = serde_json::to_value(v).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        for k in keys {
            m.entry(*k).or_insert(Value::Null);
        }
    }
    v
}

/// Runs `op`, calling `beat` every `every` until it finishes.
pub(crate) async fn with_heartbeat<T, B: Future<Output = ()>>(
    op: impl Future<Output = T>,
    every: Duration,
    beat: impl Fn() -> B,
) -> T {
    tokio::pin!(op);
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            r = &mut op => return r,
            _ = tick.tick() => beat().await,
        }
    }
}

/// Runs a controller over `api` with `reconcile`, retrying a failed reconcile after 10 s (with a
/// warning naming `what`), until the returned task is aborted.
pub(crate) fn spawn_controller<K, C, F>(
    what: &'static str,
    api: kube::Api<K>,
    reconcile: impl FnMut(std::sync::Arc<K>, std::sync::Arc<C>) -> F + Send + 'static,
    ctx: std::sync::Arc<C>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    C: Send + Sync + 'static,
    F: Future<Output = Result<kube::runtime::controller::Action, locations::ReconcileError>> + Send + 'static,
{
    use futures::StreamExt as _;
    use kube::ResourceExt as _;
    let error_policy = move |obj: std::sync::Arc<K>,
                             err: &locations::ReconcileError,
                             _: std::sync::Arc<C>| {
        tracing::warn!(object = %obj.name_any(), error = %err, "{what} reconcile failed; retrying in 10 s");
        kube::runtime::controller::Action::requeue(Duration::from_secs(10))
    };
    tokio::spawn(async move {
        kube::runtime::Controller::new(api, kube::runtime::watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "{what} controller");
                }
            })
            .await;
    })
}

/// Merges `status` into the status subresource of `name` in the agent's namespace.
pub(crate) async fn merge_status<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    status: Value,
) -> Result<(), locations::ReconcileError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), namespace);
    let patch = kube::api::Patch::Merge(serde_json::json!({ "status": status }));
    api.patch_status(name, &kube::api::PatchParams::default(), &patch)
        .await
        .map(|_| ())
        .map_err(|e| {
            locations::ReconcileError::new(format!("writing the status of {} {name}: {e}", K::kind(&())))
        })
}
