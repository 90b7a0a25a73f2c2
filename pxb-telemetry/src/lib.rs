//! `pxb-telemetry`: what pxb tells its operators — the logs of every binary and the Prometheus
//! metrics of both daemons.
//!
//! # Overview
//!
//! Two small pieces, each the only place of its kind in the workspace:
//!
//! - **Logs** ([`logs`]): [`init`] (or [`init_from_env`]) is the one `tracing` subscriber setup
//!   that `pxb`, `pxb-agent` and `pxb-server` use. [`Settings`] holds the level filter
//!   (`PXB_LOG`, an `EnvFilter` directive, default `info`), the line format (`PXB_LOG_FORMAT`:
//!   `text`, the default, or `json`, one object per line) and an optional redaction hook applied
//!   to every formatted line before it reaches stderr. A bad `PXB_LOG` or `PXB_LOG_FORMAT` is an
//!   [`Error`], never a silent fallback: the binary prints it and exits non-zero, so a typo in a
//!   Deployment shows at once instead of as missing logs.
//! - **Metrics** ([`metrics`]): [`prometheus_client`] is re-exported, and [`metrics::encode`]
//!   turns a [`Registry`](prometheus_client::registry::Registry) into the exposition a scraper
//!   asked for: OpenMetrics 1.0 when its `Accept` header prefers it (Prometheus does), the
//!   Prometheus text format 0.0.4 otherwise (curl, `promtool check metrics`, which reads only
//!   that format). The daemons build a fresh registry from their state on each scrape, so a
//!   series exists exactly while the state it describes does.
//!
//! Beside them, [`support`] is the opt-in support channel to the provider's telemetry service
//! (off until switched on).
//!
//! # Quick start: logs and a scrape
//!
//! ```
//! use std::borrow::Cow;
//!
//! use pxb_telemetry::metrics::{self, PROMETHEUS_TEXT_CONTENT_TYPE};
//! use pxb_telemetry::prometheus_client::metrics::counter::Counter;
//! use pxb_telemetry::prometheus_client::registry::Registry;
//! use pxb_telemetry::{LogFormat, Settings};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Logs: `PXB_LOG` and `PXB_LOG_FORMAT` (`Settings::from_env` reads the process environment;
//! // here a fixed set of variables), with a secret removed from every line.
//! let vars = |name: &str| match name {
//!     "PXB_LOG" => Some("info,my_app=debug".to_owned()),
//!     "PXB_LOG_FORMAT" => Some("json".to_owned()),
//!     _ => None,
//! };
//! let settings = Settings::from_vars("info", vars)?
//!     .redact_with(|line| Cow::Owned(line.replace("hunter2", "<redacted>")));
//! assert_eq!(settings.format, LogFormat::Json);
//! pxb_telemetry::init(settings)?;
//! tracing::info!(password = "hunter2", "logged in"); // on stderr: ..."password":"<redacted>"...
//!
//! // A typo is an error naming the variable, never a silent default.
//! let typo = Settings::from_vars("info", |name| (name == "PXB_LOG_FORMAT").then(|| "yaml".to_owned()));
//! assert!(typo.unwrap_err().to_string().contains("PXB_LOG_FORMAT"));
//!
//! // Metrics: a registry built from the application's state, encoded for the scraper's `Accept`.
//! let mut registry = Registry::default();
//! let backups = Counter::<u64>::default();
//! registry.register("my_app_backups", "Backups taken", backups.clone());
//! backups.inc();
//! let curl = metrics::encode(&registry, None);
//! assert_eq!(curl.content_type, PROMETHEUS_TEXT_CONTENT_TYPE);
//! assert!(curl.body.contains("my_app_backups_total 1"));
//! let prometheus = metrics::encode(&registry, Some("application/openmetrics-text;version=1.0.0"));
//! assert!(prometheus.body.ends_with("# EOF\n"));
//! # Ok(())
//! # }
//! ```
//!
//! # Architecture Invariants
//!
//! - This crate depends on no other pxb crate (`tests/tests/architecture.rs`): the redaction of
//!   log lines is a function the caller passes ([`Settings::redact_with`]), not a dependency.
//! - No binary and no daemon writes exposition text or configures `tracing-subscriber` by hand;
//!   both go through here, so names, escaping and content types are the library's.

pub mod logs;
pub mod metrics;
pub mod support;

pub use logs::{Error, LogFormat, Redactor, Settings, init, init_from_env};
pub use prometheus_client;
