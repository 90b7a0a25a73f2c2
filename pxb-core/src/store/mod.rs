//! The `ObjectStore` seam: where backups live.
//!
//! One trait, several implementations: [`InMemory`] (tests), [`LocalFileSystem`] (the embedded
//! default location, `file:///abs/path`), and the Azure Blob store in `pxb-azure`. Every
//! implementation runs the same [`conformance`] suite, so code written against the trait behaves
//! the same on each.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{BoxStream, StreamExt};
use tokio::io::AsyncRead;

use crate::{Error, ObjectPath, Result};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(test)]
pub(crate) mod gated;
mod local;
mod memory;

pub use local::{LocalFileSystem, decode_header as decode_local_header};
pub use memory::InMemory;

/// User metadata attached to an object: returned by `head`, `get` and `list`.
///
/// Keys are lowercase ASCII identifiers (`[a-z][a-z0-9_]*`), values printable ASCII; at most
/// [`MAX_METADATA_BYTES`] in total. These are the rules every backend can honour (Azure Blob
/// carries metadata in HTTP headers). Use [`validate_metadata`] to check a map up front.
pub type Metadata = BTreeMap<String, String>;

/// The largest total size of [`Metadata`] (keys plus values), in bytes.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// The most objects one [`ObjectStore::list`] page returns, whatever the caller asks for.
pub const MAX_LIST_PAGE: usize = 5000;

/// How a put treats an object that already exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it (the default).
    #[default]
    Overwrite,
    /// Fail with [`Error::AlreadyExists`] and leave it untouched: put-if-absent. Of many concurrent
    /// creates of one name, exactly one succeeds.
    Create,
}

/// Options of a put.
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// What to do if the object exists.
    pub mode: PutMode,
    /// User metadata stored with the object.
    pub metadata: Metadata,
}

impl PutOptions {
    /// Put-if-absent with no metadata.
    pub fn create() -> Self {
        Self {
            mode: PutMode::Create,
            ..Self::default()
        }
    }

    /// The same options with `metadata`.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// What a successful put reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// Bytes stored.
    pub size: u64,
    /// The new version's entity tag, where the backend has one.
    pub e_tag: Option<String>,
}

/// An object's properties, from `head`, `get` or `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Its name.
    pub path: ObjectPath,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: SystemTime,
    /// Its entity tag, changed by every write, where the backend has one.
    pub e_tag: Option<String>,
    /// User metadata.
    pub metadata: Metadata,
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Objects in ascending byte order of their names.
    pub objects: Vec<ObjectMeta>,
    /// Pass to the next [`ObjectStore::list`] call to continue; `None` on the last page.
    pub next: Option<String>,
}

/// A streaming body of a get.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A source of bytes for [`ObjectStore::put_stream`].
pub type PutReader = Box<dyn AsyncRead + Send + Unpin>;

/// The result of a get: properties and a body to stream.
pub struct GetResult {
    /// The object's properties at the time of the read.
    pub meta: ObjectMeta,
    /// Its content, streamed.
    pub body: ByteStream,
}

impl GetResult {
    /// Collects the whole body. Prefer streaming for objects that may be large, and
    /// [`GetResult::bytes_at_most`] for anything read from a location.
    pub async fn bytes(mut self) -> Result<Bytes> {
        // The announced size is only a hint: never reserve more than a modest amount up front.
        let hint = usize::try_from(self.meta.size).unwrap_or(0).min(PREALLOCATE_MAX);
        let mut buf = BytesMut::with_capacity(hint);
        while let Some(chunk) = self.body.next().await {
            buf.extend_from_slice(&chunk?);
        }
        if buf.len() as u64 != self.meta.size {
            return Err(Error::corrupt(format!(
                "{}: read {} bytes, expected {}",
                self.meta.path,
                buf.len(),
                self.meta.size
            )));
        }
        Ok(buf.freeze())
    }

    /// Collects the whole body of an object that may hold at most `limit` bytes. Whoever can
    /// write to a location controls both the announced size and the body, so neither is trusted:
    /// an object announced larger than `limit` is refused before anything is read, and reading
    /// stops as soon as the body passes `limit` (or its announced size). Both are
    /// [`Error::Corrupt`] naming the object.
    pub async fn bytes_at_most(mut self, limit: u64) -> Result<Bytes> {
        let path = &self.meta.path;
        let too_big = |size: String| {
            Error::corrupt(format!(
                "{path}: {size} bytes, more than the {limit} bytes such an object may hold"
            ))
        };
        if self.meta.size > limit {
            return Err(too_big(self.meta.size.to_string()));
        }
        let allowed = self.meta.size;
        // The first piece is kept as it is: a body in one piece (a local read, usually) is
        // returned without a copy.
        let mut first: Option<Bytes> = None;
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.body.next().await {
            let chunk = chunk?;
            let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
            if (have + chunk.len()) as u64 > allowed {
                return Err(Error::corrupt(format!(
                    "{path}: the body holds more than the announced {allowed} bytes"
                )));
            }
            if chunk.is_empty() {
                continue;
            }
            if have == 0 {
                first = Some(chunk);
                continue;
            }
            if let Some(f) = first.take() {
                buf.reserve(usize::try_from(allowed).unwrap_or(0).min(PREALLOCATE_MAX));
                buf.extend_from_slice(&f);
            }
            buf.extend_from_slice(&chunk);
        }
        let whole = match first {
            Some(f) => f,
            None => buf.freeze(),
        };
        if whole.len() as u64 != allowed {
            return Err(Error::corrupt(format!(
                "{path}: read {} bytes, expected {allowed}",
                whole.len()
            )));
        }
        Ok(whole)
    }
}

/// The most [`GetResult::bytes`] reserves before the body arrives, whatever size is announced.
const PREALLOCATE_MAX: usize = 16 << 20;

impl fmt::Debug for GetResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResult")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// The object store seam: a flat namespace of immutable-per-version blobs with metadata.
///
/// Semantics every implementation follows (checked by [`conformance`]):
/// - names are [`ObjectPath`]s; listing is by plain string prefix, in ascending byte order, paged;
/// - writes are atomic: a reader sees the old object or the new one, never a mix;
/// - [`PutMode::Create`] is put-if-absent with exactly one winner among concurrent writers;
/// - `delete` of a missing object succeeds (deletes are idempotent, so retries are safe);
/// - `get_range` returns the bytes of `range` that exist: the end is clamped to the size, and a
///   range that starts at or past the end is [`Error::Invalid`].
#[async_trait]
pub trait ObjectStore: fmt::Debug + fmt::Display + Send + Sync + 'static {
    /// Writes a whole object held in memory.
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult>;

    /// Writes an object streamed from `reader`, in parts, with memory bounded by the backend's part
    /// size and concurrency (not by the object's size). The object appears only once complete.
    async fn put_stream(&self, path: &ObjectPath, reader: PutReader, opts: PutOptions) -> Result<PutResult>;

    /// Reads a whole object, streamed.
    async fn get(&self, path: &ObjectPath) -> Result<GetResult>;

    /// Reads the bytes of `range` (end clamped to the object's size).
    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes>;

    /// Reads an object's properties.
    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta>;

    /// Lists up to `max_results` (at most [`MAX_LIST_PAGE`]) objects whose names start with
    /// `prefix`, after the position `token` from a previous page.
    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage>;

    /// Deletes an object; succeeds if it does not exist.
    async fn delete(&self, path: &ObjectPath) -> Result<()>;
}

/// Lists every object under `prefix`, page by page, as one stream.
pub fn list_all<'a>(store: &'a dyn ObjectStore, prefix: &'a str) -> BoxStream<'a, Result<ObjectMeta>> {
    let pages = futures::stream::unfold(Some(None::<String>), move |state| async move {
        let token = state?;
        match store.list(prefix, token.as_deref(), MAX_LIST_PAGE).await {
            Ok(page) => {
                let next = page.next.map(Some);
                Some((Ok(page.objects), next))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    pages
        .flat_map(|page| match page {
            Ok(objects) => futures::stream::iter(objects.into_iter().map(Ok)).boxed(),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        })
        .boxed()
}

/// Checks metadata against the rules of [`Metadata`].
pub fn validate_metadata(metadata: &Metadata) -> Result<()> {
    let mut total = 0;
    for (k, v) in metadata {
        let mut chars = k.chars();
        let key_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !key_ok {
            return Err(Error::invalid(format!(
                "metadata key {k:?} must be a lowercase identifier ([a-z][a-z0-9_]*)"
            )));
        }
        if !v.chars().all(|c| c.is_ascii_graphic() || c == ' ') || v.starts_with(' ') || v.ends_with(' ') {
            return Err(Error::invalid(format!(
                "metadata value of {k:?} must be printable ASCII without leading or trailing spaces"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_METADATA_BYTES {
        return Err(Error::invalid(format!(
            "metadata is {total} bytes, more than the limit of {MAX_METADATA_BYTES}"
        )));
    }
    Ok(())
}

/// Checks a range request against an object's size and returns the clamped range.
pub fn clamp_range(path: &ObjectPath, range: &Range<u64>, size: u64) -> Result<Range<u64>> {
    if range.start >= range.end {
        return Err(Error::invalid(format!(
            "{path}: empty or reversed range {range:?}"
        )));
    }
    if range.start >= size {
        return Err(Error::invalid(format!(
            "{path}: range {range:?} starts at or past the end of the object ({size} bytes)"
        )));
    }
    Ok(range.start..range.end.min(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_rules() {
        let ok: Metadata = [("pxb_format".into(), "1".into()), ("k2".into(), "a b/c=d".into())].into();
        assert!(validate_metadata(&ok).is_ok());
        for (k, v) in [
            ("Upper", "x"),
            ("1st", "x"),
            ("a-b", "x"),
            ("", "x"),
            ("k", "ü"),
            ("k", " x"),
            ("k", "a\nb"),
        ] {
            let m: Metadata = [(k.to_string(), v.to_string())].into();
            assert!(validate_metadata(&m).is_err(), "{k:?}={v:?} accepted");
        }
        let big: Metadata = [("k".into(), "x".repeat(MAX_METADATA_BYTES))].into();
        assert!(validate_metadata(&big).is_err());
    }

    #[test]
    fn ranges_clamp_or_fail() {
        let p = ObjectPath::parse("x").expect("valid");
        assert_eq!(clamp_range(&p, &(2..100), 10).ok(), Some(2..10));
        assert!(clamp_range(&p, &(10..11), 10).is_err());
        assert!(clamp_range(&p, &(3..3), 10).is_err());
        assert!(clamp_range(&p, &(0..1), 0).is_err());
    }

    fn got(size: u64, pieces: &[&[u8]]) -> GetResult {
        let pieces: Vec<Result<Bytes>> = pieces.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        GetResult {
            meta: ObjectMeta {
                path: ObjectPath::parse("o").expect("path"),
                size,
                last_modified: SystemTime::UNIX_EPOCH,
                e_tag: None,
                metadata: Metadata::new(),
            },
            body: futures::stream::iter(pieces).boxed(),
        }
    }

    /// A body in one piece or in several (empty ones among them) is collected whole; one that
    /// holds more or less than its announced size is refused, as one above the limit is.
    #[tokio::test]
    async fn bodies_are_collected_whole_and_held_to_their_announced_size() {
        /// Pieces of a body, its announced size, and what should be collected (`None`: refused).
        type Case<'a> = (&'a [&'a [u8]], u64, Option<&'a [u8]>);
        let cases: [Case; 8] = [
            (&[b"abcdef"], 6, Some(b"abcdef")),
            (&[b"ab", b"", b"cd", b"ef"], 6, Some(b"abcdef")),
            (&[b"", b"abcdef", b""], 6, Some(b"abcdef")),
            (&[], 0, Some(b"")),
            (&[b"abcdef", b"g"], 6, None),
            (&[b"abcdefg"], 6, None),
            (&[b"abc"], 6, None),
            (&[b"abc", b"", b"de"], 6, None),
        ];
        for (pieces, size, want) in cases {
            let r = got(size, pieces).bytes_at_most(100).await;
            match want {
                Some(w) => assert_eq!(r.expect("whole").as_ref(), w, "{pieces:?}"),
                None => assert!(
                    matches!(r, Err(Error::Corrupt { .. })),
                    "{pieces:?} announced as {size}: {r:?}"
                ),
            }
        }
        let r = got(6, &[b"abcdef"]).bytes_at_most(5).await;
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
    }
}
