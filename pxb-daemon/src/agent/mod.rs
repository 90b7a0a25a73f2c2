//! `pxb-agent`: the per-cluster executor. It reconciles pxb's custom resources in its namespace
//! (see [`crate::crd`]) and reaches each backup location with the cluster's own identity.
//!
//! So far: [`AgentConfig`] and the location controller ([`locations`]), which builds a store
//! from each `BackupLocation`, validates it on request and at an interval, and reports the result
//! in the object's status.

mod config;
pub mod locations;

pub use config::AgentConfig;

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
