//! Resource backups as first-class backups of a repository: the archive goes under the backup's
//! prefix and a manifest of kind `resources` commits it, so sync, verify, delete and GC treat it
//! like any other backup.

use futures::StreamExt;

use super::locks::BackupLock;
use super::{BackupId, BackupKind, BackupStats, BackupStatus, FORMAT, Manifest, ManifestObject, Repository};
use crate::resources::{
    ExpectedArchive, ResourceBackupStats, ResourceSelector, ResourceSink, ResourceSource, RestoreOptions,
    RestoreReport, backup_resources, restore_archive,
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
/// the archive's statistics. Holds a backup lease throughout, like a volume backup, so GC does not
/// take the archive for the object of a backup that never committed.
pub async fn backup_namespace_resources(
    repo: &Repository,
    source: &dyn ResourceSource,
    opts: &ResourceBackupOptions,
) -> Result<(Manifest, ResourceBackupStats)> {
    repo.open_or_init().await?;
    let created = repo.now_secs();
    let id = BackupId::new(repo.clock().now());
    let lock = BackupLock::acquire(repo, &id).await?;
    let result = run_backup(repo, source, opts, created, id, &lock).await;
    // Give the lease back whether or not the backup committed, so GC is not held up.
    lock.release().await;
    result
}

async fn run_backup(
    repo: &Repository,
    source: &dyn ResourceSource,
    opts: &ResourceBackupOptions,
    created: u64,
    id: BackupId,
    lock: &BackupLock,
) -> Result<(Manifest, ResourceBackupStats)> {
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
    lock.commit(&manifest, &[]).await?;
    Ok((manifest, stats))
}

/// Restores a resource backup into `sink`.
///
/// The archive is checked against the size and BLAKE3 hash its manifest records before anything
/// is created: an archive changed or damaged since the backup is [`Error::Corrupt`] and restores
/// nothing. Which objects are created is decided as in
/// [`restore_resources`](crate::resources::restore_resources) ([`RestoreOptions::namespaces`],
/// [`RestoreOptions::allow_cluster_kinds`]).
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
    let expected = expected_archive(&manifest)?;
    restore_archive(
        repo.store(),
        &id.object_path(RESOURCES_OBJECT)?,
        sink,
        opts,
        Some(&expected),
    )
    .await
}

/// Checks that the resource archive of `manifest` (a resource backup's) is the one the manifest
/// records, size and BLAKE3 hash, without restoring anything: [`Error::Corrupt`] if it was changed
/// or damaged since the backup. For callers that act on a backup before its objects are restored
/// (the agent provisions volumes first); [`restore_namespace_resources`] checks again itself.
pub async fn check_resource_archive(repo: &Repository, manifest: &Manifest) -> Result<()> {
    let expected = expected_archive(manifest)?;
    let path = manifest.id.object_path(RESOURCES_OBJECT)?;
    let got = repo
        .store()
        .get(&path)
        .await
        .map_err(|e| e.context("reading the resource archive"))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    let mut body = got.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.context(format!("reading the resource archive {path}")))?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let hash = hasher.finalize().to_hex().to_string();
    if size != expected.size || hash != expected.blake3 {
        return Err(Error::corrupt(format!(
            "{path}: the resource archive does not match its manifest ({size} bytes, BLAKE3 {hash}; \
             the manifest records {} bytes, BLAKE3 {}): it was changed or damaged after the backup",
            expected.size, expected.blake3
        )));
    }
    Ok(())
}

/// What the manifest records of its resource archive.
fn expected_archive(manifest: &Manifest) -> Result<ExpectedArchive> {
    let recorded = manifest
        .objects
        .iter()
        .find(|o| o.name == RESOURCES_OBJECT)
        .ok_or_else(|| {
            Error::corrupt(format!(
                "the manifest of backup {} lists no {RESOURCES_OBJECT} archive; nothing was restored",
                manifest.id
            ))
        })?;
    Ok(ExpectedArchive {
        size: recorded.size,
        blake3: recorded.blake3.to_ascii_lowercase(),
    })
}
