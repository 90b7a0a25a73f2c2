//! Schedules: when a schedule fires ([`SchedulePolicy`], in `policy`), and which of its backups
//! retention keeps ([`retention`]).
//!
//! The policy is pure time arithmetic and depends on no catalog record (the catalog's
//! `ScheduleRecord` holds one); retention reads backup records. Imports go one way: this file uses
//! the catalog records and the policy, the records use the policy.

use crate::catalog::records::BackupRecord;

pub(crate) mod policy;

pub use policy::{Every, MAX_RETAIN, SchedulePolicy};

/// Which of one schedule's backups on one cluster retention deletes: the successful ones beyond
/// the newest `retain`; failed and missed ones only once `retain` successes exist, and then only
/// those older than the oldest kept success (so a recent failure stays visible). Active backups
/// are never chosen. Returns record ids.
pub fn retention(backups: &[BackupRecord], retain: u32) -> Vec<String> {
    let mut done: Vec<&BackupRecord> = backups.iter().filter(|b| !b.phase.is_active()).collect();
    // Newest first; the id breaks ties so the choice is deterministic.
    done.sort_by(|a, b| b.created_ms.cmp(&a.created_ms).then_with(|| b.id.cmp(&a.id)));
    let successes: Vec<&&BackupRecord> = done.iter().filter(|b| b.phase.is_success()).collect();
    let retain = retain as usize;
    let mut out: Vec<String> = successes.iter().skip(retain).map(|b| b.id.clone()).collect();
    if successes.len() >= retain && retain > 0 {
        let oldest_kept = successes[retain - 1];
        out.extend(
            done.iter()
                .filter(|b| !b.phase.is_success())
                .filter(|b| (b.created_ms, &b.id) < (oldest_kept.created_ms, &oldest_kept.id))
                .map(|b| b.id.clone()),
        );
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::records::BackupPhase;

    fn b(id: &str, created_ms: i64, phase: BackupPhase) -> BackupRecord {
        BackupRecord {
            id: id.into(),
            created_ms,
            phase,
            ..BackupRecord::default()
        }
    }

    #[test]
    fn retention_keeps_exactly_the_retain_count_of_successes() {
        use BackupPhase::*;
        let mut all: Vec<BackupRecord> = (0..10).map(|i| b(&format!("b{i}"), i, Success)).collect();
        assert_eq!(retention(&all, 3), ["b0", "b1", "b2", "b3", "b4", "b5", "b6"]);
        assert!(retention(&all, 10).is_empty());
        // Partial successes count as successes; a running one is never touched.
        all[9].phase = PartialSuccess;
        all.push(b("run", 100, InProgress));
        assert_eq!(retention(&all, 9), ["b0"]);
    }

    #[test]
    fn failed_backups_go_only_once_enough_successes_exist() {
        use BackupPhase::*;
        let all = vec![
            b("f0", 0, Failed),
            b("s1", 1, Success),
            b("m2", 2, Missed),
            b("s3", 3, Success),
            b("f4", 4, Failed),
        ];
        // Two successes, retain three: nothing goes, not even the failures.
        assert!(retention(&all, 3).is_empty());
        // Retain two: both successes stay; only failures older than the older kept one go.
        assert_eq!(retention(&all, 2), ["f0"]);
        // Retain one: s1 goes, and the failures older than s3 go; f4 (newer) stays.
        assert_eq!(retention(&all, 1), ["f0", "m2", "s1"]);
    }
}
