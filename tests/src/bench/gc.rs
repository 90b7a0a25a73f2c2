//! GC of a location with millions of chunks, over a synthetic object store that generates the
//! listing of chunks and the file indexes on the fly (so the process's memory is GC's own).

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use pxb_core::backup::chunk::ChunkId;
use pxb_core::backup::gc::{GcOptions, gc};
use pxb_core::backup::volume::{EntryKind, FileEntry, Slice};
use pxb_core::backup::{
    BackupId, BackupKind, BackupStats, BackupStatus, Manifest, ManifestObject, Repository, Summary, layout,
};
use pxb_core::store::{GetResult, ListPage, MAX_LIST_PAGE, PutReader};
use pxb_core::{Error, Metadata, ObjectMeta, ObjectPath, ObjectStore, PutOptions, PutResult, Result};
use serde_json::json;

const SLICES_PER_FILE: u64 = 256;

/// Chunk `i` of `n`: ids ascend with `i`, so the listing is generated in order.
fn chunk_id(i: u64, n: u64) -> ChunkId {
    let mut b = [0u8; 32];
    let spread = (u64::MAX / n.max(1)).saturating_mul(i);
    b[..8].copy_from_slice(&spread.to_be_bytes());
    b[8..16].copy_from_slice(&i.to_be_bytes());
    ChunkId(b)
}

/// A location with `chunks` chunks and `backups` volume backups; backup `b` references the chunks
/// `i` with `i % backups == b` and `i % 10 != 0`, so 90% of the chunks are live and 10% garbage.
#[derive(Debug)]
pub struct SyntheticLocation {
    chunks: u64,
    backups: u64,
    manifests: BTreeMap<String, (Bytes, Metadata)>,
    /// The size of each backup's generated file index (its announced object size).
    index_size: BTreeMap<u64, u64>,
    /// Deletes received.
    pub deleted: AtomicU64,
    old: SystemTime,
}

impl std::fmt::Display for SyntheticLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "synthetic://{}-chunks", self.chunks)
    }
}

impl SyntheticLocation {
    /// Builds the location (hashing every generated index once).
    pub fn new(chunks: u64, backups: u64) -> anyhow::Result<Self> {
        let mut me = Self {
            chunks,
            backups,
            manifests: BTreeMap::new(),
            index_size: BTreeMap::new(),
            deleted: AtomicU64::new(0),
            old: UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000),
        };
        for b in 0..backups {
            let mut hasher = blake3::Hasher::new();
            let mut size = 0u64;
            me.write_index(
                b,
                &mut HashWriter {
                    hasher: &mut hasher,
                    size: &mut size,
                },
            )?;
            let hash = hasher.finalize().to_hex().to_string();
            me.index_size.insert(b, size);
            let id = Self::backup_id(b);
            let m = Manifest {
                format: 1,
                id: id.clone(),
                kind: BackupKind::Volume,
                created: 1,
                completed: 2,
                status: BackupStatus::Completed,
                cluster: None,
                namespaces: vec![],
                tag: None,
                source: None,
                parent: None,
                objects: vec![ManifestObject {
                    name: "files".into(),
                    size,
                    blake3: hash,
                }],
                stats: BackupStats::default(),
                warnings: vec![],
                volumes: vec![],
            };
            let md: Metadata = [
                (layout::FORMAT_KEY.to_string(), "1".to_string()),
                (
                    layout::SUMMARY_KEY.to_string(),
                    serde_json::to_string(&Summary::of(&m))?,
                ),
            ]
            .into();
            me.manifests.insert(
                id.manifest_path().to_string(),
                (Bytes::from(serde_json::to_vec(&m)?), md),
            );
        }
        Ok(me)
    }

    fn backup_id(b: u64) -> BackupId {
        BackupId::parse(&format!("20260101T000000Z-{b:08x}")).unwrap_or_else(|_| unreachable!())
    }

    /// Writes backup `b`'s file index as a zstd JSON-lines spool.
    fn write_index(&self, b: u64, out: &mut dyn Write) -> anyhow::Result<()> {
        let mut enc = zstd::stream::write::Encoder::new(out, 3)?;
        writeln!(enc, "{}", json!({"pxb": "files", "format": 1}))?;
        let mut slices = Vec::with_capacity(SLICES_PER_FILE as usize);
        let mut file = 0u64;
        let mut i = b;
        while i < self.chunks {
            if !i.is_multiple_of(10) {
                slices.push(Slice(chunk_id(i, self.chunks), 0, 1 << 20));
            }
            i += self.backups;
            if slices.len() as u64 == SLICES_PER_FILE || (i >= self.chunks && !slices.is_empty()) {
                let e = FileEntry {
                    path: format!("f{file}"),
                    kind: EntryKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    mtime_ns: 0,
                    size: slices.len() as u64 * (1 << 20),
                    ino: file,
                    target: None,
                    slices: std::mem::take(&mut slices),
                };
                serde_json::to_writer(&mut enc, &e)?;
                enc.write_all(b"\n")?;
                file += 1;
            }
        }
        enc.finish()?;
        Ok(())
    }
}

struct HashWriter<'a> {
    hasher: &'a mut blake3::Hasher,
    size: &'a mut u64,
}

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        *self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(std::io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn meta(path: ObjectPath, size: u64, at: SystemTime, metadata: Metadata) -> ObjectMeta {
    ObjectMeta {
        path,
        size,
        last_modified: at,
        e_tag: None,
        metadata,
    }
}

#[async_trait]
impl ObjectStore for SyntheticLocation {
    async fn put(&self, path: &ObjectPath, data: Bytes, _: PutOptions) -> Result<PutResult> {
        // Only GC's lock is ever written.
        if !path.as_str().starts_with(layout::LOCKS) {
            return Err(Error::invalid("the synthetic location is read-only"));
        }
        Ok(PutResult {
            size: data.len() as u64,
            e_tag: None,
        })
    }

    async fn put_stream(&self, _: &ObjectPath, _: PutReader, _: PutOptions) -> Result<PutResult> {
        Err(Error::invalid("the synthetic location is read-only"))
    }

    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        if let Some((body, md)) = self.manifests.get(path.as_str()) {
            let body = body.clone();
            return Ok(GetResult {
                meta: meta(path.clone(), body.len() as u64, self.old, md.clone()),
                body: futures::stream::once(async move { Ok(body) }).boxed(),
            });
        }
        let b = path
            .as_str()
            .strip_prefix(layout::BACKUPS)
            .and_then(|r| r.strip_suffix("/files"))
            .and_then(|id| id.rsplit('-').next())
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .filter(|b| *b < self.backups)
            .ok_or_else(|| Error::not_found(path))?;
        let size = self.index_size.get(&b).copied().unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let me = Self {
            manifests: BTreeMap::new(),
            index_size: BTreeMap::new(),
            deleted: AtomicU64::new(0),
            ..*self
        };
        tokio::task::spawn_blocking(move || {
            let tx2 = tx.clone();
            if let Err(e) = me.write_index(b, &mut ChannelWriter(tx)) {
                let _ = tx2.blocking_send(Err(Error::other(e)));
            }
        });
        Ok(GetResult {
            meta: meta(path.clone(), size, self.old, Metadata::new()),
            body: tokio_stream(rx),
        })
    }

    async fn get_range(&self, _: &ObjectPath, _: Range<u64>) -> Result<Bytes> {
        Err(Error::invalid("not supported by the synthetic location"))
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        // GC reads the store's time from its own lock, just written.
        if path.as_str().starts_with(layout::LOCKS) {
            return Ok(meta(path.clone(), 0, SystemTime::now(), Metadata::new()));
        }
        Err(Error::not_found(path))
    }

    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        let max = max_results.clamp(1, MAX_LIST_PAGE) as u64;
        if prefix == layout::MANIFESTS {
            let objects = self
                .manifests
                .iter()
                .filter(|(k, _)| token.is_none_or(|t| k.as_str() > t))
                .take(max as usize)
                .map(|(k, (body, md))| {
                    meta(
                        ObjectPath::parse(k.as_str()).unwrap_or_else(|_| unreachable!()),
                        body.len() as u64,
                        self.old,
                        md.clone(),
                    )
                })
                .collect::<Vec<_>>();
            let next = (objects.len() as u64 == max)
                .then(|| objects.last().map(|o| o.path.to_string()))
                .flatten();
            return Ok(ListPage { objects, next });
        }
        if prefix != layout::CHUNKS {
            return Ok(ListPage::default());
        }
        let start = token.and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
        let end = (start + max).min(self.chunks);
        let objects = (start..end)
            .map(|i| {
                meta(
                    chunk_id(i, self.chunks).path(),
                    1 << 19,
                    self.old,
                    Metadata::new(),
                )
            })
            .collect();
        Ok(ListPage {
            objects,
            next: (end < self.chunks).then(|| end.to_string()),
        })
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        if path.as_str().starts_with(layout::CHUNKS) {
            self.deleted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelWriter")
    }
}

fn tokio_stream(mut rx: tokio::sync::mpsc::Receiver<Result<Bytes>>) -> pxb_core::store::ByteStream {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Runs GC over a synthetic location of `chunks` chunks in `backups` backups.
pub async fn run(chunks: u64, backups: u64) -> anyhow::Result<serde_json::Value> {
    let t = Instant::now();
    let location = Arc::new(SyntheticLocation::new(chunks, backups)?);
    let setup_secs = t.elapsed().as_secs_f64();
    let repo = Repository::new(location.clone());
    super::reset_peak_rss();
    let rss_before = super::current_rss();
    let t = Instant::now();
    let report = gc(
        &repo,
        &GcOptions {
            grace: std::time::Duration::from_secs(3600),
            dry_run: false,
            concurrency: 64,
        },
    )
    .await?;
    let gc_secs = t.elapsed().as_secs_f64();
    let expected_garbage = chunks.div_ceil(10);
    anyhow::ensure!(
        report.deleted_chunks == expected_garbage,
        "deleted {} chunks, expected {expected_garbage}",
        report.deleted_chunks
    );
    anyhow::ensure!(
        location.deleted.load(Ordering::Relaxed) == expected_garbage,
        "deletes received differ"
    );
    Ok(json!({
        "chunks": chunks, "backups": backups, "setup_secs": setup_secs, "gc_secs": gc_secs,
        "referenced": report.referenced_chunks, "deleted": report.deleted_chunks,
        "rss_before_gc": rss_before, "peak_rss_during_gc": super::peak_rss(),
    }))
}
