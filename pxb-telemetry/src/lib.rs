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
