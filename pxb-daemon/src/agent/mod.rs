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
