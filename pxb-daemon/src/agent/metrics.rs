//! The agent's metrics that live across scrapes: counters and histograms of what it has done,
//! and what it tracks to answer a scrape (each location's validation state, the heartbeats of
//! running operations). [`api`](super::api) registers clones of these (the families and
//! counters share their values through an `Arc`) in the registry it builds at each scrape.
//!
//! Series (see [`AgentMetrics::register`]):
//!
//! - `pxb_agent_location_validation{location, phase}` (gauge): 1 for the location's current
//!   validation phase, 0 for the other phases (`Pending`, `Valid`, `Invalid`), for every
//!   `BackupLocation` the agent reconciles; a deleted location's series go.
//! - `pxb_agent_location_last_validated_timestamp_seconds{location}` (gauge): when the location
//!   was last validated (Unix seconds), once it has been.
//! - `pxb_agent_backup_duration_seconds{result}`, `pxb_agent_restore_duration_seconds{result}`
//!   (histograms, 1 s to about 4.5 h): how long the backups and restores this agent ran took, by
//!   final phase (`Success`, `PartialSuccess`, `Failed`); a spec refused before running is not
//!   observed.
//! - `pxb_agent_backup_read_bytes_total`, `pxb_agent_backup_stored_bytes_total`,
//!   `pxb_agent_backup_deduplicated_bytes_total` (counters): per finished backup, the bytes read
//!   (volume data and resource objects), the bytes uploaded to the location, and the bytes read
//!   that did not have to be uploaded (read − stored: content the location already had, and
//!   compression; the engine does not report the two apart).
//! - `pxb_agent_operations{kind, phase}` (gauge): backups and restores this agent is running
//!   (`phase="InProgress"`; finished ones are counted by the duration histograms), both kinds
//!   always present.
//! - `pxb_agent_heartbeat_age_seconds{kind}` (gauge): for each kind of operation running
//!   (`backup`, `restore`, `sync`, `verify`), the seconds since the agent last wrote a heartbeat
//!   into the status of the one waiting longest, on the agent's clock. Absent for a kind with
//!   nothing running: a 0 would read as a fresh heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pxb_telemetry::prometheus_client::metrics::counter::Counter;
use pxb_telemetry::prometheus_client::metrics::family::Family;
use pxb_telemetry::prometheus_client::metrics::gauge::Gauge;
use pxb_telemetry::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use pxb_telemetry::prometheus_client::registry::Registry;

use kube::ResourceExt as _;
use kube::runtime::reflector::Store;
use pxb_core::Clock;

use crate::crd::{ApplicationBackupPhase, ApplicationRestorePhase, BackupLocation, LocationValidationPhase};

/// The final phases of backups and restores (the `result` of the duration histograms).
pub(crate) const RESULTS: [&str; 3] = ["Success", "PartialSuccess", "Failed"];

/// The kinds of operations in `pxb_agent_operations`.
pub(crate) const OPERATION_KINDS: [&str; 2] = ["backup", "restore"];

type OneLabel = [(&'static str, String); 1];
type TwoLabels = [(&'static str, String); 2];
type Durations = Family<OneLabel, Histogram, fn() -> Histogram>;

/// Duration buckets: 1 s, 2 s, 4 s, … 16384 s (about 4.5 hours).
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// What a location's validation gauge says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocationState {
    phase: LocationValidationPhase,
    /// Unix seconds of the last validation.
    validated: Option<u64>,
}

/// The agent's metrics that outlive a scrape (see the [module](self)).
pub(crate) struct AgentMetrics {
    clock: Arc<dyn Clock>,
    backup_duration: Durations,
    restore_duration: Durations,
    read_bytes: Counter,
    stored_bytes: Counter,
    deduplicated_bytes: Counter,
    locations: Mutex<BTreeMap<String, LocationState>>,
    /// The location controller's cache: a location it no longer holds was deleted (the
    /// controller does not reconcile deleted objects).
    location_store: std::sync::OnceLock<Store<BackupLocation>>,
    /// Running operations by (kind, name): when their last heartbeat was written.
    heartbeats: Mutex<HashMap<(&'static str, String), SystemTime>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

/// An operation's entry in the heartbeat table; dropping it (the operation finished, or its
/// task was aborted) removes the entry.
#[must_use = "the operation counts as running while this lives"]
pub(crate) struct Running {
    metrics: Arc<AgentMetrics>,
    key: (&'static str, String),
}

impl Running {
    /// Records that the operation's heartbeat was just written.
    pub(crate) fn beat(&self) {
        let now = self.metrics.clock.now();
        self.metrics.heartbeats().insert(self.key.clone(), now);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.metrics.heartbeats().remove(&self.key);
    }
}

impl AgentMetrics {
    /// Metrics reading the time from `clock`, every result of the histograms present at zero.
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        let backup_duration: Durations = Family::new_with_constructor(duration_histogram);
        let restore_duration: Durations = Family::new_with_constructor(duration_histogram);
        for result in RESULTS {
            let _ = backup_duration.get_or_create(&[("result", result.to_owned())]);
            let _ = restore_duration.get_or_create(&[("result", result.to_owned())]);
        }
        Arc::new(Self {
            clock,
            backup_duration,
            restore_duration,
            read_bytes: Counter::default(),
            stored_bytes: Counter::default(),
            deduplicated_bytes: Counter::default(),
            locations: Mutex::new(BTreeMap::new()),
            location_store: std::sync::OnceLock::new(),
            heartbeats: Mutex::new(HashMap::new()),
        })
    }

    fn heartbeats(&self) -> std::sync::MutexGuard<'_, HashMap<(&'static str, String), SystemTime>> {
        self.heartbeats.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn locations(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocationState>> {
        self.locations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `location`'s validation state: its phase and when it was last validated (the
    /// RFC 3339 `lastChecked` of its status). A phase this agent does not know sets every
    /// phase's gauge to 0.
    pub(crate) fn location_validated(
        &self,
        location: &str,
        phase: &LocationValidationPhase,
        last_checked: Option<&str>,
    ) {
        let validated = last_checked
            .and_then(pxb_core::clock::parse_rfc3339)
            .map(pxb_core::clock::unix_secs);
        self.locations().insert(
            location.to_owned(),
            LocationState {
                phase: phase.clone(),
                validated,
            },
        );
    }

    /// Takes the location controller's cache: at each scrape, the locations it no longer holds
    /// are forgotten. (Only the first call counts; there is one location controller.)
    pub(crate) fn watch_locations(&self, store: Store<BackupLocation>) {
        let _ = self.location_store.set(store);
    }

    /// Forgets a location that no longer exists.
    pub(crate) fn location_deleted(&self, location: &str) {
        self.locations().remove(location);
    }

    /// Starts tracking the heartbeats of operation `name` of `kind` (`backup`, `restore`,
    /// `sync`, `verify`), counting its first heartbeat as written now.
    pub(crate) fn running(self: &Arc<Self>, kind: &'static str, name: &str) -> Running {
        let r = Running {
            metrics: self.clone(),
            key: (kind, name.to_owned()),
        };
        r.beat();
        r
    }

    /// Observes a finished backup that ran for `took`, ending in phase `result`.
    pub(crate) fn backup_finished(&self, result: &ApplicationBackupPhase, took: Duration) {
        self.backup_duration
            .get_or_create(&[("result", result_label(result.as_str()))])
            .observe(took.as_secs_f64());
    }

    /// Observes a finished restore that ran for `took`, ending in phase `result`.
    pub(crate) fn restore_finished(&self, result: &ApplicationRestorePhase, took: Duration) {
        self.restore_duration
            .get_or_create(&[("result", result_label(result.as_str()))])
            .observe(took.as_secs_f64());
    }

    /// Counts the bytes of a finished backup: `read` from volumes and the API, `stored` in the
    /// location.
    pub(crate) fn backup_bytes(&self, read: u64, stored: u64) {
        self.read_bytes.inc_by(read);
        self.stored_bytes.inc_by(stored);
        self.deduplicated_bytes.inc_by(read.saturating_sub(stored));
    }

    /// How long ago `started` was on the agent's clock (zero if the clock went back).
    pub(crate) fn since(&self, started: SystemTime) -> Duration {
        self.clock.now().duration_since(started).unwrap_or_default()
    }

    /// Registers the series of the [module](self) in `r`; `running` counts the backups and
    /// restores running now, by kind.
    pub(crate) fn register(&self, r: &mut Registry, running: &BTreeMap<&str, usize>) {
        let validation = Family::<TwoLabels, Gauge>::default();
        let validated = Family::<OneLabel, Gauge>::default();
        let mut locations = self.locations();
        if let Some(store) = self.location_store.get() {
            let present: std::collections::HashSet<String> =
                store.state().iter().map(|l| l.name_any()).collect();
            locations.retain(|name, _| present.contains(name));
        }
        for (name, state) in locations.iter() {
            for phase in LocationValidationPhase::KNOWN {
                validation
                    .get_or_create(&[("location", name.clone()), ("phase", phase.as_str().to_owned())])
                    .set(i64::from(state.phase == *phase));
            }
            if let Some(t) = state.validated {
                validated
                    .get_or_create(&[("location", name.clone())])
                    .set(i64::try_from(t).unwrap_or(i64::MAX));
            }
        }
        drop(locations);
        r.register(
            "pxb_agent_location_validation",
            "Validation phase of each BackupLocation the agent reconciles: 1 for the current phase",
            validation,
        );
        r.register(
            "pxb_agent_location_last_validated_timestamp_seconds",
            "When each BackupLocation was last validated, in Unix seconds",
            validated,
        );
        r.register(
            "pxb_agent_backup_duration_seconds",
            "Duration of the backups this agent ran, by final phase",
            self.backup_duration.clone(),
        );
        r.register(
            "pxb_agent_restore_duration_seconds",
            "Duration of the restores this agent ran, by final phase",
            self.restore_duration.clone(),
        );
        r.register(
            "pxb_agent_backup_read_bytes",
            "Bytes read by finished backups (volume data and resource objects)",
            self.read_bytes.clone(),
        );
        r.register(
            "pxb_agent_backup_stored_bytes",
            "Bytes finished backups uploaded to their locations",
            self.stored_bytes.clone(),
        );
        r.register(
            "pxb_agent_backup_deduplicated_bytes",
            "Bytes finished backups read but did not upload: content the location already had, and compression",
            self.deduplicated_bytes.clone(),
        );
        let operations = Family::<TwoLabels, Gauge>::default();
        for kind in OPERATION_KINDS {
            let n = running.get(kind).copied().unwrap_or(0);
            operations
                .get_or_create(&[("kind", kind.to_owned()), ("phase", "InProgress".to_owned())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        r.register(
            "pxb_agent_operations",
            "Backups and restores this agent is running, by kind and phase",
            operations,
        );
        let now = self.clock.now();
        let ages = Family::<OneLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let mut oldest: BTreeMap<&'static str, Duration> = BTreeMap::new();
        for ((kind, _), at) in self.heartbeats().iter() {
            let age = now.duration_since(*at).unwrap_or_default();
            let e = oldest.entry(*kind).or_default();
            *e = (*e).max(age);
        }
        for (kind, age) in oldest {
            ages.get_or_create(&[("kind", kind.to_owned())])
                .set(age.as_secs_f64());
        }
        r.register(
            "pxb_agent_heartbeat_age_seconds",
            "Seconds since the agent last wrote a heartbeat to the running operation of this kind waiting longest",
            ages,
        );
    }
}

/// A final phase as a label value: one of [`RESULTS`] (anything else is `Failed`).
fn result_label(result: &str) -> String {
    RESULTS
        .iter()
        .find(|r| **r == result)
        .copied()
        .unwrap_or("Failed")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn scrape(m: &AgentMetrics, running: &[(&str, usize)]) -> String {
        let mut r = Registry::default();
        m.register(&mut r, &running.iter().copied().collect());
        pxb_telemetry::metrics::encode(&r, None).body
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    /// The heartbeat age is the agent clock's time since the last heartbeat of the operation of
    /// a kind waiting longest, and goes when nothing of that kind runs; the operations gauge
    /// reports what it is given, both kinds always.
    #[test]
    fn heartbeat_ages_follow_the_clock_and_go_with_their_operations() {
        let clock = pxb_core::ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_767_262_200));
        let m = AgentMetrics::new(Arc::new(clock.clone()));
        let idle = scrape(&m, &[]);
        assert!(!idle.contains("pxb_agent_heartbeat_age_seconds{"), "{idle}");
        assert!(
            has(
                &idle,
                "pxb_agent_operations{kind=\"backup\",phase=\"InProgress\"} 0"
            ),
            "{idle}"
        );

        let b1 = m.running("backup", "b1");
        clock.advance(Duration::from_secs(30));
        let b2 = m.running("backup", "b2");
        let r1 = m.running("restore", "r1");
        clock.advance(Duration::from_secs(12));
        let busy = scrape(&m, &[("backup", 2), ("restore", 1)]);
        for line in [
            "pxb_agent_heartbeat_age_seconds{kind=\"backup\"} 42.0",
            "pxb_agent_heartbeat_age_seconds{kind=\"restore\"} 12.0",
            "pxb_agent_operations{kind=\"backup\",phase=\"InProgress\"} 2",
            "pxb_agent_operations{kind=\"restore\",phase=\"InProgress\"} 1",
        ] {
            assert!(has(&busy, line), "{line:?} not in:\n{busy}");
        }
        // A heartbeat written resets that operation's age; the oldest is now b2's.
        b1.beat();
        clock.advance(Duration::from_secs(3));
        let beaten = scrape(&m, &[("backup", 2), ("restore", 1)]);
        assert!(
            has(&beaten, "pxb_agent_heartbeat_age_seconds{kind=\"backup\"} 15.0"),
            "{beaten}"
        );
        drop((b1, b2));
        let done = scrape(&m, &[("restore", 1)]);
        assert!(!done.contains("{kind=\"backup\"} "), "{done}");
        assert!(
            has(&done, "pxb_agent_heartbeat_age_seconds{kind=\"restore\"} 15.0"),
            "{done}"
        );
        drop(r1);
        assert!(!scrape(&m, &[]).contains("pxb_agent_heartbeat_age_seconds{"));
    }

    /// A location's gauge is 1 for its phase and 0 for the others; its timestamp is the one of
    /// its status; a deleted location's series go.
    #[test]
    fn locations_report_their_validation_phase() {
        let m = AgentMetrics::new(Arc::new(pxb_core::SystemClock));
        m.location_validated("a", &LocationValidationPhase::Valid, Some("2026-01-01T10:10:00Z"));
        m.location_validated("b", &LocationValidationPhase::Pending, None);
        m.location_validated("c", &LocationValidationPhase::parse("Bogus"), None);
        let text = scrape(&m, &[]);
        for line in [
            "pxb_agent_location_validation{location=\"a\",phase=\"Valid\"} 1",
            "pxb_agent_location_validation{location=\"a\",phase=\"Invalid\"} 0",
            "pxb_agent_location_validation{location=\"a\",phase=\"Pending\"} 0",
            "pxb_agent_location_validation{location=\"b\",phase=\"Pending\"} 1",
            "pxb_agent_location_validation{location=\"c\",phase=\"Valid\"} 0",
            "pxb_agent_location_last_validated_timestamp_seconds{location=\"a\"} 1767262200",
        ] {
            assert!(has(&text, line), "{line:?} not in:\n{text}");
        }
        assert!(!text.contains("Bogus"), "{text}");
        assert!(
            !text.contains("pxb_agent_location_last_validated_timestamp_seconds{location=\"b\"}"),
            "{text}"
        );
        m.location_deleted("a");
        let text = scrape(&m, &[]);
        assert!(!text.contains("location=\"a\""), "{text}");
    }

    /// Durations go to the bucket of their result (an unknown phase counts as `Failed`); bytes
    /// add up, the deduplicated ones never below zero.
    #[test]
    fn durations_and_bytes_accumulate() {
        let m = AgentMetrics::new(Arc::new(pxb_core::SystemClock));
        let fresh = scrape(&m, &[]);
        for result in RESULTS {
            let line = format!("pxb_agent_backup_duration_seconds_count{{result=\"{result}\"}} 0");
            assert!(has(&fresh, &line), "{line:?} not in:\n{fresh}");
        }
        m.backup_finished(&ApplicationBackupPhase::Success, Duration::from_secs(3));
        m.backup_finished(
            &ApplicationBackupPhase::parse("Weird"),
            Duration::from_millis(500),
        );
        m.restore_finished(
            &ApplicationRestorePhase::PartialSuccess,
            Duration::from_secs(20_000),
        );
        m.backup_bytes(1000, 300);
        m.backup_bytes(10, 50);
        let text = scrape(&m, &[]);
        for line in [
            "pxb_agent_backup_duration_seconds_count{result=\"Success\"} 1",
            "pxb_agent_backup_duration_seconds_sum{result=\"Success\"} 3.0",
            "pxb_agent_backup_duration_seconds_bucket{result=\"Success\",le=\"2\"} 0",
            "pxb_agent_backup_duration_seconds_bucket{result=\"Success\",le=\"4\"} 1",
            "pxb_agent_backup_duration_seconds_count{result=\"Failed\"} 1",
            "pxb_agent_restore_duration_seconds_count{result=\"PartialSuccess\"} 1",
            "pxb_agent_restore_duration_seconds_bucket{result=\"PartialSuccess\",le=\"16384\"} 0",
            "pxb_agent_restore_duration_seconds_bucket{result=\"PartialSuccess\",le=\"+Inf\"} 1",
            "pxb_agent_backup_read_bytes_total 1010",
            "pxb_agent_backup_stored_bytes_total 350",
            "pxb_agent_backup_deduplicated_bytes_total 700",
        ] {
            assert!(has(&text, line), "{line:?} not in:\n{text}");
        }
    }
}
