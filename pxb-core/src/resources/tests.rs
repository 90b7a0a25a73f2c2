//! Tests of resource backup and restore, with the in-memory object store and cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use super::strip::strip;
use super::*;
use crate::Error;
use crate::store::{ObjectStore, PutOptions};
use crate::{InMemory, ObjectPath};

fn p(s: &str) -> ObjectPath {
    ObjectPath::parse(s).expect("valid path")
}

fn res(group: &str, kind: &str) -> ApiResource {
    well_known_api_resources()
        .into_iter()
        .find(|r| r.is(group, kind))
        .expect("well-known resource")
}

fn widgets() -> ApiResource {
    ApiResource::new("example.com", "v1", "Widget", "widgets", true)
}

fn seed(c: &InMemoryCluster, v: Value) -> ResourceObject {
    c.seed(v).expect("seed")
}

fn ns_obj(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn cm(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "labels": labels,
                        "managedFields": [{"manager": "kubectl"}], "resourceVersion": "17"},
           "data": {"k": format!("v-{name}")}})
}

/// A namespace `shop` with one of everything, and a namespace `other` and cluster-scoped objects
/// that a backup of `shop` must not take.
async fn fixture() -> InMemoryCluster {
    let c = InMemoryCluster::new();
    seed(&c, ns_obj("shop"));
    seed(&c, ns_obj("other"));
    // A CRD, created through the sink so that the cluster serves its type.
    let crd = ResourceObject::new(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object"}}}]},
        "status": {"storedVersions": ["v1"]}
    }))
    .expect("crd");
    c.create(&res("apiextensions.k8s.io", "CustomResourceDefinition"), &crd)
        .await
        .expect("create crd");

    seed(&c, cm("shop", "app-config", json!({"app": "web"})));
    seed(&c, cm("shop", "kube-root-ca.crt", json!({})));
    seed(&c, cm("other", "other-config", json!({"app": "web"})));
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "db-pass", "namespace": "shop", "labels": {"app": "db"}},
                    "data": {"password": "c2VjcmV0"}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                    "metadata": {"name": "web-token-x", "namespace": "shop"}, "data": {"token": "dA=="}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}}}),
    );
    seed(
        &c,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": "reader", "namespace": "shop"},
                    "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
    );
    seed(
        &c,
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "read", "namespace": "shop"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
                    "subjects": [{"kind": "ServiceAccount", "name": "web", "namespace": "shop"}]}),
    );
    let deploy = seed(
        &c,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}, "generation": 4},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}},
        "status": {"replicas": 2, "readyReplicas": 2}}),
    );
    let rs = seed(
        &c,
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f", "namespace": "shop", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                          "uid": deploy.uid().expect("uid"), "controller": true,
                                          "blockOwnerDeletion": true}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-5d8f-abcde", "namespace": "shop", "labels": {"app": "web"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
                                          "uid": rs.uid().expect("uid"), "controller": true}]},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.27"}]}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "debug", "namespace": "shop"},
        "spec": {"nodeName": "node-2", "containers": [{"name": "sh", "image": "busybox"}]},
        "status": {"phase": "Running"}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
                 "ports": [{"port": 80}]}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "subsets": [{"addresses": [{"ip": "10.1.0.4"}]}]}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "external", "namespace": "shop"},
        "spec": {"clusterIP": "10.0.0.8", "clusterIPs": ["10.0.0.8"], "ports": [{"port": 5432}]}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "external", "namespace": "shop"},
        "subsets": [{"addresses": [{"ip": "192.168.1.20"}], "ports": [{"port": 5432}]}]}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "headless", "namespace": "shop"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}}),
    );
    seed(
        &c,
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x7k2", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "web", "app": "web",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4", "endpoints": []}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web.17a", "namespace": "shop"}, "reason": "Scheduled",
        "involvedObject": {"kind": "Pod", "name": "web-5d8f-abcde"}}),
    );
    seed(
        &c,
        json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.17b", "namespace": "shop"}, "reason": "Pulled", "eventTime": null}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "shop", "labels": {"app": "db"},
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes",
                                     "pv.kubernetes.io/bound-by-controller": "yes",
                                     "note": "keep me"}},
        "spec": {"storageClassName": "fast", "volumeName": "pv-data", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}},
        "status": {"phase": "Bound"}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pending", "namespace": "shop"},
        "spec": {"storageClassName": "slow", "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-data"},
        "spec": {"storageClassName": "fast", "capacity": {"storage": "1Gi"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data",
                              "uid": "0000-pvc-uid", "resourceVersion": "99"},
                 "csi": {"driver": "disk.csi.example.com", "volumeHandle": "vol-1"}},
        "status": {"phase": "Bound"}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-unrelated"}, "spec": {"storageClassName": "unused"}}),
    );
    for sc in ["fast", "slow", "unused"] {
        seed(
            &c,
            json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                        "metadata": {"name": sc}, "provisioner": "disk.csi.example.com"}),
        );
    }
    seed(
        &c,
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "migrate", "namespace": "shop", "uid": "j-1",
                     "labels": {"batch.kubernetes.io/controller-uid": "j-1", "controller-uid": "j-1",
                                "job-name": "migrate", "team": "db"}},
        "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-1"}},
                 "template": {"metadata": {"labels": {"batch.kubernetes.io/controller-uid": "j-1",
                                                      "controller-uid": "j-1", "job-name": "migrate"}},
                              "spec": {"restartPolicy": "Never",
                                       "containers": [{"name": "m", "image": "migrate:1"}]}}}}),
    );
    let widget = seed(
        &c,
        json!({"apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {"size": 3}, "status": {"ready": true}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "widget-state", "namespace": "shop",
                     "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "w1",
                                          "uid": widget.uid().expect("uid"), "controller": true}]},
        "data": {"state": "ok"}}),
    );
    seed(
        &c,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cluster-owned", "namespace": "shop",
                     "ownerReferences": [{"apiVersion": "example.com/v1", "kind": "ClusterThing",
                                          "name": "thing", "uid": "uid-outside-the-backup"}]},
        "data": {"x": "y"}}),
    );
    c
}

/// The archive's object lines, decoded independently of the restore code.
async fn read_archive(store: &InMemory, path: &ObjectPath) -> (Value, Vec<(ApiResource, ResourceObject)>) {
    let data = store.get(path).await.expect("get").bytes().await.expect("bytes");
    let mut text = String::new();
    zstd::stream::read::Decoder::new(&data[..])
        .expect("decoder")
        .read_to_string(&mut text)
        .expect("decompress");
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().expect("header")).expect("header json");
    let mut objects = Vec::new();
    let mut end = None;
    for line in lines {
        let v: Value = serde_json::from_str(line).expect("line json");
        if let Some(e) = v.get("end") {
            end = Some(e.clone());
            continue;
        }
        let r: ApiResource = serde_json::from_value(v["resource"].clone()).expect("resource");
        objects.push((r, ResourceObject::new(v["object"].clone()).expect("object")));
    }
    assert_eq!(
        end.expect("end marker")["objects"].as_u64(),
        Some(objects.len() as u64)
    );
    (header, objects)
}

fn find<'a>(
    objects: &'a [(ApiResource, ResourceObject)],
    kind: &str,
    name: &str,
) -> Option<&'a ResourceObject> {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| o.kind() == kind && o.name() == name)
}

fn names(objects: &[(ApiResource, ResourceObject)]) -> BTreeSet<String> {
    objects.iter().map(|(_, o)| o.to_string()).collect()
}

async fn backup_shop(c: &InMemoryCluster, store: &InMemory) -> ResourceBackupStats {
    backup_resources(
        c,
        &ResourceSelector::namespaces(["shop"]),
        store,
        &p("b/resources.jsonl.zst"),
    )
    .await
    .expect("backup")
}

#[tokio::test]
async fn backup_takes_the_namespace_and_its_dependencies() {
    let c = fixture().await;
    let store = InMemory::new();
    let stats = backup_shop(&c, &store).await;
    let (header, objects) = read_archive(&store, &p("b/resources.jsonl.zst")).await;
    assert_eq!(header["pxb"], "resources");
    assert_eq!(header["format"], 1);
    assert_eq!(header["namespaces"], json!(["shop"]));

    let expected: BTreeSet<String> = [
        "Namespace shop",
        "CustomResourceDefinition widgets.example.com",
        "PersistentVolume pv-data",
        "StorageClass fast",
        "StorageClass slow",
        "ConfigMap shop/app-config",
        "ConfigMap shop/widget-state",
        "ConfigMap shop/cluster-owned",
        "Secret shop/db-pass",
        "ServiceAccount shop/web",
        "Role shop/reader",
        "RoleBinding shop/read",
        "Deployment shop/web",
        "ReplicaSet shop/web-5d8f",
        "Pod shop/debug",
        "Service shop/web",
        "Service shop/external",
        "Service shop/headless",
        "Endpoints shop/external",
        "PersistentVolumeClaim shop/data",
        "PersistentVolumeClaim shop/pending",
        "Job shop/migrate",
        "Widget shop/w1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names(&objects), expected);
    assert_eq!(objects.len(), expected.len(), "each object once");
    // Dependencies come first.
    assert_eq!(objects[0].1.kind(), "Namespace");

    assert_eq!(stats.objects, expected.len() as u64);
    assert_eq!(stats.namespaces, vec!["shop".to_owned()]);
    assert_eq!(stats.per_kind["ConfigMap"], 3);
    assert_eq!(stats.per_kind["Deployment.apps"], 1);
    assert_eq!(stats.per_kind["Widget.example.com"], 1);
    assert_eq!(
        stats.dependencies,
        BTreeMap::from([
            ("CustomResourceDefinition.apiextensions.k8s.io".to_owned(), 1),
            ("Namespace".to_owned(), 1),
            ("PersistentVolume".to_owned(), 1),
            ("StorageClass.storage.k8s.io".to_owned(), 2),
        ])
    );
    assert!(
        stats.missing_dependencies.is_empty(),
        "{:?}",
        stats.missing_dependencies
    );
    assert!(stats.raw_bytes > stats.compressed_bytes && stats.compressed_bytes > 0);
    let stored = store.head(&p("b/resources.jsonl.zst")).await.expect("head");
    assert_eq!(stored.size, stats.compressed_bytes);
    assert_eq!(stored.metadata["pxb_kind"], "resources");
}

#[tokio::test]
async fn backup_skips_what_kubernetes_recreates() {
    let c = fixture().await;
    let store = InMemory::new();
    let stats = backup_shop(&c, &store).await;
    assert_eq!(
        stats.skipped,
        BTreeMap::from([
            (SkipReason::RootCaConfigMap, 1),
            (SkipReason::ServiceAccountToken, 1),
            (SkipReason::ControlledPod, 1),
            (SkipReason::ServiceEndpoints, 1),
            (SkipReason::ServiceEndpointSlice, 1),
        ])
    );
    let (_, objects) = read_archive(&store, &p("b/resources.jsonl.zst")).await;
    assert!(objects.iter().all(|(r, _)| r.kind != "Event"), "no events");
    assert!(
        find(&objects, "Endpoints", "external").is_some(),
        "manual Endpoints are kept"
    );
    assert!(find(&objects, "Endpoints", "web").is_none());
    assert!(find(&objects, "EndpointSlice", "web-x7k2").is_none());
    assert!(find(&objects, "ConfigMap", "kube-root-ca.crt").is_none());
    assert!(find(&objects, "Pod", "web-5d8f-abcde").is_none());
    assert!(find(&objects, "Secret", "web-token-x").is_none());
}

#[tokio::test]
async fn backup_strips_server_populated_fields() {
    let c = fixture().await;
    let store = InMemory::new();
    let stats = backup_shop(&c, &store).await;
    let (_, objects) = read_archive(&store, &p("b/resources.jsonl.zst")).await;
    for (_, o) in &objects {
        let meta = o.at(&["metadata"]).expect("metadata");
        for f in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
            "deletionTimestamp",
        ] {
            assert!(meta.get(f).is_none(), "{o}: metadata.{f} kept");
        }
        assert!(o.at(&["status"]).is_none(), "{o}: status kept");
    }
    let web = find(&objects, "Service", "web").expect("service");
    assert!(web.at(&["spec", "clusterIP"]).is_none() && web.at(&["spec", "clusterIPs"]).is_none());
    assert_eq!(web.at(&["spec", "ports"]), Some(&json!([{"port": 80}])));
    let headless = find(&objects, "Service", "headless").expect("headless");
    assert_eq!(
        headless.str_at(&["spec", "clusterIP"]),
        Some("None"),
        "headless stays headless"
    );
    let pv = find(&objects, "PersistentVolume", "pv-data").expect("pv");
    assert_eq!(
        pv.at(&["spec", "claimRef"]),
        Some(&json!({"kind": "PersistentVolumeClaim", "namespace": "shop", "name": "data"}))
    );
    let pvc = find(&objects, "PersistentVolumeClaim", "data").expect("pvc");
    assert_eq!(pvc.annotations(), BTreeMap::from([("note", "keep me")]));
    assert_eq!(pvc.str_at(&["spec", "volumeName"]), Some("pv-data"));
    let pod = find(&objects, "Pod", "debug").expect("pod");
    assert!(pod.at(&["spec", "nodeName"]).is_none());
    let job = find(&objects, "Job", "migrate").expect("job");
    // The generated selector is left out whole (the target's API server generates it anew), and
    // the Job's own labels lose the uid labels it shared with its template (the API server
    // defaults a Job's labels to its template's, so they name the source Job's uid too).
    assert_eq!(job.at(&["spec", "selector"]), None);
    assert_eq!(
        job.at(&["spec", "template", "metadata", "labels"]),
        Some(&json!({"job-name": "migrate"}))
    );
    assert_eq!(
        job.at(&["metadata", "labels"]),
        Some(&json!({"job-name": "migrate", "team": "db"}))
    );
    // Owner references to archived owners are removed, even when the owner is listed after the
    // dependent (the Widget comes after the ConfigMap); others are kept.
    let rs = find(&objects, "ReplicaSet", "web-5d8f").expect("rs");
    assert!(rs.owner_references().is_empty() && rs.at(&["metadata", "ownerReferences"]).is_none());
    let ws = find(&objects, "ConfigMap", "widget-state").expect("widget-state");
    assert!(ws.owner_references().is_empty());
    let co = find(&objects, "ConfigMap", "cluster-owned").expect("cluster-owned");
    assert_eq!(co.owner_references().len(), 1);
    assert_eq!(co.owner_references()[0].uid, "uid-outside-the-backup");
    assert_eq!(stats.owner_references_removed, 2);
}

/// Restored objects, with what the target cluster populated stripped again, equal the archive.
#[tokio::test]
async fn round_trip_restores_the_stripped_objects() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let path = p("b/resources.jsonl.zst");
    let (_, archived) = read_archive(&store, &path).await;

    let target = InMemoryCluster::new();
    let report = restore_resources(&store, &path, &target, &RestoreOptions::default())
        .await
        .expect("restore");
    assert!(report.is_success(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(report.created, archived.len() as u64);
    assert_eq!(report.objects.len(), archived.len());

    for (resource, original) in &archived {
        let resource = if resource.kind == "Widget" {
            widgets()
        } else {
            resource.clone()
        };
        let mut restored = ResourceSource::get(&target, &resource, original.namespace(), original.name())
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("{original} not restored"));
        assert!(restored.uid().is_some(), "the target assigned a uid");
        strip(&resource, &mut restored);
        assert_eq!(&restored, original, "{original}");
    }
    assert_eq!(target.len(), archived.len());
}

#[tokio::test]
async fn restore_follows_dependency_order() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let target = InMemoryCluster::new();
    let opts = RestoreOptions {
        concurrency: 4,
        ..RestoreOptions::default()
    };
    let report = restore_resources(&store, &p("b/resources.jsonl.zst"), &target, &opts)
        .await
        .expect("restore");
    assert!(report.is_success());
    let tier = |r: &ObjectRef| {
        let group = r.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or_default();
        RestoreTier::of(group, &r.kind)
    };
    let created = target.created();
    let tiers: Vec<RestoreTier> = created.iter().map(tier).collect();
    let mut sorted = tiers.clone();
    sorted.sort();
    assert_eq!(tiers, sorted, "creation order: {created:?}");
    let pos = |kind: &str| {
        created
            .iter()
            .position(|r| r.kind == kind)
            .unwrap_or_else(|| panic!("{kind} not created"))
    };
    assert_eq!(pos("CustomResourceDefinition"), 0);
    assert!(pos("Namespace") < pos("ServiceAccount"));
    assert!(pos("ServiceAccount") < pos("ConfigMap"));
    // A binding after its role: the API server resolves the role of a binding it is asked to
    // create (the archive lists rolebindings before roles).
    assert!(pos("Role") < pos("RoleBinding"));
    assert!(pos("RoleBinding") < pos("Secret"));
    assert!(pos("StorageClass") < pos("PersistentVolume"));
    assert!(pos("PersistentVolume") < pos("PersistentVolumeClaim"));
    assert!(pos("PersistentVolumeClaim") < pos("Deployment"));
    assert!(pos("Pod") < pos("Service"));
    assert!(pos("Job") < pos("Widget"));
    // The report is in the same order, tier by tier.
    let report_tiers: Vec<RestoreTier> = report.objects.iter().map(|o| o.tier).collect();
    let mut sorted = report_tiers.clone();
    sorted.sort();
    assert_eq!(report_tiers, sorted);
}

#[tokio::test]
async fn restore_maps_namespaces_and_storage_classes() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let target = InMemoryCluster::new();
    let opts = RestoreOptions {
        namespace_mapping: BTreeMap::from([("shop".to_owned(), "shop-copy".to_owned())]),
        storage_class_mapping: BTreeMap::from([("fast".to_owned(), "premium".to_owned())]),
        ..RestoreOptions::default()
    };
    let report = restore_resources(&store, &p("b/resources.jsonl.zst"), &target, &opts)
        .await
        .expect("restore");
    assert!(report.is_success(), "{:?}", report.failures().collect::<Vec<_>>());
    let get = |r: ApiResource, ns: Option<&str>, name: &str| {
        let target = target.clone();
        let name = name.to_owned();
        let ns = ns.map(str::to_owned);
        async move {
            ResourceSource::get(&target, &r, ns.as_deref(), &name)
                .await
                .expect("get")
        }
    };
    let ns = get(res("", "Namespace"), None, "shop-copy")
        .await
        .expect("namespace renamed");
    assert_eq!(ns.label("kubernetes.io/metadata.name"), Some("shop-copy"));
    assert!(get(res("", "Namespace"), None, "shop").await.is_none());
    assert!(
        get(res("", "ConfigMap"), Some("shop-copy"), "app-config")
            .await
            .is_some()
    );
    assert!(get(widgets(), Some("shop-copy"), "w1").await.is_some());
    let pv = get(res("", "PersistentVolume"), None, "pv-data")
        .await
        .expect("pv");
    assert_eq!(pv.str_at(&["spec", "claimRef", "namespace"]), Some("shop-copy"));
    assert_eq!(pv.str_at(&["spec", "storageClassName"]), Some("premium"));
    let pvc = get(res("", "PersistentVolumeClaim"), Some("shop-copy"), "data")
        .await
        .expect("pvc");
    assert_eq!(pvc.str_at(&["spec", "storageClassName"]), Some("premium"));
    let pending = get(res("", "PersistentVolumeClaim"), Some("shop-copy"), "pending")
        .await
        .expect("pvc");
    assert_eq!(
        pending.str_at(&["spec", "storageClassName"]),
        Some("slow"),
        "unmapped stays"
    );
    let sc = res("storage.k8s.io", "StorageClass");
    assert!(
        get(sc.clone(), None, "premium").await.is_some(),
        "StorageClass renamed"
    );
    assert!(get(sc.clone(), None, "fast").await.is_none());
    assert!(get(sc, None, "slow").await.is_some());
    let rb = get(
        res("rbac.authorization.k8s.io", "RoleBinding"),
        Some("shop-copy"),
        "read",
    )
    .await
    .expect("rolebinding");
    assert_eq!(
        rb.at(&["subjects"]).and_then(|s| s[0].get("namespace")),
        Some(&json!("shop-copy"))
    );
    assert!(
        report
            .objects
            .iter()
            .all(|o| o.object.namespace.as_deref() != Some("shop"))
    );
}

#[tokio::test]
async fn retain_leaves_existing_objects_and_replace_recreates_them() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let path = p("b/resources.jsonl.zst");

    for policy in [ExistingResourcePolicy::Retain, ExistingResourcePolicy::Replace] {
        let target = InMemoryCluster::new();
        let ns = target.seed(ns_obj("shop")).expect("ns");
        let mut changed = cm("shop", "app-config", json!({"app": "web"}));
        changed["data"] = json!({"k": "changed in the target"});
        target.seed(changed).expect("cm");
        let opts = RestoreOptions {
            existing: policy,
            ..RestoreOptions::default()
        };
        let report = restore_resources(&store, &path, &target, &opts)
            .await
            .expect("restore");
        assert!(
            report.is_success(),
            "{policy:?}: {:?}",
            report.failures().collect::<Vec<_>>()
        );
        let outcome = |kind: &str, name: &str| {
            report
                .objects
                .iter()
                .find(|o| o.object.kind == kind && o.object.name == name)
                .map(|o| o.outcome.clone())
                .expect("in report")
        };
        let got = ResourceSource::get(&target, &res("", "ConfigMap"), Some("shop"), "app-config")
            .await
            .expect("get")
            .expect("exists");
        // The Namespace is never replaced.
        assert_eq!(
            outcome("Namespace", "shop"),
            RestoreOutcome::Retained,
            "{policy:?}"
        );
        let ns_now = ResourceSource::get(&target, &res("", "Namespace"), None, "shop")
            .await
            .expect("get")
            .expect("ns");
        assert_eq!(ns_now.uid(), ns.uid(), "{policy:?}: namespace untouched");
        match policy {
            ExistingResourcePolicy::Retain => {
                assert_eq!(outcome("ConfigMap", "app-config"), RestoreOutcome::Retained);
                assert_eq!(got.str_at(&["data", "k"]), Some("changed in the target"));
                assert_eq!(report.retained, 2);
            }
            ExistingResourcePolicy::Replace => {
                assert_eq!(outcome("ConfigMap", "app-config"), RestoreOutcome::Replaced);
                assert_eq!(got.str_at(&["data", "k"]), Some("v-app-config"));
                assert_eq!((report.replaced, report.retained), (1, 1));
            }
        }
        assert_eq!(outcome("Secret", "db-pass"), RestoreOutcome::Created);
    }
}

#[tokio::test]
async fn one_failed_object_does_not_stop_the_others() {
    let c = fixture().await;
    let store = InMemory::new();
    let stats = backup_shop(&c, &store).await;
    let target = InMemoryCluster::new();
    target.inject_create_failure(
        "configmap",
        Some("shop"),
        "app-config",
        "denied by the admission webhook",
    );
    target.inject_create_failure("Deployment", Some("shop"), "web", "quota exceeded");
    let report = restore_resources(
        &store,
        &p("b/resources.jsonl.zst"),
        &target,
        &RestoreOptions::default(),
    )
    .await
    .expect("restore runs");
    assert_eq!(report.failed, 2);
    assert_eq!(report.created, stats.objects - 2);
    let failures: Vec<_> = report.failures().collect();
    assert_eq!(failures.len(), 2);
    match &failures[0].outcome {
        RestoreOutcome::Failed { reason } => {
            assert!(reason.contains("denied by the admission webhook"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(failures[0].object.name, "app-config");
    assert_eq!(failures[1].object.kind, "Deployment");
    assert!(
        ResourceSource::get(&target, &res("", "Service"), Some("shop"), "web")
            .await
            .expect("get")
            .is_some(),
        "objects after the failures were restored"
    );
}

#[tokio::test]
async fn label_selector_and_kind_filters() {
    let c = fixture().await;
    let store = InMemory::new();
    let kinds_of = |objects: &[(ApiResource, ResourceObject)]| -> BTreeSet<String> {
        objects.iter().map(|(_, o)| o.to_string()).collect()
    };

    // Labels select namespaced objects; dependencies come along.
    let sel = ResourceSelector::namespaces(["shop"]).with_label_selector("app=web");
    backup_resources(&c, &sel, &store, &p("l/1"))
        .await
        .expect("backup");
    let (_, objs) = read_archive(&store, &p("l/1")).await;
    let expected: BTreeSet<String> = [
        "Namespace shop",
        "CustomResourceDefinition widgets.example.com",
        "ConfigMap shop/app-config",
        "ServiceAccount shop/web",
        "Deployment shop/web",
        "ReplicaSet shop/web-5d8f",
        "Service shop/web",
        "Widget shop/w1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds_of(&objs), expected);

    // Set-based and inequality forms.
    let sel = ResourceSelector::namespaces(["shop"])
        .with_label_selector("app in (db),app!=web")
        .with_include_kinds(["secrets", "PersistentVolumeClaim"]);
    backup_resources(&c, &sel, &store, &p("l/2"))
        .await
        .expect("backup");
    let (_, objs) = read_archive(&store, &p("l/2")).await;
    let expected: BTreeSet<String> = [
        "Namespace shop",
        "PersistentVolume pv-data",
        "StorageClass fast",
        "Secret shop/db-pass",
        "PersistentVolumeClaim shop/data",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds_of(&objs), expected);

    // Kinds by plural.group and Kind.group; exclusion wins, and applies to dependencies.
    let sel = ResourceSelector::namespaces(["shop"])
        .with_include_kinds([
            "deployments.apps",
            "Widget.example.com",
            "persistentvolumeclaims",
            "Role",
        ])
        .with_exclude_kinds([
            "role",
            "StorageClass",
            "customresourcedefinitions.apiextensions.k8s.io",
        ]);
    backup_resources(&c, &sel, &store, &p("l/3"))
        .await
        .expect("backup");
    let (_, objs) = read_archive(&store, &p("l/3")).await;
    let expected: BTreeSet<String> = [
        "Namespace shop",
        "PersistentVolume pv-data",
        "Deployment shop/web",
        "Widget shop/w1",
        "PersistentVolumeClaim shop/data",
        "PersistentVolumeClaim shop/pending",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(kinds_of(&objs), expected);

    // Every namespace when none is named.
    let sel = ResourceSelector::default().with_include_kinds(["configmaps"]);
    let stats = backup_resources(&c, &sel, &store, &p("l/4"))
        .await
        .expect("backup");
    assert_eq!(stats.namespaces, vec!["other".to_owned(), "shop".to_owned()]);
    let (_, objs) = read_archive(&store, &p("l/4")).await;
    assert!(find(&objs, "ConfigMap", "other-config").is_some());
    assert!(find(&objs, "Namespace", "other").is_some());

    // A bad selector is refused before anything is listed.
    let calls = c.list_calls();
    let err = backup_resources(
        &c,
        &ResourceSelector::namespaces(["shop"]).with_label_selector("a=(b"),
        &store,
        &p("l/5"),
    )
    .await
    .expect_err("bad selector");
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    assert_eq!(c.list_calls(), calls);
}

#[tokio::test]
async fn backup_pages_through_large_lists() {
    let c = InMemoryCluster::new();
    c.seed(ns_obj("big")).expect("ns");
    for i in 0..1234 {
        c.seed(cm("big", &format!("cm-{i:05}"), json!({"i": i.to_string()})))
            .expect("seed");
    }
    let store = InMemory::new();
    let before = c.list_calls();
    let stats = backup_resources(&c, &ResourceSelector::namespaces(["big"]), &store, &p("big"))
        .await
        .expect("backup");
    assert_eq!(stats.per_kind["ConfigMap"], 1234);
    // Three pages of configmaps (500, 500, 234), plus one per other type.
    let types = well_known_api_resources()
        .iter()
        .filter(|r| r.namespaced && r.kind != "Event")
        .count() as u64;
    assert_eq!(c.list_calls() - before, types + 2);
    let (_, objs) = read_archive(&store, &p("big")).await;
    let unique: BTreeSet<&str> = objs.iter().map(|(_, o)| o.name()).collect();
    assert_eq!(unique.len(), 1235);

    let target = InMemoryCluster::new();
    let report = restore_resources(&store, &p("big"), &target, &RestoreOptions::default())
        .await
        .expect("restore");
    assert_eq!(report.created, 1235);
    assert_eq!(target.len(), 1235);
}

#[tokio::test]
async fn backup_does_not_overwrite_an_archive() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let err = backup_resources(
        &c,
        &ResourceSelector::namespaces(["shop"]),
        &store,
        &p("b/resources.jsonl.zst"),
    )
    .await
    .expect_err("second backup to the same path");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
}

fn zstd_bytes(data: &[u8]) -> Bytes {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.include_checksum(true).expect("checksum");
    enc.write_all(data).expect("write");
    Bytes::from(enc.finish().expect("finish"))
}

async fn restore_err(store: &InMemory, path: &ObjectPath) -> (Error, InMemoryCluster) {
    let target = InMemoryCluster::new();
    let err = restore_resources(store, path, &target, &RestoreOptions::default())
        .await
        .expect_err("restore must fail");
    (err, target)
}

#[tokio::test]
async fn damaged_and_foreign_archives_are_corrupt_errors() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let good = store
        .get(&p("b/resources.jsonl.zst"))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let mut plain = String::new();
    zstd::stream::read::Decoder::new(&good[..])
        .expect("decoder")
        .read_to_string(&mut plain)
        .expect("decompress");
    let header = plain.lines().next().expect("header").to_owned();
    let first_object = plain.lines().nth(1).expect("object").to_owned();

    let missing = p("x/missing");
    let (err, _) = restore_err(&store, &missing).await;
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    let header2 = header.replace("\"format\":1", "\"format\":2");
    let cases: Vec<(&str, Bytes, Vec<&str>)> = vec![
        ("empty", Bytes::new(), vec!["x/empty", "not a pxb resource archive"]),
        (
            "plain",
            Bytes::from_static(b"hello, this is not an archive\n"),
            vec!["x/plain", "not a pxb resource archive: it is not zstd-compressed data"],
        ),
        (
            "foreign",
            zstd_bytes(b"{\"foo\":1}\n{\"bar\":2}\n"),
            vec!["x/foreign", "not a pxb resource archive", "line 1"],
        ),
        (
            "format2",
            zstd_bytes(format!("{header2}\n{{\"end\":{{\"objects\":0}}}}\n").as_bytes()),
            vec!["x/format2", "resource archive format 2 is not supported (this pxb reads format 1)"],
        ),
        (
            "truncated",
            good.slice(..good.len() / 2),
            vec!["x/truncated", "truncated"],
        ),
        (
            "no-end",
            zstd_bytes(format!("{header}\n{first_object}\n").as_bytes()),
            vec!["x/no-end", "truncated", "after line 2", "end marker"],
        ),
        (
            "bad-json",
            zstd_bytes(format!("{header}\n{first_object}\n{{\"resource\":\n").as_bytes()),
            vec!["x/bad-json", "line 3", "not a valid archive line"],
        ),
        (
            "bad-object",
            zstd_bytes(
                format!(
                    "{header}\n{{\"resource\":{{\"group\":\"\",\"version\":\"v1\",\"kind\":\"ConfigMap\",\
                     \"plural\":\"configmaps\",\"namespaced\":true}},\"object\":{{\"kind\":\"ConfigMap\"}}}}\n"
                )
                .as_bytes(),
            ),
            vec!["x/bad-object", "line 2"],
        ),
        (
            "wrong-count",
            zstd_bytes(format!("{header}\n{first_object}\n{{\"end\":{{\"objects\":5}}}}\n").as_bytes()),
            vec!["x/wrong-count", "line 3", "counts 5 objects but the archive holds 1"],
        ),
        (
            "after-end",
            zstd_bytes(format!("{header}\n{{\"end\":{{\"objects\":0}}}}\n{first_object}\n").as_bytes()),
            vec!["x/after-end", "line 3", "after the end marker"],
        ),
    ];
    for (name, data, expect) in cases {
        let path = p(&format!("x/{name}"));
        store.put(&path, data, PutOptions::default()).await.expect("put");
        let (err, target) = restore_err(&store, &path).await;
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err}");
        let msg = err.to_string();
        for e in expect {
            assert!(msg.contains(e), "{name}: {msg:?} lacks {e:?}");
        }
        assert!(
            target.is_empty(),
            "{name}: nothing is restored from a bad archive"
        );
    }

    // Damage anywhere in the compressed data is detected (content checksums), never a panic.
    let path = p("x/flipped");
    for at in (0..good.len()).step_by(good.len() / 23 + 1).skip(1) {
        let mut damaged = good.to_vec();
        damaged[at] ^= 0x5a;
        store
            .put(&path, damaged.into(), PutOptions::default())
            .await
            .expect("put");
        let (err, target) = restore_err(&store, &path).await;
        assert!(matches!(err, Error::Corrupt { .. }), "flip at {at}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("x/flipped: damaged compressed data"), "{msg}");
        assert!(target.is_empty());
    }
}

#[test]
fn label_selectors_parse_match_and_print() {
    let obj = ResourceObject::new(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "x", "labels": {"app": "web", "tier": "front", "example.com/team": "a"}}}))
    .expect("obj");
    let m = |s: &str| LabelSelector::parse(s).expect(s).matches(&obj);
    assert!(m(""));
    assert!(m("app=web"));
    assert!(m("app==web"));
    assert!(m(" app = web , tier=front "));
    assert!(!m("app=db"));
    assert!(m("app!=db"));
    assert!(m("missing!=x"));
    assert!(!m("app!=web"));
    assert!(m("app"));
    assert!(!m("!app"));
    assert!(m("!missing"));
    assert!(m("example.com/team=a"));
    assert!(m("tier in (front,back)"));
    assert!(!m("tier notin (front)"));
    assert!(m("missing notin (front)"));
    assert!(!m("missing in (front)"));
    assert!(m("app=web,tier in (front),!gone"));
    for bad in [
        "a=(b",
        "a in b",
        "a in (b",
        "a=b,,c",
        "a b=c",
        "=b",
        "a=b c",
        "a in (b) x",
        "a like (b)",
    ] {
        let err = LabelSelector::parse(bad).expect_err(bad);
        assert!(
            matches!(err, Error::Invalid { .. }) && err.to_string().contains(bad),
            "{err}"
        );
    }
    let sel = LabelSelector::parse("a = b,c!=d, e ,!f,g in (x, y),h notin (z)").expect("parse");
    assert_eq!(sel.to_string(), "a=b,c!=d,e,!f,g in (x,y),h notin (z)");
    assert_eq!(LabelSelector::parse(&sel.to_string()).expect("reparse"), sel);
}

#[test]
fn kinds_match_by_kind_plural_and_group() {
    let d = ApiResource::new("apps", "v1", "Deployment", "deployments", true);
    for yes in [
        "Deployment",
        "deployment",
        "DEPLOYMENTS",
        "deployments.apps",
        "Deployment.apps",
    ] {
        assert!(d.matches_name(yes), "{yes}");
    }
    for no in ["deploy", "deployments.batch", "apps", "replicasets"] {
        assert!(!d.matches_name(no), "{no}");
    }
    let cmr = ApiResource::new("", "v1", "ConfigMap", "configmaps", true);
    assert!(cmr.matches_name("configmaps") && cmr.matches_name("ConfigMap"));
    assert!(!cmr.matches_name("configmaps.apps"));
    assert_eq!(d.api_version(), "apps/v1");
    assert_eq!(cmr.api_version(), "v1");
    assert_eq!(d.to_string(), "deployments.apps/v1");
}

#[test]
fn resource_objects_check_and_expose_their_fields() {
    for bad in [
        json!([1]),
        json!({"kind": "ConfigMap", "metadata": {"name": "x"}}),
        json!({"apiVersion": "v1", "metadata": {"name": "x"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ""}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": 3}}),
    ] {
        assert!(ResourceObject::new(bad.clone()).is_err(), "{bad}");
        assert!(serde_json::from_value::<ResourceObject>(bad).is_err());
    }
    let o = ResourceObject::new(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "r", "namespace": "n", "uid": "u1", "labels": {"a": "b"},
                     "annotations": {"c": "d"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "d",
                                          "uid": "u0", "controller": true}, {"bogus": 1}]}}))
    .expect("valid");
    assert_eq!((o.group(), o.version(), o.kind()), ("apps", "v1", "ReplicaSet"));
    assert_eq!((o.namespace(), o.name(), o.uid()), (Some("n"), "r", Some("u1")));
    assert_eq!(o.labels(), BTreeMap::from([("a", "b")]));
    assert_eq!(o.annotations(), BTreeMap::from([("c", "d")]));
    assert_eq!(o.owner_references().len(), 1);
    assert_eq!(o.controller().map(|r| r.name), Some("d".to_owned()));
    assert_eq!(o.to_string(), "ReplicaSet n/r");
    let back: ResourceObject = serde_json::from_value(o.as_value().clone()).expect("deserialize");
    assert_eq!(back, o);
}

#[tokio::test]
async fn in_memory_cluster_passes_the_conformance_suite() {
    let c = InMemoryCluster::new();
    conformance::run_all(&c, "pxb-conformance").await;
    // It cleans up after itself (the namespace stays).
    assert_eq!(c.len(), 1);
}

#[tokio::test]
async fn in_memory_cluster_behaves_like_an_api_server() {
    let c = InMemoryCluster::new();
    let cms = res("", "ConfigMap");
    // Unknown types and scope mistakes are refused.
    assert!(
        c.seed(json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}))
            .is_err()
    );
    assert!(
        c.seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w"}}))
            .is_err()
    );
    let obj = ResourceObject::new(cm("a", "x", json!({}))).expect("obj");
    let err = c.create(&cms, &obj).await.expect_err("no namespace");
    assert!(matches!(err, Error::NotFound { .. }));
    c.seed(ns_obj("a")).expect("ns");
    let created = c.create(&cms, &obj).await.expect("create");
    assert_ne!(
        created.str_at(&["metadata", "resourceVersion"]),
        Some("17"),
        "server fields set"
    );
    let err = c
        .create(&res("apps", "Deployment"), &obj)
        .await
        .expect_err("wrong resource");
    assert!(matches!(err, Error::Invalid { .. }));
    // Deleting a namespace deletes its objects.
    c.delete(&res("", "Namespace"), None, "a")
        .await
        .expect("delete ns");
    assert!(c.is_empty());
    // A bad continue token is refused.
    let err = c
        .list(&cms, None, None, Some("garbage"), 10)
        .await
        .expect_err("bad token");
    assert!(matches!(err, Error::Invalid { .. }));
}

#[tokio::test]
async fn many_volumes_are_listed_once_and_missing_ones_reported() {
    let c = InMemoryCluster::new();
    c.seed(ns_obj("vols")).expect("ns");
    for i in 0..60 {
        c.seed(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": format!("claim-{i}"), "namespace": "vols"},
            "spec": {"volumeName": format!("pv-{i:03}"), "storageClassName": "std"}}))
            .expect("pvc");
        c.seed(
            json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": format!("pv-{i:03}")},
            "spec": {"storageClassName": if i == 0 { "other" } else { "std" },
                     "claimRef": {"namespace": "vols", "name": format!("claim-{i}")}}}),
        )
        .expect("pv");
    }
    c.seed(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "orphan", "namespace": "vols"}, "spec": {"volumeName": "pv-gone"}}))
        .expect("pvc");
    c.seed(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-unrelated"}}))
        .expect("pv");
    c.seed(
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "std"},
                  "provisioner": "x"}),
    )
    .expect("sc");
    let store = InMemory::new();
    let stats = backup_resources(&c, &ResourceSelector::namespaces(["vols"]), &store, &p("v"))
        .await
        .expect("backup");
    assert_eq!(stats.dependencies["PersistentVolume"], 60);
    assert_eq!(stats.dependencies["StorageClass.storage.k8s.io"], 1);
    assert_eq!(
        stats.missing_dependencies,
        vec![
            "PersistentVolume pv-gone".to_owned(),
            "StorageClass other".to_owned()
        ]
    );
    let (_, objs) = read_archive(&store, &p("v")).await;
    assert!(find(&objs, "PersistentVolume", "pv-unrelated").is_none());
    assert!(find(&objs, "PersistentVolume", "pv-059").is_some());
}

#[test]
fn reports_serialize_flat() {
    let o = RestoredObject {
        object: ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("a".into()),
            name: "b".into(),
        },
        tier: RestoreTier::ConfigAndSecrets,
        outcome: RestoreOutcome::Failed { reason: "no".into() },
    };
    assert_eq!(
        serde_json::to_value(&o).expect("json"),
        json!({"object": {"api_version": "v1", "kind": "ConfigMap", "namespace": "a", "name": "b"},
               "tier": "config_and_secrets", "outcome": "failed", "reason": "no"})
    );
    let stats = ResourceBackupStats {
        skipped: BTreeMap::from([(SkipReason::ControlledPod, 2)]),
        ..ResourceBackupStats::default()
    };
    assert_eq!(
        serde_json::to_value(&stats).expect("json")["skipped"],
        json!({"controlled_pod": 2})
    );
}

/// The real API server validates an object (and allocates a Service's node ports) before it
/// looks for an existing one: a second restore of a NodePort Service is refused as invalid, not
/// as existing. An object that exists is retained, whatever the create said.
#[tokio::test]
async fn an_existing_object_the_cluster_refuses_as_invalid_is_retained() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let target = InMemoryCluster::new();
    target.seed(ns_obj("shop")).expect("ns");
    target
        .seed(cm("shop", "app-config", json!({"app": "web"})))
        .expect("cm");
    target.inject_create_failure(
        "ConfigMap",
        Some("shop"),
        "app-config",
        "data: Invalid value: validated before the existing object was found",
    );
    // A refused object that does not exist still fails.
    target.inject_create_failure(
        "Secret",
        Some("shop"),
        "db-pass",
        "denied by the admission webhook",
    );
    let report = restore_resources(
        &store,
        &p("b/resources.jsonl.zst"),
        &target,
        &RestoreOptions::default(),
    )
    .await
    .expect("restore runs");
    let outcome = |kind: &str, name: &str| {
        report
            .objects
            .iter()
            .find(|o| o.object.kind == kind && o.object.name == name)
            .map(|o| o.outcome.clone())
            .expect("in report")
    };
    assert_eq!(outcome("ConfigMap", "app-config"), RestoreOutcome::Retained);
    assert!(
        matches!(outcome("Secret", "db-pass"), RestoreOutcome::Failed { reason } if reason.contains("webhook"))
    );
    assert_eq!(report.failed, 1);
}

/// Replace deletes an existing object only when that lets the archived one in: an object the
/// cluster refuses for a reason of its own (an admission webhook, validation) is refused again
/// after the delete, and both would be lost. It is kept and the refusal reported.
#[tokio::test]
async fn replace_keeps_an_existing_object_the_cluster_refuses_for_a_reason_of_its_own() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let target = InMemoryCluster::new();
    target.seed(ns_obj("shop")).expect("ns");
    target
        .seed(cm("shop", "app-config", json!({"generation": "live"})))
        .expect("cm");
    target.inject_create_failure(
        "ConfigMap",
        Some("shop"),
        "app-config",
        "admission webhook \"policy.example.com\" denied the request",
    );
    let opts = RestoreOptions {
        existing: ExistingResourcePolicy::Replace,
        ..RestoreOptions::default()
    };
    let report = restore_resources(&store, &p("b/resources.jsonl.zst"), &target, &opts)
        .await
        .expect("restore runs");
    let outcome = report
        .objects
        .iter()
        .find(|o| o.object.kind == "ConfigMap" && o.object.name == "app-config")
        .map(|o| o.outcome.clone())
        .expect("in report");
    assert!(
        matches!(&outcome, RestoreOutcome::Failed { reason }
            if reason.contains("kept the existing object") && reason.contains("webhook")),
        "{outcome:?}"
    );
    let configmaps = ApiResource::new("", "v1", "ConfigMap", "configmaps", true);
    let live = <InMemoryCluster as ResourceSource>::get(&target, &configmaps, Some("shop"), "app-config")
        .await
        .expect("get")
        .expect("the existing ConfigMap is still there");
    assert_eq!(live.as_value()["metadata"]["labels"]["generation"], "live");
}

/// A cluster whose node ports 30000..=30099 are taken, as the API server answers a Service that
/// asks for one of them.
struct TakenNodePorts(InMemoryCluster);

#[async_trait]
impl ResourceSource for TakenNodePorts {
    async fn api_resources(&self) -> crate::Result<Vec<ApiResource>> {
        self.0.api_resources().await
    }

    async fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        continue_token: Option<&str>,
        limit: u32,
    ) -> crate::Result<ResourcePage> {
        self.0
            .list(resource, namespace, label_selector, continue_token, limit)
            .await
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> crate::Result<Option<ResourceObject>> {
        self.0.get(resource, namespace, name).await
    }
}

#[async_trait]
impl ResourceSink for TakenNodePorts {
    async fn create(&self, resource: &ApiResource, object: &ResourceObject) -> crate::Result<ResourceObject> {
        let ports = object
            .at(&["spec", "ports"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, port) in ports.iter().enumerate() {
            if let Some(n) = port.get("nodePort").and_then(Value::as_u64)
                && (30000..=30099).contains(&n)
            {
                return Err(Error::invalid(format!(
                    "create services {}: Service \"{}\" is invalid: spec.ports[{i}].nodePort: Invalid \
                     value: {n}: provided port is already allocated (422 Invalid)",
                    object.name(),
                    object.name()
                )));
            }
        }
        self.0.create(resource, object).await
    }

    async fn delete(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> crate::Result<()> {
        self.0.delete(resource, namespace, name).await
    }
}

/// Restoring a NodePort Service next to the original (another namespace of the same cluster):
/// its node port is taken, so it is created without it and the cluster allocates another one.
/// A free node port is kept.
#[tokio::test]
async fn a_taken_node_port_is_allocated_anew_and_a_free_one_kept() {
    let source = InMemoryCluster::new();
    seed(&source, ns_obj("shop"));
    for (name, port) in [("taken", 30080), ("free", 31080)] {
        seed(
            &source,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
                   "spec": {"type": "NodePort", "selector": {"app": name},
                            "ports": [{"port": 80, "nodePort": port}, {"port": 443, "nodePort": port + 1}]}}),
        );
    }
    let store = InMemory::new();
    backup_shop(&source, &store).await;
    let target = TakenNodePorts(InMemoryCluster::new());
    let opts = RestoreOptions {
        namespace_mapping: [("shop".to_owned(), "copy".to_owned())].into(),
        ..RestoreOptions::default()
    };
    let report = restore_resources(&store, &p("b/resources.jsonl.zst"), &target, &opts)
        .await
        .expect("restore");
    assert!(report.is_success(), "{:?}", report.failures().collect::<Vec<_>>());
    let svc = |name: &str| {
        let target = &target;
        let name = name.to_owned();
        async move {
            ResourceSource::get(target, &res("", "Service"), Some("copy"), &name)
                .await
                .expect("get")
                .expect("restored")
        }
    };
    let taken = svc("taken").await;
    let ports = taken.at(&["spec", "ports"]).expect("ports");
    assert_eq!(ports, &json!([{"port": 80}, {"port": 443}]), "{taken}");
    assert_eq!(taken.str_at(&["spec", "type"]), Some("NodePort"));
    let free = svc("free").await;
    assert_eq!(
        free.at(&["spec", "ports"]),
        Some(&json!([{"port": 80, "nodePort": 31080}, {"port": 443, "nodePort": 31081}]))
    );
}

/// A cluster that, like the real API server, serves the kind of a new CustomResourceDefinition
/// only a moment after the create returns: its discovery leaves out custom kinds for the first
/// `hidden` reads after a definition is created.
struct SlowlyEstablished {
    inner: InMemoryCluster,
    hidden: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl ResourceSource for SlowlyEstablished {
    async fn api_resources(&self) -> crate::Result<Vec<ApiResource>> {
        let mut all = self.inner.api_resources().await?;
        let hide = self
            .hidden
            .fetch_update(
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
                |n| n.checked_sub(1),
            )
            .is_ok();
        if hide {
            all.retain(|r| r.group != "example.com");
        }
        Ok(all)
    }

    async fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        continue_token: Option<&str>,
        limit: u32,
    ) -> crate::Result<ResourcePage> {
        self.inner
            .list(resource, namespace, label_selector, continue_token, limit)
            .await
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> crate::Result<Option<ResourceObject>> {
        self.inner.get(resource, namespace, name).await
    }
}

#[async_trait]
impl ResourceSink for SlowlyEstablished {
    async fn create(&self, resource: &ApiResource, object: &ResourceObject) -> crate::Result<ResourceObject> {
        let created = self.inner.create(resource, object).await?;
        if resource.is("apiextensions.k8s.io", "CustomResourceDefinition") {
            self.hidden.store(3, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(created)
    }

    async fn delete(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> crate::Result<()> {
        self.inner.delete(resource, namespace, name).await
    }
}

/// The custom resources of a restored CustomResourceDefinition are restored once the cluster
/// serves their kind, not refused because discovery was read too early.
#[tokio::test]
async fn custom_resources_wait_for_their_restored_definition_to_be_served() {
    let c = fixture().await;
    let store = InMemory::new();
    backup_shop(&c, &store).await;
    let target = SlowlyEstablished {
        inner: InMemoryCluster::new(),
        hidden: std::sync::atomic::AtomicU32::new(0),
    };
    let report = restore_resources(
        &store,
        &p("b/resources.jsonl.zst"),
        &target,
        &RestoreOptions::default(),
    )
    .await
    .expect("restore");
    assert!(report.is_success(), "{:?}", report.failures().collect::<Vec<_>>());
    let widgets_restored = report
        .objects
        .iter()
        .filter(|o| o.object.kind == "Widget" && o.outcome == RestoreOutcome::Created)
        .count();
    assert!(widgets_restored > 0, "{report:?}");
    assert_eq!(
        target.hidden.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "discovery was read again until the kind was served"
    );
}
