//! [`MemoryLocations`]: the in-memory twin of the location seam.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pxb_core::store::InMemory;

use super::{LocationOpener, OpenedLocation, container_of, prefix_of, unknown_provider};
use crate::crd::BackupLocationSpec;

/// Where a location's data is: provider, account, container and prefix (how it is reached,
/// endpoint and authentication, does not matter to the twin).
type Key = (String, String, String, String);

/// Locations held in memory: each location an [`InMemory`] store, created empty when first
/// opened, nothing reached. It refuses what [`AzureFileOpener`](super::AzureFileOpener) refuses
/// for the spec alone, in the same words: an empty container, a provider other than `azure` or
/// `file`. Clones share the same locations; a test reads what the agent wrote through
/// [`store`](Self::store).
#[derive(Debug, Clone, Default)]
pub struct MemoryLocations {
    stores: Arc<Mutex<BTreeMap<Key, InMemory>>>,
}

impl MemoryLocations {
    /// No locations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store `spec` opens (the same one for every spec naming the same provider, account,
    /// container and prefix), created empty if it is new.
    pub fn store(&self, spec: &BackupLocationSpec) -> InMemory {
        let key = (
            spec.provider.clone(),
            spec.account.as_deref().unwrap_or("").trim().to_owned(),
            spec.container.trim().to_owned(),
            prefix_of(spec),
        );
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone()
    }
}

#[async_trait]
impl LocationOpener for MemoryLocations {
    async fn open(&self, spec: &BackupLocationSpec) -> Result<OpenedLocation, String> {
        let container = container_of(spec)?;
        if !matches!(spec.provider.as_str(), "azure" | "file") {
            return Err(unknown_provider(&spec.provider));
        }
        let prefix = prefix_of(spec);
        let display = if prefix.is_empty() {
            format!("memory://{container}")
        } else {
            format!("memory://{container}/{prefix}")
        };
        Ok(OpenedLocation::new(display, Arc::new(self.store(spec))))
    }
}
