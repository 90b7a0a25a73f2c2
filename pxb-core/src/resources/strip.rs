//! What a backup removes from objects and which objects it leaves out.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;
use serde_json::Value;

use super::object::{ApiResource, ResourceObject};

/// Removes from `obj` what backup removes (server-populated metadata, `status`, Service cluster
/// IPs, …; owner references are a separate, archive-wide decision). Useful to compare a restored
/// object with the one that was backed up.
pub fn strip_server_fields(resource: &ApiResource, obj: &mut ResourceObject) {
    strip(resource, obj);
}

/// Metadata fields the API server populates; a create must not carry them.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// PVC annotations that record a binding of the source cluster; the PV controller re-binds a
/// restored claim from `spec.volumeName` and the volume's `claimRef` without them.
/// `volume.kubernetes.io/selected-node` names a node of the source cluster.
const PVC_BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/selected-node",
];

/// Labels the Job controller derives from the Job's uid; the API server sets new ones on create,
/// and rejects a Job that carries stale ones.
const JOB_UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];

/// `managed-by` values of the controllers that derive EndpointSlices from Services and Endpoints.
const ENDPOINTSLICE_CONTROLLERS: &[&str] = &[
    "endpointslice-controller.k8s.io",
    "endpointslicemirroring-controller.k8s.io",
];

/// Removes what the source cluster populated and a create must not (or need not) carry, and
/// returns the object's uid. Owner references are handled separately (they depend on which other
/// objects the archive holds).
///
/// `status` is removed from every kind: the API server ignores it on create for every kind with a
/// status subresource, controllers rebuild it, and the one status a restore needs, PV/PVC binding,
/// is rebuilt by the PV controller from `spec.volumeName` and `spec.claimRef`.
pub(crate) fn strip(resource: &ApiResource, obj: &mut ResourceObject) -> Option<String> {
    let mut uid = None;
    if let Some(meta) = obj.metadata_mut() {
        uid = meta.remove("uid").and_then(|v| match v {
            Value::String(s) => Some(s),
            _ => None,
        });
        for field in &SERVER_METADATA[1..] {
            meta.remove(*field);
        }
    }
    let value = obj.value_mut();
    let Some(root) = value.as_object_mut() else {
        return uid;
    };
    root.remove("status");
    let spec = root.get_mut("spec").and_then(Value::as_object_mut);
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Service") => {
            if let Some(spec) = spec {
                // A headless service (clusterIP: None) keeps it; any other address is allocated anew.
                if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
            }
        }
        ("", "PersistentVolume") => {
            if let Some(claim) = spec
                .and_then(|s| s.get_mut("claimRef"))
                .and_then(Value::as_object_mut)
            {
                claim.remove("uid");
                claim.remove("resourceVersion");
            }
        }
        ("", "PersistentVolumeClaim") => {
            if let Some(ann) = root
                .get_mut("metadata")
                .and_then(|m| m.get_mut("annotations"))
                .and_then(Value::as_object_mut)
            {
                for a in PVC_BINDING_ANNOTATIONS {
                    ann.remove(*a);
                }
            }
        }
        ("", "Pod") => {
            // Bound by the scheduler to a node of the source cluster.
            if let Some(spec) = spec {
                spec.remove("nodeName");
            }
        }
        ("batch", "Job") => {
            if let Some(spec) = spec
                && spec.get("manualSelector").and_then(Value::as_bool) != Some(true)
            {
                if let Some(selector) = spec.get_mut("selector").and_then(Value::as_object_mut) {
                    if let Some(sel) = selector.get_mut("matchLabels").and_then(Value::as_object_mut) {
                        for l in JOB_UID_LABELS {
                            sel.remove(*l);
                        }
                    }
                    // What is left of a generated selector is empty: the server generates it anew.
                    if selector.values().all(is_empty_collection) {
                        spec.remove("selector");
                    }
                }
                if let Some(labels) = spec
                    .get_mut("template")
                    .and_then(|t| t.get_mut("metadata"))
                    .and_then(|m| m.get_mut("labels"))
                    .and_then(Value::as_object_mut)
                {
                    for l in JOB_UID_LABELS {
                        labels.remove(*l);
                    }
                }
                // A Job created without labels of its own shares its template's labels, uid labels
                // included (the API server defaults one to the other before it adds them): they
                // name the source Job's uid and would outlive it on the restored Job.
                if let Some(uid) = uid.as_deref()
                    && let Some(labels) = root
                        .get_mut("metadata")
                        .and_then(|m| m.get_mut("labels"))
                        .and_then(Value::as_object_mut)
                {
                    for l in JOB_UID_LABELS {
                        if labels.get(*l).and_then(Value::as_str) == Some(uid) {
                            labels.remove(*l);
                        }
                    }
                }
            }
        }
        _ => {}
    }
    uid
}

/// Whether `v` is an empty object or array (or null).
fn is_empty_collection(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// Removes the owner references whose owner is in `archived` (by [`uid_key`]): the restored owner
/// gets a new uid, and a reference to the old one would make the garbage collector delete the
/// restored dependent. Controllers re-adopt their dependents by label selector. References to
/// owners outside the archive are kept: they name objects that stay in the cluster.
/// Returns whether anything was removed.
pub(crate) fn drop_archived_owners(obj: &mut ResourceObject, archived: &HashSet<u128>) -> bool {
    let Some(meta) = obj.metadata_mut() else {
        return false;
    };
    let Some(Value::Array(refs)) = meta.get_mut("ownerReferences") else {
        return false;
    };
    let before = refs.len();
    refs.retain(|r| {
        !r.get("uid")
            .and_then(Value::as_str)
            .is_some_and(|uid| archived.contains(&uid_key(uid)))
    });
    let changed = refs.len() != before;
    if refs.is_empty() {
        meta.remove("ownerReferences");
    }
    changed
}

/// Whether the object has any owner reference.
pub(crate) fn has_owner_references(obj: &ResourceObject) -> bool {
    obj.at(&["metadata", "ownerReferences"])
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

/// A compact, fixed-size key of a uid (16 bytes of its BLAKE3 hash): 300k of them take a few MiB.
pub(crate) fn uid_key(uid: &str) -> u128 {
    let hash = blake3::hash(uid.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(first)
}

/// Why a backup left an object out: Kubernetes re-creates it by itself, and restoring it would
/// conflict with the re-created one or carry stale data.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The ConfigMap `kube-root-ca.crt`, published into every namespace.
    RootCaConfigMap,
    /// A Secret of type `kubernetes.io/service-account-token`, minted by the token controller.
    ServiceAccountToken,
    /// A Pod with a controller (ReplicaSet, StatefulSet, Job, ...), which re-creates it.
    ControlledPod,
    /// Endpoints of a Service with a selector, maintained by the endpoints controller.
    ServiceEndpoints,
    /// An EndpointSlice maintained by the EndpointSlice (or mirroring) controller.
    ServiceEndpointSlice,
}

impl SkipReason {
    /// A short, stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::RootCaConfigMap => "root_ca_config_map",
            SkipReason::ServiceAccountToken => "service_account_token",
            SkipReason::ControlledPod => "controlled_pod",
            SkipReason::ServiceEndpoints => "service_endpoints",
            SkipReason::ServiceEndpointSlice => "service_endpoint_slice",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a backup leaves `obj` out, if it does: the objects Kubernetes re-creates by itself.
/// `managed_endpoints` holds `namespace/name` of the Services with a selector (whose Endpoints the
/// endpoints controller maintains).
pub(crate) fn skip_reason(
    resource: &ApiResource,
    obj: &ResourceObject,
    managed_endpoints: &HashSet<String>,
) -> Option<SkipReason> {
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "ConfigMap") if obj.name() == "kube-root-ca.crt" => Some(SkipReason::RootCaConfigMap),
        ("", "Secret") if obj.str_at(&["type"]) == Some("kubernetes.io/service-account-token") => {
            Some(SkipReason::ServiceAccountToken)
        }
        ("", "Pod") if obj.controller().is_some() => Some(SkipReason::ControlledPod),
        ("", "Endpoints")
            if managed_endpoints.contains(&format!(
                "{}/{}",
                obj.namespace().unwrap_or_default(),
                obj.name()
            )) =>
        {
            Some(SkipReason::ServiceEndpoints)
        }
        ("discovery.k8s.io", "EndpointSlice")
            if obj
                .label("endpointslice.kubernetes.io/managed-by")
                .is_some_and(|m| ENDPOINTSLICE_CONTROLLERS.contains(&m)) =>
        {
            Some(SkipReason::ServiceEndpointSlice)
        }
        _ => None,
    }
}

/// Whether `obj` is a Service whose Endpoints the endpoints controller maintains (it has a
/// selector).
pub(crate) fn is_selector_service(resource: &ApiResource, obj: &ResourceObject) -> bool {
    resource.is("", "Service")
        && obj
            .at(&["spec", "selector"])
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty())
}

/// Resource types a backup never lists: Events (core and `events.k8s.io`; records of the past
/// that Kubernetes expires), create-only review and binding resources, and aggregated metrics.
pub(crate) fn never_backed_up(resource: &ApiResource) -> bool {
    matches!(
        (resource.group.as_str(), resource.kind.as_str()),
        ("", "Event") | ("events.k8s.io", "Event") | ("", "Binding")
    ) || resource.plural.contains('/')
        || resource.group == "metrics.k8s.io"
        || resource.group == "authorization.k8s.io"
        || resource.group == "authentication.k8s.io"
}

/// API groups Kubernetes serves itself: their types are never custom resources.
const BUILTIN_GROUPS: &[&str] = &[
    "",
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
    "storage.k8s.io",
    "discovery.k8s.io",
    "events.k8s.io",
    "coordination.k8s.io",
    "node.k8s.io",
    "scheduling.k8s.io",
    "certificates.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "authentication.k8s.io",
    "authorization.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "resource.k8s.io",
    "internal.apiserver.k8s.io",
    "storagemigration.k8s.io",
    "metrics.k8s.io",
];

/// Whether `resource` may be a custom resource (served through a CustomResourceDefinition).
pub(crate) fn maybe_custom(resource: &ApiResource) -> bool {
    !BUILTIN_GROUPS.contains(&resource.group.as_str())
}
