//! The `VolumeDriver` seam: where a claim's data is, and where a restored claim's data goes.
//!
//! [`LocalPathDriver`] serves volumes backed by a node-local directory (`hostPath` or `local`
//! PersistentVolumes, as local-path provisioners and the simulator create them); the agent must
//! see those directories (it mounts the provisioner's base directory). Restores provision a new
//! directory and a PersistentVolume bound to the restored claim. CSI snapshots come later.
//!
//! A backup reads a claim's volume only when the volume is bound to that claim
//! ([`check_binding`]: its `claimRef` names the claim and its uid), and a restore provisions only
//! under its root, for valid namespace and claim names ([`check_claim_names`]).
//! [`MemoryVolumes`] is the in-memory twin for tests: claims and volumes held in memory, their
//! data in directories, with the same refusals. The `conformance` module (feature
//! `conformance`) is the suite every driver runs.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::Api;
use pxb_core::{Error, Result};
use serde_json::{Value, json};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod memory;

pub use memory::MemoryVolumes;

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

/// Refuses a namespace or claim name that is not a valid Kubernetes name. Both come from a backup
/// (which a tenant may have written) and become path segments of the directory a restore
/// provisions, so `..`, `/` or an absolute path must never get that far.
pub fn check_claim_names(namespace: &str, claim: &str) -> Result<()> {
    if !crate::names::is_dns_label(namespace) {
        return Err(Error::invalid(format!(
            "the namespace {namespace:?} of a claim in the backup is not a valid namespace name"
        )));
    }
    if !crate::names::is_subdomain(claim) {
        return Err(Error::invalid(format!(
            "the claim name {claim:?} in the backup is not a valid object name"
        )));
    }
    Ok(())
}

/// Checks that `pv` is the volume bound to the claim `pvc` of `namespace`: the claim is `Bound`
/// and names the volume, and the volume's `claimRef` points back at this claim (namespace, name
/// and uid). A claim may name any volume in `spec.volumeName`; only the binding the volume itself
/// records proves that the data is the claim's.
pub fn check_binding(namespace: &str, pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> Result<()> {
    let claim = pvc.metadata.name.as_deref().unwrap_or_default();
    let volume = pv.metadata.name.as_deref().unwrap_or_default();
    let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
    if phase != "Bound" {
        return Err(Error::precondition(format!(
            "claim {namespace}/{claim} is not bound (phase {phase:?}); only bound claims are backed up"
        )));
    }
    if pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()) != Some(volume) {
        return Err(Error::precondition(format!(
            "claim {namespace}/{claim} does not name volume {volume}"
        )));
    }
    let claim_ref = pv.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let refused = |why: &str| {
        Error::permission_denied(format!(
            "refusing to back up claim {namespace}/{claim}: volume {volume} is not bound to it ({why})"
        ))
    };
    let Some(r) = claim_ref else {
        return Err(refused("the volume has no claimRef"));
    };
    if r.namespace.as_deref() != Some(namespace) || r.name.as_deref() != Some(claim) {
        return Err(refused(&format!(
            "its claimRef is {}/{}",
            r.namespace.as_deref().unwrap_or(""),
            r.name.as_deref().unwrap_or("")
        )));
    }
    let uid = pvc.metadata.uid.as_deref().unwrap_or_default();
    if uid.is_empty() || r.uid.as_deref() != Some(uid) {
        return Err(refused(&format!(
            "its claimRef has uid {:?}, the claim {uid:?}",
            r.uid.as_deref().unwrap_or("")
        )));
    }
    Ok(())
}

/// The volume a claim names in `spec.volumeName`; a claim naming none is not bound.
fn claimed_volume(namespace: &str, claim: &str, pvc: &PersistentVolumeClaim) -> Result<String> {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::precondition(format!("claim {namespace}/{claim} is not bound to a volume")))
}

/// The data directory of the local-path volume `pv` of the claim `pvc` of `namespace`: nothing of
/// the volume is read unless it is this claim's ([`check_binding`]); then its `hostPath` or
/// `local` path, which must be a directory the agent sees.
fn bound_local_path(namespace: &str, pvc: &PersistentVolumeClaim, pv: &PersistentVolume) -> Result<PathBuf> {
    check_binding(namespace, pvc, pv)?;
    let claim = pvc.metadata.name.as_deref().unwrap_or_default();
    let volume = pv.metadata.name.as_deref().unwrap_or_default();
    let spec = pv.spec.clone().unwrap_or_default();
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

/// A new, empty directory for the restored `claim` of `namespace` under `root` (never one that
/// exists already, and so nothing a tenant left in it), with the PersistentVolume that binds it
/// to the claim; the names are checked first, so nothing is created for invalid ones.
fn provision_local(root: &Path, namespace: &str, claim: &Value) -> Result<Provisioned> {
    let name = claim
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::invalid("a claim in the backup has no name"))?;
    check_claim_names(namespace, name)?;
    let suffix = &pxb_core::backup::BackupId::new(std::time::SystemTime::now()).to_string();
    let suffix = suffix.rsplit('-').next().unwrap_or("0");
    let parent = root.join(namespace);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    let dir = parent.join(format!("{name}-{suffix}"));
    std::fs::create_dir(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    // Cut or hashed by the one rule for names, so it is valid whatever the claim's name.
    let volume_name = crate::names::object_name(&format!("pxb-{namespace}-{name}-{suffix}"));
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
        let pvc = claims.get(claim).await.map_err(|e| {
            crate::kube_error::map_kube_error(&format!("reading claim {namespace}/{claim}"), e)
        })?;
        let volume = claimed_volume(namespace, claim, &pvc)?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        let pv = pvs
            .get(&volume)
            .await
            .map_err(|e| crate::kube_error::map_kube_error(&format!("reading volume {volume}"), e))?;
        bound_local_path(namespace, &pvc, &pv)
    }

    async fn provision(&self, namespace: &str, claim: &Value) -> Result<Provisioned> {
        provision_local(&self.restore_root, namespace, claim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack 1: a backup's namespace and claim names become directories of a restore; hostile
    /// ones must not provision (or create anything) outside the restore root.
    #[tokio::test]
    async fn restores_never_provision_outside_the_restore_root() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("restores");
        let client = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().expect("url")))
            .expect("client");
        let local = LocalPathDriver::new(client, &root);
        let fixed = MemoryVolumes::new(&root);
        let drivers: [&dyn VolumeDriver; 2] = [&local, &fixed];
        let outside = tmp.path().to_string_lossy().into_owned();
        for (ns, claim) in [
            ("..", "data"),
            ("shop", "../../etc"),
            ("shop", "../../../escaped"),
            ("shop", "a/b"),
            ("shop", "."),
            ("shop", ".."),
            ("shop", outside.as_str()),
            ("/etc", "data"),
            ("", "data"),
        ] {
            for driver in drivers {
                let claim_obj = json!({"metadata": {"name": claim}});
                let result = driver.provision(ns, &claim_obj).await;
                let mut around: Vec<String> = std::fs::read_dir(tmp.path())
                    .expect("list")
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                around.retain(|n| n != "restores");
                assert!(
                    around.is_empty(),
                    "{ns:?}/{claim:?}: created {around:?} outside: {result:?}"
                );
                let err = result.map(|p| p.dir).expect_err(&format!("{ns:?}/{claim:?}"));
                assert!(matches!(err, Error::Invalid { .. }), "{ns:?}/{claim:?}: {err}");
            }
        }
        // Valid names still provision, below the root.
        for driver in drivers {
            let p = driver
                .provision("shop", &json!({"metadata": {"name": "data.v1"}}))
                .await
                .expect("provision");
            assert!(
                p.dir.starts_with(root.join("shop")) && p.dir.is_dir(),
                "{:?}",
                p.dir
            );
        }
    }

    fn claim(
        namespace: &str,
        name: &str,
        uid: &str,
        volume: &str,
        phase: Option<&str>,
    ) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"volumeName": volume},
            "status": phase.map(|p| json!({"phase": p})),
        }))
        .expect("claim")
    }

    fn volume(name: &str, claim_ref: Option<Value>) -> PersistentVolume {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"hostPath": {"path": "/data/pv"}, "claimRef": claim_ref},
        }))
        .expect("volume")
    }

    /// Attack 5 (the rule): a claim naming another namespace's volume in `spec.volumeName` is
    /// refused; only the claim the volume's `claimRef` points back at may read it.
    #[test]
    fn only_the_claim_a_volume_is_bound_to_may_read_it() {
        let owner =
            json!({"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data", "uid": "u-1"});
        let pv = volume("pv-data", Some(owner.clone()));
        check_binding(
            "shop",
            &claim("shop", "data", "u-1", "pv-data", Some("Bound")),
            &pv,
        )
        .expect("the owner");
        let cases = [
            (
                "thief",
                claim("thief", "data", "u-2", "pv-data", Some("Bound")),
                pv.clone(),
                "claimRef is shop/data",
            ),
            (
                "thief",
                claim("thief", "steal", "u-2", "pv-data", Some("Bound")),
                pv.clone(),
                "claimRef is shop/data",
            ),
            // Same namespace and name, but a later claim (another uid).
            (
                "shop",
                claim("shop", "data", "u-9", "pv-data", Some("Bound")),
                pv.clone(),
                "uid",
            ),
            (
                "shop",
                claim("shop", "data", "u-1", "pv-data", None),
                pv.clone(),
                "not bound",
            ),
            (
                "shop",
                claim("shop", "data", "u-1", "pv-data", Some("Pending")),
                pv.clone(),
                "not bound",
            ),
            (
                "shop",
                claim("shop", "data", "u-1", "pv-data", Some("Bound")),
                volume("pv-data", None),
                "no claimRef",
            ),
            (
                "shop",
                claim("shop", "data", "u-1", "pv-data", Some("Bound")),
                volume("pv-data", Some(json!({"namespace": "shop", "name": "data"}))),
                "uid",
            ),
            (
                "shop",
                claim("shop", "data", "u-1", "pv-other", Some("Bound")),
                pv.clone(),
                "does not name",
            ),
        ];
        for (ns, pvc, pv, needle) in cases {
            let err = check_binding(ns, &pvc, &pv).expect_err(needle);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }

    /// The twin runs the suite every driver runs.
    #[tokio::test]
    async fn the_twin_conforms() {
        let tmp = tempfile::tempdir().expect("tmp");
        let volumes = MemoryVolumes::new(tmp.path().join("restores"));
        let setup = conformance::MemorySetup {
            volumes: &volumes,
            data_root: tmp.path().join("data"),
        };
        conformance::run_all(&volumes, &setup).await;
    }

    /// The real driver runs it against a simulated shoot's API server (HTTPS, client
    /// certificates issued by the simulated garden).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_local_path_driver_conforms_against_a_simulated_shoot() {
        let fleet = pxb_sim::Fleet::start(pxb_sim::FleetConfig::default()).expect("fleet");
        fleet.add_project("dev").expect("project");
        fleet.add_shoots("dev", "shoot", 1).expect("shoot");
        let kubeconfig = fleet
            .admin_kubeconfig("dev", "shoot-00000", 3600)
            .expect("kubeconfig");
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig).expect("kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("client config");
        let client = kube::Client::try_from(config).expect("client");
        let tmp = tempfile::tempdir().expect("tmp");
        let setup = conformance::KubeSetup {
            client: client.clone(),
            restore_root: tmp.path().join("restores"),
            data_root: tmp.path().join("data"),
        };
        let driver = LocalPathDriver::new(client, tmp.path().join("restores"));
        conformance::run_all(&driver, &setup).await;
    }
}
