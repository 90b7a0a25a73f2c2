//! Mark-and-sweep garbage collection of chunks no committed backup references.
//!
//! Mark reads every committed backup's file index into a sorted vector of 16-byte chunk-id
//! prefixes (memory grows with the number of chunks, not bytes; a prefix collision can only keep
//! garbage, never delete a live chunk). Sweep lists the chunks and deletes the unreferenced ones
//! older than the grace period, plus the objects of backups that never committed. GC holds the
//! exclusive GC lease; if backups hold leases it defers the sweep (see [`super::locks`]), and a
//! backup starting during a sweep waits for it. Ages and leases are measured in the store's time
//! (the `last_modified` of GC's own lock), never against this machine's clock. A sweep writes the
//! sweep marker first, and a backup whose lease lapsed or that overlapped a sweep re-checks what it
//! references before committing ([`super::locks::BackupLock::commit`]), so no committed backup can
//! lose a chunk. After the sweep, GC compacts the location under the same lease
//! ([`super::packs`]).

use std::time::{Duration, SystemTime};

use futures::stream::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::chunk::ChunkId;
use super::locks::{self, GcLock};
use super::packs::{self, CompactOptions, CompactReport};
use super::volume;
use super::{BackupKind, Repository, layout};
use crate::store::list_all;
use crate::{Error, ObjectPath, Result};

/// Settings of a GC run.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced objects younger than this, in the store's time, are kept (they may belong to a
    /// backup in flight).
    pub grace: Duration,
    /// Report what would be deleted without deleting.
    pub dry_run: bool,
    /// Deletes in flight at once.
    pub concurrency: usize,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(3600),
            dry_run: false,
            concurrency: 16,
        }
    }
}

/// What a GC run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Committed backups marked.
    pub backups: u64,
    /// Distinct chunks they reference.
    pub referenced_chunks: u64,
    /// Chunks found in the location.
    pub chunks_seen: u64,
    /// Unreferenced chunks deleted (or, in a dry run, that would be).
    pub deleted_chunks: u64,
    /// Stored bytes of those chunks.
    pub deleted_bytes: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub kept_in_grace: u64,
    /// Objects of backups that never committed, deleted.
    pub deleted_orphans: u64,
    /// Why nothing was swept, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferred: Option<String>,
    /// The compaction run after the sweep, or after it was deferred (format 2, not in a dry run;
    /// see [`super::packs`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction: Option<CompactReport>,
    /// Why that compaction failed, if it did (the GC itself succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compaction_error: Option<String>,
}

/// Runs one GC pass over the repository.
pub async fn gc(repo: &Repository, opts: &GcOptions) -> Result<GcReport> {
    let lock = GcLock::acquire(repo).await?;
    let mut result = run(repo, opts, &lock).await;
    if let Ok(report) = &mut result
        && !opts.dry_run
    {
        match packs::compact_held(repo, &CompactOptions::default(), &lock).await {
            Ok(c) => report.compaction = Some(c),
            Err(e) => report.compaction_error = Some(e.to_string()),
        }
    }
    lock.release().await;
    result
}

async fn run(repo: &Repository, opts: &GcOptions, lock: &GcLock) -> Result<GcReport> {
    let mut report = GcReport::default();
    // "Now" is the store's time of this GC's lock, so other machines' clocks do not matter.
    let now = lock.started();
    let running = locks::running_backups(repo, now).await?;
    if !running.is_empty() {
        report.deferred = Some(format!(
            "{} backup(s) running ({}); nothing was deleted, run GC again later",
            running.len(),
            running.join(", ")
        ));
        return Ok(report);
    }
    if !opts.dry_run {
        // Backups that started before this point and commit after it re-check their chunks.
        lock.begin_sweep().await?;
    }

    // Mark.
    let mut state = super::SyncState::default();
    let delta = repo.sync(&mut state).await?;
    if !delta.unreadable.is_empty() {
        let names: Vec<String> = delta
            .unreadable
            .iter()
            .take(10)
            .map(|(p, why)| format!("{p} ({why})"))
            .collect();
        return Err(Error::corrupt(format!(
            "GC stopped before deleting anything: {} manifest(s) cannot be read, so what they reference is unknown: {}; \
             repair them or remove them with `pxb backup delete`",
            delta.unreadable.len(),
            names.join(", ")
        )));
    }
    let summaries: Vec<super::Summary> = state.backups.into_values().collect();
    let mut live: Vec<u128> = Vec::new();
    let mut committed = std::collections::HashSet::new();
    for s in &summaries {
        committed.insert(s.id.clone());
        report.backups += 1;
        if s.kind != BackupKind::Volume {
            continue;
        }
        let chunks = volume::referenced_chunks(repo, &s.id).await.map_err(|e| {
            e.context(format!(
                "GC stopped before deleting anything: cannot read what backup {} references",
                s.id
            ))
        })?;
        live.extend(chunks.iter().map(|c| c.prefix()));
        lock.check()?;
    }
    live.sort_unstable();
    live.dedup();
    live.shrink_to_fit();
    report.referenced_chunks = live.len() as u64;

    // Sweep.
    let cutoff = now.checked_sub(opts.grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut doomed = Vec::new();
    let mut chunks = list_all(repo.store(), layout::CHUNKS);
    while let Some(m) = chunks.try_next().await? {
        let Some(id) = ChunkId::from_path(m.path.as_str()) else {
            continue;
        };
        report.chunks_seen += 1;
        if live.binary_search(&id.prefix()).is_ok() {
            continue;
        }
        if m.last_modified > cutoff {
            report.kept_in_grace += 1;
            continue;
        }
        report.deleted_chunks += 1;
        report.deleted_bytes += m.size;
        doomed.push(m.path);
        if doomed.len() >= 1000 {
            delete_all(repo, std::mem::take(&mut doomed), opts, lock).await?;
        }
    }
    drop(chunks);
    delete_all(repo, doomed, opts, lock).await?;

    // Objects of backups that never committed (crashed or aborted), once past the grace period.
    let mut orphans = Vec::new();
    let mut own = list_all(repo.store(), layout::BACKUPS);
    while let Some(m) = own.try_next().await? {
        let rest = m.path.as_str().trim_start_matches(layout::BACKUPS);
        let id = rest
            .split('/')
            .next()
            .and_then(|i| super::BackupId::parse(i).ok());
        if id.is_some_and(|id| !committed.contains(&id)) && m.last_modified <= cutoff {
            orphans.push(m.path);
        }
    }
    drop(own);
    report.deleted_orphans = orphans.len() as u64;
    delete_all(repo, orphans, opts, lock).await?;
    Ok(report)
}

/// Deletes `paths`, checking before each delete that the GC lease never lapsed.
async fn delete_all(
    repo: &Repository,
    paths: Vec<ObjectPath>,
    opts: &GcOptions,
    lock: &GcLock,
) -> Result<()> {
    if opts.dry_run {
        return Ok(());
    }
    futures::stream::iter(paths)
        .map(|p| async move {
            lock.check()?;
            repo.store().delete(&p).await
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
        .map_err(|e: Error| e.context("GC delete"))
}

#[cfg(test)]
#[path = "gc_race_tests.rs"]
mod race_tests;
