//! The `VolumeDriver` seam: where a claim's data is, and where a restored claim's data goes.
//!
//! [`LocalPathDriver`] serves volumes backed by a node-local directory (`hostPath` or `local`
//! PersistentVolumes, as local-path provisioners and the simulator create them); the agent must
//! see those directories (it mounts the provisioner's base directory). Restores provision a new
//! directory and a PersistentVolume bound to the restored claim. CSI snapshots come later.
//! [`StaticVolumes`] is the in-memory twin for tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use pxb_core::{Error, Result};
use serde_json::{Value, json};

/// A freshly provisioned volume for a restored claim.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// Where to restore the data.
    pub dir: PathBuf,
    /// The PersistentVolume to create, bound to the claim (`None` if the driver binds by itself).
    pub volume: Option<Value>,
    /// Its name (what the restored claim's `spec.volumeName` must say).
    pub volume_name: Option<String>,
}

/// Finds and provisions volume data for backups and restores.
#[async_trait]
pub trait VolumeDriver: Send + Sync + std::fmt::Debug {
    /// The directory holding the data of a bound claim.
    async fn source(&self, namespace: &str, claim: &str) -> Result<PathBuf>;

    /// A new, empty volume for `claim` (the claim object from the backup, already mapped to
    /// its target namespace and storage class).
    async fn provision(&self, namespace: &str, claim: &Value) -> Result<Provisioned>;
}

/// Volumes backed by node-local directories (see the module docs).
#[derive(Clone)]
pub struct LocalPathDriver {
    client: kube::Client,
    restore_root: PathBuf,
}

impl std::fmt::Debug for LocalPathDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPathDriver")
            .field("restore_root", &self.restore_root)
            .finish_non_exhaustive()
    }
}

impl LocalPathDriver {
    /// A driver reading claims through `client` and provisioning restores under `restore_root`.
    pub fn new(client: kube::Client, restore_root: impl Into<PathBuf>) -> Self {
        Self {
            client,
            restore_root: restore_root.into(),
        }
    }
}

#[async_trait]
impl VolumeDriver for LocalPathDriver {
    async fn source(&self, namespace: &str, claim: &str) -> Result<PathBuf> {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let pvc = claims
            .get(claim)
            .await
            .map_err(|e| pxb_gardener::map_kube_error(&format!("reading claim {namespace}/{claim}"), e))?;
        let volume = pvc
            .spec
            .and_then(|s| s.volume_name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::precondition(format!("claim {namespace}/{claim} is not bound to a volume"))
            })?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get(&volume)
            .await
            .map_err(|e| pxb_gardener::map_kube_error(&format!("reading volume {volume}"), e))?;
        let spec = pv.spec.unwrap_or_default();
        let path = spec
            .host_path
            .map(|h| h.path)
            .or(spec.local.map(|l| l.path))
            .ok_or_else(|| {
                Error::precondition(format!(
                    "volume {volume} of claim {namespace}/{claim} is not a local-path volume (hostPath or local); \
                     only those are supported so far"
                ))
            })?;
        let path = PathBuf::from(path);
        if !path.is_dir() {
            return Err(Error::unavailable(format!(
                "the directory {} of volume {volume} is not visible to the agent",
                path.display()
            )));
        }
        Ok(path)
    }

    async fn provision(&self, namespace: &str, claim: &Value) -> Result<Provisioned> {
        let name = claim
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("a claim in the backup has no name"))?;
        let suffix = &pxb_core::backup::BackupId::new(std::time::SystemTime::now()).to_string();
        let suffix = suffix.rsplit('-').next().unwrap_or("0");
        let dir = self.restore_root.join(namespace).join(format!("{name}-{suffix}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let mut volume_name = format!("pxb-{namespace}-{name}-{suffix}");
        volume_name.truncate(253);
        let storage = claim
            .pointer("/spec/resources/requests/storage")
            .cloned()
            .unwrap_or_else(|| "1Gi".into());
        let mut spec = json!({
            "capacity": {"storage": storage},
            "accessModes": claim.pointer("/spec/accessModes").cloned().unwrap_or_else(|| json!(["ReadWriteOnce"])),
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": dir.to_string_lossy(), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": name},
        });
        if let Some(sc) = claim.pointer("/spec/storageClassName") {
            spec["storageClassName"] = sc.clone();
        }
        let volume = json!({"apiVersion": "v1", "kind": "PersistentVolume",
                            "metadata": {"name": volume_name, "labels": {"pxb.io/restored": "true"}},
                            "spec": spec});
        Ok(Provisioned {
            dir,
            volume: Some(volume),
            volume_name: Some(volume_name),
        })
    }
}

/// The in-memory twin: claims mapped to directories by hand; restores go under a root.
#[derive(Debug, Default)]
pub struct StaticVolumes {
    sources: Mutex<HashMap<(String, String), PathBuf>>,
    restore_root: PathBuf,
}

impl StaticVolumes {
    /// Restores go under `restore_root`.
    pub fn new(restore_root: impl Into<PathBuf>) -> Self {
        Self {
            sources: Mutex::new(HashMap::new()),
            restore_root: restore_root.into(),
        }
    }

    /// Declares where a claim's data is.
    pub fn insert(&self, namespace: &str, claim: &str, dir: impl Into<PathBuf>) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((namespace.into(), claim.into()), dir.into());
    }
}

#[async_trait]
impl VolumeDriver for StaticVolumes {
    async fn source(&self, namespace: &str, claim: &str) -> Result<PathBuf> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(namespace.to_owned(), claim.to_owned()))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("no volume for claim {namespace}/{claim}")))
    }

    async fn provision(&self, namespace: &str, claim: &Value) -> Result<Provisioned> {
        let name = claim
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("a claim in the backup has no name"))?;
        let dir = self.restore_root.join(namespace).join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        self.insert(namespace, name, &dir);
        Ok(Provisioned {
            dir,
            volume: None,
            volume_name: None,
        })
    }
}
