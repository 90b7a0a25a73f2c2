//! Leases that keep GC from sweeping while backups run.
//!
//! A running backup holds `pxb/locks/backup-<id>`; a sweeping GC holds `pxb/locks/gc`. Each lock
//! carries a heartbeat (Unix seconds, in its metadata) refreshed every [`HEARTBEAT`]; a lock whose
//! heartbeat is older than [`LEASE`] is stale and ignored. Each side writes its own lock *first*
//! and then looks for the other's, so of a backup and a GC starting together at least one sees the
//! other: GC then defers its sweep, and a backup waits for a sweep to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::TryStreamExt;

use super::{BackupId, Repository, layout};
use crate::store::list_all;
use crate::{Error, Metadata, ObjectPath, PutOptions, Result};

/// How long a lock stays valid without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(120);
/// How often a holder refreshes its lock.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// How long a backup waits for a running GC sweep before giving up.
pub const GC_WAIT: Duration = Duration::from_secs(15 * 60);

const GC_LOCK: &str = "gc";
const HEARTBEAT_KEY: &str = "heartbeat";

fn lock_path(name: &str) -> Result<ObjectPath> {
    ObjectPath::parse(format!("{}{name}", layout::LOCKS))
}

fn heartbeat_md(repo: &Repository) -> Metadata {
    [(HEARTBEAT_KEY.to_string(), repo.now_secs().to_string())].into()
}

/// Whether a lock with this metadata is still held, by `repo`'s clock.
fn is_fresh(repo: &Repository, md: &Metadata) -> bool {
    let beat = md
        .get(HEARTBEAT_KEY)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    repo.now_secs().saturating_sub(beat) < LEASE.as_secs()
}

/// A held lock with a heartbeat task.
#[derive(Debug)]
struct Held {
    repo: Repository,
    path: ObjectPath,
    beat: tokio::task::JoinHandle<()>,
    started: Instant,
    last_ok_ms: Arc<AtomicU64>,
}

impl Held {
    fn start(repo: &Repository, path: ObjectPath) -> Self {
        let last_ok_ms = Arc::new(AtomicU64::new(0));
        let (r, p, ok) = (repo.clone(), path.clone(), last_ok_ms.clone());
        let started = Instant::now();
        let beat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let opts = PutOptions::default().with_metadata(heartbeat_md(&r));
                match r.store().put(&p, bytes::Bytes::new(), opts).await {
                    Ok(_) => ok.store(started.elapsed().as_millis() as u64, Ordering::Relaxed),
                    Err(e) => tracing::warn!(lock = %p, error = %e, "could not refresh a lock"),
                }
            }
        });
        Self {
            repo: repo.clone(),
            path,
            beat,
            started,
            last_ok_ms,
        }
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

/// The lease of a running backup.
#[derive(Debug)]
pub struct BackupLock(Held);

impl BackupLock {
    /// Takes the lease for backup `id`, waiting (up to [`GC_WAIT`]) while a GC sweeps.
    pub async fn acquire(repo: &Repository, id: &BackupId) -> Result<Self> {
        let path = lock_path(&format!("backup-{id}"))?;
        repo.store()
            .put(
                &path,
                bytes::Bytes::new(),
                PutOptions::create().with_metadata(heartbeat_md(repo)),
            )
            .await?;
        let held = Held::start(repo, path);
        let waited = Instant::now();
        loop {
            match repo.store().head(&lock_path(GC_LOCK)?).await {
                Ok(m) if is_fresh(repo, &m.metadata) => {
                    if waited.elapsed() > GC_WAIT {
                        held.release().await;
                        return Err(Error::unavailable(
                            "a GC has been sweeping this location for too long; retry later",
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(_) | Err(Error::NotFound { .. }) => return Ok(Self(held)),
                Err(e) => {
                    held.release().await;
                    return Err(e);
                }
            }
        }
    }

    /// Fails if the lease may have expired (the backup must then not commit).
    pub fn check(&self) -> Result<()> {
        self.0.check()
    }

    /// Gives the lease back.
    pub async fn release(self) {
        self.0.release().await;
    }
}

/// The exclusive lease of a GC sweep.
#[derive(Debug)]
pub struct GcLock(Held);

impl GcLock {
    /// Takes the GC lease; [`Error::AlreadyExists`] if another GC holds a fresh one.
    pub async fn acquire(repo: &Repository) -> Result<Self> {
        let path = lock_path(GC_LOCK)?;
        let md = heartbeat_md(repo);
        match repo
            .store()
            .put(
                &path,
                bytes::Bytes::new(),
                PutOptions::create().with_metadata(md.clone()),
            )
            .await
        {
            Ok(_) => {}
            Err(Error::AlreadyExists { .. }) => {
                let m = repo.store().head(&path).await?;
                if is_fresh(repo, &m.metadata) {
                    return Err(Error::already_exists("another GC is running on this location"));
                }
                // A stale lock of a GC that died: take it over.
                repo.store()
                    .put(
                        &path,
                        bytes::Bytes::new(),
                        PutOptions::default().with_metadata(md),
                    )
                    .await?;
            }
            Err(e) => return Err(e),
        }
        Ok(Self(Held::start(repo, path)))
    }

    /// Fails if the lease may have expired.
    pub fn check(&self) -> Result<()> {
        self.0.check()
    }

    /// Gives the lease back.
    pub async fn release(self) {
        self.0.release().await;
    }
}

/// Backups holding a fresh lease.
pub async fn running_backups(repo: &Repository) -> Result<Vec<String>> {
    let prefix = format!("{}backup-", layout::LOCKS);
    let locks: Vec<crate::ObjectMeta> = list_all(repo.store(), &prefix).try_collect().await?;
    Ok(locks
        .into_iter()
        .filter(|m| is_fresh(repo, &m.metadata))
        .map(|m| m.path.as_str().trim_start_matches(&prefix).to_owned())
        .collect())
}
