//! What probes and monitoring read, without an org: `/healthz`, `/readyz` and `/metrics`
//! (Prometheus text).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;

use pxb_core::api::rest::Readiness;

use crate::server::auth::Caller;
use crate::server::state::{OrgState, Server};

pub(crate) async fn healthz() -> &'static str {
    "ok"
}

pub(crate) async fn readyz(State(s): State<Server>, mut parts: Parts) -> Json<Readiness> {
    let degraded: BTreeMap<String, String> = s
        .orgs()
        .into_iter()
        .filter_map(|(id, st)| match st {
            OrgState::Degraded { reason } => Some((id, reason)),
            OrgState::Ready(_) => None,
        })
        .collect();
    // Org ids and reasons are not for anonymous callers (probes, the whole network).
    let admin = parts.headers.contains_key(header::AUTHORIZATION)
        && Caller::from_request_parts(&mut parts, &s)
            .await
            .is_ok_and(|c| c.provider_admin);
    Json(Readiness {
        ready: true,
        degraded_org_count: degraded.len(),
        degraded_orgs: admin.then_some(degraded),
    })
}

pub(crate) async fn metrics(State(s): State<Server>) -> impl IntoResponse {
    let snap = s.snapshot();
    let m = s.metrics();
    let mut out = String::new();
    out += "# HELP pxb_server_info The server's version.\n# TYPE pxb_server_info gauge\n";
    out += &format!(
        "pxb_server_info{{version=\"{}\"}} 1\n",
        pxb_core::api::agent::VERSION
    );
    out += "# HELP pxb_server_clusters Clusters by state.\n# TYPE pxb_server_clusters gauge\n";
    for (state, n) in snap.total_counts() {
        out += &format!("pxb_server_clusters{{state=\"{state}\"}} {n}\n");
    }
    let orgs = s.orgs();
    let degraded = orgs
        .values()
        .filter(|o| matches!(o, OrgState::Degraded { .. }))
        .count();
    out += "# HELP pxb_server_orgs Orgs by state.\n# TYPE pxb_server_orgs gauge\n";
    out += &format!("pxb_server_orgs{{state=\"ready\"}} {}\n", orgs.len() - degraded);
    out += &format!("pxb_server_orgs{{state=\"degraded\"}} {degraded}\n");
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        *out += &format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
    };
    out +=
        "# HELP pxb_server_visits_total Cluster visits by result.\n# TYPE pxb_server_visits_total counter\n";
    out += &format!(
        "pxb_server_visits_total{{result=\"ok\"}} {}\n",
        m.visits_ok.load(Ordering::Relaxed)
    );
    out += &format!(
        "pxb_server_visits_total{{result=\"failed\"}} {}\n",
        m.visits_failed.load(Ordering::Relaxed)
    );
    counter(
        &mut out,
        "pxb_server_orphans_deleted_total",
        "Orphaned objects deleted from clusters.",
        m.orphans_deleted.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_crs_written_total",
        "BackupLocation CRs created or updated.",
        m.crs_written.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_requests_stalled_total",
        "Requests that lost their heartbeat lease.",
        m.stalled.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_backups_imported_total",
        "Backups found by syncs and imported into the catalog.",
        m.imported.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "pxb_server_schedule_runs_total",
        "Schedule slots fired.",
        m.schedule_runs.load(Ordering::Relaxed),
    );
    let (backups, restores) = s.active_operations();
    out += "# HELP pxb_server_operations_active Backups and restores the server drives now.\n";
    out += "# TYPE pxb_server_operations_active gauge\n";
    out += &format!("pxb_server_operations_active{{kind=\"backup\"}} {backups}\n");
    out += &format!("pxb_server_operations_active{{kind=\"restore\"}} {restores}\n");
    counter(
        &mut out,
        "pxb_server_snapshots_total",
        "Fleet status snapshots built.",
        m.snapshots.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
