//! Schedule policies: when a schedule fires. Pure functions of time: the server's clock seam drives
//! them.
//!
//! A policy is an interval in minutes, or a wall-clock time daily, weekly on a day, or monthly on
//! a date, in an IANA time zone (the time-zone database is built in, so every machine computes the
//! same slots).
//!
//! Wall-clock rules: a time that a daylight-saving change skips fires at the first instant after
//! the gap; a time that a change repeats fires once, at its first occurrence. A monthly date
//! beyond the end of a month fires on that month's last day.
//!
//! This file depends on no catalog record: the catalog's `ScheduleRecord` holds a
//! [`SchedulePolicy`], and retention (in the parent module) reads backup records.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When a schedule fires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Every {
    /// Every `minutes`, counted from the schedule's creation.
    Interval {
        /// Minutes between slots (1 to 525600).
        minutes: u32,
    },
    /// Every day at `at` (`HH:MM`).
    Daily {
        /// `HH:MM`, 24-hour, in the policy's time zone.
        at: String,
    },
    /// Every week on `day` (`monday` … `sunday`, or `mon` … `sun`) at `at`.
    Weekly {
        /// The weekday.
        day: String,
        /// `HH:MM`.
        at: String,
    },
    /// Every month on `date` (1 to 31; the month's last day when it is shorter) at `at`.
    Monthly {
        /// Day of the month.
        date: u8,
        /// `HH:MM`.
        at: String,
    },
}

impl Default for Every {
    fn default() -> Self {
        Every::Daily { at: "02:00".into() }
    }
}

fn utc() -> String {
    "UTC".into()
}

/// A schedule policy: when, how many successful backups to keep, and in which time zone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulePolicy {
    /// When.
    #[serde(flatten)]
    pub every: Every,
    /// Successful backups kept per cluster (1 to 1000).
    pub retain: u32,
    /// IANA time zone (`Europe/Berlin`); `UTC` by default.
    #[serde(default = "utc")]
    pub time_zone: String,
}

/// The largest retain count.
pub const MAX_RETAIN: u32 = 1000;

fn parse_at(at: &str) -> Result<Time, String> {
    let bad = || format!("time {at:?} is not HH:MM (24-hour)");
    let (h, m) = at.split_once(':').ok_or_else(bad)?;
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

fn parse_day(day: &str) -> Result<Weekday, String> {
    let d = day.to_ascii_lowercase();
    let all = [
        ("monday", Weekday::Monday),
        ("tuesday", Weekday::Tuesday),
        ("wednesday", Weekday::Wednesday),
        ("thursday", Weekday::Thursday),
        ("friday", Weekday::Friday),
        ("saturday", Weekday::Saturday),
        ("sunday", Weekday::Sunday),
    ];
    all.iter()
        .find(|(name, _)| d == *name || (d.len() == 3 && name.starts_with(&d)))
        .map(|(_, w)| *w)
        .ok_or_else(|| format!("day {day:?} is not a weekday (monday … sunday)"))
}

fn ts(ms: i64) -> Result<Timestamp, String> {
    Timestamp::from_millisecond(ms).map_err(|e| format!("time {ms} ms is out of range: {e}"))
}

/// `date` at `at` in `tz`; gaps resolve forward, folds to the first occurrence.
fn instant(date: Date, at: Time, tz: &TimeZone) -> Result<Zoned, String> {
    date.to_datetime(at).to_zoned(tz.clone()).map_err(|e| {
        format!(
            "{date} {at} in {}: {e}",
            tz.iana_name().unwrap_or("the time zone")
        )
    })
}

impl SchedulePolicy {
    /// Checks the policy; the error says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.retain == 0 || self.retain > MAX_RETAIN {
            return Err(format!("retain must be 1 to {MAX_RETAIN}, not {}", self.retain));
        }
        self.zone()?;
        match &self.every {
            Every::Interval { minutes } => {
                if *minutes == 0 || *minutes > 525_600 {
                    return Err(format!("an interval must be 1 to 525600 minutes, not {minutes}"));
                }
            }
            Every::Daily { at } => {
                parse_at(at)?;
            }
            Every::Weekly { day, at } => {
                parse_day(day)?;
                parse_at(at)?;
            }
            Every::Monthly { date, at } => {
                if !(1..=31).contains(date) {
                    return Err(format!("a monthly date must be 1 to 31, not {date}"));
                }
                parse_at(at)?;
            }
        }
        Ok(())
    }

    fn zone(&self) -> Result<TimeZone, String> {
        TimeZone::get(&self.time_zone).map_err(|_| {
            format!(
                "time zone {:?} is not an IANA time zone (like UTC or Europe/Berlin)",
                self.time_zone
            )
        })
    }

    /// The first slot strictly after `after_ms` (ms since the epoch). Interval slots count from
    /// `anchor_ms` (the schedule's creation).
    pub fn next_after(&self, after_ms: i64, anchor_ms: i64) -> Result<i64, String> {
        self.check()?;
        let tz = self.zone()?;
        let after = ts(after_ms)?;
        let local = after.to_zoned(tz.clone());
        let candidate = |date: Date, at: Time| -> Result<Option<i64>, String> {
            let z = instant(date, at, &tz)?;
            let ms = z.timestamp().as_millisecond();
            Ok((ms > after_ms).then_some(ms))
        };
        let step = |d: Date| d.tomorrow().map_err(|e| e.to_string());
        match &self.every {
            Every::Interval { minutes } => {
                let every = i64::from(*minutes) * 60_000;
                if after_ms < anchor_ms {
                    return Ok(anchor_ms);
                }
                let k = (after_ms - anchor_ms) / every + 1;
                Ok(anchor_ms + k * every)
            }
            Every::Daily { at } => {
                let at = parse_at(at)?;
                let mut d = local.date().yesterday().map_err(|e| e.to_string())?;
                loop {
                    if let Some(ms) = candidate(d, at)? {
                        return Ok(ms);
                    }
                    d = step(d)?;
                }
            }
            Every::Weekly { day, at } => {
                let (day, at) = (parse_day(day)?, parse_at(at)?);
                let mut d = local.date().yesterday().map_err(|e| e.to_string())?;
                loop {
                    if d.weekday() == day
                        && let Some(ms) = candidate(d, at)?
                    {
                        return Ok(ms);
                    }
                    d = step(d)?;
                }
            }
            Every::Monthly { date, at } => {
                let at = parse_at(at)?;
                let mut first = local.date().first_of_month();
                for _ in 0..3 {
                    let day = (*date as i8).min(first.days_in_month());
                    let d = Date::new(first.year(), first.month(), day).map_err(|e| e.to_string())?;
                    if let Some(ms) = candidate(d, at)? {
                        return Ok(ms);
                    }
                    first = first.last_of_month().tomorrow().map_err(|e| e.to_string())?;
                }
                Err("no monthly slot within three months (a bug)".into())
            }
        }
    }

    /// The last slot at or before `now_ms`, starting from the due slot `due_ms`, and how many
    /// slots between them are folded into it (at most `cap` are counted; the rest are skipped
    /// without counting).
    pub fn latest_due(&self, due_ms: i64, now_ms: i64, anchor_ms: i64) -> Result<(i64, u32), String> {
        let mut latest = due_ms;
        let mut folded = 0u32;
        if let Every::Interval { minutes } = &self.every {
            // Arithmetic, not iteration: a long outage of a short interval is many slots.
            let every = i64::from(*minutes) * 60_000;
            if now_ms > due_ms {
                let n = (now_ms - due_ms) / every;
                return Ok((due_ms + n * every, n.min(i64::from(u32::MAX)) as u32));
            }
            return Ok((due_ms, 0));
        }
        loop {
            let next = self.next_after(latest, anchor_ms)?;
            if next > now_ms {
                return Ok((latest, folded));
            }
            latest = next;
            folded += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("timestamp").as_millisecond()
    }

    fn policy(every: Every, tz: &str) -> SchedulePolicy {
        SchedulePolicy {
            every,
            retain: 3,
            time_zone: tz.into(),
        }
    }

    #[test]
    fn intervals_count_from_the_anchor() {
        let p = policy(Every::Interval { minutes: 15 }, "UTC");
        let anchor = ms("2026-01-01T00:07:00Z");
        assert_eq!(p.next_after(anchor, anchor), Ok(ms("2026-01-01T00:22:00Z")));
        assert_eq!(
            p.next_after(ms("2026-01-01T00:21:59Z"), anchor),
            Ok(ms("2026-01-01T00:22:00Z"))
        );
        assert_eq!(
            p.next_after(ms("2026-01-01T00:22:00Z"), anchor),
            Ok(ms("2026-01-01T00:37:00Z"))
        );
        assert_eq!(p.next_after(anchor - 1, anchor), Ok(anchor));
    }

    #[test]
    fn daily_weekly_and_monthly_follow_the_wall_clock_of_their_zone() {
        let d = policy(Every::Daily { at: "02:30".into() }, "Europe/Berlin");
        // 02:30 CET = 01:30 UTC in winter.
        assert_eq!(
            d.next_after(ms("2026-01-10T00:00:00Z"), 0),
            Ok(ms("2026-01-10T01:30:00Z"))
        );
        assert_eq!(
            d.next_after(ms("2026-01-10T01:30:00Z"), 0),
            Ok(ms("2026-01-11T01:30:00Z"))
        );
        // 2026-03-29: 02:30 does not exist in Berlin; the slot is the first instant after the gap.
        assert_eq!(
            d.next_after(ms("2026-03-28T12:00:00Z"), 0),
            Ok(ms("2026-03-29T01:30:00Z"))
        );
        // 2026-10-25: 02:30 happens twice; it fires once, at the first.
        let first = d.next_after(ms("2026-10-24T12:00:00Z"), 0).expect("slot");
        assert_eq!(first, ms("2026-10-25T00:30:00Z"));
        assert_eq!(d.next_after(first, 0), Ok(ms("2026-10-26T01:30:00Z")));

        let w = policy(
            Every::Weekly {
                day: "sun".into(),
                at: "23:00".into(),
            },
            "UTC",
        );
        // 2026-11-29 is a Sunday.
        assert_eq!(
            w.next_after(ms("2026-11-25T10:00:00Z"), 0),
            Ok(ms("2026-11-29T23:00:00Z"))
        );
        assert_eq!(
            w.next_after(ms("2026-11-29T23:00:00Z"), 0),
            Ok(ms("2026-12-06T23:00:00Z"))
        );

        let m = policy(
            Every::Monthly {
                date: 31,
                at: "00:00".into(),
            },
            "UTC",
        );
        assert_eq!(
            m.next_after(ms("2026-02-01T00:00:00Z"), 0),
            Ok(ms("2026-02-28T00:00:00Z"))
        );
        assert_eq!(
            m.next_after(ms("2026-02-28T00:00:00Z"), 0),
            Ok(ms("2026-03-31T00:00:00Z"))
        );
    }

    #[test]
    fn slots_missed_while_down_fold_into_the_latest() {
        let p = policy(Every::Interval { minutes: 10 }, "UTC");
        let due = ms("2026-01-01T00:10:00Z");
        assert_eq!(p.latest_due(due, due, 0), Ok((due, 0)));
        assert_eq!(
            p.latest_due(due, ms("2026-01-01T00:45:00Z"), 0),
            Ok((ms("2026-01-01T00:40:00Z"), 3))
        );
        let d = policy(Every::Daily { at: "01:00".into() }, "UTC");
        let due = ms("2026-01-01T01:00:00Z");
        assert_eq!(
            d.latest_due(due, ms("2026-01-03T12:00:00Z"), 0),
            Ok((ms("2026-01-03T01:00:00Z"), 2))
        );
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let cases = [
            (policy(Every::Interval { minutes: 0 }, "UTC"), "interval"),
            (policy(Every::Daily { at: "25:00".into() }, "UTC"), "HH:MM"),
            (policy(Every::Daily { at: "2am".into() }, "UTC"), "HH:MM"),
            (
                policy(
                    Every::Weekly {
                        day: "someday".into(),
                        at: "01:00".into(),
                    },
                    "UTC",
                ),
                "weekday",
            ),
            (
                policy(
                    Every::Monthly {
                        date: 0,
                        at: "01:00".into(),
                    },
                    "UTC",
                ),
                "monthly",
            ),
            (
                policy(Every::Daily { at: "01:00".into() }, "Mars/Olympus"),
                "time zone",
            ),
            (
                SchedulePolicy {
                    retain: 0,
                    ..policy(Every::Daily { at: "01:00".into() }, "UTC")
                },
                "retain",
            ),
        ];
        for (p, word) in cases {
            let e = p.check().expect_err("refused");
            assert!(e.contains(word), "{e}");
            assert!(p.next_after(0, 0).is_err());
        }
    }
}
