//! The backups and restores in flight, server side: held per cluster in memory (loaded at start,
//! with the objects of force-deleted backups still to remove), handed to each visit and taken
//! back from it, and stalled when their cluster stops reporting; a visit never scans the catalog.

use std::collections::BTreeSet;
use std::time::Duration;

use pxb_core::Result;
use pxb_core::catalog::Query;
use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, ForcedDelete, RestorePhase, RestoreRecord, ScheduleRecord,
};

use super::backups::ms;
use super::operations::{CatalogLimits, OpsInput, OpsOutput};
use super::state::{Key, Server, State};

/// One org's operations and schedules as read from the catalog ([`Server::read_operations`]).
pub(crate) struct Operations {
    backups: Vec<BackupRecord>,
    restores: Vec<RestoreRecord>,
    schedules: Vec<ScheduleRecord>,
    forced: Vec<ForcedDelete>,
}

impl Operations {
    /// Adds them to `st`.
    pub(crate) fn apply(self, st: &mut State) {
        for f in self.forced {
            let key = (f.org.clone(), f.cluster.clone());
            st.ops.entry(key).or_default().forced.insert(f.id);
        }
        for b in self.backups {
            let key = (b.org.clone(), b.cluster.clone());
            st.ops.entry(key).or_default().backups.insert(b.id.clone(), b);
        }
        for r in self.restores {
            let key = (r.org.clone(), r.cluster.clone());
            st.ops.entry(key).or_default().restores.insert(r.id.clone(), r);
        }
        for s in self.schedules {
            st.schedules.insert((s.org.clone(), s.id.clone()), s);
        }
    }
}

impl Server {
    /// Reads the active backups and restores and the schedules of `org`.
    pub(crate) async fn read_operations(&self, org: &str) -> Result<Operations> {
        let c = &self.inner.catalog;
        let mut backups = Vec::new();
        for phase in [
            BackupPhase::Pending,
            BackupPhase::InProgress,
            BackupPhase::Deleting,
            BackupPhase::Stalled,
        ] {
            let q = Query {
                status: Some(phase.as_str().into()),
                ..Query::org(org)
            };
            backups.extend(c.list_all::<BackupRecord>(&q).await?);
        }
        let mut restores = Vec::new();
        for phase in [RestorePhase::Pending, RestorePhase::InProgress] {
            let q = Query {
                status: Some(phase.as_str().into()),
                ..Query::org(org)
            };
            restores.extend(c.list_all::<RestoreRecord>(&q).await?);
        }
        let schedules = c.list_all::<ScheduleRecord>(&Query::org(org)).await?;
        let forced = c.list_all::<ForcedDelete>(&Query::org(org)).await?;
        Ok(Operations {
            backups,
            restores,
            schedules,
            forced,
        })
    }

    /// The operations input of cluster `key` for a visit.
    pub(crate) fn operations_input(&self, key: &Key) -> OpsInput {
        let st = self.inner.lock();
        let Some(ops) = st.ops.get(key) else {
            return OpsInput {
                org: key.0.clone(),
                backups: Vec::new(),
                restores: Vec::new(),
                forced: Vec::new(),
                imports: Vec::new(),
                catalog_limits: self.catalog_limits(),
                now: self.inner.clock.now(),
            };
        };
        OpsInput {
            org: key.0.clone(),
            backups: ops.backups.values().cloned().collect(),
            restores: ops.restores.values().cloned().collect(),
            forced: ops.forced.iter().cloned().collect(),
            imports: Vec::new(),
            catalog_limits: self.catalog_limits(),
            now: self.inner.clock.now(),
        }
    }

    /// The bounds on reading an agent's catalog, from the configuration.
    fn catalog_limits(&self) -> CatalogLimits {
        let f = &self.inner.config.fleet;
        CatalogLimits {
            page_bytes: usize::try_from(f.catalog_page_max_bytes).unwrap_or(usize::MAX),
            pages: usize::try_from(f.catalog_max_pages).unwrap_or(usize::MAX),
            items: usize::try_from(f.max_synced_backups_per_org).unwrap_or(usize::MAX),
            deadline: Duration::from_millis(f.call_timeout_ms.saturating_mul(2)),
        }
    }

    /// Backups (active or stalled) and active restores the server drives now.
    pub fn active_operations(&self) -> (usize, usize) {
        let st = self.inner.lock();
        st.ops
            .values()
            .fold((0, 0), |(b, r), o| (b + o.backups.len(), r + o.restores.len()))
    }

    /// Turns backups and restores whose agent has not reported within `lease` (their cluster
    /// dropped off) `Stalled`, so that nothing waits on them forever. Returns how many.
    pub async fn stall_silent_operations(&self, lease: Duration) -> usize {
        let now_ms = ms(self.inner.clock.now());
        let lease_ms = lease.as_millis() as i64;
        let last_ms = |heartbeat: &Option<String>, created_ms: i64| {
            heartbeat
                .as_deref()
                .and_then(pxb_core::clock::parse_rfc3339)
                .map(pxb_core::clock::unix_ms)
                .unwrap_or(created_ms)
                .max(created_ms)
        };
        let (backups, restores) = {
            let mut st = self.inner.lock();
            let mut backups = Vec::new();
            let mut restores = Vec::new();
            for ops in st.ops.values_mut() {
                for b in ops.backups.values_mut() {
                    let silent = now_ms - last_ms(&b.heartbeat, b.created_ms);
                    if matches!(b.phase, BackupPhase::Pending | BackupPhase::InProgress) && silent > lease_ms
                    {
                        b.message = Some(format!(
                            "no report from cluster {} for {} s (it was {}); the server stopped waiting, and \
                             the cluster's report still counts if it comes back",
                            b.cluster_name,
                            silent / 1000,
                            b.phase
                        ));
                        b.phase = BackupPhase::Stalled;
                        backups.push(b.clone());
                    }
                }
                for r in ops.restores.values_mut() {
                    let silent = now_ms - last_ms(&r.heartbeat, r.created_ms);
                    if r.phase.is_active() && silent > lease_ms {
                        r.message = Some(format!(
                            "no report from cluster {} for {} s (it was {})",
                            r.cluster_name,
                            silent / 1000,
                            r.phase
                        ));
                        r.phase = RestorePhase::Stalled;
                        restores.push(r.clone());
                    }
                }
                // A stalled restore is not driven again: restoring twice is not harmless.
                ops.restores.retain(|_, r| r.phase != RestorePhase::Stalled);
            }
            (backups, restores)
        };
        let c = &self.inner.catalog;
        if let Err(e) = c.put_all(&backups).await {
            tracing::warn!(error = %e, "cannot record stalled backups");
        }
        if let Err(e) = c.put_all(&restores).await {
            tracing::warn!(error = %e, "cannot record stalled restores");
        }
        backups.len() + restores.len()
    }

    /// Takes in what a visit did with the cluster's operations.
    pub(crate) async fn absorb_operations(&self, key: &Key, out: OpsOutput) {
        let mut finished_scheduled: BTreeSet<String> = BTreeSet::new();
        {
            let mut st = self.inner.lock();
            let ops = st.ops.entry(key.clone()).or_default();
            for b in &out.backups {
                if b.phase.is_tracked() {
                    ops.backups.insert(b.id.clone(), b.clone());
                } else {
                    ops.backups.remove(&b.id);
                    if let Some(s) = &b.schedule {
                        finished_scheduled.insert(s.clone());
                    }
                }
            }
            for id in &out.gone {
                ops.backups.remove(id);
            }
            for r in &out.restores {
                if r.phase.is_active() {
                    ops.restores.insert(r.id.clone(), r.clone());
                } else {
                    ops.restores.remove(&r.id);
                }
            }
            for id in &out.forced_done {
                ops.forced.remove(id);
            }
        }
        let c = &self.inner.catalog;
        for id in &out.forced_done {
            if let Err(e) = c.delete::<ForcedDelete>(&key.0, id).await {
                tracing::warn!(org = %key.0, backup = %id, error = %e, "cannot drop a force-delete marker");
            }
        }
        if let Err(e) = c.put_all(&out.backups).await {
            tracing::warn!(org = %key.0, error = %e, "cannot record backups");
        }
        if let Err(e) = c.put_all(&out.restores).await {
            tracing::warn!(org = %key.0, error = %e, "cannot record restores");
        }
        for id in &out.gone {
            if let Err(e) = c.delete::<BackupRecord>(&key.0, id).await {
                tracing::warn!(org = %key.0, backup = %id, error = %e, "cannot remove a deleted backup");
            }
        }
        for found in out.found {
            self.import_synced(key, found).await;
        }
        for s in finished_scheduled {
            self.apply_retention(&key.0, &s, &key.1).await;
        }
    }
}
