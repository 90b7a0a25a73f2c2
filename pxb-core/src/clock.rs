//! Time: the clock seam (so leases, expiry and retention are testable without sleeping) and the
//! one place timestamps are formatted, parsed and converted (RFC 3339, epoch milliseconds).
//! Calendar work (schedules in IANA time zones) uses `jiff`, the one date/time crate of pxb's
//! own code.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of the current time.
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to: the clock seam's in-memory twin, for tests. Clones share
/// the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to` (which may be earlier: clocks do jump).
    pub fn set(&self, to: SystemTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let c = ManualClock::new(start);
        let shared = c.clone();
        assert_eq!(c.now(), start);
        shared.advance(Duration::from_secs(5));
        assert_eq!(c.now(), start + Duration::from_secs(5));
        c.set(start);
        assert_eq!(shared.now(), start);
        assert!(SystemClock.now() > start);
    }
}

/// `t` as Kubernetes writes timestamps: RFC 3339 in UTC with whole seconds
/// (`2026-01-01T10:10:00Z`). Times outside what RFC 3339 can write are clamped to its range.
pub fn rfc3339(t: SystemTime) -> String {
    let t = jiff::Timestamp::try_from(t).unwrap_or(if t < SystemTime::UNIX_EPOCH {
        jiff::Timestamp::MIN
    } else {
        jiff::Timestamp::MAX
    });
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 timestamp as Kubernetes and the API write them (any offset, optional
/// fractional seconds).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    s.parse::<jiff::Timestamp>().ok().map(SystemTime::from)
}

/// Milliseconds since the Unix epoch (negative before it), as the catalog keeps times.
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// The time `ms` milliseconds after the Unix epoch (before it when negative).
pub fn from_unix_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        SystemTime::UNIX_EPOCH + d
    } else {
        SystemTime::UNIX_EPOCH - d
    }
}

/// Whole seconds since the Unix epoch (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod rfc3339_tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_like_kubernetes() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_262_200_999);
        assert_eq!(super::rfc3339(t), "2026-01-01T10:10:00Z");
    }

    #[test]
    fn parses_what_it_formats_and_other_offsets() {
        let t = UNIX_EPOCH + Duration::from_secs(1_767_262_200);
        assert_eq!(super::parse_rfc3339(&super::rfc3339(t)), Some(t));
        assert_eq!(super::parse_rfc3339("2026-01-01T11:10:00+01:00"), Some(t));
        assert_eq!(
            super::parse_rfc3339("2026-01-01T10:10:00.250Z"),
            Some(t + Duration::from_millis(250))
        );
        assert_eq!(super::parse_rfc3339("yesterday"), None);
        assert_eq!(super::parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn epoch_milliseconds_round_trip_on_both_sides_of_the_epoch() {
        for ms in [0, 1, 1_767_262_200_999, -1_500] {
            assert_eq!(super::unix_ms(super::from_unix_ms(ms)), ms);
        }
        assert_eq!(super::unix_secs(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
