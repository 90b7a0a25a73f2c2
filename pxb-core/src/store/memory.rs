//! [`InMemory`]: the object store's in-memory twin, for tests.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{
    GetResult, ListPage, MAX_LIST_PAGE, ObjectMeta, ObjectStore, PutMode, PutOptions, PutReader, PutResult,
    clamp_range, validate_metadata,
};
use crate::{Clock, Error, ObjectPath, Result};

#[derive(Clone)]
struct Entry {
    data: Bytes,
    meta: ObjectMeta,
}

/// An object store held in memory. Suitable for tests; it follows the same semantics as every other
/// backend (it runs the [`conformance`](super::conformance) suite). Clones share the same objects.
#[derive(Clone, Default)]
pub struct InMemory {
    objects: Arc<RwLock<BTreeMap<String, Entry>>>,
    version: Arc<AtomicU64>,
    clock: Option<Arc<dyn Clock>>,
}

impl InMemory {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose objects' `last_modified` comes from `clock` (the store's own time, for
    /// tests where it differs from the clocks of the machines using it).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock: Some(clock),
            ..Self::default()
        }
    }

    fn now(&self) -> SystemTime {
        self.clock.as_ref().map_or_else(SystemTime::now, |c| c.now())
    }

    /// How many objects the store holds.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the store holds no objects.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces an object's bytes in place, keeping its properties: for tests that simulate damage.
    pub fn corrupt(&self, path: &ObjectPath, data: Bytes) -> Result<()> {
        let mut map = self.objects.write().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(path.as_str()).ok_or_else(|| Error::not_found(path))?;
        entry.data = data;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.objects.read().unwrap_or_else(|e| e.into_inner())
    }

    fn lookup(&self, path: &ObjectPath) -> Result<Entry> {
        self.read()
            .get(path.as_str())
            .cloned()
            .ok_or_else(|| Error::not_found(path))
    }
}

impl fmt::Debug for InMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemory").field("objects", &self.len()).finish()
    }
}

impl fmt::Display for InMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory://")
    }
}

#[async_trait]
impl ObjectStore for InMemory {
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        validate_metadata(&opts.metadata)?;
        let e_tag = format!("{:x}", self.version.fetch_add(1, Ordering::Relaxed) + 1);
        let size = data.len() as u64;
        let meta = ObjectMeta {
            path: path.clone(),
            size,
            last_modified: self.now(),
            e_tag: Some(e_tag.clone()),
            metadata: opts.metadata,
        };
        let mut map = self.objects.write().unwrap_or_else(|e| e.into_inner());
        if opts.mode == PutMode::Create && map.contains_key(path.as_str()) {
            return Err(Error::already_exists(path));
        }
        map.insert(path.as_str().to_owned(), Entry { data, meta });
        Ok(PutResult {
            size,
            e_tag: Some(e_tag),
        })
    }

    async fn put_stream(
        &self,
        path: &ObjectPath,
        mut reader: PutReader,
        opts: PutOptions,
    ) -> Result<PutResult> {
        validate_metadata(&opts.metadata)?;
        let mut buf = Vec::new();
        reader
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::io(format!("reading the data for {path}"), e))?;
        self.put(path, buf.into(), opts).await
    }

    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        let Entry { data, meta } = self.lookup(path)?;
        Ok(GetResult {
            meta,
            body: futures::stream::once(async move { Ok(data) }).boxed(),
        })
    }

    async fn get_range(&self, path: &ObjectPath, range: Range<u64>) -> Result<Bytes> {
        let entry = self.lookup(path)?;
        let r = clamp_range(path, &range, entry.meta.size)?;
        // Both bounds are <= data.len(), which fits in usize.
        Ok(entry.data.slice(r.start as usize..r.end as usize))
    }

    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        Ok(self.lookup(path)?.meta)
    }

    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        let max = max_results.clamp(1, MAX_LIST_PAGE);
        let map = self.read();
        let lower = match token {
            Some(t) => Bound::Excluded(t),
            None => Bound::Included(prefix),
        };
        let mut objects = Vec::new();
        let mut more = false;
        for (key, entry) in map.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                if key.as_str() > prefix {
                    break;
                }
                continue;
            }
            if objects.len() == max {
                more = true;
                break;
            }
            objects.push(entry.meta.clone());
        }
        let next = if more {
            objects.last().map(|o| o.path.to_string())
        } else {
            None
        };
        Ok(ListPage { objects, next })
    }

    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.objects
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(path.as_str());
        Ok(())
    }
}
