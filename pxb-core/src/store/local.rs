//! [`LocalFileSystem`]: the embedded default location, a directory tree on a local disk.
//!
//! Layout: object `a/b/c` is the file `<root>/a/b/c`. Each file starts with a small header that
//! carries the object's metadata (`PXBL`, format byte `1`, a little-endian `u32` length, then the
//! metadata as JSON), followed by the object's bytes. A file without a valid header (one copied in
//! by hand) is read as a plain object with no metadata. Writes go to `<root>/.pxb-tmp/` first and are
//! moved into place with `rename` (overwrite) or `link` (create-only), so they are atomic and
//! concurrent writers are safe; `.pxb-tmp` is therefore not a valid first name segment here.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    GetResult, ListPage, MAX_LIST_PAGE, Metadata, ObjectMeta, ObjectStore, PutMode, PutOptions, PutReader,
    PutResult, clamp_range, validate_metadata,
};
use crate::{Error, ObjectPath, Result};

const MAGIC: &[u8; 4] = b"PXBL";
const FORMAT: u8 = 1;
const FIXED_HEADER: usize = 9;
const TMP_DIR: &str = ".pxb-tmp";
const IO_BUF: usize = 1 << 20;
/// What a get reads with the open: a whole chunk of average size and most others.
const FIRST_READ: usize = 4 << 20;

/// An object store in a local directory (`file:///abs/path`).
///
/// Writes are atomic (temp file, then rename or link) and safe for concurrent writers, including
/// other processes sharing the directory. Files are flushed to disk before they become visible
/// unless [`LocalFileSystem::with_fsync`] turned that off.
#[derive(Clone)]
pub struct LocalFileSystem {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    fsync: bool,
}

impl LocalFileSystem {
    /// A store rooted at the absolute directory `root`, created on first write if missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_absolute() {
            return Err(Error::invalid(format!(
                "local location {} must be an absolute path",
                root.display()
            )));
        }
        Ok(Self {
            inner: Arc::new(Inner { root, fsync: true }),
        })
    }

    /// Whether to flush each object to disk before it becomes visible (default: yes).
    pub fn with_fsync(self, fsync: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                root: self.inner.root.clone(),
                fsync,
            }),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn file_path(&self, path: &ObjectPath) -> Result<PathBuf> {
        if path.as_str().split('/').next() == Some(TMP_DIR) {
            return Err(Error::invalid(format!(
                "object name {path:?}: the first segment {TMP_DIR:?} is reserved by the local store"
            )));
        }
        Ok(self.inner.root.join(path.as_str()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::other("local store task failed").with_source(e))?
    }
}

impl fmt::Debug for LocalFileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalFileSystem")
            .field("root", &self.inner.root)
            .field("fsync", &self.inner.fsync)
            .finish()
    }
}

impl fmt::Display for LocalFileSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "file://{}", self.inner.root.display())
    }
}

fn map_io(path: &ObjectPath, op: &str, e: io::Error) -> Error {
    use io::ErrorKind as K;
    let msg = format!("{op} {path}: {e}");
    match e.kind() {
        K::NotFound => Error::not_found(msg),
        K::AlreadyExists => Error::already_exists(path),
        K::PermissionDenied => Error::permission_denied(msg),
        K::NotADirectory | K::IsADirectory | K::DirectoryNotEmpty => Error::invalid(format!(
            "{op} {path}: the name collides with a prefix of other objects (a local directory)"
        )),
        _ => Error::io(msg, e),
    }
}

fn header(metadata: &Metadata) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(metadata).map_err(|e| Error::other("encoding metadata").with_source(e))?;
    let len = u32::try_from(json.len()).map_err(|_| Error::invalid("metadata too large"))?;
    let mut h = Vec::with_capacity(FIXED_HEADER + json.len());
    h.extend_from_slice(MAGIC);
    h.push(FORMAT);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&json);
    Ok(h)
}

/// Decodes the header of a stored local object: (header length, metadata). Bytes without a valid
/// header are a plain object: (0, empty). Exposed for fuzzing.
pub fn decode_header(stored: &[u8]) -> (u64, Metadata) {
    read_header(&mut io::Cursor::new(stored), stored.len() as u64).unwrap_or((0, Metadata::new()))
}

/// Reads the header of an open file: (header length, metadata). A file without a valid header is a
/// plain object: (0, empty).
fn read_header(file: &mut impl Read, file_len: u64) -> io::Result<(u64, Metadata)> {
    let mut fixed = [0u8; FIXED_HEADER];
    if file_len < FIXED_HEADER as u64 {
        return Ok((0, Metadata::new()));
    }
    file.read_exact(&mut fixed)?;
    let len = u32::from_le_bytes([fixed[5], fixed[6], fixed[7], fixed[8]]) as u64;
    if &fixed[..4] != MAGIC || fixed[4] != FORMAT || FIXED_HEADER as u64 + len > file_len || len > 1 << 20 {
        return Ok((0, Metadata::new()));
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json)?;
    match serde_json::from_slice::<Metadata>(&json) {
        Ok(m) => Ok((FIXED_HEADER as u64 + len, m)),
        Err(_) => Ok((0, Metadata::new())),
    }
}

struct Opened {
    file: File,
    meta: ObjectMeta,
    header_len: u64,
}

fn open(file_path: &Path, path: &ObjectPath) -> Result<Opened> {
    let mut file = File::open(file_path).map_err(|e| map_io(path, "open", e))?;
    let fs_meta = file.metadata().map_err(|e| map_io(path, "stat", e))?;
    if !fs_meta.is_file() {
        return Err(Error::not_found(format!(
            "{path} (a prefix of other objects, not an object)"
        )));
    }
    let (header_len, metadata) =
        read_header(&mut file, fs_meta.len()).map_err(|e| map_io(path, "read", e))?;
    let meta = ObjectMeta {
        path: path.clone(),
        size: fs_meta.len() - header_len,
        last_modified: fs_meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        e_tag: Some(e_tag(&fs_meta)),
        metadata,
    };
    Ok(Opened {
        file,
        meta,
        header_len,
    })
}

/// Reads exactly `n` bytes (the file must hold them) into a buffer of that size, without zeroing
/// it first.
fn read_exactly(file: &mut File, n: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(usize::try_from(n).unwrap_or(usize::MAX));
    file.take(n).read_to_end(&mut buf)?;
    if (buf.len() as u64) < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} of {n} bytes", buf.len()),
        ));
    }
    Ok(buf)
}

fn e_tag(m: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{:x}-{:x}-{:x}-{:x}", m.ino(), m.mtime(), m.mtime_nsec(), m.len())
}

/// A temp file that is removed unless committed.
struct TmpFile {
    path: PathBuf,
}

impl TmpFile {
    fn create(root: &Path) -> io::Result<(Self, File)> {
        let dir = root.join(TMP_DIR);
        fs::create_dir_all(&dir)?;
        loop {
            let name = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
            let path = dir.join(name);
            match fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((Self { path }, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Moves a finished temp file into place. Retries when a concurrent delete pruned the directory.
fn commit(tmp: &TmpFile, target: &Path, mode: PutMode) -> io::Result<()> {
    let mut attempt = 0;
    loop {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let r = match mode {
            PutMode::Overwrite => fs::rename(&tmp.path, target),
            PutMode::Create => fs::hard_link(&tmp.path, target),
        };
        match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 8 => attempt += 1,
            other => return other,
        }
    }
}

fn finish(
    inner: &Inner,
    path: &ObjectPath,
    target: &Path,
    tmp: TmpFile,
    file: File,
    mode: PutMode,
) -> Result<PutResult> {
    if inner.fsync {
        file.sync_all().map_err(|e| map_io(path, "flush", e))?;
    }
    drop(file);
    commit(&tmp, target, mode).map_err(|e| map_io(path, "commit", e))?;
    let m = fs::metadata(target).map_err(|e| map_io(path, "stat", e))?;
    let mut f = File::open(target).map_err(|e| map_io(path, "open", e))?;
    let (hlen, _) = read_header(&mut f, m.len()).map_err(|e| map_io(path, "read", e))?;
    Ok(PutResult {
        size: m.len() - hlen,
        e_tag: Some(e_tag(&m)),
    })
}

#[async_trait]
impl ObjectStore for LocalFileSystem {
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        validate_metadata(&opts.metadata)?;
        let target = self.file_path(path)?;
        let path = path.clone();
        self.blocking(move |inner| {
            let (tmp, mut file) =
                TmpFile::create(&inner.root).map_err(|e| map_io(&path, "create temp file for", e))?;
            file.write_all(&header(&opts.metadata)?)
                .map_err(|e| map_io(&path, "write", e))?;
            file.write_all(&data).map_err(|e| map_io(&path, "write", e))?;
            finish(inner, &path, &target, tmp, file, opts.mode)
        })
        .await
    }

    async fn put_stream(
        &self,
        path: &ObjectPath,
        mut reader: PutReader,
        opts: PutOptions,
    ) -> Result<PutResult> {
        validate_metadata(&opts.metadata)?;
        let target = self.file_path(path)?;
        let (tmp, file) = {
            let root = self.inner.root.clone();
            let p = path.clone();
            self.blocking(move |_| TmpFile::create(&root).map_err(|e| map_io(&p, "create temp file for", e)))
                .await?
        };
        let mut out = tokio::fs::File::from_std(file);
        out.write_all(&header(&opts.metadata)?)
            .await
            .map_err(|e| map_io(path, "write", e))?;
        let mut buf = vec![0u8; IO_BUF];
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|e| Error::io(format!("reading the data for {path}"), e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .await
                .map_err(|e| map_io(path, "write", e))?;
        }
        out.flush().await.map_err(|e| map_io(path, "write", e))?;
        let file = out.into_std().await;
        let path = path.clone();
        self.blocking(move |inner| finish(inner, &path, &target, tmp, file, opts.mode))
            .await
    }

    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        let file_path = self.file_path(path)?;
        let p = path.clone();
        // The object is opened and its first bytes read in one trip to the blocking pool: most
        // objects (chunks, markers) are read whole by it.
        let (file, meta, first) = self
            .blocking(move |_| {
                let Opened {
                    mut file,
                    meta,
                    header_len,
                } = open(&file_path, &p)?;
                file.seek(SeekFrom::Start(header_len))
                    .map_err(|e| map_io(&p, "seek", e))?;
                let want = meta.size.min(FIRST_READ as u64);
                let first = read_exactly(&mut file, want).map_err(|e| map_io(&p, "read", e))?;
                Ok((file, meta, first))
            })
            .await?;
        let remaining = meta.size - first.len() as u64;
        let file = tokio::fs::File::from_std(file);
        let p = path.clone();
        let rest = futures::stream::unfold((file, remaining), move |(mut file, remaining)| {
            let p = p.clone();
            async move {
                if remaining == 0 {
                    return None;
                }
                let want = remaining.min(IO_BUF as u64) as usize;
                let mut buf = vec![0u8; want];
                match file.read_exact(&mut buf).await {
                    Ok(_) => Some((Ok(Bytes::from(buf)), (file, remaining - want as u64))),
                    Err(e) => Some((Err(map_io(&p, "read", e)), (file, 0))),
                }
            }
        });
        let first = (!first.is_empty()).then(|| Ok(Bytes::from(first)));
        let body = futures::stream::iter(first).chain(rest).boxed();
        Ok(GetResult { meta, body })
    }

    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes> {
        let file_path = self.file_path(path)?;
        let path = path.clone();
        self.blocking(move |_| {
            let Opened {
                mut file,
                meta,
                header_len,
            } = open(&file_path, &path)?;
            let r = clamp_range(&path, &range, meta.size)?;
            file.seek(SeekFrom::Start(header_len + r.start))
                .map_err(|e| map_io(&path, "seek", e))?;
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            file.read_exact(&mut buf).map_err(|e| map_io(&path, "read", e))?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        let file_path = self.file_path(path)?;
        let path = path.clone();
        self.blocking(move |_| open(&file_path, &path).map(|o| o.meta))
            .await
    }

    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        let max = max_results.clamp(1, MAX_LIST_PAGE);
        let prefix = prefix.to_owned();
        let token = token.map(str::to_owned);
        self.blocking(move |inner| {
            let mut found = Vec::with_capacity(max + 1);
            walk(&inner.root, &prefix, token.as_deref(), max + 1, &mut found)
                .map_err(|e| Error::io(format!("listing {prefix:?} under {}", inner.root.display()), e))?;
            let more = found.len() > max;
            found.truncate(max);
            let mut objects = Vec::with_capacity(found.len());
            for (key, file_path) in found {
                let Ok(path) = ObjectPath::parse(key) else {
                    continue;
                };
                match open(&file_path, &path) {
                    Ok(o) => objects.push(o.meta),
                    // Deleted between the walk and the read: not part of this listing.
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let next = if more {
                objects.last().map(|o| o.path.to_string())
            } else {
                None
            };
            Ok(ListPage { objects, next })
        })
        .await
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        let file_path = self.file_path(path)?;
        let path = path.clone();
        self.blocking(move |inner| {
            match fs::remove_file(&file_path) {
                Ok(()) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::IsADirectory) => {
                    return Ok(());
                }
                Err(e) => return Err(map_io(&path, "delete", e)),
            }
            // Prune directories this delete emptied; a concurrent writer retries its commit.
            let mut dir = file_path.parent();
            while let Some(d) = dir {
                if d == inner.root || fs::remove_dir(d).is_err() {
                    break;
                }
                dir = d.parent();
            }
            Ok(())
        })
        .await
    }
}

/// Collects up to `limit` (name, file) pairs under `prefix` after `after`, in ascending byte order
/// of the names, without reading more of the tree than needed.
fn walk(
    root: &Path,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> io::Result<()> {
    let dir_key = match prefix.rfind('/') {
        Some(i) => &prefix[..=i],
        None => "",
    };
    // Directory parts that no valid object name can have match nothing (and never leave the root).
    if !dir_key.is_empty() && ObjectPath::parse(&dir_key[..dir_key.len() - 1]).is_err() {
        return Ok(());
    }
    visit(&root.join(dir_key), dir_key, prefix, after, limit, out)
}

fn visit(
    dir: &Path,
    dir_key: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if dir_key.is_empty() && name == TMP_DIR {
            continue;
        }
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_dir() {
            children.push((format!("{name}/"), true));
        } else if ft.is_file() {
            children.push((name, false));
        }
    }
    // Sorting directories as "name/" yields the global byte order of full names.
    children.sort_unstable();
    for (name, is_dir) in children {
        let key = format!("{dir_key}{name}");
        if is_dir {
            let compatible = key.starts_with(prefix) || prefix.starts_with(&key);
            let all_before = after.is_some_and(|a| key.as_str() < a && !a.starts_with(&key));
            if compatible && !all_before {
                visit(
                    &dir.join(&name[..name.len() - 1]),
                    &key,
                    prefix,
                    after,
                    limit,
                    out,
                )?;
            }
        } else if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
            out.push((key, dir.join(&name)));
        }
        if out.len() >= limit {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_orders_like_byte_order_and_prunes() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a/b", "a-c", "a/a/z", "ab", "b"] {
            let p = dir.path().join(name);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, b"x").expect("write");
        }
        let keys = |prefix: &str, after: Option<&str>| {
            let mut out = Vec::new();
            walk(dir.path(), prefix, after, 100, &mut out).expect("walk");
            out.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
        };
        let mut expected = vec!["a/b", "a-c", "a/a/z", "ab", "b"];
        expected.sort_unstable();
        assert_eq!(keys("", None), expected);
        assert_eq!(keys("a/", None), vec!["a/a/z", "a/b"]);
        assert_eq!(keys("a", Some("a/a/z")), vec!["a/b", "ab"]);
        assert_eq!(keys("../", None), Vec::<String>::new());
    }

    #[test]
    fn foreign_files_read_as_plain_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("hand"), b"PXBL\x09garbage").expect("write");
        let p = ObjectPath::parse("hand").expect("valid");
        let o = open(&dir.path().join("hand"), &p).expect("open");
        assert_eq!(o.meta.size, 12);
        assert!(o.meta.metadata.is_empty());
    }
}
