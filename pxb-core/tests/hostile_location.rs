//! Attacks by whoever can write to a backup location: objects whose declared or real size, or
//! whose decompressed size, is meant to exhaust the reader's memory. Every read of location data
//! must stay bounded while it streams and fail with an error that names the object.
//!
//! Memory is measured as the growth of the process's peak virtual size (`VmPeak`), which counts
//! even an allocation that is never touched; the tests run one at a time so they do not see each
//! other's allocations. The plain data of the bombs is never held by the test: the compressed
//! objects are small (a zstd frame of run-length blocks, or zeros compressed at test time), and
//! big plain bodies come from a store wrapper that generates them while they stream.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use pxb_core::backup::chunk::{self, ChunkId, MAX_CHUNK_SIZE};
use pxb_core::backup::verify::{VerifyStatus, verify};
use pxb_core::backup::volume::{
    self, FILES_OBJECT, VolumeBackupOptions, VolumeRestoreOptions, backup_volume, restore_volume,
};
use pxb_core::backup::{BackupId, Manifest, ManifestObject, Repository};
use pxb_core::store::{GetResult, ListPage, ObjectMeta, PutReader, PutResult};
use pxb_core::{Error, InMemory, ObjectPath, ObjectStore, PutOptions, Result};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The most a test's peak virtual size may grow: well above the bounded readers' buffers (a
/// 16 MiB line or chunk, zstd windows, thread stacks), far below what the attacks declare.
const MAX_GROWTH: u64 = 256 * MIB;

static SERIAL: Mutex<()> = Mutex::new(());

/// The process's peak virtual size in bytes (`None` where `/proc` is not available).
fn vm_peak() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPeak:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `attack` alone and checks that it ends quickly and without growing the peak virtual size
/// by more than [`MAX_GROWTH`].
fn bounded<T>(what: &str, attack: impl FnOnce() -> T) -> T {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = vm_peak();
    let start = Instant::now();
    let out = attack();
    let took = start.elapsed();
    if let (Some(b), Some(a)) = (before, vm_peak()) {
        assert!(
            a.saturating_sub(b) < MAX_GROWTH,
            "{what}: peak virtual size grew by {} MiB",
            (a - b) / MIB
        );
    }
    assert!(took < Duration::from_secs(60), "{what}: took {took:?}");
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn expect_corrupt<T: fmt::Debug>(r: Result<T>, names: &str, says: &str) -> Error {
    let e = r.expect_err("a hostile object must be refused");
    assert!(matches!(e, Error::Corrupt { .. }), "not Corrupt: {e:?}");
    let msg = e.to_string();
    let short: String = msg.chars().take(300).collect();
    assert!(msg.contains(names), "{short:?} does not name {names:?}");
    assert!(msg.contains(says), "{short:?} does not say {says:?}");
    e
}

// --- zstd frames built by hand: run-length blocks make huge plain data from a few bytes. ---

/// A zstd frame header with a 128 KiB window and, if given, a declared content size.
fn frame_header(declared: Option<u64>) -> Vec<u8> {
    let mut f = vec![0x28, 0xB5, 0x2F, 0xFD];
    match declared {
        None => f.extend_from_slice(&[0x00, 0x38]),
        Some(n) => {
            f.extend_from_slice(&[0xC0, 0x38]);
            f.extend_from_slice(&n.to_le_bytes());
        }
    }
    f
}

fn block_header(out: &mut Vec<u8>, last: bool, kind: u32, size: u32) {
    let h = u32::from(last) | (kind << 1) | (size << 3);
    out.extend_from_slice(&h.to_le_bytes()[..3]);
}

/// A zstd frame whose plain content is `prefix`, `count` copies of `fill`, then `suffix`; about
/// 4 bytes per 128 KiB of plain data.
fn rle_frame(declared: Option<u64>, prefix: &[u8], fill: u8, count: u64, suffix: &[u8]) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let mut f = frame_header(declared);
    if !prefix.is_empty() {
        block_header(&mut f, false, 0, prefix.len() as u32);
        f.extend_from_slice(prefix);
    }
    let mut left = count;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        block_header(&mut f, left == 0 && suffix.is_empty(), 1, n as u32);
        f.push(fill);
    }
    block_header(&mut f, true, 0, suffix.len() as u32);
    f.extend_from_slice(suffix);
    f
}

/// `len` zeros compressed by zstd at test time, streamed through the encoder (no declared size).
fn compressed_zeros(len: u64) -> Vec<u8> {
    let zeros = vec![0u8; MIB as usize];
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB);
        enc.write_all(&zeros[..n as usize]).expect("compress");
        left -= n;
    }
    enc.finish().expect("finish")
}

// --- a store whose chosen objects are generated while they stream ---

/// An object served by [`Hostile`]: `prefix` then `fill` up to `len` bytes, in 1 MiB pieces,
/// announced as `declared` bytes.
#[derive(Debug, Clone)]
struct Lazy {
    declared: u64,
    len: u64,
    prefix: Vec<u8>,
    fill: u8,
}

/// [`InMemory`] with some objects replaced by [`Lazy`] bodies; counts the bytes it streamed.
#[derive(Debug, Default)]
struct Hostile {
    inner: InMemory,
    lazy: Mutex<HashMap<String, Lazy>>,
    pulled: Arc<AtomicU64>,
}

impl fmt::Display for Hostile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("hostile://")
    }
}

impl Hostile {
    fn serve(&self, path: &ObjectPath, lazy: Lazy) {
        self.lazy.lock().expect("lock").insert(path.to_string(), lazy);
    }

    fn pulled(&self) -> u64 {
        self.pulled.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl ObjectStore for Hostile {
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.inner.put(path, data, opts).await
    }
    async fn put_stream(&self, path: &ObjectPath, reader: PutReader, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_stream(path, reader, opts).await
    }
    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        let lazy = self.lazy.lock().expect("lock").get(path.as_str()).cloned();
        let Some(lazy) = lazy else {
            return self.inner.get(path).await;
        };
        let meta = ObjectMeta {
            path: path.clone(),
            size: lazy.declared,
            last_modified: SystemTime::now(),
            e_tag: None,
            metadata: Default::default(),
        };
        let pulled = self.pulled.clone();
        let first = Bytes::from(lazy.prefix.clone());
        let rest = lazy.len.saturating_sub(first.len() as u64);
        let piece = Bytes::from(vec![lazy.fill; MIB as usize]);
        let body = futures::stream::unfold((Some(first), rest), move |(first, left)| {
            let pulled = pulled.clone();
            let piece = piece.clone();
            async move {
                let (out, left) = match first {
                    Some(f) if !f.is_empty() => (f, left),
                    _ if left == 0 => return None,
                    _ => {
                        let n = left.min(MIB);
                        (piece.slice(..n as usize), left - n)
                    }
                };
                pulled.fetch_add(out.len() as u64, Ordering::Relaxed);
                Some((Ok(out), (None, left)))
            }
        });
        Ok(GetResult {
            meta,
            body: body.boxed(),
        })
    }
    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes> {
        self.inner.get_range(path, range).await
    }
    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        self.inner.head(path).await
    }
    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        self.inner.list(prefix, token, max_results).await
    }
    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.inner.delete(path).await
    }
}

/// A repository over a [`Hostile`] store with one real volume backup of a few small files.
async fn location_with_a_backup() -> (Arc<Hostile>, Repository, Manifest, tempfile::TempDir) {
    let store = Arc::new(Hostile::default());
    let repo = Repository::new(store.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("src")).expect("mkdir");
    for i in 0..3 {
        std::fs::write(dir.path().join(format!("src/f{i}")), format!("file {i}\n")).expect("write");
    }
    let m = backup_volume(&repo, VolumeBackupOptions::new(dir.path().join("src")))
        .await
        .expect("backup");
    (store, repo, m, dir)
}

/// The chunk the backup's files are in.
async fn first_chunk(repo: &Repository, id: &BackupId) -> ChunkId {
    volume::read_index(repo, id)
        .await
        .expect("index")
        .iter()
        .find_map(|e| e.slices.first().map(|s| s.0))
        .expect("a file with content")
}

/// Replaces the backup's file index with `stored` and commits a manifest that vouches for it.
async fn replace_index(repo: &Repository, m: &Manifest, stored: Vec<u8>) -> BackupId {
    let id = BackupId::new(SystemTime::now());
    let path = id.object_path(FILES_OBJECT).expect("path");
    let obj = ManifestObject {
        name: FILES_OBJECT.into(),
        size: stored.len() as u64,
        blake3: blake3::hash(&stored).to_hex().to_string(),
    };
    repo.store()
        .put(&path, stored.into(), PutOptions::create())
        .await
        .expect("put index");
    let mut poisoned = m.clone();
    poisoned.id = id.clone();
    poisoned.objects = vec![obj];
    repo.commit(&poisoned).await.expect("commit");
    id
}

#[test]
fn chunk_declaring_2_gib_is_refused_before_allocating() {
    // A real zstd frame that declares (and would expand to) 2 GiB: 64 KiB stored.
    let mut stored = b"PXC1\x01".to_vec();
    stored.extend(rle_frame(Some(2 * GIB), b"", 0, 2 * GIB, b""));
    assert!(stored.len() < 100_000);
    let r = bounded("decode", || chunk::decode("pxb/chunks/ab/bomb", &stored, None));
    expect_corrupt(r, "pxb/chunks/ab/bomb", "declares 2147483648");
}

#[test]
fn chunk_object_announced_as_2_gib_is_refused_before_reading() {
    // A chunk object whose store-announced size is 2 GiB, read by a restore and by deep verify:
    // both refuse it by its size before reserving memory or reading a byte, and name it.
    let mut stored = b"PXC1\x01".to_vec();
    stored.extend(rle_frame(Some(2 * GIB), b"", 0, 2 * GIB, b""));
    let rt = runtime();
    let (store, repo, m, dir) = rt.block_on(location_with_a_backup());
    let id = rt.block_on(first_chunk(&repo, &m.id));
    store.serve(
        &id.path(),
        Lazy {
            declared: 2 * GIB,
            len: stored.len() as u64,
            prefix: stored.clone(),
            fill: 0,
        },
    );
    let target = dir.path().join("restored");
    let r = bounded("restore", || {
        rt.block_on(restore_volume(&repo, &m.id, VolumeRestoreOptions::new(&target)))
    });
    expect_corrupt(r, id.path().as_ref(), "2147483648 bytes");
    let reports = bounded("deep verify", || {
        rt.block_on(verify(&repo, Some(vec![m.id.clone()]), true, 2))
    })
    .expect("verify reports, not fails");
    assert_eq!(reports[0].status, VerifyStatus::Corrupt, "{reports:?}");
    assert!(
        reports[0].corrupt[0].contains(&id.path().to_string()),
        "{reports:?}"
    );
    assert!(store.pulled() <= MIB, "streamed {} bytes", store.pulled());
}

#[test]
fn chunk_whose_size_lies_stops_at_the_maximum_stored_chunk() {
    // The store announces a small chunk and streams 1 GiB: the read stops at the limit.
    let rt = runtime();
    let (store, repo, m, dir) = rt.block_on(location_with_a_backup());
    let id = rt.block_on(first_chunk(&repo, &m.id));
    store.serve(
        &id.path(),
        Lazy {
            declared: 1000,
            len: GIB,
            prefix: b"PXC1\x00".to_vec(),
            fill: b'x',
        },
    );
    let target = dir.path().join("restored");
    let r = bounded("restore", || {
        rt.block_on(restore_volume(&repo, &m.id, VolumeRestoreOptions::new(&target)))
    });
    expect_corrupt(r, id.path().as_ref(), "more than");
    assert!(
        store.pulled() <= 2 * MAX_CHUNK_SIZE as u64,
        "streamed {} MiB",
        store.pulled() / MIB
    );
}

#[test]
fn zstd_bomb_chunk_stops_at_the_maximum_chunk_size() {
    // 1 GiB of zeros compressed at test time, without a declared size: the decoder must stop at
    // the maximum chunk size rather than expand it.
    let bomb = compressed_zeros(GIB);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let mut stored = b"PXC1\x01".to_vec();
    stored.extend_from_slice(&bomb);
    let r = bounded("decode", || chunk::decode("pxb/chunks/cd/bomb", &stored, None));
    expect_corrupt(r, "pxb/chunks/cd/bomb", "more than the maximum chunk size");
}

#[test]
fn manifest_of_100_mib_on_one_line_is_refused_while_reading() {
    let rt = runtime();
    let (store, repo, m, _dir) = rt.block_on(location_with_a_backup());
    // Honestly announced: refused by its size, nothing read.
    store.serve(
        &m.id.manifest_path(),
        Lazy {
            declared: 100 * MIB,
            len: 100 * MIB,
            prefix: br#"{"format":1,"id":""#.to_vec(),
            fill: b'a',
        },
    );
    let r = bounded("manifest", || rt.block_on(repo.manifest(&m.id)));
    expect_corrupt(r, m.id.manifest_path().as_ref(), "more than");
    assert_eq!(store.pulled(), 0);
    // Announced as small: reading stops at the limit.
    store.serve(
        &m.id.manifest_path(),
        Lazy {
            declared: 1000,
            len: 100 * MIB,
            prefix: br#"{"format":1,"id":""#.to_vec(),
            fill: b'a',
        },
    );
    let r = bounded("manifest", || rt.block_on(repo.manifest(&m.id)));
    expect_corrupt(r, m.id.manifest_path().as_ref(), "more than");
    assert!(
        store.pulled() <= 20 * MIB,
        "streamed {} MiB",
        store.pulled() / MIB
    );
    // The periodic (quick) verify of the agent reports the backup as damaged and goes on.
    let reports = bounded("verify", || rt.block_on(verify(&repo, None, false, 2))).expect("verify");
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].status, VerifyStatus::Corrupt, "{reports:?}");
}

#[test]
fn file_index_with_a_1_gib_line_fails_while_reading() {
    // Line 2 is 1 GiB long, generated by the decoder from 32 KiB of run-length blocks.
    let rt = runtime();
    let (_store, repo, m, _dir) = rt.block_on(location_with_a_backup());
    let stored = rle_frame(
        None,
        b"{\"pxb\":\"files\",\"format\":1}\n{\"path\":\"",
        b'a',
        GIB,
        b"\"}\n",
    );
    assert!(stored.len() < 64 << 10);
    let id = rt.block_on(replace_index(&repo, &m, stored));
    let r = bounded("index", || rt.block_on(volume::read_index(&repo, &id)));
    expect_corrupt(r, "files", "line 2 is longer than");
}

#[test]
fn file_index_zstd_bomb_is_refused() {
    // A header, then 2 GiB of zeros (no newline): compressed at test time.
    let rt = runtime();
    let (_store, repo, m, _dir) = rt.block_on(location_with_a_backup());
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("encoder");
    enc.write_all(b"{\"pxb\":\"files\",\"format\":1}\n")
        .expect("write");
    let mut stored = enc.finish().expect("finish");
    stored.extend(compressed_zeros(2 * GIB));
    let id = rt.block_on(replace_index(&repo, &m, stored));
    let r = bounded("index", || rt.block_on(volume::read_index(&repo, &id)));
    expect_corrupt(r, "files", "line 2 is longer than");
}

#[test]
fn file_index_of_valid_records_cannot_expand_without_bound() {
    // 400 MiB of one valid record repeated compresses to a few hundred KiB: the reader refuses
    // an expansion that no real index reaches instead of collecting millions of records.
    let rt = runtime();
    let (_store, repo, m, _dir) = rt.block_on(location_with_a_backup());
    let line =
        b"{\"path\":\"a\",\"kind\":\"dir\",\"mode\":493,\"uid\":0,\"gid\":0,\"mtime\":1,\"mtime_ns\":0}\n";
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.write_all(b"{\"pxb\":\"files\",\"format\":1}\n")
        .expect("write");
    let block = line.repeat((MIB as usize) / line.len());
    for _ in 0..400 {
        enc.write_all(&block).expect("write");
    }
    let stored = enc.finish().expect("finish");
    let id = rt.block_on(replace_index(&repo, &m, stored));
    let r = bounded("index", || rt.block_on(volume::read_index(&repo, &id)));
    expect_corrupt(r, "files", "expands");
}

#[test]
fn resource_archive_with_a_1_gib_line_fails_while_reading() {
    use pxb_core::resources::{InMemoryCluster, RestoreOptions, restore_resources};
    let rt = runtime();
    let store = InMemory::new();
    let path = ObjectPath::parse("pxb/backups/x/resources").expect("path");
    let stored = rle_frame(
        None,
        b"{\"pxb\":\"resources\",\"format\":1}\n{\"x\":\"",
        b'a',
        GIB,
        b"\"}\n",
    );
    rt.block_on(store.put(&path, stored.into(), PutOptions::default()))
        .expect("put");
    let r = bounded("archive", || {
        rt.block_on(restore_resources(
            &store,
            &path,
            &InMemoryCluster::new(),
            &RestoreOptions::default(),
        ))
    });
    let e = r.expect_err("refused");
    assert!(e.to_string().contains("longer than"), "{e}");
}

#[test]
fn oversized_summary_metadata_is_refused_before_parsing() {
    let id = BackupId::parse("20261122T000000Z-0badc0de").expect("id");
    let md = [
        ("pxb_format".to_string(), "1".to_string()),
        (
            "pxb_summary".to_string(),
            format!("{{\"id\":\"{}\"}}", "a".repeat(1 << 20)),
        ),
    ]
    .into();
    expect_corrupt(
        pxb_core::backup::parse_summary(&id, &md),
        id.as_str(),
        "more than",
    );
}
