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
    // The body may not run past the size the store announced (the disk it fills is bounded by
    // what the location admits to, and the manifest's hash then decides).
    let announced = got.meta.size;
    let mut received = 0u64;
    let mut body = got.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        received += chunk.len() as u64;
        if received > announced {
            return Err(Error::corrupt(format!(
                "{path}: the body holds more than the announced {announced} bytes"
            )));
        }
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

/// The longest record line accepted (a bound against hostile input): a longer line is an error
/// as soon as its first `MAX_LINE + 1` bytes are read.
pub const MAX_LINE: usize = 16 << 20;

/// The most plain bytes a spool may hold per stored byte read (a bound against decompression
/// bombs made of valid records). Real spools of JSON lines compress 5 to 50 times.
pub const MAX_EXPANSION: u64 = 1024;

/// Plain bytes every spool may hold whatever its stored size (two lines of [`MAX_LINE`]), on top
/// of [`MAX_EXPANSION`] times its stored bytes.
pub const EXPANSION_ALLOWANCE: u64 = 2 * MAX_LINE as u64;

/// A reader that counts the bytes it passed on.
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: io::Read> io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

type Decoded<R> = BufReader<zstd::stream::read::Decoder<'static, BufReader<Counted<R>>>>;

/// Reads records from a spooled object's bytes: checks the header, then yields records with
/// errors that name the object and the line. Memory stays bounded whatever the input: a line is
/// read at most [`MAX_LINE`] + 1 bytes far, and the plain stream may not expand past
/// [`EXPANSION_ALLOWANCE`] + [`MAX_EXPANSION`] times the stored bytes read.
pub struct SpoolReader<R: io::Read, T> {
    input: Decoded<R>,
    buf: Vec<u8>,
    plain: u64,
    name: String,
    line: u64,
    done: bool,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<R: io::Read, T: DeserializeOwned> SpoolReader<R, T> {
    /// Opens a reader over stored bytes of the object `name`, which must be of `kind` at `format`.
    pub fn new(reader: R, name: &str, kind: &str, format: u32) -> Result<Self> {
        let dec = zstd::stream::read::Decoder::new(Counted {
            inner: reader,
            read: 0,
        })
        .map_err(|e| Error::corrupt(format!("{name}: not a zstd stream: {e}")))?;
        let mut r = Self {
            input: BufReader::new(dec),
            buf: Vec::new(),
            plain: 0,
            name: name.into(),
            line: 0,
            done: false,
            _t: Default::default(),
        };
        if !r.next_line()? {
            return Err(Error::corrupt(format!("{name}: empty (no header)")));
        }
        let header: Header = serde_json::from_slice(&r.buf)
            .map_err(|e| Error::corrupt(format!("{name}: line 1 is not a pxb header: {e}")))?;
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

    /// Reads the next line into `buf` (without its line ending); `false` at the end.
    fn next_line(&mut self) -> Result<bool> {
        self.line += 1;
        self.buf.clear();
        let n = io::Read::take(&mut self.input, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(|e| {
                Error::corrupt(format!(
                    "{}: unreadable at line {} (truncated or damaged): {e}",
                    self.name, self.line
                ))
            })?;
        if n == 0 {
            return Ok(false);
        }
        self.plain += n as u64;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
            if self.buf.last() == Some(&b'\r') {
                self.buf.pop();
            }
        } else if self.buf.len() > MAX_LINE {
            return Err(Error::corrupt(format!(
                "{}: line {} is longer than {MAX_LINE} bytes",
                self.name, self.line
            )));
        }
        let stored = self.input.get_ref().get_ref().get_ref().read;
        if self.plain > EXPANSION_ALLOWANCE.saturating_add(stored.saturating_mul(MAX_EXPANSION)) {
            return Err(Error::corrupt(format!(
                "{}: expands to more than {} bytes from {stored} stored bytes by line {} \
                 (more than {MAX_EXPANSION} to 1: damaged, or a decompression bomb)",
                self.name, self.plain, self.line
            )));
        }
        Ok(true)
    }
}

impl<R: io::Read, T: DeserializeOwned> Iterator for SpoolReader<R, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.next_line() {
            Ok(false) => None,
            Ok(true) => Some(serde_json::from_slice(&self.buf).map_err(|e| {
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
