//! [`restore_resources`]: re-creates the objects of an archive, in dependency order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, BufReader, Read};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use super::archive::{
    ARCHIVE_FORMAT, ARCHIVE_KIND, ChannelReader, LineReader, ObjectLine, SPILL_LEVEL, SpillWriter, Trailer,
    join, spill_reader,
};
use super::{ApiResource, ObjectRef, ResourceObject, ResourceSink};
use crate::store::ObjectStore;
use crate::{Error, ObjectPath, Result};

/// The order of a restore: every object of a tier is restored before the next tier starts, so
/// that what an object needs exists when it is created (a namespace before its objects, a
/// ServiceAccount and its Secrets before the Pods that use them, a claim before its Pods,
/// a CustomResourceDefinition before its custom resources). Within a tier, objects are restored
/// concurrently ([`RestoreOptions::concurrency`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreTier {
    /// `CustomResourceDefinition` (`apiextensions.k8s.io`).
    CustomResourceDefinitions,
    /// `Namespace`.
    Namespaces,
    /// `ServiceAccount`, and the RBAC roles: `Role`, `ClusterRole`.
    ServiceAccountsAndRoles,
    /// The RBAC bindings: `RoleBinding`, `ClusterRoleBinding`. After the roles, because the API
    /// server resolves a binding's role to check that whoever creates the binding holds what the
    /// role grants (a restorer without `bind`, as pxb's agent is): a binding created before its
    /// role is refused with 404.
    RoleBindings,
    /// `ConfigMap` and `Secret`, and the namespace policies admission applies to Pods:
    /// `LimitRange`, `ResourceQuota`.
    ConfigAndSecrets,
    /// `StorageClass`, which provisioning of the claims that follow needs.
    StorageClasses,
    /// `PersistentVolume`.
    PersistentVolumes,
    /// `PersistentVolumeClaim`.
    PersistentVolumeClaims,
    /// Workloads: `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job`, `CronJob`, `Pod`.
    Workloads,
    /// Everything else (Services, Ingresses, custom resources, ...).
    Other,
}

impl RestoreTier {
    /// Every tier, in restore order.
    pub const ALL: [RestoreTier; 10] = [
        RestoreTier::CustomResourceDefinitions,
        RestoreTier::Namespaces,
        RestoreTier::ServiceAccountsAndRoles,
        RestoreTier::RoleBindings,
        RestoreTier::ConfigAndSecrets,
        RestoreTier::StorageClasses,
        RestoreTier::PersistentVolumes,
        RestoreTier::PersistentVolumeClaims,
        RestoreTier::Workloads,
        RestoreTier::Other,
    ];

    /// The tier of objects of `kind` in API `group`.
    pub fn of(group: &str, kind: &str) -> RestoreTier {
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => RestoreTier::CustomResourceDefinitions,
            ("", "Namespace") => RestoreTier::Namespaces,
            ("", "ServiceAccount") | ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
                RestoreTier::ServiceAccountsAndRoles
            }
            ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => RestoreTier::RoleBindings,
            ("", "ConfigMap" | "Secret" | "LimitRange" | "ResourceQuota") => RestoreTier::ConfigAndSecrets,
            ("storage.k8s.io", "StorageClass") => RestoreTier::StorageClasses,
            ("", "PersistentVolume") => RestoreTier::PersistentVolumes,
            ("", "PersistentVolumeClaim") => RestoreTier::PersistentVolumeClaims,
            ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
            | ("batch", "Job" | "CronJob")
            | ("", "Pod") => RestoreTier::Workloads,
            _ => RestoreTier::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a restore does with an object that already exists in the target cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExistingResourcePolicy {
    /// Leave it alone and report it as [`RestoreOutcome::Retained`] (Velero's `none`).
    #[default]
    Retain,
    /// Delete it, then create the archived object ([`RestoreOutcome::Replaced`]).
    ///
    /// Never applied to the cluster-scoped dependencies (Namespace, CustomResourceDefinition,
    /// PersistentVolume, StorageClass): deleting those would delete every object of the namespace,
    /// every custom resource of the type, or the volume's data. Existing ones are retained.
    Replace,
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Namespace renames, old -> new: applied to `metadata.namespace`, to Namespace objects' names
    /// (and their `kubernetes.io/metadata.name` label), to PersistentVolumes'
    /// `spec.claimRef.namespace`, and to the namespace of (Cluster)RoleBinding subjects.
    pub namespace_mapping: BTreeMap<String, String>,
    /// StorageClass renames, old -> new: applied to PersistentVolumeClaims' and
    /// PersistentVolumes' `spec.storageClassName` (and the legacy
    /// `volume.beta.kubernetes.io/storage-class` annotation), and to StorageClass objects' names.
    pub storage_class_mapping: BTreeMap<String, String>,
    /// What to do with objects that already exist.
    pub existing: ExistingResourcePolicy,
    /// How many objects of a tier are restored at once (at least 1).
    pub concurrency: usize,
    /// Claims whose volume the caller provides (`<target namespace>/<claim>` → the new volume's
    /// name, or `None` when the claim binds by itself): the claim is restored bound to it
    /// (`spec.volumeName`), and the archived PersistentVolume it was bound to is not restored.
    pub volume_bindings: BTreeMap<String, Option<String>>,
    /// The namespaces to restore, as the archive names them (before `namespace_mapping`); empty
    /// means every namespace the archive was taken of (its header's list). Objects of any other
    /// namespace are refused ([`RestoreOutcome::Refused`]); naming a namespace the archive was not
    /// taken of is [`Error::Invalid`].
    pub namespaces: Vec<String>,
    /// Cluster-scoped kinds to restore as the archive has them, unchecked (each matched like
    /// [`ApiResource::matches_name`]: `ClusterRoleBinding`, `clusterrolebindings`,
    /// `clusterrolebindings.rbac.authorization.k8s.io`, ...).
    ///
    /// Without it, the only cluster-scoped objects a restore creates are those a backup of the
    /// restored namespaces needs, each checked: their Namespaces, the PersistentVolumes bound to
    /// restored claims (never hostPath or local ones), the StorageClasses of restored claims and
    /// volumes, and the CustomResourceDefinitions (namespaced, without a conversion webhook) of
    /// restored custom resources. Every other cluster-scoped object is refused.
    pub allow_cluster_kinds: Vec<String>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            namespace_mapping: BTreeMap::new(),
            storage_class_mapping: BTreeMap::new(),
            existing: ExistingResourcePolicy::default(),
            concurrency: 8,
            volume_bindings: BTreeMap::new(),
            namespaces: Vec::new(),
            allow_cluster_kinds: Vec::new(),
        }
    }
}

/// What became of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RestoreOutcome {
    /// It did not exist and was created.
    Created,
    /// It existed and was deleted and created again ([`ExistingResourcePolicy::Replace`]).
    Replaced,
    /// It existed and was left alone.
    Retained,
    /// It could not be restored; the other objects were still attempted.
    Failed {
        /// Why, as the cluster said.
        reason: String,
    },
    /// The restore would not create it: it lies outside the restored namespaces, or is a
    /// cluster-scoped object the restore neither needs nor allows
    /// ([`RestoreOptions::allow_cluster_kinds`]). Nothing was sent to the cluster.
    Refused {
        /// Why, and how to allow it where that is possible.
        reason: String,
    },
}

/// One object of a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoredObject {
    /// The object, as restored (after namespace and storage-class mapping).
    pub object: ObjectRef,
    /// Its tier.
    pub tier: RestoreTier,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: RestoreOutcome,
}

/// What [`restore_resources`] did, object by object, in restore order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// Every object of the archive.
    pub objects: Vec<RestoredObject>,
    /// How many were created.
    pub created: u64,
    /// How many were replaced.
    pub replaced: u64,
    /// How many were retained.
    pub retained: u64,
    /// How many failed.
    pub failed: u64,
    /// How many were refused.
    pub refused: u64,
}

impl RestoreReport {
    /// The objects that failed.
    pub fn failures(&self) -> impl Iterator<Item = &RestoredObject> {
        self.objects
            .iter()
            .filter(|o| matches!(o.outcome, RestoreOutcome::Failed { .. }))
    }

    /// The objects that were refused.
    pub fn refusals(&self) -> impl Iterator<Item = &RestoredObject> {
        self.objects
            .iter()
            .filter(|o| matches!(o.outcome, RestoreOutcome::Refused { .. }))
    }

    /// Whether no object failed or was refused.
    pub fn is_success(&self) -> bool {
        self.failed == 0 && self.refused == 0
    }

    fn push(&mut self, object: RestoredObject) {
        match object.outcome {
            RestoreOutcome::Created => self.created += 1,
            RestoreOutcome::Replaced => self.replaced += 1,
            RestoreOutcome::Retained => self.retained += 1,
            RestoreOutcome::Failed { .. } => self.failed += 1,
            RestoreOutcome::Refused { .. } => self.refused += 1,
        }
        self.objects.push(object);
    }
}

/// Restores the archive at `path` (written by [`backup_resources`](super::backup_resources)) into
/// `sink`.
///
/// The archive is read once and checked whole before anything is created: a missing archive is
/// [`Error::NotFound`]; a truncated, damaged or foreign one is [`Error::Corrupt`] naming the path
/// (and the line); an archive of another format version says so. While it is read, its objects
/// are sorted into one temporary file per [`RestoreTier`] (compressed), so memory does not grow
/// with the archive. The tiers are then restored in order; after the CustomResourceDefinitions,
/// the cluster's discovery is read again so that their custom resources resolve.
///
/// The archive is not trusted. Every object is addressed by the target cluster's discovery (its
/// plural and scope for the kind, never the archive's), and only admitted objects are created:
/// namespaced objects of the restored namespaces ([`RestoreOptions::namespaces`], by the
/// namespace the archive gives them, before mapping), and the cluster-scoped objects those need,
/// each checked, or whose kind the restore allows ([`RestoreOptions::allow_cluster_kinds`]). Any
/// other object is [`RestoreOutcome::Refused`] with the reason, and nothing is sent to the cluster
/// for it. This function does not know the archive's expected hash;
/// [`restore_namespace_resources`](crate::backup::resources::restore_namespace_resources) checks
/// it against the backup's manifest before anything is created.
///
/// Each object is mapped ([`RestoreOptions`]) and created; one that exists is retained or replaced
/// ([`ExistingResourcePolicy`]); an object that exists counts as existing even when the cluster
/// refused the create for another reason first (the API server validates before it looks). A
/// Service whose node port is taken in the target is created without its node ports, and the
/// cluster allocates new ones. After the CustomResourceDefinitions it created, the restore waits
/// (up to a minute) until the cluster serves their kinds. A failed object is reported
/// ([`RestoreOutcome::Failed`]) and never stops the others. An `Err` means the restore as a whole
/// could not run (the archive, the temporary files, or the cluster's discovery).
pub async fn restore_resources(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    sink: &dyn ResourceSink,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    restore_archive(store, path, sink, opts, None).await
}

/// What the archive must be, as its manifest records it: size and BLAKE3 hash (hex).
#[derive(Debug, Clone)]
pub(crate) struct ExpectedArchive {
    /// Stored size.
    pub(crate) size: u64,
    /// BLAKE3 of the stored bytes, lowercase hex.
    pub(crate) blake3: String,
}

/// [`restore_resources`], and when `expected` is given, a check that the archive is the one the
/// manifest names before anything is created.
pub(crate) async fn restore_archive(
    store: &dyn ObjectStore,
    path: &ObjectPath,
    sink: &dyn ResourceSink,
    opts: &RestoreOptions,
    expected: Option<&ExpectedArchive>,
) -> Result<RestoreReport> {
    let got = store
        .get(path)
        .await
        .map_err(|e| e.context("reading the resource archive"))?;
    if got.meta.size == 0 && expected.is_none() {
        return Err(Error::corrupt(format!(
            "{path}: not a pxb resource archive: it is empty"
        )));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let name = path.to_string();
    let worker = tokio::task::spawn_blocking(move || sort_into_tiers(ChannelReader::new(rx), &name));
    let mut body = got.body;
    let mut stream_error = None;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut tx = Some(tx);
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(bytes) => {
                hasher.update(&bytes);
                size += bytes.len() as u64;
                if let Some(sender) = &tx
                    && sender.send(bytes).await.is_err()
                {
                    // The reader stopped; its result says why, unless the hash says more.
                    tx = None;
                    if expected.is_none() {
                        break;
                    }
                }
            }
            Err(e) => {
                stream_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let sorted = join(worker, "resource restore").await;
    if let Some(e) = stream_error {
        return Err(e.context(format!("reading the resource archive {path}")));
    }
    if let Some(expected) = expected {
        let hash = hasher.finalize().to_hex().to_string();
        if size != expected.size || hash != expected.blake3 {
            return Err(Error::corrupt(format!(
                "{path}: the resource archive does not match its manifest ({size} bytes, BLAKE3 {hash}; \
                 the manifest records {} bytes, BLAKE3 {}): it was changed or damaged after the \
                 backup; nothing was restored",
                expected.size, expected.blake3
            )));
        }
    }
    let (tiers, index) = sorted?;
    let admission = Admission::new(index, opts)?;

    let mut discovery = Discovery::new(
        sink.api_resources()
            .await
            .map_err(|e| e.context("resource discovery of the target cluster"))?,
    );
    let concurrency = opts.concurrency.max(1);
    let mut report = RestoreReport::default();
    for (tier, file) in RestoreTier::ALL.into_iter().zip(tiers) {
        let Some(file) = file else { continue };
        let (otx, orx) = mpsc::channel::<Vec<(Arc<ApiResource>, ResourceObject)>>(4);
        let reader = tokio::task::spawn_blocking(move || read_tier(file, otx));
        let batches = futures::stream::unfold(orx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let mut changed = false;
        // CustomResourceDefinition name -> (group, kind) it defines.
        let mut defines: HashMap<String, (String, String)> = HashMap::new();
        // Names of the CustomResourceDefinitions this restore created.
        let mut created_definitions: Vec<String> = Vec::new();
        {
            let discovered = &discovery;
            let admission = &admission;
            let defines = &mut defines;
            let mut results = std::pin::pin!(
                batches
                    .flat_map(futures::stream::iter)
                    .map(|(resource, object)| {
                        if resource.is("apiextensions.k8s.io", "CustomResourceDefinition") {
                            defines.insert(
                                object.name().to_owned(),
                                (
                                    object.str_at(&["spec", "group"]).unwrap_or_default().to_owned(),
                                    object
                                        .str_at(&["spec", "names", "kind"])
                                        .unwrap_or_default()
                                        .to_owned(),
                                ),
                            );
                        }
                        restore_one(sink, discovered, admission, opts, tier, resource, object)
                    })
                    .buffered(concurrency)
            );
            while let Some(r) = results.next().await {
                let made = matches!(r.outcome, RestoreOutcome::Created | RestoreOutcome::Replaced);
                changed |= made;
                if made && r.object.kind == "CustomResourceDefinition" {
                    created_definitions.push(r.object.name.clone());
                }
                report.push(r);
            }
        }
        join(reader, "resource restore").await?;
        if tier == RestoreTier::CustomResourceDefinitions && changed {
            let wanted: HashSet<(String, String)> = created_definitions
                .iter()
                .filter_map(|name| defines.get(name).cloned())
                .filter(|k| admission.kinds.contains(k))
                .collect();
            discovery = discover_until_served(sink, &wanted).await?;
        }
    }
    Ok(report)
}

/// How long a restore waits for the kinds of the CustomResourceDefinitions it created to be
/// served: a new definition is served only once the API server has established it, a moment
/// after the create returns.
pub(crate) const CRD_SERVED_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the target's discovery until it serves every (group, kind) of `wanted`, or
/// [`CRD_SERVED_WAIT`] has passed (the objects of a kind still missing then fail, saying so).
async fn discover_until_served(
    sink: &dyn ResourceSink,
    wanted: &HashSet<(String, String)>,
) -> Result<Discovery> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(50);
    loop {
        let discovery = Discovery::new(
            sink.api_resources()
                .await
                .map_err(|e| e.context("resource discovery of the target cluster"))?,
        );
        let missing: Vec<&(String, String)> =
            wanted.iter().filter(|k| !discovery.0.contains_key(*k)).collect();
        if missing.is_empty() {
            return Ok(discovery);
        }
        if started.elapsed() >= CRD_SERVED_WAIT {
            tracing::warn!(
                ?missing,
                "restored CustomResourceDefinitions are still not served; their objects will fail"
            );
            return Ok(discovery);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_secs(1));
    }
}

/// The target cluster's resource types, by group and kind.
struct Discovery(HashMap<(String, String), ApiResource>);

impl Discovery {
    fn new(resources: Vec<ApiResource>) -> Self {
        Self(
            resources
                .into_iter()
                .map(|r| ((r.group.clone(), r.kind.clone()), r))
                .collect(),
        )
    }

    /// The resource to create an archived object of `archived`'s type with: always the target's
    /// (its plural and scope; the archive's are never used), in the archived version if the
    /// target prefers another one (it may still serve the archived one).
    fn resolve(&self, archived: &ApiResource) -> std::result::Result<ApiResource, String> {
        match self.0.get(&(archived.group.clone(), archived.kind.clone())) {
            Some(r) if r.version == archived.version => Ok(r.clone()),
            Some(r) => Ok(ApiResource {
                version: archived.version.clone(),
                ..r.clone()
            }),
            None => Err(format!(
                "the target cluster does not serve {} {}{}",
                archived.api_version(),
                archived.kind,
                if archived.group.contains('.') && !archived.group.ends_with(".k8s.io") {
                    " (is its CustomResourceDefinition installed?)"
                } else {
                    ""
                }
            )),
        }
    }
}

/// What the archive holds, as far as deciding what to admit needs it (gathered while sorting).
#[derive(Debug, Default)]
struct ArchiveIndex {
    /// The namespaces the archive was taken of (its header's).
    namespaces: Vec<String>,
    /// (namespace, group, kind) of every namespaced object.
    kinds: HashSet<(String, String, String)>,
    /// (namespace, name, storage class) of every PersistentVolumeClaim.
    claims: Vec<(String, String, Option<String>)>,
    /// (claim namespace, claim name, storage class) of every PersistentVolume with a claimRef.
    volumes: Vec<(String, String, Option<String>)>,
}

/// Decides which archived objects a restore may create: namespaced objects of the restored
/// namespaces, the cluster-scoped objects those need (each checked), and the cluster-scoped kinds
/// the restore allows explicitly. Decisions use the target cluster's scope of the kind and the
/// archived object (before namespace mapping).
#[derive(Debug)]
struct Admission {
    /// The restored namespaces, as the archive names them.
    namespaces: BTreeSet<String>,
    /// (group, kind) of the objects of the restored namespaces.
    kinds: HashSet<(String, String)>,
    /// (namespace, name) of the restored claims.
    claims: HashSet<(String, String)>,
    /// The storage classes of the restored claims and of the volumes bound to them.
    storage_classes: HashSet<String>,
    /// [`RestoreOptions::allow_cluster_kinds`].
    allow: Vec<String>,
}

impl Admission {
    fn new(index: ArchiveIndex, opts: &RestoreOptions) -> Result<Self> {
        let in_archive: BTreeSet<String> = index.namespaces.into_iter().collect();
        let namespaces = if opts.namespaces.is_empty() {
            in_archive
        } else {
            let asked: BTreeSet<String> = opts.namespaces.iter().map(|n| n.trim().to_owned()).collect();
            if let Some(missing) = asked.iter().find(|n| !in_archive.contains(*n)) {
                return Err(Error::invalid(format!(
                    "namespace {missing} is not in the backup (it holds {})",
                    list(&in_archive)
                )));
            }
            asked
        };
        let kinds = index
            .kinds
            .into_iter()
            .filter(|(ns, _, _)| namespaces.contains(ns))
            .map(|(_, group, kind)| (group, kind))
            .collect();
        let mut claims = HashSet::new();
        let mut storage_classes = HashSet::new();
        for (ns, name, class) in index.claims {
            if namespaces.contains(&ns) {
                storage_classes.extend(class);
                claims.insert((ns, name));
            }
        }
        for (ns, name, class) in index.volumes {
            if claims.contains(&(ns, name)) {
                storage_classes.extend(class);
            }
        }
        Ok(Self {
            namespaces,
            kinds,
            claims,
            storage_classes,
            allow: opts.allow_cluster_kinds.clone(),
        })
    }

    /// `Ok` if `object` (as archived, of the target's `resource`) may be created; the reason
    /// otherwise.
    fn admit(&self, resource: &ApiResource, object: &ResourceObject) -> std::result::Result<(), String> {
        let kind = &resource.kind;
        if resource.namespaced {
            return match object.namespace() {
                None => Err(format!(
                    "{kind} is namespaced in the target cluster, but the archived object has no namespace"
                )),
                Some(ns) if !self.namespaces.contains(ns) => Err(self.outside(ns)),
                Some(_) => Ok(()),
            };
        }
        if let Some(ns) = object.namespace() {
            return Err(format!(
                "{kind} is cluster-scoped in the target cluster, but the archived object names namespace {ns}"
            ));
        }
        if self.allow.iter().any(|k| resource.matches_name(k)) {
            return Ok(());
        }
        let name = object.name();
        match (resource.group.as_str(), kind.as_str()) {
            ("", "Namespace") if self.namespaces.contains(name) => Ok(()),
            ("", "Namespace") => Err(self.outside(name)),
            ("", "PersistentVolume") => self.admit_volume(object),
            ("apiextensions.k8s.io", "CustomResourceDefinition") => self.admit_definition(object),
            ("storage.k8s.io", "StorageClass") if self.storage_classes.contains(name) => Ok(()),
            ("storage.k8s.io", "StorageClass") => Err(format!(
                "StorageClass {name} is used by no restored claim or volume; allow StorageClass \
                 explicitly to restore it"
            )),
            _ => Err(format!(
                "cluster-scoped kind {kind} is not restored; allow it explicitly (allowClusterKinds: \
                 [{}]) if this backup may change the whole cluster",
                resource.kind_key()
            )),
        }
    }

    fn outside(&self, ns: &str) -> String {
        format!(
            "namespace {ns} is not one of the restore's namespaces ({}); objects are only restored \
             into the namespaces the restore takes",
            list(&self.namespaces)
        )
    }

    fn admit_volume(&self, pv: &ResourceObject) -> std::result::Result<(), String> {
        let claim = (
            pv.str_at(&["spec", "claimRef", "namespace"]).unwrap_or_default(),
            pv.str_at(&["spec", "claimRef", "name"]).unwrap_or_default(),
        );
        if !self.claims.contains(&(claim.0.to_owned(), claim.1.to_owned())) {
            let bound = if claim.1.is_empty() {
                "it has no claimRef".to_owned()
            } else {
                format!("its claimRef is {}/{}", claim.0, claim.1)
            };
            return Err(format!(
                "PersistentVolume {} is not bound to a restored claim ({bound}); allow \
                 PersistentVolume explicitly to restore it",
                pv.name()
            ));
        }
        for (field, what) in [("hostPath", "a hostPath"), ("local", "a local")] {
            if pv.at(&["spec", field]).is_some_and(|v| !v.is_null()) {
                return Err(format!(
                    "PersistentVolume {} is {what} volume, which would expose a node's files; such \
                     volumes are only restored when the restore provisions them (allow \
                     PersistentVolume explicitly to restore it anyway)",
                    pv.name()
                ));
            }
        }
        Ok(())
    }

    fn admit_definition(&self, crd: &ResourceObject) -> std::result::Result<(), String> {
        let group = crd.str_at(&["spec", "group"]).unwrap_or_default();
        let kind = crd.str_at(&["spec", "names", "kind"]).unwrap_or_default();
        let allow = "allow CustomResourceDefinition explicitly to restore it";
        if crd.str_at(&["spec", "scope"]) != Some("Namespaced") {
            return Err(format!(
                "CustomResourceDefinition {} defines a cluster-scoped kind; {allow}",
                crd.name()
            ));
        }
        if !self.kinds.contains(&(group.to_owned(), kind.to_owned())) {
            return Err(format!(
                "CustomResourceDefinition {}: no restored object is a {kind}.{group}; {allow}",
                crd.name()
            ));
        }
        if crd.str_at(&["spec", "conversion", "strategy"]) == Some("Webhook") {
            return Err(format!(
                "CustomResourceDefinition {} has a conversion webhook, which would receive the \
                 cluster's requests for its objects; {allow}",
                crd.name()
            ));
        }
        Ok(())
    }
}

/// `a, b, c`, or `none`.
fn list(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Kinds a restore never deletes (see [`ExistingResourcePolicy::Replace`]).
fn never_replaced(resource: &ApiResource) -> bool {
    matches!(
        (resource.group.as_str(), resource.kind.as_str()),
        ("", "Namespace" | "PersistentVolume")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
            | ("storage.k8s.io", "StorageClass")
    )
}

async fn restore_one(
    sink: &dyn ResourceSink,
    discovery: &Discovery,
    admission: &Admission,
    opts: &RestoreOptions,
    tier: RestoreTier,
    archived: Arc<ApiResource>,
    mut object: ResourceObject,
) -> RestoredObject {
    let as_archived = object.clone();
    map_object(&mut object, &archived, opts);
    let object_ref = object.object_ref();
    let done = |outcome| RestoredObject {
        object: object_ref.clone(),
        tier,
        outcome,
    };
    if archived.is("", "PersistentVolume") && !opts.volume_bindings.is_empty() {
        let claim = format!(
            "{}/{}",
            object.str_at(&["spec", "claimRef", "namespace"]).unwrap_or(""),
            object.str_at(&["spec", "claimRef", "name"]).unwrap_or("")
        );
        if opts.volume_bindings.contains_key(&claim) {
            // Its claim gets a fresh volume from the caller instead.
            return done(RestoreOutcome::Retained);
        }
    }
    let failed = |reason: String| RestoreOutcome::Failed { reason };
    let resource = match discovery.resolve(&archived) {
        Ok(r) => r,
        Err(reason) => return done(failed(reason)),
    };
    if let Err(reason) = admission.admit(&resource, &as_archived) {
        tracing::warn!(object = %object_ref, %reason, "restore refused one object");
        return done(RestoreOutcome::Refused { reason });
    }
    let outcome = match create(sink, &resource, &object).await {
        Ok(()) => RestoreOutcome::Created,
        Err(Refusal::Exists { refused }) => {
            if opts.existing == ExistingResourcePolicy::Retain || never_replaced(&resource) {
                RestoreOutcome::Retained
            } else if let Some(e) = refused.filter(|e| !deleting_cures(e)) {
                // The cluster refused the archived object for a reason of its own (admission,
                // validation): deleting the existing one would not let it in, only lose both.
                failed(format!(
                    "kept the existing object: the cluster refuses the archived one ({e})"
                ))
            } else {
                match sink.delete(&resource, object.namespace(), object.name()).await {
                    Ok(()) | Err(Error::NotFound { .. }) => match create(sink, &resource, &object).await {
                        Ok(()) => RestoreOutcome::Replaced,
                        Err(e) => failed(format!(
                            "deleted the existing object, then creating it failed: {e}"
                        )),
                    },
                    Err(e) => failed(format!("could not delete the existing object to replace it: {e}")),
                }
            }
        }
        Err(Refusal::Other(e)) => failed(e.to_string()),
    };
    if let RestoreOutcome::Failed { reason } = &outcome {
        tracing::warn!(object = %object_ref, %reason, "restore failed for one object");
    }
    done(outcome)
}

/// The API server's answer to a Service whose node port another Service holds.
const NODE_PORT_TAKEN: &str = "provided port is already allocated";

/// Why [`create`] did not create an object.
enum Refusal {
    /// The object exists. `refused` is `None` when the server said so (AlreadyExists); otherwise
    /// it refused the create for another reason and a read found the object.
    Exists { refused: Option<Error> },
    /// Anything else.
    Other(Error),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Exists { refused: None } => f.write_str("it exists (again)"),
            Refusal::Exists { refused: Some(e) } => write!(f, "{e} (and it exists)"),
            Refusal::Other(e) => e.fmt(f),
        }
    }
}

/// Whether deleting the existing object lets the archived one in after the server refused it
/// for `e`: only when the existing object itself holds what the create needed (a Service's own
/// node port). Anything else the server refuses (admission, validation) it refuses again.
fn deleting_cures(e: &Error) -> bool {
    matches!(e, Error::Invalid { .. }) && e.to_string().contains(NODE_PORT_TAKEN)
}

/// Creates `object`, as [`ResourceSink::create`], with two differences the real API server needs:
/// - an object that already exists is [`Refusal::Exists`] whatever the create said: the server
///   validates (and allocates node ports) before it looks for an existing object, so a second
///   restore of a NodePort Service is refused as invalid rather than as existing;
/// - a Service whose node port another Service holds (a copy into a new namespace while the
///   original is still there) is created again without its node ports, which the server then
///   allocates anew.
async fn create(
    sink: &dyn ResourceSink,
    resource: &ApiResource,
    object: &ResourceObject,
) -> std::result::Result<(), Refusal> {
    let err = match sink.create(resource, object).await {
        Ok(_) => return Ok(()),
        Err(Error::AlreadyExists { .. }) => return Err(Refusal::Exists { refused: None }),
        Err(e) => e,
    };
    if let Ok(Some(_)) = sink.get(resource, object.namespace(), object.name()).await {
        return Err(Refusal::Exists { refused: Some(err) });
    }
    if matches!(err, Error::Invalid { .. })
        && err.to_string().contains(NODE_PORT_TAKEN)
        && let Some(without) = without_node_ports(resource, object)
    {
        tracing::warn!(
            object = %object.object_ref(),
            reason = %err,
            "a node port of the restored Service is taken; the cluster allocates new ones"
        );
        return sink
            .create(resource, &without)
            .await
            .map(|_| ())
            .map_err(Refusal::Other);
    }
    Err(Refusal::Other(err))
}

/// A Service without the node ports it names (`spec.ports[].nodePort`,
/// `spec.healthCheckNodePort`); `None` if it names none or is no Service.
fn without_node_ports(resource: &ApiResource, object: &ResourceObject) -> Option<ResourceObject> {
    if !resource.is("", "Service") {
        return None;
    }
    let mut copy = object.clone();
    let spec = copy.value_mut().get_mut("spec").and_then(Value::as_object_mut)?;
    let mut removed = spec.remove("healthCheckNodePort").is_some();
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            removed |= port.remove("nodePort").is_some();
        }
    }
    removed.then_some(copy)
}

/// Applies the namespace and storage-class mappings to an archived object.
fn map_object(object: &mut ResourceObject, resource: &ApiResource, opts: &RestoreOptions) {
    let ns_map = &opts.namespace_mapping;
    let sc_map = &opts.storage_class_mapping;
    let value = object.value_mut();
    if !ns_map.is_empty() {
        map_str(value, &["metadata", "namespace"], ns_map);
    }
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Namespace") if !ns_map.is_empty() => {
            map_str(value, &["metadata", "name"], ns_map);
            map_str(
                value,
                &["metadata", "labels", "kubernetes.io/metadata.name"],
                ns_map,
            );
        }
        ("", "PersistentVolume") => {
            map_str(value, &["spec", "claimRef", "namespace"], ns_map);
            map_str(value, &["spec", "storageClassName"], sc_map);
            map_str(
                value,
                &[
                    "metadata",
                    "annotations",
                    "volume.beta.kubernetes.io/storage-class",
                ],
                sc_map,
            );
        }
        ("", "PersistentVolumeClaim") => {
            let key = format!(
                "{}/{}",
                value
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
            );
            if let Some(binding) = opts.volume_bindings.get(&key) {
                match (binding, value.get_mut("spec").and_then(Value::as_object_mut)) {
                    (Some(volume), Some(spec)) => {
                        spec.insert("volumeName".into(), volume.clone().into());
                    }
                    (None, Some(spec)) => {
                        spec.remove("volumeName");
                    }
                    _ => {}
                }
            }
            map_str(value, &["spec", "storageClassName"], sc_map);
            map_str(
                value,
                &[
                    "metadata",
                    "annotations",
                    "volume.beta.kubernetes.io/storage-class",
                ],
                sc_map,
            );
        }
        ("storage.k8s.io", "StorageClass") => map_str(value, &["metadata", "name"], sc_map),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") if !ns_map.is_empty() => {
            if let Some(subjects) = value.get_mut("subjects").and_then(Value::as_array_mut) {
                for s in subjects {
                    map_str(s, &["namespace"], ns_map);
                }
            }
        }
        _ => {}
    }
}

/// Replaces the string at `path` by its mapping, if it is there and mapped.
fn map_str(value: &mut Value, path: &[&str], map: &BTreeMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let target = path.iter().try_fold(value, |v, k| v.get_mut(*k));
    if let Some(v) = target
        && let Some(new) = v.as_str().and_then(|s| map.get(s))
    {
        *v = Value::String(new.clone());
    }
}

/// The parts of an object line checked while sorting (everything else is skipped unparsed).
#[derive(Deserialize)]
struct LineProbe {
    #[serde(default)]
    resource: Option<ApiResource>,
    #[serde(default)]
    object: Option<ObjectHead>,
    #[serde(default)]
    end: Option<Trailer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectHead {
    api_version: String,
    kind: String,
    metadata: MetadataHead,
}

#[derive(Deserialize)]
struct MetadataHead {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// The storage class of a claim or volume: `spec.storageClassName`, or the legacy annotation.
fn storage_class_of(object: &Value) -> Option<String> {
    object
        .pointer("/spec/storageClassName")
        .or_else(|| object.pointer("/metadata/annotations/volume.beta.kubernetes.io~1storage-class"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Reads and checks the whole archive, writing each object line to the temporary file of its
/// tier. Returns the files, rewound, in tier order (`None` for empty tiers), and what admission
/// needs to know of the whole archive.
fn sort_into_tiers(mut reader: impl Read, path: &str) -> Result<(Vec<Option<std::fs::File>>, ArchiveIndex)> {
    // A zstd frame starts with its magic number; anything else is not an archive at all.
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match reader.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading {path}"), e)),
        }
    }
    if got < magic.len() || magic != ZSTD_MAGIC {
        return Err(Error::corrupt(format!(
            "{path}: not a pxb resource archive: it is not zstd-compressed data"
        )));
    }
    let decoder = zstd::stream::read::Decoder::new(io::Cursor::new(magic).chain(reader))
        .map_err(|e| Error::io(format!("starting to decompress {path}"), e))?;
    let mut lines = LineReader::new(BufReader::with_capacity(256 << 10, decoder));
    let read_error = |e: io::Error, after: u64| -> Error {
        let place = if after == 0 {
            "before its first line".to_owned()
        } else {
            format!("after line {after}")
        };
        let message = if e.kind() == io::ErrorKind::UnexpectedEof {
            format!("{path}: truncated: the compressed data ends in the middle of a frame ({place})")
        } else if e.kind() == io::ErrorKind::InvalidData && e.to_string().contains("longer than") {
            format!("{path}: {e}")
        } else {
            format!("{path}: damaged compressed data ({place}): {e}")
        };
        Error::corrupt(message).with_source(e)
    };

    // The header.
    let header = match lines.next_line() {
        Ok(Some((_, line))) => serde_json::from_slice::<Value>(line).ok(),
        Ok(None) => {
            return Err(Error::corrupt(format!(
                "{path}: not a pxb resource archive: it decompresses to nothing"
            )));
        }
        Err(e) => return Err(read_error(e, 0)),
    };
    let header = header
        .filter(|h| h.get("pxb").and_then(Value::as_str) == Some(ARCHIVE_KIND))
        .ok_or_else(|| {
            Error::corrupt(format!(
                "{path}: not a pxb resource archive (line 1 is not a pxb resource archive header)"
            ))
        })?;
    match header.get("format").and_then(Value::as_u64) {
        Some(f) if f == u64::from(ARCHIVE_FORMAT) => {}
        Some(f) => {
            return Err(Error::corrupt(format!(
                "{path}: resource archive format {f} is not supported (this pxb reads format {ARCHIVE_FORMAT})"
            )));
        }
        None => {
            return Err(Error::corrupt(format!(
                "{path}: line 1: the resource archive header has no valid format number"
            )));
        }
    }

    let mut index = ArchiveIndex {
        namespaces: header
            .get("namespaces")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default(),
        ..ArchiveIndex::default()
    };

    // The objects and the end marker.
    let mut tiers: Vec<Option<SpillWriter>> = RestoreTier::ALL.iter().map(|_| None).collect();
    let mut objects = 0u64;
    let mut ended = false;
    let mut last = 1u64;
    loop {
        let (n, line) = match lines.next_line() {
            Ok(Some(l)) => l,
            Ok(None) => break,
            Err(e) => return Err(read_error(e, last)),
        };
        last = n;
        let corrupt = |why: String| Error::corrupt(format!("{path}: line {n}: {why}"));
        if ended {
            return Err(corrupt("data after the end marker".into()));
        }
        let probe: LineProbe =
            serde_json::from_slice(line).map_err(|e| corrupt(format!("not a valid archive line ({e})")))?;
        match probe {
            LineProbe {
                resource: Some(resource),
                object: Some(head),
                end: None,
            } => {
                if head.kind != resource.kind || head.api_version != resource.api_version() {
                    return Err(corrupt(format!(
                        "the object is a {} {} but is filed as {resource}",
                        head.api_version, head.kind
                    )));
                }
                if head.metadata.name.is_empty() {
                    return Err(corrupt("the object has an empty name".into()));
                }
                if let Some(ns) = head.metadata.namespace.as_deref().filter(|n| !n.is_empty()) {
                    index
                        .kinds
                        .insert((ns.to_owned(), resource.group.clone(), resource.kind.clone()));
                }
                if resource.is("", "PersistentVolumeClaim") || resource.is("", "PersistentVolume") {
                    let parsed: ObjectLine = serde_json::from_slice(line)
                        .map_err(|e| corrupt(format!("not a valid archive line ({e})")))?;
                    let object = &parsed.object;
                    let at = |p: &str| {
                        object
                            .pointer(p)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let class = storage_class_of(object);
                    if resource.kind == "PersistentVolume" {
                        index.volumes.push((
                            at("/spec/claimRef/namespace"),
                            at("/spec/claimRef/name"),
                            class,
                        ));
                    } else {
                        index
                            .claims
                            .push((at("/metadata/namespace"), at("/metadata/name"), class));
                    }
                }
                let tier = RestoreTier::of(&resource.group, &resource.kind).index();
                let writer = match &mut tiers[tier] {
                    Some(w) => w,
                    slot => slot.insert(SpillWriter::create(SPILL_LEVEL)?),
                };
                writer.write(line)?;
                writer.write(b"\n")?;
                writer.items += 1;
                objects += 1;
            }
            LineProbe {
                resource: None,
                object: None,
                end: Some(end),
            } => {
                if end.objects != objects {
                    return Err(corrupt(format!(
                        "the end marker counts {} objects but the archive holds {objects}",
                        end.objects
                    )));
                }
                ended = true;
            }
            _ => return Err(corrupt("neither an object nor the end marker".into())),
        }
    }
    if !ended {
        return Err(Error::corrupt(format!(
            "{path}: truncated: the archive ends after line {last} without its end marker"
        )));
    }
    let files = tiers
        .into_iter()
        .map(|w| w.map(SpillWriter::finish).transpose())
        .collect::<Result<_>>()?;
    Ok((files, index))
}

/// Reads a tier's temporary file and sends its objects in batches.
fn read_tier(file: std::fs::File, tx: mpsc::Sender<Vec<(Arc<ApiResource>, ResourceObject)>>) -> Result<()> {
    const BATCH: usize = 64;
    let mut lines = spill_reader(file)?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut last: Option<Arc<ApiResource>> = None;
    while let Some((_, line)) = lines
        .next_line()
        .map_err(|e| Error::io("reading the restore's temporary file", e))?
    {
        let parsed: ObjectLine = serde_json::from_slice(line)
            .map_err(|e| Error::other(format!("re-reading the restore's temporary file: {e}")))?;
        let object = ResourceObject::new(parsed.object)?;
        let resource = match &last {
            Some(r) if **r == parsed.resource => r.clone(),
            _ => {
                let r = Arc::new(parsed.resource);
                last = Some(r.clone());
                r
            }
        };
        batch.push((resource, object));
        if batch.len() == BATCH
            && tx
                .blocking_send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .is_err()
        {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(batch);
    }
    Ok(())
}
