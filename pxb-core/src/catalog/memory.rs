//! [`MemoryCatalog`]: the catalog's in-memory twin, for tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{CatalogStore, Cursor, Entry, Guard, Kind, Page, Put, Query};
use crate::{Error, Result};

type Key = (Kind, String, String);

/// A catalog held in memory. Suitable for tests; it runs the same
/// [`conformance`](super::conformance) suite as the SQLite store. Clones share the records.
#[derive(Clone, Debug, Default)]
pub struct MemoryCatalog {
    records: Arc<Mutex<BTreeMap<Key, Entry>>>,
}

impl MemoryCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Entry>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces a stored document by raw bytes, as a damaged store would hold it (for tests of
    /// degraded start).
    pub fn corrupt(&self, kind: Kind, org: &str, id: &str, doc: &[u8]) -> bool {
        match self.lock().get_mut(&(kind, org.to_owned(), id.to_owned())) {
            Some(e) => {
                e.doc = doc.to_vec();
                true
            }
            None => false,
        }
    }
}

fn check(expect: Option<u64>, current: Option<u64>, what: &str) -> Result<()> {
    match (expect, current) {
        (None, _) => Ok(()),
        (Some(0), None) => Ok(()),
        (Some(0), Some(_)) => Err(Error::precondition(format!("{what} already exists"))),
        (Some(want), Some(have)) if want == have => Ok(()),
        (Some(want), have) => Err(Error::precondition(format!(
            "{what} is at revision {} (expected {want})",
            have.unwrap_or(0)
        ))),
    }
}

fn revision_of(records: &BTreeMap<Key, Entry>, g: &Guard) -> Option<u64> {
    records
        .get(&(g.kind, g.org.clone(), g.id.clone()))
        .map(|e| e.revision)
}

fn delete_locked(
    records: &mut BTreeMap<Key, Entry>,
    kind: Kind,
    org: &str,
    id: &str,
    expect: Option<u64>,
) -> Result<bool> {
    let key = (kind, org.to_owned(), id.to_owned());
    let current = records.get(&key).map(|e| e.revision);
    if expect.is_some() {
        check(expect, current, &format!("{kind} {id:?}"))?;
    }
    Ok(records.remove(&key).is_some())
}

fn put_locked(records: &mut BTreeMap<Key, Entry>, puts: Vec<Put>) -> Result<Vec<u64>> {
    let mut revs = Vec::with_capacity(puts.len());
    // Check every expectation first, so a failure writes nothing.
    let mut pending: BTreeMap<Key, u64> = BTreeMap::new();
    for p in &puts {
        let key = (p.kind, p.org.clone(), p.id.clone());
        let current = pending
            .get(&key)
            .copied()
            .or_else(|| records.get(&key).map(|e| e.revision));
        check(p.expect, current, &format!("{} {:?}", p.kind, p.id))?;
        let rev = current.unwrap_or(0) + 1;
        pending.insert(key, rev);
        revs.push(rev);
    }
    let tags = puts
        .iter()
        .map(|p| p.index.normalized_tags())
        .collect::<Result<Vec<_>>>()?;
    for ((mut p, rev), tags) in puts.into_iter().zip(&revs).zip(tags) {
        p.index.tags = tags;
        let key = (p.kind, p.org.clone(), p.id.clone());
        records.insert(
            key,
            Entry {
                kind: p.kind,
                org: p.org,
                id: p.id,
                revision: *rev,
                index: p.index,
                doc: p.doc,
            },
        );
    }
    Ok(revs)
}

#[async_trait]
impl CatalogStore for MemoryCatalog {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        self.lock()
            .get(&(kind, org.to_owned(), id.to_owned()))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("{kind} {id:?} in org {org:?}")))
    }

    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
        put_locked(&mut self.lock(), puts)
    }

    async fn put_guarded(&self, guard: &Guard, puts: Vec<Put>) -> Result<Vec<u64>> {
        let mut records = self.lock();
        guard.check(revision_of(&records, guard))?;
        put_locked(&mut records, puts)
    }

    async fn delete_guarded(
        &self,
        guard: &Guard,
        kind: Kind,
        org: &str,
        id: &str,
        expect: Option<u64>,
    ) -> Result<bool> {
        let mut records = self.lock();
        guard.check(revision_of(&records, guard))?;
        delete_locked(&mut records, kind, org, id, expect)
    }

    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        delete_locked(&mut self.lock(), kind, org, id, expect)
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        let after = query.after.as_deref().map(Cursor::decode).transpose()?;
        let limit = query.clamped_limit();
        let records = self.lock();
        let mut matching: Vec<&Entry> = records
            .values()
            .filter(|e| e.kind == kind && query.matches(e))
            .filter(|e| after.as_ref().is_none_or(|a| Cursor::after(e) > *a))
            .collect();
        matching.sort_by(|a, b| Cursor::after(a).cmp(&Cursor::after(b)));
        let more = matching.len() > limit;
        let items: Vec<Entry> = matching.into_iter().take(limit).cloned().collect();
        let next = if more {
            items.last().map(|e| Cursor::after(e).encode())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
        Ok(self
            .lock()
            .values()
            .filter(|e| e.kind == kind && query.matches(e))
            .count() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_catalog_conformance() {
        super::super::conformance::run_all(&MemoryCatalog::new()).await;
    }

    #[tokio::test]
    async fn typed_lists_turn_time_ranges_into_sort_ranges() {
        use super::super::records::BackupRecord;
        use super::super::{Catalog, Query};
        let store = MemoryCatalog::new();
        let catalog = Catalog::new(std::sync::Arc::new(store.clone()));
        let b = |i: i64| BackupRecord {
            org: "o".into(),
            id: format!("b{i}"),
            created_ms: i * 1000,
            ..BackupRecord::default()
        };
        catalog.put_all(&[b(1), b(2), b(3)]).await.expect("put");
        let q = Query {
            time_from_ms: Some(2000),
            time_to_ms: Some(3000),
            ..Query::org("o")
        };
        let got = catalog.list::<BackupRecord>(&q).await.expect("list");
        assert_eq!(
            got.items.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
            vec!["b2"]
        );
        // The bounds alone, without the time columns, select the same.
        let (sort_min, sort_max) = super::super::newest_first_range(Some(2000), Some(3000));
        let raw = Query {
            sort_min,
            sort_max,
            ..Query::org("o")
        };
        assert_eq!(store.count(Kind::Backup, &raw).await.expect("count"), 1);
    }
}
