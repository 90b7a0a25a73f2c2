//! Attacks on the protocol between backups and GC: interleavings that used to let GC delete what a
//! backup then committed. Each test ends with the invariant: every committed manifest's
//! referenced objects exist (quick and deep verify).
//!
//! The store keeps its own time (`InMemory::with_clock`); each machine has its own clock
//! (`Repository::with_clock`); `Gated` stops one chosen store call until the test releases it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::super::resources::{ResourceBackupOptions, backup_namespace_resources};
use super::super::verify::{VerifyStatus, verify};
use super::super::volume::{VolumeBackupOptions, backup_volume};
use super::super::{Manifest, Repository};
use super::{GcOptions, GcReport, gc};
use crate::resources::{InMemoryCluster, ResourceSelector};
use crate::store::gated::{Gated, Op};
use crate::{Clock, InMemory, ManualClock, Result};

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_900_000_000)
}

/// The store's own clock, and the store.
fn location() -> (ManualClock, Arc<Gated>) {
    let clock = ManualClock::new(t0());
    let store = Gated::new(InMemory::with_clock(Arc::new(clock.clone())));
    (clock, store)
}

/// A machine using `store` with its own `clock`.
fn machine(store: &Arc<Gated>, clock: &ManualClock) -> Repository {
    Repository::new(store.clone()).with_clock(Arc::new(clock.clone()))
}

/// A tree with small files (bundled) and a large incompressible one (several chunks).
fn tree(seed: u8) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    for i in 0..20 {
        std::fs::write(
            dir.path().join(format!("f{i}.txt")),
            format!("small file {i} seed {seed}\n").repeat(20),
        )
        .expect("write");
    }
    let mut big = vec![0u8; 3 << 20];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut big);
    std::fs::write(dir.path().join("big.bin"), big).expect("write");
    dir
}

fn spawn_volume_backup(repo: &Repository, src: &Path) -> tokio::task::JoinHandle<Result<Manifest>> {
    let (repo, src) = (repo.clone(), src.to_owned());
    tokio::spawn(async move { backup_volume(&repo, VolumeBackupOptions::new(src)).await })
}

fn spawn_resource_backup(repo: &Repository) -> tokio::task::JoinHandle<Result<Manifest>> {
    let repo = repo.clone();
    tokio::spawn(async move {
        let source = InMemoryCluster::new();
        for o in [
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop"}, "data": {"k": "v"}}),
        ] {
            source.seed(o).expect("seed");
        }
        let opts = ResourceBackupOptions {
            selector: ResourceSelector {
                namespaces: vec!["shop".into()],
                ..ResourceSelector::default()
            },
            ..ResourceBackupOptions::default()
        };
        backup_namespace_resources(&repo, &source, &opts)
            .await
            .map(|(m, _)| m)
    })
}

/// The invariant: whatever was committed is whole. Returns whether the raced backup committed.
async fn assert_committed_intact(repo: &Repository, raced: &Result<Manifest>, gc: &GcReport) -> bool {
    for deep in [false, true] {
        for r in verify(repo, None, deep, 4).await.expect("verify") {
            assert_eq!(
                r.status,
                VerifyStatus::Ok,
                "a committed backup references objects GC removed (deep: {deep}): {r:?}; raced backup: {raced:?}; GC: {gc:?}"
            );
        }
    }
    match raced {
        Ok(m) => {
            assert!(
                repo.list().await.expect("list").iter().any(|s| s.id == m.id),
                "the raced backup said it committed"
            );
            true
        }
        Err(e) => {
            assert!(
                matches!(e, crate::Error::Unavailable { .. }),
                "a raced backup fails as retryable: {e}"
            );
            false
        }
    }
}

/// (1) A backup uploads its chunks; its lease lapses (no heartbeat for longer than the lease, as
/// the store measures it); GC finds the lease stale and sweeps; the backup's lease comes back and
/// it commits. The backup must notice the lapse and not commit a manifest whose chunks are gone.
#[tokio::test]
async fn a_lapsed_lease_is_noticed_before_commit() {
    let (clock, store) = location();
    let repo = machine(&store, &clock);
    let src = tree(1);
    let (reached, release) = store.arm(Op::Put, "pxb/backups/");
    let backup = spawn_volume_backup(&repo, src.path());
    reached.await.expect("the backup uploaded its chunks");
    clock.advance(Duration::from_secs(7200));
    let report = gc(&repo, &GcOptions::default()).await.expect("gc");
    release.send(()).ok();
    let raced = backup.await.expect("join");
    assert!(!assert_committed_intact(&repo, &raced, &report).await);
}

/// (2) A resource backup wrote its archive; GC runs before the manifest lands (its archive looks
/// like the object of a backup that never committed). The backup holds a lease, so GC defers.
#[tokio::test]
async fn a_resource_backup_holds_a_lease() {
    let (clock, store) = location();
    let repo = machine(&store, &clock);
    let (reached, release) = store.arm(Op::Put, "pxb/manifests/");
    let backup = spawn_resource_backup(&repo);
    reached.await.expect("the backup is committing");
    clock.advance(Duration::from_secs(61));
    let opts = GcOptions {
        grace: Duration::from_secs(60),
        ..GcOptions::default()
    };
    let report = gc(&repo, &opts).await.expect("gc");
    release.send(()).ok();
    let raced = backup.await.expect("join");
    assert!(assert_committed_intact(&repo, &raced, &report).await);
    assert!(
        report.deferred.is_some(),
        "GC saw the resource backup's lease: {report:?}"
    );
}

/// (2b) Worst case of (2): the resource backup stalls between its last check and the manifest's
/// put for longer than a lease, and GC sweeps its archive meanwhile. The backup finds out after
/// the put (its manifest is too far in store time from its last renewal) and withdraws it.
#[tokio::test]
async fn a_commit_that_lands_after_the_lease_is_withdrawn() {
    let (clock, store) = location();
    let repo = machine(&store, &clock);
    let (reached, release) = store.arm(Op::Put, "pxb/manifests/");
    let backup = spawn_resource_backup(&repo);
    reached.await.expect("the backup is committing");
    clock.advance(Duration::from_secs(7200));
    let report = gc(&repo, &GcOptions::default()).await.expect("gc");
    release.send(()).ok();
    let raced = backup.await.expect("join");
    assert!(!assert_committed_intact(&repo, &raced, &report).await);
}

/// (3a) Clock skew: the backup's machine is 10 minutes behind the store, GC's machine 2 hours
/// ahead. Leases and grace are measured in store time, so GC sees a fresh lease and young chunks.
#[tokio::test]
async fn skewed_clocks_backup_behind_gc_ahead() {
    let (store_clock, store) = location();
    let backup_clock = ManualClock::new(store_clock.now() - Duration::from_secs(600));
    let gc_clock = ManualClock::new(store_clock.now() + Duration::from_secs(7200));
    let backup_repo = machine(&store, &backup_clock);
    let gc_repo = machine(&store, &gc_clock);
    let src = tree(2);
    let (reached, release) = store.arm(Op::Put, "pxb/backups/");
    let backup = spawn_volume_backup(&backup_repo, src.path());
    reached.await.expect("the backup uploaded its chunks");
    let report = gc(&gc_repo, &GcOptions::default()).await.expect("gc");
    release.send(()).ok();
    let raced = backup.await.expect("join");
    assert!(assert_committed_intact(&gc_repo, &raced, &report).await);
}

/// (3b) Clock skew the other way: GC is sweeping garbage of a deleted backup; a backup of the same
/// data starts on a machine 10 minutes ahead, which used to see GC's lock as stale, deduplicate
/// against the doomed chunks and commit just before GC deleted them.
#[tokio::test]
async fn skewed_clocks_backup_ahead_during_a_sweep() {
    let (store_clock, store) = location();
    let gc_clock = ManualClock::new(store_clock.now());
    let backup_clock = ManualClock::new(store_clock.now() + Duration::from_secs(600));
    let gc_repo = machine(&store, &gc_clock);
    let backup_repo = machine(&store, &backup_clock);
    let src = tree(3);
    let old = backup_volume(&gc_repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("old backup");
    gc_repo.delete(&old.id).await.expect("its chunks become garbage");
    for c in [&store_clock, &gc_clock, &backup_clock] {
        c.advance(Duration::from_secs(7200));
    }
    let (reached, release) = store.arm(Op::Delete, "pxb/chunks/");
    let sweep = tokio::spawn({
        let repo = gc_repo.clone();
        async move { gc(&repo, &GcOptions::default()).await }
    });
    reached.await.expect("GC is deleting");
    let backup = spawn_volume_backup(&backup_repo, src.path());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    release.send(()).ok();
    let report = sweep.await.expect("join").expect("gc");
    let raced = backup.await.expect("join");
    assert!(report.deleted_chunks > 0, "{report:?}");
    assert!(assert_committed_intact(&gc_repo, &raced, &report).await);
}

/// (1b) A lapse alone does not fail a backup: GC swept while the lease was stale, but the
/// backup's chunks were young enough to be kept, so the backup's check finds them and commits.
#[tokio::test]
async fn a_lapse_that_lost_nothing_commits() {
    let (clock, store) = location();
    let repo = machine(&store, &clock);
    let src = tree(4);
    let (reached, release) = store.arm(Op::Put, "pxb/backups/");
    let backup = spawn_volume_backup(&repo, src.path());
    reached.await.expect("the backup uploaded its chunks");
    clock.advance(Duration::from_secs(300));
    let report = gc(&repo, &GcOptions::default()).await.expect("gc");
    assert!(
        report.deferred.is_none() && report.kept_in_grace > 0,
        "{report:?}"
    );
    release.send(()).ok();
    let raced = backup.await.expect("join");
    assert!(assert_committed_intact(&repo, &raced, &report).await);
}
