//! The logging setup of every pxb binary: a `tracing` subscriber writing to stderr, configured by
//! [`Settings`] (usually from the environment, [`Settings::from_env`]).
//!
//! | Variable         | Values                                     | Default |
//! |------------------|--------------------------------------------|---------|
//! | `PXB_LOG`        | an `EnvFilter` directive, e.g. `info,pxb_daemon=debug` | `info` (the CLI: `warn`) |
//! | `PXB_LOG_FORMAT` | `text` (human-readable) or `json` (one JSON object per line) | `text` |

use std::io::{IsTerminal as _, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;

use crate::support::LogBuffer;

/// The variable holding the level filter.
pub const LOG_VAR: &str = "PXB_LOG";
/// The variable holding the line format.
pub const FORMAT_VAR: &str = "PXB_LOG_FORMAT";
/// Added to every filter: the Kubernetes client logs the whole body of an answer it cannot parse
/// at WARN (a Secret's data, or whatever a hostile API server sends), so below ERROR its client
/// module stays silent. The error itself still reaches pxb's code, which reports it without the
/// body.
pub const QUIET_BODIES: &str = "kube_client::client=error";

pub use crate::support::Redactor;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `PXB_LOG_FORMAT` names no format.
    #[error("{FORMAT_VAR}={0:?} is not a log format (use \"text\" or \"json\")")]
    UnknownFormat(String),
    /// `PXB_LOG` is not a valid filter directive.
    #[error(
        "{LOG_VAR}={filter:?} is not a valid log filter ({reason}); e.g. PXB_LOG=info or PXB_LOG=warn,pxb_daemon=debug"
    )]
    BadFilter {
        /// The directive as given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global subscriber was set before (by an earlier [`init`]).
    #[error("logging is already set up in this process")]
    AlreadySet,
}

/// How each log line looks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s default format).
    #[default]
    Text,
    /// One JSON object per line, for log collectors: `timestamp`, `level`, `target`, `fields`
    /// (with `message`) and the current `span` and `spans`.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(Error::UnknownFormat(s.to_owned())),
        }
    }
}

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// An `EnvFilter` directive (`info`, `warn,pxb_daemon=debug`, `off`, …).
    pub filter: String,
    /// The line format.
    pub format: LogFormat,
    /// Applied to each formatted line before it is written.
    pub redact: Option<Redactor>,
    /// Colours in text lines (never in JSON). [`Settings::from_env`] turns them on only when
    /// stderr is a terminal, so files and log collectors get plain text.
    pub ansi: bool,
}

impl Default for Settings {
    /// `info`, text, no redaction, no colours.
    fn default() -> Self {
        Settings {
            filter: "info".into(),
            format: LogFormat::Text,
            redact: None,
            ansi: false,
        }
    }
}

impl Settings {
    /// The settings from `PXB_LOG` (else `default_filter`) and `PXB_LOG_FORMAT` (else `text`);
    /// an empty variable counts as unset.
    pub fn from_env(default_filter: &str) -> Result<Settings, Error> {
        let mut settings = Settings::from_vars(default_filter, |k| std::env::var(k).ok())?;
        settings.ansi = std::io::stderr().is_terminal();
        Ok(settings)
    }

    /// [`Settings::from_env`] over any source of variables (for tests); no colours.
    pub fn from_vars(default_filter: &str, var: impl Fn(&str) -> Option<String>) -> Result<Settings, Error> {
        let set = |k| var(k).filter(|v: &String| !v.trim().is_empty());
        let settings = Settings {
            filter: set(LOG_VAR).unwrap_or_else(|| default_filter.to_owned()),
            format: set(FORMAT_VAR)
                .map(|f| f.parse())
                .transpose()?
                .unwrap_or_default(),
            redact: None,
            ansi: false,
        };
        settings.env_filter()?;
        Ok(settings)
    }

    /// These settings, with `redact` applied to every line.
    pub fn redact_with(mut self, redact: Redactor) -> Settings {
        self.redact = Some(redact);
        self
    }

    /// The filter of `PXB_LOG`, plus [`QUIET_BODIES`] unless the filter names `kube_client`
    /// itself (an operator debugging the client asks for it on purpose).
    fn env_filter(&self) -> Result<EnvFilter, Error> {
        let bad = |e: &dyn std::fmt::Display| Error::BadFilter {
            filter: self.filter.clone(),
            reason: e.to_string(),
        };
        let filter = EnvFilter::try_new(&self.filter).map_err(|e| bad(&e))?;
        if self.filter.contains("kube_client") {
            return Ok(filter);
        }
        Ok(filter.add_directive(QUIET_BODIES.parse().map_err(|e| bad(&e))?))
    }

    /// The subscriber these settings describe, writing to `writer` (stderr for [`init`]); for
    /// tests, with `tracing::subscriber::with_default`. It also feeds the support channel's
    /// [`LogBuffer::global`] (with the same redaction), which keeps nothing and costs one atomic
    /// load per event while the channel is off.
    pub fn subscriber<W>(&self, writer: W) -> Result<Box<dyn tracing::Subscriber + Send + Sync>, Error>
    where
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        let filter = self.env_filter()?;
        let writer = RedactingMakeWriter {
            inner: writer,
            redact: self.redact,
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer);
        let capture = LogBuffer::global().layer(self.redact);
        Ok(match self.format {
            LogFormat::Text => Box::new(builder.with_ansi(self.ansi).finish().with(capture)),
            LogFormat::Json => Box::new(
                builder
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_ansi(false)
                    .finish()
                    .with(capture),
            ),
        })
    }
}

/// Sets up logging to stderr for the whole process as `settings` say.
pub fn init(settings: Settings) -> Result<(), Error> {
    let subscriber = settings.subscriber(std::io::stderr)?;
    tracing::subscriber::set_global_default(subscriber).map_err(|_| Error::AlreadySet)
}

/// [`init`] with [`Settings::from_env`]`("info")`.
pub fn init_from_env() -> Result<(), Error> {
    init(Settings::from_env("info")?)
}

/// Wraps each writer `inner` makes in a [`Redacting`] one.
struct RedactingMakeWriter<W> {
    inner: W,
    redact: Option<Redactor>,
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for RedactingMakeWriter<W> {
    type Writer = Redacting<W::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        Redacting {
            inner: self.inner.make_writer(),
            redact: self.redact,
        }
    }
}

/// A writer applying a [`Redactor`] to each buffer (the formatter writes one whole line at a
/// time) before it reaches `inner`.
struct Redacting<W> {
    inner: W,
    redact: Option<Redactor>,
}

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match (self.redact, std::str::from_utf8(buf)) {
            (Some(redact), Ok(text)) => self.inner.write_all(redact(text).as_bytes())?,
            _ => self.inner.write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The header carrying a request's id, read from the request and echoed in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a caller.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// The id of a request for its span and its `x-request-id` answer: the caller's, when it is a
/// short token (at most [`MAX_REQUEST_ID_LEN`] letters, digits, `-`, `_` or `.`, so it cannot
/// break a log line or stand for anything but an id), else 16 fresh random hex digits.
pub fn request_id(from_caller: Option<&str>) -> String {
    match from_caller {
        Some(id)
            if !id.is_empty()
                && id.len() <= MAX_REQUEST_ID_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            id.to_owned()
        }
        _ => format!("{:016x}", rand::random::<u64>()),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    #[test]
    fn only_short_plain_tokens_are_taken_as_request_ids() {
        for ok in ["a", "7f3c-41aa_b.2", &"x".repeat(MAX_REQUEST_ID_LEN)] {
            assert_eq!(request_id(Some(ok)), ok);
        }
        for bad in [
            "",
            &"x".repeat(MAX_REQUEST_ID_LEN + 1),
            "a b",
            "a\nlevel=ERROR",
            "Bearer abc",
            "id\"}",
            "ünï",
        ] {
            let id = request_id(Some(bad));
            assert_ne!(id, bad);
            assert!(
                id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
        }
        assert_ne!(request_id(None), request_id(None));
    }
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf-8")
        }
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    fn log_with(settings: &Settings) -> String {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = settings.subscriber(move || out.clone()).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("visit", cluster = "shoot-1");
            let _entered = span.enter();
            tracing::debug!("hidden at info");
            tracing::info!(location = "loc-a", "validated with token s3cr3t");
        });
        buffer.text()
    }

    #[test]
    fn defaults_are_info_and_text() {
        let s = Settings::from_vars("info", vars(&[])).expect("settings");
        assert_eq!((s.filter.as_str(), s.format), ("info", LogFormat::Text));
        let s = Settings::from_vars("warn", vars(&[(LOG_VAR, " "), (FORMAT_VAR, "")])).expect("settings");
        assert_eq!((s.filter.as_str(), s.format), ("warn", LogFormat::Text));
        let s =
            Settings::from_vars("info", vars(&[(LOG_VAR, "debug"), (FORMAT_VAR, "JSON")])).expect("settings");
        assert_eq!((s.filter.as_str(), s.format), ("debug", LogFormat::Json));
    }

    #[test]
    fn a_bad_format_or_filter_is_an_error_that_names_the_variable() {
        let e = Settings::from_vars("info", vars(&[(FORMAT_VAR, "xml")])).expect_err("xml");
        assert_eq!(
            e.to_string(),
            "PXB_LOG_FORMAT=\"xml\" is not a log format (use \"text\" or \"json\")"
        );
        let e = Settings::from_vars("info", vars(&[(LOG_VAR, "info,pxb=loud")])).expect_err("bad filter");
        assert!(
            e.to_string()
                .starts_with("PXB_LOG=\"info,pxb=loud\" is not a valid log filter"),
            "{e}"
        );
    }

    #[test]
    fn the_kube_clients_unparsed_bodies_stay_out_of_the_logs() {
        let emit = |settings: &Settings| {
            let buffer = Buffer::default();
            let out = buffer.clone();
            let subscriber = settings.subscriber(move || out.clone()).expect("subscriber");
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!(target: "kube_client::client", "{{\"data\":{{\"k\":\"tenant-secret\"}}}}, Error");
                tracing::error!(target: "kube_client::client", "client error kept");
                tracing::warn!(target: "kube_client::config", "overriding cluster URL");
            });
            buffer.text()
        };
        for filter in ["info", "debug", "warn,pxb_daemon=debug"] {
            let out = emit(&Settings::from_vars("info", vars(&[(LOG_VAR, filter)])).expect("settings"));
            assert!(!out.contains("tenant-secret"), "{filter}: {out}");
            assert!(out.contains("client error kept"), "{filter}: {out}");
            assert!(out.contains("overriding cluster URL"), "{filter}: {out}");
        }
        // Asked for by name, it is shown.
        let out = emit(
            &Settings::from_vars("info", vars(&[(LOG_VAR, "info,kube_client=debug")])).expect("settings"),
        );
        assert!(out.contains("tenant-secret"), "{out}");
    }

    #[test]
    fn text_lines_carry_the_span_fields_and_respect_the_level() {
        let out = log_with(&Settings::default());
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("visit{cluster=\"shoot-1\"}"), "{out}");
        assert!(
            out.contains("validated with token s3cr3t location=\"loc-a\""),
            "{out}"
        );
        assert!(!out.contains("hidden"), "{out}");
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let settings = Settings {
            format: LogFormat::Json,
            ..Settings::default()
        };
        let out = log_with(&settings);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON object per line"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "validated with token s3cr3t");
        assert_eq!(line["fields"]["location"], "loc-a");
        assert_eq!(line["span"]["name"], "visit");
        assert_eq!(line["span"]["cluster"], "shoot-1");
        assert!(!out.contains('\u{1b}'), "no ANSI escapes in JSON: {out}");
    }

    #[test]
    fn the_redactor_sees_every_line_in_both_formats() {
        fn redact(line: &str) -> Cow<'_, str> {
            Cow::Owned(line.replace("s3cr3t", "[REDACTED]"))
        }
        for format in [LogFormat::Text, LogFormat::Json] {
            let settings = Settings {
                format,
                ..Settings::default()
            }
            .redact_with(redact);
            let out = log_with(&settings);
            assert!(out.contains("token [REDACTED]"), "{format:?}: {out}");
            assert!(!out.contains("s3cr3t"), "{format:?}: {out}");
        }
    }

    #[test]
    fn the_subscriber_feeds_the_support_log_buffer_redacted_only_while_capturing() {
        fn redact(line: &str) -> Cow<'_, str> {
            Cow::Owned(line.replace("s3cr3t", "[REDACTED]"))
        }
        let settings = Settings::default().redact_with(redact);
        let subscriber = settings.subscriber(std::io::sink).expect("subscriber");
        let global = LogBuffer::global();
        let ours = |records: Vec<crate::support::LogRecord>| -> Vec<String> {
            records
                .into_iter()
                .map(|r| r.message)
                .filter(|m| m.contains("capture-probe-7c1"))
                .collect()
        };
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("capture-probe-7c1 while off");
            assert!(ours(global.drain()).is_empty(), "nothing kept while off");
            global.set_capturing(true);
            tracing::warn!(user = "u", "capture-probe-7c1 token s3cr3t");
            tracing::debug!("capture-probe-7c1 below the filter");
            let kept = ours(global.drain());
            global.set_capturing(false);
            assert_eq!(kept, ["capture-probe-7c1 token [REDACTED] user=…"]);
        });
    }
}
