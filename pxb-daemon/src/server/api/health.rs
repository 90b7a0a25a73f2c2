//! What probes and monitoring read, without an org: `/healthz`, `/readyz` and `/metrics`
//! (Prometheus metrics through [`pxb_telemetry`]). Anonymous callers get no tenant names from
//! either: `/readyz` lists degraded orgs to provider admins only, and `/metrics` carries
//! tenant-labelled series for the orgs the bearer token's caller sees ([`MetricsScope`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::IntoResponse;

use pxb_core::api::rest::Readiness;
use pxb_telemetry::prometheus_client::metrics::counter::Counter;
use pxb_telemetry::prometheus_client::metrics::family::Family;
use pxb_telemetry::prometheus_client::metrics::gauge::Gauge;
use pxb_telemetry::prometheus_client::metrics::info::Info;
use pxb_telemetry::prometheus_client::registry::{Registry, Unit};

use crate::server::api::errors::ApiError;
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

/// Whose tenant-labelled series a scrape carries (`pxb_server_org_clusters`,
/// `pxb_server_discovery_shoots`, `pxb_server_backup_info`: they name orgs, discoveries,
/// clusters, locations and backups). Every other series is fleet-wide and has no tenant name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MetricsScope {
    /// No bearer token (probes, anyone on the network): fleet-wide series only.
    Fleet,
    /// An org's member: the series of the orgs the caller has a role in.
    Orgs(BTreeSet<String>),
    /// A provider admin: every org's series.
    All,
}

impl MetricsScope {
    /// Whether the scrape carries the series of `org`.
    pub(crate) fn sees(&self, org: &str) -> bool {
        match self {
            MetricsScope::Fleet => false,
            MetricsScope::Orgs(orgs) => orgs.contains(org),
            MetricsScope::All => true,
        }
    }

    /// The scope of `caller`.
    fn of(caller: &Caller, s: &Server) -> Self {
        if caller.provider_admin {
            return MetricsScope::All;
        }
        MetricsScope::Orgs(
            s.orgs()
                .into_iter()
                .filter_map(|(id, st)| match st {
                    OrgState::Ready(org) => caller.role_in(&org).map(|_| id),
                    OrgState::Degraded { .. } => None,
                })
                .collect(),
        )
    }
}

/// `/metrics`: a registry built from the server's state at each scrape, in the format the
/// `Accept` header asks for ([`pxb_telemetry::metrics::encode`]). Without a bearer token it
/// carries the fleet-wide series only; a token adds the series of the orgs its caller sees
/// ([`MetricsScope`]); a token the server refuses gets `401`, not a silently smaller scrape.
pub(crate) async fn metrics(
    State(s): State<Server>,
    mut parts: Parts,
) -> Result<impl IntoResponse, ApiError> {
    let scope = if parts.headers.contains_key(header::AUTHORIZATION) {
        MetricsScope::of(&Caller::from_request_parts(&mut parts, &s).await?, &s)
    } else {
        MetricsScope::Fleet
    };
    let accept = parts.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let e = pxb_telemetry::metrics::encode(&registry(&s, &scope), accept);
    Ok(([(header::CONTENT_TYPE, e.content_type)], e.body))
}

/// `pxb_server_replica_active`: 1 on the replica that holds the lease, 0 on a standby (whose
/// `/metrics` has only this and `pxb_server_info`: the fleet's series come from the active
/// replica alone, so scraping every pod counts nothing twice).
pub(crate) const REPLICA_ACTIVE: &str = "pxb_server_replica_active";
/// Its help text.
pub(crate) const REPLICA_ACTIVE_HELP: &str = "Whether this replica holds the lease (1) or is a standby (0); the fleet's series come from the active replica";

/// A standby's whole `/metrics`: its version and `pxb_server_replica_active 0`.
pub(crate) fn standby_metrics(accept: Option<&str>) -> pxb_telemetry::metrics::Exposition {
    let mut r = Registry::default();
    r.register(
        "pxb_server",
        "The server's version",
        Info::new(vec![("version", pxb_core::api::agent::VERSION)]),
    );
    r.register(REPLICA_ACTIVE, REPLICA_ACTIVE_HELP, Gauge::<i64>::default());
    pxb_telemetry::metrics::encode(&r, accept)
}

/// One label with a fixed value.
type Label = [(&'static str, &'static str); 1];

/// Two labels with values from the state.
type Labels2 = [(&'static str, String); 2];

/// A counter family `{result="ok"|"failed"}`.
fn results(ok: u64, failed: u64) -> Family<Label, Counter> {
    let f = Family::<Label, Counter>::default();
    f.get_or_create(&[("result", "ok")]).inc_by(ok);
    f.get_or_create(&[("result", "failed")]).inc_by(failed);
    f
}

/// A count as a gauge value.
fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

fn counter(v: &AtomicU64) -> Counter {
    let c = Counter::default();
    c.inc_by(v.load(Ordering::Relaxed));
    c
}

/// The server's series, from its state now, with the tenant-labelled ones of `scope`.
fn registry(s: &Server, scope: &MetricsScope) -> Registry {
    let snap = s.snapshot();
    let m = s.metrics();
    let mut r = Registry::default();
    r.register(
        "pxb_server",
        "The server's version",
        Info::new(vec![("version", pxb_core::api::agent::VERSION)]),
    );
    let clusters = Family::<Label, Gauge>::default();
    for (state, n) in snap.total_counts() {
        clusters.get_or_create(&[("state", state)]).set(int(n));
    }
    r.register("pxb_server_clusters", "Clusters by state", clusters);
    if s.is_replica() {
        let active = Gauge::<i64>::default();
        active.set(i64::from(s.may_act()));
        r.register(REPLICA_ACTIVE, REPLICA_ACTIVE_HELP, active);
    }
    let orgs = s.orgs();
    // Every org, with or without clusters, and every state: a series is never missing.
    let per_org = Family::<Labels2, Gauge>::default();
    let names: BTreeSet<&String> = orgs
        .keys()
        .chain(snap.orgs.keys())
        .filter(|o| scope.sees(o))
        .collect();
    for org in names {
        for (state, n) in snap.counts(std::slice::from_ref(org)) {
            per_org
                .get_or_create(&[("org", org.clone()), ("state", state.to_owned())])
                .set(int(n));
        }
    }
    r.register("pxb_server_org_clusters", "Clusters by org and state", per_org);
    let degraded = orgs
        .values()
        .filter(|o| matches!(o, OrgState::Degraded { .. }))
        .count();
    let by_state = Family::<Label, Gauge>::default();
    by_state
        .get_or_create(&[("state", "ready")])
        .set(int(orgs.len() - degraded));
    by_state
        .get_or_create(&[("state", "degraded")])
        .set(int(degraded));
    r.register("pxb_server_orgs", "Orgs by state", by_state);
    let visits = Family::<Label, Counter>::default();
    visits
        .get_or_create(&[("result", "ok")])
        .inc_by(m.visits_ok.load(Ordering::Relaxed));
    visits
        .get_or_create(&[("result", "failed")])
        .inc_by(m.visits_failed.load(Ordering::Relaxed));
    r.register("pxb_server_visits", "Cluster visits by result", visits);
    r.register_with_unit(
        "pxb_server_visit_duration",
        "How long cluster visits took",
        Unit::Seconds,
        m.visit_duration.clone(),
    );
    r.register(
        "pxb_server_api_requests",
        "API requests by method, route template and status code",
        m.api_requests.clone(),
    );
    r.register_with_unit(
        "pxb_server_api_request_duration",
        "API request latency by method and route template",
        Unit::Seconds,
        m.api_request_duration.clone(),
    );
    let providers = s.provider_counts();
    r.register(
        "pxb_server_discovery_runs",
        "Discovery cycles by result (a discovery that cannot start counts a failed one)",
        results(
            providers.discoveries_ok,
            providers.discoveries_failed + m.discovery_starts_failed.load(Ordering::Relaxed),
        ),
    );
    let shoots = Family::<Labels2, Gauge>::default();
    for (org, discovery, n) in s.discovered_shoots().into_iter().filter(|(o, ..)| scope.sees(o)) {
        shoots
            .get_or_create(&[("org", org), ("discovery", discovery)])
            .set(int(n));
    }
    r.register(
        "pxb_server_discovery_shoots",
        "Shoots each running discovery knows, eligible or not",
        shoots,
    );
    r.register(
        "pxb_server_kubeconfigs_issued",
        "First kubeconfigs requested for clusters, by result",
        results(providers.issued_ok, providers.issued_failed),
    );
    r.register(
        "pxb_server_kubeconfigs_renewed",
        "Kubeconfigs renewed (replacing one held), by result",
        results(providers.renewed_ok, providers.renewed_failed),
    );
    r.register(
        "pxb_server_kubeconfigs_refused",
        "Kubeconfigs a cluster refused in a visit",
        counter(&m.kubeconfigs_refused),
    );
    r.register(
        "pxb_server_orphans_deleted",
        "Orphaned objects deleted from clusters",
        counter(&m.orphans_deleted),
    );
    r.register(
        "pxb_server_crs_written",
        "BackupLocation CRs created or updated",
        counter(&m.crs_written),
    );
    r.register(
        "pxb_server_requests_stalled",
        "Requests that lost their heartbeat lease",
        counter(&m.stalled),
    );
    r.register(
        "pxb_server_backups_imported",
        "Backups found by syncs and imported into the catalog",
        counter(&m.imported),
    );
    r.register(
        "pxb_server_schedule_runs",
        "Schedule slots fired",
        counter(&m.schedule_runs),
    );
    let (backups, restores) = s.active_operations();
    let active = Family::<Label, Gauge>::default();
    active.get_or_create(&[("kind", "backup")]).set(int(backups));
    active.get_or_create(&[("kind", "restore")]).set(int(restores));
    r.register(
        "pxb_server_operations_active",
        "Backups and restores the server drives now",
        active,
    );
    r.register(
        "pxb_server_snapshots",
        "Fleet status snapshots built",
        counter(&m.snapshots),
    );
    s.register_backup_metrics(&mut r, &|org| scope.sees(org));
    if let Some(rx) = s.inner.support_status.get() {
        let st = rx.borrow().clone();
        let gauge = |v: bool| {
            let g = Gauge::<i64>::default();
            g.set(i64::from(v));
            g
        };
        let count = |v: u64| {
            let c = Counter::<u64>::default();
            c.inc_by(v);
            c
        };
        r.register(
            "pxb_server_support_enabled",
            "Whether the opt-in support channel is switched on",
            gauge(st.enabled),
        );
        r.register(
            "pxb_server_support_registered",
            "Whether the support channel holds a client certificate",
            gauge(st.registered),
        );
        r.register(
            "pxb_server_support_needs_operator",
            "Whether the support service refused the registration (a wrong token or CSR)",
            gauge(st.needs_operator),
        );
        r.register(
            "pxb_server_support_registrations",
            "Registrations with the support service",
            count(st.registrations),
        );
        r.register(
            "pxb_server_support_uploads",
            "Batches uploaded to the support service",
            count(st.uploads),
        );
        r.register(
            "pxb_server_support_dropped_batches",
            "Batches dropped because the support service stayed unreachable",
            count(st.dropped_batches),
        );
    }
    r
}
