//! The cluster inventory beside discovery: clusters tracked with a provider of their own, and
//! clusters imported by a client-certificate kubeconfig (classic mode), sealed in the catalog.
//! In federated mode imports are refused, and clusters imported earlier are kept but inactive
//! ([`Inner::imported_inactive_reason`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pxb_core::catalog::records::{ClusterRecord, ClusterState, ClusterStatus, Mode};
use pxb_core::clock::rfc3339;
use pxb_core::cluster::{ClusterId, ClusterInfo, ClusterProvider};
use pxb_core::{Error, Result};

use super::state::{Inner, Server, Tracked, cluster_key};

/// How long an imported kubeconfig is trusted to be valid; the cluster itself rejects it once its
/// certificate expires, and the cluster turns Unreachable with the reason.
const IMPORTED_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Server {
    /// Tracks a cluster reached through `provider` (an imported cluster, or tests); the record is
    /// stored.
    pub async fn add_cluster(&self, record: ClusterRecord, provider: Arc<dyn ClusterProvider>) -> Result<()> {
        self.inner.catalog.put(&record, None).await?;
        let now = self.inner.clock.now();
        let mut st = self.inner.lock();
        st.clusters.insert(
            cluster_key(&record),
            Tracked {
                record,
                provider: Some(provider),
                next_due: now,
                failures: 0,
                busy: false,
            },
        );
        st.dirty = true;
        drop(st);
        self.inner.wake.notify_one();
        Ok(())
    }

    /// Imports a cluster by a client-certificate kubeconfig (classic mode). The kubeconfig is
    /// sealed in the catalog and opened into memory only; the cluster is visited like any other.
    /// Refused in federated mode, which stores no credential, secrets key or not.
    pub async fn import_cluster(&self, org: &str, name: &str, kubeconfig: &str) -> Result<ClusterRecord> {
        if self.inner.config.mode == Mode::Federated {
            return Err(super::locations::federated_refusal_of(
                "cluster credential",
                &format!("cluster {name} cannot be imported by kubeconfig"),
                "let discovery find it (the server asks the garden for short-lived kubeconfigs and keeps \
                 them in memory only)",
            ));
        }
        let sealer = self.inner.sealer.as_ref().ok_or_else(|| {
            Error::precondition("importing clusters needs a secrets key (secrets.keyFile or PXB_SECRETS_KEY)")
        })?;
        let now = self.inner.clock.now();
        // Checked before anything is stored.
        super::kubeconfig::parse_access(kubeconfig, now, now + IMPORTED_VALIDITY)?;
        if self
            .clusters(org)
            .iter()
            .any(|c| c.name == name && c.retired_at.is_none())
        {
            return Err(Error::already_exists(format!(
                "cluster {name} exists in org {org}"
            )));
        }
        let id = format!("imported-{name}");
        let record = ClusterRecord {
            org: org.to_owned(),
            id: id.clone(),
            name: name.to_owned(),
            source: "imported".into(),
            discovery: None,
            namespace: None,
            provider_type: String::new(),
            kubernetes_version: String::new(),
            region: String::new(),
            labels: BTreeMap::new(),
            ineligible: None,
            hibernated: false,
            service_account_issuer: None,
            first_seen: rfc3339(now),
            retired_at: None,
            sealed_kubeconfig: Some(sealer.seal(kubeconfig.as_bytes(), &format!("{org}/cluster/{id}"))?),
            status: ClusterStatus::default(),
        };
        let provider = self.inner.imported_provider(&record)?;
        self.add_cluster(record.clone(), provider).await?;
        Ok(record)
    }

    /// Removes an imported cluster: its kubeconfig is forgotten and the record retired (its
    /// backups stay listed). Discovered clusters leave with their shoot.
    pub async fn remove_imported(&self, org: &str, name: &str) -> Result<bool> {
        let now = rfc3339(self.inner.clock.now());
        let record = {
            let mut st = self.inner.lock();
            let Some(t) = st
                .clusters
                .values_mut()
                .find(|t| t.record.org == org && t.record.name == name && t.record.retired_at.is_none())
            else {
                return Ok(false);
            };
            if t.record.source != "imported" {
                return Err(Error::precondition(format!(
                    "cluster {name} comes from discovery {}; it leaves when its shoot is deleted",
                    t.record.discovery.as_deref().unwrap_or("?")
                )));
            }
            t.record.retired_at = Some(now);
            t.record.sealed_kubeconfig = None;
            t.record.status.state = ClusterState::Retired;
            t.record.status.message = Some("removed; its backups stay listed".into());
            t.provider = None;
            let record = t.record.clone();
            st.dirty = true;
            record
        };
        self.inner.catalog.put(&record, None).await?;
        Ok(true)
    }

    /// The org's clusters (from memory), ordered by name.
    pub fn clusters(&self, org: &str) -> Vec<ClusterRecord> {
        let st = self.inner.lock();
        let mut v: Vec<ClusterRecord> = st
            .clusters
            .values()
            .filter(|t| t.record.org == org)
            .map(|t| t.record.clone())
            .collect();
        v.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        v
    }
}

/// Why an imported cluster is inactive while the server runs in federated mode.
pub(crate) const INACTIVE_IMPORTED: &str = "imported clusters are inactive while the server runs in federated \
     mode (mode: federated): the kubeconfig stays sealed in the catalog, unopened, and the cluster is not \
     visited (what the server wrote there stays as it was); run the server with mode: classic \
     (PXB_MODE=classic) and the same secrets key to use it again, or remove it";

impl Inner {
    /// Why the server does not use the imported cluster `c` now, if it does not: its kubeconfig
    /// is a stored credential, which federated mode does not use. Such a cluster is loaded
    /// without opening its kubeconfig (the server may not even hold the key now) and without a
    /// provider, so it is never visited; it is listed `Ineligible` with the reason, backups and
    /// restores on it are refused, and it can be removed. Back in classic mode it is active again.
    pub(crate) fn imported_inactive_reason(&self, c: &ClusterRecord) -> Option<String> {
        (self.config.mode == Mode::Federated && c.sealed_kubeconfig.is_some() && c.retired_at.is_none())
            .then(|| INACTIVE_IMPORTED.to_owned())
    }

    /// A provider handing out the opened kubeconfig of an imported cluster.
    pub(crate) fn imported_provider(&self, c: &ClusterRecord) -> Result<Arc<dyn ClusterProvider>> {
        let sealed = c
            .sealed_kubeconfig
            .as_ref()
            .ok_or_else(|| Error::invalid(format!("cluster {} has no kubeconfig", c.name)))?;
        let sealer = self.sealer.as_ref().ok_or_else(|| {
            Error::precondition(format!(
                "cluster {} has a sealed kubeconfig and the server has no secrets key",
                c.name
            ))
        })?;
        let yaml = sealer.open(sealed, &format!("{}/cluster/{}", c.org, c.id))?;
        let yaml = String::from_utf8(yaml)
            .map_err(|_| Error::corrupt(format!("the kubeconfig of {} is not text", c.name)))?;
        let now = self.clock.now();
        let access = super::kubeconfig::parse_access(&yaml, now, now + IMPORTED_VALIDITY)?;
        let p = pxb_core::cluster::StaticClusters::new();
        p.insert(
            ClusterInfo::new(ClusterId(c.id.clone()), c.name.clone(), String::new())
                .with_provider_type("imported")
                .with_labels(c.labels.clone()),
            Some(access),
        );
        Ok(Arc::new(p))
    }
}
