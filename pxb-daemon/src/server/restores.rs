//! Restores, server side: a restore request checked (role, namespaces, the backup's phase and
//! location, the target cluster) and recorded for its cluster's next visit; one restore.

use pxb_core::api::rest::RestoreRequest;
use pxb_core::catalog::records::{RestorePhase, RestoreRecord};
use pxb_core::{Error, Result};

use super::backups::{dns_label, ms, stamp, unable};
use super::state::Server;

impl Server {
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
                existing_resource_policy: req.existing_resource_policy,
                view: b.view,
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
}
