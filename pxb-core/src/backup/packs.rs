//! Location format 2: the commit markers of a day folded into packs, and tombstones.
//!
//! A location of format 1 holds one commit marker per backup, so a sync lists every backup ever
//! kept. Format 2 keeps committing markers exactly as format 1 does, and a compaction
//! ([`compact`]) folds markers older than [`CompactOptions::min_age`] into one pack per day of the
//! backups' ids: `pxb/packs/<day>/<generation>.manifests` (every manifest of the day, read by
//! restore, verify, delete and GC) and then `pxb/packs/<day>/<generation>` (their summaries, what
//! a sync reads; it commits the generation). Both are written create-only, numbered above every
//! number listed for the day, and readers use the highest committed generation of each day. A
//! generation is built from the highest one before it plus markers, so each one holds everything
//! the one before held except what tombstones removed. Markers are deleted only after the
//! generation holding them is the highest.
//!
//! Deleting a backup of a format-2 location writes `pxb/tombstones/<id>` first; every reader
//! leaves a tombstoned backup out, wherever it is found. A compaction writes the day's pack
//! without it, and removes the tombstone [`TOMBSTONE_KEEP`] after it was written, once the
//! highest generation of its day no longer holds the backup. A sync lists tombstones, then
//! markers, then packs, so a backup never comes back: whatever removed a tombstone had first made
//! every later generation leave the backup out. The argument in full is in `docs/format.md`.
//!
//! Every pack object is checked as it is read: bounded size ([`MAX_PACK_BYTES`]), its own name
//! inside, entries of its own day, no backup twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::locks::{self, GcLock};
use super::{
    BackupId, LOCATION_FORMAT, MAX_MANIFEST_SIZE, Manifest, PackSeen, Repository, Summary, SyncDelta,
    SyncState, layout, manifest_from_value, parse_manifest, parse_summary,
};
use crate::store::list_all;
use crate::{Error, ObjectMeta, ObjectPath, PutOptions, Result};

/// The largest pack object any reader downloads or decompresses; a day whose pack would be
/// larger keeps its markers.
pub const MAX_PACK_BYTES: u64 = 256 << 20;

/// How long a tombstone stays after it was written, and a superseded generation after the one
/// above it landed (store time): longer than any reader takes between its listing and its reads.
pub const TOMBSTONE_KEEP: Duration = Duration::from_secs(3600);

/// A sync that finds this many markers older than [`FOLD_AGE`] asks for a
/// compaction (`SyncDelta::foldable`).
pub const COMPACT_AFTER: u64 = 256;

/// Reads and writes in flight at once.
const CONCURRENCY: usize = 16;

/// The day a backup belongs to: the date of its id (`20261122`), or `other` for ids that do not
/// start with one.
pub fn day_of(id: &BackupId) -> &str {
    let s = id.as_str();
    match s.get(..8) {
        Some(d) if d.bytes().all(|b| b.is_ascii_digit()) => d,
        _ => "other",
    }
}

fn valid_day(day: &str) -> bool {
    day == "other" || (day.len() == 8 && day.bytes().all(|b| b.is_ascii_digit()))
}

fn pack_path(day: &str, generation: u64, manifests: bool) -> Result<ObjectPath> {
    let suffix = if manifests { ".manifests" } else { "" };
    ObjectPath::parse(format!("{}{day}/{generation:010}{suffix}", layout::PACKS))
}

fn tombstone_path(id: &BackupId) -> Result<ObjectPath> {
    ObjectPath::parse(format!("{}{id}", layout::TOMBSTONES))
}

/// A pack object's name: its day, generation, and whether it is the manifests half.
fn parse_pack_name(path: &str) -> Option<(String, u64, bool)> {
    let rest = path.strip_prefix(layout::PACKS)?;
    let (day, file) = rest.split_once('/')?;
    let (number, manifests) = match file.strip_suffix(".manifests") {
        Some(n) => (n, true),
        None => (file, false),
    };
    if !valid_day(day) || number.len() != 10 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((day.to_owned(), number.parse().ok()?, manifests))
}

/// The pack objects of one day, as listed.
#[derive(Debug, Default)]
struct DayPacks {
    /// Every generation number seen, with its summaries (the commit) and manifests objects.
    generations: BTreeMap<u64, (Option<ObjectMeta>, Option<ObjectMeta>)>,
}

impl DayPacks {
    /// The highest committed generation.
    fn highest(&self) -> Option<(u64, &ObjectMeta)> {
        self.generations
            .iter()
            .rev()
            .find_map(|(g, (s, _))| s.as_ref().map(|s| (*g, s)))
    }

    /// The number above every number listed.
    fn next_number(&self) -> u64 {
        self.generations.keys().next_back().map_or(1, |g| g + 1)
    }
}

/// Lists the pack objects under `prefix` (all days, or one), by day. Names that are not pack
/// names are returned apart.
async fn list_packs(repo: &Repository, prefix: &str) -> Result<(BTreeMap<String, DayPacks>, Vec<String>)> {
    let mut days: BTreeMap<String, DayPacks> = BTreeMap::new();
    let mut strange = Vec::new();
    let mut listing = list_all(repo.store(), prefix);
    while let Some(meta) = listing.try_next().await? {
        let Some((day, generation, manifests)) = parse_pack_name(meta.path.as_str()) else {
            strange.push(meta.path.to_string());
            continue;
        };
        let slot = days
            .entry(day)
            .or_default()
            .generations
            .entry(generation)
            .or_default();
        if manifests {
            slot.1 = Some(meta);
        } else {
            slot.0 = Some(meta);
        }
    }
    Ok((days, strange))
}

/// Every tombstone, with the store time it was written; names that are not backup ids apart.
async fn list_tombstones(repo: &Repository) -> Result<(BTreeMap<BackupId, SystemTime>, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut strange = Vec::new();
    let mut listing = list_all(repo.store(), layout::TOMBSTONES);
    while let Some(meta) = listing.try_next().await? {
        match BackupId::parse(meta.path.as_str().trim_start_matches(layout::TOMBSTONES)) {
            Ok(id) => {
                out.insert(id, meta.last_modified);
            }
            Err(_) => strange.push(meta.path.to_string()),
        }
    }
    Ok((out, strange))
}

/// The body of a pack object (zstd-compressed JSON).
#[derive(Serialize, Deserialize)]
struct PackFile<T> {
    /// The location format that wrote it.
    format: u32,
    /// Its day.
    day: String,
    /// Its generation.
    generation: u64,
    /// Summaries or manifests, by backup id.
    entries: Vec<T>,
}

fn encode<T: Serialize>(day: &str, generation: u64, entries: Vec<T>) -> Result<Bytes> {
    let file = PackFile {
        format: LOCATION_FORMAT,
        day: day.to_owned(),
        generation,
        entries,
    };
    let json = serde_json::to_vec(&file).map_err(|e| Error::other("encoding a pack").with_source(e))?;
    let packed = zstd::bulk::compress(&json, 3).map_err(|e| Error::io("compressing a pack", e))?;
    Ok(packed.into())
}

/// Reads and checks a pack object: bounded size, compressed JSON naming its own day and generation.
async fn read_pack<T: DeserializeOwned>(
    repo: &Repository,
    path: &ObjectPath,
    day: &str,
    generation: u64,
) -> Result<Vec<T>> {
    let packed = repo
        .store()
        .get(path)
        .await?
        .bytes_at_most(MAX_PACK_BYTES)
        .await?;
    let name = path.as_str();
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(&packed[..])
        .and_then(|d| d.take(MAX_PACK_BYTES + 1).read_to_end(&mut json))
        .map_err(|e| Error::corrupt(format!("{name}: not a pack: {e}")))?;
    if json.len() as u64 > MAX_PACK_BYTES {
        return Err(Error::corrupt(format!(
            "{name}: more than the {MAX_PACK_BYTES} bytes a pack may hold"
        )));
    }
    let file: PackFile<T> = serde_json::from_slice(&json)
        .map_err(|e| Error::corrupt(format!("{name}: not a valid pack: {e}")))?;
    if !(1..=LOCATION_FORMAT).contains(&file.format) || file.day != day || file.generation != generation {
        return Err(Error::corrupt(format!(
            "{name}: the pack says format {}, day {:?}, generation {}",
            file.format, file.day, file.generation
        )));
    }
    Ok(file.entries)
}

/// A day's summaries, checked: every id of the day, none twice.
async fn read_summaries(repo: &Repository, day: &str, generation: u64) -> Result<Vec<Summary>> {
    let path = pack_path(day, generation, false)?;
    let entries: Vec<Summary> = read_pack(repo, &path, day, generation).await?;
    check_ids(&path, day, entries.iter().map(|s| &s.id))?;
    Ok(entries)
}

/// A day's manifests, checked as manifests and as a pack.
async fn read_manifests(repo: &Repository, day: &str, generation: u64) -> Result<Vec<Manifest>> {
    let path = pack_path(day, generation, true)?;
    let values: Vec<serde_json::Value> = read_pack(repo, &path, day, generation).await?;
    let manifests = values
        .into_iter()
        .map(|v| manifest_from_value(path.as_str(), v))
        .collect::<Result<Vec<_>>>()?;
    check_ids(&path, day, manifests.iter().map(|m| &m.id))?;
    Ok(manifests)
}

fn check_ids<'a>(path: &ObjectPath, day: &str, ids: impl Iterator<Item = &'a BackupId>) -> Result<()> {
    let mut seen = BTreeSet::new();
    for id in ids {
        if day_of(id) != day {
            return Err(Error::corrupt(format!("{path}: backup {id} is not of day {day}")));
        }
        if !seen.insert(id) {
            return Err(Error::corrupt(format!(
                "{path}: backup {id} is in the pack twice"
            )));
        }
    }
    Ok(())
}

impl Repository {
    /// Reads a backup's manifest: its commit marker, or the pack of its day. A tombstoned backup is
    /// [`Error::NotFound`].
    pub async fn manifest(&self, id: &BackupId) -> Result<Manifest> {
        let path = id.manifest_path();
        let grave = tombstone_path(id)?;
        let (marker, tombstone) = futures::join!(self.store().get(&path), self.store().head(&grave));
        match tombstone {
            Ok(_) => return Err(Error::not_found(format!("backup {id} (it was deleted)"))),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match marker {
            Ok(g) => {
                let bytes = g.bytes_at_most(MAX_MANIFEST_SIZE).await?;
                parse_manifest(path.as_str(), &bytes)
            }
            Err(Error::NotFound { .. }) => self.packed_manifest(id).await,
            Err(e) => Err(e),
        }
    }

    /// A manifest from the highest generation of its day's pack.
    async fn packed_manifest(&self, id: &BackupId) -> Result<Manifest> {
        let day = day_of(id);
        // A generation superseded between the listing and the read is gone an hour later at the
        // earliest; one more listing finds the one above it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (days, _) = list_packs(self, &format!("{}{day}/", layout::PACKS)).await?;
            let Some((generation, meta)) = days.get(day).and_then(DayPacks::highest) else {
                return Err(Error::not_found(format!("backup {id}")));
            };
            let path = pack_path(day, generation, true)?;
            let cached = self.pack_cache.lock().ok().and_then(|c| {
                c.last
                    .as_ref()
                    .filter(|(p, tag, _)| *p == path && *tag == meta.e_tag)
                    .map(|(_, _, m)| m.clone())
            });
            let manifests = match cached {
                Some(m) => m,
                None => match read_manifests(self, day, generation).await {
                    Ok(list) => {
                        let map: Arc<HashMap<BackupId, Manifest>> =
                            Arc::new(list.into_iter().map(|m| (m.id.clone(), m)).collect());
                        if let Ok(mut c) = self.pack_cache.lock() {
                            c.last = Some((path.clone(), meta.e_tag.clone(), map.clone()));
                        }
                        map
                    }
                    Err(Error::NotFound { .. }) if attempts < 3 => continue,
                    Err(e) => return Err(e),
                },
            };
            return manifests
                .get(id)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("backup {id}")));
        }
    }

    /// Takes a committed backup out of the location: a tombstone first (format 2), then its
    /// commit marker. Done again, it changes nothing.
    pub async fn withdraw(&self, id: &BackupId) -> Result<()> {
        let format = match self.open().await {
            Ok(c) => c.format,
            Err(Error::NotFound { .. }) => 1,
            Err(e) => return Err(e),
        };
        if format >= 2 {
            match self
                .store()
                .put(&tombstone_path(id)?, Bytes::new(), PutOptions::create())
                .await
            {
                Ok(_) | Err(Error::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.store().delete(&id.manifest_path()).await
    }

    /// Brings `state` up to date with the location: tombstones, then commit markers (summaries from
    /// their listing metadata), then the packs of the days that changed since `state` was taken.
    /// Backups already in `state` are not parsed again.
    pub async fn sync(&self, state: &mut SyncState) -> Result<SyncDelta> {
        let mut delta = SyncDelta::default();
        let now = self.clock().now();
        let old = |t: SystemTime, age: Duration| now.duration_since(t).is_ok_and(|a| a >= age);

        let (tombstones, strange) = list_tombstones(self).await?;
        delta
            .unreadable
            .extend(strange.into_iter().map(|p| (p, "not a backup id".to_owned())));
        delta.tombstones = tombstones.values().filter(|t| old(**t, TOMBSTONE_KEEP)).count() as u64;

        let mut seen = BTreeSet::new();
        let mut listing = list_all(self.store(), layout::MANIFESTS);
        while let Some(meta) = listing.try_next().await? {
            let name = meta.path.as_str().trim_start_matches(layout::MANIFESTS);
            let Ok(id) = BackupId::parse(name) else {
                delta
                    .unreadable
                    .push((meta.path.to_string(), "not a backup id".into()));
                continue;
            };
            if tombstones.contains_key(&id) {
                continue;
            }
            if old(meta.last_modified, FOLD_AGE) {
                delta.foldable += 1;
            }
            seen.insert(id.clone());
            if state.backups.contains_key(&id) {
                continue;
            }
            match parse_summary(&id, &meta.metadata) {
                Ok(s) => {
                    state.backups.insert(id, s.clone());
                    delta.added.push(s);
                }
                Err(e) => delta.unreadable.push((meta.path.to_string(), e.to_string())),
            }
        }
        drop(listing);

        let (days, strange) = list_packs(self, layout::PACKS).await?;
        delta
            .unreadable
            .extend(strange.into_iter().map(|p| (p, "not a pack name".to_owned())));
        let mut packs = BTreeMap::new();
        let mut to_read = Vec::new();
        for (day, d) in &days {
            let Some((generation, meta)) = d.highest() else {
                continue;
            };
            match state.packs.get(day) {
                Some(p) if p.generation == generation && p.e_tag == meta.e_tag => {
                    packs.insert(day.clone(), p.clone());
                }
                _ => to_read.push((day.clone(), generation, meta.e_tag.clone())),
            }
        }
        let read: Vec<_> = futures::stream::iter(to_read)
            .map(|(day, generation, e_tag)| async move {
                let r = read_summaries(self, &day, generation).await;
                (day, generation, e_tag, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for (day, generation, e_tag, r) in read {
            match r {
                Ok(summaries) => {
                    let mut ids = Vec::with_capacity(summaries.len());
                    for s in summaries {
                        ids.push(s.id.clone());
                        if tombstones.contains_key(&s.id) || state.backups.contains_key(&s.id) {
                            continue;
                        }
                        state.backups.insert(s.id.clone(), s.clone());
                        delta.added.push(s);
                    }
                    packs.insert(
                        day,
                        PackSeen {
                            generation,
                            e_tag,
                            backups: ids,
                        },
                    );
                }
                Err(e) => {
                    let path =
                        pack_path(&day, generation, false).map_or_else(|_| day.clone(), |p| p.to_string());
                    delta.unreadable.push((path, e.to_string()));
                    // What the day held before stays: a damaged pack hides nothing it held.
                    if let Some(p) = state.packs.get(&day) {
                        packs.insert(day, p.clone());
                    }
                }
            }
        }
        for p in packs.values() {
            seen.extend(
                p.backups
                    .iter()
                    .filter(|id| !tombstones.contains_key(*id))
                    .cloned(),
            );
        }
        state.packs = packs;

        let gone: Vec<BackupId> = state
            .backups
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            state.backups.remove(&id);
            delta.removed.push(id);
        }
        Ok(delta)
    }
}

/// Settings of a [`compact`] run.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Markers younger than this (store time) stay markers: a backup that just committed may
    /// still be checking what it references.
    pub min_age: Duration,
}

/// The default [`CompactOptions::min_age`]: markers younger than an hour stay markers.
pub const FOLD_AGE: Duration = Duration::from_secs(3600);

impl Default for CompactOptions {
    fn default() -> Self {
        Self { min_age: FOLD_AGE }
    }
}

/// What a [`compact`] run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactReport {
    /// Days whose pack got a new generation.
    pub days: u64,
    /// Markers folded into packs (and then deleted).
    pub folded: u64,
    /// Tombstoned backups left out of a new generation.
    pub dropped: u64,
    /// Markers of tombstoned backups deleted (a delete that stopped halfway).
    pub markers_removed: u64,
    /// Tombstones removed.
    pub tombstones_removed: u64,
    /// Superseded or unfinished generations removed.
    pub generations_removed: u64,
    /// What was left as it was, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
    /// Why nothing was done, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_done: Option<String>,
}

/// Folds markers into packs and drops tombstoned backups from them, under the location's GC lease
/// (so it never runs beside a GC or another compaction). A location of format 1 is left as it is.
pub async fn compact(repo: &Repository, opts: &CompactOptions) -> Result<CompactReport> {
    let lock = GcLock::acquire(repo).await?;
    let result = compact_held(repo, opts, &lock).await;
    lock.release().await;
    result
}

/// [`compact`] by a holder of the GC lease.
pub(crate) async fn compact_held(
    repo: &Repository,
    opts: &CompactOptions,
    lock: &GcLock,
) -> Result<CompactReport> {
    let mut report = CompactReport::default();
    let format = match repo.open().await {
        Ok(c) => c.format,
        Err(Error::NotFound { .. }) => 0,
        Err(e) => return Err(e),
    };
    if format < 2 {
        report.not_done = Some(format!(
            "the location is of format {format}; packs are kept from format 2 on"
        ));
        return Ok(report);
    }
    let now = locks::store_now(repo).await?;
    let aged = |t: SystemTime, age: Duration| now.duration_since(t).is_ok_and(|a| a >= age);

    let (tombstones, _) = list_tombstones(repo).await?;
    let (days, _) = list_packs(repo, layout::PACKS).await?;
    let mut markers: BTreeMap<String, Vec<BackupId>> = BTreeMap::new();
    let mut marked = BTreeSet::new();
    let mut half_deleted = Vec::new();
    let mut listing = list_all(repo.store(), layout::MANIFESTS);
    while let Some(meta) = listing.try_next().await? {
        let Ok(id) = BackupId::parse(meta.path.as_str().trim_start_matches(layout::MANIFESTS)) else {
            continue;
        };
        if tombstones.contains_key(&id) {
            half_deleted.push(id);
            continue;
        }
        marked.insert(id.clone());
        if aged(meta.last_modified, opts.min_age) {
            markers.entry(day_of(&id).to_owned()).or_default().push(id);
        }
    }
    drop(listing);
    for id in &half_deleted {
        lock.check()?;
        repo.store().delete(&id.manifest_path()).await?;
        report.markers_removed += 1;
    }

    let mut todo: BTreeSet<String> = markers.keys().cloned().collect();
    todo.extend(
        tombstones
            .keys()
            .map(|id| day_of(id).to_owned())
            .filter(|d| days.get(d).and_then(DayPacks::highest).is_some()),
    );
    // The backups the highest generation of each day holds, once known.
    let mut held: BTreeMap<String, BTreeSet<BackupId>> = BTreeMap::new();
    let unsure: BTreeSet<String> = todo.clone();
    for day in todo {
        lock.check()?;
        let empty = DayPacks::default();
        let d = days.get(&day).unwrap_or(&empty);
        let folding = markers.remove(&day).unwrap_or_default();
        match compact_day(repo, lock, &day, d, folding, &tombstones, &mut report).await {
            Ok(Some(ids)) => {
                held.insert(day, ids);
            }
            Ok(None) => {}
            Err(e) => report.skipped.push(format!("day {day}: {}", e.message())),
        }
    }

    // Tombstones whose backup no marker and no highest generation holds any more.
    for (id, written) in &tombstones {
        let day = day_of(id);
        // A day this run meant to rewrite and could not, or whose pack it did not read, may hold it.
        let in_pack = match held.get(day) {
            Some(ids) => ids.contains(id),
            None => unsure.contains(day) || days.get(day).and_then(DayPacks::highest).is_some(),
        };
        if aged(*written, TOMBSTONE_KEEP) && !in_pack && !marked.contains(id) {
            lock.check()?;
            repo.store().delete(&tombstone_path(id)?).await?;
            report.tombstones_removed += 1;
        }
    }

    // Generations below the highest, once the one above them is an hour old; unfinished ones
    // (a manifests half without its commit) once they are an hour old.
    let (days, _) = list_packs(repo, layout::PACKS).await?;
    for d in days.values() {
        let Some((highest, _)) = d.highest() else {
            continue;
        };
        let mut above: Option<SystemTime> = None;
        for (generation, (summaries, manifests)) in d.generations.iter().rev() {
            if *generation < highest {
                let doomed = match summaries {
                    Some(_) => above.is_some_and(|t| aged(t, TOMBSTONE_KEEP)),
                    None => manifests
                        .as_ref()
                        .is_some_and(|m| aged(m.last_modified, TOMBSTONE_KEEP)),
                };
                if doomed {
                    lock.check()?;
                    for half in [summaries, manifests].into_iter().flatten() {
                        repo.store().delete(&half.path).await?;
                    }
                    report.generations_removed += 1;
                    continue;
                }
            }
            if let Some(s) = summaries {
                above = Some(s.last_modified);
            }
        }
    }
    Ok(report)
}

/// Writes the next generation of `day`: the highest one's manifests plus `folding`'s markers,
/// without tombstoned backups; then deletes the folded markers if it is the highest. Returns the
/// backups the highest generation holds, if this run knows them.
async fn compact_day(
    repo: &Repository,
    lock: &GcLock,
    day: &str,
    packs: &DayPacks,
    folding: Vec<BackupId>,
    tombstones: &BTreeMap<BackupId, SystemTime>,
    report: &mut CompactReport,
) -> Result<Option<BTreeSet<BackupId>>> {
    let mut entries: BTreeMap<BackupId, Manifest> = BTreeMap::new();
    if let Some((generation, _)) = packs.highest() {
        for m in read_manifests(repo, day, generation).await? {
            entries.insert(m.id.clone(), m);
        }
    }
    let before = entries.len();
    let dropped = entries.keys().filter(|id| tombstones.contains_key(*id)).count();
    entries.retain(|id, _| !tombstones.contains_key(id));

    let read: Vec<(BackupId, Result<Manifest>)> = futures::stream::iter(folding)
        .map(|id| async move {
            let path = id.manifest_path();
            let r = async {
                let bytes = repo
                    .store()
                    .get(&path)
                    .await?
                    .bytes_at_most(MAX_MANIFEST_SIZE)
                    .await?;
                let m = parse_manifest(path.as_str(), &bytes)?;
                if m.id != id {
                    return Err(Error::corrupt(format!(
                        "{path}: the manifest names backup {}",
                        m.id
                    )));
                }
                Ok(m)
            }
            .await;
            (id, r)
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut folded = Vec::new();
    for (id, r) in read {
        match r {
            Ok(m) => {
                folded.push(id.clone());
                entries.insert(id, m);
            }
            Err(e) => report.skipped.push(format!("marker of {id}: {}", e.message())),
        }
    }
    if folded.is_empty() && dropped == 0 {
        return Ok((before > 0).then(|| entries.into_keys().collect()));
    }

    let generation = packs.next_number();
    let summaries: Vec<Summary> = entries.values().map(Summary::of).collect();
    let ids: BTreeSet<BackupId> = entries.keys().cloned().collect();
    let manifests_body = encode(day, generation, entries.into_values().collect())?;
    let summaries_body = encode(day, generation, summaries)?;
    if manifests_body.len() as u64 > MAX_PACK_BYTES {
        report.skipped.push(format!(
            "day {day}: the pack would be larger than {MAX_PACK_BYTES} bytes; its markers stay"
        ));
        return Ok(None);
    }
    lock.check()?;
    for (body, manifests) in [(manifests_body, true), (summaries_body, false)] {
        match repo
            .store()
            .put(
                &pack_path(day, generation, manifests)?,
                body,
                PutOptions::create(),
            )
            .await
        {
            Ok(_) => {}
            Err(Error::AlreadyExists { .. }) => {
                return Err(Error::unavailable(format!(
                    "another compaction wrote generation {generation} of day {day}; nothing was changed"
                )));
            }
            Err(e) => return Err(e),
        }
    }
    report.days += 1;
    report.dropped += dropped as u64;

    // The markers go only if this generation is the highest (a stalled run's generation is not).
    let (now, _) = list_packs(repo, &format!("{}{day}/", layout::PACKS)).await?;
    if now.get(day).and_then(DayPacks::highest).map(|(g, _)| g) != Some(generation) {
        report.skipped.push(format!(
            "day {day}: generation {generation} is not the highest; its markers stay"
        ));
        return Ok(None);
    }
    let n = folded.len() as u64;
    futures::stream::iter(folded)
        .map(|id| async move {
            lock.check()?;
            repo.store().delete(&id.manifest_path()).await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    report.folded += n;
    Ok(Some(ids))
}

#[cfg(test)]
#[path = "packs_tests.rs"]
mod tests;
