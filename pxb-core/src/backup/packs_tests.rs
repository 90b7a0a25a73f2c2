//! Packs and tombstones (location format 2): what a compaction keeps, what readers see while it
//! runs, and attacks by a stalled compaction and by a hostile location.
//!
//! The store keeps its own time (`InMemory::with_clock`), moved by hand to age markers,
//! tombstones and generations.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::super::{
    BackupId, BackupKind, BackupStats, BackupStatus, Manifest, RepoConfig, Repository, SyncState, layout,
};
use super::{CompactOptions, MAX_PACK_BYTES, TOMBSTONE_KEEP, compact, day_of, pack_path};
use crate::store::gated::{Gated, Op};
use crate::store::{ObjectStore, PutOptions};
use crate::{Error, InMemory, ManualClock, ObjectPath};

const DAY: u64 = 86_400;
const START: u64 = 1_790_000_000;

fn now_opts() -> CompactOptions {
    CompactOptions {
        min_age: Duration::ZERO,
    }
}

fn manifest(created: u64) -> Manifest {
    Manifest {
        format: super::super::FORMAT,
        id: BackupId::new(UNIX_EPOCH + Duration::from_secs(created)),
        kind: BackupKind::Resources,
        created,
        completed: created + 1,
        status: BackupStatus::Completed,
        cluster: Some("shoot-a".into()),
        namespaces: vec!["app".into()],
        tag: None,
        source: None,
        parent: None,
        objects: vec![],
        stats: BackupStats::default(),
        warnings: vec![],
        volumes: vec![],
    }
}

struct Setup {
    clock: Arc<ManualClock>,
    store: Arc<InMemory>,
    repo: Repository,
}

async fn setup(format: u32) -> Setup {
    let clock = Arc::new(ManualClock::new(
        UNIX_EPOCH + Duration::from_secs(START + 30 * DAY),
    ));
    let store = Arc::new(InMemory::with_clock(clock.clone()));
    let repo = Repository::new(store.clone()).with_clock(clock.clone());
    let cfg = RepoConfig {
        format,
        ..RepoConfig::default()
    };
    store
        .put(
            &ObjectPath::parse(layout::CONFIG).expect("path"),
            serde_json::to_vec(&cfg).expect("config").into(),
            PutOptions::create(),
        )
        .await
        .expect("config");
    Setup { clock, store, repo }
}

/// Commits `n` backups on each of `days` days.
async fn commit_days(repo: &Repository, days: u64, n: u64) -> Vec<Manifest> {
    let mut out = Vec::new();
    for d in 0..days {
        for i in 0..n {
            let m = manifest(START + d * DAY + i * 60);
            repo.commit(&m).await.expect("commit");
            out.push(m);
        }
    }
    out
}

async fn listed(repo: &Repository) -> Vec<BackupId> {
    repo.list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect()
}

async fn names(store: &InMemory, prefix: &str) -> Vec<String> {
    let page = store.list(prefix, None, 5000).await.expect("list");
    page.objects.into_iter().map(|m| m.path.to_string()).collect()
}

#[tokio::test]
async fn compaction_folds_markers_and_readers_see_the_same_backups() {
    let s = setup(2).await;
    let all = commit_days(&s.repo, 3, 4).await;
    let mut ids: Vec<BackupId> = all.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    let mut state = SyncState::default();
    let first = s.repo.sync(&mut state).await.expect("sync");
    assert_eq!(first.added.len(), 12);

    // Too young to fold with the default age: nothing moves.
    let r = compact(&s.repo, &CompactOptions::default())
        .await
        .expect("compact");
    assert_eq!((r.folded, r.days), (0, 0), "{r:?}");
    s.clock.advance(Duration::from_secs(2 * 3600));
    let r = compact(&s.repo, &CompactOptions::default())
        .await
        .expect("compact");
    assert_eq!((r.folded, r.days), (12, 3), "{r:?}");
    assert!(names(&s.store, layout::MANIFESTS).await.is_empty());
    assert_eq!(names(&s.store, layout::PACKS).await.len(), 6);

    assert_eq!(listed(&s.repo).await, ids);
    let again = s.repo.sync(&mut state).await.expect("sync");
    assert!(
        again.added.is_empty() && again.removed.is_empty() && again.unreadable.is_empty(),
        "{again:?}"
    );
    for m in &all {
        assert_eq!(&s.repo.manifest(&m.id).await.expect("manifest"), m);
    }
    // A second run changes nothing.
    let r = compact(&s.repo, &now_opts()).await.expect("compact");
    assert_eq!((r.folded, r.days), (0, 0), "{r:?}");
}

#[tokio::test]
async fn deleting_a_packed_backup_is_final_and_the_tombstone_goes_later() {
    let s = setup(2).await;
    let all = commit_days(&s.repo, 1, 3).await;
    compact(&s.repo, &now_opts()).await.expect("compact");
    let victim = &all[1].id;
    let mut state = SyncState::default();
    s.repo.sync(&mut state).await.expect("sync");

    s.repo.delete(victim).await.expect("delete");
    let delta = s.repo.sync(&mut state).await.expect("sync");
    assert_eq!(delta.removed, vec![victim.clone()]);
    assert!(matches!(
        s.repo.manifest(victim).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(s.repo.delete(victim).await, Err(Error::NotFound { .. })));

    // The next generation leaves it out; the tombstone stays an hour.
    let r = compact(&s.repo, &now_opts()).await.expect("compact");
    assert_eq!((r.dropped, r.tombstones_removed), (1, 0), "{r:?}");
    assert_eq!(names(&s.store, layout::TOMBSTONES).await.len(), 1);
    s.clock.advance(TOMBSTONE_KEEP + Duration::from_secs(60));
    let r = compact(&s.repo, &now_opts()).await.expect("compact");
    assert_eq!((r.tombstones_removed, r.generations_removed), (1, 1), "{r:?}");
    assert!(names(&s.store, layout::TOMBSTONES).await.is_empty());

    let mut fresh = SyncState::default();
    s.repo.sync(&mut fresh).await.expect("sync");
    assert!(!fresh.backups.contains_key(victim));
    assert_eq!(fresh.backups.len(), 2);
    assert!(s.repo.sync(&mut state).await.expect("sync").removed.is_empty());
}

#[tokio::test]
async fn a_half_done_delete_of_a_marker_is_finished_by_compaction() {
    let s = setup(2).await;
    let all = commit_days(&s.repo, 1, 2).await;
    let id = &all[0].id;
    // The tombstone landed, then the deleting process died before deleting the marker.
    s.store
        .put(
            &ObjectPath::parse(format!("{}{id}", layout::TOMBSTONES)).expect("path"),
            Bytes::new(),
            PutOptions::create(),
        )
        .await
        .expect("tombstone");
    assert!(!listed(&s.repo).await.contains(id));
    assert!(matches!(s.repo.manifest(id).await, Err(Error::NotFound { .. })));
    let r = compact(&s.repo, &now_opts()).await.expect("compact");
    assert_eq!((r.markers_removed, r.folded), (1, 1), "{r:?}");
    assert_eq!(listed(&s.repo).await, vec![all[1].id.clone()]);
}

#[tokio::test]
async fn a_stalled_compaction_does_not_bring_a_deleted_backup_back() {
    let s = setup(2).await;
    let all = commit_days(&s.repo, 1, 2).await;
    let day = day_of(&all[0].id).to_owned();
    compact(&s.repo, &now_opts()).await.expect("compact");
    // A compaction stalls after reading generation 1 (which holds both backups) ...
    let stale_manifests = s
        .store
        .get(&pack_path(&day, 1, true).expect("p"))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("b");
    let stale_summaries = s
        .store
        .get(&pack_path(&day, 1, false).expect("p"))
        .await
        .expect("get")
        .bytes()
        .await
        .expect("b");
    // ... while the first backup is deleted, compacted away and its tombstone removed.
    s.repo.delete(&all[0].id).await.expect("delete");
    compact(&s.repo, &now_opts()).await.expect("compact");
    s.clock.advance(TOMBSTONE_KEEP + Duration::from_secs(60));
    let r = compact(&s.repo, &now_opts()).await.expect("compact");
    assert_eq!((r.tombstones_removed, r.generations_removed), (1, 1), "{r:?}");
    assert!(
        names(&s.store, pack_path(&day, 1, false).expect("p").as_ref())
            .await
            .is_empty()
    );

    // It wakes up and writes what it built as generation 1 again (create-only succeeds: the
    // number is free): generation 2 is higher, so it counts for nothing.
    for (body, manifests) in [(stale_manifests, true), (stale_summaries, false)] {
        s.store
            .put(
                &pack_path(&day, 1, manifests).expect("p"),
                body,
                PutOptions::create(),
            )
            .await
            .expect("stale write");
    }
    assert_eq!(listed(&s.repo).await, vec![all[1].id.clone()]);
    assert!(matches!(
        s.repo.manifest(&all[0].id).await,
        Err(Error::NotFound { .. })
    ));
    // Mutation check: were readers to take the lowest generation, the backup would be back.
    let mut state = SyncState::default();
    s.repo.sync(&mut state).await.expect("sync");
    assert_eq!(state.packs.get(&day).map(|p| p.generation), Some(2));
}

/// A compaction that runs between a sync's listing of markers and its listing of packs (or just
/// before either) hides no backup and brings back none.
#[tokio::test]
async fn a_compaction_during_a_sync_hides_nothing() {
    for prefix in [layout::MANIFESTS, layout::PACKS] {
        let s = setup(2).await;
        let all = commit_days(&s.repo, 2, 3).await;
        s.repo.delete(&all[0].id).await.expect("delete");
        let gated = Gated::new((*s.store).clone());
        let (reached, release) = gated.arm(Op::List, prefix);
        let reader = Repository::new(gated.clone()).with_clock(s.clock.clone());
        let compactor = s.repo.clone();
        let listed = prefix.to_owned();
        let side = tokio::spawn(async move {
            reached
                .await
                .unwrap_or_else(|_| panic!("the sync never listed {listed}"));
            let r = compact(&compactor, &now_opts()).await.expect("compact");
            assert_eq!(r.folded, 5, "{r:?}");
            let _ = release.send(());
        });
        let mut state = SyncState::default();
        let delta = reader.sync(&mut state).await.expect("sync");
        drop((reader, gated));
        side.await.expect("the compaction beside the sync");
        let mut seen: Vec<BackupId> = delta.added.iter().map(|s| s.id.clone()).collect();
        seen.sort();
        let want: Vec<BackupId> = all[1..].iter().map(|m| m.id.clone()).collect();
        assert_eq!(seen, want, "compaction before listing {prefix}");
    }
}

#[tokio::test]
async fn a_format_1_location_gets_no_packs_and_no_tombstones() {
    let s = setup(1).await;
    let all = commit_days(&s.repo, 2, 2).await;
    let r = compact(&s.repo, &now_opts()).await.expect("compact");
    assert!(r.not_done.is_some() && r.folded == 0, "{r:?}");
    s.repo.delete(&all[0].id).await.expect("delete");
    assert!(names(&s.store, layout::TOMBSTONES).await.is_empty());
    assert!(names(&s.store, layout::PACKS).await.is_empty());
    assert_eq!(names(&s.store, layout::MANIFESTS).await.len(), 3);
    assert_eq!(listed(&s.repo).await.len(), 3);
}

/// Hostile pack objects are refused by name, bounded, and hide nothing else.
#[tokio::test]
async fn hostile_packs_are_refused_and_named() {
    let s = setup(2).await;
    let all = commit_days(&s.repo, 2, 2).await;
    compact(&s.repo, &now_opts()).await.expect("compact");
    let day0 = day_of(&all[0].id).to_owned();
    let day1 = day_of(&all[2].id).to_owned();
    let put = |path: ObjectPath, body: Vec<u8>| {
        let store = s.store.clone();
        async move {
            store
                .put(&path, body.into(), PutOptions::default())
                .await
                .expect("put")
        }
    };
    let pack = |day: &str, generation: u64, entries: serde_json::Value| {
        let json = serde_json::json!({"format": 2, "day": day, "generation": generation, "entries": entries});
        zstd::bulk::compress(&serde_json::to_vec(&json).expect("json"), 3).expect("zstd")
    };
    let summary = |m: &Manifest| serde_json::to_value(super::super::Summary::of(m)).expect("summary");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a pack", b"garbage".to_vec()),
        // A backup of another day (of another day's pack).
        (
            "is not of day",
            pack(&day0, 2, serde_json::json!([summary(&all[0]), summary(&all[2])])),
        ),
        (
            "twice",
            pack(&day0, 2, serde_json::json!([summary(&all[0]), summary(&all[0])])),
        ),
        (
            "the pack says",
            pack(&day1, 2, serde_json::json!([summary(&all[0])])),
        ),
        // A bomb: small stored, past the limit decompressed.
        (
            "more than",
            zstd::bulk::compress(&vec![b' '; MAX_PACK_BYTES as usize + 10], 3).expect("zstd"),
        ),
    ];
    for (want, body) in cases {
        put(pack_path(&day0, 2, false).expect("p"), body).await;
        let mut state = SyncState::default();
        let delta = s.repo.sync(&mut state).await.expect("sync");
        let (name, why) = delta.unreadable.first().cloned().unwrap_or_default();
        assert_eq!(delta.unreadable.len(), 1, "{want}: {:?}", delta.unreadable);
        assert!(name.ends_with(&format!("{day0}/0000000002")), "{name}");
        assert!(why.contains(want), "{want}: {why}");
        // The other day's backups are all there; GC refuses to run on a location it cannot read.
        assert!(state.backups.contains_key(&all[2].id) && state.backups.contains_key(&all[3].id));
        let gc = super::super::gc::gc(&s.repo, &Default::default()).await;
        assert!(matches!(gc, Err(Error::Corrupt { .. })), "{gc:?}");
    }
    // Not a pack name at all: reported, ignored.
    put(
        ObjectPath::parse(format!("{}{day0}/x", layout::PACKS)).expect("p"),
        b"x".to_vec(),
    )
    .await;
    s.store
        .delete(&pack_path(&day0, 2, false).expect("p"))
        .await
        .expect("delete");
    let mut state = SyncState::default();
    let delta = s.repo.sync(&mut state).await.expect("sync");
    assert_eq!(state.backups.len(), 4);
    assert!(
        delta
            .unreadable
            .iter()
            .any(|(n, why)| n.ends_with("/x") && why == "not a pack name")
    );
    // A manifests half that is garbage: reading a manifest from it is refused, named.
    put(pack_path(&day0, 1, true).expect("p"), b"garbage".to_vec()).await;
    let err = s.repo.manifest(&all[0].id).await.expect_err("garbage pack");
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains(".manifests"),
        "{err}"
    );
}
