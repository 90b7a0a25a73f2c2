//! The fleet-wide status: a snapshot rebuilt in the background and read without touching any
//! cluster or the catalog, so a read takes microseconds to milliseconds whatever the fleet does.
//!
//! Order is deterministic: org, cluster name, cluster id. Staleness is computed at read time from
//! each cluster's last-seen time.

use std::collections::BTreeMap;
use std::time::SystemTime;

use pxb_core::catalog::records::{ClusterRecord, ClusterState, LocationStatus, ValidationPhase};

pub use pxb_core::api::rest::{FleetEntry, LocationCounts};
use pxb_core::clock::parse_rfc3339;

/// One org's part of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct OrgSlice {
    /// Its entries: `entries[range]`.
    pub range: std::ops::Range<usize>,
    /// Its clusters per state.
    pub counts: BTreeMap<&'static str, u64>,
}

/// A snapshot of the whole fleet.
#[derive(Clone, Debug, Default)]
pub struct FleetSnapshot {
    /// When it was built.
    pub built_at: Option<SystemTime>,
    /// Every cluster, ordered by (org, cluster, id).
    pub entries: Vec<FleetEntry>,
    /// Where each org's entries are, and their counts.
    pub orgs: BTreeMap<String, OrgSlice>,
}

fn zero_counts() -> BTreeMap<&'static str, u64> {
    ClusterState::ALL.iter().map(|s| (s.as_str(), 0)).collect()
}

impl FleetSnapshot {
    /// Builds a snapshot of `clusters` and the location statuses.
    pub fn build<'a>(
        clusters: impl Iterator<Item = &'a ClusterRecord>,
        statuses: impl Iterator<Item = &'a LocationStatus>,
        now: SystemTime,
    ) -> Self {
        let mut counts: BTreeMap<(&str, &str), LocationCounts> = BTreeMap::new();
        for s in statuses {
            let c = counts.entry((s.org.as_str(), s.cluster.as_str())).or_default();
            match s.validation.phase {
                ValidationPhase::Valid => c.valid += 1,
                ValidationPhase::Invalid => c.invalid += 1,
                _ => c.pending += 1,
            }
        }
        let mut entries: Vec<FleetEntry> = clusters
            .map(|c| FleetEntry {
                org: c.org.clone(),
                cluster: c.name.clone(),
                id: c.id.clone(),
                state: c.status.state,
                message: c.status.message.clone(),
                agent_version: c.status.agent_version.clone(),
                last_seen: c.status.last_seen.clone(),
                staleness_secs: None,
                locations: counts
                    .get(&(c.org.as_str(), c.id.as_str()))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect();
        entries.sort_by(|a, b| (&a.org, &a.cluster, &a.id).cmp(&(&b.org, &b.cluster, &b.id)));
        let mut orgs: BTreeMap<String, OrgSlice> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let slice = orgs.entry(e.org.clone()).or_insert_with(|| OrgSlice {
                range: i..i,
                counts: zero_counts(),
            });
            slice.range.end = i + 1;
            *slice.counts.entry(e.state.as_str()).or_default() += 1;
        }
        FleetSnapshot {
            built_at: Some(now),
            entries,
            orgs,
        }
    }

    /// The entries of `orgs` (sorted, deduplicated) after `after` (an `(org, cluster, id)`
    /// position), in `state` when given, at most `limit`, with staleness as of `now`; and whether
    /// more follow. Only the visible orgs' slices are walked.
    pub fn page(
        &self,
        orgs: &[String],
        state: Option<&str>,
        after: Option<&(String, String, String)>,
        limit: usize,
        now: SystemTime,
    ) -> (Vec<FleetEntry>, bool) {
        let mut out = Vec::new();
        for org in orgs {
            if after.is_some_and(|a| *org < a.0) {
                continue;
            }
            let Some(slice) = self.orgs.get(org) else {
                continue;
            };
            let part = &self.entries[slice.range.clone()];
            let start = match after {
                Some(a) if a.0 == *org => part.partition_point(|e| (&e.cluster, &e.id) <= (&a.1, &a.2)),
                _ => 0,
            };
            for e in part[start..]
                .iter()
                .filter(|e| state.is_none_or(|s| e.state.as_str() == s))
            {
                if out.len() == limit {
                    return (out, true);
                }
                let mut e = e.clone();
                e.staleness_secs = e
                    .last_seen
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map(|t| now.duration_since(t).map_or(0, |d| d.as_secs()));
                out.push(e);
            }
        }
        (out, false)
    }

    /// Clusters per state in `orgs`.
    pub fn counts(&self, orgs: &[String]) -> BTreeMap<&'static str, u64> {
        let mut m = zero_counts();
        for slice in orgs.iter().filter_map(|o| self.orgs.get(o)) {
            for (k, v) in &slice.counts {
                *m.entry(k).or_default() += v;
            }
        }
        m
    }

    /// Clusters per state of each of `orgs` that has clusters.
    pub fn org_counts(&self, orgs: &[String]) -> BTreeMap<String, BTreeMap<String, u64>> {
        orgs.iter()
            .filter_map(|o| self.orgs.get(o).map(|slice| (o, slice)))
            .filter(|(_, slice)| !slice.range.is_empty())
            .map(|(o, slice)| {
                let counts = slice.counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
                (o.clone(), counts)
            })
            .collect()
    }

    /// Clusters per state in the whole fleet.
    pub fn total_counts(&self) -> BTreeMap<&'static str, u64> {
        let mut m = zero_counts();
        for e in &self.entries {
            *m.entry(e.state.as_str()).or_default() += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pxb_core::catalog::records::ClusterStatus;

    fn cluster(org: &str, name: &str, state: ClusterState) -> ClusterRecord {
        ClusterRecord {
            org: org.into(),
            id: format!("id-{name}"),
            name: name.into(),
            source: "static".into(),
            discovery: None,
            namespace: None,
            provider_type: "azure".into(),
            kubernetes_version: "1.31.0".into(),
            region: String::new(),
            labels: Default::default(),
            ineligible: None,
            hibernated: false,
            service_account_issuer: None,
            first_seen: String::new(),
            retired_at: None,
            sealed_kubeconfig: None,
            status: ClusterStatus {
                state,
                last_seen: Some("2026-01-01T00:00:00Z".into()),
                ..ClusterStatus::default()
            },
        }
    }

    #[test]
    fn order_is_deterministic_and_pages_continue_where_they_stopped() {
        let cs = [
            cluster("b", "x", ClusterState::Ready),
            cluster("a", "z", ClusterState::Unreachable),
            cluster("a", "y", ClusterState::Ready),
        ];
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_610);
        let snap = FleetSnapshot::build(cs.iter(), std::iter::empty(), now);
        let names: Vec<_> = snap
            .entries
            .iter()
            .map(|e| (e.org.as_str(), e.cluster.as_str()))
            .collect();
        assert_eq!(names, vec![("a", "y"), ("a", "z"), ("b", "x")]);
        let both = ["a".to_string(), "b".to_string()];
        let (p1, more) = snap.page(&both, None, None, 2, now);
        assert!(more);
        assert_eq!(p1[1].staleness_secs, Some(10));
        let last = &p1[1];
        let cursor = (last.org.clone(), last.cluster.clone(), last.id.clone());
        let (p2, more) = snap.page(&both, None, Some(&cursor), 2, now);
        assert!(!more);
        assert_eq!(p2.len(), 1);
        assert_eq!(p2[0].org, "b");
        let per = snap.org_counts(&["a".to_string(), "nope".to_string()]);
        assert_eq!(
            per.keys().collect::<Vec<_>>(),
            ["a"],
            "orgs without clusters are left out"
        );
        assert_eq!((per["a"]["Ready"], per["a"]["Unreachable"]), (1, 1));
        let counts = snap.counts(&["a".to_string()]);
        assert_eq!(
            (counts["Ready"], counts["Unreachable"], counts["Hibernated"]),
            (1, 1, 0)
        );
        let (only_b, _) = snap.page(&["b".to_string()], None, None, 10, now);
        assert_eq!(only_b.len(), 1);
        let (ready, _) = snap.page(&both, Some("Ready"), None, 10, now);
        assert_eq!(
            ready.iter().map(|e| e.cluster.as_str()).collect::<Vec<_>>(),
            vec!["y", "x"]
        );
        assert_eq!(snap.total_counts()["Ready"], 2);
    }
}
