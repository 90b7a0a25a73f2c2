//! The resource model: Kubernetes objects as the API server returns them ([`ResourceObject`]),
//! references to them, and the resource types a cluster serves ([`ApiResource`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// A Kubernetes object, as the API server returns it: a JSON object with `apiVersion`, `kind` and
/// `metadata.name` (checked when it is built), and whatever else its kind has.
///
/// This is the dynamic-object model of `kubectl` and of kube-rs's `DynamicObject`: pxb backs up
/// every kind, including custom resources it has never heard of, so it does not use typed structs.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct ResourceObject(Value);

impl ResourceObject {
    /// Wraps `value`, checking that it is a JSON object with string `apiVersion` and `kind` and a
    /// non-empty string `metadata.name` ([`Error::Invalid`] otherwise).
    pub fn new(value: Value) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::invalid("a Kubernetes object must be a JSON object"))?;
        for field in ["apiVersion", "kind"] {
            if obj.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(Error::invalid(format!(
                    "a Kubernetes object needs a non-empty string {field:?}"
                )));
            }
        }
        let name = obj
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str);
        if name.is_none_or(str::is_empty) {
            return Err(Error::invalid(format!(
                "a Kubernetes object needs a non-empty string metadata.name (a {} has none)",
                obj.get("kind").and_then(Value::as_str).unwrap_or_default()
            )));
        }
        if let Some(ns) = obj.get("metadata").and_then(|m| m.get("namespace"))
            && !ns.is_string()
            && !ns.is_null()
        {
            return Err(Error::invalid("metadata.namespace must be a string"));
        }
        Ok(Self(value))
    }

    /// `apiVersion`, e.g. `v1` or `apps/v1`.
    pub fn api_version(&self) -> &str {
        self.str_at(&["apiVersion"]).unwrap_or_default()
    }

    /// The API group: the part of `apiVersion` before `/`, empty for the core group.
    pub fn group(&self) -> &str {
        self.api_version()
            .rsplit_once('/')
            .map(|(g, _)| g)
            .unwrap_or_default()
    }

    /// The API version within the group: the part of `apiVersion` after `/`.
    pub fn version(&self) -> &str {
        let v = self.api_version();
        v.rsplit_once('/').map_or(v, |(_, v)| v)
    }

    /// `kind`, e.g. `ConfigMap`.
    pub fn kind(&self) -> &str {
        self.str_at(&["kind"]).unwrap_or_default()
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.str_at(&["metadata", "name"]).unwrap_or_default()
    }

    /// `metadata.namespace`; `None` for cluster-scoped objects (and for an empty namespace).
    pub fn namespace(&self) -> Option<&str> {
        self.str_at(&["metadata", "namespace"]).filter(|s| !s.is_empty())
    }

    /// `metadata.uid`, set by the API server.
    pub fn uid(&self) -> Option<&str> {
        self.str_at(&["metadata", "uid"])
    }

    /// `metadata.labels` (string values only).
    pub fn labels(&self) -> BTreeMap<&str, &str> {
        self.string_map(&["metadata", "labels"])
    }

    /// One label's value.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.str_at(&["metadata", "labels", key])
    }

    /// `metadata.annotations` (string values only).
    pub fn annotations(&self) -> BTreeMap<&str, &str> {
        self.string_map(&["metadata", "annotations"])
    }

    /// `metadata.ownerReferences` (entries that are not well-formed references are left out).
    pub fn owner_references(&self) -> Vec<OwnerReference> {
        self.0
            .get("metadata")
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| serde_json::from_value(r.clone()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The owner reference with `controller: true`, if any (the object's managing controller).
    pub fn controller(&self) -> Option<OwnerReference> {
        self.owner_references()
            .into_iter()
            .find(|r| r.controller == Some(true))
    }

    /// A string at a JSON path of object keys, e.g. `["spec", "volumeName"]`.
    pub fn str_at(&self, path: &[&str]) -> Option<&str> {
        self.at(path)?.as_str()
    }

    /// The value at a JSON path of object keys.
    pub fn at(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(&self.0, |v, key| v.get(key))
    }

    /// The whole object.
    pub fn as_value(&self) -> &Value {
        &self.0
    }

    /// The whole object, unwrapped.
    pub fn into_value(self) -> Value {
        self.0
    }

    /// A reference naming this object (apiVersion, kind, namespace, name).
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            api_version: self.api_version().to_owned(),
            kind: self.kind().to_owned(),
            namespace: self.namespace().map(str::to_owned),
            name: self.name().to_owned(),
        }
    }

    /// Mutable access for this module's transformations, which keep apiVersion, kind and name.
    pub(crate) fn value_mut(&mut self) -> &mut Value {
        &mut self.0
    }

    /// `metadata` as a mutable map, if present.
    pub(crate) fn metadata_mut(&mut self) -> Option<&mut Map<String, Value>> {
        self.0.get_mut("metadata").and_then(Value::as_object_mut)
    }

    fn string_map(&self, path: &[&str]) -> BTreeMap<&str, &str> {
        self.at(path)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl TryFrom<Value> for ResourceObject {
    type Error = Error;

    fn try_from(value: Value) -> Result<Self> {
        Self::new(value)
    }
}

impl From<ResourceObject> for Value {
    fn from(obj: ResourceObject) -> Self {
        obj.0
    }
}

impl fmt::Debug for ResourceObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceObject({})", self.0)
    }
}

impl fmt::Display for ResourceObject {
    /// `Kind namespace/name` or `Kind name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.namespace() {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind(), self.name()),
            None => write!(f, "{} {}", self.kind(), self.name()),
        }
    }
}

/// An entry of `metadata.ownerReferences`: the object that owns this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    /// The owner's `apiVersion`.
    pub api_version: String,
    /// The owner's `kind`.
    pub kind: String,
    /// The owner's name (in the same namespace as the dependent, or cluster-scoped).
    pub name: String,
    /// The owner's uid.
    pub uid: String,
    /// Whether the owner is the managing controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    /// Whether the owner cannot be deleted (foreground deletion) before this object is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// Names an object: what a restore reports per object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace`, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    /// `Kind namespace/name` or `Kind name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A type of object the API server serves, as discovery reports it (one entry per group and kind,
/// in the group's preferred version). Like kube-rs's `ApiResource` plus the scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApiResource {
    /// API group, empty for the core group.
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Plural resource name as in URLs, e.g. `deployments`.
    pub plural: String,
    /// Whether objects live in namespaces (`false`: cluster-scoped).
    pub namespaced: bool,
}

impl ApiResource {
    /// A resource type from its parts.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_owned(),
            version: version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            namespaced,
        }
    }

    /// `apiVersion` of its objects: `version` for the core group, `group/version` otherwise.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The resource's full name as `kubectl` spells it: `plural` for the core group,
    /// `plural.group` otherwise (e.g. `deployments.apps`).
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// Whether this is `kind` of `group` (exact).
    pub fn is(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }

    /// Whether `pattern` names this resource, case-insensitively: its kind (`Deployment`), plural
    /// (`deployments`), `plural.group` (`deployments.apps`) or `Kind.group` (`Deployment.apps`).
    pub fn matches_name(&self, pattern: &str) -> bool {
        let p = pattern.trim();
        if p.eq_ignore_ascii_case(&self.kind) || p.eq_ignore_ascii_case(&self.plural) {
            return true;
        }
        if self.group.is_empty() {
            return false;
        }
        match p.split_once('.') {
            Some((name, group)) => {
                group.eq_ignore_ascii_case(&self.group)
                    && (name.eq_ignore_ascii_case(&self.plural) || name.eq_ignore_ascii_case(&self.kind))
            }
            None => false,
        }
    }

    /// Whether `object`'s apiVersion and kind are this resource's.
    pub fn describes(&self, object: &ResourceObject) -> bool {
        object.kind() == self.kind && object.group() == self.group && object.version() == self.version
    }

    /// The key statistics are counted under: `Kind` for the core group, `Kind.group` otherwise.
    pub fn kind_key(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

impl fmt::Display for ApiResource {
    /// `plural.group/version`, e.g. `deployments.apps/v1`, `configmaps/v1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_name(), self.version)
    }
}
