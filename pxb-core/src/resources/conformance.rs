//! The conformance suite of [`ResourceSource`] and [`ResourceSink`]: `pub async fn` checks that
//! every implementation (the [`InMemoryCluster`](super::InMemoryCluster) twin, the Kubernetes
//! client) runs.
//!
//! Each check panics with a description of what broke, like an assertion in a test. The checks
//! work in one namespace (created if missing) with ConfigMaps named `pxb-conformance-*`, and
//! delete what they create. Call [`run_all`] from an implementation's tests.

use std::collections::BTreeSet;

use serde_json::json;

use super::{ApiResource, ResourceObject, ResourceSink, ResourceSource};
use crate::Error;

/// A cluster the suite can both read and write.
pub trait ResourceCluster: ResourceSource + ResourceSink {}

impl<T: ResourceSource + ResourceSink + ?Sized> ResourceCluster for T {}

/// Runs every check, in order, in `namespace`.
pub async fn run_all(cluster: &dyn ResourceCluster, namespace: &str) {
    discovery_reports_core_types(cluster).await;
    create_get_delete(cluster, namespace).await;
    create_existing_is_already_exists(cluster, namespace).await;
    create_in_missing_namespace_fails(cluster).await;
    delete_missing_is_not_found(cluster, namespace).await;
    list_pages(cluster, namespace).await;
    list_with_label_selector(cluster, namespace).await;
    list_across_namespaces(cluster, namespace).await;
}

fn configmaps() -> ApiResource {
    ApiResource::new("", "v1", "ConfigMap", "configmaps", true)
}

fn namespaces() -> ApiResource {
    ApiResource::new("", "v1", "Namespace", "namespaces", false)
}

fn config_map(namespace: &str, name: &str, labels: serde_json::Value) -> ResourceObject {
    ResourceObject::new(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {"key": format!("value of {name}")},
    }))
    .expect("conformance objects are valid")
}

/// Creates `namespace` unless it exists.
pub async fn ensure_namespace(cluster: &dyn ResourceCluster, namespace: &str) {
    let ns = namespaces();
    if ResourceSource::get(cluster, &ns, None, namespace)
        .await
        .expect("get namespace")
        .is_none()
    {
        let obj = ResourceObject::new(json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}
        }))
        .expect("valid namespace");
        cluster.create(&ns, &obj).await.expect("create namespace");
    }
}

async fn cleanup(cluster: &dyn ResourceCluster, namespace: &str, names: &[String]) {
    for name in names {
        match cluster.delete(&configmaps(), Some(namespace), name).await {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(e) => panic!("cleanup: delete ConfigMap {namespace}/{name}: {e}"),
        }
    }
}

/// Both discoveries report ConfigMaps (core `v1`, namespaced) and Namespaces (cluster-scoped),
/// once each, without subresources.
pub async fn discovery_reports_core_types(cluster: &dyn ResourceCluster) {
    for (which, resources) in [
        (
            "source",
            ResourceSource::api_resources(cluster)
                .await
                .expect("source discovery"),
        ),
        (
            "sink",
            ResourceSource::api_resources(cluster)
                .await
                .expect("sink discovery"),
        ),
    ] {
        assert!(
            resources.contains(&configmaps()),
            "{which} discovery lacks configmaps v1 (namespaced): {resources:?}"
        );
        assert!(
            resources.contains(&namespaces()),
            "{which} discovery lacks namespaces v1 (cluster-scoped)"
        );
        let mut seen = BTreeSet::new();
        for r in &resources {
            assert!(
                seen.insert((r.group.clone(), r.kind.clone())),
                "{which} discovery reports {} {} twice",
                r.group,
                r.kind
            );
            assert!(
                !r.plural.contains('/'),
                "{which} discovery reports subresource {r}"
            );
        }
    }
}

/// A created object reads back with its data and a uid, through both seams; a delete removes it.
pub async fn create_get_delete(cluster: &dyn ResourceCluster, namespace: &str) {
    ensure_namespace(cluster, namespace).await;
    let name = "pxb-conformance-cgd";
    let obj = config_map(namespace, name, json!({"pxb-conformance": "yes"}));
    let created = cluster.create(&configmaps(), &obj).await.expect("create");
    assert_eq!(created.name(), name);
    assert_eq!(created.namespace(), Some(namespace));
    assert!(
        created.uid().is_some_and(|u| !u.is_empty()),
        "create returns the uid"
    );
    for got in [
        ResourceSource::get(cluster, &configmaps(), Some(namespace), name)
            .await
            .expect("source get"),
        ResourceSource::get(cluster, &configmaps(), Some(namespace), name)
            .await
            .expect("sink get"),
    ] {
        let got = got.expect("created object is found");
        assert_eq!(got.at(&["data"]), obj.at(&["data"]), "data reads back");
        assert_eq!(got.label("pxb-conformance"), Some("yes"), "labels read back");
        assert_eq!(got.uid(), created.uid(), "get and create agree on the uid");
    }
    cluster
        .delete(&configmaps(), Some(namespace), name)
        .await
        .expect("delete");
    assert!(
        ResourceSource::get(cluster, &configmaps(), Some(namespace), name)
            .await
            .expect("get after delete")
            .is_none(),
        "deleted object is gone"
    );
}

/// Creating an object that exists is [`Error::AlreadyExists`] and leaves it unchanged.
pub async fn create_existing_is_already_exists(cluster: &dyn ResourceCluster, namespace: &str) {
    ensure_namespace(cluster, namespace).await;
    let name = "pxb-conformance-exists";
    let first = cluster
        .create(&configmaps(), &config_map(namespace, name, json!({})))
        .await
        .expect("create");
    let mut second = config_map(namespace, name, json!({})).into_value();
    second["data"] = json!({"key": "changed"});
    let second = ResourceObject::new(second).expect("valid");
    let err = cluster
        .create(&configmaps(), &second)
        .await
        .expect_err("second create must fail");
    assert!(
        matches!(err, Error::AlreadyExists { .. }),
        "second create: expected AlreadyExists, got {err}"
    );
    let got = ResourceSource::get(cluster, &configmaps(), Some(namespace), name)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(
        got.at(&["data"]),
        first.at(&["data"]),
        "existing object unchanged"
    );
    cleanup(cluster, namespace, &[name.to_owned()]).await;
}

/// Creating an object in a namespace that does not exist is [`Error::NotFound`].
pub async fn create_in_missing_namespace_fails(cluster: &dyn ResourceCluster) {
    let err = cluster
        .create(
            &configmaps(),
            &config_map("pxb-conformance-no-such-namespace", "x", json!({})),
        )
        .await
        .expect_err("create in a missing namespace must fail");
    assert!(
        matches!(err, Error::NotFound { .. }),
        "expected NotFound, got {err}"
    );
}

/// Deleting an object that does not exist is [`Error::NotFound`].
pub async fn delete_missing_is_not_found(cluster: &dyn ResourceCluster, namespace: &str) {
    ensure_namespace(cluster, namespace).await;
    let err = cluster
        .delete(&configmaps(), Some(namespace), "pxb-conformance-never-created")
        .await
        .expect_err("delete of a missing object must fail");
    assert!(
        matches!(err, Error::NotFound { .. }),
        "expected NotFound, got {err}"
    );
}

/// Listing with a small limit really pages: every page holds at most `limit` objects, the pages
/// together hold each object once, and the last page has no continue token.
pub async fn list_pages(cluster: &dyn ResourceCluster, namespace: &str) {
    ensure_namespace(cluster, namespace).await;
    let names: Vec<String> = (0..7).map(|i| format!("pxb-conformance-page-{i}")).collect();
    for n in &names {
        cluster
            .create(
                &configmaps(),
                &config_map(namespace, n, json!({"pxb-conformance": "paging"})),
            )
            .await
            .expect("create");
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = cluster
            .list(
                &configmaps(),
                Some(namespace),
                Some("pxb-conformance=paging"),
                token.as_deref(),
                3,
            )
            .await
            .expect("list");
        pages += 1;
        assert!(page.items.len() <= 3, "a page holds at most the limit");
        seen.extend(page.items.iter().map(|o| o.name().to_owned()));
        token = page.continue_token;
        if token.is_none() {
            break;
        }
        assert!(pages < 100, "listing does not end");
    }
    assert!(
        pages >= 3,
        "7 objects with limit 3 take at least 3 pages, got {pages}"
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an object was listed twice: {seen:?}");
    assert_eq!(
        unique,
        names.iter().collect::<BTreeSet<_>>(),
        "pages hold every object"
    );
    cleanup(cluster, namespace, &names).await;
}

/// A label selector filters like the API server's (equality, inequality, existence).
pub async fn list_with_label_selector(cluster: &dyn ResourceCluster, namespace: &str) {
    ensure_namespace(cluster, namespace).await;
    let objs = [
        (
            "pxb-conformance-sel-a",
            json!({"pxb-conformance": "sel", "tier": "a"}),
        ),
        (
            "pxb-conformance-sel-b",
            json!({"pxb-conformance": "sel", "tier": "b"}),
        ),
        ("pxb-conformance-sel-c", json!({"pxb-conformance": "sel"})),
    ];
    for (n, labels) in &objs {
        cluster
            .create(&configmaps(), &config_map(namespace, n, labels.clone()))
            .await
            .expect("create");
    }
    for (selector, expected) in [
        ("pxb-conformance=sel,tier=a", vec!["pxb-conformance-sel-a"]),
        (
            "pxb-conformance=sel,tier!=a",
            vec!["pxb-conformance-sel-b", "pxb-conformance-sel-c"],
        ),
        (
            "pxb-conformance=sel,tier",
            vec!["pxb-conformance-sel-a", "pxb-conformance-sel-b"],
        ),
        ("pxb-conformance=sel,!tier", vec!["pxb-conformance-sel-c"]),
    ] {
        let page = cluster
            .list(&configmaps(), Some(namespace), Some(selector), None, 100)
            .await
            .expect("list");
        let got: BTreeSet<&str> = page.items.iter().map(|o| o.name()).collect();
        assert_eq!(got, expected.into_iter().collect(), "selector {selector:?}");
    }
    let names: Vec<String> = objs.iter().map(|(n, _)| (*n).to_owned()).collect();
    cleanup(cluster, namespace, &names).await;
}

/// Listing a namespaced type without a namespace covers every namespace; with another namespace,
/// it does not see this one's objects.
pub async fn list_across_namespaces(cluster: &dyn ResourceCluster, namespace: &str) {
    ensure_namespace(cluster, namespace).await;
    let name = "pxb-conformance-across";
    cluster
        .create(
            &configmaps(),
            &config_map(namespace, name, json!({"pxb-conformance": "across"})),
        )
        .await
        .expect("create");
    let all = cluster
        .list(&configmaps(), None, Some("pxb-conformance=across"), None, 100)
        .await
        .expect("list all namespaces");
    assert!(
        all.items
            .iter()
            .any(|o| o.name() == name && o.namespace() == Some(namespace)),
        "a list across namespaces finds the object"
    );
    let other = cluster
        .list(
            &configmaps(),
            Some("pxb-conformance-other-namespace"),
            Some("pxb-conformance=across"),
            None,
            100,
        )
        .await
        .expect("list other namespace");
    assert!(other.items.is_empty(), "another namespace's list is empty");
    cleanup(cluster, namespace, &[name.to_owned()]).await;
}
