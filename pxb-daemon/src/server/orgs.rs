//! Orgs: loaded one by one from the catalog at start (an org that does not load is
//! [`OrgState::Degraded`] and skipped), created and changed through the API.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use pxb_core::catalog::records::{
    ClusterRecord, ClusterState, DiscoveryConfig, LocationRecord, LocationStatus, Org,
};
use pxb_core::catalog::{Catalog, Kind, Query};
use pxb_core::cluster::ClusterProvider;
use pxb_core::{Error, Result};

use super::state::{OrgState, Server, State, Tracked, cluster_key};

impl Server {
    /// Loads every org's state from the catalog (at start).
    pub(crate) async fn load(&self) -> Result<()> {
        let (state, orgs) = self.read_catalog().await?;
        *self.inner.lock() = state;
        *self.inner.orgs_mut() = orgs;
        Ok(())
    }

    /// Reads every org's state from the catalog again and serves it, replacing what was held:
    /// a standby replica's view, kept fresh from the database. Only for a server whose loops do
    /// not run (what a running discovery or visit keeps in memory would be dropped).
    pub(crate) async fn refresh(&self) -> Result<()> {
        self.load().await?;
        self.rebuild_snapshot();
        Ok(())
    }

    /// Reads the state of every org from the catalog into a fresh [`State`]: an org that does
    /// not load is [`OrgState::Degraded`], logged, and none of its records are taken.
    pub(crate) async fn read_catalog(&self) -> Result<(State, BTreeMap<String, OrgState>)> {
        let store = self.inner.catalog.store().clone();
        let mut q = Query {
            limit: pxb_core::catalog::MAX_PAGE,
            ..Query::default()
        };
        let mut entries = Vec::new();
        loop {
            let page = store.list(Kind::Org, &q).await?;
            entries.extend(page.items);
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        let mut state = State::default();
        let mut orgs = BTreeMap::new();
        for entry in entries {
            let org_id = entry.org.clone();
            let loaded = match Catalog::decode::<Org>(&entry) {
                Ok(org) => self.load_org(org.value, &mut state).await,
                Err(e) => Err(e),
            };
            match loaded {
                Ok(org) => {
                    orgs.insert(org_id, OrgState::Ready(org));
                }
                Err(e) => {
                    tracing::error!(org = %org_id, error = %e, "cannot load the org; it is degraded and not served");
                    orgs.insert(
                        org_id,
                        OrgState::Degraded {
                            reason: e.to_string(),
                        },
                    );
                }
            }
        }
        state.dirty = true;
        Ok((state, orgs))
    }

    /// Reads `org`'s records into `state`; nothing is added when one of them does not load.
    async fn load_org(&self, org: Org, state: &mut State) -> Result<Org> {
        let c = &self.inner.catalog;
        let q = Query::org(&org.id);
        let discoveries = c.list_all::<DiscoveryConfig>(&q).await?;
        let mut clusters = c.list_all::<ClusterRecord>(&q).await?;
        let locations = c.list_all::<LocationRecord>(&q).await?;
        let statuses = c.list_all::<LocationStatus>(&q).await?;
        // Inactive locations (classic ones in federated mode) keep their credential sealed,
        // unopened: the server may not even hold the key now.
        for l in locations
            .iter()
            .filter(|l| self.inner.inactive_reason(l).is_none())
        {
            self.inner.open_secret(l)?;
        }
        let operations = self.read_operations(&org.id).await?;
        // Imported clusters are opened likewise, but for the inactive ones (in federated mode):
        // those are kept without a provider, so never visited, and listed with why.
        let mut imported: HashMap<String, Arc<dyn ClusterProvider>> = HashMap::new();
        for cl in clusters.iter_mut().filter(|c| c.retired_at.is_none()) {
            if let Some(reason) = self.inner.imported_inactive_reason(cl) {
                cl.status.state = ClusterState::Ineligible;
                cl.status.message = Some(reason);
            } else if cl.sealed_kubeconfig.is_some() {
                imported.insert(cl.id.clone(), self.inner.imported_provider(cl)?);
            }
        }
        let now = self.inner.clock.now();
        operations.apply(state);
        for d in discoveries {
            state.discoveries.insert((d.org.clone(), d.id.clone()), d);
        }
        for cl in clusters {
            let provider = imported.remove(&cl.id);
            state.clusters.insert(
                cluster_key(&cl),
                Tracked {
                    record: cl,
                    provider,
                    next_due: now,
                    failures: 0,
                    busy: false,
                },
            );
        }
        for l in locations {
            state.locations.insert((l.org.clone(), l.id.clone()), l);
        }
        for s in statuses {
            state.statuses.insert((s.org.clone(), s.id.clone()), s);
        }
        Ok(org)
    }

    /// Creates an org (idempotent for an identical request).
    pub async fn create_org(&self, org: Org) -> Result<Org> {
        if let Some(existing) = self.inner.orgs().get(&org.id) {
            return match existing {
                OrgState::Ready(o)
                    if o.display_name == org.display_name && o.access == org.access && o.mode == org.mode =>
                {
                    Ok(o.clone())
                }
                _ => Err(Error::already_exists(format!("org {} exists", org.id))),
            };
        }
        self.inner.catalog.put(&org, Some(0)).await?;
        self.inner
            .orgs_mut()
            .insert(org.id.clone(), OrgState::Ready(org.clone()));
        Ok(org)
    }

    /// Changes an org's display name, default mode or role bindings.
    pub async fn update_org(&self, id: &str, change: impl FnOnce(&mut Org)) -> Result<Org> {
        let mut org = self.org(id)?;
        let revision = self.inner.catalog.get::<Org>(id, id).await?.revision;
        change(&mut org);
        self.inner.catalog.put(&org, Some(revision)).await?;
        self.inner
            .orgs_mut()
            .insert(org.id.clone(), OrgState::Ready(org.clone()));
        Ok(org)
    }
}
