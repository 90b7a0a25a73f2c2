//! The file-level mover: backs a directory tree up into content-defined chunks and restores it.
//!
//! Backup walks the tree, reuses the chunk lists of files unchanged since the parent backup (same
//! size, mtime and inode) without reading them, splits changed files with FastCDC, hashes (BLAKE3),
//! compresses (zstd) and uploads chunks in parallel with a bounded number in flight, and packs
//! files smaller than the chunker's minimum into shared chunks ("bundles"), so many small files do
//! not become many tiny objects. The file index (a spooled, compressed JSON-lines object) and the
//! manifest are written last. Restore verifies every chunk's hash before writing it, and writes
//! nothing outside its target: index paths are relative without `..`, and every path is opened
//! below the target's directory handle without following symlinks (see `Target`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, FuturesUnordered, StreamExt, TryStreamExt};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use super::chunk::{self, ChunkId};
use super::spool::{self, SpoolReader, SpoolWriter};
use super::{
    BackupId, BackupKind, BackupStats, BackupStatus, FORMAT, Manifest, ManifestObject, Repository, Summary,
};
use crate::{Error, PutOptions, Result};

/// The name of a volume backup's file index under its prefix.
pub const FILES_OBJECT: &str = "files";
const FILES_KIND: &str = "files";
const BUNDLE_TARGET: usize = 4 << 20;
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
    /// Bytes in total.
    pub bytes_total: u64,
    /// Files processed so far.
    pub files_done: u64,
    /// Files in total.
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

struct Scanned {
    entry: FileEntry,
    abs: PathBuf,
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

/// Walks `root` depth-first with sorted siblings; items it cannot back up become warnings.
fn scan(root: &Path, warnings: &mut Vec<String>, skipped: &mut u64) -> Result<Vec<Scanned>> {
    let meta =
        fs::symlink_metadata(root).map_err(|e| Error::io(format!("cannot read {}", root.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::invalid(format!("{} is not a directory", root.display())));
    }
    let mut out = vec![Scanned {
        entry: entry_of(String::new(), &meta, EntryKind::Dir),
        abs: root.to_path_buf(),
    }];
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let mut warn = |w: String, skipped: &mut u64| {
        *skipped += 1;
        if warnings.len() < MAX_WARNINGS {
            warnings.push(w);
        }
    };
    while let Some((dir, rel)) = stack.pop() {
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                warn(format!("skipped directory {}: {e}", dir.display()), skipped);
                continue;
            }
        };
        let mut names = Vec::new();
        for e in rd {
            match e {
                Ok(e) => names.push(e.file_name()),
                Err(e) => warn(format!("skipped an entry of {}: {e}", dir.display()), skipped),
            }
        }
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let abs = dir.join(&name);
            let Some(name) = name.to_str() else {
                warn(
                    format!("skipped {}: the name is not UTF-8", abs.display()),
                    skipped,
                );
                continue;
            };
            let child = if rel.is_empty() {
                name.to_owned()
            } else {
                format!("{rel}/{name}")
            };
            let m = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    warn(format!("skipped {}: {e}", abs.display()), skipped);
                    continue;
                }
            };
            let ft = m.file_type();
            if ft.is_dir() {
                out.push(Scanned {
                    entry: entry_of(child.clone(), &m, EntryKind::Dir),
                    abs: abs.clone(),
                });
                subdirs.push((abs, child));
            } else if ft.is_file() {
                out.push(Scanned {
                    entry: entry_of(child, &m, EntryKind::File),
                    abs,
                });
            } else if ft.is_symlink() {
                match fs::read_link(&abs).map(|t| t.to_str().map(str::to_owned)) {
                    Ok(Some(target)) => {
                        let mut entry = entry_of(child, &m, EntryKind::Symlink);
                        entry.target = Some(target);
                        out.push(Scanned { entry, abs });
                    }
                    Ok(None) => warn(
                        format!("skipped symlink {}: its target is not UTF-8", abs.display()),
                        skipped,
                    ),
                    Err(e) => warn(format!("skipped symlink {}: {e}", abs.display()), skipped),
                }
            } else {
                warn(
                    format!(
                        "skipped {}: not a regular file, directory or symlink",
                        abs.display()
                    ),
                    skipped,
                );
            }
        }
        // Reverse so the stack visits subdirectories in sorted order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// What the workers produce for one entry, in input order.
enum Done {
    /// Ready to write to the index: the entry, bytes read, and a warning if any.
    Ready(FileEntry, u64, Option<String>),
    /// A small file whose content goes into the current bundle.
    Small(FileEntry, Vec<u8>),
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
}

impl Shared {
    /// Whether this run still has to upload `id` (and marks it as taken care of).
    fn claim(&self, id: &ChunkId) -> bool {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).insert(*id)
    }

    async fn upload(self: Arc<Self>, id: ChunkId, plain: Vec<u8>) -> Result<()> {
        let _slot = self
            .upload_slots
            .acquire()
            .await
            .map_err(|_| Error::other("upload slots closed"))?;
        let level = self.level;
        let encoded = tokio::task::spawn_blocking(move || chunk::encode(&plain, level))
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

/// Chunks a changed large file and uploads what is new.
async fn chunk_file(shared: Arc<Shared>, abs: PathBuf, expected: u64) -> Result<Chunked> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkId, Vec<u8>)>(2);
    let (min, avg, max) = (
        shared.cfg.chunk_min as usize,
        shared.cfg.chunk_avg as usize,
        shared.cfg.chunk_max as usize,
    );
    let path = abs.clone();
    let reader = tokio::task::spawn_blocking(move || -> std::result::Result<u64, String> {
        let file = fs::File::open(&path).map_err(|e| format!("skipped {}: {e}", path.display()))?;
        let mut total = 0u64;
        for c in fastcdc::v2020::StreamCDC::new(file, min, avg, max) {
            let c = c.map_err(|e| format!("skipped {}: read failed: {e}", path.display()))?;
            total += c.length as u64;
            let id = ChunkId::of(&c.data);
            if tx.blocking_send((id, c.data)).is_err() {
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
            uploads.push(tokio::spawn(shared.clone().upload(id, data)));
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
    let source = opts.source.clone();
    let (scanned, mut warnings, mut skipped) = tokio::task::spawn_blocking(move || {
        let mut warnings = Vec::new();
        let mut skipped = 0;
        scan(&source, &mut warnings, &mut skipped).map(|s| (s, warnings, skipped))
    })
    .await
    .map_err(|e| Error::other("scan task failed").with_source(e))??;

    // The parent's unchanged files are reused without reading; its chunks are known to exist.
    let mut parent_files: HashMap<String, FileEntry> = HashMap::new();
    let mut known = HashSet::new();
    if let Some(parent) = &opts.parent {
        for e in read_index(repo, parent).await? {
            if e.kind == EntryKind::File {
                known.extend(e.slices.iter().map(|s| s.0));
                parent_files.insert(e.path.clone(), e);
            }
        }
    }

    let bytes_total: u64 = scanned.iter().map(|s| s.entry.size).sum();
    let files_total = scanned.iter().filter(|s| s.entry.kind == EntryKind::File).count() as u64;
    let shared = Arc::new(Shared {
        repo: repo.clone(),
        known: Mutex::new(known),
        new_chunks: Default::default(),
        stored: Default::default(),
        level: opts.compression_level,
        cfg: cfg.clone(),
        upload_slots: tokio::sync::Semaphore::new(opts.concurrency.max(1)),
    });
    let mut stats = BackupStats::default();
    let small_limit = cfg.chunk_min as u64;

    let jobs = scanned.into_iter().map(|Scanned { mut entry, abs }| {
        let shared = shared.clone();
        let parent = parent_files.remove(&entry.path);
        async move {
            if entry.kind != EntryKind::File || entry.size == 0 {
                return Ok(Done::Ready(entry, 0, None));
            }
            if let Some(p) = parent
                && p.size == entry.size
                && p.mtime == entry.mtime
                && p.mtime_ns == entry.mtime_ns
                && p.ino == entry.ino
            {
                entry.slices = p.slices;
                return Ok(Done::Ready(entry, 0, None));
            }
            if entry.size < small_limit {
                let read = tokio::task::spawn_blocking(move || {
                    fs::read(&abs).map_err(|e| format!("skipped {}: {e}", abs.display()))
                })
                .await
                .map_err(|e| Error::other("read task failed").with_source(e))?;
                return Ok(match read {
                    Ok(data) => {
                        entry.size = data.len() as u64;
                        Done::Small(entry, data)
                    }
                    Err(w) => Done::Skipped(w),
                });
            }
            match chunk_file(shared, abs, entry.size).await? {
                Chunked::Done(slices, read, warning) => {
                    entry.slices = slices;
                    entry.size = read;
                    Ok(Done::Ready(entry, read, warning))
                }
                Chunked::Unreadable(w) => Ok(Done::Skipped(w)),
            }
        }
    });

    let mut index = SpoolWriter::new(FILES_KIND, FORMAT)?;
    // Entries waiting for the open bundle's id, in order; `true` marks those inside the bundle.
    let mut pending: Vec<(FileEntry, bool)> = Vec::new();
    let mut bundle: Vec<u8> = Vec::new();
    let mut bundle_uploads = FuturesUnordered::new();
    let mut progress = Progress {
        bytes_total,
        files_total,
        ..Progress::default()
    };
    let mut last_report = Instant::now();

    let flush_bundle = |bundle: &mut Vec<u8>,
                        pending: &mut Vec<(FileEntry, bool)>,
                        index: &mut SpoolWriter,
                        uploads: &mut FuturesUnordered<_>|
     -> Result<()> {
        if !bundle.is_empty() {
            let data = std::mem::take(bundle);
            let id = ChunkId::of(&data);
            for (e, _) in pending.iter_mut().filter(|(_, in_bundle)| *in_bundle) {
                for s in e.slices.iter_mut() {
                    s.0 = id;
                }
            }
            if shared.claim(&id) {
                uploads.push(tokio::spawn(shared.clone().upload(id, data)));
            }
        }
        for (e, _) in pending.drain(..) {
            index.push(&e)?;
        }
        Ok(())
    };

    let mut results = stream::iter(jobs).buffered(opts.concurrency.max(1));
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
                    pending.push((entry, false));
                }
            }
            Done::Small(mut entry, data) => {
                stats.bytes_read += data.len() as u64;
                count(&mut stats, &entry);
                if bundle.len() + data.len() > BUNDLE_TARGET {
                    flush_bundle(&mut bundle, &mut pending, &mut index, &mut bundle_uploads)?;
                }
                let offset = u32::try_from(bundle.len()).map_err(|_| Error::other("bundle too large"))?;
                let len = u32::try_from(data.len()).map_err(|_| Error::other("small file too large"))?;
                // The chunk id is filled in when the bundle is flushed.
                entry.slices = vec![Slice(ChunkId([0; 32]), offset, len)];
                bundle.extend_from_slice(&data);
                pending.push((entry, true));
            }
            Done::Skipped(warning) => {
                skipped += 1;
                if warnings.len() < MAX_WARNINGS {
                    warnings.push(warning);
                }
            }
        }
        progress.files_done = stats.files;
        progress.bytes_done = stats.bytes;
        if let Some(cb) = &opts.progress
            && last_report.elapsed() > Duration::from_millis(200)
        {
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
    flush_bundle(&mut bundle, &mut pending, &mut index, &mut bundle_uploads)?;
    while let Some(r) = bundle_uploads.next().await {
        r.map_err(|e| Error::other("upload task failed").with_source(e))??;
    }
    if let Some(cb) = &opts.progress {
        progress.elapsed = started.elapsed();
        cb(&progress);
    }

    let spooled = index.finish()?;
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
    let chunks = referenced_chunks(&files_path, repo).await?;
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

/// Distinct chunks referenced by an uploaded index, sorted.
async fn referenced_chunks(files_path: &crate::ObjectPath, repo: &Repository) -> Result<Vec<ChunkId>> {
    let file = spool::download(repo.store(), files_path, None).await?;
    let name = files_path.to_string();
    tokio::task::spawn_blocking(move || -> Result<Vec<ChunkId>> {
        let mut set = HashSet::new();
        for e in SpoolReader::<_, FileEntry>::new(file, &name, FILES_KIND, FORMAT)? {
            set.extend(e?.slices.iter().map(|s| s.0));
        }
        let mut chunks: Vec<ChunkId> = set.into_iter().collect();
        chunks.sort_unstable();
        Ok(chunks)
    })
    .await
    .map_err(|e| Error::other("index task failed").with_source(e))?
}

/// Reads a volume backup's whole file index (checked against the manifest's hash).
pub async fn read_index(repo: &Repository, id: &BackupId) -> Result<Vec<FileEntry>> {
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
    let name = path.to_string();
    tokio::task::spawn_blocking(move || {
        SpoolReader::<_, FileEntry>::new(file, &name, FILES_KIND, FORMAT)?.collect()
    })
    .await
    .map_err(|e| Error::other("index task failed").with_source(e))?
}

/// Parses a file index from its stored bytes (for tools and fuzzing).
pub fn parse_index(name: &str, stored: &[u8]) -> Result<Vec<FileEntry>> {
    SpoolReader::<_, FileEntry>::new(stored, name, FILES_KIND, FORMAT)?.collect()
}

/// Settings of a volume restore.
#[derive(Clone)]
pub struct VolumeRestoreOptions {
    /// Where to restore to (created if missing).
    pub target: PathBuf,
    /// Files restored at once.
    pub concurrency: usize,
    /// Progress callback.
    pub progress: Option<ProgressFn>,
    /// Restore setuid and setgid bits as the index records them. Off by default: whoever can
    /// write the location writes the index, and a restore running with the right to set owners
    /// would otherwise plant setuid-root programs in the tenant's volumes.
    pub keep_set_id: bool,
}

impl VolumeRestoreOptions {
    /// Defaults for restoring into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            concurrency: 8,
            progress: None,
            keep_set_id: false,
        }
    }
}

impl std::fmt::Debug for VolumeRestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeRestoreOptions")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    /// Files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Chunks downloaded and verified.
    pub chunks_fetched: u64,
}

/// Splits an index path into its segments: relative, `/`-separated, no `..`, `.` or empty
/// segments, no NUL. The root is the empty path (no segments).
fn segments(rel: &str) -> Result<Vec<&str>> {
    if rel.is_empty() {
        return Ok(Vec::new());
    }
    let segs: Vec<&str> = rel.split('/').collect();
    if segs
        .iter()
        .any(|s| s.is_empty() || *s == "." || *s == ".." || s.contains('\0'))
    {
        return Err(Error::corrupt(format!(
            "file index entry {rel:?} is not a safe relative path"
        )));
    }
    Ok(segs)
}

/// Opens a directory below a handle: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
/// Directory handles a restore keeps open for reuse.
const CACHED_DIRS: usize = 64;

fn errno(what: impl std::fmt::Display, e: Errno) -> Error {
    Error::io(what, e.into())
}

/// Whether `name` in `dir` is a symlink (not followed).
fn is_symlink(dir: &OwnedFd, name: &str) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Symlink)
}

/// The restore target as a directory handle. Every path below it is opened one segment at a time
/// relative to its parent's handle without following symlinks, and files are created with
/// `O_EXCL | O_NOFOLLOW`: nothing already in the target, and nothing the restore creates, leads
/// outside it. Recently used directory handles are kept, so a file costs one `openat`.
struct Target {
    root: Arc<OwnedFd>,
    display: PathBuf,
    dirs: Mutex<VecDeque<(String, Arc<OwnedFd>)>>,
    /// The mode bits a restore may set (`0o7777`, or without setuid and setgid).
    mode_mask: u32,
}

impl Target {
    /// Creates (if missing) and opens the target. The target itself is the caller's choice and
    /// may be reached through a symlink; nothing below it is.
    fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let fd = rfs::openat(
            rfs::CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| errno(format!("opening {}", root.display()), e))?;
        Ok(Self {
            root: Arc::new(fd),
            display: root.to_path_buf(),
            dirs: Mutex::new(VecDeque::new()),
            mode_mask: 0o1777,
        })
    }

    fn shown(&self, rel: &str) -> PathBuf {
        self.display.join(rel)
    }

    fn cached(&self, key: &str) -> Option<Arc<OwnedFd>> {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.iter().find(|(k, _)| k == key).map(|(_, fd)| fd.clone())
    }

    fn remember(&self, key: String, fd: OwnedFd) -> Arc<OwnedFd> {
        let fd = Arc::new(fd);
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if dirs.len() >= CACHED_DIRS {
            dirs.pop_front();
        }
        dirs.push_back((key, fd.clone()));
        fd
    }

    /// The handle of the existing directory at `segs`; a symlink anywhere on the way is refused.
    fn dir(&self, segs: &[&str]) -> Result<Arc<OwnedFd>> {
        let Some((name, parents)) = segs.split_last() else {
            return Ok(self.root.clone());
        };
        let key = segs.join("/");
        if let Some(fd) = self.cached(&key) {
            return Ok(fd);
        }
        let parent = self.dir(parents)?;
        match rfs::openat(&*parent, *name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(self.remember(key, fd)),
            Err(Errno::LOOP | Errno::NOTDIR) => Err(Error::invalid(format!(
                "refusing to restore through {}: it is {}",
                self.shown(&key).display(),
                if is_symlink(&parent, name) {
                    "a symlink"
                } else {
                    "not a directory"
                }
            ))),
            Err(e) => Err(errno(format!("opening {}", self.shown(&key).display()), e)),
        }
    }

    /// Creates the directory at `segs` and any missing parent, and opens it. A symlink where a
    /// directory belongs is replaced by the directory, never followed.
    fn make_dir(&self, segs: &[&str]) -> Result<Arc<OwnedFd>> {
        let Some((name, parents)) = segs.split_last() else {
            return Ok(self.root.clone());
        };
        let key = segs.join("/");
        if let Some(fd) = self.cached(&key) {
            return Ok(fd);
        }
        let parent = self.make_dir(parents)?;
        let shown = || self.shown(&key);
        let mkdir = || match rfs::mkdirat(&*parent, *name, Mode::from_raw_mode(0o777)) {
            Ok(()) | Err(Errno::EXIST) => Ok(()),
            Err(e) => Err(errno(format!("creating {}", shown().display()), e)),
        };
        mkdir()?;
        let fd = match rfs::openat(&*parent, *name, DIR_FLAGS, Mode::empty()) {
            Err(Errno::LOOP | Errno::NOTDIR) if is_symlink(&parent, name) => {
                rfs::unlinkat(&*parent, *name, AtFlags::empty())
                    .map_err(|e| errno(format!("replacing the symlink {}", shown().display()), e))?;
                mkdir()?;
                rfs::openat(&*parent, *name, DIR_FLAGS, Mode::empty())
            }
            r => r,
        }
        .map_err(|e| errno(format!("opening the directory {}", shown().display()), e))?;
        Ok(self.remember(key, fd))
    }

    /// Creates the file `name` in `parent` afresh: whatever was there (a file, a symlink, a
    /// hard link to something else) is unlinked first, never written through.
    fn create_file(&self, parent: &OwnedFd, name: &str, rel: &str) -> Result<fs::File> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o600);
        let fd = match rfs::openat(parent, name, flags, mode) {
            Err(Errno::EXIST) => {
                match rfs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::ISDIR | Errno::PERM) if !is_symlink(parent, name) => {
                        return Err(Error::invalid(format!(
                            "{} exists as a directory",
                            self.shown(rel).display()
                        )));
                    }
                    Err(e) => return Err(errno(format!("replacing {}", self.shown(rel).display()), e)),
                }
                rfs::openat(parent, name, flags, mode)
            }
            r => r,
        }
        .map_err(|e| errno(format!("creating {}", self.shown(rel).display()), e))?;
        Ok(fs::File::from(fd))
    }
}

struct ChunkCache {
    repo: Repository,
    recent: Mutex<Vec<(ChunkId, Arc<Vec<u8>>)>>,
    fetched: std::sync::atomic::AtomicU64,
}

impl ChunkCache {
    async fn get(&self, id: ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some((_, d)) = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(c, _)| *c == id)
        {
            return Ok(d.clone());
        }
        let path = id.path();
        let stored = match self.repo.store().get(&path).await {
            Ok(g) => g.bytes_at_most(chunk::MAX_STORED_CHUNK).await?,
            Err(Error::NotFound { .. }) => {
                return Err(Error::not_found(format!(
                    "chunk {path} is missing from the location"
                )));
            }
            Err(e) => return Err(e),
        };
        let name = path.to_string();
        let plain = tokio::task::spawn_blocking(move || chunk::decode(&name, &stored, Some(&id)))
            .await
            .map_err(|e| Error::other("decode task failed").with_source(e))??;
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let plain = Arc::new(plain);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= 8 {
            recent.remove(0);
        }
        recent.push((id, plain.clone()));
        Ok(plain)
    }
}

fn owner(e: &FileEntry) -> (Option<rfs::Uid>, Option<rfs::Gid>) {
    (
        Some(rfs::Uid::from_raw_unchecked(e.uid)),
        Some(rfs::Gid::from_raw_unchecked(e.gid)),
    )
}

fn times(e: &FileEntry) -> rfs::Timestamps {
    let t = rfs::Timespec {
        tv_sec: e.mtime,
        tv_nsec: e.mtime_ns.into(),
    };
    rfs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Ownership needs privileges; without them entries keep the restoring user's ids.
fn chown_result(r: rustix::io::Result<()>, path: &Path) -> Result<()> {
    match r {
        Ok(()) | Err(Errno::PERM | Errno::ACCESS) => Ok(()),
        Err(e) => Err(errno(format!("setting the owner of {}", path.display()), e)),
    }
}

/// Sets owner, mode and times of an open file or directory.
fn apply_meta(fd: &impl std::os::fd::AsFd, path: &Path, e: &FileEntry, mask: u32) -> Result<()> {
    // Owner first: changing the owner clears setuid and setgid bits, so the mode comes after.
    let (uid, gid) = owner(e);
    chown_result(rfs::fchown(fd, uid, gid), path)?;
    rfs::fchmod(fd, Mode::from_raw_mode(e.mode & mask))
        .map_err(|err| errno(format!("setting the mode of {}", path.display()), err))?;
    rfs::futimens(fd, &times(e)).map_err(|err| errno(format!("setting the times of {}", path.display()), err))
}

async fn restore_file(cache: &ChunkCache, target: &Target, e: &FileEntry) -> Result<u64> {
    let segs = segments(&e.path)?;
    let Some((name, parents)) = segs.split_last() else {
        return Err(Error::corrupt("the file index lists the root as a file"));
    };
    let path = target.shown(&e.path);
    let parent = target.dir(parents)?;
    let mut file = target.create_file(&parent, name, &e.path)?;
    drop(parent);
    let mut pieces = stream::iter(e.slices.iter().copied())
        .map(|s| async move { cache.get(s.0).await.map(|d| (s, d)) })
        .buffered(4);
    let mut written = 0u64;
    while let Some((Slice(id, off, len), data)) = pieces.try_next().await? {
        let (off, len) = (off as usize, len as usize);
        let piece = data.get(off..off + len).ok_or_else(|| {
            Error::corrupt(format!(
                "{}: slice {off}+{len} is outside chunk {id} ({} bytes)",
                e.path,
                data.len()
            ))
        })?;
        // Leave holes for runs of zeros: sparse files stay sparse.
        for block in piece.chunks(64 << 10) {
            let res = if block.len() >= 4096 && block.iter().all(|b| *b == 0) {
                file.seek(SeekFrom::Current(block.len() as i64)).map(|_| ())
            } else {
                file.write_all(block)
            };
            res.map_err(|err| Error::io(format!("writing {}", path.display()), err))?;
        }
        written += piece.len() as u64;
    }
    if written != e.size {
        return Err(Error::corrupt(format!(
            "{}: the index says {} bytes, its slices hold {written}",
            e.path, e.size
        )));
    }
    file.set_len(written)
        .map_err(|err| Error::io(format!("sizing {}", path.display()), err))?;
    apply_meta(&file, &path, e, target.mode_mask)?;
    Ok(written)
}

fn restore_symlink(target: &Target, e: &FileEntry) -> Result<()> {
    let segs = segments(&e.path)?;
    let Some((name, parents)) = segs.split_last() else {
        return Err(Error::corrupt("the file index lists the root as a symlink"));
    };
    let path = target.shown(&e.path);
    let link = e
        .target
        .as_deref()
        .ok_or_else(|| Error::corrupt(format!("symlink {:?} has no target", e.path)))?;
    let parent = target.dir(parents)?;
    let create = || rfs::symlinkat(link, &*parent, *name);
    match create() {
        Err(Errno::EXIST) => {
            rfs::unlinkat(&*parent, *name, AtFlags::empty())
                .map_err(|err| errno(format!("replacing {}", path.display()), err))?;
            create()
        }
        r => r,
    }
    .map_err(|err| errno(format!("creating symlink {}", path.display()), err))?;
    let (uid, gid) = owner(e);
    chown_result(
        rfs::chownat(&*parent, *name, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
        &path,
    )?;
    rfs::utimensat(&*parent, *name, &times(e), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|err| errno(format!("setting the times of {}", path.display()), err))
}

/// Restores a volume backup into `opts.target`, verifying every chunk's hash. Directories, then
/// files, then symlinks (so nothing is written through a restored link), then directory modes and
/// times. Nothing is written outside the target: every path is opened below the target's handle
/// one segment at a time without following symlinks, and an entry already in the target (a file,
/// or a symlink where a file or directory belongs) is replaced, never written through.
pub async fn restore_volume(
    repo: &Repository,
    id: &BackupId,
    opts: VolumeRestoreOptions,
) -> Result<RestoreStats> {
    let entries = read_index(repo, id).await?;
    // Every path is checked before anything is written.
    for e in &entries {
        segments(&e.path)?;
    }
    let mut target = Target::open(&opts.target)?;
    if opts.keep_set_id {
        target.mode_mask = 0o7777;
    }
    let mut stats = RestoreStats::default();
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        target.make_dir(&segments(&e.path)?)?;
        stats.dirs += 1;
    }
    let cache = ChunkCache {
        repo: repo.clone(),
        recent: Mutex::new(Vec::new()),
        fetched: Default::default(),
    };
    let files: Vec<&FileEntry> = entries.iter().filter(|e| e.kind == EntryKind::File).collect();
    let mut progress = Progress {
        bytes_total: files.iter().map(|e| e.size).sum(),
        files_total: files.len() as u64,
        ..Progress::default()
    };
    let started = Instant::now();
    let mut last = Instant::now();
    let mut done = stream::iter(files)
        .map(|e| restore_file(&cache, &target, e))
        .buffered(opts.concurrency.max(1));
    while let Some(bytes) = done.try_next().await? {
        stats.files += 1;
        stats.bytes += bytes;
        progress.files_done = stats.files;
        progress.bytes_done = stats.bytes;
        if let Some(cb) = &opts.progress
            && last.elapsed() > Duration::from_millis(200)
        {
            progress.elapsed = started.elapsed();
            cb(&progress);
            last = Instant::now();
        }
    }
    drop(done);
    for e in entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
        restore_symlink(&target, e)?;
        stats.symlinks += 1;
    }
    // Deepest directories first, so setting a parent's time is not undone by its children.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir).rev() {
        let fd = target.dir(&segments(&e.path)?)?;
        apply_meta(&*fd, &target.shown(&e.path), e, target.mode_mask)?;
    }
    if let Some(cb) = &opts.progress {
        progress.elapsed = started.elapsed();
        cb(&progress);
    }
    stats.chunks_fetched = cache.fetched.load(std::sync::atomic::Ordering::Relaxed);
    Ok(stats)
}

#[cfg(test)]
mod tests {
    //! Restores stay inside their target: hostile file indexes and hostile targets.

    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;
    use crate::InMemory;

    fn repo() -> Repository {
        Repository::new(Arc::new(InMemory::new()))
    }

    /// Backs up `src`, then commits a second backup whose file index is `edit` of the first's
    /// (the chunks are the real ones, so only the paths are hostile).
    async fn forge(
        repo: &Repository,
        src: &Path,
        edit: impl FnOnce(Vec<FileEntry>) -> Vec<FileEntry>,
    ) -> BackupId {
        let real = backup_volume(repo, VolumeBackupOptions::new(src))
            .await
            .expect("backup");
        let entries = edit(read_index(repo, &real.id).await.expect("index"));
        let id = BackupId::new(std::time::SystemTime::now() + Duration::from_secs(1));
        let mut w = SpoolWriter::new(FILES_KIND, FORMAT).expect("spool");
        for e in &entries {
            w.push(e).expect("push");
        }
        let spooled = w.finish().expect("finish");
        let path = id.object_path(FILES_OBJECT).expect("path");
        let files = ManifestObject {
            name: FILES_OBJECT.into(),
            size: spooled.size,
            blake3: spooled.hash.clone(),
        };
        spooled
            .upload(repo.store(), &path, PutOptions::create())
            .await
            .expect("upload");
        let manifest = Manifest {
            id: id.clone(),
            objects: vec![files],
            ..real
        };
        repo.commit(&manifest).await.expect("commit");
        id
    }

    fn entry<'a>(entries: &'a [FileEntry], path: &str) -> &'a FileEntry {
        entries.iter().find(|e| e.path == path).expect("entry")
    }

    fn list(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Attack 2: index paths with `..` or absolute paths are refused; nothing lands outside.
    #[tokio::test]
    async fn index_paths_outside_the_target_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).expect("mkdir");
        fs::write(src.join("f.txt"), b"payload").expect("write");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        let repo = repo();
        let abs = outside.join("abs.txt").to_string_lossy().into_owned();
        for (kind, bad) in [
            (EntryKind::File, "../outside/escape.txt".to_owned()),
            (EntryKind::File, "sub/../../outside/escape.txt".to_owned()),
            (EntryKind::File, abs.clone()),
            (EntryKind::Dir, "../outside/escape-dir".to_owned()),
            (EntryKind::Symlink, "../outside/escape-link".to_owned()),
            (EntryKind::File, "./f.txt".to_owned()),
            (EntryKind::File, "a//b".to_owned()),
        ] {
            let id = forge(&repo, &src, |mut entries| {
                let mut e = entry(&entries, "f.txt").clone();
                e.path = bad.clone();
                e.kind = kind;
                if kind == EntryKind::Symlink {
                    e.target = Some("/etc/passwd".into());
                    e.slices.clear();
                    e.size = 0;
                }
                entries.push(e);
                entries
            })
            .await;
            let target = tmp.path().join("target");
            let err = restore_volume(&repo, &id, VolumeRestoreOptions::new(&target))
                .await
                .expect_err(&bad);
            assert!(
                err.to_string().contains("not a safe relative path"),
                "{bad}: {err}"
            );
            assert!(list(&outside).is_empty(), "{bad}: wrote {:?}", list(&outside));
            let _ = fs::remove_dir_all(&target);
        }
    }

    /// Attack 3: symlinks already in the target (at a file's path, at a directory's path, at a
    /// parent directory's path) are replaced or refused, never followed.
    #[tokio::test]
    async fn symlinks_already_in_the_target_are_not_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("dir")).expect("mkdir");
        fs::create_dir_all(src.join("sub")).expect("mkdir");
        fs::write(src.join("file.txt"), b"restored").expect("write");
        fs::write(src.join("sub/inner.txt"), b"restored inner").expect("write");
        fs::set_permissions(src.join("dir"), fs::Permissions::from_mode(0o700)).expect("chmod");
        filetime::set_file_mtime(src.join("dir"), filetime::FileTime::from_unix_time(1_000_000, 0))
            .expect("mtime");

        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("victim"), b"original").expect("write");
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).expect("chmod");
        let outside_before = fs::metadata(&outside).expect("stat");

        let repo = repo();
        let m = backup_volume(&repo, VolumeBackupOptions::new(&src))
            .await
            .expect("backup");
        let target = tmp.path().join("target");
        fs::create_dir_all(&target).expect("mkdir");
        symlink(outside.join("victim"), target.join("file.txt")).expect("symlink");
        symlink(&outside, target.join("dir")).expect("symlink");
        symlink(&outside, target.join("sub")).expect("symlink");

        let result = restore_volume(&repo, &m.id, VolumeRestoreOptions::new(&target)).await;

        assert_eq!(
            fs::read(outside.join("victim")).expect("read"),
            b"original",
            "{result:?}"
        );
        assert_eq!(list(&outside), vec!["victim".to_owned()], "{result:?}");
        let outside_after = fs::metadata(&outside).expect("stat");
        assert_eq!(
            (outside_after.mode(), outside_after.mtime()),
            (outside_before.mode(), outside_before.mtime()),
            "the mode and times of the directory outside changed: {result:?}"
        );
        result.expect("the restore replaces the links");
        for p in ["file.txt", "dir", "sub"] {
            assert!(
                !fs::symlink_metadata(target.join(p)).expect("stat").is_symlink(),
                "{p}"
            );
        }
        assert_eq!(fs::read(target.join("file.txt")).expect("read"), b"restored");
        assert_eq!(
            fs::read(target.join("sub/inner.txt")).expect("read"),
            b"restored inner"
        );
        assert_eq!(
            fs::metadata(target.join("dir")).expect("stat").mode() & 0o7777,
            0o700
        );
    }

    /// Attack 4: a symlink the restore itself creates is never a path to write through.
    #[tokio::test]
    async fn a_restored_symlink_is_not_a_path_for_later_entries() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d")).expect("mkdir");
        fs::write(src.join("d/passwd"), b"owned").expect("write");
        symlink("d", src.join("link")).expect("symlink");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        let repo = repo();
        let out = outside.to_string_lossy().into_owned();
        // The index lists the link `a -> outside` first, then entries under `a/`.
        let id = forge(&repo, &src, |entries| {
            let mut link = entry(&entries, "link").clone();
            link.path = "a".into();
            link.target = Some(out.clone());
            let mut dir = entry(&entries, "d").clone();
            dir.path = "a/x".into();
            let mut file = entry(&entries, "d/passwd").clone();
            file.path = "a/passwd".into();
            let mut link2 = entry(&entries, "link").clone();
            link2.path = "a/l".into();
            vec![entry(&entries, "").clone(), link, dir, file, link2]
        })
        .await;
        let target = tmp.path().join("target");
        let result = restore_volume(&repo, &id, VolumeRestoreOptions::new(&target)).await;
        assert!(
            list(&outside).is_empty(),
            "wrote {:?} outside: {result:?}",
            list(&outside)
        );
        assert!(result.is_err(), "a link over a directory is an error: {result:?}");

        // Only links: `b -> outside`, then a link `b/l` that would be created through it.
        let id = forge(&repo, &src, |entries| {
            let mut link = entry(&entries, "link").clone();
            link.path = "b".into();
            link.target = Some(out.clone());
            let mut link2 = entry(&entries, "link").clone();
            link2.path = "b/l".into();
            vec![entry(&entries, "").clone(), link, link2]
        })
        .await;
        let target = tmp.path().join("target2");
        let err = restore_volume(&repo, &id, VolumeRestoreOptions::new(&target))
            .await
            .expect_err("a path through a restored link");
        assert!(err.to_string().contains("a symlink"), "{err}");
        assert!(list(&outside).is_empty(), "wrote {:?} outside", list(&outside));
    }
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
