//! Namespace resource backup and restore: the Kubernetes objects of a set of namespaces, written to
//! one archive object and re-created from it.
//!
//! Backend-agnostic, over two seams:
//! - [`ResourceSource`]: discovery, paged `list` and `get` of a cluster's objects (what a backup
//!   reads);
//! - [`ResourceSink`]: discovery, `get`, `create` and `delete` (what a restore writes).
//!
//! [`InMemoryCluster`] implements both, for tests; the [`conformance`] suite pins down the behaviour
//! every implementation (the in-memory twin, the Kubernetes client) must have.
//!
//! [`backup_resources`] streams the selected objects into one zstd-compressed JSON-lines archive;
//! [`restore_resources`] re-creates them in dependency order ([`RestoreTier`]) with namespace and
//! storage-class mapping and a policy for objects that already exist; it creates only the objects
//! of the restored namespaces and the cluster-scoped objects they need (or the restore allows),
//! addressed by the target cluster's discovery, and refuses the rest. Neither holds the whole set
//! of objects in memory: lists are paged, and archives go through temporary files (in the system
//! temporary directory, `$TMPDIR`).
//!
//! # Archive format 1
//!
//! One object, zstd-compressed (with content checksums), of newline-separated JSON documents:
//! 1. a header: `{"pxb":"resources","format":1,"generator":...,"namespaces":[...],"selector":{...}}`;
//! 2. one line per object: `{"resource":{"group":..,"version":..,"kind":..,"plural":..,
//!    "namespaced":..},"object":{...}}`, cluster-scoped dependencies (Namespaces,
//!    CustomResourceDefinitions, PersistentVolumes, StorageClasses) first;
//! 3. an end marker `{"end":{"objects":N}}`, so that a truncated archive is always detected.
//!
//! `zstd -dc archive | jq` reads it.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

mod archive;
mod backup;
pub mod conformance;
#[cfg(test)]
mod isolation_tests;
mod memory;
mod restore;
mod selector;
mod strip;
#[cfg(test)]
mod tests;

pub use archive::ARCHIVE_FORMAT;
pub use backup::{ResourceBackupStats, SkipReason, backup_resources};
pub use memory::{InMemoryCluster, well_known_api_resources};
pub use restore::{
    ExistingResourcePolicy, RestoreOptions, RestoreOutcome, RestoreReport, RestoreTier, RestoredObject,
    restore_resources,
};
pub(crate) use restore::{ExpectedArchive, restore_archive};
pub use selector::LabelSelector;

/// Removes from `obj` what backup removes (server-populated metadata, `status`, Service cluster
/// IPs, …; owner references are a separate, archive-wide decision). Useful to compare a restored
/// object with the one that was backed up.
pub fn strip_server_fields(resource: &ApiResource, obj: &mut ResourceObject) {
    strip::strip(resource, obj);
}

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

/// Which objects a backup takes.
///
/// Like Velero's `--include-namespaces`, `--selector`, `--include-resources` and
/// `--exclude-resources`. The label selector and kinds select namespaced objects; the
/// cluster-scoped objects those depend on (their Namespaces, the PersistentVolumes bound to their
/// claims, StorageClasses, CustomResourceDefinitions) are recorded whatever their labels, unless
/// their kind is excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSelector {
    /// Namespaces to back up; empty means every namespace of the cluster.
    pub namespaces: Vec<String>,
    /// An equality- or set-based label selector as `kubectl -l` takes it (`a=b,c!=d,e,!f`,
    /// `g in (x,y)`, `h notin (z)`); `None` selects every object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Kinds to back up (see [`ApiResource::matches_name`]); empty means every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_kinds: Vec<String>,
    /// Kinds never to back up; wins over `include_kinds`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_kinds: Vec<String>,
}

impl ResourceSelector {
    /// Every object of `namespaces`.
    pub fn namespaces<I, S>(namespaces: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            namespaces: namespaces.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The same selector with a label selector.
    pub fn with_label_selector(mut self, selector: impl Into<String>) -> Self {
        self.label_selector = Some(selector.into());
        self
    }

    /// The same selector restricted to `kinds`.
    pub fn with_include_kinds<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.include_kinds = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// The same selector excluding `kinds`.
    pub fn with_exclude_kinds<I, S>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude_kinds = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// The parsed label selector ([`Error::Invalid`] if it does not parse).
    pub fn parsed_label_selector(&self) -> Result<Option<LabelSelector>> {
        match self.label_selector.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(s) => LabelSelector::parse(s).map(Some),
        }
    }

    /// Whether objects of `resource` are selected by the include and exclude lists.
    pub fn selects_resource(&self, resource: &ApiResource) -> bool {
        let included =
            self.include_kinds.is_empty() || self.include_kinds.iter().any(|k| resource.matches_name(k));
        included && !self.excludes_resource(resource)
    }

    /// Whether `resource` is named in the exclude list.
    pub fn excludes_resource(&self, resource: &ApiResource) -> bool {
        self.exclude_kinds.iter().any(|k| resource.matches_name(k))
    }
}

/// One page of a [`ResourceSource::list`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourcePage {
    /// The objects, at most the `limit` asked for.
    pub items: Vec<ResourceObject>,
    /// Pass to the next `list` call to continue; `None` on the last page.
    pub continue_token: Option<String>,
}

/// Where a backup reads objects from: a cluster's discovery, paged list and get.
///
/// Semantics every implementation follows (checked by [`conformance`]):
/// - `api_resources` reports one entry per group and kind, in the preferred version, without
///   subresources;
/// - `list` returns at most `limit` objects and a continue token while more may follow; the pages
///   of one listing together hold every matching object exactly once; `namespace: None` lists a
///   namespaced resource across all namespaces; a label selector filters like the API server's;
/// - `get` of a missing object is `Ok(None)`.
#[async_trait]
pub trait ResourceSource: Send + Sync {
    /// The resource types the cluster serves.
    async fn api_resources(&self) -> Result<Vec<ApiResource>>;

    /// One page of at most `limit` objects (`0`: no limit) of `resource`, in `namespace` (or all
    /// namespaces), matching `label_selector`, continuing after `continue_token`.
    async fn list(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: Option<&str>,
        continue_token: Option<&str>,
        limit: u32,
    ) -> Result<ResourcePage>;

    /// One object, or `None` if it does not exist.
    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<ResourceObject>>;
}

/// Where a restore writes objects to: a cluster's discovery, get, create and delete.
///
/// Semantics every implementation follows (checked by [`conformance`]):
/// - `create` of an existing object is [`Error::AlreadyExists`]; in a namespace that does not exist
///   it is [`Error::NotFound`]; an object the cluster rejects is [`Error::Invalid`] (or the error
///   the cluster's answer maps to); on success it returns the object as stored (with its uid);
/// - `delete` returns once the object is gone (so that a create of the same name can follow); of a
///   missing object it is [`Error::NotFound`];
/// - `get` (from [`ResourceSource`]) of a missing object is `Ok(None)`.
#[async_trait]
pub trait ResourceSink: ResourceSource {
    /// Creates `object` (a `resource`; its namespace and name are its own).
    async fn create(&self, resource: &ApiResource, object: &ResourceObject) -> Result<ResourceObject>;

    /// Deletes an object and waits until it is gone.
    async fn delete(&self, resource: &ApiResource, namespace: Option<&str>, name: &str) -> Result<()>;
}
