//! The `CatalogStore` seam: where `pxb-server` keeps its state — orgs, discovery configurations,
//! clusters and their status, backup locations and their per-cluster status, backups, restores,
//! schedules and user preferences.
//!
//! The store is a small document store: every record is a JSON document of one [`Kind`], owned by
//! one org, with an id, a revision for optimistic concurrency and a few indexed columns
//! ([`Index`]) that lists filter and sort on. The typed view on top is [`Catalog`], which encodes
//! and decodes the [`records`].
//!
//! Architecture Invariant: no record holds a shoot kubeconfig, and in federated mode no record holds
//! a cloud credential; a classic credential is stored only encrypted (`pxb-daemon` encrypts it).
//!
//! [`MemoryCatalog`] is the in-memory twin, suitable for tests; `pxb-daemon` has the embedded SQLite
//! implementation. Both run the [`conformance`] suite.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod memory;
pub mod records;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use memory::MemoryCatalog;

use crate::{Error, Result};

/// The largest page a list returns, whatever was asked for.
pub const MAX_PAGE: usize = 1000;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// A tenant ([`records::Org`]); its org is its own id.
    Org,
    /// A discovery configuration ([`records::DiscoveryConfig`]).
    Discovery,
    /// A cluster and its status ([`records::ClusterRecord`]).
    Cluster,
    /// A backup location ([`records::LocationRecord`]).
    Location,
    /// A location's status on one cluster ([`records::LocationStatus`]).
    LocationStatus,
    /// A backup ([`records::BackupRecord`]).
    Backup,
    /// A restore ([`records::RestoreRecord`]).
    Restore,
    /// A schedule ([`records::ScheduleRecord`]).
    Schedule,
    /// A user's preferences ([`records::Preferences`]); org `""`.
    Preference,
    /// A force-deleted backup whose cluster still holds its object ([`records::ForcedDelete`]).
    ForcedDelete,
    /// What is kept of a deleted backup for the telemetry retention window
    /// ([`records::DeletedBackup`]).
    DeletedBackup,
    /// This installation's identity towards the support service
    /// ([`records::SupportInstallation`]); org `""`.
    SupportInstallation,
    /// Which server replica does the fleet's work, and its heartbeat; org `""` (see
    /// [`Guard`] and `pxb-daemon`'s replicas).
    Lease,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 13] = [
        Kind::Org,
        Kind::Discovery,
        Kind::Cluster,
        Kind::Location,
        Kind::LocationStatus,
        Kind::Backup,
        Kind::Restore,
        Kind::Schedule,
        Kind::Preference,
        Kind::ForcedDelete,
        Kind::DeletedBackup,
        Kind::SupportInstallation,
        Kind::Lease,
    ];

    /// The stable name of the kind, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Org => "org",
            Kind::Discovery => "discovery",
            Kind::Cluster => "cluster",
            Kind::Location => "location",
            Kind::LocationStatus => "location-status",
            Kind::Backup => "backup",
            Kind::Restore => "restore",
            Kind::Schedule => "schedule",
            Kind::Preference => "preference",
            Kind::ForcedDelete => "forced-delete",
            Kind::DeletedBackup => "deleted-backup",
            Kind::SupportInstallation => "support-installation",
            Kind::Lease => "lease",
        }
    }

    /// The kind with this stored name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The indexed columns of a record: what lists filter and sort on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Index {
    /// Sort key; lists return records ordered by `(sort, id)`.
    pub sort: String,
    /// The cluster the record belongs to, if any.
    pub cluster: Option<String>,
    /// The location the record belongs to, if any.
    pub location: Option<String>,
    /// A status or phase to filter on.
    pub status: Option<String>,
    /// A time (milliseconds since the epoch) to filter on.
    pub time_ms: Option<i64>,
    /// Labels a list can require ([`Query::tags`]), such as `ns=shop` or `view=vms`: for
    /// filters on values a record holds several of. Each is non-empty, at most [`MAX_TAG_LEN`]
    /// bytes, without control characters; stores keep them sorted and without duplicates.
    pub tags: Vec<String>,
}

/// The longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;

impl Index {
    /// Checks the tags ([`Error::Invalid`] naming the bad one) and returns them sorted and
    /// without duplicates, as stores keep them.
    pub fn normalized_tags(&self) -> Result<Vec<String>> {
        for t in &self.tags {
            if t.is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control) {
                return Err(Error::invalid(format!(
                    "index tag {t:?} must be 1 to {MAX_TAG_LEN} bytes without control characters"
                )));
            }
        }
        let mut tags = self.tags.clone();
        tags.sort();
        tags.dedup();
        Ok(tags)
    }
}

/// A stored record: its key, revision, index and document.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The kind.
    pub kind: Kind,
    /// The owning org (`""` for records owned by no org).
    pub org: String,
    /// Unique within `(kind, org)`.
    pub id: String,
    /// Starts at 1 and grows by one on every write.
    pub revision: u64,
    /// The indexed columns.
    pub index: Index,
    /// The JSON document, as stored (it may not decode: see [`Catalog::get`]).
    pub doc: Vec<u8>,
}

/// What to write.
#[derive(Clone, Debug)]
pub struct Put {
    /// The kind.
    pub kind: Kind,
    /// The owning org.
    pub org: String,
    /// The id.
    pub id: String,
    /// The indexed columns.
    pub index: Index,
    /// The JSON document.
    pub doc: Vec<u8>,
    /// Write only if the stored revision is this one (`Some(0)`: only if absent).
    pub expect: Option<u64>,
}

/// Which records a list returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Only this org's records; every org's when `None`.
    pub org: Option<String>,
    /// Only records of this cluster.
    pub cluster: Option<String>,
    /// Only records of this location.
    pub location: Option<String>,
    /// Only records with this status.
    pub status: Option<String>,
    /// Only records with `time_ms >= from`.
    pub time_from_ms: Option<i64>,
    /// Only records with `time_ms < to`.
    pub time_to_ms: Option<i64>,
    /// Only records whose sort key is at least this (lets a store answer a time range of records
    /// whose sort key encodes their time with an index range; see [`Record::sort_range`]).
    pub sort_min: Option<String>,
    /// Only records whose sort key is at most this.
    pub sort_max: Option<String>,
    /// Only records carrying every one of these [`Index::tags`].
    pub tags: Vec<String>,
    /// At most this many (clamped to `1..=MAX_PAGE`).
    pub limit: usize,
    /// Continue after this cursor (from [`Page::next`]).
    pub after: Option<String>,
}

impl Query {
    /// Every record of `org`, `limit` at a time.
    pub fn org(org: impl Into<String>) -> Self {
        Query {
            org: Some(org.into()),
            limit: MAX_PAGE,
            ..Query::default()
        }
    }

    /// The limit clamped to `1..=MAX_PAGE`.
    pub fn clamped_limit(&self) -> usize {
        self.limit.clamp(1, MAX_PAGE)
    }

    /// Whether `e` matches the filters (not the cursor or limit).
    pub fn matches(&self, e: &Entry) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        }
        self.org.as_ref().is_none_or(|o| *o == e.org)
            && eq(&self.cluster, &e.index.cluster)
            && eq(&self.location, &e.index.location)
            && eq(&self.status, &e.index.status)
            && self
                .time_from_ms
                .is_none_or(|f| e.index.time_ms.is_some_and(|t| t >= f))
            && self
                .time_to_ms
                .is_none_or(|to| e.index.time_ms.is_some_and(|t| t < to))
            && self.sort_min.as_ref().is_none_or(|m| e.index.sort >= *m)
            && self.sort_max.as_ref().is_none_or(|m| e.index.sort <= *m)
            && self.tags.iter().all(|t| e.index.tags.contains(t))
    }
}

/// The position of a record in list order, encoded as an opaque cursor.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The org of the last record returned.
    pub org: String,
    /// Its sort key.
    pub sort: String,
    /// Its id.
    pub id: String,
}

impl Cursor {
    /// The cursor after `e`.
    pub fn after(e: &Entry) -> Cursor {
        Cursor {
            org: e.org.clone(),
            sort: e.index.sort.clone(),
            id: e.id.clone(),
        }
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        let json = serde_json::json!([self.org, self.sort, self.id]).to_string();
        URL_SAFE_NO_PAD.encode(json)
    }

    /// Reads a cursor made by [`Cursor::encode`]; anything else is [`Error::Invalid`].
    pub fn decode(s: &str) -> Result<Cursor> {
        let bad = || Error::invalid("the page cursor is not one this server issued");
        let bytes = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let (org, sort, id): (String, String, String) = serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(Cursor { org, sort, id })
    }
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    /// The records, in `(org, sort, id)` order.
    pub items: Vec<T>,
    /// The cursor for the next page, when there may be more.
    pub next: Option<String>,
}

/// A record a guarded write checks and does not write: the write happens only while the record
/// is at `revision`, checked atomically with it ([`CatalogStore::put_guarded`]). Fencing: a
/// replica guards its writes with the lease record it holds, so that once another replica has
/// taken the lease (a new revision), no write of the old holder lands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    /// The kind of the guard record.
    pub kind: Kind,
    /// Its org.
    pub org: String,
    /// Its id.
    pub id: String,
    /// The revision it must be at.
    pub revision: u64,
}

impl Guard {
    /// `Ok` when the guard record is at `current` = its revision; else [`Error::Precondition`].
    pub fn check(&self, current: Option<u64>) -> Result<()> {
        if current == Some(self.revision) {
            return Ok(());
        }
        Err(Error::precondition(format!(
            "the guard {} {:?} is at revision {} (expected {}): the write is fenced off",
            self.kind,
            self.id,
            current.unwrap_or(0),
            self.revision
        )))
    }
}

/// The server's state. Object safe; every implementation runs [`conformance::run_all`].
///
/// Lists are ordered by `(org, index.sort, id)` and paged with opaque cursors, so a list stays
/// stable while records are written.
#[async_trait]
pub trait CatalogStore: Send + Sync + fmt::Debug {
    /// The record, or [`Error::NotFound`].
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry>;

    /// Writes records atomically (all or none) and returns their new revisions. A failed
    /// expectation is [`Error::Precondition`] and writes nothing.
    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>>;

    /// Deletes a record; `Ok(false)` when it did not exist. With `expect`, only that revision.
    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool>;

    /// One page of records of `kind` matching `query`.
    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>>;

    /// How many records of `kind` match `query` (its cursor and limit ignored).
    async fn count(&self, kind: Kind, query: &Query) -> Result<u64>;

    /// As [`CatalogStore::put`], only while `guard` is at its revision, checked in the same
    /// atomic step (the guard is read, not written); otherwise [`Error::Precondition`] and
    /// nothing is written. A store that cannot do this atomically refuses every call
    /// ([`Error::Invalid`]), which is the default.
    async fn put_guarded(&self, guard: &Guard, puts: Vec<Put>) -> Result<Vec<u64>> {
        let _ = (guard, puts);
        Err(Error::invalid("this catalog store cannot guard writes"))
    }

    /// As [`CatalogStore::delete`], only while `guard` is at its revision (see
    /// [`CatalogStore::put_guarded`]).
    async fn delete_guarded(
        &self,
        guard: &Guard,
        kind: Kind,
        org: &str,
        id: &str,
        expect: Option<u64>,
    ) -> Result<bool> {
        let _ = (guard, kind, org, id, expect);
        Err(Error::invalid("this catalog store cannot guard writes"))
    }
}

/// A record type with its kind and index.
pub trait Record: Serialize + DeserializeOwned + Send + Sync {
    /// Its kind.
    const KIND: Kind;
    /// Its owning org.
    fn org(&self) -> &str;
    /// Its id.
    fn id(&self) -> &str;
    /// Its indexed columns.
    fn index(&self) -> Index;

    /// The sort-key bounds (inclusive) that hold exactly the records with `from <= time_ms < to`,
    /// for records whose sort key encodes their time; `(None, None)` for the others.
    fn sort_range(time_from_ms: Option<i64>, time_to_ms: Option<i64>) -> (Option<String>, Option<String>) {
        let _ = (time_from_ms, time_to_ms);
        (None, None)
    }
}

/// The sort key of a record listed newest first: `i64::MAX - ms`, zero-padded.
pub fn newest_first_key(ms: i64) -> String {
    format!("{:020}", i64::MAX.saturating_sub(ms.max(0)))
}

/// [`Record::sort_range`] for records whose sort key is [`newest_first_key`] of their time.
pub fn newest_first_range(from_ms: Option<i64>, to_ms: Option<i64>) -> (Option<String>, Option<String>) {
    // time < to  <=>  key > MAX - to  <=>  key >= MAX - to + 1 (so: key of to - 1);
    // time >= from  <=>  key <= MAX - from.
    (
        to_ms.map(|t| newest_first_key(t.saturating_sub(1))),
        from_ms.map(newest_first_key),
    )
}

/// A decoded record with the revision it was read at.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The revision.
    pub revision: u64,
    /// The record.
    pub value: T,
}

/// The typed view of a [`CatalogStore`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Catalog {
    store: Arc<dyn CatalogStore>,
}

impl Catalog {
    /// Wraps a store.
    pub fn new(store: Arc<dyn CatalogStore>) -> Self {
        Catalog { store }
    }

    /// The raw store.
    pub fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    /// Decodes an entry; a document that does not decode is [`Error::Corrupt`] naming the record.
    pub fn decode<T: Record>(e: &Entry) -> Result<Versioned<T>> {
        let value = serde_json::from_slice(&e.doc).map_err(|err| {
            Error::corrupt(format!(
                "{} {:?} of org {:?} does not decode: {err}",
                e.kind, e.id, e.org
            ))
        })?;
        Ok(Versioned {
            revision: e.revision,
            value,
        })
    }

    /// The put for `value`, expecting `expect`.
    pub fn put_of<T: Record>(value: &T, expect: Option<u64>) -> Result<Put> {
        let doc = serde_json::to_vec(value).map_err(|e| Error::invalid(format!("cannot encode: {e}")))?;
        Ok(Put {
            kind: T::KIND,
            org: value.org().to_owned(),
            id: value.id().to_owned(),
            index: value.index(),
            doc,
            expect,
        })
    }

    /// The record, or [`Error::NotFound`].
    pub async fn get<T: Record>(&self, org: &str, id: &str) -> Result<Versioned<T>> {
        Self::decode(&self.store.get(T::KIND, org, id).await?)
    }

    /// The record if it exists.
    pub async fn find<T: Record>(&self, org: &str, id: &str) -> Result<Option<Versioned<T>>> {
        match self.get(org, id).await {
            Ok(v) => Ok(Some(v)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` (when `expect` holds) and returns its new revision.
    pub async fn put<T: Record>(&self, value: &T, expect: Option<u64>) -> Result<u64> {
        let revs = self.store.put(vec![Self::put_of(value, expect)?]).await?;
        revs.first()
            .copied()
            .ok_or_else(|| Error::other("the store returned no revision"))
    }

    /// Writes many records atomically, without expectations.
    pub async fn put_all<T: Record>(&self, values: &[T]) -> Result<()> {
        let puts = values
            .iter()
            .map(|v| Self::put_of(v, None))
            .collect::<Result<Vec<_>>>()?;
        if !puts.is_empty() {
            self.store.put(puts).await?;
        }
        Ok(())
    }

    /// Deletes the record; `Ok(false)` when it did not exist.
    pub async fn delete<T: Record>(&self, org: &str, id: &str) -> Result<bool> {
        self.store.delete(T::KIND, org, id, None).await
    }

    /// One page; records that do not decode are [`Error::Corrupt`]. A time range is also given
    /// to the store as a sort-key range where the record's sort key encodes its time.
    pub async fn list<T: Record>(&self, query: &Query) -> Result<Page<T>> {
        let mut q = query.clone();
        if q.sort_min.is_none() && q.sort_max.is_none() {
            (q.sort_min, q.sort_max) = T::sort_range(q.time_from_ms, q.time_to_ms);
        }
        let page = self.store.list(T::KIND, &q).await?;
        let items = page
            .items
            .iter()
            .map(|e| Self::decode(e).map(|v| v.value))
            .collect::<Result<Vec<T>>>()?;
        Ok(Page {
            items,
            next: page.next,
        })
    }

    /// Every record matching `query`, following cursors.
    pub async fn list_all<T: Record>(&self, query: &Query) -> Result<Vec<T>> {
        let mut q = query.clone();
        q.limit = MAX_PAGE;
        let mut out = Vec::new();
        loop {
            let page = self.list::<T>(&q).await?;
            out.extend(page.items);
            match page.next {
                Some(next) => q.after = Some(next),
                None => return Ok(out),
            }
        }
    }
}
