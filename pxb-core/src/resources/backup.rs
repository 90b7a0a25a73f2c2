//! [`backup_resources`]: the selected objects of a cluster into one archive object.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use super::archive::{
    ARCHIVE_FORMAT, ARCHIVE_KIND, ARCHIVE_LEVEL, Header, ObjectLine, SPILL_LEVEL, SpillWriter, join,
    spill_reader, trailer_line, write_object_line,
};
use super::strip::{
    SkipReason, drop_archived_owners, has_owner_references, is_selector_service, maybe_custom,
    never_backed_up, skip_reason, strip, uid_key,
};
use super::{ApiResource, LabelSelector, ResourceObject, ResourceSelector, ResourceSource, RestoreTier};
use crate::store::{ObjectStore, PutMode, PutOptions};
use crate::{Error, ObjectPath, Result};

/// Objects asked for per `list` call (what `kubectl` uses).
const LIST_LIMIT: u32 = 500;

/// Above this many PersistentVolumes to record, a backup lists them all rather than getting each.
const LIST_INSTEAD_OF_GET: usize = 50;

/// Pages in flight between listing and compression.
const PIPELINE_DEPTH: usize = 4;

/// What [`backup_resources`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResourceBackupStats {
    /// The namespaces backed up.
    pub namespaces: Vec<String>,
    /// Objects written, dependencies included.
    pub objects: u64,
    /// Objects written per kind ([`ApiResource::kind_key`]: `ConfigMap`, `Deployment.apps`).
    pub per_kind: BTreeMap<String, u64>,
    /// Cluster-scoped dependencies written (Namespaces, PersistentVolumes, StorageClasses,
    /// CustomResourceDefinitions), per kind; also counted in `per_kind`.
    pub dependencies: BTreeMap<String, u64>,
    /// Objects left out, per reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// Dependencies that were referenced but not found (e.g. `PersistentVolume pv-1`), or whose
    /// kind the cluster does not serve.
    pub missing_dependencies: Vec<String>,
    /// Owner references removed because the owner is in the archive.
    pub owner_references_removed: u64,
    /// Uncompressed size of the archive (JSON lines), in bytes.
    pub raw_bytes: u64,
    /// Size of the archive object, in bytes.
    pub compressed_bytes: u64,
}

/// Backs up the selected objects of `source` into one archive object at `path` (written
/// put-if-absent: an existing object there is [`Error::AlreadyExists`]).
///
/// Every namespaced resource type the cluster serves (filtered by the selector's kinds, without
/// Events) is listed page by page in each selected namespace, with the selector's labels. Objects
/// Kubernetes re-creates are left out ([`SkipReason`]); the rest lose what the source cluster
/// populated (uid, resourceVersion, managedFields, creationTimestamp, generation, selfLink,
/// deletion fields, `status`, a Service's cluster IPs, binding details of PVs and PVCs, a Pod's
/// node, a Job's controller-uid labels) and their owner references to objects also in the archive.
/// The cluster-scoped objects the namespaces depend on are recorded once each: the Namespaces, the
/// PersistentVolumes bound to their claims, the StorageClasses of those claims and volumes, and the
/// CustomResourceDefinitions of their custom resources.
///
/// Memory stays bounded whatever the number of objects: pages are compressed as they arrive into a
/// temporary file, and only the uids of archived objects (16 bytes each) and the names of
/// dependencies are kept. A second pass over the temporary file removes owner references (an
/// owner may be listed after its dependents) and writes the archive, which is then uploaded with
/// [`ObjectStore::put_stream`].
pub async fn backup_resources(
    source: &dyn ResourceSource,
    selector: &ResourceSelector,
    store: &dyn ObjectStore,
    path: &ObjectPath,
) -> Result<ResourceBackupStats> {
    let labels = selector.parsed_label_selector()?;
    // Fail fast rather than after listing everything (the put below is put-if-absent anyway).
    if store.head(path).await.is_ok() {
        return Err(Error::already_exists(format!(
            "{path}: a resource archive is already there; backups are never overwritten"
        )));
    }
    let label_str = labels.as_ref().map(ToString::to_string);
    let discovered = source
        .api_resources()
        .await
        .map_err(|e| e.context("resource discovery"))?;
    let mut seen = HashSet::new();
    let discovered: Vec<ApiResource> = discovered
        .into_iter()
        .filter(|r| seen.insert((r.group.clone(), r.plural.clone())))
        .collect();
    let find = |group: &str, kind: &str| discovered.iter().find(|r| r.is(group, kind)).cloned();

    // The namespaces: as selected, or every namespace of the cluster.
    let ns_resource = find("", "Namespace");
    let namespaces: Vec<String> = if selector.namespaces.is_empty() {
        let ns_resource = ns_resource.clone().ok_or_else(|| {
            Error::invalid("the cluster does not serve Namespaces, so pxb cannot list them")
        })?;
        let mut names = BTreeSet::new();
        let mut token = None;
        loop {
            let page = source
                .list(&ns_resource, None, None, token.as_deref(), LIST_LIMIT)
                .await
                .map_err(|e| e.context("listing namespaces"))?;
            names.extend(page.items.iter().map(|o| o.name().to_owned()));
            token = page.continue_token;
            if token.is_none() {
                break;
            }
        }
        names.into_iter().collect()
    } else {
        let set: BTreeSet<String> = selector.namespaces.iter().map(|n| n.trim().to_owned()).collect();
        if set.iter().any(String::is_empty) {
            return Err(Error::invalid("an empty namespace name was selected"));
        }
        set.into_iter().collect()
    };

    // Namespaced types to list: Services first (the Endpoints rule needs them), then in restore
    // order so that the archive reads naturally.
    let mut to_list: Vec<(Arc<ApiResource>, bool)> = discovered
        .iter()
        .filter(|r| r.namespaced && !never_backed_up(r))
        .filter_map(|r| {
            let wanted = selector.selects_resource(r);
            // Services are listed even when not backed up, to tell managed Endpoints apart.
            let needed = wanted
                || (r.is("", "Service")
                    && discovered
                        .iter()
                        .any(|e| e.is("", "Endpoints") && selector.selects_resource(e)));
            needed.then(|| (Arc::new(r.clone()), wanted))
        })
        .collect();
    to_list.sort_by_key(|(r, _)| {
        (
            !r.is("", "Service"),
            RestoreTier::of(&r.group, &r.kind),
            r.group.clone(),
            r.plural.clone(),
        )
    });

    // Pass 1: list, filter, strip, compress into a temporary file.
    let (tx, rx) = mpsc::channel::<Batch>(PIPELINE_DEPTH);
    let worker_labels = labels.clone();
    let worker = tokio::task::spawn_blocking(move || pass_one(rx, worker_labels));
    let all_namespaces = selector.namespaces.is_empty();
    let listed: Result<()> = async {
        for (resource, back_up) in &to_list {
            // A Service listing that only feeds the Endpoints rule takes every Service.
            let label_filter = if *back_up { label_str.as_deref() } else { None };
            let scopes: Vec<Option<&str>> = if all_namespaces {
                vec![None]
            } else {
                namespaces.iter().map(|n| Some(n.as_str())).collect()
            };
            for ns in scopes {
                let mut token: Option<String> = None;
                loop {
                    let page = source
                        .list(resource, ns, label_filter, token.as_deref(), LIST_LIMIT)
                        .await
                        .map_err(|e| match ns {
                            Some(ns) => e.context(format!("listing {resource} in namespace {ns}")),
                            None => e.context(format!("listing {resource}")),
                        })?;
                    let batch = Batch {
                        resource: resource.clone(),
                        back_up: *back_up,
                        items: page.items,
                    };
                    if tx.send(batch).await.is_err() {
                        return Ok(()); // The worker stopped; its result says why.
                    }
                    token = page.continue_token;
                    if token.is_none() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let worker_result = join(worker, "resource backup").await;
    listed?;
    let mut pass1 = worker_result?;

    // Pass 2: the archive: header, dependencies, then the objects of pass 1.
    let header = Header {
        pxb: ARCHIVE_KIND.into(),
        format: ARCHIVE_FORMAT.into(),
        generator: concat!("pxb-core ", env!("CARGO_PKG_VERSION")).into(),
        namespaces: namespaces.clone(),
        selector: selector.clone(),
    };
    let mut header_line =
        serde_json::to_vec(&header).map_err(|e| Error::other(format!("serializing the header: {e}")))?;
    header_line.push(b'\n');
    let (dep_tx, dep_rx) = mpsc::channel::<(Arc<ApiResource>, ResourceObject)>(64);
    let spill = pass1
        .spill
        .take()
        .ok_or_else(|| Error::other("pass one left no spill file"))?;
    let uids = std::mem::take(&mut pass1.uids);
    let writer = tokio::task::spawn_blocking(move || pass_two(dep_rx, header_line, spill, uids));
    let mut missing = Vec::new();
    let mut dep_counts: BTreeMap<String, u64> = BTreeMap::new();
    let deps: Result<()> = async {
        let mut send = async |resource: &Arc<ApiResource>, obj: ResourceObject| -> bool {
            *dep_counts.entry(resource.kind_key()).or_default() += 1;
            dep_tx.send((resource.clone(), obj)).await.is_ok()
        };
        // The resource of a dependency kind, unless the cluster does not serve it or it is excluded.
        let dep_resource = |group: &str, kind: &str| -> Option<Arc<ApiResource>> {
            let r = find(group, kind)?;
            (!selector.excludes_resource(&r)).then(|| Arc::new(r))
        };
        if let Some(r) = dep_resource("", "Namespace") {
            for ns in &namespaces {
                match source
                    .get(&r, None, ns)
                    .await
                    .map_err(|e| e.context(format!("reading namespace {ns}")))?
                {
                    Some(obj) => {
                        if !send(&r, obj).await {
                            return Ok(());
                        }
                    }
                    None => missing.push(format!("Namespace {ns}")),
                }
            }
        }
        if !pass1.custom_types.is_empty() {
            match dep_resource("apiextensions.k8s.io", "CustomResourceDefinition") {
                Some(r) => {
                    for t in &pass1.custom_types {
                        let name = format!("{}.{}", t.plural, t.group);
                        // Aggregated APIs have no CustomResourceDefinition: not missing.
                        if let Some(obj) = source
                            .get(&r, None, &name)
                            .await
                            .map_err(|e| e.context(format!("reading CustomResourceDefinition {name}")))?
                            && !send(&r, obj).await
                        {
                            return Ok(());
                        }
                    }
                }
                None if find("apiextensions.k8s.io", "CustomResourceDefinition").is_none() => {
                    missing.push("CustomResourceDefinitions (not served by the cluster)".to_owned());
                }
                None => {}
            }
        }
        let mut classes = std::mem::take(&mut pass1.storage_classes);
        let mut volumes = std::mem::take(&mut pass1.volumes);
        if !volumes.is_empty() {
            match dep_resource("", "PersistentVolume") {
                // Many volumes: one paged list of them all costs fewer API calls than a get each.
                Some(r) if volumes.len() > LIST_INSTEAD_OF_GET => {
                    let mut token: Option<String> = None;
                    loop {
                        let page = source
                            .list(&r, None, None, token.as_deref(), LIST_LIMIT)
                            .await
                            .map_err(|e| e.context("listing PersistentVolumes"))?;
                        for obj in page.items {
                            if !volumes.remove(obj.name()) {
                                continue;
                            }
                            if let Some(sc) = storage_class_of(&obj) {
                                classes.insert(sc.to_owned());
                            }
                            if !send(&r, obj).await {
                                return Ok(());
                            }
                        }
                        token = page.continue_token;
                        if token.is_none() {
                            break;
                        }
                    }
                    missing.extend(volumes.iter().map(|pv| format!("PersistentVolume {pv}")));
                }
                Some(r) => {
                    for pv in &volumes {
                        match source
                            .get(&r, None, pv)
                            .await
                            .map_err(|e| e.context(format!("reading PersistentVolume {pv}")))?
                        {
                            Some(obj) => {
                                if let Some(sc) = storage_class_of(&obj) {
                                    classes.insert(sc.to_owned());
                                }
                                if !send(&r, obj).await {
                                    return Ok(());
                                }
                            }
                            None => missing.push(format!("PersistentVolume {pv}")),
                        }
                    }
                }
                None if find("", "PersistentVolume").is_none() => {
                    missing.push("PersistentVolumes (not served by the cluster)".to_owned());
                }
                None => {}
            }
        }
        if !classes.is_empty()
            && let Some(r) = dep_resource("storage.k8s.io", "StorageClass")
        {
            for sc in &classes {
                match source
                    .get(&r, None, sc)
                    .await
                    .map_err(|e| e.context(format!("reading StorageClass {sc}")))?
                {
                    Some(obj) => {
                        if !send(&r, obj).await {
                            return Ok(());
                        }
                    }
                    None => missing.push(format!("StorageClass {sc}")),
                }
            }
        }
        Ok(())
    }
    .await;
    drop(dep_tx);
    let written = join(writer, "resource backup").await;
    deps?;
    let (archive, pass2) = written?;

    let objects = pass1.objects + pass2.dependencies;
    let mut metadata = crate::Metadata::new();
    metadata.insert("pxb_kind".into(), ARCHIVE_KIND.into());
    metadata.insert("pxb_format".into(), ARCHIVE_FORMAT.to_string());
    metadata.insert("pxb_objects".into(), objects.to_string());
    let put = store
        .put_stream(
            path,
            Box::new(tokio::fs::File::from_std(archive)),
            PutOptions {
                mode: PutMode::Create,
                metadata,
            },
        )
        .await
        .map_err(|e| e.context("writing the resource archive"))?;

    let mut per_kind = pass1.per_kind;
    for (k, n) in &dep_counts {
        *per_kind.entry(k.clone()).or_default() += n;
    }
    Ok(ResourceBackupStats {
        namespaces,
        objects,
        per_kind,
        dependencies: dep_counts,
        skipped: pass1.skipped,
        missing_dependencies: missing,
        owner_references_removed: pass2.owners_removed,
        raw_bytes: pass2.raw_bytes,
        compressed_bytes: put.size,
    })
}

/// A PVC's or PV's storage class: `spec.storageClassName`, or the legacy beta annotation.
pub(crate) fn storage_class_of(obj: &ResourceObject) -> Option<&str> {
    obj.str_at(&["spec", "storageClassName"])
        .or_else(|| {
            obj.str_at(&[
                "metadata",
                "annotations",
                "volume.beta.kubernetes.io/storage-class",
            ])
        })
        .filter(|s| !s.is_empty())
}

/// One listed page, from the async side to the compressing worker.
struct Batch {
    resource: Arc<ApiResource>,
    /// `false`: listed only to learn which Services have a selector.
    back_up: bool,
    items: Vec<ResourceObject>,
}

/// What pass one found.
struct PassOne {
    spill: Option<SpillWriter>,
    uids: HashSet<u128>,
    objects: u64,
    per_kind: BTreeMap<String, u64>,
    skipped: BTreeMap<SkipReason, u64>,
    volumes: BTreeSet<String>,
    storage_classes: BTreeSet<String>,
    custom_types: BTreeSet<ApiResource>,
}

/// Spill lines are object lines prefixed by one byte: `O` if the object has owner references (and
/// pass two must look at them), `-` if it can be copied as is.
const HAS_OWNERS: u8 = b'O';
const NO_OWNERS: u8 = b'-';

fn pass_one(mut rx: mpsc::Receiver<Batch>, labels: Option<LabelSelector>) -> Result<PassOne> {
    let mut out = PassOne {
        spill: Some(SpillWriter::create(SPILL_LEVEL)?),
        uids: HashSet::new(),
        objects: 0,
        per_kind: BTreeMap::new(),
        skipped: BTreeMap::new(),
        volumes: BTreeSet::new(),
        storage_classes: BTreeSet::new(),
        custom_types: BTreeSet::new(),
    };
    let mut managed_endpoints = HashSet::new();
    let mut line = Vec::with_capacity(16 << 10);
    let mut current: Option<(Arc<ApiResource>, Vec<u8>, String)> = None;
    while let Some(batch) = rx.blocking_recv() {
        let resource = batch.resource;
        if current
            .as_ref()
            .is_none_or(|(r, _, _)| !Arc::ptr_eq(r, &resource))
        {
            let json = serde_json::to_vec(&*resource).map_err(|e| Error::other(e.to_string()))?;
            current = Some((resource.clone(), json, resource.kind_key()));
        }
        let Some((_, resource_json, kind_key)) = current.as_ref() else {
            continue;
        };
        for mut obj in batch.items {
            if is_selector_service(&resource, &obj) {
                managed_endpoints.insert(format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name()));
            }
            if !batch.back_up || labels.as_ref().is_some_and(|l| !l.matches(&obj)) {
                continue;
            }
            if let Some(reason) = skip_reason(&resource, &obj, &managed_endpoints) {
                *out.skipped.entry(reason).or_default() += 1;
                continue;
            }
            if resource.is("", "PersistentVolumeClaim") {
                if let Some(pv) = obj.str_at(&["spec", "volumeName"]).filter(|s| !s.is_empty()) {
                    out.volumes.insert(pv.to_owned());
                }
                if let Some(sc) = storage_class_of(&obj) {
                    out.storage_classes.insert(sc.to_owned());
                }
            }
            if maybe_custom(&resource) && !out.custom_types.contains(&*resource) {
                out.custom_types.insert((*resource).clone());
            }
            if let Some(uid) = strip(&resource, &mut obj) {
                out.uids.insert(uid_key(&uid));
            }
            line.clear();
            line.push(if has_owner_references(&obj) {
                HAS_OWNERS
            } else {
                NO_OWNERS
            });
            write_object_line(&mut line, resource_json, obj.as_value())?;
            if let Some(spill) = out.spill.as_mut() {
                spill.write(&line)?;
            }
            out.objects += 1;
            *out.per_kind.entry(kind_key.clone()).or_default() += 1;
        }
    }
    Ok(out)
}

/// What pass two wrote.
struct PassTwo {
    dependencies: u64,
    owners_removed: u64,
    raw_bytes: u64,
}

fn pass_two(
    mut deps: mpsc::Receiver<(Arc<ApiResource>, ResourceObject)>,
    header_line: Vec<u8>,
    spill: SpillWriter,
    mut uids: HashSet<u128>,
) -> Result<(std::fs::File, PassTwo)> {
    let mut archive = SpillWriter::create(ARCHIVE_LEVEL)?;
    archive.write(&header_line)?;
    let mut stats = PassTwo {
        dependencies: 0,
        owners_removed: 0,
        raw_bytes: 0,
    };
    let mut line = Vec::with_capacity(16 << 10);
    while let Some((resource, mut obj)) = deps.blocking_recv() {
        if let Some(uid) = strip(&resource, &mut obj) {
            uids.insert(uid_key(&uid));
        }
        if drop_archived_owners(&mut obj, &uids) {
            stats.owners_removed += 1;
        }
        let resource_json = serde_json::to_vec(&*resource).map_err(|e| Error::other(e.to_string()))?;
        line.clear();
        write_object_line(&mut line, &resource_json, obj.as_value())?;
        archive.write(&line)?;
        stats.dependencies += 1;
    }
    let mut reader = spill_reader(spill.finish()?)?;
    let mut copied = 0u64;
    while let Some((_, raw)) = reader
        .next_line()
        .map_err(|e| Error::io("reading the backup's temporary file", e))?
    {
        let Some((&flag, rest)) = raw.split_first() else {
            return Err(Error::other("empty line in the backup's temporary file"));
        };
        if flag == HAS_OWNERS {
            let parsed: ObjectLine = serde_json::from_slice(rest)
                .map_err(|e| Error::other(format!("re-reading the backup's temporary file: {e}")))?;
            let mut obj = ResourceObject::new(parsed.object)?;
            if drop_archived_owners(&mut obj, &uids) {
                stats.owners_removed += 1;
            }
            let resource_json =
                serde_json::to_vec(&parsed.resource).map_err(|e| Error::other(e.to_string()))?;
            line.clear();
            write_object_line(&mut line, &resource_json, obj.as_value())?;
            archive.write(&line)?;
        } else {
            archive.write(rest)?;
            archive.write(b"\n")?;
        }
        copied += 1;
    }
    archive.write(&trailer_line(stats.dependencies + copied))?;
    stats.raw_bytes = archive.bytes;
    let file = archive.finish()?;
    Ok((file, stats))
}
