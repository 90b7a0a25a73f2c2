//! The fleet-wide status: a snapshot rebuilt in the background and read without touching any
//! cluster or the catalog, so a read takes microseconds to milliseconds whatever the fleet does.
//!
//! Order is deterministic: org, cluster name, cluster id. Staleness is computed at read time from
//! each cluster's last-seen time.

use std::collections::BTreeMap;
use std::time::SystemTime;

use pxb_core::catalog::records::{ClusterRecord, ClusterState, LocationStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::agent::parse_rfc3339;

/// Counts of a cluster's locations by validation phase.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocationCounts {
    /// Valid here.
    pub valid: u32,
    /// Invalid here.
    pub invalid: u32,
    /// Not validated yet, requested, or stalled.
    pub pending: u32,
}

/// One cluster in the fleet status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetEntry {
    /// The org.
    pub org: String,
    /// Cluster name.
    pub cluster: String,
    /// Cluster id.
    pub id: String,
    /// State.
    pub state: ClusterState,
    /// Why, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Agent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Last successful contact (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    /// Seconds since `lastSeen` at the time of the read; absent when never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staleness_secs: Option<u64>,
    /// Its locations.
    pub locations: LocationCounts,
}

/// A snapshot of the whole fleet.
#[derive(Clone, Debug, Default)]
pub struct FleetSnapshot {
    /// When it was built.
    pub built_at: Option<SystemTime>,
    /// Every cluster, ordered by (org, cluster, id).
    pub entries: Vec<FleetEntry>,
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
            match s.validation.phase.as_str() {
                "Valid" => c.valid += 1,
                "Invalid" => c.invalid += 1,
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
        FleetSnapshot {
            built_at: Some(now),
            entries,
        }
    }

    /// The entries after `after` (an `(org, cluster, id)` position) that `keep` accepts, at most
    /// `limit`, with staleness as of `now`; and whether more follow.
    pub fn page(
        &self,
        after: Option<&(String, String, String)>,
        limit: usize,
        now: SystemTime,
        keep: impl Fn(&FleetEntry) -> bool,
    ) -> (Vec<FleetEntry>, bool) {
        let start = match after {
            Some(a) => self
                .entries
                .partition_point(|e| (&e.org, &e.cluster, &e.id) <= (&a.0, &a.1, &a.2)),
            None => 0,
        };
        let now_odt = time::OffsetDateTime::from(now);
        let mut out = Vec::new();
        let mut more = false;
        for e in self.entries[start..].iter().filter(|e| keep(e)) {
            if out.len() == limit {
                more = true;
                break;
            }
            let mut e = e.clone();
            e.staleness_secs = e
                .last_seen
                .as_deref()
                .and_then(parse_rfc3339)
                .map(|t| (now_odt - t).whole_seconds().max(0) as u64);
            out.push(e);
        }
        (out, more)
    }

    /// Clusters per state among the entries `keep` accepts.
    pub fn counts(&self, keep: impl Fn(&FleetEntry) -> bool) -> BTreeMap<&'static str, u64> {
        let mut m: BTreeMap<&'static str, u64> = ClusterState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for e in self.entries.iter().filter(|e| keep(e)) {
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
            source: "gardener".into(),
            discovery: None,
            namespace: None,
            provider_type: "azure".into(),
            kubernetes_version: "1.31.0".into(),
            region: String::new(),
            labels: Default::default(),
            ineligible: None,
            hibernated: false,
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
        let (p1, more) = snap.page(None, 2, now, |_| true);
        assert!(more);
        assert_eq!(p1[1].staleness_secs, Some(10));
        let last = &p1[1];
        let (p2, more) = snap.page(
            Some(&(last.org.clone(), last.cluster.clone(), last.id.clone())),
            2,
            now,
            |_| true,
        );
        assert!(!more);
        assert_eq!(p2.len(), 1);
        assert_eq!(p2[0].org, "b");
        let counts = snap.counts(|e| e.org == "a");
        assert_eq!(
            (counts["Ready"], counts["Unreachable"], counts["Hibernated"]),
            (1, 1, 0)
        );
    }
}
