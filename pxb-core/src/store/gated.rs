//! A store for tests of races: it stops one chosen call until the test lets it go on.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::oneshot;

use super::{GetResult, ListPage, ObjectMeta, ObjectStore, PutOptions, PutReader, PutResult};
use crate::{InMemory, ObjectPath, Result};

/// The kind of call a [`Gated`] store stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Put,
    Delete,
    List,
}

struct Pause {
    op: Op,
    prefix: String,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// An [`InMemory`] store that, once armed, holds the first matching call until released.
pub(crate) struct Gated {
    inner: InMemory,
    pause: Mutex<Option<Pause>>,
}

impl Gated {
    pub(crate) fn new(inner: InMemory) -> Arc<Self> {
        Arc::new(Self {
            inner,
            pause: Mutex::new(None),
        })
    }

    /// Arms the gate: the next `op` on a name (for [`Op::List`], a listed prefix) that starts
    /// with `prefix` signals `reached` and waits for `release` (or for it to be dropped).
    pub(crate) fn arm(&self, op: Op, prefix: &str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        *self.pause.lock().expect("gate") = Some(Pause {
            op,
            prefix: prefix.to_owned(),
            reached: reached_tx,
            release: release_rx,
        });
        (reached_rx, release_tx)
    }

    async fn gate(&self, op: Op, name: &str) {
        let hit = {
            let mut g = self.pause.lock().expect("gate");
            if g.as_ref()
                .is_some_and(|p| p.op == op && name.starts_with(&p.prefix))
            {
                g.take()
            } else {
                None
            }
        };
        if let Some(p) = hit {
            let _ = p.reached.send(());
            let _ = p.release.await;
        }
    }
}

impl std::fmt::Debug for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gated")
    }
}

impl std::fmt::Display for Gated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("gated memory://")
    }
}

#[async_trait]
impl ObjectStore for Gated {
    async fn put(&self, path: &ObjectPath, data: Bytes, opts: PutOptions) -> Result<PutResult> {
        self.gate(Op::Put, path.as_str()).await;
        self.inner.put(path, data, opts).await
    }
    async fn put_stream(&self, path: &ObjectPath, reader: PutReader, opts: PutOptions) -> Result<PutResult> {
        self.gate(Op::Put, path.as_str()).await;
        self.inner.put_stream(path, reader, opts).await
    }
    async fn get(&self, path: &ObjectPath) -> Result<GetResult> {
        self.inner.get(path).await
    }
    async fn get_range(&self, path: &ObjectPath, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.inner.get_range(path, range).await
    }
    async fn head(&self, path: &ObjectPath) -> Result<ObjectMeta> {
        self.inner.head(path).await
    }
    async fn list(&self, prefix: &str, token: Option<&str>, max_results: usize) -> Result<ListPage> {
        self.gate(Op::List, prefix).await;
        self.inner.list(prefix, token, max_results).await
    }
    async fn delete(&self, path: &ObjectPath) -> Result<()> {
        self.gate(Op::Delete, path.as_str()).await;
        self.inner.delete(path).await
    }
}
