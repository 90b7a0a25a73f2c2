//! Schedules, server side: created, listed, paused and deleted through the API; fired by the
//! clock seam; their retention applied.
//!
//! - Schedules fire from [`Server::fire_due_schedules`], driven by the clock seam. The slot moves
//!   forward in the same atomic catalog write that records the slot's backups, whose ids are
//!   derived from the slot: a restart can neither skip a slot nor record one twice.
//! - Retention runs when a scheduled backup finishes and after each firing.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use pxb_core::api::rest::{ScheduleRequest, UpdateSchedule};
use pxb_core::catalog::records::{BackupPhase, BackupRecord, ScheduleRecord, ScheduleRun};
use pxb_core::catalog::{Catalog, Query};
use pxb_core::clock::rfc3339;
use pxb_core::schedule::retention;
use pxb_core::{Error, Result};

use super::backups::{check_namespaces, dns_label, ms, stamp};
use super::state::{OrgState, Server};

impl Server {
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
        let change = UpdateSchedule {
            paused: Some(paused),
            ..UpdateSchedule::default()
        };
        self.update_schedule(org, id, &change).await
    }

    /// Changes a schedule: pauses or resumes it, gives it a new policy (its next slot computed
    /// from now), or both. Nothing to change: the schedule as it is.
    pub async fn update_schedule(
        &self,
        org: &str,
        id: &str,
        change: &UpdateSchedule,
    ) -> Result<ScheduleRecord> {
        if let Some(p) = &change.policy {
            p.check().map_err(Error::invalid)?;
        }
        let s = self.schedule(org, id)?;
        let same_pause = change.paused.is_none_or(|p| p == s.paused);
        if same_pause && change.policy.as_ref().is_none_or(|p| *p == s.policy) {
            return Ok(s);
        }
        let now = ms(self.inner.clock.now());
        let s = self
            .modify::<ScheduleRecord>(org, id, |s| {
                let resumed = change.paused == Some(false) && s.paused;
                if let Some(paused) = change.paused {
                    s.paused = paused;
                }
                let new_policy = change.policy.as_ref().filter(|p| **p != s.policy);
                if let Some(p) = new_policy {
                    s.policy = p.clone();
                }
                if resumed || new_policy.is_some() {
                    s.next_fire_ms = s.policy.next_after(now, s.created_ms).map_err(Error::invalid)?;
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
}
