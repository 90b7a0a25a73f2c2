//! Spooled, compressed JSON-lines objects: written to a local temp file through zstd while their
//! size and hash are computed, then uploaded in one streamed put; read back by downloading to a
//! temp file and decoding line by line. Memory stays bounded whatever the object's size.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};

use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt;

use crate::{Error, ObjectPath, ObjectStore, PutOptions, Result};

/// The header line of every spooled object.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Header {
    /// What the object holds (`files`, `resources`, ...).
    pub pxb: String,
    /// Its format version.
    pub format: u32,
}

struct Hashing {
    file: File,
    hasher: blake3::Hasher,
    len: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A spooled object being written. Blocking I/O: use from a blocking context or accept the cost
/// of small writes to a local file.
pub struct SpoolWriter {
    enc: zstd::stream::write::Encoder<'static, io::BufWriter<Hashing>>,
    lines: u64,
}

/// A finished spool, ready to upload.
#[derive(Debug)]
pub struct Spooled {
    file: File,
    /// Stored (compressed) size.
    pub size: u64,
    /// BLAKE3 of the stored bytes, hex.
    pub hash: String,
    /// Records written (without the header).
    pub records: u64,
}

impl SpoolWriter {
    /// Starts a spool of `kind` at `format`.
    pub fn new(kind: &str, format: u32) -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| Error::io("creating a temp file", e))?;
        let inner = io::BufWriter::with_capacity(
            1 << 20,
            Hashing {
                file,
                hasher: blake3::Hasher::new(),
                len: 0,
            },
        );
        let enc = zstd::stream::write::Encoder::new(inner, 3).map_err(|e| Error::io("starting zstd", e))?;
        let mut w = Self { enc, lines: 0 };
        w.write_line(&Header {
            pxb: kind.into(),
            format,
        })?;
        w.lines = 0;
        Ok(w)
    }

    fn write_line<T: Serialize>(&mut self, value: &T) -> Result<()> {
        serde_json::to_writer(&mut self.enc, value)
            .map_err(|e| Error::other("encoding a record").with_source(e))?;
        self.enc
            .write_all(b"\n")
            .map_err(|e| Error::io("writing the spool", e))?;
        self.lines += 1;
        Ok(())
    }

    /// Appends one record.
    pub fn push<T: Serialize>(&mut self, record: &T) -> Result<()> {
        self.write_line(record)
    }

    /// Finishes compression and rewinds the file.
    pub fn finish(self) -> Result<Spooled> {
        let inner = self.enc.finish().map_err(|e| Error::io("finishing zstd", e))?;
        let mut h = inner
            .into_inner()
            .map_err(|e| Error::io("flushing the spool", e.into_error()))?;
        h.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| Error::io("rewinding the spool", e))?;
        Ok(Spooled {
            size: h.len,
            hash: h.hasher.finalize().to_hex().to_string(),
            file: h.file,
            records: self.lines,
        })
    }
}

impl Spooled {
    /// The spooled bytes as a file, positioned at the start.
    pub fn into_file(self) -> File {
        self.file
    }

    /// Uploads the spool to `path` with a streamed put.
    pub async fn upload(self, store: &dyn ObjectStore, path: &ObjectPath, opts: PutOptions) -> Result<()> {
        store
            .put_stream(path, Box::new(tokio::fs::File::from_std(self.file)), opts)
            .await?;
        Ok(())
    }
}

/// Downloads `path` to a temp file, checking size and, given `hash`, the BLAKE3 of the stored bytes.
pub async fn download(store: &dyn ObjectStore, path: &ObjectPath, hash: Option<&str>) -> Result<File> {
    let got = store.get(path).await?;
    let file = tempfile::tempfile().map_err(|e| Error::io("creating a temp file", e))?;
    let mut out = tokio::fs::File::from_std(file);
    let mut hasher = blake3::Hasher::new();
    let mut body = got.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        out.write_all(&chunk)
            .await
            .map_err(|e| Error::io("writing a temp file", e))?;
    }
    out.flush()
        .await
        .map_err(|e| Error::io("writing a temp file", e))?;
    if let Some(expected) = hash {
        let actual = hasher.finalize().to_hex();
        if actual.as_str() != expected {
            return Err(Error::corrupt(format!(
                "{path}: content hash is {actual}, the manifest says {expected}"
            )));
        }
    }
    let mut file = out.into_std().await;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io("rewinding a temp file", e))?;
    Ok(file)
}

/// Reads records from a spooled object's bytes: checks the header, then yields records with
/// errors that name the object and the line.
pub struct SpoolReader<R: io::Read, T> {
    lines: io::Lines<BufReader<zstd::stream::read::Decoder<'static, BufReader<R>>>>,
    name: String,
    line: u64,
    done: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

/// The longest record line accepted (a bound against hostile input).
pub const MAX_LINE: usize = 16 << 20;

impl<R: io::Read, T: DeserializeOwned> SpoolReader<R, T> {
    /// Opens a reader over stored bytes of the object `name`, which must be of `kind` at `format`.
    pub fn new(reader: R, name: &str, kind: &str, format: u32) -> Result<Self> {
        let dec = zstd::stream::read::Decoder::new(reader)
            .map_err(|e| Error::corrupt(format!("{name}: not a zstd stream: {e}")))?;
        let mut r = Self {
            lines: BufReader::new(dec).lines(),
            name: name.into(),
            line: 0,
            done: false,
            _t: Default::default(),
        };
        let header: Header = match r.next_line()? {
            Some(l) => serde_json::from_str(&l)
                .map_err(|e| Error::corrupt(format!("{name}: line 1 is not a pxb header: {e}")))?,
            None => return Err(Error::corrupt(format!("{name}: empty (no header)"))),
        };
        if header.pxb != kind {
            return Err(Error::corrupt(format!(
                "{name}: holds {:?}, expected {kind:?}",
                header.pxb
            )));
        }
        if header.format != format {
            return Err(Error::corrupt(format!(
                "{name}: {kind} format {} is not supported (this pxb reads format {format})",
                header.format
            )));
        }
        Ok(r)
    }

    fn next_line(&mut self) -> Result<Option<String>> {
        self.line += 1;
        match self.lines.next() {
            None => Ok(None),
            Some(Ok(l)) if l.len() > MAX_LINE => Err(Error::corrupt(format!(
                "{}: line {} is longer than {MAX_LINE} bytes",
                self.name, self.line
            ))),
            Some(Ok(l)) => Ok(Some(l)),
            Some(Err(e)) => Err(Error::corrupt(format!(
                "{}: unreadable at line {} (truncated or damaged): {e}",
                self.name, self.line
            ))),
        }
    }
}

impl<R: io::Read, T: DeserializeOwned> Iterator for SpoolReader<R, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.next_line() {
            Ok(None) => None,
            Ok(Some(l)) => Some(serde_json::from_str(&l).map_err(|e| {
                Error::corrupt(format!(
                    "{}: line {} is not a valid record: {e}",
                    self.name, self.line
                ))
            })),
            Err(e) => Some(Err(e)),
        };
        // Stop after the first error: the rest of a damaged stream is not trustworthy.
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}
