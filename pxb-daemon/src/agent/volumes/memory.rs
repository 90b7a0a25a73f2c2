//! [`MemoryVolumes`]: the volume seam's in-memory twin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use pxb_core::{Error, Result};
use serde_json::{Value, json};

use super::{Provisioned, VolumeDriver, bound_local_path, claimed_volume, provision_local};

/// The in-memory twin of [`VolumeDriver`], suitable for tests: claims and PersistentVolumes held
/// in memory (no Kubernetes API), their data in ordinary directories, with the refusals of
/// [`LocalPathDriver`](super::LocalPathDriver): a claim that is not bound, a volume whose
/// `claimRef` does not point back at the claim, invalid names at restore.
///
/// Restores provision a new directory under the restore root, and the restored claim is bound to
/// it at once (the twin binds by itself, so [`Provisioned::volume`] is `None`).
#[derive(Debug, Default)]
pub struct MemoryVolumes {
    state: Mutex<State>,
    restore_root: PathBuf,
}

#[derive(Debug, Default)]
struct State {
    claims: BTreeMap<(String, String), PersistentVolumeClaim>,
    volumes: BTreeMap<String, PersistentVolume>,
    uids: u64,
}

impl MemoryVolumes {
    /// A twin without claims; restores go under `restore_root`.
    pub fn new(restore_root: impl Into<PathBuf>) -> Self {
        Self {
            state: Mutex::default(),
            restore_root: restore_root.into(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where restores are provisioned.
    pub fn restore_root(&self) -> &Path {
        &self.restore_root
    }

    /// Declares a claim `namespace/claim` whose data is in `dir`: the claim, bound, and a
    /// `hostPath` volume bound back to it, as the PersistentVolume controller leaves them. An
    /// earlier claim of that name is replaced.
    pub fn insert(&self, namespace: &str, claim: &str, dir: impl Into<PathBuf>) {
        let dir: PathBuf = dir.into();
        let volume = crate::names::object_name(&format!("pv-{namespace}-{claim}"));
        let mut state = self.state();
        state.uids += 1;
        let uid = format!("memory-{}", state.uids);
        let pvc = json!({
            "metadata": {"name": claim, "namespace": namespace, "uid": uid},
            "spec": {"volumeName": volume},
            "status": {"phase": "Bound"},
        });
        let pv = json!({
            "metadata": {"name": volume},
            "spec": {"hostPath": {"path": dir.to_string_lossy()},
                     "claimRef": {"kind": "PersistentVolumeClaim", "namespace": namespace, "name": claim, "uid": uid}},
        });
        // Both parse: they are built from strings only.
        if let (Ok(pvc), Ok(pv)) = (serde_json::from_value(pvc), serde_json::from_value(pv)) {
            state.claims.insert((namespace.into(), claim.into()), pvc);
            state.volumes.insert(volume, pv);
        }
    }

    /// Adds a claim as the API server holds it (status included), replacing one of the same
    /// namespace and name; a claim without a uid is given one. Returns its uid.
    pub fn add_claim(&self, mut claim: PersistentVolumeClaim) -> Result<String> {
        let (Some(namespace), Some(name)) = (claim.metadata.namespace.clone(), claim.metadata.name.clone())
        else {
            return Err(Error::invalid("a claim needs a namespace and a name"));
        };
        let mut state = self.state();
        let uid = match claim.metadata.uid.clone().filter(|u| !u.is_empty()) {
            Some(uid) => uid,
            None => {
                state.uids += 1;
                format!("memory-{}", state.uids)
            }
        };
        claim.metadata.uid = Some(uid.clone());
        state.claims.insert((namespace, name), claim);
        Ok(uid)
    }

    /// Adds a PersistentVolume, replacing one of the same name.
    pub fn add_volume(&self, volume: PersistentVolume) -> Result<()> {
        let name = volume
            .metadata
            .name
            .clone()
            .ok_or_else(|| Error::invalid("a volume needs a name"))?;
        self.state().volumes.insert(name, volume);
        Ok(())
    }
}

#[async_trait]
impl VolumeDriver for MemoryVolumes {
    async fn source(&self, namespace: &str, claim: &str) -> Result<PathBuf> {
        let (pvc, pv) = {
            let state = self.state();
            let pvc = state
                .claims
                .get(&(namespace.to_owned(), claim.to_owned()))
                .cloned()
                .ok_or_else(|| Error::not_found(format!("no claim {namespace}/{claim}")))?;
            let volume = claimed_volume(namespace, claim, &pvc)?;
            let pv = state
                .volumes
                .get(&volume)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("no volume {volume}")))?;
            (pvc, pv)
        };
        bound_local_path(namespace, &pvc, &pv)
    }

    async fn provision(&self, namespace: &str, claim: &Value) -> Result<Provisioned> {
        let provisioned = provision_local(&self.restore_root, namespace, claim)?;
        let name = claim
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        self.insert(namespace, name, &provisioned.dir);
        Ok(Provisioned {
            dir: provisioned.dir,
            volume: None,
            volume_name: None,
        })
    }
}
