//! The resource archive format: framing shared by backup and restore, and the plumbing between
//! async streams and the blocking (zstd, file) side.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, Write};

use bytes::{Buf, Bytes};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiResource, ResourceSelector};
use crate::{Error, Result};

/// The archive format this version writes and reads.
pub const ARCHIVE_FORMAT: u32 = 1;

/// The header's `pxb` value: what kind of pxb file this is.
pub(crate) const ARCHIVE_KIND: &str = "resources";

/// The longest line accepted when reading (the API server stores objects up to about 1.5 MiB).
pub(crate) const MAX_LINE: usize = 16 << 20;

/// zstd level of the archive.
pub(crate) const ARCHIVE_LEVEL: i32 = 3;

/// zstd level of temporary spill files: fast, and still several times smaller than plain JSON.
pub(crate) const SPILL_LEVEL: i32 = 1;

/// The first line of an archive.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Always [`ARCHIVE_KIND`].
    pub(crate) pxb: String,
    /// [`ARCHIVE_FORMAT`] when written by this version.
    pub(crate) format: u64,
    /// The program that wrote it.
    #[serde(default)]
    pub(crate) generator: String,
    /// The namespaces backed up.
    #[serde(default)]
    pub(crate) namespaces: Vec<String>,
    /// The selector of the backup.
    #[serde(default)]
    pub(crate) selector: ResourceSelector,
}

/// The last line of an archive.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Trailer {
    /// How many object lines precede it.
    pub(crate) objects: u64,
}

/// An object line, fully parsed.
#[derive(Debug, Deserialize)]
pub(crate) struct ObjectLine {
    pub(crate) resource: ApiResource,
    pub(crate) object: Value,
}

/// Appends an object line (with its newline) to `out`. `resource_json` is the serialized resource.
pub(crate) fn write_object_line(out: &mut Vec<u8>, resource_json: &[u8], object: &Value) -> Result<()> {
    out.extend_from_slice(b"{\"resource\":");
    out.extend_from_slice(resource_json);
    out.extend_from_slice(b",\"object\":");
    serde_json::to_writer(&mut *out, object)
        .map_err(|e| Error::other(format!("serializing an object: {e}")))?;
    out.extend_from_slice(b"}\n");
    Ok(())
}

/// The end marker line.
pub(crate) fn trailer_line(objects: u64) -> Vec<u8> {
    format!("{{\"end\":{{\"objects\":{objects}}}}}\n").into_bytes()
}

/// Reads newline-terminated lines, refusing lines longer than [`MAX_LINE`].
pub(crate) struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// The number of the line last returned (1-based).
    pub(crate) line: u64,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(8 << 10),
            line: 0,
        }
    }

    /// The next line without its newline, and its number (`Ok(None)` at the end). A last line
    /// without a newline is returned as is; the caller's framing (the end marker) decides whether
    /// that is complete.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        self.buf.clear();
        let n = (&mut self.inner)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        } else if self.buf.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {} is longer than {} MiB", self.line, MAX_LINE >> 20),
            ));
        }
        Ok(Some((self.line, &self.buf)))
    }
}

/// A temporary spill file being written through a zstd encoder.
pub(crate) struct SpillWriter {
    enc: zstd::stream::write::Encoder<'static, BufWriter<File>>,
    /// Uncompressed bytes written.
    pub(crate) bytes: u64,
    /// Lines (or items) written, counted by the caller.
    pub(crate) items: u64,
}

impl SpillWriter {
    /// A new anonymous temporary file (deleted when closed) compressed at `level`, with content
    /// checksums.
    pub(crate) fn create(level: i32) -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| Error::io("creating a temporary file", e))?;
        let mut enc = zstd::stream::write::Encoder::new(BufWriter::with_capacity(256 << 10, file), level)
            .map_err(|e| Error::io("starting zstd compression", e))?;
        enc.include_checksum(true)
            .map_err(|e| Error::io("starting zstd compression", e))?;
        Ok(Self {
            enc,
            bytes: 0,
            items: 0,
        })
    }

    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        self.bytes += data.len() as u64;
        self.enc
            .write_all(data)
            .map_err(|e| Error::io("writing a temporary file", e))
    }

    /// Finishes the compressed stream and returns the file, rewound to its start.
    pub(crate) fn finish(self) -> Result<File> {
        let buffered = self
            .enc
            .finish()
            .map_err(|e| Error::io("finishing zstd compression", e))?;
        let mut file = buffered
            .into_inner()
            .map_err(|e| Error::io("writing a temporary file", e.into_error()))?;
        file.rewind()
            .map_err(|e| Error::io("rewinding a temporary file", e))?;
        Ok(file)
    }
}

/// Reads back a file written by [`SpillWriter`], line by line.
pub(crate) fn spill_reader(
    file: File,
) -> Result<LineReader<BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>>> {
    let dec = zstd::stream::read::Decoder::new(file).map_err(|e| Error::io("reading a temporary file", e))?;
    Ok(LineReader::new(BufReader::with_capacity(256 << 10, dec)))
}

/// A blocking [`Read`] over chunks sent from an async task: the bridge from an object store's
/// byte stream to the zstd decoder running on a blocking thread. The end of the channel is the end
/// of the data (the sending side reports stream errors itself).
pub(crate) struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Waits for a blocking task, turning a panic or cancellation into an error.
pub(crate) async fn join<T>(task: tokio::task::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    task.await
        .map_err(|e| Error::other(format!("{what}: worker task failed: {e}")))?
}
