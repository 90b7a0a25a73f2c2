//! Resource backups as first-class backups of a repository: the archive goes under the backup's
//! prefix and a manifest of kind `resources` commits it, so sync, verify, delete and GC treat it
//! like any other backup.

use futures::StreamExt;

use super::{BackupId, BackupKind, BackupStats, BackupStatus, FORMAT, Manifest, ManifestObject, Repository};
use crate::resources::{
    ResourceBackupStats, ResourceSelector, ResourceSink, ResourceSource, RestoreOptions, RestoreReport,
    backup_resources, restore_resources,
};
use crate::{Error, Result};

/// The name of a resource backup's archive under its prefix.
pub const RESOURCES_OBJECT: &str = "resources";

/// Settings of a resource backup.
#[derive(Debug, Clone, Default)]
pub struct ResourceBackupOptions {
    /// What to back up.
    pub selector: ResourceSelector,
    /// The cluster it comes from.
    pub cluster: Option<String>,
    /// A tag.
    pub tag: Option<String>,
    /// The volume backups taken with it (recorded in the manifest).
    pub volumes: Vec<super::VolumeRef>,
}

/// Backs up the selected resources of `source` and commits the backup. Returns the manifest and
/// the archive's statistics.
pub async fn backup_namespace_resources(
    repo: &Repository,
    source: &dyn ResourceSource,
    opts: &ResourceBackupOptions,
) -> Result<(Manifest, ResourceBackupStats)> {
    repo.open_or_init().await?;
    let created = repo.now_secs();
    let id = BackupId::new(repo.clock().now());
    let path = id.object_path(RESOURCES_OBJECT)?;
    let stats = backup_resources(source, &opts.selector, repo.store(), &path).await?;
    // The manifest records the archive's hash so deep verify can check it.
    let got = repo.store().get(&path).await?;
    let size = got.meta.size;
    let mut hasher = blake3::Hasher::new();
    let mut body = got.body;
    while let Some(chunk) = body.next().await {
        hasher.update(&chunk?);
    }
    let manifest = Manifest {
        format: FORMAT,
        id,
        kind: BackupKind::Resources,
        created,
        completed: repo.now_secs(),
        status: if stats.missing_dependencies.is_empty() {
            BackupStatus::Completed
        } else {
            BackupStatus::PartiallyFailed
        },
        cluster: opts.cluster.clone(),
        namespaces: stats.namespaces.clone(),
        tag: opts.tag.clone(),
        source: None,
        parent: None,
        objects: vec![ManifestObject {
            name: RESOURCES_OBJECT.into(),
            size,
            blake3: hasher.finalize().to_hex().to_string(),
        }],
        stats: BackupStats {
            objects: stats.objects,
            bytes: stats.raw_bytes,
            stored_bytes: size,
            ..BackupStats::default()
        },
        warnings: stats
            .missing_dependencies
            .iter()
            .take(100)
            .map(|d| format!("dependency not found: {d}"))
            .collect(),
        volumes: opts.volumes.clone(),
    };
    repo.commit(&manifest).await?;
    Ok((manifest, stats))
}

/// Restores a resource backup into `sink`.
pub async fn restore_namespace_resources(
    repo: &Repository,
    id: &BackupId,
    sink: &dyn ResourceSink,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let manifest = repo.manifest(id).await?;
    if manifest.kind != BackupKind::Resources {
        return Err(Error::invalid(format!("backup {id} is not a resource backup")));
    }
    restore_resources(repo.store(), &id.object_path(RESOURCES_OBJECT)?, sink, opts).await
}
