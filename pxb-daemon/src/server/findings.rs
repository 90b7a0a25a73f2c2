//! What an agent finds in a location, taken in: the application backups a sync found (imported as
//! synced records, at most `fleet.maxSyncedBackupsPerOrg` per org; a sync that hits the limit
//! says `import limit reached` in its status), and the objects a verify found missing (asked for
//! by [`Server::request_verify`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use pxb_core::catalog::Query;
use pxb_core::catalog::records::{BackupPhase, BackupRecord, LocationRecord, LocationStatus};
use pxb_core::{Error, Result};

use super::operations::Found;
use super::state::{Key, Server};

impl Server {
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
    pub(super) async fn import_synced(&self, key: &Key, found: Found) {
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

    /// Requests a verify ("cloud file missing" check) of the location on every cluster it is
    /// assigned to.
    pub async fn request_verify(&self, org: &str, name: &str) -> Result<LocationRecord> {
        let mut loc = self.location(org, name)?;
        self.check_active(&loc)?;
        loc.verify_request += 1;
        self.save_location(loc, None).await
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
}
