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

/// The system's time plus an offset that only grows when told to: for scenarios that run real
/// daemons (whose loops need time to pass) and jump ahead over hours. Clones share the offset.
#[derive(Debug, Clone, Default)]
pub struct SkewedClock {
    ahead: Arc<Mutex<Duration>>,
}

impl SkewedClock {
    /// The system's clock, not ahead yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by` (on top of the system's time passing).
    pub fn advance(&self, by: Duration) {
        *self.ahead.lock().unwrap_or_else(|e| e.into_inner()) += by;
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> SystemTime {
        SystemTime::now() + *self.ahead.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The clock seam's conformance suite: what every [`Clock`] does, whoever moves it.
#[cfg(any(test, feature = "conformance"))]
pub mod conformance {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::{Clock, from_unix_ms, parse_rfc3339, rfc3339, unix_ms};

    /// Checks `clock`, which nothing moves back while the suite runs: its time is one pxb can
    /// keep (epoch milliseconds and RFC 3339 round-trip it, to the millisecond and the second),
    /// it lies between 1970 and 9999, reads on one thread never go back, and eight threads can
    /// read it at once through an `Arc<dyn Clock>` (as the daemons share it). Panics with the
    /// property that failed.
    pub fn run_all(clock: Arc<dyn Clock>) {
        let now = clock.now();
        assert!(
            now >= SystemTime::UNIX_EPOCH,
            "the clock reads before 1970: {now:?}"
        );
        let ms = unix_ms(now);
        assert!(
            ms < 253_402_300_799_000,
            "the clock reads after 9999: {ms} ms since 1970"
        );
        let kept = from_unix_ms(ms);
        assert_eq!(
            unix_ms(kept),
            ms,
            "epoch milliseconds round-trip the clock's time"
        );
        let written = rfc3339(now);
        let read = parse_rfc3339(&written).expect("the clock's time as RFC 3339 parses back");
        assert_eq!(
            unix_ms(read) / 1000,
            ms.div_euclid(1000),
            "RFC 3339 keeps the clock's second ({written})"
        );
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || {
                    let mut last = clock.now();
                    for _ in 0..1000 {
                        let t = clock.now();
                        assert!(t >= last, "the clock went back: {last:?} then {t:?}");
                        last = t;
                    }
                    last
                })
            })
            .collect();
        for t in threads {
            let last = t.join().expect("a reading thread panicked");
            assert!(last >= now, "a thread read a time before the suite started");
        }
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

    #[test]
    fn every_clock_passes_the_suite() {
        conformance::run_all(Arc::new(SystemClock));
        conformance::run_all(Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000),
        )));
        conformance::run_all(Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH)));
        let skewed = SkewedClock::new();
        skewed.advance(Duration::from_secs(30 * 24 * 3600));
        conformance::run_all(Arc::new(skewed));
    }

    #[test]
    #[should_panic(expected = "before 1970")]
    fn the_suite_refuses_a_clock_before_the_epoch() {
        conformance::run_all(Arc::new(ManualClock::new(
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
        )));
    }
}

/// The first second RFC 3339 can write (`0000-01-01T00:00:00Z`), in seconds since the epoch.
const RFC3339_MIN_SECS: i64 = -62_167_219_200;

/// `t` as Kubernetes writes timestamps: RFC 3339 in UTC with whole seconds
/// (`2026-01-01T10:10:00Z`). Times before the year 0000 or after the last second the parser
/// takes (in the last days of 9999) are clamped to those, so the result always parses back
/// ([`parse_rfc3339`]).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = (unix_ms(t).div_euclid(1000)).clamp(RFC3339_MIN_SECS, jiff::Timestamp::MAX.as_second());
    jiff::Timestamp::from_second(secs)
        .unwrap_or(jiff::Timestamp::MAX)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Whether `s` has the shape of an RFC 3339 date-time (section 5.6: `T` or `t` between date
/// and time, seconds, an optional fraction of 1 to 9 digits, `Z`/`z` or a `±hh:mm` offset).
fn rfc3339_shape(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return false;
        }
        i += 1 + n;
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

/// Parses an RFC 3339 timestamp as Kubernetes and the API write them (any offset, optional
/// fractional seconds). Anything else is refused, including what other ISO 8601 readers take
/// (a space for `T`, no seconds, an hour-only offset, a time-zone annotation).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    if !rfc3339_shape(s) {
        return None;
    }
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
        assert_eq!(super::parse_rfc3339("2026-01-01t10:10:00z"), Some(t));
        assert_eq!(super::parse_rfc3339("yesterday"), None);
        assert_eq!(super::parse_rfc3339("2026-13-01T00:00:00Z"), None);
        // What ISO 8601 readers take and RFC 3339 does not.
        for other in [
            "2026-01-01 10:10:00Z",
            "2026-01-01T10:10Z",
            "2026-01-01T11:10:00+01",
            "2026-01-01T10:10:00Z[Europe/Berlin]",
            "2026-01-01T10:10:00",
            "+002026-01-01T10:10:00Z",
            "2026-01-01T10:10:00.Z",
            "2026-01-01T10:10:00.1234567890Z",
        ] {
            assert_eq!(super::parse_rfc3339(other), None, "{other}");
        }
    }

    #[test]
    fn times_outside_what_rfc3339_writes_are_clamped_and_parse_back() {
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert!(
            super::rfc3339(far).starts_with("9999-12-3"),
            "{}",
            super::rfc3339(far)
        );
        let early = UNIX_EPOCH - Duration::from_secs(70_000_000_000);
        assert_eq!(super::rfc3339(early), "0000-01-01T00:00:00Z");
        for t in [far, early] {
            assert!(super::parse_rfc3339(&super::rfc3339(t)).is_some());
        }
    }

    #[test]
    fn epoch_milliseconds_round_trip_on_both_sides_of_the_epoch() {
        for ms in [0, 1, 1_767_262_200_999, -1_500] {
            assert_eq!(super::unix_ms(super::from_unix_ms(ms)), ms);
        }
        assert_eq!(super::unix_secs(UNIX_EPOCH - Duration::from_secs(5)), 0);
    }
}
