//! [`InMemoryCluster`]: the twin of a Kubernetes API server, for tests.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use super::{
    ApiResource, LabelSelector, ObjectRef, ResourceObject, ResourcePage, ResourceSink, ResourceSource,
};
use crate::{Error, Result};

/// The resource types a typical cluster serves (preferred versions), as [`InMemoryCluster::new`]
/// serves them: core, apps, batch, RBAC, storage, networking, policy, autoscaling, discovery,
/// events, coordination and apiextensions.
pub fn well_known_api_resources() -> Vec<ApiResource> {
    let r = ApiResource::new;
    vec![
        r("", "v1", "Namespace", "namespaces", false),
        r("", "v1", "PersistentVolume", "persistentvolumes", false),
        r("", "v1", "ConfigMap", "configmaps", true),
        r("", "v1", "Secret", "secrets", true),
        r("", "v1", "ServiceAccount", "serviceaccounts", true),
        r("", "v1", "Service", "services", true),
        r("", "v1", "Endpoints", "endpoints", true),
        r("", "v1", "Pod", "pods", true),
        r("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
        r("", "v1", "Event", "events", true),
        r("", "v1", "LimitRange", "limitranges", true),
        r("", "v1", "ResourceQuota", "resourcequotas", true),
        r("", "v1", "ReplicationController", "replicationcontrollers", true),
        r("apps", "v1", "Deployment", "deployments", true),
        r("apps", "v1", "StatefulSet", "statefulsets", true),
        r("apps", "v1", "DaemonSet", "daemonsets", true),
        r("apps", "v1", "ReplicaSet", "replicasets", true),
        r("apps", "v1", "ControllerRevision", "controllerrevisions", true),
        r("batch", "v1", "Job", "jobs", true),
        r("batch", "v1", "CronJob", "cronjobs", true),
        r("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            true,
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            false,
        ),
        r(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
        ),
        r("storage.k8s.io", "v1", "StorageClass", "storageclasses", false),
        r("networking.k8s.io", "v1", "Ingress", "ingresses", true),
        r(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            true,
        ),
        r(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            true,
        ),
        r(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            true,
        ),
        r("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true),
        r("events.k8s.io", "v1", "Event", "events", true),
        r("coordination.k8s.io", "v1", "Lease", "leases", true),
        r(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            false,
        ),
    ]
}

/// Objects are keyed by (resource name, namespace or "", name), so that one resource's objects,
/// and one namespace's, are contiguous.
type Key = (String, String, String);

#[derive(Default)]
struct State {
    resources: Vec<ApiResource>,
    /// Objects as compact JSON, parsed on every read: like a real client, a read returns a copy,
    /// and memory stays close to the objects' serialized size.
    objects: BTreeMap<Key, Bytes>,
    /// (lowercase kind, namespace or "", name) -> message of the error `create` returns.
    failures: HashMap<(String, String, String), String>,
    created: Vec<ObjectRef>,
    list_calls: u64,
    next_version: u64,
}

/// An API server held in memory, implementing [`ResourceSource`] and [`ResourceSink`]. Suitable
/// for tests: it follows the semantics of the [`conformance`](super::conformance) suite. Clones
/// share the same state.
///
/// Like a real API server: `create` fills in `uid`, `resourceVersion`, `creationTimestamp`,
/// `generation` and a Service's cluster IP, requires the namespace to exist, and registers the
/// resource type of a created CustomResourceDefinition (deleting it removes the type and its
/// objects); deleting a Namespace deletes its objects; `list` really pages (`limit` and continue
/// tokens) and filters by label selector.
///
/// For tests: [`seed`](Self::seed) stores objects directly,
/// [`inject_create_failure`](Self::inject_create_failure) makes the create of one object fail,
/// and [`created`](Self::created) and [`list_calls`](Self::list_calls) show what happened.
#[derive(Clone)]
pub struct InMemoryCluster {
    state: Arc<Mutex<State>>,
}

impl Default for InMemoryCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryCluster")
            .field("objects", &self.len())
            .finish_non_exhaustive()
    }
}

impl InMemoryCluster {
    /// An empty cluster serving [`well_known_api_resources`].
    pub fn new() -> Self {
        Self::with_api_resources(well_known_api_resources())
    }

    /// An empty cluster serving exactly `resources`.
    pub fn with_api_resources(resources: Vec<ApiResource>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                resources,
                ..State::default()
            })),
        }
    }

    /// Serves one more resource type (replacing an entry of the same group and kind).
    pub fn add_api_resource(&self, resource: ApiResource) {
        let mut st = self.lock();
        st.resources
            .retain(|r| !(r.group == resource.group && r.kind == resource.kind));
        st.resources.push(resource);
    }

    /// Stores `object` as is, replacing any object of the same name, without the checks of
    /// `create` (its namespace need not exist) and without injected failures. Fills in `uid`,
    /// `resourceVersion` and `creationTimestamp` when absent. Returns the stored object.
    /// [`Error::Invalid`] if it is not a valid object or the cluster does not serve its kind.
    pub fn seed(&self, object: Value) -> Result<ResourceObject> {
        let mut obj = ResourceObject::new(object)?;
        let mut st = self.lock();
        let resource = st
            .resources
            .iter()
            .find(|r| r.describes(&obj))
            .cloned()
            .ok_or_else(|| {
                Error::invalid(format!(
                    "{obj}: the cluster does not serve {} {}",
                    obj.api_version(),
                    obj.kind()
                ))
            })?;
        if resource.namespaced != obj.namespace().is_some() {
            return Err(scope_error(&resource, &obj));
        }
        let version = st.bump();
        fill_server_fields(&mut obj, version, false);
        let key = key_of(&resource, obj.namespace(), obj.name());
        st.objects.insert(key, encode(&obj)?);
        Ok(obj)
    }

    /// Makes `create` of the object `kind` (case-insensitive) `namespace`/`name` fail with
    /// [`Error::Invalid`] and `message`, as an admission webhook rejecting it would.
    pub fn inject_create_failure(&self, kind: &str, namespace: Option<&str>, name: &str, message: &str) {
        self.lock().failures.insert(
            (
                kind.to_ascii_lowercase(),
                namespace.unwrap_or_default().to_owned(),
                name.to_owned(),
            ),
            message.to_owned(),
        );
    }

    /// The objects created through [`ResourceSink::create`], in order.
    pub fn created(&self) -> Vec<ObjectRef> {
        self.lock().created.clone()
    }

    /// How many `list` calls the cluster has answered.
    pub fn list_calls(&self) -> u64 {
        self.lock().list_calls
    }

    /// How many objects the cluster holds.
    pub fn len(&self) -> usize {
        self.lock().objects.len()
    }

    /// Whether the cluster holds no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object, ordered by resource type, namespace and name.
    pub fn objects(&self) -> Vec<ResourceObject> {
        let st = self.lock();
        st.objects.values().filter_map(|b| decode(b).ok()).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.next_version += 1;
        self.next_version
    }

    fn served(&self, resource: &ApiResource) -> Result<()> {
        let ok = self.resources.iter().any(|r| {
            r.group == resource.group
                && r.version == resource.version
                && r.plural == resource.plural
                && r.namespaced == resource.namespaced
        });
        if ok {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "the server could not find the requested resource {resource}"
            )))
        }
    }

    fn namespace_exists(&self, ns: &str) -> bool {
        self.objects
            .contains_key(&("namespaces".to_owned(), String::new(), ns.to_owned()))
    }

    /// Registers the resource type a CustomResourceDefinition defines.
    fn register_crd(&mut self, crd: &ResourceObject) -> Result<()> {
        let s = |p: &[&str]| crd.str_at(p).map(str::to_owned);
        let (Some(group), Some(kind), Some(plural)) = (
            s(&["spec", "group"]),
            s(&["spec", "names", "kind"]),
            s(&["spec", "names", "plural"]),
        ) else {
            return Err(Error::invalid(format!(
                "{crd}: spec.group, spec.names.kind and spec.names.plural are required"
            )));
        };
        let versions = crd
            .at(&["spec", "versions"])
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let served: Vec<&Value> = versions
            .iter()
            .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
            .collect();
        let version = served
            .iter()
            .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .or_else(|| served.first())
            .and_then(|v| v.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(format!("{crd}: no served version")))?;
        let namespaced = crd.str_at(&["spec", "scope"]) != Some("Cluster");
        self.resources.retain(|r| !(r.group == group && r.kind == kind));
        self.resources
            .push(ApiResource::new(&group, version, &kind, &plural, namespaced));
        Ok(())
    }
}

fn key_of(resource: &ApiResource, namespace: Option<&str>, name: &str) -> Key {
    (
        resource.resource_name(),
        namespace.unwrap_or_default().to_owned(),
        name.to_owned(),
    )
}

fn encode(obj: &ResourceObject) -> Result<Bytes> {
    serde_json::to_vec(obj.as_value())
        .map(Bytes::from)
        .map_err(|e| Error::other(format!("{obj}: {e}")))
}

fn decode(data: &[u8]) -> Result<ResourceObject> {
    let value: Value =
        serde_json::from_slice(data).map_err(|e| Error::corrupt(format!("stored object: {e}")))?;
    ResourceObject::new(value)
}

fn scope_error(resource: &ApiResource, obj: &ResourceObject) -> Error {
    if resource.namespaced {
        Error::invalid(format!("{obj}: a {} needs metadata.namespace", resource.kind))
    } else {
        Error::invalid(format!(
            "{obj}: a {} is cluster-scoped and takes no metadata.namespace",
            resource.kind
        ))
    }
}

/// Sets the fields the API server populates. `create` overwrites them; `seed` only fills gaps.
fn fill_server_fields(obj: &mut ResourceObject, version: u64, create: bool) {
    let Some(meta) = obj.metadata_mut() else {
        return;
    };
    let mut set = |k: &str, v: Value| {
        if create || !meta.contains_key(k) {
            meta.insert(k.to_owned(), v);
        }
    };
    set("uid", Value::String(new_uid()));
    set("resourceVersion", Value::String(version.to_string()));
    set("creationTimestamp", Value::String(rfc3339_now()));
    if create {
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
    }
}

/// A random version-4 UUID.
fn new_uid() -> String {
    let b = rand::random::<u128>().to_be_bytes();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The current time as the API server writes timestamps: `2024-05-01T12:34:56Z`.
fn rfc3339_now() -> String {
    crate::clock::rfc3339(SystemTime::now())
}

/// Continue tokens are the JSON of the last key returned: `[namespace, name]`.
fn parse_token(token: &str) -> Result<(String, String)> {
    serde_json::from_str(token).map_err(|_| Error::invalid(format!("invalid continue token {token:?}")))
}

#[async_trait]
impl ResourceSource for InMemoryCluster {
    async fn api_resources(&self) -> Result<Vec<ApiResource>> {
        Ok(self.lock().resources.clone())
    }

    async fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        continue_token: Option<&str>,
        limit: u32,
    ) -> Result<ResourcePage> {
        let selector = label_selector.map(LabelSelector::parse).transpose()?;
        let mut st = self.lock();
        st.list_calls += 1;
        st.served(resource)?;
        if namespace.is_some() && !resource.namespaced {
            return Err(Error::invalid(format!(
                "{resource} is cluster-scoped: list it without a namespace"
            )));
        }
        let rname = resource.resource_name();
        let ns = namespace.unwrap_or_default();
        let lower = match continue_token {
            Some(t) => {
                let (tns, tname) = parse_token(t)?;
                Bound::Excluded((rname.clone(), tns, tname))
            }
            None => Bound::Included((rname.clone(), ns.to_owned(), String::new())),
        };
        let limit = if limit == 0 { usize::MAX } else { limit as usize };
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for ((r, ons, oname), data) in st.objects.range((lower, Bound::Unbounded)) {
            if *r != rname || (namespace.is_some() && ons != ns) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            let obj = decode(data)?;
            if selector.as_ref().is_none_or(|s| s.matches(&obj)) {
                items.push(obj);
            }
            last = Some((ons.clone(), oname.clone()));
        }
        let continue_token = match (more, last) {
            (true, Some(k)) => Some(serde_json::to_string(&k).map_err(|e| Error::other(e.to_string()))?),
            _ => None,
        };
        Ok(ResourcePage {
            items,
            continue_token,
        })
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ResourceObject>> {
        let st = self.lock();
        st.served(resource)?;
        st.objects
            .get(&key_of(resource, namespace, name))
            .map(|b| decode(b))
            .transpose()
    }
}

#[async_trait]
impl ResourceSink for InMemoryCluster {
    async fn create(&self, resource: &ApiResource, object: &ResourceObject) -> Result<ResourceObject> {
        let mut st = self.lock();
        st.served(resource)?;
        if !resource.describes(object) {
            return Err(Error::invalid(format!(
                "{object}: apiVersion {} kind {} is not a {resource}",
                object.api_version(),
                object.kind()
            )));
        }
        if resource.namespaced != object.namespace().is_some() {
            return Err(scope_error(resource, object));
        }
        let fkey = (
            object.kind().to_ascii_lowercase(),
            object.namespace().unwrap_or_default().to_owned(),
            object.name().to_owned(),
        );
        if let Some(message) = st.failures.get(&fkey) {
            return Err(Error::invalid(format!("{object}: {message}")));
        }
        if let Some(ns) = object.namespace()
            && !st.namespace_exists(ns)
        {
            return Err(Error::not_found(format!("namespaces \"{ns}\" not found")));
        }
        let key = key_of(resource, object.namespace(), object.name());
        if st.objects.contains_key(&key) {
            return Err(Error::already_exists(format!("{object}")));
        }
        let mut obj = object.clone();
        let version = st.bump();
        fill_server_fields(&mut obj, version, true);
        if resource.is("", "Service") {
            assign_cluster_ip(&mut obj, version);
        }
        if resource.is("apiextensions.k8s.io", "CustomResourceDefinition") {
            st.register_crd(&obj)?;
        }
        st.objects.insert(key, encode(&obj)?);
        st.created.push(obj.object_ref());
        Ok(obj)
    }

    async fn delete(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> Result<()> {
        let mut st = self.lock();
        st.served(resource)?;
        let key = key_of(resource, namespace, name);
        let Some(data) = st.objects.remove(&key) else {
            return Err(Error::not_found(format!(
                "{} {}{name}",
                resource.kind,
                namespace.map(|n| format!("{n}/")).unwrap_or_default()
            )));
        };
        if resource.is("", "Namespace") {
            st.objects.retain(|(_, ns, _), _| ns != name);
        }
        if resource.is("apiextensions.k8s.io", "CustomResourceDefinition") {
            let crd = decode(&data)?;
            let group = crd.str_at(&["spec", "group"]).unwrap_or_default().to_owned();
            let kind = crd
                .str_at(&["spec", "names", "kind"])
                .unwrap_or_default()
                .to_owned();
            let plural = crd
                .str_at(&["spec", "names", "plural"])
                .unwrap_or_default()
                .to_owned();
            st.resources.retain(|r| !(r.group == group && r.kind == kind));
            let rname = format!("{plural}.{group}");
            st.objects.retain(|(r, _, _), _| *r != rname);
        }
        Ok(())
    }
}

/// Allocates a cluster IP for a Service that has none (and is not headless or ExternalName).
fn assign_cluster_ip(obj: &mut ResourceObject, version: u64) {
    let Some(spec) = obj.value_mut().get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("type").and_then(Value::as_str) == Some("ExternalName") || spec.contains_key("clusterIP") {
        return;
    }
    let ip = format!("10.96.{}.{}", (version >> 8) & 0xff, version & 0xff);
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));
}
