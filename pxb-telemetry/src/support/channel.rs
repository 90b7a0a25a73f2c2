//! [`SupportChannel`]: the task that registers, renews and uploads while the channel is
//! enabled ([module docs](super)).

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{
    Batch, ClientIdentity, ClusterRef, ExportError, KeyAndCsr, LogBuffer, MetricPoint, OrgMapping,
    RegistrationRequest, TelemetryExporter,
};

/// Where the channel reads what it sends; the embedder's state (pxb-server: its catalog and
/// its own metrics).
#[async_trait]
pub trait SupportSources: Send + Sync {
    /// Health metrics, now.
    async fn metrics(&self) -> Vec<MetricPoint>;
    /// The onboarded clusters and their orgs, now.
    async fn clusters(&self) -> Vec<ClusterRef>;
    /// The provider customer ↔ org mapping, now (sent with each registration).
    async fn orgs(&self) -> Vec<OrgMapping>;
}

/// Why a [`CredentialStore`] failed.
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// Keeps the channel's [`ClientIdentity`] across restarts (pxb-server seals it).
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The identity saved last, if any.
    async fn load(&self) -> Result<Option<ClientIdentity>, StoreError>;
    /// Replaces the saved identity.
    async fn save(&self, identity: &ClientIdentity) -> Result<(), StoreError>;
}

/// A [`CredentialStore`] in memory (nothing survives a restart).
#[derive(Debug, Default)]
pub struct MemoryCredentialStore {
    identity: Mutex<Option<ClientIdentity>>,
}

impl MemoryCredentialStore {
    /// A store holding `identity`.
    pub fn with(identity: ClientIdentity) -> MemoryCredentialStore {
        MemoryCredentialStore {
            identity: Mutex::new(Some(identity)),
        }
    }

    /// The identity saved last.
    pub fn get(&self) -> Option<ClientIdentity> {
        self.identity.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl CredentialStore for MemoryCredentialStore {
    async fn load(&self) -> Result<Option<ClientIdentity>, StoreError> {
        Ok(self.get())
    }
    async fn save(&self, identity: &ClientIdentity) -> Result<(), StoreError> {
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity.clone());
        Ok(())
    }
}

/// What the channel is doing, for a status page or a metric ([`SupportHandle::status`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SupportStatus {
    /// Whether the channel is enabled.
    pub enabled: bool,
    /// Whether it holds a client certificate that has not expired.
    pub registered: bool,
    /// Successful registrations (first ones and renewals) since the channel started.
    pub registrations: u64,
    /// Batches uploaded since the channel started.
    pub uploads: u64,
    /// Batches waiting to be uploaded.
    pub pending_batches: usize,
    /// Batches dropped: the oldest when the queue was full, and those the service rejected.
    pub dropped_batches: u64,
    /// Log records dropped because the log buffer was full (since the process started).
    pub dropped_logs: u64,
    /// The last failure, until a call succeeds.
    pub last_error: Option<String>,
    /// Whether the service refused the last registration (bad token or CSR): an operator must
    /// act; the channel retries every 5 minutes.
    pub needs_operator: bool,
}

/// The support channel; [`SupportChannel::builder`] makes one, [`SupportChannelBuilder::spawn`]
/// runs it.
pub struct SupportChannel {
    installation_id: String,
    version: String,
    exporter: Arc<dyn TelemetryExporter>,
    sources: Arc<dyn SupportSources>,
    credentials: Arc<dyn CredentialStore>,
    logs: Arc<LogBuffer>,
    interval: Duration,
    max_pending: usize,
}

impl fmt::Debug for SupportChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupportChannel")
            .field("installation_id", &self.installation_id)
            .field("exporter", &self.exporter)
            .field("interval", &self.interval)
            .field("max_pending", &self.max_pending)
            .finish_non_exhaustive()
    }
}

/// Configures a [`SupportChannel`].
pub struct SupportChannelBuilder {
    channel: SupportChannel,
    enabled: watch::Receiver<bool>,
}

impl fmt::Debug for SupportChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupportChannelBuilder")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// The default upload interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// The default number of batches kept while the service is down (an hour at the default
/// interval).
pub const DEFAULT_MAX_PENDING: usize = 12;

impl SupportChannel {
    /// A channel for `installation_id` (a UUID), talking through `exporter`, reading from
    /// `sources`, keeping its certificate in `credentials`, running while `enabled` holds
    /// `true`. Defaults: upload every 5 minutes, 12 batches queued at most, logs from
    /// [`LogBuffer::global`], version of this crate.
    pub fn builder(
        installation_id: impl Into<String>,
        exporter: Arc<dyn TelemetryExporter>,
        sources: Arc<dyn SupportSources>,
        credentials: Arc<dyn CredentialStore>,
        enabled: watch::Receiver<bool>,
    ) -> SupportChannelBuilder {
        SupportChannelBuilder {
            channel: SupportChannel {
                installation_id: installation_id.into(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                exporter,
                sources,
                credentials,
                logs: Arc::clone(LogBuffer::global()),
                interval: DEFAULT_INTERVAL,
                max_pending: DEFAULT_MAX_PENDING,
            },
            enabled,
        }
    }
}

impl SupportChannelBuilder {
    /// The time between uploads (at least one second).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.channel.interval = interval.max(Duration::from_secs(1));
        self
    }

    /// How many batches wait while the service is down (at least one); beyond, the oldest is
    /// dropped.
    pub fn max_pending_batches(mut self, max: usize) -> Self {
        self.channel.max_pending = max.max(1);
        self
    }

    /// The log buffer to drain instead of [`LogBuffer::global`] (its capacity bounds the log
    /// records of one batch).
    pub fn log_buffer(mut self, logs: Arc<LogBuffer>) -> Self {
        self.channel.logs = logs;
        self
    }

    /// The pxb version sent with registrations.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.channel.version = version.into();
        self
    }

    /// Starts the channel's task on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn spawn(self) -> SupportHandle {
        let (stop_tx, stop_rx) = oneshot::channel();
        let (status_tx, status_rx) = watch::channel(SupportStatus::default());
        let driver = Driver {
            channel: self.channel,
            status: status_tx,
            identity: None,
            pending: VecDeque::new(),
        };
        let signals = Signals {
            enabled: self.enabled,
            closed: false,
            stop: stop_rx,
        };
        let task = tokio::spawn(driver.run(signals));
        SupportHandle {
            stop: Some(stop_tx),
            task: Some(task),
            status: status_rx,
        }
    }
}

/// The running channel. Dropping it stops the channel at its next step (an upload in flight
/// is abandoned); [`SupportHandle::stop`] also waits for that.
#[derive(Debug)]
pub struct SupportHandle {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    status: watch::Receiver<SupportStatus>,
}

impl SupportHandle {
    /// What the channel is doing now.
    pub fn status(&self) -> SupportStatus {
        self.status.borrow().clone()
    }

    /// A receiver of every change of [`SupportHandle::status`].
    pub fn subscribe(&self) -> watch::Receiver<SupportStatus> {
        self.status.clone()
    }

    /// Stops the channel and waits until its task has ended (log capture is off then).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SupportHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// What ended a wait.
enum Interrupt {
    /// The channel was turned off.
    Disabled,
    /// The handle asked the task to end (or was dropped).
    Stop,
}

/// The enable switch and the stop signal.
struct Signals {
    enabled: watch::Receiver<bool>,
    /// The switch's sender is gone: its value is final.
    closed: bool,
    stop: oneshot::Receiver<()>,
}

impl Signals {
    /// Waits until the channel is enabled; `Err` when it is stopped or can never be enabled.
    async fn until_enabled(&mut self) -> Result<(), Interrupt> {
        loop {
            if *self.enabled.borrow_and_update() {
                return Ok(());
            }
            if self.closed {
                return Err(Interrupt::Stop);
            }
            tokio::select! {
                _ = &mut self.stop => return Err(Interrupt::Stop),
                changed = self.enabled.changed() => self.closed = changed.is_err(),
            }
        }
    }

    /// Resolves when the channel is turned off or stopped.
    async fn interrupted(&mut self) -> Interrupt {
        loop {
            if !*self.enabled.borrow_and_update() {
                return Interrupt::Disabled;
            }
            tokio::select! {
                _ = &mut self.stop => return Interrupt::Stop,
                changed = self.enabled.changed(), if !self.closed => self.closed = changed.is_err(),
            }
        }
    }

    /// `fut`, unless the channel is turned off or stopped first.
    async fn guard<F: Future>(&mut self, fut: F) -> Result<F::Output, Interrupt> {
        tokio::select! {
            out = fut => Ok(out),
            i = self.interrupted() => Err(i),
        }
    }
}

/// Exponential back-off: 1 s doubling to at most 5 min, each delay ±20 %.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The shortest time between two registrations, whatever the certificates say.
const MIN_REGISTRATION_GAP: Duration = Duration::from_secs(5);

impl Backoff {
    /// The delay after one more failure.
    fn next(&mut self) -> Duration {
        let base = BACKOFF_START
            .saturating_mul(1 << self.failures.min(16))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        jitter(base)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `d`, ±20 % at random.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.8..=1.2))
}

/// The identity in use and when (on tokio's clock) to renew it and when it expires.
struct Active {
    identity: ClientIdentity,
    renew_at: Instant,
    expires_at: Instant,
}

impl Active {
    /// Maps the identity's wall-clock times onto tokio's clock, now.
    fn new(identity: ClientIdentity) -> Active {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let until = |t: SystemTime| now + t.duration_since(wall).unwrap_or_default();
        Active {
            renew_at: until(identity.renew_at()),
            expires_at: until(identity.not_after),
            identity,
        }
    }
}

struct Driver {
    channel: SupportChannel,
    status: watch::Sender<SupportStatus>,
    identity: Option<Active>,
    pending: VecDeque<Batch>,
}

/// Turns log capture off when the task ends, however it ends.
struct CaptureOff(Arc<LogBuffer>);

impl Drop for CaptureOff {
    fn drop(&mut self) {
        self.0.set_capturing(false);
    }
}

impl Driver {
    async fn run(mut self, mut signals: Signals) {
        let _off = CaptureOff(Arc::clone(&self.channel.logs));
        loop {
            if signals.until_enabled().await.is_err() {
                return;
            }
            self.channel.logs.set_capturing(true);
            self.update(|s| s.enabled = true);
            tracing::info!(installation = %self.channel.installation_id, "support channel enabled");
            let interrupt = self.run_enabled(&mut signals).await;
            self.channel.logs.set_capturing(false);
            let discarded = self.pending.len();
            self.pending.clear();
            self.update(|s| {
                s.enabled = false;
                s.pending_batches = 0;
            });
            tracing::info!(discarded_batches = discarded, "support channel disabled");
            if matches!(interrupt, Interrupt::Stop) {
                return;
            }
        }
    }

    fn update(&self, f: impl FnOnce(&mut SupportStatus)) {
        self.status.send_modify(|s| {
            f(s);
            s.pending_batches = self.pending.len();
            s.registered = self
                .identity
                .as_ref()
                .is_some_and(|a| a.expires_at > Instant::now());
            s.dropped_logs = self.channel.logs.dropped();
        });
    }

    /// Runs while enabled; returns what ended it.
    async fn run_enabled(&mut self, signals: &mut Signals) -> Interrupt {
        if self.identity.is_none() {
            match signals.guard(self.channel.credentials.load()).await {
                Err(i) => return i,
                Ok(Ok(Some(identity))) if identity.installation_id == self.channel.installation_id => {
                    let active = Active::new(identity);
                    if active.expires_at > Instant::now() {
                        self.identity = Some(active);
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "support channel: could not load the stored client certificate; registering anew")
                }
            }
        }
        let mut backoff = Backoff::default();
        // Registering again after revocations: only a successful upload resets it (a successful
        // registration says nothing about whether the service will take the next upload).
        let mut reregister = Backoff::default();
        let mut next_attempt = Instant::now();
        // No registration before this, whatever the certificates say.
        let mut registration_floor = Instant::now();
        // Collection waits for an identity, so the first batch follows the first registration.
        let mut next_collect = Instant::now();
        // Revocations in a row without a successful upload: the second one backs off.
        let mut revoked_in_a_row = 0u32;
        loop {
            let now = Instant::now();
            if self.identity.as_ref().is_some_and(|a| a.expires_at <= now) {
                self.identity = None;
            }
            let renewal_due = self.identity.as_ref().is_none_or(|a| a.renew_at <= now);
            if renewal_due && next_attempt <= now && registration_floor <= now {
                registration_floor = now + MIN_REGISTRATION_GAP;
                match signals.guard(self.register()).await {
                    Err(i) => return i,
                    Ok(Ok(active)) => {
                        self.identity = Some(active);
                        backoff.reset();
                        next_attempt = Instant::now();
                        self.update(|s| {
                            s.registrations += 1;
                            s.last_error = None;
                            s.needs_operator = false;
                        });
                    }
                    Ok(Err(e)) => {
                        let refused = matches!(e, ExportError::Refused(_));
                        let delay = if refused {
                            jitter(BACKOFF_MAX)
                        } else {
                            backoff.next()
                        };
                        tracing::warn!(error = %e, retry_in = ?delay, "support channel: registration failed");
                        next_attempt = Instant::now() + delay;
                        self.update(|s| {
                            s.last_error = Some(e.to_string());
                            s.needs_operator = refused;
                        });
                    }
                }
                continue;
            }
            if self.identity.is_some() && next_collect <= now {
                let batch = match signals.guard(self.collect()).await {
                    Err(i) => return i,
                    Ok(batch) => batch,
                };
                let mut dropped = 0;
                if !batch.is_empty() {
                    while self.pending.len() >= self.channel.max_pending {
                        self.pending.pop_front();
                        dropped += 1;
                    }
                    self.pending.push_back(batch);
                }
                next_collect = Instant::now() + self.channel.interval;
                self.update(|s| s.dropped_batches += dropped);
                continue;
            }
            if let (Some(active), Some(batch)) = (&self.identity, self.pending.front())
                && next_attempt <= now
            {
                match signals
                    .guard(self.channel.exporter.export(&active.identity, batch))
                    .await
                {
                    Err(i) => return i,
                    Ok(Ok(())) => {
                        self.pending.pop_front();
                        backoff.reset();
                        reregister.reset();
                        revoked_in_a_row = 0;
                        self.update(|s| {
                            s.uploads += 1;
                            s.last_error = None;
                        });
                    }
                    Ok(Err(ExportError::Rejected(reason))) => {
                        tracing::warn!(%reason, "support channel: the service rejected a batch; dropped");
                        self.pending.pop_front();
                        self.update(|s| {
                            s.dropped_batches += 1;
                            s.last_error = Some(reason);
                        });
                    }
                    Ok(Err(e @ (ExportError::Revoked | ExportError::Local(_) | ExportError::Refused(_)))) => {
                        tracing::warn!(error = %e, "support channel: registering again");
                        self.identity = None;
                        revoked_in_a_row += 1;
                        next_attempt = if revoked_in_a_row > 1 {
                            Instant::now() + reregister.next()
                        } else {
                            Instant::now()
                        };
                        self.update(|s| s.last_error = Some(e.to_string()));
                    }
                    Ok(Err(e @ ExportError::Unavailable(_))) => {
                        let delay = backoff.next();
                        tracing::debug!(error = %e, retry_in = ?delay, "support channel: upload failed");
                        next_attempt = Instant::now() + delay;
                        self.update(|s| s.last_error = Some(e.to_string()));
                    }
                }
                continue;
            }
            // Nothing to do now: sleep until the next thing is due.
            let wake = match &self.identity {
                None => next_attempt.max(registration_floor),
                Some(active) => {
                    let renewal = active.renew_at.max(next_attempt).max(registration_floor);
                    let mut wake = next_collect.min(renewal).min(active.expires_at);
                    if !self.pending.is_empty() {
                        wake = wake.min(next_attempt);
                    }
                    wake
                }
            };
            if let Err(i) = signals.guard(tokio::time::sleep_until(wake.max(now))).await {
                return i;
            }
        }
    }

    /// Registers with a fresh key and saves the identity.
    async fn register(&self) -> Result<Active, ExportError> {
        let key = KeyAndCsr::generate(&self.channel.installation_id)?;
        let req = RegistrationRequest {
            installation_id: self.channel.installation_id.clone(),
            csr_pem: key.csr_pem.clone(),
            orgs: self.channel.sources.orgs().await,
            version: self.channel.version.clone(),
        };
        let issued = self.channel.exporter.register(&req).await?;
        let identity = ClientIdentity::new(&self.channel.installation_id, key, issued);
        if identity.renew_at() <= SystemTime::now() {
            // Using it would mean registering again at once, in a loop.
            return Err(ExportError::Unavailable(format!(
                "the service issued a certificate that has already expired or is due for renewal \
                 (notAfter {}); is this host's clock ahead of the service's?",
                super::rfc3339::format(identity.not_after)
            )));
        }
        if let Err(e) = self.channel.credentials.save(&identity).await {
            tracing::warn!(error = %e, "support channel: could not store the client certificate; it is used until restart");
        }
        tracing::info!(not_after = ?identity.not_after, "support channel: registered");
        Ok(Active::new(identity))
    }

    /// Reads the sources and drains the log buffer.
    async fn collect(&self) -> Batch {
        let metrics = self.channel.sources.metrics().await;
        let clusters = self.channel.sources.clusters().await;
        Batch {
            collected_at: SystemTime::now(),
            metrics,
            logs: self.channel.logs.drain(),
            clusters,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::support::{LogRecord, MemoryExporter, conformance};

    const ID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
    const INTERVAL: Duration = Duration::from_secs(60);

    /// Sources whose one metric counts the collections.
    #[derive(Default)]
    struct Sources {
        collections: AtomicU64,
    }

    #[async_trait]
    impl SupportSources for Sources {
        async fn metrics(&self) -> Vec<MetricPoint> {
            let n = self.collections.fetch_add(1, Ordering::SeqCst) + 1;
            vec![MetricPoint::counter("pxb.test.collections", n as f64)]
        }
        async fn clusters(&self) -> Vec<ClusterRef> {
            vec![ClusterRef {
                uuid: "c-1".into(),
                org: "org-a".into(),
            }]
        }
        async fn orgs(&self) -> Vec<OrgMapping> {
            vec![OrgMapping {
                org: "org-a".into(),
                customer: "cust-1".into(),
            }]
        }
    }

    struct Setup {
        exporter: Arc<MemoryExporter>,
        sources: Arc<Sources>,
        store: Arc<MemoryCredentialStore>,
        logs: Arc<LogBuffer>,
        enabled: watch::Sender<bool>,
        handle: SupportHandle,
    }

    fn start(id: &str, on: bool, exporter: MemoryExporter, store: MemoryCredentialStore) -> Setup {
        let exporter = Arc::new(exporter);
        let sources = Arc::new(Sources::default());
        let store = Arc::new(store);
        let logs = Arc::new(LogBuffer::new(100));
        let (enabled, enabled_rx) = watch::channel(on);
        let handle = SupportChannel::builder(
            id,
            Arc::clone(&exporter) as Arc<dyn TelemetryExporter>,
            Arc::clone(&sources) as Arc<dyn SupportSources>,
            Arc::clone(&store) as Arc<dyn CredentialStore>,
            enabled_rx,
        )
        .interval(INTERVAL)
        .max_pending_batches(3)
        .log_buffer(Arc::clone(&logs))
        .spawn();
        Setup {
            exporter,
            sources,
            store,
            logs,
            enabled,
            handle,
        }
    }

    fn count(exporter: &MemoryExporter, operation: &str) -> usize {
        exporter
            .calls()
            .iter()
            .filter(|c| c.operation == operation)
            .count()
    }

    fn values(batches: &[Batch]) -> Vec<u64> {
        batches
            .iter()
            .flat_map(|b| b.metrics.iter().map(|m| m.value as u64))
            .collect()
    }

    fn log(message: &str) -> LogRecord {
        LogRecord {
            time: SystemTime::now(),
            level: tracing::Level::WARN,
            target: "pxb_daemon::server".into(),
            message: message.into(),
        }
    }

    async fn sleep(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn off_makes_no_call_and_captures_nothing() {
        let s = start(ID, false, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(3600).await;
        s.logs.push(log("while off"));
        sleep(3600).await;
        assert!(s.exporter.calls().is_empty(), "{:?}", s.exporter.calls());
        assert!(!s.logs.is_capturing());
        assert!(s.logs.drain().is_empty());
        assert_eq!(
            s.sources.collections.load(Ordering::SeqCst),
            0,
            "sources not read"
        );
        assert!(s.store.get().is_none());
        assert!(!s.handle.status().enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn on_registers_once_uploads_at_once_and_every_interval_and_stores_the_identity() {
        let s = start(ID, true, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(1).await;
        assert_eq!(s.exporter.registrations().len(), 1);
        assert_eq!(
            s.exporter.batches(ID).len(),
            1,
            "first upload right after registration"
        );
        let req = &s.exporter.registrations()[0];
        assert_eq!(req.installation_id, ID);
        assert_eq!(
            req.orgs,
            [OrgMapping {
                org: "org-a".into(),
                customer: "cust-1".into()
            }]
        );
        let stored = s.store.get().expect("the identity is stored");
        assert_eq!(stored.installation_id, ID);
        assert!(stored.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(s.logs.is_capturing());
        s.logs.push(log("disk almost full"));
        sleep(INTERVAL.as_secs() * 2).await;
        let batches = s.exporter.batches(ID);
        assert_eq!(values(&batches), [1, 2, 3]);
        assert_eq!(
            batches[1].logs,
            [log("disk almost full")].map(|mut l| {
                l.time = batches[1].logs[0].time;
                l
            })
        );
        assert!(batches.iter().all(|b| b.clusters
            == [ClusterRef {
                uuid: "c-1".into(),
                org: "org-a".into()
            }]));
        let calls = s.exporter.calls();
        assert_eq!(count(&s.exporter, "register"), 1, "{calls:?}");
        let gaps: Vec<Duration> = calls.windows(2).skip(1).map(|w| w[1].at - w[0].at).collect();
        assert_eq!(gaps, [INTERVAL, INTERVAL], "uploads every interval");
        let status = s.handle.status();
        assert!(status.enabled && status.registered, "{status:?}");
        assert_eq!((status.registrations, status.uploads), (1, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn off_again_stops_all_calls_and_on_again_reuses_the_certificate() {
        let s = start(ID, true, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(1).await;
        s.enabled.send(false).expect("send");
        sleep(1).await;
        let calls = s.exporter.calls().len();
        assert!(!s.logs.is_capturing());
        s.logs.push(log("while off"));
        sleep(3600).await;
        assert_eq!(s.exporter.calls().len(), calls, "no call while off");
        assert!(!s.handle.status().enabled);
        s.enabled.send(true).expect("send");
        sleep(1).await;
        assert_eq!(s.exporter.registrations().len(), 1, "no second registration");
        let batches = s.exporter.batches(ID);
        assert_eq!(batches.len(), 2, "an upload right after enabling again");
        assert!(
            batches[1].logs.is_empty(),
            "nothing captured while off: {:?}",
            batches[1].logs
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stored_identity_is_used_without_registering() {
        let exporter = MemoryExporter::new();
        let identity = conformance::register(&exporter, ID).await;
        let s = start(ID, true, exporter, MemoryCredentialStore::with(identity));
        sleep(1).await;
        assert_eq!(count(&s.exporter, "register"), 1, "only the one before the start");
        assert_eq!(s.exporter.batches(ID).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_certificate_is_replaced_and_the_batch_retried() {
        let s = start(ID, true, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(1).await;
        let first = s.store.get().expect("stored");
        s.exporter.revoke(ID);
        sleep(INTERVAL.as_secs()).await;
        let ops: Vec<(&str, bool)> = s
            .exporter
            .calls()
            .iter()
            .map(|c| (c.operation, c.result.is_ok()))
            .collect();
        assert_eq!(
            ops,
            [
                ("register", true),
                ("export", true),
                ("export", false),
                ("register", true),
                ("export", true)
            ]
        );
        assert_eq!(values(&s.exporter.batches(ID)), [1, 2], "the batch was retried");
        let second = s.store.get().expect("stored");
        assert_ne!(first.cert_pem, second.cert_pem, "the new certificate is stored");
        assert_ne!(first.key_pem, second.key_pem, "with a new key");
    }

    #[tokio::test(start_paused = true)]
    async fn down_backs_off_with_growing_delays_and_keeps_only_the_newest_batches() {
        let s = start(ID, true, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(1).await;
        s.exporter.set_down(true);
        sleep(600).await;
        let failed: Vec<tokio::time::Instant> = s
            .exporter
            .calls()
            .iter()
            .filter(|c| c.result.is_err())
            .map(|c| c.at)
            .collect();
        assert!(failed.len() >= 8, "{} attempts in 10 minutes", failed.len());
        for (i, w) in failed.windows(2).enumerate() {
            let gap = (w[1] - w[0]).as_secs_f64();
            let base = f64::from(1u32 << i).min(300.0);
            assert!(
                (0.8 * base - 0.01..=1.2 * base + 0.01).contains(&gap),
                "delay {i} is {gap:.2} s, not 1 s doubled {i} times ±20 %"
            );
        }
        let status = s.handle.status();
        let collections = s.sources.collections.load(Ordering::SeqCst);
        assert_eq!(status.pending_batches, 3, "{status:?}");
        assert_eq!(
            status.dropped_batches,
            collections - 1 - 3,
            "all but the first upload and the 3 queued dropped: {status:?}"
        );
        assert!(status.last_error.is_some());
        s.exporter.set_down(false);
        sleep(400).await;
        let arrived = values(&s.exporter.batches(ID));
        let collections = s.sources.collections.load(Ordering::SeqCst);
        let status = s.handle.status();
        assert_eq!(status.pending_batches, 0, "{status:?}");
        assert_eq!(
            arrived.len() as u64 + status.dropped_batches,
            collections,
            "every batch arrived or was counted as dropped: {arrived:?} {status:?}"
        );
        assert_eq!(arrived[0], 1);
        let after: &[u64] = &arrived[1..];
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1) && after.last() == Some(&collections),
            "the newest batches arrived, in order: {arrived:?}"
        );
        assert!(after[0] > 2, "the oldest were dropped: {arrived:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn renews_at_two_thirds_of_the_lifetime() {
        let exporter = MemoryExporter::new().with_cert_lifetime(Duration::from_secs(30 * 60));
        let s = start(ID, true, exporter, MemoryCredentialStore::default());
        sleep(1).await;
        let first = s.store.get().expect("stored");
        sleep(1190 - 1).await;
        assert_eq!(s.exporter.registrations().len(), 1, "not renewed before 2/3");
        sleep(20).await;
        assert_eq!(s.exporter.registrations().len(), 2, "renewed at 2/3 (20 min)");
        let second = s.store.get().expect("stored");
        assert_ne!(first.cert_pem, second.cert_pem);
        assert!(
            s.exporter.calls().iter().all(|c| c.result.is_ok()),
            "renewal happened before anything failed: {:?}",
            s.exporter.calls()
        );
        assert_eq!(s.handle.status().registrations, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_registration_needs_an_operator_and_is_retried_every_five_minutes() {
        let s = start(
            "not-a-uuid",
            true,
            MemoryExporter::new(),
            MemoryCredentialStore::default(),
        );
        sleep(1).await;
        let status = s.handle.status();
        assert!(status.needs_operator && !status.registered, "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("not a UUID")),
            "{status:?}"
        );
        sleep(230).await;
        assert_eq!(count(&s.exporter, "register"), 1, "no retry before 4 minutes");
        sleep(140).await;
        assert_eq!(count(&s.exporter, "register"), 2, "retried after about 5 minutes");
        assert_eq!(count(&s.exporter, "export"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_or_dropping_the_handle_ends_the_channel_and_the_capture() {
        let s = start(ID, true, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(1).await;
        assert!(s.logs.is_capturing());
        s.handle.stop().await;
        assert!(!s.logs.is_capturing(), "capture off once stopped");
        let calls = s.exporter.calls().len();
        sleep(3600).await;
        assert_eq!(s.exporter.calls().len(), calls);

        let t = start(ID, true, MemoryExporter::new(), MemoryCredentialStore::default());
        sleep(1).await;
        drop(t.handle);
        sleep(1).await;
        assert!(!t.logs.is_capturing(), "capture off once dropped");
        let calls = t.exporter.calls().len();
        sleep(3600).await;
        assert_eq!(t.exporter.calls().len(), calls);
    }

    /// The times of the register calls, and the gaps between them in seconds.
    fn registration_gaps(exporter: &MemoryExporter) -> Vec<f64> {
        let at: Vec<tokio::time::Instant> = exporter
            .calls()
            .iter()
            .filter(|c| c.operation == "register")
            .map(|c| c.at)
            .collect();
        at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_already_expired_certificate_is_a_failed_registration_that_backs_off() {
        let exporter = MemoryExporter::new().with_latency(Duration::from_millis(100));
        exporter.set_issue_expired(true);
        let s = start(ID, true, exporter, MemoryCredentialStore::default());
        sleep(60).await;
        let registers = count(&s.exporter, "register");
        assert!(
            (2..=8).contains(&registers),
            "{registers} registrations in a minute with an expired certificate each time"
        );
        let gaps = registration_gaps(&s.exporter);
        assert!(
            gaps.iter()
                .all(|g| *g >= MIN_REGISTRATION_GAP.as_secs_f64() - 0.01),
            "registrations closer than the minimum gap: {gaps:?}"
        );
        assert!(
            gaps.windows(2).skip(2).all(|w| w[1] > w[0]),
            "delays grow: {gaps:?}"
        );
        assert_eq!(
            count(&s.exporter, "export"),
            0,
            "no upload with an expired certificate"
        );
        assert!(s.store.get().is_none(), "an expired certificate is not stored");
        let status = s.handle.status();
        assert!(!status.registered && status.registrations == 0, "{status:?}");
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("expired")),
            "{status:?}"
        );
        // The service's clock is right again: the next attempt registers and uploads.
        s.exporter.set_issue_expired(false);
        sleep(400).await;
        let status = s.handle.status();
        assert!(status.registered && status.uploads > 0, "{status:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_certificate_due_for_renewal_at_once_is_renewed_no_more_often_than_the_minimum_gap() {
        // Valid for less than a second (wall clock): renewal is due almost at once each time.
        let exporter = MemoryExporter::new()
            .with_cert_lifetime(Duration::from_secs(1))
            .with_latency(Duration::from_millis(100));
        let s = start(ID, true, exporter, MemoryCredentialStore::default());
        sleep(60).await;
        let registers = count(&s.exporter, "register");
        let most = (60 / MIN_REGISTRATION_GAP.as_secs() + 1) as usize;
        assert!(
            registers <= most,
            "{registers} registrations in a minute, more than one per {MIN_REGISTRATION_GAP:?}"
        );
        let gaps = registration_gaps(&s.exporter);
        assert!(
            gaps.iter()
                .all(|g| *g >= MIN_REGISTRATION_GAP.as_secs_f64() - 0.01),
            "{gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn uploads_always_revoked_back_off_registering_again_until_an_upload_succeeds() {
        let exporter = MemoryExporter::new().with_latency(Duration::from_millis(1));
        exporter.set_revoke_uploads(true);
        let s = start(ID, true, exporter, MemoryCredentialStore::default());
        sleep(600).await;
        let registers = count(&s.exporter, "register");
        assert!(
            (5..=14).contains(&registers),
            "{registers} registrations in 10 minutes of revoked uploads"
        );
        let gaps = registration_gaps(&s.exporter);
        let last = *gaps.last().expect("gaps");
        assert!(last >= 100.0, "the delay grew to minutes: {gaps:?}");
        assert!(
            gaps.iter().all(|g| *g <= 1.2 * 300.0 + 0.01),
            "at most 5 minutes ±20 %: {gaps:?}"
        );
        // The service accepts uploads again: the next registration is followed by uploads.
        s.exporter.set_revoke_uploads(false);
        sleep(400).await;
        let status = s.handle.status();
        assert!(status.uploads > 0, "{status:?}");
        // A successful upload reset the back-off: a new revocation is handled at once, the one
        // after it a few seconds later, not minutes.
        let before = count(&s.exporter, "register");
        s.exporter.set_revoke_uploads(true);
        sleep(INTERVAL.as_secs() + 15).await;
        let gaps = registration_gaps(&s.exporter);
        assert!(
            count(&s.exporter, "register") >= before + 2,
            "registered again soon after the reset: {gaps:?}"
        );
    }
}
