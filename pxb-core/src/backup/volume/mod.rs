//! The file-level mover: backs a directory tree up into content-defined chunks and restores it.
//!
//! Backup walks the tree, reuses the chunk lists of files unchanged since the parent backup (same
//! size, mtime and inode) without reading them, splits changed files with FastCDC, hashes (BLAKE3),
//! compresses (zstd) and uploads chunks in parallel with a bounded number in flight, and packs
//! files smaller than the chunker's minimum into shared chunks ("bundles"), so many small files do
//! not become many tiny objects. Small files that look incompressible (random, encrypted or
//! already compressed: [`chunk::looks_incompressible`]) go into bundles of their own, which are
//! stored raw without zstd being tried. The file index (a spooled, compressed JSON-lines object)
//! and the manifest are written last. Restore (in `restore`) verifies every chunk's hash before writing
//! it, and writes nothing outside its target: index paths are relative without `..`, and every
//! path is opened below the target's directory handle without following symlinks.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, FuturesUnordered, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::chunk::{self, ChunkId};
use super::spool::{self, SpoolReader, SpoolWriter};
use super::{
    BackupId, BackupKind, BackupStats, BackupStatus, FORMAT, Manifest, ManifestObject, Repository, Summary,
};
use crate::{Error, PutOptions, Result};

mod restore;

pub use restore::{
    MAX_DIRS_HELD, RestoreStats, VolumeRestoreOptions, max_chunks_held, max_files_held, restore_volume,
};

/// The name of a volume backup's file index under its prefix.
pub const FILES_OBJECT: &str = "files";
const FILES_KIND: &str = "files";
const BUNDLE_TARGET: usize = 4 << 20;
/// Index entries waiting for the open bundle's id at most (they are held in memory).
const BUNDLE_FILES: usize = 16 << 10;
const MAX_WARNINGS: usize = 100;

/// What an index entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// A piece of a file's content: `len` bytes at `offset` of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice(pub ChunkId, pub u32, pub u32);

/// One entry of a volume backup's file index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the backed-up root, `/`-separated; empty for the root itself.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (including setuid, setgid, sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_ns: u32,
    /// Size in bytes (files).
    #[serde(default)]
    pub size: u64,
    /// Inode number at backup time (to detect unchanged files next time).
    #[serde(default)]
    pub ino: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The content, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<Slice>,
}

/// Progress of a long volume operation.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Bytes processed so far.
    pub bytes_done: u64,
    /// Bytes in total. A backup scans the tree while it works: its total is what the scan has
    /// found so far, and grows until the scan is done (usually long before the backup).
    pub bytes_total: u64,
    /// Files processed so far.
    pub files_done: u64,
    /// Files in total (for a backup, found so far, as `bytes_total`).
    pub files_total: u64,
    /// Time since the start.
    pub elapsed: Duration,
}

impl Progress {
    /// Bytes per second so far.
    pub fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.bytes_done as f64 / s } else { 0.0 }
    }

    /// Estimated time left at the current rate.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0)
            .then(|| Duration::from_secs_f64(self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate))
    }
}

/// A progress callback; called often, keep it cheap.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Settings of a volume backup.
#[derive(Clone)]
pub struct VolumeBackupOptions {
    /// The directory to back up.
    pub source: PathBuf,
    /// The backup to be incremental to.
    pub parent: Option<BackupId>,
    /// A tag.
    pub tag: Option<String>,
    /// The cluster the data belongs to.
    pub cluster: Option<String>,
    /// The namespaces the data belongs to.
    pub namespaces: Vec<String>,
    /// Files processed and chunks uploaded at once.
    pub concurrency: usize,
    /// zstd level.
    pub compression_level: i32,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
}

impl VolumeBackupOptions {
    /// Defaults for backing up `source`.
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            parent: None,
            tag: None,
            cluster: None,
            namespaces: Vec::new(),
            concurrency: std::thread::available_parallelism()
                .map(|n| n.get() * 2)
                .unwrap_or(4)
                .max(4),
            compression_level: 3,
            progress: None,
        }
    }
}

impl std::fmt::Debug for VolumeBackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeBackupOptions")
            .field("source", &self.source)
            .field("parent", &self.parent)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

/// What the scan sends, in the scan's order: an entry to back up (with the parent backup's entry
/// of the same path, when it has one), a run of small files to read (new or changed, each under
/// the smallest chunk size), or something it skipped (the warning says why).
// Skipped items are rare; boxing every entry would cost an allocation per file.
#[allow(clippy::large_enum_variant)]
enum Scanned {
    Entry {
        entry: FileEntry,
        abs: PathBuf,
        parent: Option<FileEntry>,
    },
    Small(Vec<(FileEntry, PathBuf)>),
    Skipped(String),
}

/// Items the scan may run ahead of the workers (bounds the memory a huge tree takes: at most
/// this many times [`SMALL_RUN_FILES`] entries).
const SCAN_AHEAD: usize = 1024;

/// Small files read by one task, at most: one hand-off to the blocking pool per run instead of
/// one per file (a first backup of many small files spent a seventh of its CPU time on hand-offs).
const SMALL_RUN_FILES: usize = 32;
/// ... and their bytes, at most.
const SMALL_RUN_BYTES: u64 = 1 << 20;

/// Whether the parent backup's entry still describes the file: same size, mtime and inode.
fn unchanged(parent: &FileEntry, entry: &FileEntry) -> bool {
    parent.size == entry.size
        && parent.mtime == entry.mtime
        && parent.mtime_ns == entry.mtime_ns
        && parent.ino == entry.ino
}

/// The order in which the scan emits entries and file indexes list them: a directory's entries
/// (sorted by name) come when the directory is visited, and directories are visited depth-first
/// in sorted order. That is: by the parent directory's path segments, then by name.
pub(crate) fn scan_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn split(p: &str) -> (&str, &str) {
        p.rsplit_once('/').unwrap_or(("", p))
    }
    let ((da, na), (db, nb)) = (split(a), split(b));
    da.split('/')
        .filter(|s| !s.is_empty())
        .cmp(db.split('/').filter(|s| !s.is_empty()))
        .then_with(|| na.cmp(nb))
}

/// The parent backup's file index, read in step with the scan (both are in [`scan_order`]), so
/// neither is ever held whole. The chunks of every parent entry it passes become known, so a
/// changed file's unchanged chunks are not uploaded again.
struct ParentIndex {
    entries: std::iter::Peekable<SpoolReader<fs::File, FileEntry>>,
    shared: Arc<Shared>,
}

impl ParentIndex {
    /// The parent's file entry for `path`, if it has one.
    fn take(&mut self, path: &str) -> Result<Option<FileEntry>> {
        loop {
            let order = match self.entries.peek() {
                None => return Ok(None),
                Some(Ok(p)) => scan_order(&p.path, path),
                Some(Err(_)) => std::cmp::Ordering::Less,
            };
            if order == std::cmp::Ordering::Greater {
                return Ok(None);
            }
            let Some(p) = self.entries.next().transpose()? else {
                return Ok(None);
            };
            if p.kind == EntryKind::File {
                let mut known = self.shared.known.lock().unwrap_or_else(|e| e.into_inner());
                known.extend(p.slices.iter().map(|s| s.0));
            }
            if order == std::cmp::Ordering::Equal {
                return Ok((p.kind == EntryKind::File).then_some(p));
            }
        }
    }
}

fn mtime_of(m: &fs::Metadata) -> (i64, u32) {
    (m.mtime(), u32::try_from(m.mtime_nsec()).unwrap_or(0))
}

fn entry_of(rel: String, m: &fs::Metadata, kind: EntryKind) -> FileEntry {
    let (mtime, mtime_ns) = mtime_of(m);
    FileEntry {
        path: rel,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime,
        mtime_ns,
        size: if kind == EntryKind::File { m.len() } else { 0 },
        ino: m.ino(),
        target: None,
        slices: Vec::new(),
    }
}

/// Walks `root` (a directory, `meta` its metadata) in [`scan_order`], sending every entry (with
/// the parent's entry of the same path) through `tx`; items it cannot back up are sent as
/// skipped. Stops early, without error, when the receiver is gone.
fn scan(
    root: &Path,
    meta: &fs::Metadata,
    mut parent: Option<ParentIndex>,
    shared: &Shared,
    tx: &tokio::sync::mpsc::Sender<Scanned>,
) -> Result<()> {
    let small_limit = u64::from(shared.cfg.chunk_min);
    // The run of small files to read being gathered; sent before anything after it.
    let run = std::cell::RefCell::new((Vec::new(), 0u64));
    let flush = || {
        let mut run = run.borrow_mut();
        run.1 = 0;
        run.0.is_empty()
            || tx
                .blocking_send(Scanned::Small(std::mem::take(&mut run.0)))
                .is_ok()
    };
    let send = |item: Scanned| flush() && tx.blocking_send(item).is_ok();
    let skip = |w: String| send(Scanned::Skipped(w));
    let file = |entry: FileEntry, abs: PathBuf, parent: &mut Option<ParentIndex>| -> Result<bool> {
        let parent = match (parent.as_mut(), entry.kind) {
            (Some(index), EntryKind::File) => index.take(&entry.path)?,
            _ => None,
        };
        shared.seen(&entry);
        let small = entry.kind == EntryKind::File
            && entry.size > 0
            && entry.size < small_limit
            && !parent.as_ref().is_some_and(|p| unchanged(p, &entry));
        if !small {
            return Ok(send(Scanned::Entry { entry, abs, parent }));
        }
        let full = {
            let mut run = run.borrow_mut();
            run.1 += entry.size;
            run.0.push((entry, abs));
            run.0.len() >= SMALL_RUN_FILES || run.1 >= SMALL_RUN_BYTES
        };
        Ok(!full || flush())
    };
    if !file(
        entry_of(String::new(), meta, EntryKind::Dir),
        root.to_path_buf(),
        &mut parent,
    )? {
        return Ok(());
    }
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                if !skip(format!("skipped directory {}: {e}", dir.display())) {
                    return Ok(());
                }
                continue;
            }
        };
        // `DirEntry::metadata` stats relative to the open directory (no path lookup per entry).
        let mut children = Vec::new();
        for e in rd {
            match e {
                Ok(e) => children.push((e.file_name(), e.metadata())),
                Err(e) => {
                    if !skip(format!("skipped an entry of {}: {e}", dir.display())) {
                        return Ok(());
                    }
                }
            }
        }
        children.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, m) in children {
            let abs = dir.join(&name);
            let Some(name) = name.to_str() else {
                if !skip(format!("skipped {}: the name is not UTF-8", abs.display())) {
                    return Ok(());
                }
                continue;
            };
            let child = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    if !skip(format!("skipped {}: {e}", abs.display())) {
                        return Ok(());
                    }
                    continue;
                }
            };
            let ft = m.file_type();
            let sent = if ft.is_dir() {
                subdirs.push((abs.clone(), child.clone()));
                file(entry_of(child, &m, EntryKind::Dir), abs, &mut parent)?
            } else if ft.is_file() {
                file(entry_of(child, &m, EntryKind::File), abs, &mut parent)?
            } else if ft.is_symlink() {
                match fs::read_link(&abs).map(|t| t.to_str().map(str::to_owned)) {
                    Ok(Some(target)) => {
                        let mut entry = entry_of(child, &m, EntryKind::Symlink);
                        entry.target = Some(target);
                        file(entry, abs, &mut parent)?
                    }
                    Ok(None) => skip(format!(
                        "skipped symlink {}: its target is not UTF-8",
                        abs.display()
                    )),
                    Err(e) => skip(format!("skipped symlink {}: {e}", abs.display())),
                }
            } else {
                skip(format!(
                    "skipped {}: not a regular file, directory or symlink",
                    abs.display()
                ))
            };
            if !sent {
                return Ok(());
            }
        }
        // Reverse so the stack visits subdirectories in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    flush();
    Ok(())
}

/// What the workers produce for one entry, in input order.
enum Done {
    /// Ready to write to the index: the entry, bytes read, and a warning if any.
    Ready(FileEntry, u64, Option<String>),
    /// A small file whose content goes into an open bundle; `true` if it looks incompressible.
    Small(FileEntry, Vec<u8>, bool),
    /// Could not be read; skipped with a warning.
    Skipped(String),
}

struct Shared {
    repo: Repository,
    known: Mutex<HashSet<ChunkId>>,
    new_chunks: std::sync::atomic::AtomicU64,
    stored: std::sync::atomic::AtomicU64,
    level: i32,
    cfg: super::RepoConfig,
    upload_slots: tokio::sync::Semaphore,
    /// Files and their bytes the scan has found so far (the progress totals).
    files_seen: std::sync::atomic::AtomicU64,
    bytes_seen: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Counts a scanned entry into the progress totals.
    fn totals(&self, p: &mut Progress) {
        p.files_total = self.files_seen.load(std::sync::atomic::Ordering::Relaxed);
        p.bytes_total = self.bytes_seen.load(std::sync::atomic::Ordering::Relaxed);
    }

    fn seen(&self, e: &FileEntry) {
        if e.kind == EntryKind::File {
            self.files_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.bytes_seen
                .fetch_add(e.size, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether this run still has to upload `id` (and marks it as taken care of).
    fn claim(&self, id: &ChunkId) -> bool {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(*id)
    }

    /// Stores chunk `id`, encoded (on the blocking pool) by `encode` at the backup's level.
    async fn upload(
        self: Arc<Self>,
        id: ChunkId,
        encode: impl FnOnce(i32) -> Vec<u8> + Send + 'static,
    ) -> Result<()> {
        let _slot = self
            .upload_slots
            .acquire()
            .await
            .map_err(|_| Error::other("upload slots closed"))?;
        let level = self.level;
        let encoded = tokio::task::spawn_blocking(move || encode(level))
            .await
            .map_err(|e| Error::other("compression task failed").with_source(e))?;
        let size = encoded.len() as u64;
        match self
            .repo
            .store()
            .put(&id.path(), Bytes::from(encoded), PutOptions::create())
            .await
        {
            Ok(_) => {
                self.new_chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.stored.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            // Another backup (maybe of another cluster) stored the same content: deduplicated.
            Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What chunking one file gave.
enum Chunked {
    /// Its slices, the bytes read, and a warning if it changed while being read.
    Done(Vec<Slice>, u64, Option<String>),
    /// It could not be read (the warning says why).
    Unreadable(String),
}

/// Cuts a reader into content-defined chunks (FastCDC 2020, the same cut points as `fastcdc`'s
/// `StreamCDC`), each copied once into its own [`chunk::Framed`] buffer. `StreamCDC` refills a
/// window of the largest chunk's size after every chunk by moving what follows the cut to its
/// front: most of 8 MiB moved for each 1 MiB chunk. Here the window is twice that size, and what
/// is left is moved only when less than a largest chunk remains in it.
struct Chunker<R> {
    source: R,
    window: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    min: usize,
    avg: usize,
    max: usize,
}

impl<R: std::io::Read> Chunker<R> {
    fn new(source: R, min: usize, avg: usize, max: usize) -> Self {
        Self {
            source,
            window: vec![0; 2 * max],
            start: 0,
            end: 0,
            eof: false,
            min,
            avg,
            max,
        }
    }

    /// The next chunk, `None` at the end of the source.
    fn next_chunk(&mut self) -> std::io::Result<Option<chunk::Framed>> {
        if !self.eof && self.end - self.start < self.max {
            self.window.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            while !self.eof && self.end < self.window.len() {
                match self.source.read(&mut self.window[self.end..]) {
                    Ok(0) => self.eof = true,
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let rest = &self.window[self.start..self.end];
        if rest.is_empty() {
            return Ok(None);
        }
        // Cut within at most the largest chunk's bytes, or up to the end: as `StreamCDC` does.
        let (_, count) = fastcdc::v2020::FastCDC::new(rest, self.min, self.avg, self.max).cut(0, rest.len());
        let count = count.clamp(1, rest.len());
        let mut out = chunk::Framed::with_capacity(count);
        out.extend_from_slice(&rest[..count]);
        self.start += count;
        Ok(Some(out))
    }
}

/// Reads a run of small files in one blocking task, each sampled for [`chunk::looks_incompressible`].
async fn read_small_files(run: Vec<(FileEntry, PathBuf)>) -> Result<Vec<Done>> {
    tokio::task::spawn_blocking(move || {
        run.into_iter()
            .map(|(mut entry, abs)| match fs::read(&abs) {
                Ok(data) => {
                    entry.size = data.len() as u64;
                    let raw = chunk::looks_incompressible(&data);
                    Done::Small(entry, data, raw)
                }
                Err(e) => Done::Skipped(format!("skipped {}: {e}", abs.display())),
            })
            .collect()
    })
    .await
    .map_err(|e| Error::other("read task failed").with_source(e))
}

/// Chunks a changed large file and uploads what is new.
async fn chunk_file(shared: Arc<Shared>, abs: PathBuf, expected: u64) -> Result<Chunked> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkId, chunk::Framed)>(2);
    let (min, avg, max) = (
        shared.cfg.chunk_min as usize,
        shared.cfg.chunk_avg as usize,
        shared.cfg.chunk_max as usize,
    );
    let path = abs.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::result::Result<u64, String> {
        let file = fs::File::open(&path).map_err(|e| format!("skipped {}: {e}", path.display()))?;
        let mut total = 0u64;
        let mut chunker = Chunker::new(file, min, avg, max);
        while let Some(c) = chunker
            .next_chunk()
            .map_err(|e| format!("skipped {}: read failed: {e}", path.display()))?
        {
            total += c.len() as u64;
            let id = ChunkId::of(c.plain());
            if tx.blocking_send((id, c)).is_err() {
                break;
            }
        }
        Ok(total)
    });
    let mut slices = Vec::new();
    let mut uploads = FuturesUnordered::new();
    while let Some((id, data)) = rx.recv().await {
        let len = u32::try_from(data.len()).map_err(|_| Error::other("chunk larger than 4 GiB"))?;
        slices.push(Slice(id, 0, len));
        if shared.claim(&id) {
            uploads.push(tokio::spawn(
                shared
                    .clone()
                    .upload(id, move |level| chunk::encode_framed(data, level)),
            ));
        }
        while uploads.len() > 2 {
            if let Some(r) = uploads.next().await {
                r.map_err(|e| Error::other("upload task failed").with_source(e))??;
            }
        }
    }
    while let Some(r) = uploads.next().await {
        r.map_err(|e| Error::other("upload task failed").with_source(e))??;
    }
    Ok(
        match reader
            .await
            .map_err(|e| Error::other("read task failed").with_source(e))?
        {
            Ok(total) if total == expected => Chunked::Done(slices, total, None),
            Ok(total) => {
                let w = format!(
                    "{}: changed while being read ({expected} bytes, then {total}); backed up as read",
                    abs.display()
                );
                Chunked::Done(slices, total, Some(w))
            }
            Err(warning) => Chunked::Unreadable(warning),
        },
    )
}

/// Backs up a directory tree. Returns the committed manifest.
pub async fn backup_volume(repo: &Repository, opts: VolumeBackupOptions) -> Result<Manifest> {
    let cfg = repo.open_or_init().await?;
    let started = Instant::now();
    let created = repo.now_secs();
    let id = BackupId::new(repo.clock().now());
    let lock = super::locks::BackupLock::acquire(repo, &id).await?;
    let result = run_backup(repo, opts, cfg, started, created, id, &lock).await;
    // Give the lease back whether or not the backup committed, so GC is not held up.
    lock.release().await;
    result
}

/// The source path a volume backup records for `path`: absolute, with symlinks resolved, as
/// `pxb volume backup` records it (and [`default_parent`] compares).
///
/// Errors: [`Error::Io`] when `path` cannot be resolved (`cannot open <path>`).
pub fn canonical_source(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
}

/// The newest volume backup for which `pred` holds.
async fn newest_volume(repo: &Repository, pred: impl Fn(&Summary) -> bool) -> Result<Option<Summary>> {
    Ok(repo
        .list()
        .await?
        .into_iter()
        .filter(|s| s.kind == BackupKind::Volume && pred(s))
        .max_by(|a, b| a.id.cmp(&b.id)))
}

/// The backup a volume backup of `source` (a [`canonical_source`]) is incremental to when no
/// parent is named, as `pxb volume backup` picks it: the newest volume backup with the same
/// `tag`, or, without a tag, the newest untagged one of the same source. `None` when there is
/// none, or the location holds no repository yet.
pub async fn default_parent(repo: &Repository, source: &Path, tag: Option<&str>) -> Result<Option<BackupId>> {
    match repo.open().await {
        Err(Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let source = source.display().to_string();
    Ok(newest_volume(repo, |s| match tag {
        Some(t) => s.tag.as_deref() == Some(t),
        None => s.tag.is_none() && s.source.as_deref() == Some(source.as_str()),
    })
    .await?
    .map(|s| s.id))
}

/// The volume backup `backup` names, as `pxb volume restore --backup` reads it: a backup id, or
/// `latest` for the newest volume backup (with `tag`, when given; `tag` is ignored for an id).
///
/// Errors: [`Error::NotFound`] when `latest` matches nothing; [`Error::Invalid`] for a malformed id.
pub async fn find_volume_backup(repo: &Repository, backup: &str, tag: Option<&str>) -> Result<BackupId> {
    if backup == "latest" {
        newest_volume(repo, |s| tag.is_none() || s.tag.as_deref() == tag)
            .await?
            .map(|s| s.id)
            .ok_or_else(|| Error::not_found("no volume backup in this location matches"))
    } else {
        BackupId::parse(backup)
    }
}

async fn run_backup(
    repo: &Repository,
    opts: VolumeBackupOptions,
    cfg: super::RepoConfig,
    started: Instant,
    created: u64,
    id: BackupId,
    lock: &super::locks::BackupLock,
) -> Result<Manifest> {
    let meta = fs::symlink_metadata(&opts.source)
        .map_err(|e| Error::io(format!("cannot read {}", opts.source.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!(
            "{} is not a directory",
            opts.source.display()
        )));
    }
    let shared = Arc::new(Shared {
        repo: repo.clone(),
        known: Mutex::new(HashSet::new()),
        new_chunks: Default::default(),
        stored: Default::default(),
        level: opts.compression_level,
        cfg: cfg.clone(),
        upload_slots: tokio::sync::Semaphore::new(opts.concurrency.max(1)),
        files_seen: Default::default(),
        bytes_seen: Default::default(),
    });
    // The parent's unchanged files are reused without reading; its index is read in step with
    // the scan, never whole.
    let parent = match &opts.parent {
        Some(parent) => Some(ParentIndex {
            entries: open_index(repo, parent).await?.peekable(),
            shared: shared.clone(),
        }),
        None => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(SCAN_AHEAD);
    let scanner = {
        let (source, shared) = (opts.source.clone(), shared.clone());
        tokio::task::spawn_blocking(move || scan(&source, &meta, parent, &shared, &tx))
    };
    let mut warnings = Vec::new();
    let mut skipped = 0u64;
    let mut stats = BackupStats::default();

    let scanned = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|s| (s, rx)) });
    let jobs = scanned.map(|scanned| {
        let shared = shared.clone();
        async move {
            let (mut entry, abs, parent) = match scanned {
                Scanned::Entry { entry, abs, parent } => (entry, abs, parent),
                Scanned::Small(run) => return read_small_files(run).await,
                Scanned::Skipped(w) => return Ok(vec![Done::Skipped(w)]),
            };
            if entry.kind != EntryKind::File || entry.size == 0 {
                return Ok(vec![Done::Ready(entry, 0, None)]);
            }
            if let Some(p) = parent
                && unchanged(&p, &entry)
            {
                entry.slices = p.slices;
                return Ok(vec![Done::Ready(entry, 0, None)]);
            }
            // A file the scan saw small never comes here; one that grew is chunked.
            Ok(vec![match chunk_file(shared, abs, entry.size).await? {
                Chunked::Done(slices, read, warning) => {
                    entry.slices = slices;
                    entry.size = read;
                    Done::Ready(entry, read, warning)
                }
                Chunked::Unreadable(w) => Done::Skipped(w),
            }])
        }
    });

    let mut index = IndexWriter {
        spool: SpoolWriter::new(FILES_KIND, FORMAT)?,
        chunks: HashSet::new(),
    };
    // Two bundles are open: small files that look compressible, and those that do not (the second
    // is stored raw without zstd being tried, see `chunk::encode`), so zstd spends no time on
    // random bytes mixed among text. Entries wait here, in order, until every bundle they are in
    // has its id (`Some(bundle)`); the ones in front that wait for nothing go to the index.
    let mut pending: VecDeque<(FileEntry, Option<usize>)> = VecDeque::new();
    let mut bundles: [Option<chunk::Framed>; 2] = [None, None];
    let mut bundle_uploads = FuturesUnordered::new();
    let mut progress = Progress::default();
    let mut last_report = Instant::now();

    let flush_bundle = |which: usize,
                        bundles: &mut [Option<chunk::Framed>; 2],
                        pending: &mut VecDeque<(FileEntry, Option<usize>)>,
                        index: &mut IndexWriter,
                        uploads: &mut FuturesUnordered<_>|
     -> Result<()> {
        if let Some(data) = bundles[which].take().filter(|b| !b.is_empty()) {
            let id = ChunkId::of(data.plain());
            for (e, waiting) in pending.iter_mut() {
                if *waiting == Some(which) {
                    for s in e.slices.iter_mut() {
                        s.0 = id;
                    }
                    *waiting = None;
                }
            }
            if shared.claim(&id) {
                uploads.push(tokio::spawn(
                    shared
                        .clone()
                        .upload(id, move |level| chunk::encode_framed(data, level)),
                ));
            }
        }
        while pending.front().is_some_and(|(_, waiting)| waiting.is_none()) {
            if let Some((e, _)) = pending.pop_front() {
                index.push(&e)?;
            }
        }
        Ok(())
    };
    let flush_all = |bundles: &mut [Option<chunk::Framed>; 2],
                     pending: &mut VecDeque<(FileEntry, Option<usize>)>,
                     index: &mut IndexWriter,
                     uploads: &mut FuturesUnordered<_>|
     -> Result<()> {
        flush_bundle(0, bundles, pending, index, uploads)?;
        flush_bundle(1, bundles, pending, index, uploads)
    };

    let mut results = std::pin::pin!(
        jobs.buffered(opts.concurrency.max(1))
            .map_ok(|done| stream::iter(done.into_iter().map(Ok)))
            .try_flatten()
    );
    while let Some(done) = results.try_next().await? {
        match done {
            Done::Ready(entry, read, warning) => {
                stats.bytes_read += read;
                if let Some(w) = warning
                    && warnings.len() < MAX_WARNINGS
                {
                    warnings.push(w);
                }
                count(&mut stats, &entry);
                if pending.is_empty() {
                    index.push(&entry)?;
                } else {
                    pending.push_back((entry, None));
                }
            }
            Done::Small(mut entry, data, raw) => {
                stats.bytes_read += data.len() as u64;
                count(&mut stats, &entry);
                let which = usize::from(raw);
                if bundles[which].as_ref().map_or(0, |b| b.len()) + data.len() > BUNDLE_TARGET {
                    flush_bundle(which, &mut bundles, &mut pending, &mut index, &mut bundle_uploads)?;
                }
                let bundle =
                    bundles[which].get_or_insert_with(|| chunk::Framed::with_capacity(BUNDLE_TARGET));
                let offset = u32::try_from(bundle.len()).map_err(|_| Error::other("bundle too large"))?;
                let len = u32::try_from(data.len()).map_err(|_| Error::other("small file too large"))?;
                // The chunk id is filled in when the bundle is flushed.
                entry.slices = vec![Slice(ChunkId([0; 32]), offset, len)];
                bundle.extend_from_slice(&data);
                pending.push_back((entry, Some(which)));
            }
            Done::Skipped(warning) => {
                skipped += 1;
                if warnings.len() < MAX_WARNINGS {
                    warnings.push(warning);
                }
            }
        }
        // Entries after an open bundle wait for its id: a bundle is closed early rather than let
        // them pile up (an incremental backup with few changed small files among millions).
        if pending.len() >= BUNDLE_FILES {
            flush_all(&mut bundles, &mut pending, &mut index, &mut bundle_uploads)?;
        }
        progress.files_done = stats.files;
        progress.bytes_done = stats.bytes;
        if let Some(cb) = &opts.progress
            && last_report.elapsed() > Duration::from_millis(200)
        {
            shared.totals(&mut progress);
            progress.elapsed = started.elapsed();
            cb(&progress);
            last_report = Instant::now();
        }
        while bundle_uploads.len() > opts.concurrency.max(1) {
            if let Some(r) = bundle_uploads.next().await {
                r.map_err(|e| Error::other("upload task failed").with_source(e))??;
            }
        }
        lock.check()?;
    }
    // The scan's own failure (an unreadable parent index) fails the backup before anything of it
    // is written.
    scanner
        .await
        .map_err(|e| Error::other("scan task failed").with_source(e))??;
    flush_all(&mut bundles, &mut pending, &mut index, &mut bundle_uploads)?;
    while let Some(r) = bundle_uploads.next().await {
        r.map_err(|e| Error::other("upload task failed").with_source(e))??;
    }
    if let Some(cb) = &opts.progress {
        shared.totals(&mut progress);
        progress.elapsed = started.elapsed();
        cb(&progress);
    }

    let IndexWriter { spool, chunks } = index;
    let spooled = spool.finish()?;
    let files_path = id.object_path(FILES_OBJECT)?;
    let files_obj = ManifestObject {
        name: FILES_OBJECT.into(),
        size: spooled.size,
        blake3: spooled.hash.clone(),
    };
    spooled
        .upload(repo.store(), &files_path, PutOptions::create())
        .await?;

    stats.skipped = skipped;
    // The chunks the index references: the commit checks them if a GC may have swept meanwhile.
    let mut chunks: Vec<ChunkId> = chunks.into_iter().collect();
    chunks.sort_unstable();
    stats.chunks = chunks.len() as u64;
    stats.new_chunks = shared.new_chunks.load(std::sync::atomic::Ordering::Relaxed);
    stats.stored_bytes = shared.stored.load(std::sync::atomic::Ordering::Relaxed) + files_obj.size;
    let manifest = Manifest {
        format: FORMAT,
        id: id.clone(),
        kind: BackupKind::Volume,
        created,
        completed: repo.now_secs(),
        status: if skipped == 0 {
            BackupStatus::Completed
        } else {
            BackupStatus::PartiallyFailed
        },
        cluster: opts.cluster.clone(),
        namespaces: opts.namespaces.clone(),
        tag: opts.tag.clone(),
        source: Some(opts.source.display().to_string()),
        parent: opts.parent.clone(),
        objects: vec![files_obj],
        stats,
        warnings,
        volumes: Vec::new(),
    };
    lock.commit(&manifest, &chunks).await?;
    Ok(manifest)
}

fn count(stats: &mut BackupStats, e: &FileEntry) {
    match e.kind {
        EntryKind::Dir => stats.dirs += 1,
        EntryKind::Symlink => stats.symlinks += 1,
        EntryKind::File => {
            stats.files += 1;
            stats.bytes += e.size;
        }
    }
}

/// The file index being written, and the distinct chunks it references.
struct IndexWriter {
    spool: SpoolWriter,
    chunks: HashSet<ChunkId>,
}

impl IndexWriter {
    fn push(&mut self, e: &FileEntry) -> Result<()> {
        self.chunks.extend(e.slices.iter().map(|s| s.0));
        self.spool.push(e)
    }
}

/// A volume backup's file index, downloaded to a local spool file and checked against the
/// manifest's hash: read entry by entry, as many times as needed, never held whole.
pub(crate) struct IndexFile {
    file: fs::File,
    name: String,
}

impl IndexFile {
    /// Downloads the file index of the volume backup `id`.
    pub(crate) async fn download(repo: &Repository, id: &BackupId) -> Result<Self> {
        let manifest = repo.manifest(id).await?;
        if manifest.kind != BackupKind::Volume {
            return Err(Error::invalid(format!("backup {id} is not a volume backup")));
        }
        let obj = manifest
            .objects
            .iter()
            .find(|o| o.name == FILES_OBJECT)
            .ok_or_else(|| Error::corrupt(format!("backup {id}: the manifest lists no file index")))?;
        let path = id.object_path(FILES_OBJECT)?;
        let file = spool::download(repo.store(), &path, Some(&obj.blake3)).await?;
        Ok(Self {
            file,
            name: path.to_string(),
        })
    }

    /// A reader of the entries from the first (blocking: call it off the async threads). Readers
    /// share the file's offset: one at a time.
    pub(crate) fn entries(&self) -> Result<SpoolReader<fs::File, FileEntry>> {
        use std::io::{Seek, SeekFrom};
        let mut file = self
            .file
            .try_clone()
            .map_err(|e| Error::io("reopening a file index", e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("rewinding a file index", e))?;
        SpoolReader::new(file, &self.name, FILES_KIND, FORMAT)
    }
}

/// Opens a volume backup's file index (downloaded to a spool file and checked against the
/// manifest's hash) to be read entry by entry.
async fn open_index(repo: &Repository, id: &BackupId) -> Result<SpoolReader<fs::File, FileEntry>> {
    let index = IndexFile::download(repo, id).await?;
    tokio::task::spawn_blocking(move || index.entries())
        .await
        .map_err(|e| Error::other("index task failed").with_source(e))?
}

/// Reads a volume backup's whole file index (checked against the manifest's hash) into memory:
/// for tools and tests. Restore, verify and GC read it entry by entry instead.
pub async fn read_index(repo: &Repository, id: &BackupId) -> Result<Vec<FileEntry>> {
    let reader = open_index(repo, id).await?;
    tokio::task::spawn_blocking(move || reader.collect())
        .await
        .map_err(|e| Error::other("index task failed").with_source(e))?
}

/// The distinct chunks a volume backup's files reference, sorted, read entry by entry from its
/// file index (memory grows with the chunks, not with the files).
pub async fn referenced_chunks(repo: &Repository, id: &BackupId) -> Result<Vec<ChunkId>> {
    let reader = open_index(repo, id).await?;
    tokio::task::spawn_blocking(move || {
        let mut chunks = HashSet::new();
        for e in reader {
            let e = e?;
            if e.kind == EntryKind::File {
                chunks.extend(e.slices.iter().map(|s| s.0));
            }
        }
        let mut chunks: Vec<ChunkId> = chunks.into_iter().collect();
        chunks.sort_unstable();
        Ok(chunks)
    })
    .await
    .map_err(|e| Error::other("index task failed").with_source(e))?
}

/// Parses a file index from its stored bytes (for tools and fuzzing).
pub fn parse_index(name: &str, stored: &[u8]) -> Result<Vec<FileEntry>> {
    SpoolReader::<_, FileEntry>::new(stored, name, FILES_KIND, FORMAT)?.collect()
}

#[cfg(test)]
mod parent_tests {
    //! Which backup a new volume backup is incremental to, and which one `latest` names.

    use super::*;
    use crate::{InMemory, ManualClock};

    async fn backup(repo: &Repository, clock: &ManualClock, src: &Path, tag: Option<&str>) -> BackupId {
        // Ids have a resolution of a second: a second apart, "newest" is unambiguous.
        clock.advance(Duration::from_secs(1));
        let mut opts = VolumeBackupOptions::new(src);
        opts.tag = tag.map(str::to_owned);
        backup_volume(repo, opts).await.expect("backup").id
    }

    #[tokio::test]
    async fn parents_and_latest_are_picked_by_tag_then_source() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            fs::create_dir_all(d).expect("mkdir");
            fs::write(d.join("f"), d.display().to_string()).expect("write");
        }
        let (a, b) = (canonical_source(&a).expect("a"), canonical_source(&b).expect("b"));
        let clock = ManualClock::new(std::time::SystemTime::now());
        let repo = Repository::new(Arc::new(InMemory::new())).with_clock(Arc::new(clock.clone()));

        assert_eq!(
            default_parent(&repo, &a, None).await.expect("empty"),
            None,
            "no repository yet"
        );
        let a1 = backup(&repo, &clock, &a, None).await;
        let t1 = backup(&repo, &clock, &b, Some("t")).await;
        let b1 = backup(&repo, &clock, &b, None).await;
        let a2 = backup(&repo, &clock, &a, None).await;

        assert_eq!(
            default_parent(&repo, &a, None).await.expect("a"),
            Some(a2.clone())
        );
        assert_eq!(
            default_parent(&repo, &b, None).await.expect("b"),
            Some(b1.clone())
        );
        // A tag wins over the path: any directory with tag `t` continues `t`'s chain.
        assert_eq!(
            default_parent(&repo, &a, Some("t")).await.expect("t"),
            Some(t1.clone())
        );
        assert_eq!(default_parent(&repo, &a, Some("new")).await.expect("new"), None);

        assert_eq!(
            find_volume_backup(&repo, "latest", None).await.expect("latest"),
            a2
        );
        assert_eq!(
            find_volume_backup(&repo, "latest", Some("t")).await.expect("t"),
            t1
        );
        assert_eq!(
            find_volume_backup(&repo, a1.as_str(), Some("t"))
                .await
                .expect("id"),
            a1
        );
        let none = find_volume_backup(&repo, "latest", Some("nope"))
            .await
            .expect_err("no match");
        assert!(matches!(none, Error::NotFound { .. }), "{none}");
        let bad = find_volume_backup(&repo, "../x", None).await.expect_err("bad id");
        assert!(matches!(bad, Error::Invalid { .. }), "{bad}");
        let missing = canonical_source(&tmp.path().join("missing")).expect_err("missing");
        assert!(matches!(missing, Error::Io { .. }), "{missing}");
        assert!(missing.to_string().contains("cannot open"), "{missing}");
    }
}

#[cfg(test)]
mod scan_tests {
    //! The scan and a file index list entries in [`scan_order`], so an incremental backup finds
    //! every unchanged file by walking both in step.

    use super::*;
    use crate::InMemory;

    /// Names that sort differently as whole paths than segment by segment (`a/b` against `a.b`,
    /// `a-b`, `a b`), upper case, non-ASCII, deep nesting and empty directories.
    fn tricky_tree(root: &Path) {
        for p in [
            "a/b/c/file",
            "a/b/file",
            "a/file",
            "a.b/file",
            "a-b/file",
            "a b/file",
            "ab/file",
            "Z/file",
            "é/file",
            "a/b/c/d/e/f/deep",
            "zz",
            "a0",
        ] {
            let path = root.join(p);
            fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            fs::write(&path, p).expect("write");
        }
        fs::create_dir_all(root.join("empty/dir")).expect("mkdir");
    }

    #[tokio::test]
    async fn the_index_is_in_scan_order_and_an_unchanged_tree_is_not_read_again() {
        let tmp = tempfile::tempdir().expect("tmp");
        tricky_tree(tmp.path());
        let repo = Repository::new(Arc::new(InMemory::new()));
        let first = backup_volume(&repo, VolumeBackupOptions::new(tmp.path()))
            .await
            .expect("first");
        let index = read_index(&repo, &first.id).await.expect("index");
        assert_eq!(
            index.len(),
            1 + 12 + 14,
            "root, files and directories: {index:#?}"
        );
        for pair in index.windows(2) {
            assert_eq!(
                scan_order(&pair[0].path, &pair[1].path),
                std::cmp::Ordering::Less,
                "{:?} before {:?}",
                pair[0].path,
                pair[1].path
            );
        }
        fs::write(tmp.path().join("a.b/file"), "changed").expect("change");
        let mut opts = VolumeBackupOptions::new(tmp.path());
        opts.parent = Some(first.id.clone());
        let second = backup_volume(&repo, opts).await.expect("second");
        assert_eq!(
            second.stats.bytes_read, 7,
            "only the changed file is read: {:?}",
            second.stats
        );
        assert_eq!(second.stats.files, 12, "{:?}", second.stats);
    }

    #[test]
    fn scan_order_is_by_directory_then_name() {
        use std::cmp::Ordering::{Greater, Less};
        // A directory's own entries come before the entries below them.
        assert_eq!(scan_order("", "a"), Less);
        assert_eq!(scan_order("b", "a/x"), Less);
        assert_eq!(scan_order("a/x", "a.b/x"), Less);
        assert_eq!(scan_order("a.b/x", "a/b/x"), Greater);
        assert_eq!(scan_order("a/b/x", "b/x"), Less);
        assert_eq!(scan_order("a/z", "a/b/x"), Less);
    }

    /// A reader that gives at most `step` bytes a call, like a pipe or a slow disk.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_chunker_cuts_where_fastcdc_streamcdc_cuts() {
        // Cut points must not change between versions, or unchanged data stops deduplicating.
        let (min, avg, max) = (16 << 10, 32 << 10, 128 << 10);
        let mut data = crate::backup::chunk::test_noise(3, 3 << 20);
        // A long run of one byte: no cut point inside, so chunks of the largest size.
        data[1 << 20..(1 << 20) + (600 << 10)].fill(7);
        for (len, step) in [
            (data.len(), 1 << 20),
            (data.len() - 12_345, 4_097),
            (10_000, 999),
            (0, 1),
        ] {
            let data = &data[..len];
            let want: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::new(data, min, avg, max)
                .map(|c| c.expect("read").data)
                .collect();
            let mut chunker = Chunker::new(Trickle { data, step }, min, avg, max);
            let mut got = Vec::new();
            while let Some(c) = chunker.next_chunk().expect("read") {
                got.push(c.plain().to_vec());
            }
            assert_eq!(got.len(), want.len(), "{len} bytes read {step} at a time");
            assert!(
                got == want,
                "{len} bytes read {step} at a time: different cut points"
            );
            assert!(got.iter().any(|c| c.len() == max) || len < 2 << 20);
        }
    }
}

#[cfg(test)]
mod bundle_tests {
    //! Small files go into two kinds of bundles, and a damaged parent index stops a backup before
    //! any of it is committed.

    use super::*;
    use crate::InMemory;

    use crate::backup::chunk::test_noise as noise;

    async fn stored_encoding(repo: &Repository, id: &ChunkId) -> u8 {
        let stored = repo
            .store()
            .get(&id.path())
            .await
            .expect("chunk")
            .bytes()
            .await
            .expect("bytes");
        stored[4]
    }

    #[tokio::test]
    async fn random_small_files_are_bundled_apart_from_text_and_stored_raw() {
        let tmp = tempfile::tempdir().expect("tmp");
        for i in 0..40u64 {
            let body = if i % 2 == 0 {
                noise(i + 1, 2048 + i as usize)
            } else {
                format!("line {i} of a small text file\n").repeat(80).into_bytes()
            };
            fs::write(tmp.path().join(format!("f{i:02}")), body).expect("write");
        }
        let repo = Repository::new(Arc::new(InMemory::new()));
        let backup = backup_volume(&repo, VolumeBackupOptions::new(tmp.path()))
            .await
            .expect("backup");
        let index = read_index(&repo, &backup.id).await.expect("index");
        let chunk_of = |parity: u64| -> HashSet<ChunkId> {
            index
                .iter()
                .filter(|e| {
                    e.path
                        .strip_prefix('f')
                        .and_then(|n| n.parse::<u64>().ok())
                        .is_some_and(|n| n % 2 == parity)
                })
                .map(|e| e.slices[0].0)
                .collect()
        };
        let (random, text) = (chunk_of(0), chunk_of(1));
        assert_eq!(
            (random.len(), text.len()),
            (1, 1),
            "one bundle each: {random:?} {text:?}"
        );
        assert_ne!(random, text);
        let random = random.into_iter().next().expect("random bundle");
        let text = text.into_iter().next().expect("text bundle");
        assert_eq!(
            stored_encoding(&repo, &random).await,
            0,
            "the random bundle is stored raw"
        );
        assert_eq!(
            stored_encoding(&repo, &text).await,
            1,
            "the text bundle is compressed"
        );
        // The index keeps the scan's order although entries waited for two bundles.
        for pair in index.windows(2) {
            assert_eq!(scan_order(&pair[0].path, &pair[1].path), std::cmp::Ordering::Less);
        }
        let out = tempfile::tempdir().expect("tmp");
        restore_volume(&repo, &backup.id, VolumeRestoreOptions::new(out.path()))
            .await
            .expect("restore");
        for i in 0..40u64 {
            let name = format!("f{i:02}");
            assert_eq!(
                fs::read(out.path().join(&name)).expect("restored"),
                fs::read(tmp.path().join(&name)).expect("source"),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_parent_index_fails_the_incremental_before_it_commits_anything() {
        let tmp = tempfile::tempdir().expect("tmp");
        for i in 0..200u64 {
            fs::write(
                tmp.path().join(format!("f{i:03}")),
                format!("file {i}\n").repeat(50),
            )
            .expect("write");
        }
        let repo = Repository::new(Arc::new(InMemory::new()));
        let first = backup_volume(&repo, VolumeBackupOptions::new(tmp.path()))
            .await
            .expect("first");
        let index = first.id.object_path(FILES_OBJECT).expect("path");
        let bytes = repo
            .store()
            .get(&index)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        repo.store()
            .put(&index, bytes.slice(..bytes.len() / 2), PutOptions::default())
            .await
            .expect("truncate");
        fs::write(tmp.path().join("f100"), "changed").expect("change");
        let mut opts = VolumeBackupOptions::new(tmp.path());
        opts.parent = Some(first.id.clone());
        let err = backup_volume(&repo, opts).await.expect_err("damaged parent");
        assert!(
            matches!(err, Error::Corrupt { .. }) && err.to_string().contains(index.as_str()),
            "{err}"
        );
        let listed = repo.list().await.expect("list");
        assert_eq!(
            listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
            vec![&first.id],
            "no second backup is committed"
        );
        let own: Vec<String> = crate::store::list_all(repo.store(), super::super::layout::BACKUPS)
            .map_ok(|m| m.path.to_string())
            .try_collect()
            .await
            .expect("list");
        assert_eq!(own, vec![index.to_string()], "no second file index is written");
    }
}
