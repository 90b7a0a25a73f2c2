//! The backup engine and the on-location format (location formats 1 and 2); see `docs/format.md`.
//!
//! A [`Repository`] is a location seen through this format. Backups are committed by writing
//! their manifest last; summaries ride in the manifests' listing metadata, and (format 2) the
//! markers of past days are folded into per-day [`packs`], so [`Repository::sync`] enumerates
//! every backup with a handful of list calls and reads; [`volume`] moves file trees in
//! content-defined, deduplicated chunks; [`Repository::verify`] checks what manifests reference;
//! [`Repository::delete`] and [`Repository::gc`] reclaim space safely.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::store::list_all;
use crate::{Clock, Error, Metadata, ObjectPath, ObjectStore, PutOptions, Result, SystemClock};

pub mod chunk;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod gc;
pub mod locks;
pub mod packs;
pub mod resources;
pub mod spool;
pub mod verify;
pub mod volume;

pub use chunk::ChunkId;

/// The format of the objects this code writes and reads (manifests, indexes, chunks).
pub const FORMAT: u32 = 1;

/// The location format a new location gets (`pxb/config`): 2 adds packs and tombstones
/// ([`packs`]).
pub const LOCATION_FORMAT: u32 = 2;

/// The oldest location format this code reads and writes.
pub const OLDEST_LOCATION_FORMAT: u32 = 1;

/// The largest manifest any reader downloads; a bigger one is refused as corrupt while it streams
/// (see `docs/format.md`, "Limits").
pub const MAX_MANIFEST_SIZE: u64 = 16 << 20;

/// The largest `pxb/config` any reader downloads.
pub const MAX_CONFIG_SIZE: u64 = 64 << 10;

/// Object names of the format.
pub mod layout {
    /// The location's config object: the format version, written once.
    pub const CONFIG: &str = "pxb/config";
    /// Prefix of commit markers (manifests), one per backup, named by backup id.
    pub const MANIFESTS: &str = "pxb/manifests/";
    /// Prefix of each backup's own objects: `pxb/backups/<id>/...`.
    pub const BACKUPS: &str = "pxb/backups/";
    /// Prefix of content-addressed chunks.
    pub const CHUNKS: &str = "pxb/chunks/";
    /// Prefix of locks (leases) of running backups and GC.
    pub const LOCKS: &str = "pxb/locks/";
    /// Prefix of the packs of folded commit markers, by day (format 2).
    pub const PACKS: &str = "pxb/packs/";
    /// Prefix of tombstones of deleted backups, named by backup id (format 2).
    pub const TOMBSTONES: &str = "pxb/tombstones/";
    /// Listing-metadata key of a manifest's summary.
    pub const SUMMARY_KEY: &str = "pxb_summary";
    /// Listing-metadata key of a manifest's format.
    pub const FORMAT_KEY: &str = "pxb_format";
}

/// A backup's id: its UTC creation time and a random suffix, so ids sort by time
/// (`20261122T003000Z-1a2b3c4d`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// A new id for a backup created at `at`.
    pub fn new(at: SystemTime) -> Self {
        // `2026-11-22T00:30:00Z` without the separators.
        let stamp: String = crate::clock::rfc3339(at.max(UNIX_EPOCH))
            .chars()
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        Self(format!("{stamp}-{:08x}", rand::random::<u32>()))
    }

    /// Validates an id given by a user or found in a location.
    pub fn parse(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !s.starts_with('.');
        if !ok {
            return Err(Error::invalid(format!("{s:?} is not a backup id")));
        }
        Ok(Self(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The manifest (commit marker) of this backup.
    pub fn manifest_path(&self) -> ObjectPath {
        ObjectPath::parse(format!("{}{}", layout::MANIFESTS, self.0)).unwrap_or_else(|_| unreachable!())
    }

    /// One of this backup's own objects.
    pub fn object_path(&self, name: &str) -> Result<ObjectPath> {
        ObjectPath::parse(format!("{}{}/{name}", layout::BACKUPS, self.0))
    }
}

impl TryFrom<String> for BackupId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl std::fmt::Display for BackupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupKind {
    /// A file tree (volume data).
    Volume,
    /// Kubernetes resources of namespaces.
    Resources,
}

/// How a backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// Everything was backed up.
    Completed,
    /// Committed, but some items could not be read (see the manifest's warnings).
    PartiallyFailed,
}

/// One object a manifest references, with what is needed to check it deeply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// Its name under the backup's prefix (`files`, `resources`).
    pub name: String,
    /// Stored size.
    pub size: u64,
    /// BLAKE3 of the stored bytes, hex.
    pub blake3: String,
}

/// Sizes and counts of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Items skipped (unreadable, special files, names that are not UTF-8).
    pub skipped: u64,
    /// Plain bytes of all files.
    pub bytes: u64,
    /// Plain bytes read from files (changed or new since the parent).
    pub bytes_read: u64,
    /// Chunks referenced.
    pub chunks: u64,
    /// Chunks this backup uploaded (the rest already existed).
    pub new_chunks: u64,
    /// Stored bytes this backup uploaded (chunks and its own objects).
    pub stored_bytes: u64,
    /// Kubernetes objects (resource backups).
    pub objects: u64,
}

/// A backup's commit marker: the last object written, the first deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The format version.
    pub format: u32,
    /// The backup's id.
    pub id: BackupId,
    /// What it holds.
    pub kind: BackupKind,
    /// When it started, Unix seconds.
    pub created: u64,
    /// When it was committed, Unix seconds.
    pub completed: u64,
    /// How it ended.
    pub status: BackupStatus,
    /// The cluster it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The namespaces it covers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// A user-chosen tag (also selects the parent of the next incremental backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The backed-up path, for volume backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The backup this one was incremental to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<BackupId>,
    /// The backup's own objects.
    pub objects: Vec<ManifestObject>,
    /// Sizes and counts.
    pub stats: BackupStats,
    /// What went wrong without failing the backup (at most 100 entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Resource backups: the volume backups taken with it, one per persistent volume claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeRef>,
}

/// A volume backup that belongs to a resource backup: the claim's data at backup time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRef {
    /// Namespace of the claim.
    pub namespace: String,
    /// Name of the claim.
    pub claim: String,
    /// The volume backup.
    pub backup: BackupId,
    /// The claim's `spec` at backup time (size, access modes, storage class), so a restore can
    /// provision a matching volume before the claim exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<serde_json::Value>,
}

impl Manifest {
    /// Stands in for a manifest that exists but cannot be read.
    fn placeholder(id: &BackupId) -> Self {
        Self {
            format: FORMAT,
            id: id.clone(),
            kind: BackupKind::Volume,
            created: 0,
            completed: 0,
            status: BackupStatus::PartiallyFailed,
            cluster: None,
            namespaces: Vec::new(),
            tag: None,
            source: None,
            parent: None,
            objects: Vec::new(),
            stats: BackupStats::default(),
            warnings: Vec::new(),
            volumes: Vec::new(),
        }
    }
}

/// What [`Repository::sync`] and `pxb backup list` show of a backup, read from listing metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The backup's id.
    pub id: BackupId,
    /// What it holds.
    pub kind: BackupKind,
    /// When it started, Unix seconds.
    pub created: u64,
    /// How it ended.
    pub status: BackupStatus,
    /// The cluster it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The namespaces it covers (possibly truncated; see `namespaces_truncated`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Whether `namespaces` was cut to fit the listing metadata.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub namespaces_truncated: bool,
    /// Its tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The backed-up path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Plain bytes.
    pub bytes: u64,
    /// Stored bytes it uploaded.
    pub stored_bytes: u64,
    /// Files (volume) or objects (resources).
    pub items: u64,
}

impl Summary {
    /// The summary of a manifest.
    pub fn of(m: &Manifest) -> Self {
        Self {
            id: m.id.clone(),
            kind: m.kind,
            created: m.created,
            status: m.status,
            cluster: m.cluster.clone(),
            namespaces: m.namespaces.clone(),
            namespaces_truncated: false,
            tag: m.tag.clone(),
            source: m.source.clone(),
            bytes: m.stats.bytes,
            stored_bytes: m.stats.stored_bytes,
            items: if m.kind == BackupKind::Volume {
                m.stats.files
            } else {
                m.stats.objects
            },
        }
    }

    /// The summary as listing metadata: ASCII-only JSON, cut to fit the metadata limit.
    fn to_metadata_value(&self) -> Result<String> {
        let mut s = self.clone();
        loop {
            let json = ascii_json(&s)?;
            if json.len() <= crate::store::MAX_METADATA_BYTES - 64 || s.namespaces.is_empty() {
                return Ok(json);
            }
            let keep = s.namespaces.len() / 2;
            s.namespaces.truncate(keep);
            s.namespaces_truncated = true;
        }
    }
}

/// JSON with every non-ASCII character escaped, so it fits in an HTTP header.
fn ascii_json<T: Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_string(value).map_err(|e| Error::other("encoding a summary").with_source(e))?;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    Ok(out)
}

/// The location's config object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// The format version of the location.
    pub format: u32,
    /// Smallest chunk of the content-defined chunker.
    pub chunk_min: u32,
    /// Average chunk.
    pub chunk_avg: u32,
    /// Largest chunk.
    pub chunk_max: u32,
}

impl Default for RepoConfig {
    fn default() -> Self {
        Self {
            format: LOCATION_FORMAT,
            chunk_min: 512 << 10,
            chunk_avg: 1 << 20,
            chunk_max: 8 << 20,
        }
    }
}

/// What changed since the last [`Repository::sync`].
#[derive(Debug, Clone, Default)]
pub struct SyncDelta {
    /// Backups that appeared.
    pub added: Vec<Summary>,
    /// Backups that disappeared.
    pub removed: Vec<BackupId>,
    /// Markers, packs or tombstones that could not be read (named, with the reason).
    pub unreadable: Vec<(String, String)>,
    /// Commit markers old enough to be folded into packs ([`packs::compact`]), by this machine's
    /// clock.
    pub foldable: u64,
    /// Tombstones a compaction could remove, by this machine's clock.
    pub tombstones: u64,
}

/// What a [`Repository::sync`] caller keeps between syncs: the backups known so far.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// Known backups by id.
    pub backups: BTreeMap<BackupId, Summary>,
    /// The pack generation read of each day, so an unchanged day is not read again.
    pub packs: BTreeMap<String, PackSeen>,
}

/// A day's pack as a sync read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSeen {
    /// Its generation.
    pub generation: u64,
    /// The entity tag of its summaries object.
    pub e_tag: Option<String>,
    /// The backups it holds.
    pub backups: Vec<BackupId>,
}

/// A pack's manifests by backup id.
pub(crate) type PackManifests = Arc<std::collections::HashMap<BackupId, Manifest>>;

/// The manifests of the last pack a [`Repository`] read (see [`packs`]).
#[derive(Debug, Default)]
pub(crate) struct PackCache {
    /// Its manifests object, entity tag, and manifests by id.
    pub(crate) last: Option<(ObjectPath, Option<String>, PackManifests)>,
}

/// A location seen through the backup format.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    pack_cache: Arc<std::sync::Mutex<PackCache>>,
}

impl Repository {
    /// The repository in `store`, with the system clock.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemClock),
            pack_cache: Arc::default(),
        }
    }

    /// The same repository with another clock (for tests of leases and grace periods).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The underlying store.
    pub fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    /// The shared handle of the underlying store.
    pub fn store_arc(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The clock in use.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    pub(crate) fn now_secs(&self) -> u64 {
        crate::clock::unix_secs(self.clock.now())
    }

    fn config_path() -> ObjectPath {
        ObjectPath::parse(layout::CONFIG).unwrap_or_else(|_| unreachable!())
    }

    /// Reads the location's config; [`Error::NotFound`] if no backup was ever written here.
    pub async fn open(&self) -> Result<RepoConfig> {
        let path = Self::config_path();
        let bytes = match self.store.get(&path).await {
            Ok(g) => g.bytes_at_most(MAX_CONFIG_SIZE).await?,
            Err(Error::NotFound { .. }) => {
                return Err(Error::not_found(format!(
                    "no pxb backups in {} ({} is missing)",
                    self.store,
                    layout::CONFIG
                )));
            }
            Err(e) => return Err(e),
        };
        parse_config(&bytes).map_err(|e| e.context(&self.store))
    }

    /// Reads the config, writing the default one first if the location is new.
    pub async fn open_or_init(&self) -> Result<RepoConfig> {
        match self.open().await {
            Err(Error::NotFound { .. }) => {
                let body = serde_json::to_vec(&RepoConfig::default())
                    .map_err(|e| Error::other("config").with_source(e))?;
                match self
                    .store
                    .put(&Self::config_path(), body.into(), PutOptions::create())
                    .await
                {
                    Ok(_) | Err(Error::AlreadyExists { .. }) => self.open().await,
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    /// Moves a location of an earlier format to [`LOCATION_FORMAT`]; returns the format it had.
    /// Done again, it changes nothing. Only the config changes: what the location holds is
    /// read as before, and the next compaction folds its old markers into packs. Upgrade once
    /// no earlier pxb uses the location; from then on an earlier pxb refuses it ("uses pxb
    /// format 2"). A location with no config yet is [`Error::NotFound`].
    pub async fn upgrade(&self) -> Result<u32> {
        let config = self.open().await?;
        if config.format >= LOCATION_FORMAT {
            return Ok(config.format);
        }
        let upgraded = RepoConfig {
            format: LOCATION_FORMAT,
            ..config.clone()
        };
        let body = serde_json::to_vec(&upgraded).map_err(|e| Error::other("config").with_source(e))?;
        // An overwrite: the config changes in no other way, and two upgrades write the same.
        self.store
            .put(&Self::config_path(), body.into(), PutOptions::default())
            .await?;
        Ok(config.format)
    }

    /// Writes `manifest` as the commit marker, with its summary in the listing metadata.
    pub async fn commit(&self, manifest: &Manifest) -> Result<()> {
        let body = serde_json::to_vec_pretty(manifest)
            .map_err(|e| Error::other("encoding a manifest").with_source(e))?;
        let mut md = Metadata::new();
        md.insert(layout::FORMAT_KEY.into(), FORMAT.to_string());
        md.insert(
            layout::SUMMARY_KEY.into(),
            Summary::of(manifest).to_metadata_value()?,
        );
        self.store
            .put(
                &manifest.id.manifest_path(),
                body.into(),
                PutOptions::create().with_metadata(md),
            )
            .await?;
        Ok(())
    }

    /// Every backup's summary, oldest first.
    pub async fn list(&self) -> Result<Vec<Summary>> {
        let mut state = SyncState::default();
        self.sync(&mut state).await?;
        Ok(state.backups.into_values().collect())
    }

    /// Deletes a backup: withdraws it first ([`Repository::withdraw`]: it leaves listings at once),
    /// then deletes its own objects. Chunks are left to [`Repository::gc`]. Deleting a missing backup is an error;
    /// retrying a half-done delete finishes it.
    pub async fn delete(&self, id: &BackupId) -> Result<Vec<String>> {
        let manifest = match self.manifest(id).await {
            Ok(m) => Some(m),
            Err(Error::NotFound { .. }) => None,
            // A damaged manifest can still be deleted: that is how a user gets rid of it.
            Err(Error::Corrupt { message, .. }) => {
                tracing::warn!(%id, %message, "deleting a backup whose manifest is damaged");
                Some(Manifest::placeholder(id))
            }
            Err(e) => return Err(e),
        };
        // The manifest names the objects; without it (a retry), list the backup's prefix.
        let prefix = format!("{}{}/", layout::BACKUPS, id);
        let own: Vec<ObjectPath> = list_all(self.store.as_ref(), &prefix)
            .map_ok(|m| m.path)
            .try_collect()
            .await?;
        if manifest.is_none() && own.is_empty() {
            return Err(Error::not_found(format!("backup {id}")));
        }
        self.withdraw(id).await?;
        let mut deleted = vec![id.manifest_path().to_string()];
        for path in own {
            self.store.delete(&path).await?;
            deleted.push(path.to_string());
        }
        Ok(deleted)
    }
}

/// Parses the location config object.
pub fn parse_config(bytes: &[u8]) -> Result<RepoConfig> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(format!("{}: not JSON: {e}", layout::CONFIG)))?;
    let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if !(u64::from(OLDEST_LOCATION_FORMAT)..=u64::from(LOCATION_FORMAT)).contains(&format) {
        return Err(Error::corrupt(format!(
            "the location uses pxb format {format}; this pxb reads formats {OLDEST_LOCATION_FORMAT} to {LOCATION_FORMAT}"
        )));
    }
    let cfg: RepoConfig =
        serde_json::from_value(value).map_err(|e| Error::corrupt(format!("{}: {e}", layout::CONFIG)))?;
    let ok = 64 <= cfg.chunk_min
        && cfg.chunk_min <= cfg.chunk_avg
        && cfg.chunk_avg <= cfg.chunk_max
        && cfg.chunk_min <= 1 << 20
        && (256..=4 << 20).contains(&cfg.chunk_avg)
        && (1024..=16 << 20).contains(&cfg.chunk_max);
    if !ok {
        return Err(Error::corrupt(format!(
            "{}: chunker sizes {}/{}/{} are out of range",
            layout::CONFIG,
            cfg.chunk_min,
            cfg.chunk_avg,
            cfg.chunk_max
        )));
    }
    Ok(cfg)
}

/// Parses a manifest object named `name` (at most [`MAX_MANIFEST_SIZE`] bytes).
pub fn parse_manifest(name: &str, bytes: &[u8]) -> Result<Manifest> {
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(Error::corrupt(format!(
            "{name}: {} bytes, more than the {MAX_MANIFEST_SIZE} bytes a manifest may hold",
            bytes.len()
        )));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::corrupt(format!("{name}: not JSON: {e}")))?;
    manifest_from_value(name, value)
}

/// A manifest from parsed JSON, its format checked.
pub(crate) fn manifest_from_value(name: &str, value: serde_json::Value) -> Result<Manifest> {
    let format = value.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format != u64::from(FORMAT) {
        return Err(Error::corrupt(format!(
            "{name}: manifest format {format} is not supported (this pxb reads format {FORMAT})"
        )));
    }
    serde_json::from_value(value).map_err(|e| Error::corrupt(format!("{name}: not a valid manifest: {e}")))
}

/// Parses the summary in a manifest's listing metadata.
pub fn parse_summary(id: &BackupId, md: &Metadata) -> Result<Summary> {
    let format = md.get(layout::FORMAT_KEY).map(String::as_str).unwrap_or("");
    if format != FORMAT.to_string() {
        return Err(Error::corrupt(format!(
            "backup {id}: format {format:?} is not supported (this pxb reads {FORMAT})"
        )));
    }
    let raw = md
        .get(layout::SUMMARY_KEY)
        .ok_or_else(|| Error::corrupt(format!("backup {id}: the manifest has no summary metadata")))?;
    // Listing metadata comes from the location too: no more than any store may hold.
    if raw.len() > crate::store::MAX_METADATA_BYTES {
        return Err(Error::corrupt(format!(
            "backup {id}: the summary is {} bytes, more than the {} bytes of metadata an object may carry",
            raw.len(),
            crate::store::MAX_METADATA_BYTES
        )));
    }
    let s: Summary = serde_json::from_str(raw)
        .map_err(|e| Error::corrupt(format!("backup {id}: unreadable summary: {e}")))?;
    if &s.id != id {
        return Err(Error::corrupt(format!(
            "backup {id}: the summary names backup {}",
            s.id
        )));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_validate() {
        let a = BackupId::new(UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000));
        let b = BackupId::new(UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_001));
        assert!(a < b);
        assert!(a.as_str().starts_with("20260921T"), "{a}");
        assert!(BackupId::parse("../x").is_err());
        assert!(BackupId::parse(".x").is_err());
        assert!(BackupId::parse(a.as_str()).is_ok());
    }

    #[test]
    fn summary_metadata_is_ascii_and_bounded() {
        let m = Manifest {
            format: FORMAT,
            id: BackupId::new(SystemTime::now()),
            kind: BackupKind::Resources,
            created: 1,
            completed: 2,
            status: BackupStatus::Completed,
            cluster: Some("shoot-ü".into()),
            namespaces: (0..2000).map(|i| format!("namespace-{i}")).collect(),
            tag: None,
            source: None,
            parent: None,
            objects: vec![],
            stats: BackupStats::default(),
            warnings: vec![],
            volumes: vec![],
        };
        let v = Summary::of(&m).to_metadata_value().expect("summary");
        assert!(v.is_ascii() && v.len() <= crate::store::MAX_METADATA_BYTES);
        let back: Summary = serde_json::from_str(&v).expect("parse");
        assert_eq!(back.cluster.as_deref(), Some("shoot-ü"));
        assert!(back.namespaces_truncated && !back.namespaces.is_empty());
    }
}
