//! Sync of a location with many backups. Format 2: markers folded into per-day packs as the
//! agent does (every 5,000 commits here). Format 1: pxb's listing-metadata sync, against a
//! baseline that lists the manifests and GETs each one, serially (what a
//! one-object-per-backup controller does).

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use pxb_core::ObjectStore;
use pxb_core::backup::packs::{CompactOptions, compact};
use pxb_core::backup::{
    BackupId, BackupKind, BackupStats, BackupStatus, Manifest, ManifestObject, RepoConfig, Repository,
    SyncState, layout,
};
use pxb_core::store::list_all;
use serde_json::json;

/// A realistic manifest for backup number `i`.
fn manifest(i: u64) -> Manifest {
    let secs = 1_700_000_000 + i * 60;
    let id = BackupId::new(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    Manifest {
        format: 1,
        id,
        kind: BackupKind::Volume,
        created: secs,
        completed: secs + 30,
        status: BackupStatus::Completed,
        cluster: Some(format!("shoot--tenant-{}--cluster-{}", i % 97, i % 13)),
        namespaces: (0..(i % 5 + 1)).map(|n| format!("app-{n}")).collect(),
        tag: Some(format!("schedule-{}", i % 7)),
        source: Some(format!("/var/lib/kubelet/pods/{i}/volumes/data")),
        parent: None,
        objects: vec![ManifestObject {
            name: "files".into(),
            size: 4096 + i % 1000,
            blake3: "ab".repeat(32),
        }],
        stats: BackupStats {
            files: 100 + i % 1000,
            bytes: i * 1000,
            stored_bytes: i * 10,
            ..BackupStats::default()
        },
        warnings: Vec::new(),
        volumes: Vec::new(),
    }
}

/// Writes the config of a location of `format`, then `n` committed manifests (nothing else: sync
/// reads only manifests), compacting after every 5,000 in format 2. Returns the seconds it took
/// and the seconds spent compacting.
pub async fn populate(
    repo: &Repository,
    n: u64,
    concurrency: usize,
    format: u32,
) -> anyhow::Result<(f64, f64)> {
    let config = RepoConfig {
        format,
        ..RepoConfig::default()
    };
    repo.store()
        .put(
            &pxb_core::ObjectPath::parse(layout::CONFIG)?,
            serde_json::to_vec(&config)?.into(),
            pxb_core::PutOptions::create(),
        )
        .await?;
    let t = Instant::now();
    let mut compacting = 0.0;
    let mut start = 0;
    while start < n {
        let end = (start + 5_000).min(n);
        populate_range(repo, start..end, n, concurrency, t).await?;
        if format >= 2 {
            let c = Instant::now();
            let r = compact(
                repo,
                &CompactOptions {
                    min_age: std::time::Duration::ZERO,
                },
            )
            .await?;
            anyhow::ensure!(r.skipped.is_empty(), "compaction skipped: {:?}", r.skipped);
            compacting += c.elapsed().as_secs_f64();
            eprintln!(
                "  compacted {} markers into {} day packs in {:.1} s",
                r.folded,
                r.days,
                c.elapsed().as_secs_f64()
            );
        }
        start = end;
    }
    Ok((t.elapsed().as_secs_f64(), compacting))
}

async fn populate_range(
    repo: &Repository,
    range: std::ops::Range<u64>,
    n: u64,
    concurrency: usize,
    t: Instant,
) -> anyhow::Result<()> {
    let done = std::sync::atomic::AtomicU64::new(range.start);
    futures::stream::iter(range)
        .map(|i| {
            let done = &done;
            async move {
                repo.commit(&manifest(i)).await?;
                let d = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if d.is_multiple_of(10_000) {
                    eprintln!("  {d} of {n} written after {:.0} s", t.elapsed().as_secs_f64());
                }
                Ok::<_, pxb_core::Error>(())
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The baseline: list manifests, then GET and parse each one, one at a time.
pub async fn baseline(store: &dyn ObjectStore) -> anyhow::Result<usize> {
    let names: Vec<_> = list_all(store, layout::MANIFESTS)
        .map_ok(|m| m.path)
        .try_collect()
        .await?;
    let mut n = 0;
    for p in names {
        let bytes = store.get(&p).await?.bytes().await?;
        pxb_core::backup::parse_manifest(p.as_str(), &bytes)?;
        n += 1;
    }
    Ok(n)
}

/// The floor: the same paged listing of the manifests with their metadata that sync makes, with
/// nothing parsed (what the store alone costs).
pub async fn bare_listing(store: &dyn ObjectStore) -> anyhow::Result<usize> {
    Ok(list_all(store, layout::MANIFESTS)
        .try_fold(0, |n, _| async move { Ok(n + 1) })
        .await?)
}

/// Writes `n` backups into `store`, then measures `repeat` rounds of sync and the store's bare
/// listing, and (with `with_baseline`, once) the one-GET-per-backup baseline.
pub async fn run(
    store: Arc<dyn ObjectStore>,
    n: u64,
    label: &str,
    with_baseline: bool,
    repeat: u32,
    format: u32,
) -> anyhow::Result<serde_json::Value> {
    let repo = Repository::new(store.clone());
    let (populate_secs, compact_secs) = populate(&repo, n, 64, format).await?;
    eprintln!("{label}: populated {n} backups in {populate_secs:.1} s (compacting: {compact_secs:.1} s)");
    let mut rounds = Vec::new();
    for round in 0..repeat.max(1) {
        let mut r = measure(&repo, store.as_ref(), n, label, format).await?;
        if with_baseline && round == 0 && format == 1 {
            let t = Instant::now();
            let seen = baseline(store.as_ref()).await?;
            let baseline_secs = t.elapsed().as_secs_f64();
            anyhow::ensure!(seen as u64 == n, "baseline saw {seen} of {n}");
            r["baseline_secs"] = json!(baseline_secs);
            r["speedup"] = json!(baseline_secs / r["sync_secs"].as_f64().unwrap_or(f64::NAN));
        }
        rounds.push(r);
    }
    Ok(
        json!({"backend": label, "backups": n, "format": format, "populate_secs": populate_secs,
               "compact_secs": compact_secs, "rounds": rounds}),
    )
}

/// One round: sync from nothing, a re-sync with nothing new, and the bare listing.
async fn measure(
    repo: &Repository,
    store: &dyn ObjectStore,
    n: u64,
    label: &str,
    format: u32,
) -> anyhow::Result<serde_json::Value> {
    let mut state = SyncState::default();
    let t = Instant::now();
    let delta = repo.sync(&mut state).await?;
    let sync_secs = t.elapsed().as_secs_f64();
    eprintln!("{label}: sync took {sync_secs:.2} s");
    anyhow::ensure!(
        delta.added.len() as u64 == n,
        "sync found {} of {n}",
        delta.added.len()
    );
    let t = Instant::now();
    let again = repo.sync(&mut state).await?;
    let resync_secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(again.added.is_empty(), "second sync found new backups");
    eprintln!("{label}: re-sync took {resync_secs:.2} s");
    let t = Instant::now();
    let listed = bare_listing(store).await?;
    let listing_secs = t.elapsed().as_secs_f64();
    eprintln!("{label}: the bare listing took {listing_secs:.2} s");
    // Format 2 folds every marker into packs: the listing is what is left of them.
    let markers = if format == 1 { n } else { 0 };
    anyhow::ensure!(
        listed as u64 == markers,
        "the listing saw {listed} markers, not {markers}"
    );
    Ok(json!({
        "sync_secs": sync_secs, "resync_secs": resync_secs, "bare_listing_secs": listing_secs,
        "sync_over_listing": sync_secs / listing_secs,
    }))
}
