//! Resource backup and restore of real built-in kinds against the real kube-apiserver
//! (`pxb_tests::real`): `pxb_daemon::kube_cluster::KubeCluster` over the resource engine, with the
//! real server's defaulting, validation, immutable fields and admission plugins.
//!
//! A namespace is filled as an administrator would fill it (Deployment, ReplicaSet, Services of
//! every type, ConfigMaps, Secrets of three types, PVCs pending and bound by hand to a PV,
//! ServiceAccounts, RBAC, a CRD and its objects, a NetworkPolicy, a PodDisruptionBudget, a Job
//! and a CronJob, an Ingress, a bare Pod, Endpoints of a Service without a selector), backed up,
//! and restored:
//! - into a mapped namespace of the same cluster while the original is still there;
//! - into the same namespace after its objects were deleted (the Namespace itself is kept: this
//!   server has no namespace controller, so a deleted namespace stays Terminating for ever);
//! - into a second, empty cluster (disaster recovery: the CRD, StorageClass, PV and Namespace are
//!   created too).
//!
//! Each restore is compared object by object with the archive: every archived object is there,
//! equal after the server's defaulting once server-owned fields are stripped, with the namespace
//! references rewritten where the namespace was mapped; each restore is then run again and
//! reports every object as retained.
//!
//! The server here has no controller manager: no Pod runs, no PV binds, no garbage collector
//! removes `orphan` finalizers and no controller removes `kubernetes.io/pvc-protection`. Deletes
//! use background propagation, and the finalizers the protection admission plugin adds are removed
//! by hand, as an administrator would.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::discovery::{Discovery, Scope};
use pxb_core::backup::resources::{
    RESOURCES_OBJECT, ResourceBackupOptions, backup_namespace_resources, restore_namespace_resources,
};
use pxb_core::backup::{BackupId, BackupStatus, Repository};
use pxb_core::resources::{
    ApiResource, ResourceBackupStats, ResourceObject, ResourceSelector, RestoreOptions, RestoreOutcome,
    RestoreReport, strip_server_fields,
};
use pxb_core::store::{InMemory, ObjectStore};
use pxb_daemon::kube_cluster::KubeCluster;
use pxb_tests::real::{self, RealCluster, kubectl};
use serde_json::{Value, json};

/// The CRD of the custom objects.
const CRD: &str = "widgets.example.com";

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The cluster-scoped objects the namespace uses: the CRD, a StorageClass, and a PV an
/// administrator bound by hand to claim `archive` of `ns`.
fn cluster_objects(ns: &str) -> Vec<Value> {
    vec![
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "manual"},
            "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer"}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("pv-{ns}-archive"), "labels": {"tier": "archive"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "manual",
                "csi": {"driver": "example.csi.k8s.io", "volumeHandle": format!("vol-{ns}")},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": "archive"}}}),
    ]
}

fn crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "size": {"type": "integer", "default": 3},
                        "color": {"type": "string"}}},
                    "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}})
}

/// The objects of namespace `ns` (the Namespace first), as an administrator creates them.
fn namespace_objects(ns: &str) -> Vec<Value> {
    let web_labels = json!({"app": "web"});
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"team": "shop"}}}),
        // No controller manager here: the `default` ServiceAccount is created as it would.
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": ns, "labels": web_labels},
            "imagePullSecrets": [{"name": "pull"}]}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": ns},
            "data": {"mode": "prod"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "frozen", "namespace": ns},
            "immutable": true, "data": {"k": "v"}, "binaryData": {"blob": b64("\u{1}\u{2}")}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": ns},
            "type": "Opaque", "stringData": {"password": "s3cret"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pull", "namespace": ns},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": r#"{"auths":{"registry.example":{"auth":"dTpw"}}}"#}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls", "namespace": ns},
            "type": "kubernetes.io/tls", "data": {"tls.crt": b64("cert"), "tls.key": b64("key")}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "leader-election", "namespace": ns},
            "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update", "create"]},
                      {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "leader-election", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leader-election"},
            "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": ns},
                         {"kind": "ServiceAccount", "name": "monitor", "namespace": "monitoring"},
                         {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "archive", "namespace": ns},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                "volumeName": format!("pv-{ns}-archive"), "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns, "labels": web_labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": web_labels},
                "template": {"metadata": {"labels": web_labels}, "spec": {
                    "serviceAccountName": "web",
                    "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 8080}],
                        "envFrom": [{"configMapRef": {"name": "settings"}}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "namespace": ns},
            "spec": {"restartPolicy": "Never",
                "containers": [{"name": "sh", "image": "busybox:1.36", "command": ["sleep", "3600"]}]}}),
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate", "namespace": ns},
            "spec": {"suspend": true, "backoffLimit": 2,
                "template": {"metadata": {"labels": {"app": "migrate"}}, "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "migrate", "image": "busybox:1.36", "command": ["true"]}]}}}}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly", "namespace": ns},
            "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                "containers": [{"name": "report", "image": "busybox:1.36", "command": ["true"]}]}}}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": web_labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-nodeport", "namespace": ns},
            "spec": {"type": "NodePort", "selector": web_labels,
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-headless", "namespace": ns},
            "spec": {"clusterIP": "None", "selector": web_labels, "ports": [{"port": 8080}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "upstream", "namespace": ns},
            "spec": {"type": "ExternalName", "externalName": "db.example.com"}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "legacy-db", "namespace": ns},
            "spec": {"ports": [{"port": 5432}]}}),
        json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "legacy-db", "namespace": ns},
            "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 5432}]}]}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": ns},
            "spec": {"podSelector": {"matchLabels": web_labels}, "policyTypes": ["Ingress"],
                "ingress": [{"ports": [{"port": 8080}]}]}}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "web", "namespace": ns},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": web_labels}}}),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web", "namespace": ns},
            "spec": {"rules": [{"host": "shop.example", "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}],
                "tls": [{"hosts": ["shop.example"], "secretName": "tls"}]}}),
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "small", "namespace": ns},
            "spec": {"color": "blue"}}),
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "big", "namespace": ns, "labels": {"size": "big"}},
            "spec": {"color": "red", "size": 9}}),
    ]
}

/// Creates `objects` with `kubectl create` as the administrator.
fn create_all(cluster: &RealCluster, file: &str, objects: Vec<Value>) {
    let path = cluster.dir().join(file);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&path, serde_json::to_vec_pretty(&list).expect("json")).expect("write objects");
    kubectl(
        cluster,
        &cluster.admin_kubeconfig(),
        &["create", "-f", &path.to_string_lossy()],
    );
}

/// Fills namespace `ns` of `cluster` (and the cluster-scoped objects it uses).
fn seed(cluster: &RealCluster, ns: &str) {
    create_all(cluster, &format!("{ns}-crd.json"), vec![crd()]);
    kubectl(
        cluster,
        &cluster.admin_kubeconfig(),
        &[
            "wait",
            "--for=condition=Established",
            &format!("crd/{CRD}"),
            "--timeout=60s",
        ],
    );
    create_all(cluster, &format!("{ns}-cluster.json"), cluster_objects(ns));
    create_all(cluster, &format!("{ns}-objects.json"), namespace_objects(ns));
    // A ReplicaSet of the Deployment, owned by it as the Deployment controller would own it.
    let uid = kubectl(
        cluster,
        &cluster.admin_kubeconfig(),
        &[
            "get",
            "deployment",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ],
    );
    let labels = json!({"app": "web", "pod-template-hash": "7f9c6d"});
    create_all(
        cluster,
        &format!("{ns}-rs.json"),
        vec![json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-7f9c6d", "namespace": ns, "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": uid,
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [{"name": "web", "image": "nginx:1.27"}]}}}})],
    );
}

/// Reads objects straight from a cluster, with the kube client's own discovery (not pxb's).
struct Reader {
    client: kube::Client,
    discovery: Discovery,
}

impl Reader {
    async fn new(client: kube::Client) -> Self {
        let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
        Self { client, discovery }
    }

    fn api(&self, group: &str, kind: &str, ns: Option<&str>) -> Api<DynamicObject> {
        let (ar, caps) = self
            .discovery
            .get(group)
            .and_then(|g| g.recommended_kind(kind))
            .unwrap_or_else(|| panic!("the cluster serves {kind}.{group}"));
        match ns {
            Some(ns) if caps.scope == Scope::Namespaced => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        }
    }

    async fn get(&self, group: &str, kind: &str, ns: Option<&str>, name: &str) -> Option<Value> {
        self.api(group, kind, ns)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("get {kind} {ns:?}/{name}: {e}"))
            .map(|o| serde_json::to_value(o).expect("json"))
    }
}

/// One archived object.
#[derive(Clone)]
struct Archived {
    resource: ApiResource,
    object: Value,
}

impl Archived {
    fn label(&self) -> String {
        let ns = self.object["metadata"]["namespace"].as_str().unwrap_or("");
        format!(
            "{} {ns}/{}",
            self.resource.kind_key(),
            self.object["metadata"]["name"].as_str().unwrap_or("")
        )
    }
}

/// The objects of a backup's archive, decoded independently of the engine.
async fn read_archive(store: &InMemory, id: &BackupId) -> Vec<Archived> {
    let path = id.object_path(RESOURCES_OBJECT).expect("path");
    let bytes = store
        .get(&path)
        .await
        .expect("archive")
        .bytes()
        .await
        .expect("read archive");
    let raw = zstd::stream::decode_all(&bytes[..]).expect("zstd");
    let lines: Vec<Value> = raw
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("archive line"))
        .collect();
    assert_eq!(lines[0]["pxb"], "resources", "header: {}", lines[0]);
    let end = lines.last().expect("end marker");
    let objects: Vec<Archived> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| Archived {
            resource: serde_json::from_value(l["resource"].clone()).expect("resource"),
            object: l["object"].clone(),
        })
        .collect();
    assert_eq!(end["end"]["objects"], objects.len() as u64);
    objects
}

/// `value` without what backup strips (pxb's own rule, the one a restore is compared by).
fn stripped(resource: &ApiResource, value: Value) -> Value {
    let mut obj = ResourceObject::new(value).expect("object");
    strip_server_fields(resource, &mut obj);
    obj.into_value()
}

/// The archived object as a restore with `mapping` must create it.
fn mapped(a: &Archived, mapping: &BTreeMap<String, String>) -> Value {
    let mut v = a.object.clone();
    let map = |s: &mut Value| {
        if let Some(new) = s.as_str().and_then(|n| mapping.get(n)) {
            *s = Value::String(new.clone());
        }
    };
    if let Some(ns) = v.pointer_mut("/metadata/namespace") {
        map(ns);
    }
    match (a.resource.group.as_str(), a.resource.kind.as_str()) {
        ("", "Namespace") => {
            map(&mut v["metadata"]["name"]);
            map(&mut v["metadata"]["labels"]["kubernetes.io/metadata.name"]);
        }
        ("", "PersistentVolume") => map(&mut v["spec"]["claimRef"]["namespace"]),
        ("rbac.authorization.k8s.io", "RoleBinding") => {
            for s in v["subjects"].as_array_mut().expect("subjects") {
                if s["kind"] == "ServiceAccount" {
                    map(&mut s["namespace"]);
                }
            }
        }
        _ => {}
    }
    v
}

/// Lines that differ between two JSON values (path: left != right).
fn diff(path: &str, left: &Value, right: &Value, out: &mut Vec<String>) {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            let keys: BTreeSet<&String> = l.keys().chain(r.keys()).collect();
            for k in keys {
                diff(
                    &format!("{path}/{k}"),
                    l.get(k).unwrap_or(&Value::Null),
                    r.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(l), Value::Array(r)) if l.len() == r.len() => {
            for (i, (a, b)) in l.iter().zip(r).enumerate() {
                diff(&format!("{path}/{i}"), a, b, out);
            }
        }
        (l, r) if l != r => out.push(format!("{path}: archived {l} != restored {r}")),
        _ => {}
    }
}

/// Backs up `ns` of `cluster` with `KubeCluster` over `client`.
async fn back_up(
    client: kube::Client,
    ns: &str,
) -> (Repository, Arc<InMemory>, BackupId, ResourceBackupStats) {
    let store = Arc::new(InMemory::new());
    let repo = Repository::new(store.clone());
    let opts = ResourceBackupOptions {
        selector: ResourceSelector {
            namespaces: vec![ns.into()],
            ..ResourceSelector::default()
        },
        cluster: Some("real".into()),
        ..ResourceBackupOptions::default()
    };
    let (manifest, stats) = backup_namespace_resources(&repo, &KubeCluster::new(client), &opts)
        .await
        .expect("backup of the real namespace");
    assert_eq!(manifest.status, BackupStatus::Completed, "{stats:?}");
    assert!(stats.missing_dependencies.is_empty(), "{stats:?}");
    (repo, store, manifest.id, stats)
}

fn assert_success(what: &str, report: &RestoreReport) {
    let bad: Vec<String> = report
        .objects
        .iter()
        .filter(|o| {
            matches!(
                o.outcome,
                RestoreOutcome::Failed { .. } | RestoreOutcome::Refused { .. }
            )
        })
        .map(|o| format!("{}: {:?}", o.object, o.outcome))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: the real server refused objects:\n{}",
        bad.join("\n")
    );
}

/// Restores backup `id` into `client`'s cluster; returns the report after checking that nothing
/// failed or was refused.
async fn restore(
    what: &str,
    repo: &Repository,
    id: &BackupId,
    client: kube::Client,
    mapping: &BTreeMap<String, String>,
) -> RestoreReport {
    let opts = RestoreOptions {
        namespace_mapping: mapping.clone(),
        ..RestoreOptions::default()
    };
    let started = Instant::now();
    let report = restore_namespace_resources(repo, id, &KubeCluster::new(client), &opts)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "{what}: {} created, {} retained in {:?}",
        report.created,
        report.retained,
        started.elapsed()
    );
    assert_success(what, &report);
    report
}

/// What the report says of the archived object `a` once mapped.
fn outcome_of<'r>(
    report: &'r RestoreReport,
    a: &Archived,
    mapping: &BTreeMap<String, String>,
) -> &'r RestoreOutcome {
    let m = mapped(a, mapping);
    let name = m["metadata"]["name"].as_str().expect("name");
    let ns = m["metadata"]["namespace"].as_str();
    &report
        .objects
        .iter()
        .find(|o| {
            o.object.kind == a.resource.kind && o.object.name == name && o.object.namespace.as_deref() == ns
        })
        .unwrap_or_else(|| panic!("{} is in the restore report", a.label()))
        .outcome
}

/// Every archived object (only those `select`ed) is in the target, equal to the archived one
/// after mapping, once pxb's stripping is applied to what the server holds (node ports too, unless
/// `node_ports_kept` is false: then the caller checks them). Returns the restored objects by
/// label.
async fn compare(
    what: &str,
    target: &Reader,
    archive: &[Archived],
    mapping: &BTreeMap<String, String>,
    node_ports_kept: bool,
    select: impl Fn(&Archived) -> bool,
) -> BTreeMap<String, Value> {
    let mut problems = Vec::new();
    let mut restored = BTreeMap::new();
    for a in archive.iter().filter(|a| select(a)) {
        let expected = mapped(a, mapping);
        let name = expected["metadata"]["name"].as_str().expect("name");
        let ns = expected["metadata"]["namespace"].as_str();
        let Some(live) = target.get(&a.resource.group, &a.resource.kind, ns, name).await else {
            problems.push(format!("{}: not restored", a.label()));
            continue;
        };
        let mut expected = expected;
        let mut actual = stripped(&a.resource, live.clone());
        if !node_ports_kept && a.resource.kind == "Service" {
            // Checked by the caller: the cluster allocated other ones.
            for v in [&mut expected, &mut actual] {
                for port in v["spec"]["ports"].as_array_mut().into_iter().flatten() {
                    port.as_object_mut().expect("port").remove("nodePort");
                }
            }
        }
        let mut lines = Vec::new();
        diff("", &expected, &actual, &mut lines);
        problems.extend(lines.into_iter().map(|l| format!("{}: {l}", a.label())));
        restored.insert(a.label(), live);
    }
    assert!(
        problems.is_empty(),
        "{what}: restored objects differ from the archive:\n{}",
        problems.join("\n")
    );
    restored
}

/// The archived object of `kind` named `name`.
fn find<'a>(archive: &'a [Archived], kind: &str, name: &str) -> &'a Archived {
    archive
        .iter()
        .find(|a| a.resource.kind == kind && a.object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} is in the archive"))
}

/// Deletes every archived object of namespace `ns` from the cluster (background propagation;
/// the `kubernetes.io/pvc-protection` finalizer removed by hand, there being no controller to
/// remove it) and waits until they are gone.
async fn delete_namespace_objects(reader: &Reader, archive: &[Archived], ns: &str) {
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };
    for a in archive.iter().filter(|a| a.resource.namespaced) {
        let name = a.object["metadata"]["name"].as_str().expect("name");
        let api = reader.api(&a.resource.group, &a.resource.kind, Some(ns));
        api.delete(name, &dp)
            .await
            .unwrap_or_else(|e| panic!("delete {}: {e}", a.label()));
        if a.resource.kind == "PersistentVolumeClaim" {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap_or_else(|e| panic!("remove the finalizers of {}: {e}", a.label()));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for a in archive.iter().filter(|a| a.resource.namespaced) {
        let name = a.object["metadata"]["name"].as_str().expect("name");
        while reader
            .get(&a.resource.group, &a.resource.kind, Some(ns), name)
            .await
            .is_some()
        {
            assert!(Instant::now() < deadline, "{} is still there", a.label());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The kinds the namespace holds, as `ApiResource::kind_key` spells them.
const KINDS: &[&str] = &[
    "ConfigMap",
    "CronJob.batch",
    "Deployment.apps",
    "Endpoints",
    "Ingress.networking.k8s.io",
    "Job.batch",
    "Namespace",
    "NetworkPolicy.networking.k8s.io",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "PodDisruptionBudget.policy",
    "ReplicaSet.apps",
    "Role.rbac.authorization.k8s.io",
    "RoleBinding.rbac.authorization.k8s.io",
    "Secret",
    "Service",
    "ServiceAccount",
    "StorageClass.storage.k8s.io",
    "Widget.example.com",
    "CustomResourceDefinition.apiextensions.k8s.io",
];

/// The backup of a real namespace holds every object, as the server stored it (with the server's
/// defaults) minus what the server owns.
async fn check_backup(source: &Reader, archive: &[Archived], stats: &ResourceBackupStats, ns: &str) {
    let kinds: BTreeSet<&str> = stats.per_kind.keys().map(String::as_str).collect();
    assert_eq!(kinds, KINDS.iter().copied().collect(), "{stats:?}");
    // 1 Namespace, 2 SAs, 2 CMs, 3 Secrets, Role, RoleBinding, 2 PVCs, Deployment, RS, Pod, Job,
    // CronJob, 5 Services, Endpoints, NetworkPolicy, PDB, Ingress, 2 Widgets, CRD, PV, SC.
    assert_eq!(stats.objects, 31, "{stats:?}");
    assert_eq!(archive.len(), 31);
    assert!(stats.skipped.is_empty(), "{stats:?}");
    for a in archive {
        let o = &a.object;
        let meta = &o["metadata"];
        for server_field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "managedFields",
            "generation",
        ] {
            assert!(
                meta.get(server_field).is_none(),
                "{}: {server_field} archived",
                a.label()
            );
        }
        assert!(o.get("status").is_none(), "{}: status archived", a.label());
        // The archived object is the live one, stripped.
        let live = source
            .get(
                &a.resource.group,
                &a.resource.kind,
                meta["namespace"].as_str(),
                meta["name"].as_str().expect("name"),
            )
            .await
            .unwrap_or_else(|| panic!("{} is in the source", a.label()));
        let mut live = stripped(&a.resource, live);
        if a.resource.kind == "ReplicaSet" {
            // Its owner, the Deployment, is archived: the reference to the old uid is dropped.
            assert_eq!(live["metadata"]["ownerReferences"][0]["name"], "web");
            live["metadata"]
                .as_object_mut()
                .expect("meta")
                .remove("ownerReferences");
        }
        let mut lines = Vec::new();
        diff("", o, &live, &mut lines);
        assert!(
            lines.is_empty(),
            "{}: archive differs from the source:\n{}",
            a.label(),
            lines.join("\n")
        );
    }
    // The server's defaults are in the archive, so a restore re-creates the same spec.
    let deployment = &find(archive, "Deployment", "web").object["spec"];
    assert_eq!(deployment["revisionHistoryLimit"], 10, "{deployment}");
    assert_eq!(deployment["progressDeadlineSeconds"], 600);
    assert_eq!(deployment["strategy"]["type"], "RollingUpdate");
    assert_eq!(deployment["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    assert_eq!(
        deployment["template"]["spec"]["containers"][0]["terminationMessagePath"],
        "/dev/termination-log"
    );
    let widget = &find(archive, "Widget", "small").object;
    assert_eq!(widget["spec"]["size"], 3, "the CRD's default: {widget}");
    // Server-assigned addresses are not archived; a headless Service keeps `None`.
    let svc = &find(archive, "Service", "web").object["spec"];
    assert!(
        svc.get("clusterIP").is_none() && svc.get("clusterIPs").is_none(),
        "{svc}"
    );
    let headless = &find(archive, "Service", "web-headless").object["spec"];
    assert_eq!(headless["clusterIP"], "None");
    // The Job's selector and template carry no uid of the source cluster.
    let job = &find(archive, "Job", "migrate").object;
    let job_text = job.to_string();
    assert!(!job_text.contains("controller-uid"), "{job}");
    // The bound PV came along as a dependency, without the claim's old uid.
    let pv = &find(archive, "PersistentVolume", &format!("pv-{ns}-archive")).object;
    assert!(pv["spec"]["claimRef"].get("uid").is_none(), "{pv}");
}

/// The Job as the server makes it: selector and template on the Job's own, new uid; no label of
/// the source cluster's uid anywhere.
fn check_job(what: &str, job: &Value) {
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    let selector = &job["spec"]["selector"]["matchLabels"];
    assert_eq!(
        selector["batch.kubernetes.io/controller-uid"], uid,
        "{what}: {job}"
    );
    for labels in [
        &job["metadata"]["labels"],
        &job["spec"]["template"]["metadata"]["labels"],
    ] {
        for key in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
            if let Some(v) = labels.get(key) {
                assert_eq!(v, uid, "{what}: label {key} names another Job's uid: {job}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_namespace_backs_up_and_restores_into_a_mapped_namespace_and_in_place() {
    let started = Instant::now();
    let cluster = real::start();
    let ns = "shop";
    seed(&cluster, ns);
    let admin = real::admin_client(&cluster).await.expect("admin client");
    let source = Reader::new(admin.clone()).await;

    let (repo, store, id, stats) = back_up(admin.clone(), ns).await;
    let archive = read_archive(&store, &id).await;
    check_backup(&source, &archive, &stats, ns).await;
    let namespaced = |a: &Archived| a.resource.namespaced || a.resource.kind == "Namespace";

    // (b) Into a new namespace, while the original is still there.
    let copy = "shop-copy";
    let mapping: BTreeMap<String, String> = [(ns.to_owned(), copy.to_owned())].into();
    let report = restore("restore into shop-copy", &repo, &id, admin.clone(), &mapping).await;
    for a in &archive {
        let expected = if namespaced(a) {
            RestoreOutcome::Created
        } else {
            // The CRD, StorageClass and PV are the cluster's, already there.
            RestoreOutcome::Retained
        };
        assert_eq!(outcome_of(&report, a, &mapping), &expected, "{}", a.label());
    }
    let restored = compare(
        "restore into shop-copy",
        &source,
        &archive,
        &mapping,
        false,
        namespaced,
    )
    .await;
    // Namespace references were rewritten: the ServiceAccount subject, not the foreign one.
    let binding = &restored["RoleBinding.rbac.authorization.k8s.io shop/leader-election"];
    assert_eq!(binding["subjects"][0]["namespace"], copy, "{binding}");
    assert_eq!(binding["subjects"][1]["namespace"], "monitoring", "{binding}");
    // Server-owned fields are the new object's: new uids, new cluster IPs.
    for a in archive.iter().filter(|a| a.resource.namespaced) {
        let meta = &a.object["metadata"];
        let original = source
            .get(
                &a.resource.group,
                &a.resource.kind,
                Some(ns),
                meta["name"].as_str().expect("name"),
            )
            .await
            .expect("the original is still there");
        let copy = &restored[&a.label()];
        assert_ne!(
            copy["metadata"]["uid"],
            original["metadata"]["uid"],
            "{}",
            a.label()
        );
    }
    let original_web = source.get("", "Service", Some(ns), "web").await.expect("web");
    let copy_web = &restored["Service shop/web"];
    assert!(
        copy_web["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.0.0.")),
        "{copy_web}"
    );
    assert_ne!(copy_web["spec"]["clusterIP"], original_web["spec"]["clusterIP"]);
    assert_eq!(copy_web["spec"]["clusterIPs"][0], copy_web["spec"]["clusterIP"]);
    // The original's node port is taken: the copy got another one.
    let original_np = source
        .get("", "Service", Some(ns), "web-nodeport")
        .await
        .expect("np");
    let copy_np = &restored["Service shop/web-nodeport"];
    let port = &copy_np["spec"]["ports"][0]["nodePort"];
    assert!(
        port.as_u64().is_some_and(|p| (30000..=32767).contains(&p)),
        "{copy_np}"
    );
    assert_ne!(port, &original_np["spec"]["ports"][0]["nodePort"]);
    check_job("restore into shop-copy", &restored["Job.batch shop/migrate"]);
    assert!(
        restored["ReplicaSet.apps shop/web-7f9c6d"]["metadata"]
            .get("ownerReferences")
            .is_none()
    );

    // Again: every object is there already and retained, nothing fails.
    let again = restore(
        "restore into shop-copy again",
        &repo,
        &id,
        admin.clone(),
        &mapping,
    )
    .await;
    assert_eq!(
        (again.created, again.retained),
        (0, archive.len() as u64),
        "{again:?}"
    );

    // (a) In place: the objects deleted (not the Namespace: without a namespace controller it
    // would stay Terminating), then restored.
    let original_np_port = original_np["spec"]["ports"][0]["nodePort"].clone();
    delete_namespace_objects(&source, &archive, ns).await;
    let none = BTreeMap::new();
    let report = restore("restore in place", &repo, &id, admin.clone(), &none).await;
    for a in &archive {
        let expected = if a.resource.namespaced {
            RestoreOutcome::Created
        } else {
            RestoreOutcome::Retained
        };
        assert_eq!(outcome_of(&report, a, &none), &expected, "{}", a.label());
    }
    let restored = compare("restore in place", &source, &archive, &none, true, namespaced).await;
    // The node port was free again: kept.
    assert_eq!(
        restored["Service shop/web-nodeport"]["spec"]["ports"][0]["nodePort"],
        original_np_port
    );
    check_job("restore in place", &restored["Job.batch shop/migrate"]);
    let again = restore("restore in place again", &repo, &id, admin.clone(), &none).await;
    assert_eq!(
        (again.created, again.retained),
        (0, archive.len() as u64),
        "{again:?}"
    );
    eprintln!("test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_namespace_restores_into_an_empty_cluster_with_its_crd_storage_class_and_volume() {
    let started = Instant::now();
    let cluster = real::start();
    let ns = "shop";
    seed(&cluster, ns);
    let admin = real::admin_client(&cluster).await.expect("admin client");
    let (repo, store, id, _) = back_up(admin, ns).await;
    let archive = read_archive(&store, &id).await;

    let empty = real::start();
    let target = real::admin_client(&empty).await.expect("admin client");
    let none = BTreeMap::new();
    let report = restore("restore into an empty cluster", &repo, &id, target.clone(), &none).await;
    for a in &archive {
        assert_eq!(
            outcome_of(&report, a, &none),
            &RestoreOutcome::Created,
            "{}",
            a.label()
        );
    }
    let reader = Reader::new(target.clone()).await;
    let restored = compare(
        "restore into an empty cluster",
        &reader,
        &archive,
        &none,
        true,
        |_| true,
    )
    .await;
    check_job(
        "restore into an empty cluster",
        &restored["Job.batch shop/migrate"],
    );
    let again = restore("restore into the cluster again", &repo, &id, target, &none).await;
    assert_eq!(
        (again.created, again.retained),
        (0, archive.len() as u64),
        "{again:?}"
    );
    eprintln!("test took {:?}", started.elapsed());
}

/// The agent's own identity (ServiceAccount `pxb-agent` of `deploy/agent`, with a token from the
/// TokenRequest API as its pod has it) may read everything a backup of the namespace takes: the
/// archive is the administrator's, object for object. Its restore creates every built-in kind; what
/// `deploy/agent/20-rbac.yaml` withholds on purpose (escalate, and create of custom resources) is
/// reported object by object with the server's reason and stops nothing else, and binding the extra
/// ClusterRole that file documents lets the custom resources through on a second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_service_account_backs_up_what_the_administrator_does_and_restores_within_its_rbac() {
    let cluster = real::start();
    let ns = "shop";
    seed(&cluster, ns);
    real::install_pxb(&cluster).expect("install pxb");
    let token = real::service_account_token(
        &cluster,
        "pxb-system",
        "pxb-agent",
        "https://kubernetes.default.svc",
        Duration::from_secs(600),
    )
    .expect("token");
    let agent = real::token_client(&cluster, "pxb-agent", &token)
        .await
        .expect("agent client");
    let admin = real::admin_client(&cluster).await.expect("admin client");
    // RBAC bindings reach the authorizer a moment after they are written.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(agent.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while secrets.list(&Default::default()).await.is_err() {
        assert!(Instant::now() < deadline, "the agent's binding never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, admin_store, admin_id, admin_stats) = back_up(admin.clone(), ns).await;
    let (repo, agent_store, agent_id, agent_stats) = back_up(agent.clone(), ns).await;
    assert_eq!(agent_stats.per_kind, admin_stats.per_kind);
    let archive = read_archive(&agent_store, &agent_id).await;
    let by_label = |archive: &[Archived]| -> BTreeMap<String, Value> {
        archive.iter().map(|a| (a.label(), a.object.clone())).collect()
    };
    assert_eq!(
        by_label(&archive),
        by_label(&read_archive(&admin_store, &admin_id).await)
    );

    let copy = "agent-copy";
    let mapping: BTreeMap<String, String> = [(ns.to_owned(), copy.to_owned())].into();
    let opts = RestoreOptions {
        namespace_mapping: mapping.clone(),
        ..RestoreOptions::default()
    };
    let report = restore_namespace_resources(&repo, &agent_id, &KubeCluster::new(agent.clone()), &opts)
        .await
        .expect("restore as the agent");
    let withheld = |a: &Archived| matches!(a.resource.kind.as_str(), "Role" | "RoleBinding" | "Widget");
    for a in &archive {
        let outcome = outcome_of(&report, a, &mapping);
        match (a.resource.kind.as_str(), outcome) {
            (_, RestoreOutcome::Retained) if !a.resource.namespaced => {}
            (_, RestoreOutcome::Created) if !withheld(a) => {}
            // The Role grants `update` on leases, which the agent does not hold (no escalate).
            ("Role", RestoreOutcome::Failed { reason }) => {
                assert!(
                    reason.contains("attempting to grant RBAC permissions not currently held"),
                    "{reason}"
                );
            }
            // Its binding names the Role that could not be created.
            ("RoleBinding", RestoreOutcome::Failed { reason }) => {
                assert!(reason.contains("leader-election"), "{reason}");
            }
            ("Widget", RestoreOutcome::Failed { reason }) => {
                assert!(
                    reason.contains("permission denied") && reason.contains("widgets"),
                    "{reason}"
                );
            }
            (_, other) => panic!("{}: {other:?}", a.label()),
        }
    }
    let restored = compare(
        "restore as the agent",
        &Reader::new(admin.clone()).await,
        &archive,
        &mapping,
        false,
        |a| (a.resource.namespaced || a.resource.kind == "Namespace") && !withheld(a),
    )
    .await;
    check_job("restore as the agent", &restored["Job.batch shop/migrate"]);

    // The extra ClusterRole deploy/agent/20-rbac.yaml documents for custom resources.
    create_all(
        &cluster,
        "agent-widgets.json",
        vec![
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "pxb-agent-widgets"},
                "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["create", "get", "delete"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "pxb-agent-widgets"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pxb-agent-widgets"},
                "subjects": [{"kind": "ServiceAccount", "name": "pxb-agent", "namespace": "pxb-system"}]}),
        ],
    );
    let widgets = Reader::new(agent.clone())
        .await
        .api("example.com", "Widget", Some(copy));
    let deadline = Instant::now() + Duration::from_secs(30);
    while widgets.get_opt("none").await.is_err() {
        assert!(Instant::now() < deadline, "the widgets binding never took effect");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let again = restore_namespace_resources(&repo, &agent_id, &KubeCluster::new(agent), &opts)
        .await
        .expect("restore as the agent again");
    for a in &archive {
        let outcome = outcome_of(&again, a, &mapping);
        match (a.resource.kind.as_str(), outcome) {
            ("Widget", RestoreOutcome::Created) | ("Role" | "RoleBinding", RestoreOutcome::Failed { .. }) => {
            }
            (_, RestoreOutcome::Retained) if !withheld(a) => {}
            (_, other) => panic!("second restore as the agent: {}: {other:?}", a.label()),
        }
    }
    compare(
        "restore as the agent, widgets allowed",
        &Reader::new(admin).await,
        &archive,
        &mapping,
        false,
        |a| a.resource.kind == "Widget",
    )
    .await;
}

/// `ExistingResourcePolicy::Replace` deletes an object before creating the archived one. The
/// delete uses background propagation, as kubectl does: with the server's default for batch/v1
/// (orphan) the real server puts the `orphan` finalizer on the Job and keeps it until the garbage
/// collector has orphaned its Pods, so the old Job's Pods would keep running beside the new
/// Job's, and here (no garbage collector) the delete waited out its 60 s and failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_job_is_deleted_without_orphaning_its_pods() {
    let cluster = tokio::task::spawn_blocking(real::start).await.expect("start");
    let admin = real::admin_client(&cluster).await.expect("admin");
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "migrate", "namespace": "jobs"},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "m", "image": "registry.example/migrate:1"}]}}},
    });
    create_all(
        &cluster,
        "job",
        vec![
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "jobs"}}),
            job,
        ],
    );
    let jobs = ApiResource::new("batch", "v1", "Job", "jobs", true);
    let sink = KubeCluster::new(admin.clone());
    pxb_core::resources::ResourceSink::delete(&sink, &jobs, Some("jobs"), "migrate")
        .await
        .expect("the Job is deleted");
    let api: Api<DynamicObject> = Api::namespaced_with(
        admin,
        "jobs",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("batch", "v1", "Job"),
            "jobs",
        ),
    );
    assert!(api.get_opt("migrate").await.expect("get").is_none());
}

/// A paged list whose continue token expired goes on after the last object it handed out,
/// instead of failing the backup with 410 Expired: the API server compacts etcd every 5 minutes
/// (here every second), and a slow backup of a large namespace outlives its token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_list_goes_on_after_its_continue_token_expired() {
    use pxb_core::resources::ResourceSource as _;
    let cluster = tokio::task::spawn_blocking(|| {
        RealCluster::start_compacting_every(Duration::from_secs(1)).expect("real cluster")
    })
    .await
    .expect("start");
    let mut objects = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "many"}})];
    for i in 0..7 {
        objects.push(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i}"), "namespace": "many"}, "data": {"i": i.to_string()}}));
    }
    create_all(&cluster, "many", objects);
    let admin = real::admin_client(&cluster).await.expect("admin");
    let configmaps = ApiResource::new("", "v1", "ConfigMap", "configmaps", true);
    let sink = KubeCluster::new(admin.clone());
    let first = sink
        .list(&configmaps, Some("many"), None, None, 3)
        .await
        .expect("page 1");
    // A raw token taken after pxb's: once it is expired, pxb's is too.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        "many",
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("", "v1", "ConfigMap"),
            "configmaps",
        ),
    );
    let raw_token = raw
        .list(&kube::api::ListParams::default().limit(3))
        .await
        .expect("raw page")
        .metadata
        .continue_
        .expect("a continue token");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut bump = 0;
    loop {
        // Writes move etcd's revision on, so the compaction passes the tokens' revision.
        create_all(
            &cluster,
            &format!("bump-{bump}"),
            vec![json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("bump-{bump}"), "namespace": "default"}})],
        );
        bump += 1;
        match raw
            .list(
                &kube::api::ListParams::default()
                    .limit(3)
                    .continue_token(&raw_token),
            )
            .await
        {
            Err(kube::Error::Api(e)) if e.code == 410 => break,
            other => {
                assert!(Instant::now() < deadline, "the token never expired: {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut names: Vec<String> = first.items.iter().map(|o| o.name().to_owned()).collect();
    let mut token = first.continue_token.clone();
    while let Some(t) = token {
        let page = sink
            .list(&configmaps, Some("many"), None, Some(&t), 3)
            .await
            .expect("the list goes on after its token expired");
        names.extend(page.items.iter().map(|o| o.name().to_owned()));
        token = page.continue_token;
    }
    let expected: Vec<String> = (0..7).map(|i| format!("cm-{i}")).collect();
    assert_eq!(names, expected, "every object once, in order");
}
