//! Backup locations: created, changed and deleted through the API (clusters follow on their
//! next visit), their status per cluster, requests to validate and sync them, and their classic
//! credentials, sealed for their record.

use std::time::Duration;

use pxb_core::catalog::records::{LocationRecord, LocationStatus, Mode, RequestPhase, SyncRun};
use pxb_core::clock::rfc3339;
use pxb_core::{Error, Result};

use super::reconcile;
use super::state::{Inner, Server};

impl Server {
    /// The org's locations, ordered by name.
    pub fn locations(&self, org: &str) -> Vec<LocationRecord> {
        let st = self.inner.lock();
        let mut v: Vec<LocationRecord> = st.locations.values().filter(|l| l.org == org).cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The location named `name` of `org`.
    pub fn location(&self, org: &str, name: &str) -> Result<LocationRecord> {
        self.inner
            .lock()
            .locations
            .values()
            .find(|l| l.org == org && l.name == name)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("location {name} in org {org}")))
    }

    /// The per-cluster status of a location, ordered by cluster name.
    pub fn location_statuses(&self, org: &str, location_id: &str) -> Vec<LocationStatus> {
        let st = self.inner.lock();
        let mut v: Vec<LocationStatus> = st
            .statuses
            .values()
            .filter(|s| s.org == org && s.location == location_id)
            .cloned()
            .collect();
        v.sort_by(|a, b| (&a.cluster_name, &a.cluster).cmp(&(&b.cluster_name, &b.cluster)));
        v
    }

    /// Creates a location (idempotent for an identical request); `secret` is the classic
    /// credential (`accountKey`/`sasToken`, value), sealed before it is stored.
    pub async fn create_location(
        &self,
        mut loc: LocationRecord,
        secret: Option<(String, String)>,
    ) -> Result<LocationRecord> {
        if self.inner.config.mode == Mode::Federated && loc.mode == Mode::Classic {
            return Err(federated_refusal(&format!(
                "location {} cannot be classic",
                loc.name
            )));
        }
        if let Ok(existing) = self.location(&loc.org, &loc.name) {
            let same = existing.container == loc.container
                && existing.provider == loc.provider
                && existing.clusters == loc.clusters
                && existing.mode == loc.mode;
            return if same && secret.is_none() {
                Ok(existing)
            } else {
                Err(Error::already_exists(format!("location {} exists", loc.name)))
            };
        }
        match (loc.mode, secret) {
            (Mode::Federated, Some(_)) => {
                return Err(Error::invalid(
                    "a federated location takes no credential: agents use Workload Identity",
                ));
            }
            (Mode::Classic, None) => {
                return Err(Error::invalid(
                    "a classic location needs a credential (accountKey or sasToken)",
                ));
            }
            (Mode::Classic, Some((kind, value))) => self.inner.seal_credential(&mut loc, kind, &value)?,
            (Mode::Federated, None) => {}
        }
        self.inner.catalog.put(&loc, Some(0)).await?;
        self.inner
            .lock()
            .locations
            .insert((loc.org.clone(), loc.id.clone()), loc.clone());
        self.wake_org(&loc.org);
        Ok(loc)
    }

    /// Deletes a location. Its CRs are deleted from every cluster on the next visit, including
    /// clusters offline now (on their next successful visit).
    pub async fn delete_location(&self, org: &str, name: &str) -> Result<bool> {
        let Ok(loc) = self.location(org, name) else {
            return Ok(false);
        };
        let status_ids: Vec<String> = self
            .location_statuses(org, &loc.id)
            .into_iter()
            .map(|s| s.id)
            .collect();
        self.inner.catalog.delete::<LocationRecord>(org, &loc.id).await?;
        for id in &status_ids {
            self.inner.catalog.delete::<LocationStatus>(org, id).await?;
        }
        {
            let mut st = self.inner.lock();
            st.locations.remove(&(org.to_owned(), loc.id.clone()));
            for id in status_ids {
                st.statuses.remove(&(org.to_owned(), id));
            }
            st.dirty = true;
        }
        self.wake_org(org);
        Ok(true)
    }

    /// Changes a location's assignment and identity settings (and, for a classic location, its
    /// credential). Clusters get the change on their next visit; clusters no longer selected lose
    /// its CR (and Secret) then.
    pub async fn update_location(
        &self,
        org: &str,
        name: &str,
        change: impl FnOnce(&mut LocationRecord),
        secret: Option<(String, String)>,
    ) -> Result<LocationRecord> {
        let id = self.location(org, name)?.id;
        // The change applies to the stored record at its revision (memory may lag behind a write
        // that just landed).
        let stored = self.inner.catalog.get::<LocationRecord>(org, &id).await?;
        let revision = stored.revision;
        let mut loc = stored.value;
        change(&mut loc);
        if let Some((kind, value)) = secret {
            if self.inner.config.mode == Mode::Federated {
                return Err(federated_refusal(&format!(
                    "location {name} cannot take a credential"
                )));
            }
            if loc.mode != Mode::Classic {
                return Err(Error::invalid(
                    "a federated location takes no credential: agents use Workload Identity",
                ));
            }
            self.inner.seal_credential(&mut loc, kind, &value)?;
        }
        // Another update in between fails with a conflict instead of being overwritten.
        self.save_location(loc, Some(revision)).await
    }

    /// Stores a changed location (at `revision` when given), keeps it in memory and wakes the
    /// org's clusters to apply it.
    pub(crate) async fn save_location(
        &self,
        loc: LocationRecord,
        revision: Option<u64>,
    ) -> Result<LocationRecord> {
        self.inner.catalog.put(&loc, revision).await?;
        self.inner
            .lock()
            .locations
            .insert((loc.org.clone(), loc.id.clone()), loc.clone());
        self.wake_org(&loc.org);
        Ok(loc)
    }

    /// Asks every cluster of the location to validate it now.
    pub async fn request_validation(&self, org: &str, name: &str) -> Result<LocationRecord> {
        let loc = self.location(org, name)?;
        self.check_active(&loc)?;
        let id = loc.id;
        // Only the counter changes: a credential rotated meanwhile is kept.
        let loc = self
            .modify::<LocationRecord>(org, &id, |l| {
                l.validate_request += 1;
                Ok(())
            })
            .await?;
        let now = rfc3339(self.inner.clock.now());
        let mut st = self.inner.lock();
        st.locations.insert((org.to_owned(), loc.id.clone()), loc.clone());
        for s in st
            .statuses
            .values_mut()
            .filter(|s| s.org == org && s.location == loc.id)
        {
            s.validation.request = loc.validate_request;
            s.validation.requested_at = Some(now.clone());
        }
        drop(st);
        self.wake_org(org);
        Ok(loc)
    }

    /// Asks `cluster` (by name) to sync the location. Refused while a sync there holds its lease;
    /// a stalled one is superseded.
    pub async fn request_sync(&self, org: &str, name: &str, cluster: &str) -> Result<SyncRun> {
        let loc = self.location(org, name)?;
        self.check_active(&loc)?;
        let now = self.inner.clock.now();
        let (key, status) = {
            let st = self.inner.lock();
            let c = st
                .clusters
                .values()
                .find(|t| t.record.org == org && t.record.name == cluster && t.record.retired_at.is_none())
                .ok_or_else(|| Error::not_found(format!("cluster {cluster} in org {org}")))?;
            if let Some(reason) = self.inner.imported_inactive_reason(&c.record) {
                return Err(Error::precondition(format!(
                    "cluster {cluster} is inactive: {reason}"
                )));
            }
            let id = LocationStatus::id_of(&loc.id, &c.record.id);
            let status = st.statuses.get(&(org.to_owned(), id.clone())).cloned().ok_or_else(|| {
                Error::precondition(format!(
                    "location {name} is not assigned to cluster {cluster} yet (or the cluster was never reached)"
                ))
            })?;
            ((org.to_owned(), id), status)
        };
        let mut status = status;
        reconcile::apply_leases(
            &mut status,
            now,
            Duration::from_secs(self.inner.config.fleet.lease_secs),
        );
        if let Some(run) = &status.sync
            && run.phase.is_active()
        {
            return Err(Error::precondition(format!(
                "a sync of location {name} on cluster {cluster} is {:?} since {} (last heartbeat {}); \
                 wait for it, or for its lease to expire",
                run.phase,
                run.requested_at,
                run.heartbeat.as_deref().unwrap_or("none")
            )));
        }
        let previous = status.sync.as_ref().map(|r| (r.request, r.phase));
        let run = SyncRun {
            request: previous.map(|p| p.0).unwrap_or(0) + 1,
            phase: RequestPhase::Pending,
            requested_at: rfc3339(now),
            message: match previous {
                Some((n, RequestPhase::Stalled)) => Some(format!("supersedes stalled request {n}")),
                _ => None,
            },
            ..SyncRun::default()
        };
        status.sync = Some(run.clone());
        self.inner.catalog.put(&status, None).await?;
        let mut st = self.inner.lock();
        st.statuses.insert(key, status.clone());
        if let Some(t) = st.clusters.get_mut(&(org.to_owned(), status.cluster.clone())) {
            t.next_due = now;
        }
        st.dirty = true;
        drop(st);
        self.inner.wake.notify_one();
        Ok(run)
    }

    /// Why the server does not use `loc` now, if it does not: a classic location while the
    /// server runs in federated mode ("classic locations are inactive while the server runs in
    /// federated mode …").
    pub fn location_inactive_reason(&self, loc: &LocationRecord) -> Option<String> {
        self.inner.inactive_reason(loc)
    }

    /// Refuses work with `loc` while it is inactive, naming the location and why.
    pub(crate) fn check_active(&self, loc: &LocationRecord) -> Result<()> {
        match self.inner.inactive_reason(loc) {
            None => Ok(()),
            Some(reason) => Err(Error::precondition(format!(
                "location {} is inactive: {reason}",
                loc.name
            ))),
        }
    }
}

/// Why a classic location is inactive while the server runs in federated mode.
pub(crate) const INACTIVE_CLASSIC: &str = "classic locations are inactive while the server runs in federated mode \
     (mode: federated): the credential stays sealed in the catalog and is sent to no cluster; run the \
     server with mode: classic (PXB_MODE=classic) and the same secrets key to use it again, or delete it";

/// The refusal of a federated-mode server to store a cloud credential: `what` says what was
/// asked (e.g. "location x cannot be classic").
fn federated_refusal(what: &str) -> Error {
    federated_refusal_of(
        "cloud credential",
        what,
        "create a federated location (\"mode\": \"federated\"; agents use Workload Identity)",
    )
}

/// The refusal of a federated-mode server to store a credential (`409`): which kind it would
/// have stored, what was asked, what to do instead, and how to change the mode.
pub(crate) fn federated_refusal_of(credential: &str, what: &str, instead: &str) -> Error {
    Error::precondition(format!(
        "the server runs in federated mode (mode: federated) and stores no {credential}, so {what}; \
         {instead}, or run the server with mode: classic (PXB_MODE=classic) and a secrets key"
    ))
}

impl Inner {
    /// Why the server does not use `l` now, if it does not: a classic location while the server
    /// runs in federated mode. An inactive location is kept (its credential sealed) and can be
    /// listed, read, changed (without a credential) and deleted; it is sent to no cluster, and
    /// backups, restores, validations, syncs and verifies with it are refused.
    pub(crate) fn inactive_reason(&self, l: &LocationRecord) -> Option<String> {
        (self.config.mode == Mode::Federated && l.mode == Mode::Classic).then(|| INACTIVE_CLASSIC.to_owned())
    }

    /// The context a location's credential is sealed for, so it opens for no other record.
    fn credential_context(l: &LocationRecord) -> String {
        format!("{}/location/{}", l.org, l.id)
    }

    /// Seals `value` as the classic credential of `loc`.
    fn seal_credential(&self, loc: &mut LocationRecord, kind: String, value: &str) -> Result<()> {
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            Error::precondition("classic locations need a secrets key (secrets.keyFile or PXB_SECRETS_KEY)")
        })?;
        let sealed = sealer.seal(value.as_bytes(), &Self::credential_context(loc))?;
        loc.credential = Some(pxb_core::catalog::records::SealedCredential { kind, sealed });
        Ok(())
    }

    /// The opened classic secret of `l`, or `None` for a federated location.
    pub(crate) fn open_secret(&self, l: &LocationRecord) -> Result<Option<(String, Vec<u8>)>> {
        let Some(c) = &l.credential else {
            return Ok(None);
        };
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            Error::precondition(format!(
                "location {} has a sealed credential and the server has no secrets key",
                l.name
            ))
        })?;
        let plain = sealer.open(&c.sealed, &Self::credential_context(l))?;
        Ok(Some((c.kind.clone(), plain)))
    }
}
