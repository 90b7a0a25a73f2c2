//! The "cloud file missing" check: does every object a backup references exist (quick) and hold
//! what it should (deep)?

use std::collections::{BTreeMap, HashMap};

use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use super::chunk::{self, ChunkId};
use super::volume;
use super::{BackupId, BackupKind, Repository, layout};
use crate::store::list_all;
use crate::{Error, Result};

/// The most object names one report lists per category.
pub const MAX_LISTED: usize = 1000;

/// A backup's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    /// Everything referenced is there (and, deep, intact).
    Ok,
    /// Objects are missing.
    Missing,
    /// Objects are damaged (and maybe others missing too).
    Corrupt,
}

/// What verify found for one backup.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The backup.
    pub id: BackupId,
    /// The verdict.
    pub status: VerifyStatus,
    /// Missing objects (at most [`MAX_LISTED`]).
    pub missing: Vec<String>,
    /// How many objects are missing (all of them, also those not listed).
    pub missing_count: u64,
    /// Damaged objects with the reason (at most [`MAX_LISTED`]).
    pub corrupt: Vec<String>,
    /// Objects checked.
    pub checked: u64,
    /// Resource backups: the volume backups taken with it (their reports are their own).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<BackupId>,
}

impl VerifyReport {
    fn new(id: BackupId) -> Self {
        Self {
            id,
            status: VerifyStatus::Ok,
            missing: Vec::new(),
            missing_count: 0,
            corrupt: Vec::new(),
            checked: 0,
            volumes: Vec::new(),
        }
    }

    fn missing(&mut self, what: String) {
        self.missing_count += 1;
        if self.missing.len() < MAX_LISTED {
            self.missing.push(what);
        }
        if self.status == VerifyStatus::Ok {
            self.status = VerifyStatus::Missing;
        }
    }

    fn corrupt(&mut self, what: String) {
        if self.corrupt.len() < MAX_LISTED {
            self.corrupt.push(what);
        }
        self.status = VerifyStatus::Corrupt;
    }

    fn record(&mut self, e: Error) -> Result<()> {
        match e {
            Error::NotFound { message, .. } => self.missing(message),
            Error::Corrupt { message, .. } => self.corrupt(message),
            other => return Err(other),
        }
        Ok(())
    }
}

/// Missing objects per backup id, for the backups that miss any: a resource backup counts its
/// own and those of the volume backups taken with it (a restore of it needs them all); a volume
/// backup counts its own.
pub fn missing_by_backup(reports: &[VerifyReport]) -> BTreeMap<String, u64> {
    let own: HashMap<&BackupId, u64> = reports.iter().map(|r| (&r.id, r.missing_count)).collect();
    reports
        .iter()
        .map(|r| {
            let volumes: u64 = r.volumes.iter().filter_map(|v| own.get(v)).sum();
            (r.id.to_string(), r.missing_count + volumes)
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Checks `ids` (every backup when `None`). Quick: existence (one listing of the chunks); deep:
/// downloads everything and checks hashes. Errors only when the location itself fails.
pub async fn verify(
    repo: &Repository,
    ids: Option<Vec<BackupId>>,
    deep: bool,
    concurrency: usize,
) -> Result<Vec<VerifyReport>> {
    let ids = match ids {
        Some(ids) => ids,
        None => repo.list().await?.into_iter().map(|s| s.id).collect(),
    };
    let existing: Option<Vec<ChunkId>> = if deep {
        None
    } else {
        let mut v: Vec<ChunkId> = list_all(repo.store(), layout::CHUNKS)
            .try_filter_map(|m| async move { Ok(ChunkId::from_path(m.path.as_str())) })
            .try_collect()
            .await?;
        v.sort_unstable();
        Some(v)
    };
    let mut reports = Vec::with_capacity(ids.len());
    for id in ids {
        reports.push(verify_one(repo, id, existing.as_deref(), concurrency.max(1)).await?);
    }
    Ok(reports)
}

async fn verify_one(
    repo: &Repository,
    id: BackupId,
    existing: Option<&[ChunkId]>,
    concurrency: usize,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::new(id.clone());
    let manifest = match repo.manifest(&id).await {
        Ok(m) => m,
        Err(e) => {
            report.record(e)?;
            return Ok(report);
        }
    };
    report.checked += 1;
    report.volumes = manifest.volumes.iter().map(|v| v.backup.clone()).collect();
    for obj in &manifest.objects {
        let path = id.object_path(&obj.name)?;
        report.checked += 1;
        let r = if existing.is_some() {
            match repo.store().head(&path).await {
                Ok(m) if m.size != obj.size => Err(Error::corrupt(format!(
                    "{path}: {} bytes, the manifest says {}",
                    m.size, obj.size
                ))),
                Ok(_) => Ok(()),
                Err(Error::NotFound { .. }) => Err(Error::not_found(path.to_string())),
                Err(e) => Err(e),
            }
        } else {
            super::spool::download(repo.store(), &path, Some(&obj.blake3))
                .await
                .map(|_| ())
        };
        if let Err(e) = r {
            report.record(e)?;
        }
    }
    if manifest.kind != BackupKind::Volume || report.status != VerifyStatus::Ok {
        return Ok(report);
    }
    let chunks = match volume::referenced_chunks(repo, &id).await {
        Ok(c) => c,
        Err(e) => {
            report.record(e)?;
            return Ok(report);
        }
    };
    report.checked += chunks.len() as u64;
    match existing {
        Some(existing) => {
            for c in chunks {
                if existing.binary_search(&c).is_err() {
                    report.missing(c.path().to_string());
                }
            }
        }
        None => {
            let results: Vec<Result<()>> = stream::iter(chunks)
                .map(|c| async move {
                    let path = c.path();
                    let stored = match repo.store().get(&path).await {
                        Ok(g) => g.bytes_at_most(chunk::MAX_STORED_CHUNK).await?,
                        Err(Error::NotFound { .. }) => return Err(Error::not_found(path.to_string())),
                        Err(e) => return Err(e),
                    };
                    let name = path.to_string();
                    tokio::task::spawn_blocking(move || {
                        chunk::decode_bytes(&name, stored, Some(&c)).map(|_| ())
                    })
                    .await
                    .map_err(|e| Error::other("verify task failed").with_source(e))?
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            for r in results {
                if let Err(e) = r {
                    report.record(e)?;
                }
            }
        }
    }
    Ok(report)
}
