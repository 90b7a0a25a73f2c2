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

use async_trait::async_trait;

use crate::Result;

mod archive;
mod backup;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(test)]
mod isolation_tests;
mod memory;
mod object;
mod restore;
mod selector;
mod strip;
#[cfg(test)]
mod tests;

pub use archive::ARCHIVE_FORMAT;
pub use backup::{ResourceBackupStats, backup_resources};
pub use memory::{InMemoryCluster, well_known_api_resources};
pub use object::{ApiResource, ObjectRef, OwnerReference, ResourceObject};
pub use restore::{
    ExistingResourcePolicy, RestoreOptions, RestoreOutcome, RestoreReport, RestoreTier, RestoredObject,
    restore_resources,
};
pub(crate) use restore::{ExpectedArchive, restore_archive};
pub use selector::{LabelSelector, ResourceSelector};
pub use strip::{SkipReason, strip_server_fields};

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
