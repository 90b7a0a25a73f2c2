//! Several `pxb-server` replicas on one shared catalog (PostgreSQL): one **active** replica does
//! the fleet's work (cluster visits, discovery, schedules) and serves the API; the others are
//! **standbys** that pass every API request on to the active one and take over when it is gone.
//!
//! The lease lives in the catalog as two records of [`Kind::Lease`] (org `""`):
//! - `active`: the holder, its API address and the **epoch**; its revision changes only when the
//!   lease changes hands;
//! - `heartbeat`: written by the holder every third of the lease time, guarded by `active`.
//!
//! A standby watches both revisions with its own monotonic clock (no clock is compared across
//! machines). When neither moved for the lease time it takes over with one compare-and-set
//! batch on both records (so a holder that renewed meanwhile wins). **Fencing:** every catalog
//! write of the active replica goes through [`FencedStore`], guarded by the `active` record at
//! the revision it acquired ([`CatalogStore::put_guarded`]); once another replica took over,
//! none of them lands, however long the old holder was paused. A holder that has not renewed
//! for the lease time (a paused process wakes up with its monotonic clock moved on) stops acting
//! at once ([`Lease::may_act`]), before the renewal tells it that it lost; then it leaves
//! ([`run`] returns an error, so the process exits and is restarted as a standby).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use pxb_core::catalog::{CatalogStore, Entry, Guard, Index, Kind, Page, Put, Query};
use pxb_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The monotonic clock the lease is timed with (a test moves its own).
pub type Monotonic = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The id of the lease record.
pub const ACTIVE: &str = "active";
/// The id of the heartbeat record.
pub const HEARTBEAT: &str = "heartbeat";

/// What the `active` record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveDoc {
    /// The replica holding the lease.
    pub holder: String,
    /// Where its API answers (for the standbys' forwarding).
    pub address: String,
    /// Grows by one with every change of hands.
    pub epoch: u64,
}

/// What the `heartbeat` record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatDoc {
    /// The replica that wrote it.
    pub holder: String,
    /// Its epoch.
    pub epoch: u64,
    /// Counts the renewals of this epoch.
    pub beat: u64,
}

fn put_of<T: Serialize>(id: &str, doc: &T, expect: Option<u64>) -> Result<Put> {
    Ok(Put {
        kind: Kind::Lease,
        org: String::new(),
        id: id.into(),
        index: Index {
            sort: id.into(),
            ..Index::default()
        },
        doc: serde_json::to_vec(doc).map_err(|e| Error::other(e.to_string()))?,
        expect,
    })
}

/// A lease record: its revision, and what it holds (`None` when it does not decode: a damaged
/// record is waited out like a silent holder, then replaced, so it cannot block a takeover).
async fn read<T: for<'de> Deserialize<'de>>(
    store: &dyn CatalogStore,
    id: &str,
) -> Result<Option<(u64, Option<T>)>> {
    match store.get(Kind::Lease, "", id).await {
        Ok(e) => match serde_json::from_slice(&e.doc) {
            Ok(doc) => Ok(Some((e.revision, Some(doc)))),
            Err(err) => {
                tracing::warn!(record = id, revision = e.revision, error = %err,
                    "the replicas' lease record does not decode; it is waited out like a silent holder, then replaced");
                Ok(Some((e.revision, None)))
            }
        },
        Err(Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// This replica's view of the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// This replica holds the lease at `epoch`.
    Active {
        /// The epoch.
        epoch: u64,
    },
    /// Another replica holds it (`address` is its API) or nobody yet (`None`).
    Standby {
        /// The active replica's API address.
        address: Option<String>,
    },
}

/// One replica's side of the lease: observing, taking over, renewing.
pub struct Lease {
    store: Arc<dyn CatalogStore>,
    me: String,
    address: String,
    lease: Duration,
    /// (revision of `active`, revision of `heartbeat`, when this replica first saw them so).
    seen: Option<(u64, u64, Instant)>,
    /// While active: the guard, the epoch, the heartbeat's revision and the last renewal.
    held: Option<Held>,
    /// Cleared as soon as this replica knows or must assume it lost the lease.
    acting: Arc<AtomicBool>,
    last_renewal: Arc<std::sync::Mutex<Option<Instant>>>,
    now: Monotonic,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("me", &self.me)
            .field("lease", &self.lease)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct Held {
    guard: Guard,
    epoch: u64,
    beat: u64,
}

impl Lease {
    /// Replica `me`, whose API answers at `address`, with leases of `lease`.
    pub fn new(
        store: Arc<dyn CatalogStore>,
        me: impl Into<String>,
        address: impl Into<String>,
        lease: Duration,
    ) -> Self {
        Lease {
            store,
            me: me.into(),
            address: address.into(),
            lease,
            seen: None,
            held: None,
            acting: Arc::new(AtomicBool::new(false)),
            last_renewal: Arc::new(std::sync::Mutex::new(None)),
            now: Arc::new(Instant::now),
        }
    }

    /// With `now` as the monotonic clock (for tests).
    pub fn with_clock(mut self, now: Monotonic) -> Self {
        self.now = now;
        self
    }

    /// The lease time.
    pub fn duration(&self) -> Duration {
        self.lease
    }

    /// How often the holder renews.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// The guard of this replica's writes while it is active.
    pub fn guard(&self) -> Option<Guard> {
        self.held.as_ref().map(|h| h.guard.clone())
    }

    /// Whether this replica may do the fleet's work now: it holds the lease and renewed it within
    /// the lease time by its own monotonic clock. Cheap; shared with the server's loops.
    pub fn may_act(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let acting = self.acting.clone();
        let last = self.last_renewal.clone();
        let lease = self.lease;
        let now = self.now.clone();
        move || {
            acting.load(Ordering::SeqCst)
                && last
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_some_and(|t| now().saturating_duration_since(t) < lease)
        }
    }

    fn renewed(&self) {
        *self.last_renewal.lock().unwrap_or_else(|e| e.into_inner()) = Some((self.now)());
    }

    /// Stops acting (after a lost renewal, or on shutdown).
    pub fn step_down(&mut self) {
        self.acting.store(false, Ordering::SeqCst);
        self.held = None;
    }

    /// One step as a standby: reads the lease, and takes it when it is free or its holder has
    /// not renewed it for the lease time. Returns the role after the step.
    pub async fn observe(&mut self) -> Result<Role> {
        let active = read::<ActiveDoc>(self.store.as_ref(), ACTIVE).await?;
        let beat = read::<HeartbeatDoc>(self.store.as_ref(), HEARTBEAT).await?;
        let now = (self.now)();
        let a_rev = active.as_ref().map_or(0, |a| a.0);
        let h_rev = beat.as_ref().map_or(0, |h| h.0);
        let expired = match (&active, self.seen) {
            (None, _) => true,
            // Released by its holder on shutdown.
            (Some((_, Some(doc))), _) if doc.holder.is_empty() => true,
            // Our own lease from before a restart: as good as anyone's, it waits out its time.
            (Some(_), Some((a, h, since))) if a == a_rev && h == h_rev => {
                now.saturating_duration_since(since) >= self.lease
            }
            (Some(_), _) => {
                self.seen = Some((a_rev, h_rev, now));
                false
            }
        };
        if !expired {
            return Ok(Role::Standby {
                address: active.and_then(|a| a.1).map(|d| d.address),
            });
        }
        // A record that does not decode has no epoch to go on from: its revision, which moved
        // with every change of hands, is at least as large.
        let epoch = active
            .as_ref()
            .map_or(0, |(rev, doc)| doc.as_ref().map_or(*rev, |d| d.epoch))
            + 1;
        let doc = ActiveDoc {
            holder: self.me.clone(),
            address: self.address.clone(),
            epoch,
        };
        let hb = HeartbeatDoc {
            holder: self.me.clone(),
            epoch,
            beat: 0,
        };
        let batch = vec![
            put_of(ACTIVE, &doc, Some(a_rev))?,
            put_of(HEARTBEAT, &hb, Some(h_rev))?,
        ];
        match self.store.put(batch).await {
            Ok(revs) => {
                self.held = Some(Held {
                    guard: Guard {
                        kind: Kind::Lease,
                        org: String::new(),
                        id: ACTIVE.into(),
                        revision: revs[0],
                    },
                    epoch,
                    beat: 0,
                });
                self.seen = None;
                self.renewed();
                self.acting.store(true, Ordering::SeqCst);
                tracing::info!(replica = %self.me, epoch, "took the lease: this replica is active");
                Ok(Role::Active { epoch })
            }
            // Another replica was quicker, or the holder renewed: pass requests on to it (read
            // again now, so requests are not refused until the next look).
            Err(Error::Precondition { .. }) => {
                self.seen = None;
                let now = read::<ActiveDoc>(self.store.as_ref(), ACTIVE).await?;
                Ok(Role::Standby {
                    address: now
                        .and_then(|(_, d)| d)
                        .map(|d| d.address)
                        .filter(|a| !a.is_empty()),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One renewal while active: the heartbeat, guarded by the lease. `Err(Precondition)` means
    /// the lease is lost (this replica has stepped down); other errors leave it to the caller
    /// (`may_act` turns false once the lease time passes without a renewal).
    pub async fn renew(&mut self) -> Result<()> {
        let Some(held) = self.held.clone() else {
            return Err(Error::precondition("this replica does not hold the lease"));
        };
        let hb = HeartbeatDoc {
            holder: self.me.clone(),
            epoch: held.epoch,
            beat: held.beat + 1,
        };
        match self
            .store
            .put_guarded(&held.guard, vec![put_of(HEARTBEAT, &hb, None)?])
            .await
        {
            Ok(_) => {
                if let Some(h) = &mut self.held {
                    h.beat += 1;
                }
                self.renewed();
                Ok(())
            }
            Err(e @ Error::Precondition { .. }) => {
                tracing::error!(replica = %self.me, epoch = held.epoch, error = %e, "lost the lease");
                self.step_down();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up (on shutdown), so a standby takes over without waiting out the lease:
    /// the `active` record is written without a holder (at the revision held, so only by the
    /// holder), which a standby sees as a free lease.
    pub async fn release(&mut self) {
        if let Some(held) = self.held.clone() {
            self.step_down();
            let free = ActiveDoc {
                holder: String::new(),
                address: String::new(),
                epoch: held.epoch,
            };
            let released = match put_of(ACTIVE, &free, Some(held.guard.revision)) {
                Ok(put) => self.store.put(vec![put]).await,
                Err(e) => Err(e),
            };
            if let Err(e) = released {
                tracing::warn!(error = %e, "could not release the lease; a standby takes over after the lease time");
            }
        }
    }
}

/// The catalog as the active replica writes it: every put and delete guarded by the lease it
/// holds. Reads pass through.
#[derive(Debug)]
pub struct FencedStore {
    inner: Arc<dyn CatalogStore>,
    guard: Guard,
}

impl FencedStore {
    /// `inner`, with writes guarded by `guard`.
    pub fn new(inner: Arc<dyn CatalogStore>, guard: Guard) -> Self {
        FencedStore { inner, guard }
    }
}

impl FencedStore {
    /// `e` (a failed expectation), or, when it was the guard that failed (another replica holds
    /// the lease now), `Unavailable`: the caller tries again and reaches the active replica.
    async fn fenced_or(&self, e: Error) -> Error {
        let g = &self.guard;
        match self.inner.get(g.kind, &g.org, &g.id).await {
            Ok(entry) if entry.revision == g.revision => e,
            _ => Error::unavailable(
                "this replica no longer holds the lease (another replica took over); nothing was \
                 written; try again",
            ),
        }
    }
}

#[async_trait]
impl CatalogStore for FencedStore {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        self.inner.get(kind, org, id).await
    }

    async fn put(&self, puts: Vec<Put>) -> Result<Vec<u64>> {
        match self.inner.put_guarded(&self.guard, puts).await {
            Err(e @ Error::Precondition { .. }) => Err(self.fenced_or(e).await),
            r => r,
        }
    }

    async fn delete(&self, kind: Kind, org: &str, id: &str, expect: Option<u64>) -> Result<bool> {
        match self
            .inner
            .delete_guarded(&self.guard, kind, org, id, expect)
            .await
        {
            Err(e @ Error::Precondition { .. }) => Err(self.fenced_or(e).await),
            r => r,
        }
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        self.inner.list(kind, query).await
    }

    async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
        self.inner.count(kind, query).await
    }
}

/// The catalog as a standby's view reads it: every write is refused (a standby passes writes on
/// to the active replica; its own view never writes).
#[derive(Debug)]
pub struct ReadOnlyStore(Arc<dyn CatalogStore>);

impl ReadOnlyStore {
    /// Reads through to `inner`.
    pub fn new(inner: Arc<dyn CatalogStore>) -> Self {
        ReadOnlyStore(inner)
    }

    fn refused() -> Error {
        Error::unavailable(
            "this replica is a standby: it does not write the catalog; writes go to the active replica",
        )
    }
}

#[async_trait]
impl CatalogStore for ReadOnlyStore {
    async fn get(&self, kind: Kind, org: &str, id: &str) -> Result<Entry> {
        self.0.get(kind, org, id).await
    }

    async fn put(&self, _puts: Vec<Put>) -> Result<Vec<u64>> {
        Err(Self::refused())
    }

    async fn delete(&self, _kind: Kind, _org: &str, _id: &str, _expect: Option<u64>) -> Result<bool> {
        Err(Self::refused())
    }

    async fn put_guarded(&self, _guard: &Guard, _puts: Vec<Put>) -> Result<Vec<u64>> {
        Err(Self::refused())
    }

    async fn delete_guarded(
        &self,
        _guard: &Guard,
        _kind: Kind,
        _org: &str,
        _id: &str,
        _expect: Option<u64>,
    ) -> Result<bool> {
        Err(Self::refused())
    }

    async fn list(&self, kind: Kind, query: &Query) -> Result<Page<Entry>> {
        self.0.list(kind, query).await
    }

    async fn count(&self, kind: Kind, query: &Query) -> Result<u64> {
        self.0.count(kind, query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pxb_core::catalog::MemoryCatalog;

    const LEASE: Duration = Duration::from_secs(15);

    /// A monotonic clock the test moves.
    #[derive(Clone)]
    struct Clock(Arc<std::sync::Mutex<Instant>>);

    impl Clock {
        fn new() -> Self {
            Clock(Arc::new(std::sync::Mutex::new(Instant::now())))
        }
        fn advance(&self, by: Duration) {
            *self.0.lock().expect("clock") += by;
        }
        fn monotonic(&self) -> Monotonic {
            let c = self.0.clone();
            Arc::new(move || *c.lock().expect("clock"))
        }
    }

    fn replica(store: &MemoryCatalog, me: &str, clock: &Clock) -> Lease {
        Lease::new(Arc::new(store.clone()), me, format!("http://{me}"), LEASE).with_clock(clock.monotonic())
    }

    fn record(id: &str) -> Put {
        Put {
            kind: Kind::Cluster,
            org: "o".into(),
            id: id.into(),
            index: Index::default(),
            doc: b"{}".to_vec(),
            expect: None,
        }
    }

    #[tokio::test]
    async fn one_replica_is_active_and_a_standby_takes_over_only_after_the_lease_time() {
        let store = MemoryCatalog::new();
        let clock = Clock::new();
        let (mut a, mut b) = (replica(&store, "a", &clock), replica(&store, "b", &clock));
        assert_eq!(a.observe().await.expect("a"), Role::Active { epoch: 1 });
        assert!(a.may_act()());
        assert_eq!(
            b.observe().await.expect("b"),
            Role::Standby {
                address: Some("http://a".into())
            }
        );
        // While a renews, b never takes over.
        for _ in 0..10 {
            clock.advance(a.renew_every());
            a.renew().await.expect("renew");
            assert!(matches!(b.observe().await.expect("b"), Role::Standby { .. }));
        }
        // a stops renewing (dead or paused): b waits out the lease, then takes over.
        clock.advance(LEASE - Duration::from_secs(1));
        assert!(matches!(b.observe().await.expect("b"), Role::Standby { .. }));
        clock.advance(Duration::from_secs(2));
        assert!(
            !a.may_act()(),
            "a paused holder stops acting once its lease time passed"
        );
        assert_eq!(b.observe().await.expect("b"), Role::Active { epoch: 2 });
        // a wakes up: its fenced writes land nowhere, its renewal tells it that it lost.
        let fenced = FencedStore::new(Arc::new(store.clone()), a.guard().expect("a's guard"));
        let err = fenced.put(vec![record("stale")]).await.expect_err("fenced");
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
        assert!(err.to_string().contains("no longer holds the lease"), "{err}");
        assert!(store.get(Kind::Cluster, "o", "stale").await.is_err());
        assert!(matches!(a.renew().await, Err(Error::Precondition { .. })));
        assert!(!a.may_act()());
        // b's writes land.
        let fenced = FencedStore::new(Arc::new(store.clone()), b.guard().expect("b's guard"));
        fenced.put(vec![record("fresh")]).await.expect("b writes");
        b.renew().await.expect("b renews");
    }

    #[tokio::test]
    async fn a_lease_record_that_does_not_decode_is_waited_out_then_replaced() {
        let store = MemoryCatalog::new();
        let clock = Clock::new();
        let damaged = |id: &str| Put {
            doc: b"{not json".to_vec(),
            ..put_of(id, &"", None).expect("put")
        };
        store
            .put(vec![damaged(ACTIVE), damaged(HEARTBEAT)])
            .await
            .expect("damage");
        let mut b = replica(&store, "b", &clock);
        // A damaged record is as good as a silent holder's: no takeover before the lease time…
        assert_eq!(
            b.observe().await.expect("observe"),
            Role::Standby { address: None }
        );
        clock.advance(LEASE - Duration::from_secs(1));
        assert!(matches!(
            b.observe().await.expect("observe"),
            Role::Standby { .. }
        ));
        // …and no block after it.
        clock.advance(Duration::from_secs(2));
        assert!(matches!(b.observe().await.expect("observe"), Role::Active { .. }));
        let now = read::<ActiveDoc>(&store, ACTIVE)
            .await
            .expect("read")
            .expect("record");
        assert_eq!(now.1.map(|d| d.holder), Some("b".to_owned()));
        b.renew().await.expect("renews over the damaged heartbeat");
    }

    #[tokio::test]
    async fn a_standbys_view_reads_the_catalog_and_writes_nothing() {
        let store = MemoryCatalog::new();
        store.put(vec![record("there")]).await.expect("put");
        let view = ReadOnlyStore::new(Arc::new(store.clone()));
        assert!(view.get(Kind::Cluster, "o", "there").await.is_ok());
        assert_eq!(
            view.list(Kind::Cluster, &Query::org("o"))
                .await
                .expect("list")
                .items
                .len(),
            1
        );
        let guard = Guard {
            kind: Kind::Lease,
            org: String::new(),
            id: ACTIVE.into(),
            revision: 1,
        };
        let refused = [
            view.put(vec![record("new")]).await.map(|_| ()),
            view.delete(Kind::Cluster, "o", "there", None).await.map(|_| ()),
            view.put_guarded(&guard, vec![record("new")]).await.map(|_| ()),
            view.delete_guarded(&guard, Kind::Cluster, "o", "there", None)
                .await
                .map(|_| ()),
        ];
        for r in refused {
            assert!(matches!(r, Err(Error::Unavailable { .. })), "{r:?}");
        }
        assert!(
            store.get(Kind::Cluster, "o", "new").await.is_err(),
            "nothing written"
        );
        assert!(
            store.get(Kind::Cluster, "o", "there").await.is_ok(),
            "nothing deleted"
        );
    }

    #[tokio::test]
    async fn two_standbys_racing_for_a_free_lease_make_one_active() {
        let store = MemoryCatalog::new();
        let clock = Clock::new();
        let mut replicas: Vec<Lease> = (0..3)
            .map(|i| replica(&store, &format!("r{i}"), &clock))
            .collect();
        let mut active = 0;
        for r in &mut replicas {
            if matches!(r.observe().await.expect("observe"), Role::Active { .. }) {
                active += 1;
            }
        }
        assert_eq!(active, 1);
        // The holder releases on shutdown: the next standby takes over without waiting.
        replicas[0].release().await;
        assert!(!replicas[0].may_act()());
        let mut active = Vec::new();
        for (i, r) in replicas.iter_mut().enumerate().skip(1) {
            if matches!(r.observe().await.expect("observe"), Role::Active { .. }) {
                active.push(i);
            }
        }
        assert_eq!(active.len(), 1, "{active:?}");
    }
}

/// How a replica runs ([`run`]).
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// This replica's name (unique among the replicas: the pod's name).
    pub me: String,
    /// Where the other replicas reach this one's API (`http://10.0.0.7:8080`).
    pub advertise: String,
    /// The lease time: how long the active replica may go without renewing before a standby
    /// takes over.
    pub lease: Duration,
    /// The largest request body a standby passes on.
    pub max_body_bytes: usize,
}

/// The standby's API: every request passed on to the active replica, or `503` with
/// `Retry-After` while there is none.
#[derive(Clone)]
struct Proxy {
    target: tokio::sync::watch::Receiver<Option<String>>,
    http: reqwest::Client,
    max_body: usize,
    /// To read the lease again when the active replica it knows does not answer (it may have
    /// changed since this standby last looked).
    store: Arc<dyn CatalogStore>,
    /// This standby's own view of the catalog, once loaded.
    view: Arc<View>,
}

/// A standby's own read-only server over the catalog: it answers the API's reads, and is read
/// again from the database every third of the lease time and after every write passed on.
#[derive(Default)]
struct View {
    router: std::sync::RwLock<Option<axum::Router>>,
    /// Asks for a refresh; `requested` counts the asks, `refreshed` the last ask answered.
    wake: tokio::sync::Notify,
    requested: std::sync::atomic::AtomicU64,
    refreshed: tokio::sync::watch::Sender<u64>,
}

impl View {
    fn router(&self) -> Option<axum::Router> {
        self.router.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, router: Option<axum::Router>) {
        *self.router.write().unwrap_or_else(|e| e.into_inner()) = router;
    }

    /// Asks for a refresh and waits (up to `within`) until one that began after the ask ended.
    async fn refreshed_after_now(&self, within: Duration) {
        let ask = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut seen = self.refreshed.subscribe();
        self.wake.notify_one();
        let _ = tokio::time::timeout(within, seen.wait_for(|done| *done >= ask)).await;
    }
}

/// Whether a standby answers `request` from its own view: reads of the API (but the
/// discoveries', whose live state only the active replica has, while it answers).
fn served_locally(parts: &axum::http::request::Parts) -> bool {
    let read = parts.method == axum::http::Method::GET || parts.method == axum::http::Method::HEAD;
    read && parts.uri.path().starts_with("/v1/") && !parts.uri.path().contains("/discoveries")
}

impl Proxy {
    /// Sends the request to `target`.
    async fn send(
        &self,
        target: &str,
        parts: &axum::http::request::Parts,
        body: bytes::Bytes,
    ) -> std::result::Result<reqwest::Response, reqwest::Error> {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = self
            .http
            .request(
                parts.method.clone(),
                format!("{}{path}", target.trim_end_matches('/')),
            )
            .body(body);
        for (name, value) in &parts.headers {
            if !hop_by_hop(name)
                && name != axum::http::header::HOST
                && name != axum::http::header::CONTENT_LENGTH
            {
                out = out.header(name, value);
            }
        }
        out.send().await
    }
}

async fn forward(
    axum::extract::State(proxy): axum::extract::State<Proxy>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let unavailable = |why: String| {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "2")],
            axum::Json(serde_json::json!({"error": {"code": "unavailable", "message": why}})),
        )
            .into_response()
    };
    if request.uri().path() == "/healthz" {
        return (axum::http::StatusCode::OK, "ok (standby)\n").into_response();
    }
    // Its own series, not the active replica's: a scrape of every pod counts the fleet once.
    if request.uri().path() == "/metrics" {
        let accept = request
            .headers()
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok());
        let e = super::api::health::standby_metrics(accept);
        return ([(axum::http::header::CONTENT_TYPE, e.content_type)], e.body).into_response();
    }
    let (parts, body) = request.into_parts();
    let local = proxy.view.router();
    if let Some(router) = &local
        && served_locally(&parts)
    {
        return answer_locally(router.clone(), parts, body).await;
    }
    let mut target = proxy.target.borrow().clone();
    // This standby has not seen an active replica yet (it looks every third of the lease): the
    // lease may have been taken since.
    if target.is_none()
        && let Ok(Some((_, Some(now)))) = read::<ActiveDoc>(proxy.store.as_ref(), ACTIVE).await
        && !now.holder.is_empty()
        && !now.address.is_empty()
    {
        target = Some(now.address);
    }
    let Some(target) = target else {
        // No active replica: its reads are still answered here.
        if let Some(router) = local
            && parts.method == axum::http::Method::GET
        {
            return answer_locally(router, parts, body).await;
        }
        return unavailable("no replica is active yet; try again".into());
    };
    let body = match axum::body::to_bytes(body, proxy.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                axum::Json(serde_json::json!({"error": {"code": "invalid", "message": "the request body is too large"}})),
            )
                .into_response();
        }
    };
    let mut sent = proxy.send(&target, &parts, body.clone()).await;
    // The replica this standby knew as active refused the connection (so it never saw the
    // request, which can go elsewhere; a timeout could not tell): the lease may have moved
    // since this standby last looked.
    if let Err(e) = &sent
        && e.is_connect()
        && let Ok(Some((_, Some(now)))) = read::<ActiveDoc>(proxy.store.as_ref(), ACTIVE).await
        && !now.address.is_empty()
        && now.address != target
    {
        sent = proxy.send(&now.address, &parts, body).await;
    }
    let answer = match sent {
        Ok(a) => a,
        Err(e) => {
            // The active replica is gone (or going): its reads are still answered here.
            if parts.method == axum::http::Method::GET
                && let Some(router) = local
            {
                return answer_locally(router, parts, axum::body::Bytes::new()).await;
            }
            return unavailable(format!("the active replica does not answer ({e}); try again"));
        }
    };
    let status = answer.status();
    // A write went through: read the catalog again before answering, so that this caller reads
    // its own write here next.
    if parts.method != axum::http::Method::GET && status.is_success() {
        proxy.view.refreshed_after_now(Duration::from_secs(5)).await;
    }
    let headers = answer.headers().clone();
    let bytes = match answer.bytes().await {
        Ok(b) => b,
        Err(e) => return unavailable(format!("the active replica's answer broke off ({e}); try again")),
    };
    let mut response = axum::response::Response::new(axum::body::Body::from(bytes));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !hop_by_hop(name) && name != axum::http::header::CONTENT_LENGTH {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}

/// Answers `parts` with the standby's own view.
async fn answer_locally(
    router: axum::Router,
    parts: axum::http::request::Parts,
    body: impl Into<axum::body::Body>,
) -> axum::response::Response {
    use tower::ServiceExt as _;
    let request = axum::extract::Request::from_parts(parts, body.into());
    match router.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn hop_by_hop(name: &axum::http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" | "te" | "trailer"
    )
}

/// Serves the standby's API on `listener` until `stop` fires, on a thread and runtime of its own
/// (as the active replica's API: its reads never queue behind the view's refreshes or other work
/// of the process).
fn start_proxy(
    listener: std::net::TcpListener,
    proxy: Proxy,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("preparing the standby's listener", e))?;
    std::thread::Builder::new()
        .name("pxb-standby-api".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the standby's API");
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot serve the standby's API");
                        return;
                    }
                };
                let app = axum::Router::new().fallback(forward).with_state(proxy);
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the standby's API stopped");
                }
            });
        })
        .map_err(|e| Error::io("starting the standby's API thread", e))
}

/// Waits (without blocking the runtime) until the standby's API thread ended.
async fn join_proxy(handle: std::thread::JoinHandle<()>) {
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = handle.join();
}

/// Builds the standby's view the first time, reads it again from the catalog afterwards; a
/// failure is logged and the reads keep being answered from the last view (or passed on).
async fn refresh_view<F>(
    local: &mut Option<super::Server>,
    view: &View,
    store: &Arc<dyn CatalogStore>,
    listener: &std::net::TcpListener,
    make: &F,
) where
    F: Fn(Arc<dyn CatalogStore>) -> super::ServerBuilder,
{
    match local {
        Some(server) => {
            let started = std::time::Instant::now();
            match server.refresh().await {
                Ok(()) => tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "standby's view read again"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the standby's view again; answering from the last one")
                }
            }
        }
        None => {
            let built = match listener.try_clone() {
                Ok(l) => {
                    make(Arc::new(ReadOnlyStore::new(store.clone())))
                        .without_support()
                        .listener(l)
                        .acting(|| false)
                        .build()
                        .await
                }
                Err(e) => Err(Error::io("sharing the API listener", e)),
            };
            match built {
                Ok(b) => {
                    let server = b.server().clone();
                    view.set(Some(super::api::router(server.clone())));
                    *local = Some(server);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot build the standby's view; passing reads on to the active replica");
                }
            }
        }
    }
}

/// Runs this process as one replica over the shared catalog `store`, serving on `listener`,
/// until `shutdown` resolves (then `Ok`, the lease released) or the lease is lost (then an
/// error: exit, and be started again as a standby). `make` builds the server with the catalog
/// it is given: while standby a read-only view (over [`ReadOnlyStore`], no loop running, read
/// again every third of the lease time and after every write passed on) that answers the API's
/// reads; the fenced one when this replica becomes active.
pub async fn run<F>(
    store: Arc<dyn CatalogStore>,
    listener: std::net::TcpListener,
    options: ReplicaOptions,
    make: F,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()>
where
    F: Fn(Arc<dyn CatalogStore>) -> super::ServerBuilder,
{
    let mut lease = Lease::new(store.clone(), &options.me, &options.advertise, options.lease);
    let mut shutdown = std::pin::pin!(shutdown);
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let view = Arc::new(View::default());
    let proxy = Proxy {
        target: target_rx,
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| Error::other(format!("the standby's HTTP client: {e}")))?,
        max_body: options.max_body_bytes,
        store: store.clone(),
        view: view.clone(),
    };
    let proxy_task = start_proxy(
        listener
            .try_clone()
            .map_err(|e| Error::io("sharing the API listener", e))?,
        proxy,
        stop_rx,
    )?;
    tracing::info!(replica = %options.me, lease_secs = options.lease.as_secs(), "standby: answering reads from its own view, passing writes on to the active replica");
    // Standby until this replica takes the lease.
    let mut local: Option<super::Server> = None;
    let mut next_observe = tokio::time::Instant::now();
    let epoch = loop {
        if tokio::time::Instant::now() >= next_observe {
            next_observe = tokio::time::Instant::now() + lease.renew_every();
            match lease.observe().await {
                Ok(Role::Active { epoch }) => break epoch,
                Ok(Role::Standby { address }) => {
                    let _ = target_tx.send(address.filter(|a| !a.is_empty()));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the lease; still standby"),
            }
        }
        let asked = view.requested.load(Ordering::SeqCst);
        refresh_view(&mut local, &view, &store, &listener, &make).await;
        view.refreshed.send_replace(asked);
        tokio::select! {
            () = &mut shutdown => {
                view.set(None);
                // Nobody waits for a refresh that will not come.
                view.refreshed.send_replace(u64::MAX);
                let _ = stop_tx.send(());
                join_proxy(proxy_task).await;
                return Ok(());
            }
            () = tokio::time::sleep_until(next_observe) => {}
            () = view.wake.notified() => {}
        }
    };
    view.set(None);
    view.refreshed.send_replace(u64::MAX);
    drop(local);
    let _ = stop_tx.send(());
    join_proxy(proxy_task).await;
    tracing::info!(replica = %options.me, epoch, "active: loading the catalog and taking up the fleet's work");
    let guard = lease
        .guard()
        .ok_or_else(|| Error::other("active without a guard"))?;
    let fenced: Arc<dyn CatalogStore> = Arc::new(FencedStore::new(store, guard));
    let built = make(fenced)
        .listener(listener)
        .acting(lease.may_act())
        .build()
        .await;
    let daemon = match built.and_then(super::BuiltServer::spawn) {
        Ok(d) => d,
        Err(e) => {
            lease.release().await;
            return Err(e);
        }
    };
    loop {
        tokio::select! {
            () = &mut shutdown => {
                daemon.shutdown().await;
                lease.release().await;
                return Ok(());
            }
            () = tokio::time::sleep(lease.renew_every()) => {}
        }
        match lease.renew().await {
            Ok(()) => {}
            Err(e @ Error::Precondition { .. }) => {
                daemon.shutdown().await;
                return Err(Error::precondition(format!(
                    "this replica lost the lease ({e}); it stops so that the active replica works alone"
                )));
            }
            Err(e) if !lease.may_act()() => {
                lease.step_down();
                daemon.shutdown().await;
                return Err(Error::unavailable(format!(
                    "this replica could not renew its lease for {:?} ({e}); it stops",
                    lease.duration()
                )));
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the lease; trying again"),
        }
    }
}
