//! The conformance suite of the volume seam: what every [`VolumeDriver`] does, checked the same
//! way for [`LocalPathDriver`](super::LocalPathDriver) (against a Kubernetes API) and the
//! [`MemoryVolumes`] twin. [`run_all`] runs every check; each is also a `pub async fn` of its own.
//!
//! A driver is checked through a [`ClaimSetup`], which creates claims and volumes where the driver
//! looks for them: [`KubeSetup`] through a Kubernetes API (the suite binds claims itself, as the
//! PersistentVolume controller would, so a cluster without that controller, such as the fleet
//! simulator, works), [`MemorySetup`] in the twin. Every check picks fresh names, so the checks
//! can share one cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, Patch, PatchParams, PostParams};
use pxb_core::{Error, Result};
use serde_json::{Value, json};

use super::{MemoryVolumes, VolumeDriver};

/// Creates the claims and volumes a check needs, where the driver under test finds them.
#[async_trait]
pub trait ClaimSetup: Send + Sync {
    /// Where the driver provisions restores (the suite checks that nothing lands elsewhere).
    fn restore_root(&self) -> PathBuf;

    /// A directory the suite may create volume data in, visible to the driver.
    fn data_root(&self) -> PathBuf;

    /// Creates the PersistentVolumeClaim `claim` (JSON, without status) in `namespace`, creating
    /// the namespace if needed, and sets its `status.phase` to `phase` when given. Returns the
    /// claim's uid.
    async fn create_claim(&self, namespace: &str, claim: Value, phase: Option<&str>) -> Result<String>;

    /// Creates the PersistentVolume `volume` (JSON).
    async fn create_volume(&self, volume: Value) -> Result<()>;
}

/// [`ClaimSetup`] through a Kubernetes API.
#[derive(Clone)]
pub struct KubeSetup {
    /// The cluster the driver reads.
    pub client: kube::Client,
    /// See [`ClaimSetup::restore_root`].
    pub restore_root: PathBuf,
    /// See [`ClaimSetup::data_root`].
    pub data_root: PathBuf,
}

impl std::fmt::Debug for KubeSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSetup")
            .field("restore_root", &self.restore_root)
            .field("data_root", &self.data_root)
            .finish_non_exhaustive()
    }
}

fn kube_error(what: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| crate::kube_error::map_kube_error(what, e)
}

#[async_trait]
impl ClaimSetup for KubeSetup {
    fn restore_root(&self) -> PathBuf {
        self.restore_root.clone()
    }

    fn data_root(&self) -> PathBuf {
        self.data_root.clone()
    }

    async fn create_claim(&self, namespace: &str, claim: Value, phase: Option<&str>) -> Result<String> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        if namespaces
            .get_opt(namespace)
            .await
            .map_err(kube_error("reading the namespace"))?
            .is_none()
        {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": namespace}}))
                .map_err(|e| Error::invalid(format!("namespace: {e}")))?;
            match namespaces.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(kube_error("creating the namespace")(e)),
            }
        }
        let pvc: PersistentVolumeClaim =
            serde_json::from_value(claim).map_err(|e| Error::invalid(format!("claim: {e}")))?;
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let created = claims
            .create(&PostParams::default(), &pvc)
            .await
            .map_err(kube_error("creating the claim"))?;
        let name = created.metadata.name.clone().unwrap_or_default();
        if let Some(phase) = phase {
            claims
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": phase}})),
                )
                .await
                .map_err(kube_error("setting the claim's phase"))?;
        }
        Ok(created.metadata.uid.unwrap_or_default())
    }

    async fn create_volume(&self, volume: Value) -> Result<()> {
        let pv: PersistentVolume =
            serde_json::from_value(volume).map_err(|e| Error::invalid(format!("volume: {e}")))?;
        Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .map(|_| ())
            .map_err(kube_error("creating the volume"))
    }
}

/// [`ClaimSetup`] in a [`MemoryVolumes`] twin.
#[derive(Debug)]
pub struct MemorySetup<'a> {
    /// The twin under test.
    pub volumes: &'a MemoryVolumes,
    /// See [`ClaimSetup::data_root`].
    pub data_root: PathBuf,
}

#[async_trait]
impl ClaimSetup for MemorySetup<'_> {
    fn restore_root(&self) -> PathBuf {
        self.volumes.restore_root().to_path_buf()
    }

    fn data_root(&self) -> PathBuf {
        self.data_root.clone()
    }

    async fn create_claim(&self, namespace: &str, mut claim: Value, phase: Option<&str>) -> Result<String> {
        claim["metadata"]["namespace"] = namespace.into();
        if let Some(phase) = phase {
            claim["status"] = json!({"phase": phase});
        }
        let pvc = serde_json::from_value(claim).map_err(|e| Error::invalid(format!("claim: {e}")))?;
        self.volumes.add_claim(pvc)
    }

    async fn create_volume(&self, volume: Value) -> Result<()> {
        let pv = serde_json::from_value(volume).map_err(|e| Error::invalid(format!("volume: {e}")))?;
        self.volumes.add_volume(pv)
    }
}

/// Fresh names for one check: namespaces and volumes no other check (or run) uses.
struct Names(String);

impl Names {
    fn new() -> Self {
        Self(format!("{:08x}", rand::random::<u32>()))
    }

    fn namespace(&self, tag: &str) -> String {
        format!("vd-{}-{tag}", self.0)
    }

    fn volume(&self, tag: &str) -> String {
        format!("pv-{}-{tag}", self.0)
    }

    /// A data directory with one file, `hello.txt`.
    fn data_dir(&self, setup: &dyn ClaimSetup, tag: &str) -> PathBuf {
        let dir = setup.data_root().join(format!("{}-{tag}", self.0));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        std::fs::write(dir.join("hello.txt"), tag).expect("write into the data directory");
        dir
    }
}

fn claim_json(name: &str, volume: Option<&str>) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": volume,
                 "resources": {"requests": {"storage": "1Gi"}}},
    })
}

fn volume_json(name: &str, dir: &Path, claim_ref: Option<Value>) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": dir.to_string_lossy()}, "claimRef": claim_ref},
    })
}

fn claim_ref(namespace: &str, name: &str, uid: Option<&str>) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": namespace, "name": name, "uid": uid})
}

/// A claim bound to a new volume holding `dir`, both ways, as the PersistentVolume controller
/// binds them.
async fn bound_claim(setup: &dyn ClaimSetup, namespace: &str, claim: &str, volume: &str, dir: &Path) {
    let uid = setup
        .create_claim(namespace, claim_json(claim, Some(volume)), Some("Bound"))
        .await
        .expect("create the claim");
    setup
        .create_volume(volume_json(
            volume,
            dir,
            Some(claim_ref(namespace, claim, Some(&uid))),
        ))
        .await
        .expect("create the volume");
}

/// Runs every check.
pub async fn run_all(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    reads_a_bound_claim(driver, setup).await;
    a_missing_claim_is_not_found(driver, setup).await;
    an_unbound_claim_is_refused(driver, setup).await;
    a_volume_bound_to_another_claim_is_refused(driver, setup).await;
    provision_refuses_invalid_names(driver, setup).await;
    provision_gives_a_fresh_empty_directory(driver, setup).await;
}

/// A bound claim's data is the directory of its volume.
pub async fn reads_a_bound_claim(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    let names = Names::new();
    let ns = names.namespace("shop");
    let dir = names.data_dir(setup, "data");
    bound_claim(setup, &ns, "data", &names.volume("data"), &dir).await;
    let source = driver.source(&ns, "data").await.expect("the bound claim's data");
    assert_eq!(
        std::fs::canonicalize(&source).expect("the source exists"),
        std::fs::canonicalize(&dir).expect("dir"),
        "the claim's data is its volume's directory"
    );
    assert_eq!(
        std::fs::read_to_string(source.join("hello.txt")).expect("read the data"),
        "data"
    );
}

/// A claim that does not exist is `NotFound`.
pub async fn a_missing_claim_is_not_found(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    let names = Names::new();
    let ns = names.namespace("shop");
    // The namespace exists (another claim is in it); the claim does not.
    let dir = names.data_dir(setup, "other");
    bound_claim(setup, &ns, "other", &names.volume("other"), &dir).await;
    let err = driver.source(&ns, "absent").await.expect_err("no such claim");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

/// A claim that names no volume, or is not `Bound` (even when the volume points at it), is
/// refused with `Precondition`.
pub async fn an_unbound_claim_is_refused(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    let names = Names::new();
    let ns = names.namespace("shop");
    setup
        .create_claim(&ns, claim_json("pending", None), Some("Pending"))
        .await
        .expect("create the claim");
    let err = driver
        .source(&ns, "pending")
        .await
        .expect_err("a claim without a volume");
    assert!(matches!(err, Error::Precondition { .. }), "{err}");

    for (claim, phase) in [("waiting", Some("Pending")), ("new", None)] {
        let volume = names.volume(claim);
        let dir = names.data_dir(setup, claim);
        let uid = setup
            .create_claim(&ns, claim_json(claim, Some(&volume)), phase)
            .await
            .expect("create the claim");
        setup
            .create_volume(volume_json(
                &volume,
                &dir,
                Some(claim_ref(&ns, claim, Some(&uid))),
            ))
            .await
            .expect("create the volume");
        let err = driver
            .source(&ns, claim)
            .await
            .expect_err("a claim that is not bound");
        assert!(matches!(err, Error::Precondition { .. }), "{claim}: {err}");
        assert!(err.to_string().contains("not bound"), "{claim}: {err}");
    }
}

/// Only the claim a volume's `claimRef` points back at (namespace, name and uid) may read it: a
/// claim of another namespace naming the volume (even one claiming to be `Bound`), a later claim of
/// the same name, and any claim of a volume without `claimRef` are refused with
/// `PermissionDenied`, and the error says why.
pub async fn a_volume_bound_to_another_claim_is_refused(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    let names = Names::new();
    let (shop, thief) = (names.namespace("shop"), names.namespace("thief"));
    let volume = names.volume("data");
    let dir = names.data_dir(setup, "data");
    bound_claim(setup, &shop, "data", &volume, &dir).await;
    for (ns, claim) in [(&thief, "data"), (&thief, "steal")] {
        setup
            .create_claim(ns, claim_json(claim, Some(&volume)), Some("Bound"))
            .await
            .expect("create the thief's claim");
        let err = driver
            .source(ns, claim)
            .await
            .expect_err("another namespace's volume");
        assert!(
            matches!(err, Error::PermissionDenied { .. }),
            "{ns}/{claim}: {err}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("volume {volume} is not bound to it"))
                && message.contains(&format!("claimRef is {shop}/data")),
            "{message}"
        );
    }

    // The volume points at a claim of the same namespace and name, but an earlier one (its uid).
    let stale = names.volume("stale");
    setup
        .create_volume(volume_json(
            &stale,
            &dir,
            Some(claim_ref(&shop, "later", Some("0a1b2c3d-gone"))),
        ))
        .await
        .expect("create the volume");
    setup
        .create_claim(&shop, claim_json("later", Some(&stale)), Some("Bound"))
        .await
        .expect("create the claim");
    let err = driver.source(&shop, "later").await.expect_err("a later claim");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("uid"), "{err}");

    // A volume that records no claim at all.
    let loose = names.volume("loose");
    setup
        .create_volume(volume_json(&loose, &dir, None))
        .await
        .expect("create the volume");
    setup
        .create_claim(&shop, claim_json("loose", Some(&loose)), Some("Bound"))
        .await
        .expect("create the claim");
    let err = driver
        .source(&shop, "loose")
        .await
        .expect_err("a volume without claimRef");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    assert!(err.to_string().contains("no claimRef"), "{err}");
}

/// Everything below `dir` (relative paths), and the entries of its parent.
fn snapshot(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            out.insert(
                path.strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| path.clone()),
            );
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    if let Some(parent) = dir.parent() {
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            out.insert(e.path());
        }
    }
    out
}

/// Namespace and claim names come from a backup (which a tenant may have written) and become
/// directories: invalid ones are refused with `Invalid`, and nothing is created, inside the
/// restore root or beside it.
pub async fn provision_refuses_invalid_names(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    let root = setup.restore_root();
    let outside = root
        .parent()
        .unwrap_or(Path::new("/"))
        .to_string_lossy()
        .into_owned();
    let long = "a".repeat(300);
    let before = snapshot(&root);
    for (ns, claim) in [
        ("..", "data"),
        ("shop", "../../etc"),
        ("shop", "../../../escaped"),
        ("shop", "a/b"),
        ("shop", "."),
        ("shop", ".."),
        ("shop", outside.as_str()),
        ("shop", long.as_str()),
        ("shop", "Data"),
        ("shop", ""),
        ("/etc", "data"),
        ("Shop", "data"),
        ("", "data"),
    ] {
        let result = driver.provision(ns, &json!({"metadata": {"name": claim}})).await;
        let err = result.map(|p| p.dir).expect_err(&format!("{ns:?}/{claim:?}"));
        assert!(matches!(err, Error::Invalid { .. }), "{ns:?}/{claim:?}: {err}");
        assert_eq!(snapshot(&root), before, "{ns:?}/{claim:?} created something");
    }
    let err = driver
        .provision("shop", &json!({"metadata": {}}))
        .await
        .map(|p| p.dir)
        .expect_err("a claim without a name");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

/// A restore gets a new, empty directory below the restore root for each claim it provisions,
/// never one that exists already (so nothing another restore or a tenant left in it); a volume
/// object, when the driver returns one, is a PersistentVolume for that directory bound to the
/// claim, under a valid name.
pub async fn provision_gives_a_fresh_empty_directory(driver: &dyn VolumeDriver, setup: &dyn ClaimSetup) {
    let root = setup.restore_root();
    let names = Names::new();
    let ns = names.namespace("copy");
    let claim = json!({"metadata": {"name": "data.v1"},
                       "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
                                "resources": {"requests": {"storage": "2Gi"}}}});
    let first = driver.provision(&ns, &claim).await.expect("provision");
    assert!(first.dir.is_dir(), "{:?}", first.dir);
    assert!(
        first.dir.starts_with(root.join(&ns)),
        "{:?} is not below {:?}",
        first.dir,
        root.join(&ns)
    );
    assert_eq!(
        std::fs::read_dir(&first.dir).expect("list").count(),
        0,
        "not empty"
    );
    std::fs::write(first.dir.join("left-behind"), "x").expect("write");
    let second = driver.provision(&ns, &claim).await.expect("provision again");
    assert_ne!(first.dir, second.dir, "the same directory twice");
    assert!(second.dir.starts_with(root.join(&ns)), "{:?}", second.dir);
    assert_eq!(
        std::fs::read_dir(&second.dir).expect("list").count(),
        0,
        "the second directory is not empty"
    );
    for p in [&first, &second] {
        assert_eq!(p.volume.is_some(), p.volume_name.is_some(), "{p:?}");
        let (Some(volume), Some(name)) = (&p.volume, &p.volume_name) else {
            continue;
        };
        assert_eq!(volume["kind"], "PersistentVolume", "{volume}");
        assert_eq!(
            volume.pointer("/metadata/name").and_then(Value::as_str),
            Some(name.as_str())
        );
        assert!(crate::names::is_subdomain(name), "{name}");
        assert_eq!(
            volume.pointer("/spec/claimRef/namespace").and_then(Value::as_str),
            Some(ns.as_str())
        );
        assert_eq!(
            volume.pointer("/spec/claimRef/name").and_then(Value::as_str),
            Some("data.v1")
        );
        let path = volume
            .pointer("/spec/hostPath/path")
            .or_else(|| volume.pointer("/spec/local/path"))
            .and_then(Value::as_str);
        assert_eq!(path.map(PathBuf::from).as_ref(), Some(&p.dir), "{volume}");
    }
    if let (Some(a), Some(b)) = (&first.volume_name, &second.volume_name) {
        assert_ne!(a, b, "the same volume name twice");
    }
}
