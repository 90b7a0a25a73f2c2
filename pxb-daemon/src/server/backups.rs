//! Backups across the fleet, server side: what the API asks for and how it is recorded — backup
//! requests, one backup, deletes — and the helpers the other operation files share (`ms`,
//! `stamp`, `dns_label`, `check_namespaces`, `unable`).
//!
//! - A backup request makes one record per selected cluster in one catalog write; the clusters
//!   are woken and the scheduler's bounded pool of visits delivers them in parallel. A cluster
//!   that cannot take a backup now (unreachable, hibernated, without agent or without the
//!   location) gets a `Missed` record with the reason instead of a silent gap.
//!
//! Beside it: `restores.rs` (restores), `schedules.rs` (schedules, their firing and retention),
//! `in_flight.rs` (the backups and restores in flight and what a visit does with them) and
//! `findings.rs` (what a sync or a verify finds in a location).

use std::time::SystemTime;

use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, ClusterSelector, ClusterState, ForcedDelete, LocationRecord,
};
use pxb_core::catalog::{Catalog, Put};
use pxb_core::clock::rfc3339;
use pxb_core::{Error, Result};

pub use pxb_core::api::rest::{BackupRequest, DeleteOutcome, RestoreRequest, ScheduleRequest};

use super::state::{Key, Server, State, Tracked};

pub(super) fn ms(t: SystemTime) -> i64 {
    pxb_core::clock::unix_ms(t)
}

/// `YYYYMMDDhhmmss` (UTC) of `t_ms`, for names.
pub(super) fn stamp(t_ms: i64) -> String {
    rfc3339(pxb_core::clock::from_unix_ms(t_ms.max(0)))
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

pub(super) fn dns_label(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what} {s:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"
        )))
    }
}

pub(super) fn check_namespaces(namespaces: &[String]) -> Result<()> {
    if namespaces.is_empty() {
        return Err(Error::invalid("name at least one namespace"));
    }
    if namespaces.len() > 1000 {
        return Err(Error::invalid("at most 1000 namespaces per backup"));
    }
    namespaces.iter().try_for_each(|n| dns_label("namespace", n))
}

/// Why a cluster cannot take a backup now, if it cannot.
pub(super) fn unable(st: &State, key: &Key, loc: &LocationRecord) -> Option<String> {
    let t = st.clusters.get(key)?;
    let r = &t.record;
    if !loc.clusters.selects(r) {
        return Some(format!(
            "location {} is not assigned to cluster {}",
            loc.name, r.name
        ));
    }
    match r.status.state {
        // The provider is not required: after a restart it comes back with discovery, and the
        // backup waits for it.
        ClusterState::Ready
        | ClusterState::Degraded
        | ClusterState::AgentOutdated
        | ClusterState::Unknown
            if r.ineligible.is_none() && !r.hibernated =>
        {
            None
        }
        state => Some(format!(
            "cluster {} was {state:?}{} when the backup was due",
            r.name,
            r.status
                .message
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        )),
    }
}

impl Server {
    /// The backup records for `namespaces` on the clusters `selector` picks, made now: `Pending`
    /// where the cluster can take them, `Missed` with the reason where it cannot; all `Missed`
    /// with `inactive` when the location is inactive.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_backups(
        st: &State,
        loc: &LocationRecord,
        selector: &ClusterSelector,
        namespaces: &[String],
        now_ms: i64,
        name: impl Fn(&str) -> String,
        schedule: Option<&str>,
        inactive: Option<&str>,
    ) -> Vec<BackupRecord> {
        let mut clusters: Vec<(&Key, &Tracked)> = st
            .clusters
            .iter()
            .filter(|(k, t)| k.0 == loc.org && t.record.retired_at.is_none() && selector.selects(&t.record))
            .collect();
        clusters.sort_by(|a, b| a.1.record.name.cmp(&b.1.record.name));
        clusters
            .into_iter()
            .map(|(key, t)| {
                let reason = match inactive {
                    Some(why) => Some(format!("location {} is inactive: {why}", loc.name)),
                    None => unable(st, key, loc),
                };
                BackupRecord {
                    org: loc.org.clone(),
                    id: name(&t.record.name),
                    cluster: t.record.id.clone(),
                    cluster_name: t.record.name.clone(),
                    location: loc.id.clone(),
                    location_name: loc.name.clone(),
                    namespaces: namespaces.to_vec(),
                    phase: if reason.is_some() {
                        BackupPhase::Missed
                    } else {
                        BackupPhase::Pending
                    },
                    completed_ms: reason.is_some().then_some(now_ms),
                    message: reason,
                    created_ms: now_ms,
                    schedule: schedule.map(str::to_owned),
                    ..BackupRecord::default()
                }
            })
            .collect()
    }

    pub(super) fn track_backups(&self, records: &[BackupRecord]) {
        let mut st = self.inner.lock();
        for b in records.iter().filter(|b| b.phase.is_tracked()) {
            st.ops
                .entry((b.org.clone(), b.cluster.clone()))
                .or_default()
                .backups
                .insert(b.id.clone(), b.clone());
        }
    }

    /// Backs up `namespaces` on every cluster the request selects: one backup per cluster.
    pub async fn create_backups(&self, org: &str, req: &BackupRequest) -> Result<Vec<BackupRecord>> {
        check_namespaces(&req.namespaces)?;
        let loc = self.location(org, &req.location)?;
        self.check_active(&loc)?;
        let now = ms(self.inner.clock.now());
        let suffix: u16 = rand::random();
        let records = {
            let st = self.inner.lock();
            Self::plan_backups(
                &st,
                &loc,
                &req.clusters,
                &req.namespaces,
                now,
                |cluster| format!("{cluster}-{}-{suffix:04x}", stamp(now)),
                None,
                None,
            )
        };
        if records.is_empty() {
            return Err(Error::invalid(format!(
                "the cluster selection matches no cluster of org {org}"
            )));
        }
        let puts = records
            .iter()
            .map(|b| Catalog::put_of(b, Some(0)))
            .collect::<Result<Vec<Put>>>()?;
        self.inner.catalog.store().put(puts).await?;
        self.track_backups(&records);
        self.wake_clusters(records.iter().map(|b| (b.org.clone(), b.cluster.clone())));
        Ok(records)
    }

    /// One backup.
    pub async fn backup(&self, org: &str, id: &str) -> Result<BackupRecord> {
        if let Some(b) = self.active_backup(org, id) {
            return Ok(b);
        }
        Ok(self.inner.catalog.get::<BackupRecord>(org, id).await?.value)
    }

    fn active_backup(&self, org: &str, id: &str) -> Option<BackupRecord> {
        let st = self.inner.lock();
        st.ops
            .iter()
            .filter(|(k, _)| k.0 == org)
            .find_map(|(_, ops)| ops.backups.get(id).cloned())
    }

    /// Deletes a backup: its data through its cluster's agent, then the record. `force` removes
    /// the record at once and leaves the data (for a cluster that is gone).
    pub async fn delete_backup(&self, org: &str, id: &str, force: bool) -> Result<DeleteOutcome> {
        let mut b = self.backup(org, id).await?;
        let key = (org.to_owned(), b.cluster.clone());
        if force {
            let retired = {
                let st = self.inner.lock();
                st.clusters
                    .get(&key)
                    .is_none_or(|t| t.record.retired_at.is_some())
            };
            // The cluster may hold the backup's object: remember to remove it, durably first, so
            // that neither a restart nor a failed write here loses it.
            let object_remains = !b.synced && !retired && b.phase != BackupPhase::Missed;
            if object_remains {
                let tombstone = ForcedDelete {
                    org: org.to_owned(),
                    id: id.to_owned(),
                    cluster: b.cluster.clone(),
                    deleted_at: rfc3339(self.inner.clock.now()),
                };
                self.inner.catalog.put(&tombstone, None).await?;
            }
            self.inner.catalog.delete::<BackupRecord>(org, id).await?;
            let mut st = self.inner.lock();
            let ops = st.ops.entry(key.clone()).or_default();
            ops.backups.remove(id);
            if object_remains {
                ops.forced.insert(id.to_owned());
            }
            drop(st);
            return Ok(DeleteOutcome {
                message: format!(
                    "the record of backup {id} is removed; its data remains in location {}",
                    b.location_name
                ),
                backup: b,
                record_removed: true,
                data_remains: true,
            });
        }
        if b.phase == BackupPhase::Missed {
            self.inner.catalog.delete::<BackupRecord>(org, id).await?;
            return Ok(DeleteOutcome {
                message: format!("backup {id} was missed and had no data; its record is removed"),
                backup: b,
                record_removed: true,
                data_remains: false,
            });
        }
        if b.synced {
            return Err(Error::precondition(format!(
                "backup {id} was found in location {} by a sync; its data is deleted from the cluster \
                 that made it ({}). Use force-delete to remove only the record",
                b.location_name,
                b.origin_cluster.as_deref().unwrap_or("unknown")
            )));
        }
        if matches!(b.phase, BackupPhase::Pending | BackupPhase::InProgress) {
            return Err(Error::precondition(format!(
                "backup {id} is {}; wait for it to finish, or force-delete the record",
                b.phase
            )));
        }
        // Its data is deleted by an agent through the location, which no cluster has while it
        // is inactive.
        let inactive = {
            let st = self.inner.lock();
            st.locations
                .get(&(org.to_owned(), b.location.clone()))
                .and_then(|l| self.inner.inactive_reason(l))
        };
        if let Some(why) = inactive {
            return Err(Error::precondition(format!(
                "backup {id} is in location {}, which is inactive: {why}. Force-delete removes the record \
                 and leaves the data",
                b.location_name
            )));
        }
        {
            let st = self.inner.lock();
            match st.clusters.get(&key) {
                Some(t) if t.record.retired_at.is_none() => {}
                _ => {
                    return Err(Error::precondition(format!(
                        "cluster {} of backup {id} is gone, so nothing can delete the data; force-delete \
                         removes the record and leaves the data in location {}",
                        b.cluster_name, b.location_name
                    )));
                }
            }
        }
        if b.phase != BackupPhase::Deleting {
            b.previous_phase = Some(b.phase);
            b.phase = BackupPhase::Deleting;
            b.message = None;
            self.inner.catalog.put(&b, None).await?;
        }
        self.track_backups(std::slice::from_ref(&b));
        self.wake_clusters([key]);
        Ok(DeleteOutcome {
            message: format!(
                "backup {id} is being deleted: the agent on {} deletes its data, then the record goes",
                b.cluster_name
            ),
            backup: b,
            record_removed: false,
            data_remains: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stamped_in_utc() {
        assert_eq!(stamp(0), "19700101000000");
        assert_eq!(stamp(1_700_000_000_000), "20231114221320");
    }
}
