//! The file-level mover: backs a directory tree up into content-defined chunks and restores it.
//!
//! Backup walks the tree, reuses the chunk lists of files unchanged since the parent backup (same
//! size, mtime and inode) without reading them, splits changed files with FastCDC, hashes (BLAKE3),
//! compresses (zstd) and uploads chunks in parallel with a bounded number in flight, and packs
//! files smaller than the chunker's minimum into shared chunks ("bundles"), so many small files do
//! not become many tiny objects. The file index (a spooled, compressed JSON-lines object) and the
//! manifest are written last. Restore verifies every chunk's hash before writing it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, FuturesUnordered, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::chunk::{self, ChunkId};
use super::spool::{self, SpoolReader, SpoolWriter};
use super::{BackupId, BackupKind, BackupStats, BackupStatus, FORMAT, Manifest, ManifestObject, Repository};
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
    stats.chunks = count_chunks(&files_path, repo).await.unwrap_or_default();
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
    lock.check()?;
    repo.commit(&manifest).await?;
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

/// Distinct chunks referenced by an uploaded index (for the manifest's stats).
async fn count_chunks(files_path: &crate::ObjectPath, repo: &Repository) -> Result<u64> {
    let file = spool::download(repo.store(), files_path, None).await?;
    let name = files_path.to_string();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut set = HashSet::new();
        for e in SpoolReader::<_, FileEntry>::new(file, &name, FILES_KIND, FORMAT)? {
            set.extend(e?.slices.iter().map(|s| s.0));
        }
        Ok(set.len() as u64)
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
}

impl VolumeRestoreOptions {
    /// Defaults for restoring into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        Self {
            target: target.into(),
            concurrency: 8,
            progress: None,
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

/// Validates an index path: relative, no `..`, no empty or `.` segments.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf> {
    if rel.is_empty() {
        return Ok(root.to_path_buf());
    }
    let p = Path::new(rel);
    let ok = rel.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::corrupt(format!(
            "file index entry {rel:?} is not a safe relative path"
        )));
    }
    Ok(root.join(p))
}

/// Refuses to write through a symlink inside the restore target.
fn no_symlink_ancestors(root: &Path, path: &Path) -> Result<()> {
    let mut cur = path.parent();
    while let Some(d) = cur {
        if d == root || !d.starts_with(root) {
            break;
        }
        if fs::symlink_metadata(d)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            return Err(Error::invalid(format!(
                "refusing to restore through the symlink {}",
                d.display()
            )));
        }
        cur = d.parent();
    }
    Ok(())
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
            Ok(g) => g.bytes().await?,
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

fn apply_meta(path: &Path, e: &FileEntry) -> Result<()> {
    let io = |what: &str, err| Error::io(format!("{what} {}", path.display()), err);
    // Owner first: changing the owner clears setuid and setgid bits, so the mode comes after.
    // Ownership needs privileges; without them files keep the restoring user's ids.
    if let Err(err) = std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
        && err.kind() != std::io::ErrorKind::PermissionDenied
    {
        return Err(io("setting the owner of", err));
    }
    if e.kind != EntryKind::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(e.mode))
            .map_err(|err| io("setting the mode of", err))?;
    }
    let mtime = filetime::FileTime::from_unix_time(e.mtime, e.mtime_ns);
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(|err| io("setting the times of", err))
}

async fn restore_file(cache: &ChunkCache, root: &Path, e: &FileEntry) -> Result<u64> {
    let path = safe_join(root, &e.path)?;
    no_symlink_ancestors(root, &path)?;
    if fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
        return Err(Error::invalid(format!(
            "{} exists as a directory",
            path.display()
        )));
    }
    let mut pieces = stream::iter(e.slices.iter().copied())
        .map(|s| async move { cache.get(s.0).await.map(|d| (s, d)) })
        .buffered(4);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|err| Error::io(format!("creating {}", path.display()), err))?;
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
    drop(file);
    apply_meta(&path, e)?;
    Ok(written)
}

/// Restores a volume backup into `opts.target`, verifying every chunk's hash. Files are written in
/// place; directories, then files, then symlinks (so nothing is written through a restored link),
/// then directory modes and times.
pub async fn restore_volume(
    repo: &Repository,
    id: &BackupId,
    opts: VolumeRestoreOptions,
) -> Result<RestoreStats> {
    let entries = read_index(repo, id).await?;
    let root = opts.target.clone();
    fs::create_dir_all(&root).map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    let mut stats = RestoreStats::default();
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir) {
        let p = safe_join(&root, &e.path)?;
        no_symlink_ancestors(&root, &p)?;
        fs::create_dir_all(&p).map_err(|err| Error::io(format!("creating {}", p.display()), err))?;
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
        .map(|e| restore_file(&cache, &root, e))
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
        let p = safe_join(&root, &e.path)?;
        no_symlink_ancestors(&root, &p)?;
        if fs::symlink_metadata(&p).is_ok() {
            fs::remove_file(&p).map_err(|err| Error::io(format!("replacing {}", p.display()), err))?;
        }
        let target = e
            .target
            .as_deref()
            .ok_or_else(|| Error::corrupt(format!("symlink {:?} has no target", e.path)))?;
        std::os::unix::fs::symlink(target, &p)
            .map_err(|err| Error::io(format!("creating symlink {}", p.display()), err))?;
        apply_meta(&p, e)?;
        stats.symlinks += 1;
    }
    // Deepest directories first, so setting a parent's time is not undone by its children.
    for e in entries.iter().filter(|e| e.kind == EntryKind::Dir).rev() {
        apply_meta(&safe_join(&root, &e.path)?, e)?;
    }
    if let Some(cb) = &opts.progress {
        progress.elapsed = started.elapsed();
        cb(&progress);
    }
    stats.chunks_fetched = cache.fetched.load(std::sync::atomic::Ordering::Relaxed);
    Ok(stats)
}
