//! A Kubernetes API conformance suite for the parts of the API pxb and its tests rely on, run
//! against both the real kube-apiserver ([`crate::real`]) and the simulator's shoot API
//! ([`crate::sim`]), so the simulator is held to what the real server does.
//!
//! Every check takes a `kube::Client` with administrator rights and the name of a namespace of
//! its own (created when missing), so checks can share one server. They compare what a client
//! observes (status codes, reasons, the gist of messages, fields), not incidental details, and
//! never the server's version. A check panics with what differed.
//!
//! Cluster-scoped objects the checks need (the `widgets.conformance.pxb.io` CRD, pxb's
//! `BackupLocation` CRD) are created when missing and shared.

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::{Client, core::Status};
use serde_json::{Value, json};

/// The CRD with a status subresource the checks use for custom resources.
pub const WIDGETS_CRD: &str = "widgets.conformance.pxb.io";

/// The `Widget` resource of [`WIDGETS_CRD`].
pub fn widgets_resource() -> ApiResource {
    ApiResource {
        group: "conformance.pxb.io".into(),
        version: "v1".into(),
        api_version: "conformance.pxb.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    }
}

/// pxb's `BackupLocation` resource.
pub fn backup_locations_resource() -> ApiResource {
    ApiResource {
        group: "pxb.io".into(),
        version: "v1alpha1".into(),
        api_version: "pxb.io/v1alpha1".into(),
        kind: "BackupLocation".into(),
        plural: "backuplocations".into(),
    }
}

fn crds(client: &Client) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        },
    )
}

/// Creates `crd` unless a CRD of its name exists, then waits until it is Established and its
/// resource answers lists (at most 30 s).
pub async fn ensure_crd(client: &Client, crd: Value, resource: &ApiResource) {
    let name = crd["metadata"]["name"]
        .as_str()
        .expect("a CRD has a name")
        .to_owned();
    let api = crds(client);
    match api
        .create(&PostParams::default(), &serde_json::from_value(crd).expect("CRD"))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating CRD {name}: {e}"),
    }
    let probe: Api<DynamicObject> = Api::all_with(client.clone(), resource);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = api.get(&name).await.expect("CRD");
        let established = serde_json::to_value(&crd).expect("json")["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
        if established && probe.list(&ListParams::default().limit(1)).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "CRD {name} not Established within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ensure_widgets(client: &Client) {
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": WIDGETS_CRD},
        "spec": {"group": "conformance.pxb.io", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}});
    ensure_crd(client, crd, &widgets_resource()).await;
}

/// Creates pxb's `BackupLocation` CRD from `deploy/crds` unless it exists.
pub async fn ensure_backup_location_crd(client: &Client) {
    let path = crate::workspace_root().join("deploy/crds/backuplocations.pxb.io.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crd: Value = serde_saphyr::from_str(&yaml).expect("the CRD is YAML");
    ensure_crd(client, crd, &backup_locations_resource()).await;
}

/// Creates namespace `ns` unless it exists.
pub async fn ensure_namespace(client: &Client, ns: &str) {
    let nss: Api<Namespace> = Api::all(client.clone());
    match nss
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).expect("ns"),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("creating namespace {ns}: {e}"),
    }
}

/// The API error of `r`, or a panic naming `what` when it succeeded or failed otherwise.
fn api_error<T: std::fmt::Debug>(what: &str, r: Result<T, kube::Error>) -> Box<Status> {
    match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("{what}: expected an API error, got {other:?}"),
    }
}

/// Checks an error's code, reason and that its message contains each of `gist`.
fn expect_error<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, kube::Error>,
    code: u16,
    reason: &str,
    gist: &[&str],
) {
    let s = api_error(what, r);
    assert_eq!(
        (s.code, s.reason.as_str()),
        (code, reason),
        "{what}: {}",
        s.message
    );
    for g in gist {
        assert!(
            s.message.contains(g),
            "{what}: the message should say {g:?}: {}",
            s.message
        );
    }
}

fn cm(name: &str, labels: Value, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": data})).expect("cm")
}

/// Seven ConfigMaps `cm-0`..`cm-6` labelled `tier=even|odd`, and `plain` without labels.
async fn seed_config_maps(cms: &Api<ConfigMap>) {
    let pp = PostParams::default();
    for i in 0..7 {
        let tier = if i % 2 == 0 { "even" } else { "odd" };
        cms.create(
            &pp,
            &cm(
                &format!("cm-{i}"),
                json!({"tier": tier}),
                json!({"i": i.to_string()}),
            ),
        )
        .await
        .expect("create");
    }
    cms.create(&pp, &cm("plain", json!({}), json!({})))
        .await
        .expect("create");
}

/// Namespaces get their `kubernetes.io/metadata.name` label; create answers 201, a duplicate
/// 409 `AlreadyExists`, a missing object 404 `NotFound`; a stale `resourceVersion` on update and
/// a failed delete precondition are 409 `Conflict`.
pub async fn create_get_and_conflicts(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let n = nss.get(ns).await.expect("namespace");
    assert_eq!(
        n.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/metadata.name"))
            .map(String::as_str),
        Some(ns),
        "namespaces are labelled with their name"
    );
    assert_eq!(n.status.and_then(|s| s.phase).as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pp = PostParams::default();
    let created = cms
        .create(&pp, &cm("one", json!({}), json!({"a": "1"})))
        .await
        .expect("create");
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    expect_error(
        "duplicate create",
        cms.create(&pp, &cm("one", json!({}), json!({}))).await,
        409,
        "AlreadyExists",
        &["configmaps \"one\" already exists"],
    );
    expect_error(
        "get of a missing object",
        cms.get("nope").await,
        404,
        "NotFound",
        &["configmaps \"nope\" not found"],
    );
    expect_error(
        "create in a missing namespace",
        Api::<ConfigMap>::namespaced(client.clone(), &format!("{ns}-missing"))
            .create(&pp, &cm("x", json!({}), json!({})))
            .await,
        404,
        "NotFound",
        &["namespaces", "not found"],
    );

    // Optimistic concurrency.
    let mut current = cms.get("one").await.expect("get");
    let stale = current.clone();
    current
        .data
        .get_or_insert_default()
        .insert("b".into(), "2".into());
    let updated = cms.replace("one", &pp, &current).await.expect("update");
    assert_ne!(updated.metadata.resource_version, stale.metadata.resource_version);
    expect_error(
        "update with a stale resourceVersion",
        cms.replace("one", &pp, &stale).await,
        409,
        "Conflict",
        &["the object has been modified"],
    );
    let mut rv_zero = stale.clone();
    rv_zero.metadata.resource_version = Some("1".into());
    expect_error(
        "update with an old resourceVersion",
        cms.replace("one", &pp, &rv_zero).await,
        409,
        "Conflict",
        &["the object has been modified"],
    );
    // A merge patch that carries a stale resourceVersion is refused the same way.
    expect_error(
        "patch with a stale resourceVersion",
        cms.patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": stale.metadata.resource_version}, "data": {"c": "3"}}),
            ),
        )
        .await,
        409,
        "Conflict",
        &["the object has been modified"],
    );
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: stale.metadata.resource_version.clone(),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    expect_error(
        "delete with a stale resourceVersion precondition",
        cms.delete("one", &dp).await,
        409,
        "Conflict",
        &["precondition", "does not match"],
    );
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: None,
            uid: Some("00000000-0000-0000-0000-000000000000".into()),
        }),
        ..DeleteParams::default()
    };
    expect_error(
        "delete with a wrong uid precondition",
        cms.delete("one", &dp).await,
        409,
        "Conflict",
        &["precondition", "does not match"],
    );
    cms.delete("one", &DeleteParams::default()).await.expect("delete");
    expect_error("get after delete", cms.get("one").await, 404, "NotFound", &[]);
}

fn names(list: &kube::core::ObjectList<ConfigMap>) -> Vec<String> {
    list.items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect()
}

/// `limit` and `continue` page through a list in name order with `remainingItemCount`; a
/// garbled continue token is 400 `BadRequest`; one whose resourceVersion is compacted is 410
/// `Expired` (the real server compacts on an interval, so this waits up to a minute for it).
pub async fn paging(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    seed_config_maps(&cms).await;
    let page = cms.list(&ListParams::default().limit(3)).await.expect("page 1");
    assert_eq!(names(&page), ["cm-0", "cm-1", "cm-2"]);
    assert_eq!(page.metadata.remaining_item_count, Some(5));
    let token = page.metadata.continue_.clone().expect("continue token");
    let page2 = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(names(&page2), ["cm-3", "cm-4", "cm-5"]);
    assert_eq!(page2.metadata.remaining_item_count, Some(2));
    let token2 = page2.metadata.continue_.clone().expect("continue token");
    let last = cms
        .list(&ListParams::default().limit(3).continue_token(&token2))
        .await
        .expect("page 3");
    assert_eq!(names(&last), ["cm-6", "plain"]);
    assert!(
        last.metadata.continue_.as_deref().is_none_or(str::is_empty),
        "no continue token on the last page"
    );
    assert_eq!(last.metadata.remaining_item_count, None);

    expect_error(
        "a garbled continue token",
        cms.list(&ListParams::default().limit(3).continue_token("garbage"))
            .await,
        400,
        "BadRequest",
        &["continue key is not valid"],
    );
    // The same token with resourceVersion 1, which every server has compacted (or soon will).
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut decoded: Value =
        serde_json::from_slice(&engine.decode(&token).expect("continue tokens are base64")).expect("JSON");
    decoded["rv"] = 1.into();
    let expired = engine.encode(decoded.to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cms
            .list(&ListParams::default().limit(3).continue_token(&expired))
            .await
        {
            Err(kube::Error::Api(s)) => {
                assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{}", s.message);
                assert!(
                    s.message.contains("too old to display a consistent list result"),
                    "{}",
                    s.message
                );
                break;
            }
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            other => panic!("a continue token from resourceVersion 1 must expire: {other:?}"),
        }
    }
}

/// Label selectors (equality and set-based), field selectors (`metadata.name`,
/// `metadata.namespace`), and the 400 `BadRequest` for an unsupported field or a malformed
/// selector.
pub async fn selectors(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    seed_config_maps(&cms).await;
    let count = |lp: ListParams| {
        let cms = cms.clone();
        async move { names(&cms.list(&lp).await.expect("list")) }
    };
    let labels = |s: &str| ListParams::default().labels(s);
    let fields = |s: &str| ListParams::default().fields(s);
    assert_eq!(count(labels("tier=even")).await.len(), 4);
    assert_eq!(count(labels("tier==odd")).await.len(), 3);
    assert_eq!(
        count(labels("tier!=even")).await.len(),
        4,
        "!= matches unlabelled"
    );
    assert_eq!(count(labels("tier in (odd),tier!=even")).await.len(), 3);
    assert_eq!(count(labels("tier notin (even)")).await.len(), 4);
    assert_eq!(count(labels("tier in (even, odd)")).await.len(), 7);
    assert_eq!(count(labels("tier")).await.len(), 7);
    assert_eq!(count(labels("!tier")).await, ["plain"]);
    assert_eq!(count(fields("metadata.name=cm-5")).await, ["cm-5"]);
    assert_eq!(count(fields("metadata.name==cm-5")).await, ["cm-5"]);
    assert_eq!(count(fields("metadata.name!=cm-5")).await.len(), 7);
    assert_eq!(
        count(fields(&format!("metadata.namespace={ns},metadata.name=plain"))).await,
        ["plain"]
    );
    assert_eq!(
        count(
            ListParams::default()
                .labels("tier=odd")
                .fields("metadata.name!=cm-1")
        )
        .await,
        ["cm-3", "cm-5"]
    );
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        names(
            &all.list(&fields(&format!("metadata.namespace={ns}")))
                .await
                .expect("list")
        )
        .len(),
        8,
        "field selector across namespaces"
    );
    expect_error(
        "an unsupported field selector",
        cms.list(&fields("data.i=1")).await,
        400,
        "BadRequest",
        &["\"data.i\" is not a known field selector"],
    );
    expect_error(
        "a malformed label selector",
        cms.list(&labels("tier in (odd")).await,
        400,
        "BadRequest",
        &[],
    );
    expect_error(
        "a label selector with an invalid key",
        cms.list(&labels("A/B/C=x")).await,
        400,
        "BadRequest",
        &[],
    );
}

/// Merge patches set and (with `null`) remove keys; JSON patches apply their operations.
pub async fn patches(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(
        &PostParams::default(),
        &cm("p", json!({"a": "1"}), json!({"x": "1", "y": "2"})),
    )
    .await
    .expect("create");
    let pp = PatchParams::default();
    let patched = cms
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"labels": {"b": "2"}}, "data": {"x": null, "z": "3"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        serde_json::to_value(&patched.data).expect("json"),
        json!({"y": "2", "z": "3"})
    );
    assert_eq!(
        serde_json::to_value(&patched.metadata.labels).expect("json"),
        json!({"a": "1", "b": "2"})
    );
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "replace", "path": "/data/y", "value": "two"},
        {"op": "add", "path": "/data/w", "value": "4"},
        {"op": "remove", "path": "/data/z"}
    ]))
    .expect("ops");
    let patched = cms
        .patch("p", &pp, &Patch::<()>::Json(ops))
        .await
        .expect("json patch");
    assert_eq!(
        serde_json::to_value(&patched.data).expect("json"),
        json!({"w": "4", "y": "two"})
    );
    expect_error(
        "a patch of a missing object",
        cms.patch("nope", &pp, &Patch::Merge(json!({"data": {"a": "1"}})))
            .await,
        404,
        "NotFound",
        &[],
    );
}

fn managers_of(obj: &ConfigMap) -> Vec<(String, String, Value)> {
    obj.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
                m.fields_v1.as_ref().map(|f| f.0.clone()).unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn owns(obj: &ConfigMap, manager: &str, key: &str) -> bool {
    managers_of(obj)
        .iter()
        .any(|(m, _, f)| m == manager && f.pointer(&format!("/f:data/f:{key}")).is_some())
}

/// Server-side apply: it creates, records each manager in `managedFields`, refuses (409
/// `Conflict`, naming the other manager and the field) a change to a field another manager
/// owns, takes it over with `force`, lets managers co-own a field they set to the same value,
/// removes the fields a manager stops applying, and requires a field manager (422).
pub async fn server_side_apply(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let config = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "namespace": ns}, "data": data});
    let m1 = PatchParams::apply("m1");
    let created = cms
        .patch("ssa", &m1, &Patch::Apply(config(json!({"a": "1", "b": "2"}))))
        .await
        .expect("apply creates");
    assert_eq!(
        serde_json::to_value(&created.data).expect("json"),
        json!({"a": "1", "b": "2"})
    );
    assert!(
        managers_of(&created)
            .iter()
            .any(|(m, op, _)| m == "m1" && op == "Apply"),
        "{:?}",
        managers_of(&created)
    );
    assert!(owns(&created, "m1", "a") && owns(&created, "m1", "b"));

    let m2 = PatchParams::apply("m2");
    let s = api_error(
        "applying another manager's field",
        cms.patch("ssa", &m2, &Patch::Apply(config(json!({"a": "X"}))))
            .await,
    );
    assert_eq!((s.code, s.reason.as_str()), (409, "Conflict"), "{}", s.message);
    assert!(
        s.message.contains("Apply failed with 1 conflict")
            && s.message.contains("conflict with \"m1\"")
            && s.message.contains(".data.a"),
        "{}",
        s.message
    );
    // Same value: co-owned, no conflict.
    let shared = cms
        .patch(
            "ssa",
            &PatchParams::apply("m3"),
            &Patch::Apply(config(json!({"b": "2"}))),
        )
        .await
        .expect("co-owning with the same value");
    assert!(owns(&shared, "m1", "b") && owns(&shared, "m3", "b"));
    // Force takes the field over.
    let forced = cms
        .patch(
            "ssa",
            &m2.clone().force(),
            &Patch::Apply(config(json!({"a": "X"}))),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        forced.data.as_ref().and_then(|d| d.get("a")).map(String::as_str),
        Some("X")
    );
    assert!(owns(&forced, "m2", "a") && !owns(&forced, "m1", "a"));
    // m1 stops applying a and b: b stays (m3 still owns it), a stays (m2's), c is new.
    let after = cms
        .patch("ssa", &m1, &Patch::Apply(config(json!({"c": "3"}))))
        .await
        .expect("apply");
    assert_eq!(
        serde_json::to_value(&after.data).expect("json"),
        json!({"a": "X", "b": "2", "c": "3"})
    );
    // m3 stops applying b, which nobody else owns now: it goes.
    let after = cms
        .patch(
            "ssa",
            &PatchParams::apply("m3"),
            &Patch::Apply(config(json!({"d": "4"}))),
        )
        .await
        .expect("apply");
    assert_eq!(
        serde_json::to_value(&after.data).expect("json"),
        json!({"a": "X", "c": "3", "d": "4"})
    );
    // A merge patch changes what it changes, whatever the managers.
    let merged = cms
        .patch(
            "ssa",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"d": "merged"}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged.data.as_ref().and_then(|d| d.get("d")).map(String::as_str),
        Some("merged")
    );
    // Apply without a field manager is refused by the server.
    let req = http::Request::patch(format!("/api/v1/namespaces/{ns}/configmaps/ssa"))
        .header("content-type", "application/apply-patch+yaml")
        .body(config(json!({"a": "Y"})).to_string().into_bytes())
        .expect("request");
    expect_error(
        "apply without fieldManager",
        client.request::<Value>(req).await,
        422,
        "Invalid",
        &["fieldManager: Required value"],
    );
}

fn widget(name: &str, spec: Value, status: Value) -> DynamicObject {
    serde_json::from_value(json!({"apiVersion": "conformance.pxb.io/v1", "kind": "Widget",
        "metadata": {"name": name}, "spec": spec, "status": status}))
    .expect("widget")
}

/// A custom resource with a `status` subresource: create ignores status; writes to `/status`
/// change only status (not spec, not labels, not generation); writes to the resource ignore
/// status; `generation` counts spec changes.
pub async fn status_subresource(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    ensure_widgets(client).await;
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &widgets_resource());
    let created = widgets
        .create(
            &PostParams::default(),
            &widget("w1", json!({"size": 1}), json!({"phase": "Ignored"})),
        )
        .await
        .expect("create");
    let v = serde_json::to_value(&created).expect("json");
    assert!(
        v.get("status").is_none_or(Value::is_null),
        "create ignores status: {v}"
    );
    assert_eq!(created.metadata.generation, Some(1));
    let st = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Ready"}, "spec": {"size": 9}, "metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("status patch");
    let v = serde_json::to_value(&st).expect("json");
    assert_eq!(v["status"]["phase"], "Ready");
    assert_eq!(v["spec"]["size"], 1, "status writes ignore spec");
    assert!(
        v.pointer("/metadata/labels/x").is_none(),
        "status writes ignore labels: {v}"
    );
    assert_eq!(st.metadata.generation, Some(1), "status does not bump generation");
    let sp = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}, "status": {"phase": "Ignored"}})),
        )
        .await
        .expect("spec patch");
    let v = serde_json::to_value(&sp).expect("json");
    assert_eq!(
        (v["status"]["phase"].as_str(), v["spec"]["size"].as_i64()),
        (Some("Ready"), Some(2))
    );
    assert_eq!(sp.metadata.generation, Some(2));
    // A no-op spec write keeps the generation.
    let same = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 2}})),
        )
        .await
        .expect("no-op");
    assert_eq!(same.metadata.generation, Some(2));
    // PUT to /status with the current resourceVersion: only status changes.
    let mut obj = widgets.get("w1").await.expect("get");
    obj.data["spec"]["size"] = 7.into();
    obj.data["status"]["phase"] = "Put".into();
    let put = widgets
        .replace_status("w1", &PostParams::default(), &obj)
        .await
        .expect("status put");
    let v = serde_json::to_value(&put).expect("json");
    assert_eq!(
        (v["status"]["phase"].as_str(), v["spec"]["size"].as_i64()),
        (Some("Put"), Some(2))
    );
    // A stale resourceVersion on /status is a conflict too.
    expect_error(
        "status update with a stale resourceVersion",
        widgets.replace_status("w1", &PostParams::default(), &obj).await,
        409,
        "Conflict",
        &["the object has been modified"],
    );
    let s = widgets.get_status("w1").await.expect("get status");
    assert_eq!(s.data["status"]["phase"], "Put");
}

/// Finalizers: delete only marks (`deletionTimestamp`, grace period 0) and answers the object;
/// a repeated delete is harmless; no finalizer may be added while deleting (422); other changes
/// are allowed; removing the last finalizer deletes the object.
pub async fn finalizers_and_deletion(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut held = cm("held", json!({}), json!({}));
    held.metadata.finalizers = Some(vec!["pxb.io/test".into()]);
    cms.create(&PostParams::default(), &held).await.expect("create");
    let answer = cms
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    let marked = answer
        .left()
        .expect("a delete that has to wait for finalizers answers the object");
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(0));
    let again = cms
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete again")
        .left()
        .expect("object");
    assert_eq!(
        again.metadata.deletion_timestamp,
        marked.metadata.deletion_timestamp
    );
    let got = cms.get("held").await.expect("still there");
    assert!(got.metadata.deletion_timestamp.is_some());
    expect_error(
        "adding a finalizer while deleting",
        cms.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["pxb.io/test", "pxb.io/new"]}})),
        )
        .await,
        422,
        "Invalid",
        &["no new finalizers can be added if the object is being deleted"],
    );
    let changed = cms
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k": "v"}})),
        )
        .await
        .expect("other changes are allowed");
    assert!(changed.metadata.deletion_timestamp.is_some());
    // The deletion is watched as a DELETED event.
    let rv = changed.metadata.resource_version.clone().expect("rv");
    let mut stream = Box::pin(
        cms.watch(
            &WatchParams::default().fields("metadata.name=held").timeout(10),
            &rv,
        )
        .await
        .expect("watch"),
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
    expect_error(
        "get after the last finalizer went",
        cms.get("held").await,
        404,
        "NotFound",
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.next()).await {
            Ok(Some(Ok(WatchEvent::Deleted(o)))) => {
                assert_eq!(o.metadata.name.as_deref(), Some("held"));
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a DELETED event, got {other:?}"),
        }
    }
    // Without finalizers, delete removes at once.
    cms.create(&PostParams::default(), &cm("free", json!({}), json!({})))
        .await
        .expect("create");
    cms.delete("free", &DeleteParams::default())
        .await
        .expect("delete");
    expect_error("get after delete", cms.get("free").await, 404, "NotFound", &[]);
}

/// Deleting namespace `ns` (created here, with a ConfigMap `held` that has a finalizer): the
/// answer and the namespace show `deletionTimestamp` and phase `Terminating`, new content is 403
/// `Forbidden`, and `held` stays while its finalizer does. Then the finalizer is removed.
///
/// What follows differs by design: the real fixture has no namespace controller, so its
/// namespace stays Terminating with its content; the simulator acts as that controller (content
/// deleted, the namespace gone once nothing is left). Callers check that part.
pub async fn namespace_deletion(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut held = cm("held", json!({}), json!({}));
    held.metadata.finalizers = Some(vec!["pxb.io/test".into()]);
    cms.create(&PostParams::default(), &held).await.expect("create");
    let nss: Api<Namespace> = Api::all(client.clone());
    let answer = nss
        .delete(ns, &DeleteParams::default())
        .await
        .expect("delete namespace")
        .left()
        .expect("a namespace's delete answers the namespace");
    assert!(answer.metadata.deletion_timestamp.is_some());
    assert_eq!(
        answer.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    let n = nss.get(ns).await.expect("the namespace waits for its content");
    assert!(n.metadata.deletion_timestamp.is_some());
    assert_eq!(
        n.spec.and_then(|s| s.finalizers),
        Some(vec!["kubernetes".to_owned()])
    );
    assert_eq!(n.status.and_then(|s| s.phase).as_deref(), Some("Terminating"));
    expect_error(
        "new content in a terminating namespace",
        cms.create(&PostParams::default(), &cm("late", json!({}), json!({})))
            .await,
        403,
        "Forbidden",
        &["because it is being terminated"],
    );
    cms.get("held").await.expect("held by its finalizer");
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop the finalizer");
}

/// Watches: from a list's resourceVersion they deliver later changes and, with
/// `allowWatchBookmarks`, bookmarks; `sendInitialEvents` replays the current objects and ends
/// them with a bookmark annotated `k8s.io/initial-events-end`; a watch from a compacted
/// resourceVersion is answered 410 `Expired` (watches PodTemplates, which the real fixture does
/// not cache; up to a minute for its compaction).
pub async fn watches(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    seed_config_maps(&cms).await;
    let rv = cms
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut stream = Box::pin(
        cms.watch(&WatchParams::default().timeout(8), &rv)
            .await
            .expect("watch"),
    );
    cms.patch(
        "cm-4",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"w": "1"}})),
    )
    .await
    .expect("patch");
    let (mut modified, mut bookmark) = (false, false);
    while !(modified && bookmark) {
        match tokio::time::timeout(Duration::from_secs(12), stream.next()).await {
            Ok(Some(Ok(WatchEvent::Modified(o)))) => {
                assert_eq!(o.metadata.name.as_deref(), Some("cm-4"));
                modified = true;
            }
            Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                assert!(!b.metadata.resource_version.is_empty());
                bookmark = true;
            }
            Ok(Some(Ok(other))) => panic!("unexpected event {other:?}"),
            other => panic!(
                "the watch ended before a MODIFIED event and a bookmark ({modified}, {bookmark}): {other:?}"
            ),
        }
    }
    drop(stream);

    let mut stream = Box::pin(
        cms.watch(&WatchParams::streaming_lists().timeout(10), "0")
            .await
            .expect("streaming list"),
    );
    let mut added = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(WatchEvent::Added(o)))) => added.push(o.metadata.name.unwrap_or_default()),
            Ok(Some(Ok(WatchEvent::Bookmark(b)))) => {
                assert_eq!(
                    b.metadata
                        .annotations
                        .get("k8s.io/initial-events-end")
                        .map(String::as_str),
                    Some("true"),
                    "the first bookmark ends the initial events"
                );
                break;
            }
            other => panic!("streaming list: {other:?}"),
        }
    }
    added.sort();
    assert_eq!(added.len(), 8, "{added:?}");
    drop(stream);

    let templates: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "PodTemplate".into(),
            plural: "podtemplates".into(),
        },
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = Box::pin(
            templates
                .watch(&WatchParams::default().timeout(2), "1")
                .await
                .expect("watch"),
        );
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(WatchEvent::Error(e)))) => {
                assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{}", e.message);
                assert!(e.message.contains("too old"), "{}", e.message);
                break;
            }
            Ok(Some(Err(kube::Error::Api(s)))) => {
                assert_eq!((s.code, s.reason.as_str()), (410, "Expired"), "{}", s.message);
                break;
            }
            Ok(None) | Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => panic!("a watch from resourceVersion 1 must be 410 Gone: {other:?}"),
        }
    }
}

/// The names, label keys and label values a real API server refuses: 422 `Invalid` with
/// apimachinery's messages, on create, update and patch; and what it takes.
pub async fn name_and_label_validation(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    let pp = PostParams::default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let long = "a".repeat(64);
    let refused: Vec<(String, Value, &str)> = vec![
        // A label value longer than 63 (an org id or record id pxb once wrote verbatim).
        (
            "v64".into(),
            json!({"pxb.io/uid": long}),
            "must be no more than 63 bytes",
        ),
        (
            "slash".into(),
            json!({"pxb.io/org": "a/b"}),
            "a valid label must be an empty string",
        ),
        (
            "edge".into(),
            json!({"k": "-a"}),
            "a valid label must be an empty string",
        ),
        (
            "unicode".into(),
            json!({"k": "ü"}),
            "a valid label must be an empty string",
        ),
        (
            "key-name".into(),
            json!({ long.clone(): "v" }),
            "name part must be no more than 63 bytes",
        ),
        (
            "key-prefix".into(),
            json!({"Example.com/k": "v"}),
            "prefix part a lowercase RFC 1123 subdomain",
        ),
        (
            "key-empty".into(),
            json!({"example.com/": "v"}),
            "name part must be non-empty",
        ),
        (
            "key-slashes".into(),
            json!({"a/b/c": "v"}),
            "a valid label key must consist of",
        ),
        (
            format!("n{}", "a".repeat(253)),
            json!({}),
            "must be no more than 253 characters",
        ),
        ("Upper".into(), json!({}), "a lowercase RFC 1123 subdomain"),
        ("a..b".into(), json!({}), "a lowercase RFC 1123 subdomain"),
        ("a.-b".into(), json!({}), "a lowercase RFC 1123 subdomain"),
    ];
    let mut wrong = Vec::new();
    for (name, labels, why) in &refused {
        let s = api_error(
            &format!("{name} {labels}"),
            cms.create(&pp, &cm(name, labels.clone(), json!({}))).await,
        );
        assert_eq!(
            (s.code, s.reason.as_str()),
            (422, "Invalid"),
            "{name}: {}",
            s.message
        );
        assert!(s.is_failure(), "{s:?}");
        if !(s.message.starts_with("ConfigMap ")
            && s.message.contains("is invalid")
            && s.message.contains(why))
        {
            wrong.push(format!("{name}: expected {why:?} in: {}", s.message));
        }
    }
    assert!(wrong.is_empty(), "messages differ:\n{}", wrong.join("\n"));
    let max_key = format!("{}/{}", "p".repeat(253), "n".repeat(63));
    for (name, labels) in [
        (
            "ok-1",
            json!({"k": "", "K_.-9": "A.b_c-9", max_key.as_str(): "a".repeat(63)}),
        ),
        ("a.b-c.d", json!({"app.kubernetes.io/name": "x"})),
    ] {
        cms.create(&pp, &cm(name, labels.clone(), json!({})))
            .await
            .unwrap_or_else(|e| panic!("{name} {labels}: {e}"));
    }
    expect_error(
        "a patch with an invalid label value",
        cms.patch(
            "ok-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pxb.io/uid": long}}})),
        )
        .await,
        422,
        "Invalid",
        &["must be no more than 63 bytes"],
    );
    let mut current = cms.get("ok-1").await.expect("get");
    current.metadata.labels = Some([("bad/key/x".to_string(), "v".to_string())].into());
    expect_error(
        "an update with an invalid label key",
        cms.replace("ok-1", &pp, &current).await,
        422,
        "Invalid",
        &["a valid label key must consist of"],
    );
    let nss: Api<Namespace> = Api::all(client.clone());
    expect_error(
        "a namespace with a dot",
        nss.create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "a.b"}})).expect("ns"),
        )
        .await,
        422,
        "Invalid",
        &["must not contain dots"],
    );
    expect_error(
        "an object without a name",
        cms.create(&pp, &serde_json::from_value(json!({"metadata": {}})).expect("cm"))
            .await,
        422,
        "Invalid",
        &["name or generateName is required"],
    );
    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).expect("cm");
    let made = cms.create(&pp, &generated).await.expect("generateName");
    assert!(
        made.metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("gen-") && n.len() == 9),
        "{:?}",
        made.metadata.name
    );
}

/// Server-side tables as kubectl asks for them (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`):
/// the `Name` column first, a CRD's `additionalPrinterColumns` (pxb's `BackupLocation`) with
/// their types and priorities, one row per object with its cells and metadata.
pub async fn tables(client: &Client, ns: &str) {
    ensure_namespace(client, ns).await;
    ensure_backup_location_crd(client).await;
    let locations: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &backup_locations_resource());
    for name in ["loc-a", "loc-b"] {
        let obj = json!({"apiVersion": "pxb.io/v1alpha1", "kind": "BackupLocation", "metadata": {"name": name},
                         "spec": {"provider": "file", "container": "/backups"}});
        locations
            .create(
                &PostParams::default(),
                &serde_json::from_value(obj).expect("location"),
            )
            .await
            .unwrap_or_else(|e| panic!("creating BackupLocation {name}: {e}"));
    }
    let get_table = |path: String| async move {
        let req = http::Request::get(path)
            .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
            .body(Vec::new())
            .expect("request");
        client.request::<Value>(req).await.expect("table")
    };
    let table = get_table(format!("/apis/pxb.io/v1alpha1/namespaces/{ns}/backuplocations")).await;
    assert_eq!(
        (table["kind"].as_str(), table["apiVersion"].as_str()),
        (Some("Table"), Some("meta.k8s.io/v1"))
    );
    let columns: Vec<(&str, &str, i64)> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or(""),
                c["type"].as_str().unwrap_or(""),
                c["priority"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        columns,
        [
            ("Name", "string", 0),
            ("Provider", "string", 0),
            ("Phase", "string", 0),
            ("Reason", "string", 1),
            ("Age", "date", 0)
        ]
    );
    assert_eq!(table["columnDefinitions"][0]["format"], "name");
    let rows = table["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2);
    let cells = rows[0]["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 5);
    assert_eq!(
        (cells[0].as_str(), cells[1].as_str()),
        (Some("loc-a"), Some("file"))
    );
    assert!(
        cells[2].is_null() && cells[3].is_null(),
        "no status yet: {cells:?}"
    );
    assert!(
        cells[4].as_str().is_some_and(|a| a.ends_with('s')),
        "Age is shown as an age: {cells:?}"
    );
    assert_eq!(rows[0]["object"]["kind"], "PartialObjectMetadata");
    assert_eq!(rows[0]["object"]["metadata"]["name"], "loc-a");
    assert!(table["metadata"]["resourceVersion"].is_string());
    // One object as a table.
    let one = get_table(format!(
        "/apis/pxb.io/v1alpha1/namespaces/{ns}/backuplocations/loc-b"
    ))
    .await;
    assert_eq!(one["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["rows"][0]["cells"][0], "loc-b");
    // Paged tables carry the continue token.
    let paged = get_table(format!(
        "/apis/pxb.io/v1alpha1/namespaces/{ns}/backuplocations?limit=1"
    ))
    .await;
    assert_eq!(paged["rows"].as_array().map(Vec::len), Some(1));
    assert!(paged["metadata"]["continue"].is_string(), "{}", paged["metadata"]);
    // Built-in types: Name first, Age last.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    cms.create(&PostParams::default(), &cm("c", json!({}), json!({"a": "1"})))
        .await
        .expect("create");
    let t = get_table(format!("/api/v1/namespaces/{ns}/configmaps")).await;
    let cols = t["columnDefinitions"].as_array().expect("columns");
    assert_eq!(cols.first().map(|c| &c["name"]), Some(&json!("Name")));
    assert_eq!(cols.last().map(|c| &c["name"]), Some(&json!("Age")));
    assert_eq!(t["rows"][0]["cells"][0], "c");
}

/// Every check, each in a namespace of its own named `{ns}-<check>`.
pub async fn run_all(client: &Client, ns: &str) {
    create_get_and_conflicts(client, &format!("{ns}-crud")).await;
    paging(client, &format!("{ns}-paging")).await;
    selectors(client, &format!("{ns}-selectors")).await;
    patches(client, &format!("{ns}-patches")).await;
    server_side_apply(client, &format!("{ns}-ssa")).await;
    status_subresource(client, &format!("{ns}-status")).await;
    finalizers_and_deletion(client, &format!("{ns}-finalizers")).await;
    namespace_deletion(client, &format!("{ns}-gone")).await;
    watches(client, &format!("{ns}-watch")).await;
    name_and_label_validation(client, &format!("{ns}-names")).await;
    tables(client, &format!("{ns}-tables")).await;
}
