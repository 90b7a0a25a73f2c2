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
        let driver = std::sync::Arc::new(volumes::LocalPathDriver::new(
            client.clone(),
            config.restore_root.clone(),
        ));
        let lctx = locations::Context::new(client, config);
        let bctx = backups::Context::new(lctx.clone(), driver);
        let state = std::sync::Arc::new(api::ApiState {
            backups: bctx.clone(),
            ready: false.into(),
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
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
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
