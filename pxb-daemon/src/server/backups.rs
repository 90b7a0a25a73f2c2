//! Backups, restores and schedules across the fleet: what the API asks for, how it is recorded,
//! and what the server does with the visits' results.
//!
//! - A backup request makes one record per selected cluster in one catalog write; the clusters
//!   are woken and the scheduler's bounded pool of visits delivers them in parallel. A cluster
//!   that cannot take a backup now (unreachable, hibernated, without agent or without the
//!   location) gets a `Missed` record with the reason instead of a silent gap.
//! - Schedules fire from [`Server::fire_due_schedules`], driven by the clock seam. The slot moves
//!   forward in the same atomic catalog write that records the slot's backups, whose ids are
//!   derived from the slot: a restart can neither skip a slot nor record one twice.
//! - Retention runs when a scheduled backup finishes and after each firing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use pxb_core::catalog::records::{
    BackupPhase, BackupRecord, ClusterSelector, ClusterState, ForcedDelete, LocationRecord, LocationStatus,
    RestorePhase, RestoreRecord, ScheduleRecord, ScheduleRun,
};
use pxb_core::catalog::{Catalog, Put, Query};
use pxb_core::clock::rfc3339;
use pxb_core::schedule::retention;
use pxb_core::{Error, Result};

pub use pxb_core::api::rest::{BackupRequest, DeleteOutcome, RestoreRequest, ScheduleRequest};

use super::operations::{CatalogLimits, Found, OpsInput, OpsOutput};
use super::state::{Key, OrgState, Server, State, Tracked};

fn ms(t: SystemTime) -> i64 {
    pxb_core::clock::unix_ms(t)
}

/// `YYYYMMDDhhmmss` (UTC) of `t_ms`, for names.
fn stamp(t_ms: i64) -> String {
    rfc3339(pxb_core::clock::from_unix_ms(t_ms.max(0)))
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

fn dns_label(what: &str, s: &str) -> Result<()> {
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

fn check_namespaces(namespaces: &[String]) -> Result<()> {
    if namespaces.is_empty() {
        return Err(Error::invalid("name at least one namespace"));
    }
    if namespaces.len() > 1000 {
        return Err(Error::invalid("at most 1000 namespaces per backup"));
    }
    namespaces.iter().try_for_each(|n| dns_label("namespace", n))
}

/// Why a cluster cannot take a backup now, if it cannot.
fn unable(st: &State, key: &Key, loc: &LocationRecord) -> Option<String> {
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
    /// Loads the active backups and restores and the schedules of `org` (at start).
    pub(crate) async fn load_operations(&self, org: &str) -> Result<()> {
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
        let mut st = self.inner.lock();
        for f in forced {
            let key = (f.org.clone(), f.cluster.clone());
            st.ops.entry(key).or_default().forced.insert(f.id);
        }
        for b in backups {
            let key = (b.org.clone(), b.cluster.clone());
            st.ops.entry(key).or_default().backups.insert(b.id.clone(), b);
        }
        for r in restores {
            let key = (r.org.clone(), r.cluster.clone());
            st.ops.entry(key).or_default().restores.insert(r.id.clone(), r);
        }
        for s in schedules {
            st.schedules.insert((s.org.clone(), s.id.clone()), s);
        }
        Ok(())
    }

    /// The backup records for `namespaces` on the clusters `selector` picks, made now: `Pending`
    /// where the cluster can take them, `Missed` with the reason where it cannot; all `Missed`
    /// with `inactive` when the location is inactive.
    #[allow(clippy::too_many_arguments)]
    fn plan_backups(
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

    fn track_backups(&self, records: &[BackupRecord]) {
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

    /// Restores a backup into its own cluster or another one of the org.
    ///
    /// The namespaces restored are the request's, or else the backup's as this server recorded
    /// them: never what the location says (whoever can write the location could list any). A
    /// backup imported by a sync has only the location's word, so its restore must name them.
    /// Restoring into `pxb-system` or a `kube-*` namespace, or allowing cluster-scoped kinds,
    /// needs `admin` (the org's admin role): a workload there reaches cluster-wide rights.
    pub async fn create_restore(
        &self,
        org: &str,
        req: &RestoreRequest,
        admin: bool,
    ) -> Result<RestoreRecord> {
        let b = self.backup(org, &req.backup).await?;
        if !admin && !req.allow_cluster_kinds.is_empty() {
            return Err(Error::permission_denied(
                "allowClusterKinds needs the org's admin role",
            ));
        }
        let namespaces: Vec<String> = if !req.namespaces.is_empty() {
            req.namespaces.clone()
        } else if b.synced {
            return Err(Error::invalid(format!(
                "backup {} was imported by a sync, so only its location says which namespaces it holds \
                 ({}); name the namespaces to restore",
                b.id,
                b.namespaces.join(", ")
            )));
        } else if b.namespaces.is_empty() {
            return Err(Error::invalid(format!(
                "backup {} has no recorded namespaces; name the namespaces to restore",
                b.id
            )));
        } else {
            b.namespaces.clone()
        };
        for target in namespaces
            .iter()
            .map(|n| req.namespace_mapping.get(n).unwrap_or(n))
            .chain(req.namespace_mapping.values())
        {
            let protected = target == crate::crd::AGENT_NAMESPACE || target.starts_with("kube-");
            if protected && !admin {
                return Err(Error::permission_denied(format!(
                    "restoring into namespace {target} needs the org's admin role (workloads there reach \
                     cluster-wide rights)"
                )));
            }
        }
        if !b.phase.is_success() {
            return Err(Error::precondition(format!(
                "backup {} is {}; only a successful backup can be restored",
                b.id, b.phase
            )));
        }
        let backup_id = b
            .backup_id
            .clone()
            .ok_or_else(|| Error::precondition(format!("backup {} has no data id yet", b.id)))?;
        for ns in req.namespaces.iter().chain(req.namespace_mapping.keys()) {
            dns_label("namespace", ns)?;
            if !b.namespaces.is_empty() && !b.namespaces.contains(ns) {
                return Err(Error::invalid(format!(
                    "namespace {ns} is not in backup {} (it has {})",
                    b.id,
                    b.namespaces.join(", ")
                )));
            }
        }
        req.namespace_mapping
            .values()
            .try_for_each(|n| dns_label("target namespace", n))?;
        let loc = self
            .locations(org)
            .into_iter()
            .find(|l| l.id == b.location)
            .ok_or_else(|| {
                Error::precondition(format!("the location of backup {} no longer exists", b.id))
            })?;
        if let Some(why) = self.inner.inactive_reason(&loc) {
            return Err(Error::precondition(format!(
                "backup {} cannot be restored: its location {} is inactive: {why}",
                b.id, loc.name
            )));
        }
        let now = ms(self.inner.clock.now());
        let record = {
            let st = self.inner.lock();
            let target = match &req.cluster {
                Some(name) => st
                    .clusters
                    .values()
                    .find(|t| t.record.org == org && t.record.name == *name && t.record.retired_at.is_none())
                    .ok_or_else(|| Error::not_found(format!("cluster {name} in org {org}")))?,
                None => st
                    .clusters
                    .get(&(org.to_owned(), b.cluster.clone()))
                    .filter(|t| t.record.retired_at.is_none())
                    .ok_or_else(|| {
                        Error::precondition(format!(
                            "cluster {} of backup {} is gone; name a target cluster",
                            b.cluster_name, b.id
                        ))
                    })?,
            };
            if let Some(reason) = unable(&st, &(org.to_owned(), target.record.id.clone()), &loc) {
                return Err(Error::precondition(format!("cannot restore now: {reason}")));
            }
            let suffix: u16 = rand::random();
            RestoreRecord {
                org: org.to_owned(),
                id: format!("{}-restore-{}-{suffix:04x}", target.record.name, stamp(now)),
                backup: b.id.clone(),
                backup_id,
                location: loc.id.clone(),
                location_name: loc.name.clone(),
                cluster: target.record.id.clone(),
                cluster_name: target.record.name.clone(),
                namespaces: namespaces.clone(),
                namespace_mapping: req.namespace_mapping.clone(),
                allow_cluster_kinds: req.allow_cluster_kinds.clone(),
                phase: RestorePhase::Pending,
                created_ms: now,
                ..RestoreRecord::default()
            }
        };
        self.inner.catalog.put(&record, Some(0)).await?;
        let key = (org.to_owned(), record.cluster.clone());
        self.inner
            .lock()
            .ops
            .entry(key.clone())
            .or_default()
            .restores
            .insert(record.id.clone(), record.clone());
        self.wake_clusters([key]);
        Ok(record)
    }

    /// One restore.
    pub async fn restore(&self, org: &str, id: &str) -> Result<RestoreRecord> {
        let active = {
            let st = self.inner.lock();
            st.ops
                .iter()
                .filter(|(k, _)| k.0 == org)
                .find_map(|(_, ops)| ops.restores.get(id).cloned())
        };
        match active {
            Some(r) => Ok(r),
            None => Ok(self.inner.catalog.get::<RestoreRecord>(org, id).await?.value),
        }
    }

    /// Creates a schedule; its first slot is the policy's first after now.
    pub async fn create_schedule(&self, org: &str, req: &ScheduleRequest) -> Result<ScheduleRecord> {
        dns_label("schedule name", &req.name)?;
        check_namespaces(&req.namespaces)?;
        req.policy.check().map_err(Error::invalid)?;
        let loc = self.location(org, &req.location)?;
        self.check_active(&loc)?;
        let now = ms(self.inner.clock.now());
        let record = ScheduleRecord {
            org: org.to_owned(),
            id: req.name.clone(),
            policy: req.policy.clone(),
            clusters: req.clusters.clone(),
            namespaces: req.namespaces.clone(),
            location: loc.id.clone(),
            location_name: loc.name.clone(),
            paused: req.paused,
            created_ms: now,
            next_fire_ms: req.policy.next_after(now, now).map_err(Error::invalid)?,
            last_fired: None,
            last_run: None,
        };
        match self.inner.catalog.put(&record, Some(0)).await {
            Err(Error::Precondition { .. } | Error::AlreadyExists { .. }) => {
                return Err(Error::already_exists(format!(
                    "schedule {} in org {org}",
                    req.name
                )));
            }
            r => r?,
        };
        self.inner
            .lock()
            .schedules
            .insert((org.to_owned(), record.id.clone()), record.clone());
        Ok(record)
    }

    /// The schedules of `org`, by name.
    pub fn schedules(&self, org: &str) -> Vec<ScheduleRecord> {
        self.inner
            .lock()
            .schedules
            .values()
            .filter(|s| s.org == org)
            .cloned()
            .collect()
    }

    /// One schedule.
    pub fn schedule(&self, org: &str, id: &str) -> Result<ScheduleRecord> {
        self.inner
            .lock()
            .schedules
            .get(&(org.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("schedule {id} in org {org}")))
    }

    /// Pauses or resumes a schedule. A resumed schedule's next slot is the first after now: the
    /// slots of the pause are not made up.
    pub async fn pause_schedule(&self, org: &str, id: &str, paused: bool) -> Result<ScheduleRecord> {
        let s = self.schedule(org, id)?;
        if s.paused == paused {
            return Ok(s);
        }
        let now = ms(self.inner.clock.now());
        let s = self
            .modify::<ScheduleRecord>(org, id, |s| {
                if s.paused != paused {
                    s.paused = paused;
                    if !paused {
                        s.next_fire_ms = s.policy.next_after(now, s.created_ms).map_err(Error::invalid)?;
                    }
                }
                Ok(())
            })
            .await?;
        self.inner
            .lock()
            .schedules
            .insert((org.to_owned(), id.to_owned()), s.clone());
        Ok(s)
    }

    /// Deletes a schedule; its backups stay (and are no longer pruned).
    pub async fn delete_schedule(&self, org: &str, id: &str) -> Result<bool> {
        let gone = self.inner.catalog.delete::<ScheduleRecord>(org, id).await?;
        let was = self
            .inner
            .lock()
            .schedules
            .remove(&(org.to_owned(), id.to_owned()))
            .is_some();
        Ok(gone || was)
    }

    /// Fires every schedule whose slot has come (by the clock seam), once per slot. Returns the
    /// backups recorded. Slots that passed while the server was not running are folded into
    /// the latest one (counted in its run), so a long outage does not start a burst of backups.
    pub async fn fire_due_schedules(&self) -> Vec<BackupRecord> {
        let now = ms(self.inner.clock.now());
        let due: Vec<ScheduleRecord> = {
            let orgs = self.inner.orgs();
            let st = self.inner.lock();
            st.schedules
                .values()
                .filter(|s| !s.paused && s.next_fire_ms <= now)
                .filter(|s| matches!(orgs.get(&s.org), Some(OrgState::Ready(_))))
                .cloned()
                .collect()
        };
        let mut fired = Vec::new();
        for s in due {
            // Fresh from the catalog, with its revision: the slot is written at that revision,
            // so a schedule deleted, paused or changed since is never overwritten by this run.
            let (mut s, revision) = match self.inner.catalog.find::<ScheduleRecord>(&s.org, &s.id).await {
                Ok(Some(v)) => (v.value, v.revision),
                Ok(None) => {
                    self.inner.lock().schedules.remove(&(s.org.clone(), s.id.clone()));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(org = %s.org, schedule = %s.id, error = %e, "cannot read the schedule; retrying");
                    continue;
                }
            };
            if s.paused || s.next_fire_ms > now {
                self.inner
                    .lock()
                    .schedules
                    .insert((s.org.clone(), s.id.clone()), s);
                continue;
            }
            let planned = s
                .policy
                .latest_due(s.next_fire_ms, now, s.created_ms)
                .and_then(|(slot, folded)| Ok((slot, folded, s.policy.next_after(slot, s.created_ms)?)));
            let (slot, folded, next) = match planned {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(org = %s.org, schedule = %s.id, error = %e, "the schedule's policy cannot be evaluated");
                    continue;
                }
            };
            let loc = self.locations(&s.org).into_iter().find(|l| l.id == s.location);
            let records = match &loc {
                Some(loc) => {
                    // A schedule of an inactive location records its slot as missed, with why.
                    let inactive = self.inner.inactive_reason(loc);
                    let st = self.inner.lock();
                    Self::plan_backups(
                        &st,
                        loc,
                        &s.clusters,
                        &s.namespaces,
                        now,
                        |cluster| format!("{}-{cluster}-{}", s.id, stamp(slot)),
                        Some(&s.id),
                        inactive.as_deref(),
                    )
                }
                None => Vec::new(),
            };
            s.next_fire_ms = next;
            s.last_fired = Some(rfc3339(self.inner.clock.now()));
            s.last_run = Some(ScheduleRun {
                slot: rfc3339(pxb_core::clock::from_unix_ms(slot.max(0))),
                fired_at: s.last_fired.clone().unwrap_or_default(),
                started: records.iter().filter(|b| b.phase == BackupPhase::Pending).count() as u32,
                missed: records.iter().filter(|b| b.phase == BackupPhase::Missed).count() as u32,
                folded_slots: folded,
            });
            if loc.is_none() {
                tracing::warn!(org = %s.org, schedule = %s.id, "the schedule's location is gone; nothing was backed up");
            }
            let mut puts = Vec::with_capacity(records.len() + 1);
            let encoded = Catalog::put_of(&s, Some(revision))
                .map(|p| puts.push(p))
                .and_then(|_| {
                    records
                        .iter()
                        .try_for_each(|b| Catalog::put_of(b, Some(0)).map(|p| puts.push(p)))
                });
            let written = match encoded {
                Ok(()) => self.inner.catalog.store().put(puts).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => {
                    tracing::info!(org = %s.org, schedule = %s.id, backups = records.len(), folded, "schedule fired");
                    self.inner.metrics.schedule_runs.fetch_add(1, Ordering::Relaxed);
                    self.inner
                        .lock()
                        .schedules
                        .insert((s.org.clone(), s.id.clone()), s.clone());
                    self.track_backups(&records);
                    self.wake_clusters(records.iter().map(|b| (b.org.clone(), b.cluster.clone())));
                    for c in records.iter().map(|b| b.cluster.clone()).collect::<BTreeSet<_>>() {
                        self.apply_retention(&s.org, &s.id, &c).await;
                    }
                    fired.extend(records);
                }
                // The schedule changed since it was read (deleted, paused, edited), or the slot's
                // backups exist (recorded by an earlier run of the server whose schedule write
                // this one did not see). Move the slot forward on the schedule as it is now,
                // unless it is gone or paused; the next tick plans again from there.
                Err(Error::Precondition { .. } | Error::AlreadyExists { .. }) => {
                    let recorded = match records.first() {
                        Some(b) => matches!(
                            self.inner.catalog.find::<BackupRecord>(&b.org, &b.id).await,
                            Ok(Some(_))
                        ),
                        None => false,
                    };
                    let moved = self
                        .modify::<ScheduleRecord>(&s.org, &s.id, |cur| {
                            if recorded && !cur.paused && cur.next_fire_ms <= slot {
                                cur.next_fire_ms = next;
                            }
                            Ok(())
                        })
                        .await;
                    let key = (s.org.clone(), s.id.clone());
                    match moved {
                        Ok(cur) => {
                            self.inner.lock().schedules.insert(key, cur);
                        }
                        Err(Error::NotFound { .. }) => {
                            self.inner.lock().schedules.remove(&key);
                        }
                        Err(e) => {
                            tracing::warn!(org = %s.org, schedule = %s.id, error = %e, "cannot record the schedule");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(org = %s.org, schedule = %s.id, error = %e, "cannot record the schedule's run; retrying");
                }
            }
        }
        fired
    }

    /// Applies the retention of schedule `id` to its backups on `cluster` (id).
    pub async fn apply_retention(&self, org: &str, id: &str, cluster: &str) {
        let Ok(s) = self.schedule(org, id) else { return };
        let q = Query {
            cluster: Some(cluster.to_owned()),
            location: Some(s.location.clone()),
            tags: vec![BackupRecord::schedule_tag(id)],
            ..Query::org(org)
        };
        let mine: Vec<BackupRecord> = match self.inner.catalog.list_all::<BackupRecord>(&q).await {
            Ok(all) => all,
            Err(e) => {
                tracing::warn!(%org, schedule = %id, error = %e, "cannot read backups for retention");
                return;
            }
        };
        for victim in retention(&mine, s.policy.retain) {
            let Some(b) = mine.iter().find(|b| b.id == victim) else {
                continue;
            };
            let has_data = b.phase != BackupPhase::Missed;
            let r = if has_data {
                self.delete_backup(org, &victim, false).await.map(|_| ())
            } else {
                self.inner
                    .catalog
                    .delete::<BackupRecord>(org, &victim)
                    .await
                    .map(|_| ())
            };
            match r {
                Ok(()) => {
                    tracing::info!(%org, schedule = %id, backup = %victim, "retention deletes a backup")
                }
                Err(e) => {
                    tracing::warn!(%org, schedule = %id, backup = %victim, error = %e, "retention cannot delete a backup")
                }
            }
        }
    }

    /// Requests a verify ("cloud file missing" check) of the location on every cluster it is
    /// assigned to.
    pub async fn request_verify(&self, org: &str, name: &str) -> Result<LocationRecord> {
        let mut loc = self.location(org, name)?;
        self.check_active(&loc)?;
        loc.verify_request += 1;
        self.save_location(loc, None).await
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

    /// How many synced backups org `org` holds: counted in the catalog once, then kept up to date
    /// by imports (deletes are not counted down, so the figure errs high; a count at the limit is
    /// taken again from the catalog before an import is refused).
    async fn synced_count(&self, org: &str, fresh: bool) -> Result<u64> {
        if !fresh && let Some(n) = self.inner.lock().synced_counts.get(org) {
            return Ok(*n);
        }
        let mut n = 0u64;
        let mut q = Query::org(org);
        loop {
            let page = self.inner.catalog.list::<BackupRecord>(&q).await?;
            n += page.items.iter().filter(|r| r.synced).count() as u64;
            match page.next {
                Some(next) => q.after = Some(next),
                None => break,
            }
        }
        self.inner.lock().synced_counts.insert(org.to_owned(), n);
        Ok(n)
    }

    /// Records the application backups a sync found (in `found.location`) that the catalog does
    /// not know yet, marked synced, with their origin cluster: at most
    /// `fleet.maxSyncedBackupsPerOrg` per org. When that limit stops the import, or the read of
    /// the agent's catalog stopped early, the location's sync status on the cluster says so.
    async fn import_synced(&self, key: &Key, found: Found) {
        let location = found.location.as_str();
        let limit = self.inner.config.fleet.max_synced_backups_per_org;
        let (cluster_name, loc_name) = {
            let st = self.inner.lock();
            (
                st.clusters
                    .get(key)
                    .map(|t| t.record.name.clone())
                    .unwrap_or_default(),
                st.locations
                    .get(&(key.0.clone(), location.to_owned()))
                    .map(|l| l.name.clone())
                    .unwrap_or_default(),
            )
        };
        let mut held = match self.synced_count(&key.0, false).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(org = %key.0, error = %e, "cannot count the synced backups of the org");
                return;
            }
        };
        let mut imported = 0u64;
        let mut new = 0u64;
        let mut recounted = false;
        for s in found.backups {
            // A backup this server made carries its record's name in its tag.
            if let Some(name) = s.tag.as_deref().and_then(|t| t.strip_prefix("app/")) {
                match self.inner.catalog.find::<BackupRecord>(&key.0, name).await {
                    Ok(Some(r)) if r.value.backup_id.as_deref().is_none_or(|id| id == s.id.as_str()) => {
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(org = %key.0, error = %e, "cannot read the catalog while importing");
                        return;
                    }
                }
            }
            let id = format!("synced-{}", s.id.as_str().to_ascii_lowercase());
            match self.inner.catalog.find::<BackupRecord>(&key.0, &id).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(org = %key.0, error = %e, "cannot read the catalog while importing");
                    return;
                }
            }
            new += 1;
            if held >= limit && !recounted {
                // The count errs high (deletes are not counted down): take it again once.
                recounted = true;
                match self.synced_count(&key.0, true).await {
                    Ok(n) => held = n,
                    Err(e) => {
                        tracing::warn!(org = %key.0, error = %e, "cannot count the synced backups of the org")
                    }
                }
            }
            if held >= limit {
                continue;
            }
            let created_ms = (s.created as i64).saturating_mul(1000);
            let record = BackupRecord {
                org: key.0.clone(),
                id,
                cluster: key.1.clone(),
                cluster_name: cluster_name.clone(),
                location: location.to_owned(),
                location_name: loc_name.clone(),
                namespaces: s.namespaces.clone(),
                phase: match s.status {
                    pxb_core::backup::BackupStatus::Completed => BackupPhase::Success,
                    _ => BackupPhase::PartialSuccess,
                },
                created_ms,
                completed_ms: Some(created_ms),
                objects: s.items,
                bytes: s.bytes,
                stored_bytes: s.stored_bytes,
                backup_id: Some(s.id.to_string()),
                synced: true,
                origin_cluster: s.cluster.clone(),
                ..BackupRecord::default()
            };
            match self.inner.catalog.put(&record, Some(0)).await {
                Ok(_) => {
                    imported += 1;
                    held += 1;
                    *self.inner.lock().synced_counts.entry(key.0.clone()).or_default() += 1;
                }
                Err(Error::Precondition { .. } | Error::AlreadyExists { .. }) => {}
                Err(e) => tracing::warn!(org = %key.0, error = %e, "cannot import a synced backup"),
            }
        }
        if imported > 0 {
            tracing::info!(org = %key.0, location = %loc_name, cluster = %cluster_name, imported, "synced backups imported");
        }
        self.inner.metrics.imported.fetch_add(imported, Ordering::Relaxed);
        let cut = found.problem.is_some();
        let limited = imported < new || (cut && held >= limit);
        if limited {
            tracing::warn!(org = %key.0, location = %loc_name, cluster = %cluster_name, imported, new, limit, "synced backups not imported: the org's limit is reached");
        }
        if limited || cut {
            self.note_sync(
                key,
                location,
                limited.then_some((imported, new, limit)),
                found.problem,
            )
            .await;
        }
    }

    /// Says in the last sync of `location` on cluster `key` that the org's import limit stopped
    /// the import (`(imported, new, limit)`: `imported` of the `new` backups read; when the read
    /// was cut short the sync's own count of backups found stands for what there is) and why the
    /// read of the agent's catalog stopped early (`problem`).
    async fn note_sync(
        &self,
        key: &Key,
        location: &str,
        limited: Option<(u64, u64, u64)>,
        problem: Option<String>,
    ) {
        let status = {
            let mut st = self.inner.lock();
            let id = LocationStatus::id_of(location, &key.1);
            let Some(status) = st.statuses.get_mut(&(key.0.clone(), id)) else {
                return;
            };
            let Some(run) = status.sync.as_mut() else {
                return;
            };
            let mut notes = Vec::new();
            if let Some((imported, new, limit)) = limited {
                let total = if problem.is_some() {
                    new.max(run.backups_found)
                } else {
                    new
                };
                notes.push(format!(
                    "import limit reached: {imported} of {total} imported (an org holds at most {limit} synced \
                     backups)"
                ));
            }
            if let Some(p) = problem {
                notes.push(format!("not every backup found was read: {p}"));
            }
            let note = notes.join("; ");
            run.message = Some(match run.message.take() {
                Some(m) if !m.is_empty() && !m.contains(&note) => format!("{m}; {note}"),
                _ => note,
            });
            let status = status.clone();
            st.dirty = true;
            status
        };
        if let Err(e) = self.inner.catalog.put(&status, None).await {
            tracing::warn!(org = %key.0, error = %e, "cannot record a sync's import limit");
        }
    }

    /// Marks the backups of `location` with what a verify found missing.
    pub(crate) async fn absorb_verify(&self, org: &str, location: &str, missing: &BTreeMap<String, u64>) {
        let q = Query {
            location: Some(location.to_owned()),
            ..Query::org(org)
        };
        let all = match self.inner.catalog.list_all::<BackupRecord>(&q).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(%org, error = %e, "cannot read backups to record a verify");
                return;
            }
        };
        let changed: Vec<BackupRecord> = all
            .into_iter()
            .filter_map(|mut b| {
                let now = b
                    .backup_id
                    .as_ref()
                    .and_then(|id| missing.get(id))
                    .copied()
                    .unwrap_or(0);
                (now != b.missing_objects).then(|| {
                    b.missing_objects = now;
                    b
                })
            })
            .collect();
        if let Err(e) = self.inner.catalog.put_all(&changed).await {
            tracing::warn!(%org, error = %e, "cannot record a verify's results");
        }
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
