//! Restore of a volume backup: every chunk's hash checked, nothing written outside the target.
//!
//! Files are restored several at once (`VolumeRestoreOptions::concurrency`): chunks are fetched
//! and decoded once however many files share them (the bundles of small files), and every write,
//! create and metadata call runs on the blocking pool, so writes proceed in parallel. The small
//! files of one bundle go to the blocking pool in runs (up to 32 files, 1 MiB), one trip a run.
//! The file index is read entry by entry, a window of files at a time, never held whole.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;
use tokio::sync::OnceCell;

use super::{EntryKind, FileEntry, IndexFile, Progress, ProgressFn, Slice};
use crate::backup::chunk::{self, ChunkId};
use crate::backup::{BackupId, Repository};
use crate::{Error, Result};

/// Settings of a volume restore.
#[derive(Clone)]
pub struct VolumeRestoreOptions {
    /// Where to restore to (created if missing).
    pub target: PathBuf,
    /// Files, or runs of small files of one chunk, restored at once. Files of more than one
    /// chunk count here too, but at most four of them are restored at once (each holds a few
    /// chunks in memory).
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
            concurrency: 16,
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
    /// The most decoded chunks held in memory at once (bounded by [`max_chunks_held`], whatever
    /// the index says).
    pub chunks_held_peak: u64,
    /// The most file entries of the index held in memory at once (bounded by
    /// [`max_files_held`], however many files the backup has).
    pub files_held_peak: u64,
    /// The most directory entries of the index held in memory at once (at most
    /// [`MAX_DIRS_HELD`], however many directories the backup has).
    pub dirs_held_peak: u64,
}

/// The most decoded chunks (each at most [`chunk::MAX_CHUNK_SIZE`]) a restore with
/// `concurrency` files at once holds in memory: the [`KEPT_CHUNKS`] kept for sharing, a few ahead
/// for each of the [`LARGE_FILES_AT_ONCE`] multi-chunk files, and one for each other file.
pub fn max_chunks_held(concurrency: usize) -> usize {
    KEPT_CHUNKS + LARGE_FILES_AT_ONCE * (CHUNKS_AHEAD + 1) + concurrency.max(1)
}

/// File entries read from the index at a time: the files of one window are grouped into units
/// (see [`units`]) on their own, so a restore holds a few windows, never the whole index.
const WINDOW_FILES: usize = 1 << 16;

/// The most file entries a restore with `concurrency` holds in memory at once, whatever the
/// size of the index: the window being read, one waiting, one being handed out, and the units
/// of earlier windows still being written.
pub fn max_files_held(concurrency: usize) -> usize {
    windowed_files_held(WINDOW_FILES, concurrency)
}

fn windowed_files_held(window: usize, concurrency: usize) -> usize {
    3 * window + concurrency.max(1) * RUN_FILES
}

/// The most directory entries a restore holds in memory at once. A backup with no more is read
/// for them once (they are made first and given their modes and times last); one with more is
/// read again for them: once to make them, and once for every window of this many directories
/// to give them their modes and times, deepest first.
pub const MAX_DIRS_HELD: usize = 1 << 16;

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
    /// Taken around each file's creation, one per directory (striped by its handle): creations
    /// in one directory serialise on its inode lock in the kernel, where waiters spin on a CPU;
    /// here they sleep, and the CPU decodes and writes other files meanwhile.
    creating: [Mutex<()>; CREATE_STRIPES],
}

/// Lock stripes for file creation (see [`Target::creating`]).
const CREATE_STRIPES: usize = 16;

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
            creating: Default::default(),
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
        let stripe = std::os::fd::AsRawFd::as_raw_fd(parent) as usize % CREATE_STRIPES;
        let _creating = self.creating[stripe].lock().unwrap_or_else(|e| e.into_inner());
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

/// Files of more than one chunk restored at once (each fetches a few chunks ahead).
const LARGE_FILES_AT_ONCE: usize = 4;

/// Decoded chunks kept for files that share them; a chunk being fetched is fetched once, however
/// many files wait for it.
const KEPT_CHUNKS: usize = 16;

/// Chunks a multi-chunk file fetches ahead of the one it writes.
const CHUNKS_AHEAD: usize = 4;

/// A cell per chunk asked for (filled once it is decoded), and the order they were asked in.
type Slots = (HashMap<ChunkId, Arc<OnceCell<Arc<Decoded>>>>, VecDeque<ChunkId>);

/// Counts what is alive (decoded chunks, file entries), and the most at once.
#[derive(Default)]
struct Held {
    now: std::sync::atomic::AtomicU64,
    peak: std::sync::atomic::AtomicU64,
}

impl Held {
    fn add(&self, n: u64) {
        let now = self.now.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        self.peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    fn sub(&self, n: u64) {
        self.now.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A decoded chunk, counted in [`Held`] while it lives.
struct Decoded {
    bytes: Bytes,
    held: Arc<Held>,
}

impl Decoded {
    fn new(bytes: Bytes, held: Arc<Held>) -> Self {
        held.add(1);
        Self { bytes, held }
    }
}

impl Drop for Decoded {
    fn drop(&mut self) {
        self.held.sub(1);
    }
}

impl std::ops::Deref for Decoded {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The chunks of a restore: each fetched, checked and decoded once while it is among the
/// [`KEPT_CHUNKS`] most recently asked for.
struct ChunkCache {
    repo: Repository,
    slots: Mutex<Slots>,
    fetched: std::sync::atomic::AtomicU64,
    held: Arc<Held>,
}

impl ChunkCache {
    fn new(repo: Repository) -> Self {
        Self {
            repo,
            slots: Mutex::new((HashMap::new(), VecDeque::new())),
            fetched: Default::default(),
            held: Default::default(),
        }
    }

    async fn get(&self, id: ChunkId) -> Result<Arc<Decoded>> {
        let cell = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            let (map, order) = &mut *slots;
            match map.get(&id) {
                Some(cell) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    map.insert(id, cell.clone());
                    order.push_back(id);
                    while order.len() > KEPT_CHUNKS {
                        if let Some(old) = order.pop_front() {
                            map.remove(&old);
                        }
                    }
                    cell
                }
            }
        };
        cell.get_or_try_init(|| self.fetch(id)).await.cloned()
    }

    async fn fetch(&self, id: ChunkId) -> Result<Arc<Decoded>> {
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
        let plain = tokio::task::spawn_blocking(move || chunk::decode_bytes(&name, stored, Some(&id)))
            .await
            .map_err(|e| Error::other("decode task failed").with_source(e))??;
        self.fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Arc::new(Decoded::new(plain, self.held.clone())))
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

/// Blocks of this size that hold only zeros are left as holes.
const HOLE_BLOCK: usize = 64 << 10;

/// A file being restored: created on its first piece, written piece by piece on the blocking pool.
struct FileWriter {
    target: Arc<Target>,
    entry: Arc<FileEntry>,
    file: Option<fs::File>,
    written: u64,
    /// The last block was left as a hole: the file must be sized explicitly.
    hole_at_end: bool,
}

impl FileWriter {
    fn new(target: &Arc<Target>, entry: Arc<FileEntry>) -> Self {
        Self {
            target: target.clone(),
            entry,
            file: None,
            written: 0,
            hole_at_end: false,
        }
    }

    fn path(&self) -> PathBuf {
        self.target.shown(&self.entry.path)
    }

    fn open(&mut self) -> Result<&mut fs::File> {
        if self.file.is_none() {
            let segs = segments(&self.entry.path)?;
            let Some((name, parents)) = segs.split_last() else {
                return Err(Error::corrupt("the file index lists the root as a file"));
            };
            let parent = self.target.dir(parents)?;
            self.file = Some(self.target.create_file(&parent, name, &self.entry.path)?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| Error::other("restored file not open"))
    }

    /// Writes `piece`, leaving holes for runs of zeros so sparse files stay sparse.
    fn write(&mut self, piece: &[u8]) -> Result<()> {
        let path = self.path();
        let file = self.open()?;
        let mut hole = false;
        // Blocks of zeros are skipped; the data between them goes in one write.
        let mut data = 0..0;
        for (i, block) in piece.chunks(HOLE_BLOCK).enumerate() {
            hole = block.len() >= 4096 && block.iter().all(|b| *b == 0);
            if hole {
                let res = file
                    .write_all(&piece[data.clone()])
                    .and_then(|()| file.seek(SeekFrom::Current(block.len() as i64)));
                res.map_err(|err| Error::io(format!("writing {}", path.display()), err))?;
                let next = i * HOLE_BLOCK + block.len();
                data = next..next;
            } else {
                data.end += block.len();
            }
        }
        file.write_all(&piece[data])
            .map_err(|err| Error::io(format!("writing {}", path.display()), err))?;
        if !piece.is_empty() {
            self.hole_at_end = hole;
        }
        self.written += piece.len() as u64;
        Ok(())
    }

    /// Checks the size, sizes the file if it ends in a hole, and sets owner, mode and times.
    fn finish(&mut self) -> Result<u64> {
        let (path, size, written) = (self.path(), self.entry.size, self.written);
        if written != size {
            return Err(Error::corrupt(format!(
                "{}: the index says {size} bytes, its slices hold {written}",
                self.entry.path
            )));
        }
        let (hole_at_end, mask) = (self.hole_at_end, self.target.mode_mask);
        let entry = self.entry.clone();
        let file = self.open()?;
        if hole_at_end {
            file.set_len(written)
                .map_err(|err| Error::io(format!("sizing {}", path.display()), err))?;
        }
        apply_meta(file, &path, &entry, mask)?;
        Ok(written)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::other("restore task failed").with_source(e))?
}

/// The bytes of `slice` in its decoded chunk: a slice outside the chunk is corruption.
fn piece<'a>(e: &FileEntry, slice: &Slice, data: &'a [u8]) -> Result<&'a [u8]> {
    let Slice(id, off, len) = slice;
    let (off, len) = (*off as usize, *len as usize);
    data.get(off..off + len).ok_or_else(|| {
        Error::corrupt(format!(
            "{}: slice {off}+{len} is outside chunk {id} ({} bytes)",
            e.path,
            data.len()
        ))
    })
}

/// Restores one file: its chunks are fetched (a few ahead) while earlier pieces are written.
async fn restore_file(
    cache: &ChunkCache,
    target: &Arc<Target>,
    large: &tokio::sync::Semaphore,
    e: Arc<FileEntry>,
) -> Result<u64> {
    let _slot = if e.slices.len() > 1 {
        Some(
            large
                .acquire()
                .await
                .map_err(|_| Error::other("restore slots closed"))?,
        )
    } else {
        None
    };
    let slices = e.slices.clone();
    let last = slices.len().saturating_sub(1);
    let mut writer = Some(FileWriter::new(target, e.clone()));
    if slices.is_empty() {
        let mut w = writer.take().ok_or_else(|| Error::other("restored file lost"))?;
        return blocking(move || w.finish()).await;
    }
    let mut pieces = stream::iter(slices.into_iter().enumerate())
        .map(|(i, s)| async move { cache.get(s.0).await.map(|d| (i, s, d)) })
        .buffered(CHUNKS_AHEAD);
    let mut written = 0;
    while let Some((i, slice, data)) = pieces.try_next().await? {
        let mut w = writer.take().ok_or_else(|| Error::other("restored file lost"))?;
        let (w, n) = blocking(move || {
            let e = w.entry.clone();
            w.write(piece(&e, &slice, &data)?)?;
            let n = if i == last { w.finish()? } else { 0 };
            Ok((w, n))
        })
        .await?;
        writer = Some(w);
        written = n;
    }
    Ok(written)
}

/// Small files written in one trip to the blocking pool: at most this many...
const RUN_FILES: usize = 32;
/// ...of at most this many bytes together.
const RUN_BYTES: u64 = 1 << 20;

/// What one restore task does: a file on its own, or a run of small files that are all in one
/// chunk (or all empty), written one after another in one trip to the blocking pool. Each holds
/// at most one decoded chunk at a time, as a file on its own did.
enum Unit {
    File(Arc<FileEntry>),
    Run(Option<ChunkId>, Vec<Arc<FileEntry>>),
}

impl Unit {
    /// The files of the unit.
    fn files(&self) -> u64 {
        match self {
            Unit::File(_) => 1,
            Unit::Run(_, files) => files.len() as u64,
        }
    }
}

/// Splits the files of one window of the index into [`Unit`]s. Every file of more than one
/// slice, or of a slice above [`RUN_BYTES`], is a unit of its own; these come first, largest
/// first, so the longest files start early and the runs fill the other slots beside them instead
/// of the largest file running alone at the end. Then the other files (the files of a bundle,
/// and empty files) grouped by their chunk, chunks in the order the index first names them and
/// files in index order within a chunk, into runs of up to [`RUN_FILES`] files and
/// [`RUN_BYTES`] bytes.
fn units(files: Vec<Arc<FileEntry>>) -> Vec<Unit> {
    let mut first_seen: HashMap<Option<ChunkId>, usize> = HashMap::new();
    let mut small = Vec::new();
    let mut alone = Vec::new();
    for e in files {
        let chunk = match e.slices.as_slice() {
            [] => None,
            [Slice(id, _, len)] if u64::from(*len) <= RUN_BYTES => Some(*id),
            _ => {
                alone.push(e);
                continue;
            }
        };
        let next = first_seen.len();
        let order = *first_seen.entry(chunk).or_insert(next);
        small.push((order, chunk, e));
    }
    drop(first_seen);
    // Stable: files of one chunk keep their index order.
    small.sort_by_key(|(order, _, _)| *order);
    let mut runs: Vec<Unit> = Vec::new();
    let mut bytes = 0;
    for (_, chunk, e) in small {
        let size = e.slices.first().map_or(0, |s| u64::from(s.2));
        match runs.last_mut() {
            Some(Unit::Run(c, run)) if *c == chunk && run.len() < RUN_FILES && bytes + size <= RUN_BYTES => {
                bytes += size;
                run.push(e);
            }
            _ => {
                bytes = size;
                runs.push(Unit::Run(chunk, vec![e]));
            }
        }
    }
    // Stable: files of one size keep their index order.
    alone.sort_by_key(|e| std::cmp::Reverse(e.size));
    alone.into_iter().map(Unit::File).chain(runs).collect()
}

/// Restores a run of small files of one chunk (or empty files): the chunk is fetched once, then
/// every file is created, written and finished in one blocking call. Returns files and bytes.
async fn restore_run(
    cache: &ChunkCache,
    target: &Arc<Target>,
    chunk: Option<ChunkId>,
    files: Vec<Arc<FileEntry>>,
) -> Result<(u64, u64)> {
    let data = match chunk {
        Some(id) => Some(cache.get(id).await?),
        None => None,
    };
    let target = target.clone();
    blocking(move || {
        let mut bytes = 0;
        for e in &files {
            let mut w = FileWriter::new(&target, e.clone());
            if let (Some(slice), Some(data)) = (e.slices.first(), &data) {
                w.write(piece(e, slice, data)?)?;
            }
            bytes += w.finish()?;
        }
        Ok((files.len() as u64, bytes))
    })
    .await
}

async fn restore_unit(
    cache: &ChunkCache,
    target: &Arc<Target>,
    large: &tokio::sync::Semaphore,
    unit: Unit,
) -> Result<(u64, u64)> {
    match unit {
        Unit::File(e) => restore_file(cache, target, large, e).await.map(|n| (1, n)),
        Unit::Run(chunk, files) => restore_run(cache, target, chunk, files).await,
    }
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

/// Reads the index's files in windows of `window` and sends each window's [`Unit`]s; a read
/// error is sent as the last message. Stops when the restore no longer listens. Every file
/// entry read is counted in `held` until its unit is done.
fn read_windows(
    index: &IndexFile,
    window: usize,
    held: &Held,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<Unit>>>,
) {
    let send = |w| tx.blocking_send(w).is_ok();
    let entries = match index.entries() {
        Ok(entries) => entries,
        Err(e) => {
            send(Err(e));
            return;
        }
    };
    let mut files = Vec::new();
    for e in entries {
        match e {
            Err(e) => {
                send(Err(e));
                return;
            }
            Ok(e) if e.kind == EntryKind::File => {
                held.add(1);
                files.push(Arc::new(e));
                if files.len() >= window && !send(Ok(units(std::mem::take(&mut files)))) {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
    if !files.is_empty() {
        send(Ok(units(files)));
    }
}

/// Restores one unit and counts its files out of `held`.
async fn restore_counted(
    cache: &ChunkCache,
    target: &Arc<Target>,
    large: &tokio::sync::Semaphore,
    held: &Held,
    unit: Result<Unit>,
) -> Result<(u64, u64)> {
    let unit = unit?;
    let files = unit.files();
    let done = restore_unit(cache, target, large, unit).await;
    held.sub(files);
    done
}

/// Restores a volume backup into `opts.target`, verifying every chunk's hash. Directories, then
/// files, then symlinks (so nothing is written through a restored link), then directory modes and
/// times. Nothing is written outside the target: every path is opened below the target's handle
/// one segment at a time without following symlinks, and an entry already in the target (a file,
/// or a symlink where a file or directory belongs) is replaced, never written through.
///
/// The file index is downloaded once and read entry by entry: memory holds its directories and
/// at most [`max_files_held`] file entries, however many files the backup has.
pub async fn restore_volume(
    repo: &Repository,
    id: &BackupId,
    opts: VolumeRestoreOptions,
) -> Result<RestoreStats> {
    restore_windowed(repo, id, opts, WINDOW_FILES, MAX_DIRS_HELD).await
}

/// The directory entries of the index from the `start`-th to before the `end`-th, in index order.
fn dirs_between(index: &IndexFile, start: usize, end: usize) -> Result<Vec<FileEntry>> {
    let mut dirs = Vec::with_capacity(end.saturating_sub(start));
    let mut n = 0;
    for e in index.entries()? {
        let e = e?;
        if e.kind == EntryKind::Dir {
            if (start..end).contains(&n) {
                dirs.push(e);
            }
            n += 1;
            if n >= end {
                break;
            }
        }
    }
    Ok(dirs)
}

async fn restore_windowed(
    repo: &Repository,
    id: &BackupId,
    opts: VolumeRestoreOptions,
    window: usize,
    dirs_window: usize,
) -> Result<RestoreStats> {
    let index = Arc::new(IndexFile::download(repo, id).await?);
    // Every path is checked before anything is written. Kept: the directories while there are
    // no more than `dirs_window` of them, and the totals for progress.
    let (kept, dirs_total, files_total, bytes_total) = {
        let index = index.clone();
        blocking(move || {
            let (mut kept, mut dirs) = (Some(Vec::new()), 0usize);
            let (mut files, mut bytes) = (0u64, 0u64);
            for e in index.entries()? {
                let e = e?;
                segments(&e.path)?;
                match e.kind {
                    EntryKind::Dir => {
                        dirs += 1;
                        match &mut kept {
                            Some(k) if k.len() < dirs_window => k.push(e),
                            _ => kept = None,
                        }
                    }
                    EntryKind::File => {
                        files += 1;
                        bytes = bytes.saturating_add(e.size);
                    }
                    EntryKind::Symlink => {}
                }
            }
            if let Some(k) = &mut kept {
                k.shrink_to_fit();
            }
            Ok((kept, dirs, files, bytes))
        })
        .await?
    };
    let mut target = Target::open(&opts.target)?;
    if opts.keep_set_id {
        target.mode_mask = 0o7777;
    }
    let target = Arc::new(target);
    let mut stats = RestoreStats {
        dirs_held_peak: kept.as_ref().map_or(0, |k| k.len() as u64),
        ..RestoreStats::default()
    };
    match &kept {
        Some(dirs) => {
            for e in dirs {
                target.make_dir(&segments(&e.path)?)?;
            }
        }
        None => {
            let (index, target) = (index.clone(), target.clone());
            blocking(move || {
                for e in index.entries()? {
                    let e = e?;
                    if e.kind == EntryKind::Dir {
                        target.make_dir(&segments(&e.path)?)?;
                    }
                }
                Ok(())
            })
            .await?;
        }
    }
    stats.dirs = dirs_total as u64;
    let cache = ChunkCache::new(repo.clone());
    let large = tokio::sync::Semaphore::new(LARGE_FILES_AT_ONCE);
    let held = Arc::new(Held::default());
    let mut progress = Progress {
        bytes_total,
        files_total,
        ..Progress::default()
    };
    let started = Instant::now();
    let mut last = Instant::now();
    // One window waits while the one before is handed out.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let reader = {
        let (index, held) = (index.clone(), held.clone());
        tokio::task::spawn_blocking(move || read_windows(&index, window.max(1), &held, &tx))
    };
    let windows = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|w| (w, rx)) });
    let units = windows.flat_map(|w: Result<Vec<Unit>>| {
        stream::iter(match w {
            Ok(units) => units.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        })
    });
    let mut done = std::pin::pin!(
        units
            .map(|u| restore_counted(&cache, &target, &large, &held, u))
            .buffer_unordered(opts.concurrency.max(1))
    );
    while let Some((files, bytes)) = done.try_next().await? {
        stats.files += files;
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
    // The reader is done (it closed the channel); the index is read once more, for the symlinks.
    reader
        .await
        .map_err(|e| Error::other("index task failed").with_source(e))?;
    stats.symlinks = {
        let (index, target) = (index.clone(), target.clone());
        blocking(move || {
            let mut n = 0;
            for e in index.entries()? {
                let e = e?;
                if e.kind == EntryKind::Symlink {
                    restore_symlink(&target, &e)?;
                    n += 1;
                }
            }
            Ok(n)
        })
        .await?
    };
    // Deepest directories first (the reverse of index order), so setting a parent's time is not
    // undone by its children, nor its mode closed before them: the kept ones, or a window of
    // them at a time from the end.
    let mut end = dirs_total;
    while end > 0 {
        let start = end.saturating_sub(dirs_window.max(1));
        let dirs = match &kept {
            Some(dirs) => {
                end = 0;
                std::borrow::Cow::Borrowed(dirs)
            }
            None => {
                let index = index.clone();
                let dirs = blocking(move || dirs_between(&index, start, end)).await?;
                stats.dirs_held_peak = stats.dirs_held_peak.max(dirs.len() as u64);
                end = start;
                std::borrow::Cow::Owned(dirs)
            }
        };
        for e in dirs.iter().rev() {
            let fd = target.dir(&segments(&e.path)?)?;
            apply_meta(&*fd, &target.shown(&e.path), e, target.mode_mask)?;
        }
    }
    if let Some(cb) = &opts.progress {
        progress.elapsed = started.elapsed();
        cb(&progress);
    }
    stats.chunks_fetched = cache.fetched.load(std::sync::atomic::Ordering::Relaxed);
    stats.chunks_held_peak = cache.held.peak();
    stats.files_held_peak = held.peak();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    //! Restores stay inside their target: hostile file indexes and hostile targets.

    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::super::*;
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
    async fn a_chunk_many_files_share_is_fetched_and_checked_once() {
        let src = tempfile::tempdir().expect("tmp");
        for i in 0..300 {
            fs::write(src.path().join(format!("f{i:03}")), format!("{i}").repeat(300)).expect("write");
        }
        let repo = repo();
        let m = backup_volume(&repo, VolumeBackupOptions::new(src.path()))
            .await
            .expect("backup");
        assert_eq!(
            m.stats.chunks, 1,
            "the small files share one bundle: {:?}",
            m.stats
        );
        let dst = tempfile::tempdir().expect("tmp");
        let mut opts = VolumeRestoreOptions::new(dst.path());
        opts.concurrency = 32;
        let stats = restore_volume(&repo, &m.id, opts).await.expect("restore");
        assert_eq!(stats.files, 300);
        assert_eq!(stats.chunks_fetched, 1, "{stats:?}");
        assert_eq!(
            fs::read(dst.path().join("f123")).expect("read"),
            "123".repeat(300).as_bytes()
        );
    }

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

    /// A hostile index cannot make a restore hold more decoded chunks than the bound: 200 files
    /// of 1 KiB from each of 40 different 600 KiB chunks, each file starting at another chunk so
    /// that no cache order helps.
    #[tokio::test]
    async fn the_chunks_a_restore_holds_stay_bounded_whatever_the_index_says() {
        let src = tempfile::tempdir().expect("tmp");
        for i in 0..40 {
            let body = crate::backup::chunk::test_noise(0x2545_f491_4f6c_dd1d + i, 600 << 10);
            fs::write(src.path().join(format!("big{i:02}")), body).expect("write");
        }
        let repo = repo();
        let id = forge(&repo, src.path(), |entries| {
            let chunks: Vec<ChunkId> = entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .flat_map(|e| e.slices.iter().map(|s| s.0))
                .collect();
            assert!(chunks.len() >= 40, "{} chunks", chunks.len());
            let root = entries.iter().find(|e| e.path.is_empty()).cloned().expect("root");
            let file = entries
                .iter()
                .find(|e| e.kind == EntryKind::File)
                .cloned()
                .expect("file");
            let mut forged = vec![root];
            for i in 0..200 {
                let slices: Vec<Slice> = (0..chunks.len())
                    .map(|k| Slice(chunks[(i + k) % chunks.len()], 0, 1024))
                    .collect();
                forged.push(FileEntry {
                    path: format!("f{i:03}"),
                    size: 1024 * slices.len() as u64,
                    slices,
                    ..file.clone()
                });
            }
            forged
        })
        .await;
        let dst = tempfile::tempdir().expect("tmp");
        let stats = restore_volume(&repo, &id, VolumeRestoreOptions::new(dst.path()))
            .await
            .expect("restore");
        assert_eq!(stats.files, 200);
        let bound = max_chunks_held(VolumeRestoreOptions::new(dst.path()).concurrency) as u64;
        assert!(
            0 < stats.chunks_held_peak && stats.chunks_held_peak <= bound,
            "held {} decoded chunks at once (bound {bound}); fetched {}",
            stats.chunks_held_peak,
            stats.chunks_fetched
        );
        assert!(
            stats.chunks_fetched > 40,
            "the cache cannot hold them all: {stats:?}"
        );
    }

    fn small(path: &str, chunk: u8, len: u32) -> Arc<FileEntry> {
        Arc::new(FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_ns: 0,
            size: len.into(),
            ino: 0,
            target: None,
            slices: if len == 0 {
                Vec::new()
            } else {
                vec![Slice(ChunkId([chunk; 32]), 0, len)]
            },
        })
    }

    /// Pieces of data and zeros, the zeros at and across block edges and at the end: the file
    /// holds exactly their bytes, and the zero blocks are holes.
    #[test]
    fn written_pieces_keep_their_bytes_and_leave_zero_blocks_as_holes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tmp");
        let noise = crate::backup::chunk::test_noise(5, 400 << 10);
        let zeros = vec![0u8; 1 << 20];
        let pieces: Vec<&[u8]> = vec![
            &noise[..100 << 10],
            &zeros[..200 << 10],
            &noise[100 << 10..110 << 10],
            &zeros[..3000],
            &noise[110 << 10..(170 << 10) + 17],
            &zeros,
            &noise[200 << 10..(200 << 10) + 5000],
            &zeros[..700 << 10],
        ];
        let want: Vec<u8> = pieces.concat();
        let target = Arc::new(Target::open(dir.path()).expect("target"));
        let mut w = FileWriter::new(&target, small("f", 1, want.len() as u32));
        for p in &pieces {
            w.write(p).expect("write");
        }
        assert_eq!(w.finish().expect("finish"), want.len() as u64);
        let path = dir.path().join("f");
        assert!(fs::read(&path).expect("read") == want, "restored bytes differ");
        let allocated = fs::metadata(&path).expect("meta").blocks() * 512;
        assert!(
            allocated < 900 << 10,
            "{allocated} bytes allocated for {} bytes of which 1.9 MiB are zeros",
            want.len()
        );
    }

    fn shape(units: &[Unit]) -> Vec<(Option<u8>, Vec<String>)> {
        units
            .iter()
            .map(|u| match u {
                Unit::File(e) => (None, vec![format!("alone:{}", e.path)]),
                Unit::Run(c, files) => (
                    Some(c.map_or(0, |c| c.0[0])),
                    files.iter().map(|e| e.path.clone()).collect(),
                ),
            })
            .collect()
    }

    /// Small files of alternating bundles are grouped by bundle (in the order the index first
    /// names them, files in index order), runs are cut at 32 files and at 1 MiB, and files of
    /// more than one slice or of a slice above 1 MiB are units of their own, first, largest
    /// first.
    #[test]
    fn small_files_are_grouped_into_runs_by_chunk() {
        let mut files = Vec::new();
        for i in 0..70 {
            files.push(small(&format!("a{i:02}"), 1 + (i % 2) as u8, 1000));
        }
        files.push(small("empty1", 0, 0));
        let mut two = (*small("two", 4, 10)).clone();
        two.slices.push(Slice(ChunkId([5; 32]), 0, 10));
        two.size = 20;
        files.push(Arc::new(two));
        files.push(small("big", 3, (1 << 20) + 1));
        files.push(small("empty2", 0, 0));
        for i in 0..3 {
            files.push(small(&format!("m{i}"), 6, 400 << 10));
        }
        let got = shape(&units(files));
        let names = |range: std::ops::Range<usize>, step: usize| -> Vec<String> {
            range.step_by(step).map(|i| format!("a{i:02}")).collect()
        };
        let want = vec![
            (None, vec!["alone:big".into()]),
            (None, vec!["alone:two".into()]),
            (Some(1), names(0..64, 2)),
            (Some(1), names(64..70, 2)),
            (Some(2), names(1..65, 2)),
            (Some(2), names(65..70, 2)),
            (Some(0), vec!["empty1".into(), "empty2".into()]),
            (Some(6), vec!["m0".into(), "m1".into()]),
            (Some(6), vec!["m2".into()]),
        ];
        assert_eq!(got, want);
    }

    /// Runs of single-slice files from 40 chunks in rotation: every file gets its own bytes, and
    /// the decoded chunks held at once stay within the bound.
    #[tokio::test]
    async fn runs_of_small_files_restore_their_own_bytes_within_the_bound() {
        let src = tempfile::tempdir().expect("tmp");
        for i in 0..40 {
            let body = crate::backup::chunk::test_noise(0x9e37_79b9 + i, 600 << 10);
            fs::write(src.path().join(format!("big{i:02}")), body).expect("write");
        }
        let repo = repo();
        let mut origin = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        let id = forge(&repo, src.path(), |entries| {
            let firsts: Vec<(String, Slice)> = entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| (e.path.clone(), e.slices[0]))
                .collect();
            assert!(firsts.len() == 40, "{} files", firsts.len());
            distinct.extend(firsts.iter().map(|(_, s)| s.0));
            let root = entries.iter().find(|e| e.path.is_empty()).cloned().expect("root");
            let file = entries
                .iter()
                .find(|e| e.kind == EntryKind::File)
                .cloned()
                .expect("file");
            let mut forged = vec![root];
            for i in 0..400u32 {
                let (path, Slice(chunk, off, len)) = &firsts[i as usize % firsts.len()];
                let skip = (i / 40) * 100;
                assert!(skip + 1024 <= *len);
                origin.push((format!("f{i:03}"), path.clone(), skip as usize));
                forged.push(FileEntry {
                    path: format!("f{i:03}"),
                    size: 1024,
                    slices: vec![Slice(*chunk, off + skip, 1024)],
                    ..file.clone()
                });
            }
            forged
        })
        .await;
        let dst = tempfile::tempdir().expect("tmp");
        let mut opts = VolumeRestoreOptions::new(dst.path());
        opts.concurrency = 4;
        let stats = restore_volume(&repo, &id, opts).await.expect("restore");
        assert_eq!((stats.files, stats.bytes), (400, 400 * 1024), "{stats:?}");
        for (name, from, skip) in origin {
            let want = fs::read(src.path().join(&from)).expect("source");
            assert_eq!(
                fs::read(dst.path().join(&name)).expect("restored"),
                &want[skip..skip + 1024],
                "{name} (from {from} at {skip})"
            );
        }
        let bound = max_chunks_held(4) as u64;
        assert!(
            0 < stats.chunks_held_peak && stats.chunks_held_peak <= bound,
            "held {} (bound {bound})",
            stats.chunks_held_peak
        );
        assert!(distinct.len() > 4, "{} chunks", distinct.len());
        assert_eq!(
            stats.chunks_fetched,
            distinct.len() as u64,
            "one fetch a chunk: {stats:?}"
        );
    }

    /// A small file in a run whose slice runs past its chunk, or whose size disagrees with its
    /// slice, fails the restore as corruption.
    #[tokio::test]
    async fn a_run_refuses_slices_outside_their_chunk_and_wrong_sizes() {
        let src = tempfile::tempdir().expect("tmp");
        for i in 0..5 {
            fs::write(src.path().join(format!("s{i}")), format!("{i}").repeat(2000)).expect("write");
        }
        let repo = repo();
        for (case, want) in [("outside", "is outside chunk"), ("size", "the index says")] {
            let id = forge(&repo, src.path(), |mut entries| {
                let e = entries.iter_mut().find(|e| e.path == "s3").expect("s3");
                match case {
                    "outside" => e.slices[0].1 += 9000,
                    _ => e.size += 1,
                }
                entries
            })
            .await;
            let dst = tempfile::tempdir().expect("tmp");
            let err = restore_volume(&repo, &id, VolumeRestoreOptions::new(dst.path()))
                .await
                .expect_err(case);
            assert!(
                matches!(err, Error::Corrupt { .. }) && err.to_string().contains(want),
                "{case}: {err}"
            );
        }
    }

    /// The tree of `root`: every entry's kind, mode, mtime (files and directories) and content
    /// or link target, by relative path.
    fn tree(root: &Path) -> std::collections::BTreeMap<String, (u32, i64, Vec<u8>)> {
        use std::os::unix::fs::MetadataExt;
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(dir) = todo.pop() {
            for e in fs::read_dir(&dir).expect("dir").flatten() {
                let p = e.path();
                let rel = p.strip_prefix(root).expect("below").display().to_string();
                let m = fs::symlink_metadata(&p).expect("meta");
                let body = if m.file_type().is_symlink() {
                    fs::read_link(&p)
                        .expect("link")
                        .display()
                        .to_string()
                        .into_bytes()
                } else if m.is_dir() {
                    todo.push(p.clone());
                    Vec::new()
                } else {
                    fs::read(&p).expect("file")
                };
                let mtime = if m.file_type().is_symlink() { 0 } else { m.mtime() };
                out.insert(rel, (m.mode(), mtime, body));
            }
        }
        out
    }

    /// A restore reads the index in windows: however many files and directories a backup has,
    /// it holds at most [`windowed_files_held`] files and a window of directories, and restores
    /// the same tree (contents, modes, times, symlinks) as when it holds them all.
    #[tokio::test]
    async fn a_restore_holds_a_window_of_the_index_not_all_of_it() {
        let src = tempfile::tempdir().expect("tmp");
        for d in 0..6 {
            let dir = src.path().join(format!("d{d}"));
            fs::create_dir(&dir).expect("dir");
            for i in 0..100 {
                fs::write(dir.join(format!("f{i:03}")), format!("{d}/{i} ").repeat(i + 1)).expect("write");
            }
            // A file of several chunks in every directory, and a symlink.
            fs::write(dir.join("big"), crate::backup::chunk::test_noise(d, 3 << 20)).expect("big");
            symlink(format!("f{d:03}"), dir.join("link")).expect("symlink");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).expect("mode");
        }
        let times = rfs::Timestamps {
            last_access: rfs::Timespec {
                tv_sec: 1_600_000_000,
                tv_nsec: 0,
            },
            last_modification: rfs::Timespec {
                tv_sec: 1_600_000_000,
                tv_nsec: 0,
            },
        };
        for d in 0..6 {
            rfs::utimensat(
                rfs::CWD,
                src.path().join(format!("d{d}")),
                &times,
                AtFlags::empty(),
            )
            .expect("times");
        }
        let repo = repo();
        let backup = backup_volume(&repo, VolumeBackupOptions::new(src.path()))
            .await
            .expect("backup");
        let files = backup.stats.files;
        assert_eq!(files, 6 * 101);

        let restore = |window: usize, dirs: usize| {
            let repo = repo.clone();
            let id = backup.id.clone();
            async move {
                let dst = tempfile::tempdir().expect("tmp");
                let mut opts = VolumeRestoreOptions::new(dst.path());
                opts.concurrency = 4;
                let stats = restore_windowed(&repo, &id, opts, window, dirs)
                    .await
                    .expect("restore");
                (dst, stats)
            }
        };
        let (small_dst, small) = restore(16, 2).await;
        let (whole_dst, whole) = restore(usize::MAX, usize::MAX).await;
        assert_eq!(
            (small.files, small.symlinks, small.dirs),
            (files, 6, 7),
            "{small:?}"
        );
        assert_eq!(small.bytes, backup.stats.bytes);
        let want = tree(src.path());
        assert_eq!(tree(small_dst.path()), want, "restored in windows of 16");
        assert_eq!(tree(whole_dst.path()), want, "restored in one window");

        let bound = windowed_files_held(16, 4) as u64;
        assert!(bound < files, "the bound {bound} is below the {files} files");
        assert!(
            0 < small.files_held_peak && small.files_held_peak <= bound,
            "held {} (bound {bound})",
            small.files_held_peak
        );
        // In one window every entry is read before the first file is written.
        assert_eq!(whole.files_held_peak, files);
        // Seven directories (the root and six): kept at most two at a time, or all.
        assert_eq!((small.dirs_held_peak, whole.dirs_held_peak), (2, 7));
    }
}
