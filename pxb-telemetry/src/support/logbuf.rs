//! The log capture of the support channel: a bounded ring of redacted [`LogRecord`]s fed by a
//! `tracing_subscriber` [`Layer`] ([`CaptureLayer`]) that [`crate::logs::init`] always installs.
//! While the channel is off the layer returns after one relaxed atomic load.
//!
//! Only pxb's own messages are kept as written. A library formats whatever it handles into its
//! messages (kube-client logs at WARN the whole API answer it cannot parse: an object with its
//! names, namespace and data), so a record of another target keeps its level, target and field
//! names only: its message is [`WITHHELD_MESSAGE`] and every field value is withheld.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use super::LogRecord;

/// A function applied to each formatted log line before it is written (and to each captured
/// record), e.g. one that removes credentials (`pxb_core::redact::redact`).
pub type Redactor = for<'a> fn(&'a str) -> std::borrow::Cow<'a, str>;

/// The longest message kept (bytes, cut at a character boundary; longer ones end with `…`).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// How many records the process-wide buffer ([`LogBuffer::global`]) keeps.
const GLOBAL_CAPACITY: usize = 1000;

/// What a captured record of another target than pxb's own says instead of its message.
pub const WITHHELD_MESSAGE: &str = "[message withheld]";

/// Whether `target` is pxb's own: `pxb`, `pxb_*`, `pxb::*`.
fn is_own(target: &str) -> bool {
    target == "pxb" || target.starts_with("pxb_") || target.starts_with("pxb::")
}

/// Whether a record at `level` from `target` is captured: WARN and ERROR from any target, INFO
/// from pxb's own targets (`pxb`, `pxb_*`, `pxb::*`). A record of another target is kept
/// without its message and field values ([`WITHHELD_MESSAGE`]).
pub fn is_captured(level: &Level, target: &str) -> bool {
    *level <= Level::WARN || (*level == Level::INFO && is_own(target))
}

/// A bounded ring of captured log records. When full, a new record replaces the oldest, which
/// is counted ([`LogBuffer::dropped`]). Captures only while [`LogBuffer::set_capturing`] is on.
#[derive(Debug)]
pub struct LogBuffer {
    capturing: AtomicBool,
    capacity: usize,
    records: Mutex<VecDeque<LogRecord>>,
    dropped: AtomicU64,
}

impl LogBuffer {
    /// An empty buffer keeping at most `capacity` records (at least one), not capturing.
    pub fn new(capacity: usize) -> LogBuffer {
        LogBuffer {
            capturing: AtomicBool::new(false),
            capacity: capacity.max(1),
            records: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
        }
    }

    /// The process-wide buffer (1000 records) that [`crate::logs::init`] feeds and that a
    /// [`SupportChannel`](super::SupportChannel) drains unless given another.
    pub fn global() -> &'static Arc<LogBuffer> {
        static GLOBAL: OnceLock<Arc<LogBuffer>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(LogBuffer::new(GLOBAL_CAPACITY)))
    }

    /// A layer feeding this buffer, passing each message through `redact` (the process' log
    /// redaction) before it is kept.
    pub fn layer(self: &Arc<Self>, redact: Option<Redactor>) -> CaptureLayer {
        CaptureLayer {
            buffer: Arc::clone(self),
            redact,
        }
    }

    /// Starts or stops capturing. Stopping also empties the buffer.
    pub fn set_capturing(&self, on: bool) {
        self.capturing.store(on, Ordering::Relaxed);
        if !on {
            self.lock().clear();
        }
    }

    /// Whether the buffer captures now.
    pub fn is_capturing(&self) -> bool {
        self.capturing.load(Ordering::Relaxed)
    }

    /// Adds a record (already redacted) when capturing; replaces the oldest when full.
    pub fn push(&self, record: LogRecord) {
        if !self.is_capturing() {
            return;
        }
        let mut records = self.lock();
        if records.len() >= self.capacity {
            records.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        records.push_back(record);
    }

    /// Takes every record kept, oldest first.
    pub fn drain(&self) -> Vec<LogRecord> {
        Vec::from(std::mem::take(&mut *self.lock()))
    }

    /// How many records were dropped because the buffer was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LogRecord>> {
        // A panic while holding the lock leaves a valid deque; keep going.
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `tracing_subscriber` layer feeding a [`LogBuffer`] ([`LogBuffer::layer`]). It never
/// filters events for other layers.
pub struct CaptureLayer {
    buffer: Arc<LogBuffer>,
    redact: Option<Redactor>,
}

impl fmt::Debug for CaptureLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureLayer")
            .field("capturing", &self.buffer.is_capturing())
            .field("redacted", &self.redact.is_some())
            .finish()
    }
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !self.buffer.is_capturing() {
            return;
        }
        let meta = event.metadata();
        if !is_captured(meta.level(), meta.target()) {
            return;
        }
        let own = is_own(meta.target());
        let mut visitor = Formatter {
            own,
            ..Formatter::default()
        };
        event.record(&mut visitor);
        let mut message = if own {
            visitor.message
        } else {
            WITHHELD_MESSAGE.to_owned()
        };
        if !visitor.fields.is_empty() {
            if !message.is_empty() {
                message.push(' ');
            }
            message.push_str(&visitor.fields);
        }
        if let Some(redact) = self.redact {
            message = redact(&message).into_owned();
        }
        truncate(&mut message);
        self.buffer.push(LogRecord {
            time: SystemTime::now(),
            level: *meta.level(),
            target: meta.target().to_owned(),
            message,
        });
    }
}

/// Cuts `message` to [`MAX_MESSAGE_BYTES`] at a character boundary.
fn truncate(message: &mut String) {
    if message.len() > MAX_MESSAGE_BYTES {
        let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
}

/// The event fields whose values are sent: counts, codes and states, never names. Any other
/// field is sent as `name=…` (its name only): cluster, location, schedule and backup names,
/// namespaces, paths and error texts stay home.
pub const SENT_FIELDS: [&str; 10] = [
    "status",
    "code",
    "elapsed_ms",
    "enabled",
    "phase",
    "result",
    "kind",
    "attempt",
    "count",
    "org",
];

/// Formats an event: its `message`, and its other fields as `name=value` (strings quoted as
/// `Debug` quotes them, like the text log lines) for [`SENT_FIELDS`], `name=…` for the others.
/// For an event of another target than pxb's own (`own` false) the message is not read and
/// every field is `name=…`.
#[derive(Default)]
struct Formatter {
    own: bool,
    message: String,
    fields: String,
}

impl Visit for Formatter {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            if self.own {
                let _ = write!(self.message, "{value:?}");
            }
        } else {
            if !self.fields.is_empty() {
                self.fields.push(' ');
            }
            if self.own && SENT_FIELDS.contains(&field.name()) {
                let _ = write!(self.fields, "{}={value:?}", field.name());
            } else {
                let _ = write!(self.fields, "{}=…", field.name());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    fn redact(line: &str) -> Cow<'_, str> {
        Cow::Owned(line.replace("s3cr3t", "[REDACTED]"))
    }

    fn with_layer(buffer: &Arc<LogBuffer>, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::registry().with(buffer.layer(Some(redact)));
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn captures_warn_and_pxb_info_redacted() {
        let buffer = Arc::new(LogBuffer::new(10));
        buffer.set_capturing(true);
        with_layer(&buffer, || {
            tracing::warn!(target: "hyper::proto", "connection reset");
            tracing::info!(target: "hyper::proto", "library chatter");
            tracing::info!(target: "pxb_daemon::server", org = "a", "token s3cr3t accepted");
            tracing::info!(target: "pxb", "cli info");
            tracing::info!(target: "pxbfoo", "not ours");
            tracing::debug!(target: "pxb_daemon::server", "debug is not captured");
            tracing::error!(target: "pxb_core", count = 3, "failed");
            tracing::warn!(target: "pxb_daemon::server", backup = "tenant-db-nightly", location = "acme-vault", code = 503, "retention cannot delete a backup");
        });
        let got: Vec<(Level, String, String)> = buffer
            .drain()
            .into_iter()
            .map(|r| (r.level, r.target, r.message))
            .collect();
        assert_eq!(
            got,
            vec![
                (Level::WARN, "hyper::proto".into(), WITHHELD_MESSAGE.into()),
                (
                    Level::INFO,
                    "pxb_daemon::server".into(),
                    "token [REDACTED] accepted org=\"a\"".into()
                ),
                (Level::INFO, "pxb".into(), "cli info".into()),
                (Level::ERROR, "pxb_core".into(), "failed count=3".into()),
                (
                    Level::WARN,
                    "pxb_daemon::server".into(),
                    "retention cannot delete a backup backup=… location=… code=503".into()
                ),
            ]
        );
        assert!(buffer.drain().is_empty(), "drain takes the records");
    }

    #[test]
    fn a_librarys_message_and_field_values_are_withheld() {
        let buffer = Arc::new(LogBuffer::new(10));
        buffer.set_capturing(true);
        // As kube-client logs an API answer it cannot parse: the whole object, names and data.
        let body = r#"{"kind":"ConfigMap","metadata":{"name":"tenant-orders","namespace":"tenant-shop"},"data":{"k":"v"}}"#;
        with_layer(&buffer, || {
            tracing::warn!(target: "kube_client::client", "{}, {:?}", body, "Invalid padding");
            tracing::error!(target: "kube_runtime::watcher", status = 403, code = 403, object = "tenant-orders", "watcher error: configmaps \"tenant-orders\" is forbidden in namespace \"tenant-shop\"");
            tracing::warn!(target: "pxb_daemon::server", code = 403, "cannot watch");
        });
        let got: Vec<(Level, String, String)> = buffer
            .drain()
            .into_iter()
            .map(|r| (r.level, r.target, r.message))
            .collect();
        assert_eq!(
            got,
            vec![
                (Level::WARN, "kube_client::client".into(), WITHHELD_MESSAGE.into()),
                (
                    Level::ERROR,
                    "kube_runtime::watcher".into(),
                    format!("{WITHHELD_MESSAGE} status=… code=… object=…")
                ),
                (
                    Level::WARN,
                    "pxb_daemon::server".into(),
                    "cannot watch code=403".into()
                ),
            ]
        );
        for (_, _, message) in &got {
            assert!(!message.contains("tenant"), "{message}");
        }
    }

    #[test]
    fn off_keeps_nothing() {
        let buffer = Arc::new(LogBuffer::new(10));
        with_layer(&buffer, || tracing::error!(target: "pxb", "while off"));
        assert!(buffer.drain().is_empty());
        buffer.set_capturing(true);
        with_layer(&buffer, || tracing::error!(target: "pxb", "while on"));
        buffer.set_capturing(false);
        assert!(buffer.drain().is_empty(), "turning off empties the buffer");
    }

    #[test]
    fn a_full_ring_drops_the_oldest_and_counts() {
        let buffer = Arc::new(LogBuffer::new(3));
        buffer.set_capturing(true);
        with_layer(&buffer, || {
            for i in 0..5 {
                tracing::warn!(target: "pxb", "record {i}");
            }
        });
        let messages: Vec<String> = buffer.drain().into_iter().map(|r| r.message).collect();
        assert_eq!(messages, ["record 2", "record 3", "record 4"]);
        assert_eq!(buffer.dropped(), 2);
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let buffer = Arc::new(LogBuffer::new(3));
        buffer.set_capturing(true);
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        with_layer(&buffer, || tracing::warn!(target: "pxb", "{long}"));
        let message = buffer.drain().remove(0).message;
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with("é…"), "cut at a boundary");
    }
}
