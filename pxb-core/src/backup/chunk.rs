//! Content-addressed chunks: ids, object names, and the stored encoding.
//!
//! A chunk is stored once per location at `pxb/chunks/<2 hex>/<64 hex>`, named by the BLAKE3 hash
//! of its plain bytes. The stored bytes are `PXC1`, one byte for the encoding (`0` raw, `1` zstd),
//! then the payload. Incompressible data is stored raw.

use std::{fmt, io};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::layout;
use crate::{Error, ObjectPath, Result};

const MAGIC: &[u8; 4] = b"PXC1";
const RAW: u8 = 0;
const ZSTD: u8 = 1;
/// Bytes the stored form puts before the data: the magic and the encoding.
const PREFIX_LEN: usize = MAGIC.len() + 1;

/// The largest plain chunk any reader accepts (a bound against decompression bombs).
pub const MAX_CHUNK_SIZE: usize = 16 << 20;

/// The largest stored chunk object any reader downloads: a raw chunk of [`MAX_CHUNK_SIZE`] plus
/// the 5-byte prefix (a compressed chunk is stored only when it is smaller than the raw one).
pub const MAX_STORED_CHUNK: u64 = (MAX_CHUNK_SIZE + PREFIX_LEN) as u64;

/// The BLAKE3 hash of a chunk's plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self> {
        blake3::Hash::from_hex(s)
            .map(|h| Self(*h.as_bytes()))
            .map_err(|_| Error::corrupt(format!("{s:?} is not a chunk id (64 hex digits)")))
    }

    /// The object that holds the chunk.
    pub fn path(&self) -> ObjectPath {
        let hex = self.to_hex();
        // Hex digits under a constant prefix always form a valid name.
        ObjectPath::parse(format!("{}{}/{hex}", layout::CHUNKS, &hex[..2])).unwrap_or_else(|_| unreachable!())
    }

    /// The chunk id named by an object under [`layout::CHUNKS`], if it is one.
    pub fn from_path(path: &str) -> Option<Self> {
        let rest = path.strip_prefix(layout::CHUNKS)?;
        let (dir, hex) = rest.split_once('/')?;
        let id = Self::from_hex(hex).ok()?;
        (hex.len() == 64 && dir == &hex[..2]).then_some(id)
    }

    /// The first 16 bytes, for compact sets where a collision only costs keeping garbage.
    pub fn prefix(&self) -> u128 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.0[..16]);
        u128::from_be_bytes(b)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for ChunkId {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Bytes of each sample [`looks_incompressible`] takes.
const SAMPLE: usize = 4 << 10;

/// Whether `data` looks like it would not compress: its byte histogram, over up to three samples
/// of 4 KiB (start, middle, end), is close to uniform (above 7.5 bits of entropy per byte) in every
/// sample, as with random, encrypted or already compressed data. Data under 512 bytes never looks
/// incompressible (too few bytes to tell). Costs a few microseconds; zstd would spend
/// milliseconds on a large chunk to find the same.
pub fn looks_incompressible(data: &[u8]) -> bool {
    if data.len() < 512 {
        return false;
    }
    let starts = if data.len() <= SAMPLE {
        vec![0]
    } else {
        vec![0, data.len() / 2 - SAMPLE / 2, data.len() - SAMPLE]
    };
    starts.into_iter().all(|start| {
        let sample = &data[start..(start + SAMPLE).min(data.len())];
        let mut counts = [0u32; 256];
        for &b in sample {
            counts[b as usize] += 1;
        }
        let n = sample.len() as f64;
        let bits: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = f64::from(c) / n;
                -p * p.log2()
            })
            .sum();
        bits > 7.5
    })
}

/// Encodes plain bytes for storage: zstd at `level` unless that does not make them smaller, or
/// raw without trying when the data [`looks_incompressible`].
pub fn encode(data: &[u8], level: i32) -> Vec<u8> {
    if !looks_incompressible(data)
        && let Some(out) = compressed(data, level)
    {
        return out;
    }
    let mut framed = Framed::with_capacity(data.len());
    framed.extend_from_slice(data);
    framed.0
}

/// Plain bytes with room in front for the stored prefix: stored raw ([`encode_framed`]), they
/// are not copied again. Small files are gathered into bundles this way.
#[derive(Debug, Clone)]
pub struct Framed(Vec<u8>);

impl Framed {
    /// Room for `plain` bytes, allocated at once.
    pub fn with_capacity(plain: usize) -> Self {
        let mut buf = Vec::with_capacity(PREFIX_LEN + plain);
        buf.extend_from_slice(MAGIC);
        buf.push(RAW);
        Self(buf)
    }

    /// Appends plain bytes.
    pub fn extend_from_slice(&mut self, plain: &[u8]) {
        self.0.extend_from_slice(plain);
    }

    /// The plain bytes.
    pub fn plain(&self) -> &[u8] {
        &self.0[PREFIX_LEN..]
    }

    /// How many plain bytes.
    pub fn len(&self) -> usize {
        self.0.len() - PREFIX_LEN
    }

    /// Whether there are no plain bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

thread_local! {
    /// One zstd context per thread and level, reused: a new context per chunk allocates and
    /// clears its tables every time.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `data` compressed with zstd at `level` after the prefix, if that makes it smaller.
fn compressed(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(PREFIX_LEN + zstd::zstd_safe::compress_bound(data.len()));
    out.extend_from_slice(MAGIC);
    out.push(ZSTD);
    let start = out.len() as u64;
    let out = COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(l, _)| *l != level) {
            *cell = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, compressor) = cell.as_mut()?;
        // Written into the spare capacity after the prefix: nothing is cleared first.
        let mut cursor = io::Cursor::new(out);
        cursor.set_position(start);
        compressor.compress_to_buffer(data, &mut cursor).ok()?;
        Some(cursor.into_inner())
    })?;
    (out.len() - PREFIX_LEN + 16 < data.len()).then_some(out)
}

/// [`encode`] for bytes already [`Framed`]: zstd at `level` unless that does not make them
/// smaller, or raw, in place, without trying when they [`looks_incompressible`].
pub fn encode_framed(framed: Framed, level: i32) -> Vec<u8> {
    let data = framed.plain();
    if looks_incompressible(data) {
        return framed.0;
    }
    compressed(data, level).unwrap_or(framed.0)
}

/// Decodes stored bytes of the object `path`; with `expect`, also checks the plain bytes' hash.
///
/// Never produces more than [`MAX_CHUNK_SIZE`] bytes: a zstd frame that declares a larger size is
/// refused before anything is allocated, and decompression stops once it passes the maximum.
pub fn decode(path: &str, stored: &[u8], expect: Option<&ChunkId>) -> Result<Vec<u8>> {
    if stored.len() < PREFIX_LEN || &stored[..MAGIC.len()] != MAGIC {
        return Err(Error::corrupt(format!("{path}: not a pxb chunk (bad magic)")));
    }
    let too_big = || {
        Error::corrupt(format!(
            "{path}: the chunk is more than the maximum chunk size of {MAX_CHUNK_SIZE} bytes"
        ))
    };
    let plain = match stored[4] {
        RAW if stored.len() - PREFIX_LEN > MAX_CHUNK_SIZE => return Err(too_big()),
        RAW => stored[PREFIX_LEN..].to_vec(),
        ZSTD => {
            let payload = &stored[PREFIX_LEN..];
            // The frame header's content size, where present, sizes the buffer exactly; it is
            // checked first, so a frame that declares gigabytes allocates nothing.
            let declared = match zstd::zstd_safe::get_frame_content_size(payload) {
                Ok(Some(n)) if n > MAX_CHUNK_SIZE as u64 => {
                    return Err(Error::corrupt(format!(
                        "{path}: the chunk declares {n} plain bytes, more than the maximum chunk \
                         size of {MAX_CHUNK_SIZE}"
                    )));
                }
                Ok(Some(n)) => n as usize,
                Ok(None) => 0,
                Err(_) => {
                    return Err(Error::corrupt(format!(
                        "{path}: chunk does not decompress: no zstd frame"
                    )));
                }
            };
            let mut plain = Vec::with_capacity(declared);
            let dec = zstd::stream::read::Decoder::with_buffer(payload)
                .map_err(|e| Error::corrupt(format!("{path}: chunk does not decompress: {e}")))?;
            io::Read::read_to_end(&mut io::Read::take(dec, MAX_CHUNK_SIZE as u64 + 1), &mut plain)
                .map_err(|e| Error::corrupt(format!("{path}: chunk does not decompress: {e}")))?;
            if plain.len() > MAX_CHUNK_SIZE {
                return Err(too_big());
            }
            plain
        }
        other => return Err(Error::corrupt(format!("{path}: unknown chunk encoding {other}"))),
    };
    check_hash(path, &plain, expect)?;
    Ok(plain)
}

/// [`decode`] for stored bytes already in a [`Bytes`]: a raw chunk's plain bytes are returned as a
/// slice of `stored`, not copied. The same checks, the same errors.
pub fn decode_bytes(path: &str, stored: Bytes, expect: Option<&ChunkId>) -> Result<Bytes> {
    if stored.len() >= PREFIX_LEN
        && &stored[..MAGIC.len()] == MAGIC
        && stored[4] == RAW
        && stored.len() - PREFIX_LEN <= MAX_CHUNK_SIZE
    {
        let plain = stored.slice(PREFIX_LEN..);
        check_hash(path, &plain, expect)?;
        return Ok(plain);
    }
    decode(path, &stored, expect).map(Bytes::from)
}

/// With `expect`, checks that `plain` hashes to it.
fn check_hash(path: &str, plain: &[u8], expect: Option<&ChunkId>) -> Result<()> {
    if let Some(id) = expect {
        let actual = ChunkId::of(plain);
        if actual != *id {
            return Err(Error::corrupt(format!(
                "{path}: content hash is {actual}, expected {id}"
            )));
        }
    }
    Ok(())
}

/// Deterministic incompressible bytes for tests (xorshift), different for each `seed` below 2^63.
#[cfg(test)]
pub(crate) fn test_noise(seed: u64, len: usize) -> Vec<u8> {
    // Odd and different for each seed: xorshift never leaves a non-zero state.
    let mut state = seed.wrapping_mul(2).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_compressible_and_not() {
        let text = b"pxb ".repeat(10_000);
        let noise: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for data in [&text[..], &noise[..], b""] {
            let id = ChunkId::of(data);
            let enc = encode(data, 3);
            assert_eq!(decode("x", &enc, Some(&id)).expect("decode"), data);
        }
        assert!(encode(&text, 3).len() < text.len() / 10);
    }

    #[test]
    fn incompressible_data_is_told_apart_from_text_cheaply() {
        let noise = test_noise(0x9e37_79b9_7f4a_7c15, 1 << 20);
        let text = b"backup restore namespace tenant shoot garden location\n".repeat(20_000);
        assert!(looks_incompressible(&noise));
        assert!(looks_incompressible(&noise[..600]));
        assert!(!looks_incompressible(&text));
        assert!(!looks_incompressible(&noise[..400]), "too short to tell");
        // Text in the middle of noise: the middle sample sees it, so zstd gets its chance.
        let mut mixed = noise.clone();
        mixed[400_000..600_000].copy_from_slice(&text[..200_000]);
        assert!(!looks_incompressible(&mixed));
        let enc = encode(&mixed, 3);
        assert_eq!(enc[4], ZSTD);
        assert_eq!(
            decode("x", &enc, Some(&ChunkId::of(&mixed))).expect("decode"),
            mixed
        );
        // Noise is stored raw without zstd being tried, and reads back.
        let enc = encode(&noise, 3);
        assert_eq!((enc[4], enc.len()), (RAW, noise.len() + 5));
        assert_eq!(
            decode("x", &enc, Some(&ChunkId::of(&noise))).expect("decode"),
            noise
        );
    }

    #[test]
    fn framed_bytes_encode_as_their_plain_bytes_do() {
        let text = b"backup restore namespace tenant\n".repeat(5_000);
        let noise = test_noise(7, 300_000);
        for (data, level) in [(&text[..], 3), (&noise[..], 3), (&text[..], 1), (&b""[..], 3)] {
            let mut framed = Framed::with_capacity(data.len());
            framed.extend_from_slice(&data[..data.len() / 3]);
            framed.extend_from_slice(&data[data.len() / 3..]);
            assert_eq!(
                (framed.plain(), framed.len(), framed.is_empty()),
                (data, data.len(), data.is_empty())
            );
            let enc = encode_framed(framed, level);
            assert_eq!(enc, encode(data, level), "level {level}, {} bytes", data.len());
            assert_eq!(decode("x", &enc, Some(&ChunkId::of(data))).expect("decode"), data);
        }
        // Noise stays raw, in its own buffer; text is compressed.
        assert_eq!(encode(&noise, 3)[4], RAW);
        assert_eq!(encode(&text, 3)[4], ZSTD);
    }

    #[test]
    fn damage_is_named() {
        let data = b"hello chunk".repeat(100);
        let id = ChunkId::of(&data);
        let mut enc = encode(&data, 3);
        let last = enc.len() - 1;
        enc[last] ^= 0xff;
        let err = decode("pxb/chunks/ab/abc", &enc, Some(&id)).expect_err("flipped byte");
        assert!(err.to_string().contains("pxb/chunks/ab/abc"), "{err}");
        assert!(decode("p", b"nope", None).is_err());
        assert!(decode("p", b"PXC1\x07abc", None).is_err());
    }

    /// `decode_bytes` answers as `decode` does, for good and damaged chunks of both encodings,
    /// and gives a raw chunk's bytes without copying them.
    #[test]
    fn decoding_from_bytes_agrees_with_decode_and_shares_raw_bytes() {
        let text = b"backup restore namespace tenant\n".repeat(5_000);
        let noise = test_noise(11, 200_000);
        for data in [&text[..], &noise[..], b""] {
            let id = ChunkId::of(data);
            let enc = encode(data, 3);
            let stored = Bytes::from(enc.clone());
            let got = decode_bytes("x", stored.clone(), Some(&id)).expect("decode");
            assert_eq!(got, data);
            if enc[4] == RAW && !data.is_empty() {
                assert_eq!(
                    got.as_ptr(),
                    stored[PREFIX_LEN..].as_ptr(),
                    "a raw chunk is not copied"
                );
            }
            let mut bad = enc.clone();
            let last = bad.len() - 1;
            if last >= PREFIX_LEN {
                bad[last] ^= 0xff;
                let a = decode("pxb/chunks/ab/x", &bad, Some(&id))
                    .expect_err("damaged")
                    .to_string();
                let b = decode_bytes("pxb/chunks/ab/x", Bytes::from(bad), Some(&id))
                    .expect_err("damaged")
                    .to_string();
                assert_eq!(a, b);
                assert!(b.contains("pxb/chunks/ab/x"), "{b}");
            }
        }
        let mut huge = MAGIC.to_vec();
        huge.push(RAW);
        huge.resize(PREFIX_LEN + MAX_CHUNK_SIZE + 1, 7);
        let err = decode_bytes("p", Bytes::from(huge), None).expect_err("too big");
        assert!(err.to_string().contains("maximum chunk size"), "{err}");
        for junk in [&b"nope"[..], b"PXC1\x07abc", b"PXC"] {
            assert_eq!(
                decode("p", junk, None).expect_err("junk").to_string(),
                decode_bytes("p", Bytes::copy_from_slice(junk), None)
                    .expect_err("junk")
                    .to_string()
            );
        }
    }

    #[test]
    fn paths_roundtrip() {
        let id = ChunkId::of(b"x");
        let p = id.path();
        assert!(p.as_str().starts_with("pxb/chunks/"));
        assert_eq!(ChunkId::from_path(p.as_str()), Some(id));
        assert_eq!(ChunkId::from_path("pxb/chunks/zz/nothex"), None);
        let json = serde_json::to_string(&id).expect("json");
        assert_eq!(serde_json::from_str::<ChunkId>(&json).expect("parse"), id);
    }
}
