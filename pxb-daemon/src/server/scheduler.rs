//! The scheduler: due clusters visited under a semaphore, each visit under a deadline
//! ([`reconcile::visit`], then [`operations::visit`]), unreachable clusters backed off
//! exponentially; [`fair_pick`] gives each free slot to the waiting org with the fewest visits in
//! flight. Beside it, housekeeping (heartbeat leases, snapshot rebuilds) and the schedules' loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use pxb_core::catalog::Catalog;
use pxb_core::catalog::records::{
    ClusterRecord, ClusterState, ClusterStatus, DiscoveryConfig, LocationStatus, RequestPhase, VerifyPhase,
};
use pxb_core::clock::rfc3339;
use pxb_core::cluster::{ClusterAccess, ClusterId, ClusterProvider, CredentialState};
use tracing::Instrument as _;

use super::fleet::FleetSnapshot;
use super::operations;
use super::reconcile::{self, Desired, VisitInput};

use super::state::{Key, OrgState, Server, State, Tracked};

/// Background tasks of a server; stopped when dropped.
#[derive(Debug)]
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server: Server,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let discoveries = std::mem::take(
            &mut *self
                .server
                .inner
                .background
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for t in discoveries {
            t.abort();
        }
        // Dropping the providers' handles stops their watches and renewals.
        self.server.inner.lock().running.clear();
    }
}

/// How soon a cluster with running backups or restores is visited again (their progress).
const ACTIVE_OPS_REVISIT: Duration = Duration::from_secs(2);

fn credential_text(s: &CredentialState) -> String {
    match s {
        CredentialState::Missing => "Missing".into(),
        CredentialState::Fresh { expires_at, .. } => format!("Fresh until {}", rfc3339(*expires_at)),
        CredentialState::Renewing { .. } => "Renewing".into(),
        CredentialState::Expired { since } => format!("Expired since {}", rfc3339(*since)),
        CredentialState::Failing { reason, attempts, .. } => {
            format!("Failing ({attempts} attempts): {reason}")
        }
    }
}

impl Server {
    /// Starts discovery, the cluster visits, the lease sweep, the snapshot builder and the
    /// upkeep of the backup info window.
    pub fn spawn(&self) -> Running {
        let discoveries: Vec<DiscoveryConfig> = self.inner.lock().discoveries.values().cloned().collect();
        for d in discoveries {
            self.start_discovery(d);
        }
        Running {
            tasks: vec![
                tokio::spawn(self.clone().scheduler()),
                tokio::spawn(self.clone().housekeeping()),
                tokio::spawn(self.clone().schedules_loop()),
                // Refills the backup info window when deleted backups' series expire.
                tokio::spawn(self.inner.observed_store.clone().upkeep_loop()),
            ],
            server: self.clone(),
        }
    }

    pub(crate) fn wake_org(&self, org: &str) {
        let keys: Vec<Key> = self
            .inner
            .lock()
            .clusters
            .keys()
            .filter(|k| k.0 == org)
            .cloned()
            .collect();
        self.wake_clusters(keys);
    }

    /// Makes the clusters `keys` due now (unless they are backed off as unreachable).
    pub(crate) fn wake_clusters(&self, keys: impl IntoIterator<Item = Key>) {
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        for k in keys {
            if let Some(t) = st.clusters.get_mut(&k)
                && t.failures == 0
            {
                t.next_due = now;
            }
        }
        st.dirty = true;
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Rebuilds the fleet snapshot now.
    pub fn rebuild_snapshot(&self) {
        let now = self.inner.clock.now();
        let snap = {
            let mut st = self.inner.lock();
            st.dirty = false;
            FleetSnapshot::build(st.clusters.values().map(|t| &t.record), st.statuses.values(), now)
        };
        *self.inner.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snap);
        self.inner.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    async fn housekeeping(self) {
        let every = Duration::from_millis(self.inner.config.fleet.snapshot_interval_ms.max(10));
        let lease = Duration::from_secs(self.inner.config.fleet.lease_secs);
        loop {
            tokio::time::sleep(every).await;
            if !self.may_act() {
                continue;
            }
            // Leases: a request on a cluster that is not visited (hibernated, offline) still stalls.
            let now = self.inner.clock.now();
            let stalled: Vec<LocationStatus> = {
                let mut st = self.inner.lock();
                let mut changed = Vec::new();
                for s in st.statuses.values_mut() {
                    let before = (s.sync.as_ref().map(|r| r.phase), s.validation.phase);
                    reconcile::apply_leases(s, now, lease);
                    if before != (s.sync.as_ref().map(|r| r.phase), s.validation.phase) {
                        changed.push(s.clone());
                    }
                }
                if !changed.is_empty() {
                    st.dirty = true;
                }
                changed
            };
            if !stalled.is_empty() {
                self.inner
                    .metrics
                    .stalled
                    .fetch_add(stalled.len() as u64, Ordering::Relaxed);
                for s in &stalled {
                    tracing::warn!(org = %s.org, location = %s.location, cluster = %s.cluster_name, "request stalled");
                }
                if let Err(e) = self.inner.catalog.put_all(&stalled).await {
                    tracing::warn!(error = %e, "cannot record stalled requests");
                }
            }
            let stalled_ops = self.stall_silent_operations(lease).await;
            if stalled_ops > 0 {
                self.inner
                    .metrics
                    .stalled
                    .fetch_add(stalled_ops as u64, Ordering::Relaxed);
                tracing::warn!(count = stalled_ops, "backups or restores stalled");
            }
            if self.inner.lock().dirty {
                self.rebuild_snapshot();
            }
        }
    }

    async fn schedules_loop(self) {
        loop {
            if self.may_act() {
                self.fire_due_schedules().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn scheduler(self) {
        loop {
            // A replica that may not act (its lease is not renewed) starts no visit.
            if !self.may_act() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let now = self.inner.clock.now();
            let free = self.inner.permits.available_permits();
            // Each due cluster with the span of its visit.
            let due: Vec<(Key, tracing::Span)> = if free == 0 {
                Vec::new()
            } else {
                let mut st = self.inner.lock();
                let cap = org_visit_cap(self.inner.config.fleet.concurrency);
                let due = fair_pick(&st.clusters, now, free, cap);
                due.into_iter()
                    .map(|k| {
                        let name = st.clusters.get_mut(&k).map(|t| {
                            t.busy = true;
                            t.record.name.clone()
                        });
                        let span = visit_span(&k, name.as_deref());
                        (k, span)
                    })
                    .collect()
            };
            for (key, span) in due {
                let Ok(permit) = self.inner.permits.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(
                    async move {
                        me.visit(key).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    fn desired_for(&self, st: &State, cluster: &ClusterRecord) -> std::result::Result<Vec<Desired>, String> {
        if !matches!(self.inner.orgs().get(&cluster.org), Some(OrgState::Ready(_))) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for l in st
            .locations
            .values()
            .filter(|l| l.org == cluster.org && l.clusters.selects(cluster))
            // An inactive location is not wanted: its CR and Secret go from the cluster as
            // orphans, and its credential is not even opened.
            .filter(|l| self.inner.inactive_reason(l).is_none())
        {
            let secret = self.inner.open_secret(l).map_err(|e| e.to_string())?;
            out.push(Desired {
                location: l.clone(),
                secret,
            });
        }
        Ok(out)
    }

    async fn visit(&self, key: Key) {
        let started = std::time::Instant::now();
        let fleet = &self.inner.config.fleet;
        let call = Duration::from_millis(fleet.call_timeout_ms);
        let now = self.inner.clock.now();
        let prepared = {
            let st = self.inner.lock();
            st.clusters.get(&key).map(|t| {
                // Statuses of this cluster: one lookup per location of the org.
                let statuses = st
                    .locations
                    .values()
                    .filter(|l| l.org == key.0)
                    .filter_map(|l| {
                        st.statuses
                            .get(&(key.0.clone(), LocationStatus::id_of(&l.id, &key.1)))
                            .map(|s| (l.id.clone(), s.clone()))
                    })
                    .collect::<BTreeMap<_, _>>();
                (
                    t.record.clone(),
                    t.provider.clone(),
                    self.desired_for(&st, &t.record),
                    statuses,
                )
            })
        };
        let Some((record, Some(provider), desired, statuses)) = prepared else {
            self.release(&key);
            return;
        };
        let id = ClusterId(record.id.clone());
        let mut active_ops = false;
        let result = match desired {
            Err(e) => Err(format!("cannot prepare the cluster's locations: {e}")),
            Ok(desired) => {
                let input = VisitInput {
                    cluster: record.clone(),
                    desired,
                    statuses: statuses.clone(),
                    now,
                    lease: Duration::from_secs(fleet.lease_secs),
                    min_agent_version: self.inner.min_agent_version.clone(),
                    install_agent: fleet.install_agent.then(|| fleet.agent_image.clone()),
                };
                let names: BTreeMap<String, String> = input
                    .desired
                    .iter()
                    .map(|d| (d.location.id.clone(), d.location.name.clone()))
                    .collect();
                let mut ops_input = self.operations_input(&key);
                active_ops = !ops_input.is_empty();
                let work = async {
                    let (client, access) = client_for(&provider, &id, call).await?;
                    let out = match reconcile::visit(&client, input).await {
                        Ok(out) => out,
                        Err(e) => {
                            // A credential the cluster refuses is not used again: the next visit
                            // (backed off as for any unreachable cluster) gets a new one.
                            if e.refused {
                                self.inner
                                    .metrics
                                    .kubeconfigs_refused
                                    .fetch_add(1, Ordering::Relaxed);
                                provider.refused(&id, &access);
                            }
                            return Err(e.message);
                        }
                    };
                    let (imports, verified) = finished_runs(&statuses, &out.statuses, &names);
                    ops_input.imports = imports;
                    let ops = operations::visit(&client, ops_input).await;
                    Ok((out, ops, verified))
                };
                match tokio::time::timeout(call * 4, work).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {:?}", call * 4)),
                }
            }
        };
        let (result, ops, verified) = match result {
            Ok((out, ops, verified)) => (Ok(out), Some(ops), verified),
            Err(e) => (Err(e), None, Vec::new()),
        };
        let credential = credential_text(&provider.credential_state(&id));
        let after = self.inner.clock.now();
        let (cluster_rec, status_recs, stale) = {
            let mut st = self.inner.lock();
            let Some(t) = st.clusters.get_mut(&key) else {
                return;
            };
            t.busy = false;
            // Discovery may have hibernated, retired or disqualified the cluster while the visit
            // ran; its state from discovery then stands.
            let before = (!t.visitable()).then(|| (t.record.status.state, t.record.status.message.clone()));
            let mut status_recs: Vec<LocationStatus> = Vec::new();
            let mut stale: Vec<String> = Vec::new();
            match result {
                Ok(out) => {
                    t.failures = 0;
                    // Running backups and restores report progress: their cluster is visited
                    // again soon rather than at the next resync.
                    let every = if active_ops {
                        ACTIVE_OPS_REVISIT.min(Duration::from_secs(fleet.resync_secs))
                    } else {
                        Duration::from_secs(fleet.resync_secs)
                    };
                    t.next_due = after + every;
                    t.record.status = ClusterStatus {
                        credential: Some(credential),
                        ..out.status
                    };
                    self.inner.metrics.visits_ok.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .metrics
                        .visit_duration
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(state = t.record.status.state.as_str(), "cluster visited");
                    self.inner
                        .metrics
                        .orphans_deleted
                        .fetch_add(out.orphans_deleted as u64, Ordering::Relaxed);
                    self.inner
                        .metrics
                        .crs_written
                        .fetch_add(out.written as u64, Ordering::Relaxed);
                    if out.orphans_deleted > 0 {
                        tracing::info!(org = %key.0, cluster = %record.name, deleted = out.orphans_deleted, "orphaned objects deleted");
                    }
                    status_recs = out.statuses;
                    // Locations no longer assigned here: their status on this cluster goes too.
                    stale = statuses
                        .values()
                        .filter(|old| !status_recs.iter().any(|s| s.id == old.id))
                        .map(|old| old.id.clone())
                        .collect();
                }
                Err(e) => {
                    t.failures += 1;
                    t.next_due = after
                        + offline_backoff(
                            Duration::from_secs(fleet.offline_backoff_secs),
                            Duration::from_secs(fleet.offline_backoff_max_secs),
                            t.failures,
                        );
                    let last_seen = t.record.status.last_seen.clone();
                    t.record.status = ClusterStatus {
                        state: ClusterState::Unreachable,
                        message: Some(e.clone()),
                        credential: Some(credential),
                        agent_version: t.record.status.agent_version.clone(),
                        last_seen,
                        last_attempt: Some(rfc3339(after)),
                    };
                    self.inner.metrics.visits_failed.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .metrics
                        .visit_duration
                        .observe(started.elapsed().as_secs_f64());
                    tracing::debug!(org = %key.0, cluster = %record.name, error = %e, failures = t.failures, "cluster unreachable");
                    for mut s in statuses.into_values() {
                        reconcile::apply_leases(&mut s, after, Duration::from_secs(fleet.lease_secs));
                        status_recs.push(s);
                    }
                }
            }
            if let Some((state, message)) = before {
                t.record.status.state = state;
                t.record.status.message = message;
            }
            let cluster_rec = t.record.clone();
            // A location deleted while the visit ran must not come back through its status.
            status_recs.retain(|s| st.locations.contains_key(&(s.org.clone(), s.location.clone())));
            for s in &mut status_recs {
                let key = (s.org.clone(), s.id.clone());
                // A sync or validation requested while the visit ran must not be lost.
                if let Some(current) = st.statuses.get(&key) {
                    reconcile::keep_newer_requests(current, s);
                }
                st.statuses.insert(key, s.clone());
            }
            for id in &stale {
                st.statuses.remove(&(key.0.clone(), id.clone()));
            }
            st.dirty = true;
            (cluster_rec, status_recs, stale)
        };
        for id in stale {
            if let Err(e) = self.inner.catalog.delete::<LocationStatus>(&key.0, &id).await {
                tracing::warn!(org = %key.0, status = %id, error = %e, "cannot delete a stale location status");
            }
        }
        let mut puts = Vec::with_capacity(1 + status_recs.len());
        let encoded = Catalog::put_of(&cluster_rec, None)
            .map(|p| puts.push(p))
            .and_then(|_| {
                for s in &status_recs {
                    puts.push(Catalog::put_of(s, None)?);
                }
                Ok(())
            });
        let written = match encoded {
            Ok(()) => self.inner.catalog.store().put(puts).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(org = %key.0, cluster = %record.name, error = %e, "cannot record the cluster's status");
        }
        match ops {
            Some(Ok(out)) => self.absorb_operations(&key, out).await,
            Some(Err(e)) => {
                tracing::warn!(org = %key.0, cluster = %record.name, error = %e, "backups and restores not driven in this visit");
            }
            None => {}
        }
        for (location, missing) in verified {
            self.absorb_verify(&key.0, &location, &missing).await;
        }
    }

    fn release(&self, key: &Key) {
        if let Some(t) = self.inner.lock().clusters.get_mut(key) {
            t.busy = false;
        }
    }
}

/// Syncs that completed and verifies that finished in a visit (comparing the statuses before and
/// after): the syncs' locations (id, name) have their catalogs imported, and the verifies'
/// results (location id, missing objects by backup id) are recorded on the backups.
#[allow(clippy::type_complexity)]
fn finished_runs(
    before: &BTreeMap<String, LocationStatus>,
    after: &[LocationStatus],
    names: &BTreeMap<String, String>,
) -> (Vec<(String, String)>, Vec<(String, BTreeMap<String, u64>)>) {
    let mut imports = Vec::new();
    let mut verified = Vec::new();
    for s in after {
        let old = before.get(&s.location);
        if let Some(run) = &s.sync
            && run.phase == RequestPhase::Completed
            && old
                .and_then(|o| o.sync.as_ref())
                .is_none_or(|o| o.request != run.request || o.phase != RequestPhase::Completed)
            && let Some(name) = names.get(&s.location)
        {
            imports.push((s.location.clone(), name.clone()));
        }
        if let Some(v) = &s.verify
            && v.phase == VerifyPhase::Completed
            && old
                .and_then(|o| o.verify.as_ref())
                .is_none_or(|o| o.completed != v.completed)
        {
            verified.push((s.location.clone(), v.missing_by_backup.clone()));
        }
    }
    (imports, verified)
}

/// The span of one visit of the cluster `key` named `name`: `org` and `cluster` (its name, or
/// its id when it has none), which every line logged in the visit carries, including those of
/// the calls it makes to the cluster and of the backups and restores it drives.
fn visit_span(key: &Key, name: Option<&str>) -> tracing::Span {
    let cluster = name.filter(|n| !n.is_empty()).unwrap_or(&key.1);
    tracing::info_span!("visit", org = %key.0, cluster = %cluster)
}

/// How long an unreachable cluster waits for its next visit after `failures` failed ones in a
/// row: `base`, doubling per failure, at most `max`. Offline clusters thus take fewer and fewer of
/// the visit slots.
pub(crate) fn offline_backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    base.saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// A client for one visit, and the access it uses. Not kept between visits: an idle connection
/// per cluster would cost thousands of open TLS sessions across a fleet.
async fn client_for(
    provider: &Arc<dyn ClusterProvider>,
    id: &ClusterId,
    call: Duration,
) -> std::result::Result<(kube::Client, ClusterAccess), String> {
    let access = tokio::time::timeout(call * 2, provider.access(id))
        .await
        .map_err(|_| "no kubeconfig within the deadline".to_string())?
        .map_err(|e| format!("no credential: {e}"))?;
    let mut config = super::kubeconfig::client_config(&access).map_err(|e| e.to_string())?;
    config.connect_timeout = Some(call);
    config.read_timeout = Some(call);
    config.write_timeout = Some(call);
    let client = kube::Client::try_from(config).map_err(|e| format!("building a client: {e}"))?;
    Ok((client, access))
}

/// How many visits one org may have in flight while the fleet has other orgs: three quarters of
/// the fleet's concurrency (at least one), so that an org whose clusters all hang until their
/// deadline never holds every visit slot.
fn org_visit_cap(concurrency: usize) -> usize {
    (concurrency * 3 / 4).max(1)
}

/// Up to `free` due clusters to visit now, fairly between orgs: each org's due clusters in the
/// order they fell due, and each slot to the waiting org with the fewest visits in flight, so a
/// few clusters of one org are not queued behind thousands of another's. An org at `cap` visits
/// in flight gets no more while the fleet has other orgs (so slots stay free for them to fall
/// due); the fleet's only org may use every slot.
fn fair_pick(clusters: &HashMap<Key, Tracked>, now: SystemTime, free: usize, cap: usize) -> Vec<Key> {
    /// Per org: visits in flight, and due clusters with when they fell due.
    type OrgQueue<'a> = (usize, Vec<(SystemTime, &'a Key)>);
    let mut by_org: BTreeMap<&str, OrgQueue<'_>> = BTreeMap::new();
    for (k, t) in clusters.iter().filter(|(_, t)| t.busy || t.visitable()) {
        let entry = by_org.entry(k.0.as_str()).or_default();
        if t.busy {
            entry.0 += 1;
        } else if t.visitable() && t.next_due <= now {
            entry.1.push((t.next_due, k));
        }
    }
    // With other orgs in the fleet, the cap holds even while they have nothing due: a quarter of
    // the slots stays free for them, so one falling due is not queued behind hanging visits.
    let shared = by_org.len() > 1;
    let mut queues: Vec<(usize, std::collections::VecDeque<&Key>)> = by_org
        .into_values()
        .filter(|(_, due)| !due.is_empty())
        .map(|(busy, mut due)| {
            due.sort();
            (busy, due.into_iter().map(|(_, k)| k).collect())
        })
        .collect();
    let mut out = Vec::with_capacity(free.min(clusters.len()));
    while out.len() < free {
        // The waiting org with the fewest visits in flight goes next (the first by id on a tie);
        // one at its cap only when it is the fleet's only org.
        let next = queues
            .iter_mut()
            .filter(|(busy, q)| !q.is_empty() && (*busy < cap || !shared))
            .min_by_key(|(busy, _)| *busy);
        let Some((busy, q)) = next else { break };
        if let Some(k) = q.pop_front() {
            out.push(k.clone());
            *busy += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_clusters_are_visited_less_and_less_often() {
        let (base, max) = (Duration::from_secs(15), Duration::from_secs(300));
        let waits: Vec<u64> = (1..=7).map(|f| offline_backoff(base, max, f).as_secs()).collect();
        assert_eq!(waits, vec![15, 30, 60, 120, 240, 300, 300]);
        assert_eq!(offline_backoff(base, max, 0), base);
        assert_eq!(offline_backoff(base, max, u32::MAX), max);
    }

    fn tracked(org: &str, n: usize, busy: usize, due: SystemTime) -> Vec<(Key, Tracked)> {
        let provider: Arc<dyn ClusterProvider> = Arc::new(pxb_core::cluster::StaticClusters::new());
        (0..n)
            .map(|i| {
                let key = (org.to_owned(), format!("{org}-{i:05}"));
                let t = Tracked {
                    record: ClusterRecord::default(),
                    provider: Some(provider.clone()),
                    next_due: due + Duration::from_millis(i as u64),
                    failures: 0,
                    busy: i < busy,
                };
                (key, t)
            })
            .collect()
    }

    #[test]
    fn visits_are_shared_fairly_between_orgs() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = t0 + Duration::from_secs(60);
        let count = |picked: &[Key], org: &str| picked.iter().filter(|k| k.0 == org).count();
        // An org with thousands of clusters due first does not queue another's few behind them.
        let mut clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 0, t0).into_iter().collect();
        clusters.extend(tracked("calm", 3, 0, t0 + Duration::from_secs(30)));
        let picked = fair_pick(&clusters, now, 8, org_visit_cap(8));
        assert_eq!(picked.len(), 8);
        assert_eq!(count(&picked, "calm"), 3, "{picked:?}");
        // The flood's own come in the order they fell due.
        let flood: Vec<&str> = picked
            .iter()
            .filter(|k| k.0 == "flood")
            .map(|k| k.1.as_str())
            .collect();
        assert_eq!(
            flood,
            [
                "flood-00000",
                "flood-00001",
                "flood-00002",
                "flood-00003",
                "flood-00004"
            ]
        );
        // An org at its cap (3/4 of the slots) gets no more while another waits...
        let mut clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 6, t0).into_iter().collect();
        clusters.extend(tracked("calm", 3, 0, t0));
        let picked = fair_pick(&clusters, now, 2, org_visit_cap(8));
        assert_eq!(count(&picked, "calm"), 2, "{picked:?}");
        // ...or while another org has nothing due yet (its share stays free for it)...
        let mut clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 6, t0).into_iter().collect();
        clusters.extend(tracked("calm", 3, 0, now + Duration::from_secs(5)));
        assert!(fair_pick(&clusters, now, 2, org_visit_cap(8)).is_empty());
        // ...and takes every free slot when it is the fleet's only org.
        let clusters: HashMap<Key, Tracked> = tracked("flood", 5000, 6, t0).into_iter().collect();
        assert_eq!(fair_pick(&clusters, now, 2, org_visit_cap(8)).len(), 2);
        // Slots go to the org with the fewest visits in flight.
        let mut clusters: HashMap<Key, Tracked> = tracked("a", 100, 3, t0).into_iter().collect();
        clusters.extend(tracked("b", 100, 0, t0));
        clusters.extend(tracked("c", 100, 1, t0));
        let picked = fair_pick(&clusters, now, 4, 100);
        assert_eq!(
            (count(&picked, "a"), count(&picked, "b"), count(&picked, "c")),
            (0, 3, 1),
            "{picked:?}"
        );
        // Nothing not yet due, busy, or not visitable.
        let clusters: HashMap<Key, Tracked> = tracked("later", 10, 0, now + Duration::from_secs(1))
            .into_iter()
            .collect();
        assert!(fair_pick(&clusters, now, 8, 6).is_empty());
    }
}
