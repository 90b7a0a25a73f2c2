//! Leases that keep GC from sweeping while backups run, and the commit check that makes a backup
//! safe even when its lease lapsed.
//!
//! A running backup holds `pxb/locks/backup-<id>`; a GC holds `pxb/locks/gc`. Each holder rewrites
//! its lock every [`HEARTBEAT`]. Freshness is measured in the *store's* time: a lock is fresh while
//! the store's current time minus the lock's `last_modified` is below [`LEASE`], where the store's
//! current time is the `last_modified` of an object the caller has just written. No machine's
//! clock enters a comparison, so skewed clocks cannot make a lease look stale.
//!
//! Each side writes its own lock *first* and then looks for the other's, so of a backup and a GC
//! starting together at least one sees the other: GC then defers its sweep, and a backup waits for
//! a sweep to finish. A GC that sweeps first writes the sweep marker `pxb/locks/sweep` (its store
//! time tells when the sweep began).
//!
//! A lease can still lapse (heartbeats failing or the process stalled) and come back. A holder
//! notices: two heartbeats further apart in store time than a lease mean others may have seen the
//! lease stale in between. [`BackupLock::commit`] renews the lease right before writing the
//! manifest; if the lease lapsed, or a sweep began since the backup started, it first waits for
//! any running sweep and checks that every object the backup references still exists, and commits
//! only if so. After the manifest's put it checks that the manifest landed within a lease of that
//! renewal (otherwise a sweep may have missed it: the backup checks again and withdraws the
//! manifest if anything is gone). GC, for its part, stops deleting once its own lease may have
//! lapsed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{StreamExt, TryStreamExt};

use super::chunk::ChunkId;
use super::{BackupId, Manifest, Repository, layout};
use crate::store::list_all;
use crate::{Error, Metadata, ObjectPath, PutOptions, Result};

/// How long a lock stays valid without a heartbeat, in the store's time.
pub const LEASE: Duration = Duration::from_secs(120);
/// How often a holder refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long a backup waits for a running GC sweep before giving up.
pub const GC_WAIT: Duration = Duration::from_secs(15 * 60);
/// A commit check heads at most this many chunks one by one; above it, it lists `pxb/chunks/`.
pub const HEAD_LIMIT: usize = 2000;

const GC_LOCK: &str = "gc";
const SWEEP_MARKER: &str = "sweep";
const CLOCK_PROBE: &str = "clock";
const HEARTBEAT_KEY: &str = "heartbeat";
const SWEEP_KEY: &str = "sweep";
/// Rounds of "check, then commit" before a backup gives up on a location where sweeps keep
/// starting.
const COMMIT_ROUNDS: usize = 3;

fn lock_path(name: &str) -> Result<ObjectPath> {
    ObjectPath::parse(format!("{}{name}", layout::LOCKS))
}

/// The holder's own clock, for people reading the lock; freshness never uses it.
fn heartbeat_md(repo: &Repository) -> Metadata {
    [(HEARTBEAT_KEY.to_string(), repo.now_secs().to_string())].into()
}

/// Whether a lock last written at `written` (store time) is still held at store time `now`.
fn is_fresh(now: SystemTime, written: SystemTime) -> bool {
    now.duration_since(written).map_or(true, |age| age < LEASE)
}

/// Writes an empty object and returns the time the store gave the write.
async fn stamp(repo: &Repository, path: &ObjectPath, opts: PutOptions) -> Result<SystemTime> {
    repo.store().put(path, bytes::Bytes::new(), opts).await?;
    Ok(repo.store().head(path).await?.last_modified)
}

/// The store's current time: the `last_modified` it gives a probe write (`pxb/locks/clock`).
pub async fn store_now(repo: &Repository) -> Result<SystemTime> {
    stamp(repo, &lock_path(CLOCK_PROBE)?, PutOptions::default()).await
}

/// Store times of a holder's successful heartbeats.
#[derive(Debug, Default)]
struct Beats {
    last: Option<SystemTime>,
    lapses: u64,
}

impl Beats {
    fn record(&mut self, at: SystemTime) {
        if let Some(last) = self.last
            && at.duration_since(last).is_ok_and(|gap| gap >= LEASE)
        {
            self.lapses += 1;
        }
        self.last = Some(self.last.map_or(at, |l| l.max(at)));
    }
}

/// A held lock with a heartbeat task.
#[derive(Debug)]
struct Held {
    repo: Repository,
    path: ObjectPath,
    beat: tokio::task::JoinHandle<()>,
    started: Instant,
    last_ok_ms: Arc<AtomicU64>,
    beats: Arc<Mutex<Beats>>,
}

async fn beat(
    repo: &Repository,
    path: &ObjectPath,
    beats: &Mutex<Beats>,
    started: Instant,
    last_ok_ms: &AtomicU64,
) -> Result<SystemTime> {
    let at = stamp(
        repo,
        path,
        PutOptions::default().with_metadata(heartbeat_md(repo)),
    )
    .await?;
    beats.lock().unwrap_or_else(|e| e.into_inner()).record(at);
    last_ok_ms.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    Ok(at)
}

impl Held {
    /// Starts heartbeats of a lock the store wrote at `at`.
    fn start(repo: &Repository, path: ObjectPath, at: SystemTime) -> Self {
        let last_ok_ms = Arc::new(AtomicU64::new(0));
        let beats = Arc::new(Mutex::new(Beats::default()));
        beats.lock().unwrap_or_else(|e| e.into_inner()).record(at);
        let (r, p, ok, b) = (repo.clone(), path.clone(), last_ok_ms.clone(), beats.clone());
        let started = Instant::now();
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = beat(&r, &p, &b, started, &ok).await {
                    tracing::warn!(lock = %p, error = %e, "could not refresh a lock");
                }
            }
        });
        Self {
            repo: repo.clone(),
            path,
            beat,
            started,
            last_ok_ms,
            beats,
        }
    }

    /// Refreshes the lock now; returns the store's time of the refresh.
    async fn renew(&self) -> Result<SystemTime> {
        beat(
            &self.repo,
            &self.path,
            &self.beats,
            self.started,
            &self.last_ok_ms,
        )
        .await
    }

    /// How many times others may have seen the lock stale since it was taken.
    fn lapses(&self) -> u64 {
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).lapses
    }

    /// Fails once the lock may have gone stale for others (heartbeats failing for a lease).
    fn check(&self) -> Result<()> {
        let since = self
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ok_ms.load(Ordering::Relaxed)));
        if since > LEASE - HEARTBEAT {
            return Err(Error::unavailable(format!(
                "lost the lease {} (no heartbeat for {} s); stopping so GC cannot race this operation",
                self.path,
                since.as_secs()
            )));
        }
        Ok(())
    }

    async fn release(self) {
        self.beat.abort();
        if let Err(e) = self.repo.store().delete(&self.path).await {
            tracing::warn!(lock = %self.path, error = %e, "could not remove a lock; it expires by itself");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

/// Waits (up to [`GC_WAIT`]) while a GC holds a fresh lock, renewing `held` meanwhile. `now` is
/// the store's time of `held`'s latest write.
async fn wait_for_gc(repo: &Repository, held: &Held, mut now: SystemTime) -> Result<()> {
    let waited = Instant::now();
    loop {
        match repo.store().head(&lock_path(GC_LOCK)?).await {
            Ok(m) if is_fresh(now, m.last_modified) => {
                if waited.elapsed() > GC_WAIT {
                    return Err(Error::unavailable(
                        "a GC has been sweeping this location for too long; retry later",
                    ));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                now = held.renew().await?;
            }
            Ok(_) | Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The sweep marker as last written: its store time and the sweep's random id.
async fn sweep_marker(repo: &Repository) -> Result<Option<(SystemTime, String)>> {
    match repo.store().head(&lock_path(SWEEP_MARKER)?).await {
        Ok(m) => Ok(Some((
            m.last_modified,
            m.metadata.get(SWEEP_KEY).cloned().unwrap_or_default(),
        ))),
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The objects of `manifest` and the `chunks` (sorted, distinct) that are not in the location.
async fn missing_objects(repo: &Repository, manifest: &Manifest, chunks: &[ChunkId]) -> Result<Vec<String>> {
    let mut missing = Vec::new();
    for obj in &manifest.objects {
        let path = manifest.id.object_path(&obj.name)?;
        match repo.store().head(&path).await {
            Ok(m) if m.size == obj.size => {}
            Ok(_) | Err(Error::NotFound { .. }) => missing.push(path.to_string()),
            Err(e) => return Err(e),
        }
    }
    if chunks.len() <= HEAD_LIMIT {
        // Owned items and an owned store handle: the futures borrow nothing.
        let store = repo.store_arc();
        let heads: Vec<Result<Option<String>>> =
            futures::stream::iter(chunks.iter().map(ChunkId::path).collect::<Vec<_>>())
                .map(move |path| {
                    let store = store.clone();
                    async move {
                        match store.head(&path).await {
                            Ok(_) => Ok(None),
                            Err(Error::NotFound { .. }) => Ok(Some(path.to_string())),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffer_unordered(16)
                .collect()
                .await;
        for h in heads {
            missing.extend(h?);
        }
    } else {
        let mut found = vec![false; chunks.len()];
        let mut listing = list_all(repo.store(), layout::CHUNKS);
        while let Some(m) = listing.try_next().await? {
            if let Some(i) = ChunkId::from_path(m.path.as_str()).and_then(|id| chunks.binary_search(&id).ok())
            {
                found[i] = true;
            }
        }
        missing.extend(
            chunks
                .iter()
                .zip(found)
                .filter(|(_, f)| !f)
                .map(|(c, _)| c.path().to_string()),
        );
    }
    Ok(missing)
}

/// The lease of a running backup.
#[derive(Debug)]
pub struct BackupLock {
    held: Held,
    /// Store time at which the lease was taken: the backup relies on nothing older.
    started: SystemTime,
}

impl BackupLock {
    /// Takes the lease for backup `id`, waiting (up to [`GC_WAIT`]) while a GC sweeps.
    pub async fn acquire(repo: &Repository, id: &BackupId) -> Result<Self> {
        let path = lock_path(&format!("backup-{id}"))?;
        let at = stamp(
            repo,
            &path,
            PutOptions::create().with_metadata(heartbeat_md(repo)),
        )
        .await?;
        let held = Held::start(repo, path, at);
        match wait_for_gc(repo, &held, at).await {
            Ok(()) => Ok(Self { held, started: at }),
            Err(e) => {
                held.release().await;
                Err(e)
            }
        }
    }

    /// Fails if the lease may have expired (the backup should stop early).
    pub fn check(&self) -> Result<()> {
        self.held.check()
    }

    /// Commits `manifest` safely: renews the lease and, if it lapsed or a GC sweep began since the
    /// backup started, waits for the sweep and checks that the manifest's objects and `chunks` (the
    /// chunks it references, sorted and distinct) still exist before writing the manifest. Fails
    /// with [`Error::Unavailable`], committing nothing, if any is gone; the backup can be retried.
    ///
    /// Cost besides the manifest's put: one put and three heads (renewal, sweep marker, the
    /// manifest afterwards) when the lease never lapsed and no sweep overlapped the backup;
    /// otherwise also one head per chunk (one listing of `pxb/chunks/` above [`HEAD_LIMIT`]
    /// chunks) per round.
    pub async fn commit(&self, manifest: &Manifest, chunks: &[ChunkId]) -> Result<()> {
        let repo = &self.held.repo;
        // What the last check accounted for: lapses counted, and the sweep marker seen.
        let mut checked: Option<(u64, Option<(SystemTime, String)>)> = None;
        for _ in 0..COMMIT_ROUNDS {
            let now = self.held.renew().await?;
            let lapses = self.held.lapses();
            let marker = sweep_marker(repo).await?;
            let unsafe_since_check = match &checked {
                None => lapses > 0 || marker.as_ref().is_some_and(|(at, _)| *at >= self.started),
                Some((seen_lapses, seen_marker)) => lapses > *seen_lapses || marker != *seen_marker,
            };
            if !unsafe_since_check {
                self.held.check()?;
                repo.commit(manifest).await?;
                return self.after_commit(manifest, chunks, now).await;
            }
            tracing::info!(backup = %manifest.id, lapses, "a GC may have swept during this backup; checking what it references");
            wait_for_gc(repo, &self.held, now).await?;
            self.held.renew().await?;
            checked = Some((self.held.lapses(), sweep_marker(repo).await?));
            let missing = missing_objects(repo, manifest, chunks).await?;
            if !missing.is_empty() {
                return Err(gone(&manifest.id, &missing, "nothing was committed"));
            }
        }
        Err(Error::unavailable(format!(
            "GC sweeps kept starting while backup {} was committing; nothing was committed, run the backup again",
            manifest.id
        )))
    }

    /// A manifest that landed a lease or more (store time) after the renewal before it may have
    /// been missed by a GC that found the lease stale: check again, and withdraw it if anything
    /// it references is gone.
    async fn after_commit(&self, manifest: &Manifest, chunks: &[ChunkId], renewed: SystemTime) -> Result<()> {
        let repo = &self.held.repo;
        let path = manifest.id.manifest_path();
        let landed = match repo.store().head(&path).await {
            Ok(m) => m.last_modified,
            // Folded into a pack already (format 2), so it landed long ago: check it as late.
            Err(Error::NotFound { .. }) => store_now(repo).await?,
            Err(e) => return Err(e),
        };
        if landed.duration_since(renewed).map_or(true, |gap| gap < LEASE) {
            return Ok(());
        }
        tracing::warn!(backup = %manifest.id, "the manifest landed after the lease could lapse; checking what it references");
        let checked = match wait_for_gc(repo, &self.held, landed).await {
            Ok(()) => missing_objects(repo, manifest, chunks).await,
            Err(e) => Err(e),
        };
        let err = match checked {
            Ok(missing) if missing.is_empty() => return Ok(()),
            Ok(missing) => gone(&manifest.id, &missing, "its manifest was withdrawn"),
            // Unsure whether the backup is whole: withdraw it rather than leave it.
            Err(e) => e.context(format!(
                "checking backup {} after its commit; its manifest was withdrawn",
                manifest.id
            )),
        };
        repo.withdraw(&manifest.id).await?;
        Err(err)
    }

    /// Gives the lease back.
    pub async fn release(self) {
        self.held.release().await;
    }
}

fn gone(id: &BackupId, missing: &[String], outcome: &str) -> Error {
    Error::unavailable(format!(
        "a GC removed {} object(s) backup {id} references while its lease had lapsed (first: {}); {outcome}, run the backup again",
        missing.len(),
        missing.first().map_or("", String::as_str)
    ))
}

/// The exclusive lease of a GC.
#[derive(Debug)]
pub struct GcLock {
    held: Held,
    started: SystemTime,
}

impl GcLock {
    /// Takes the GC lease; [`Error::AlreadyExists`] if another GC holds a fresh one.
    pub async fn acquire(repo: &Repository) -> Result<Self> {
        let path = lock_path(GC_LOCK)?;
        let md = heartbeat_md(repo);
        let at = match stamp(repo, &path, PutOptions::create().with_metadata(md.clone())).await {
            Ok(at) => at,
            Err(Error::AlreadyExists { .. }) => {
                let m = repo.store().head(&path).await?;
                if is_fresh(store_now(repo).await?, m.last_modified) {
                    return Err(Error::already_exists("another GC is running on this location"));
                }
                // A stale lock of a GC that died: take it over.
                stamp(repo, &path, PutOptions::default().with_metadata(md)).await?
            }
            Err(e) => return Err(e),
        };
        Ok(Self {
            held: Held::start(repo, path, at),
            started: at,
        })
    }

    /// The store's time when this GC took its lease: its "now" for leases and the grace period.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Announces a sweep (writes the sweep marker), before deleting anything.
    pub async fn begin_sweep(&self) -> Result<()> {
        let mut md = heartbeat_md(&self.held.repo);
        md.insert(SWEEP_KEY.into(), format!("{:016x}", rand::random::<u64>()));
        self.held
            .repo
            .store()
            .put(
                &lock_path(SWEEP_MARKER)?,
                bytes::Bytes::new(),
                PutOptions::default().with_metadata(md),
            )
            .await?;
        Ok(())
    }

    /// Fails if the lease may have expired or lapsed at any time: a backup may then have started
    /// believing no GC runs, so GC must not delete anything more.
    pub fn check(&self) -> Result<()> {
        self.held.check()?;
        if self.held.lapses() > 0 {
            return Err(Error::unavailable(format!(
                "the GC lease {} lapsed; stopping before deleting more",
                self.held.path
            )));
        }
        Ok(())
    }

    /// Gives the lease back.
    pub async fn release(self) {
        self.held.release().await;
    }
}

/// Backups holding a fresh lease at store time `now`.
pub async fn running_backups(repo: &Repository, now: SystemTime) -> Result<Vec<String>> {
    let prefix = format!("{}backup-", layout::LOCKS);
    let locks: Vec<crate::ObjectMeta> = list_all(repo.store(), &prefix).try_collect().await?;
    Ok(locks
        .into_iter()
        .filter(|m| is_fresh(now, m.last_modified))
        .map(|m| m.path.as_str().trim_start_matches(&prefix).to_owned())
        .collect())
}
