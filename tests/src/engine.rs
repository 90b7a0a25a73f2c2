//! Backup-engine scenarios that every backend runs: round trip, incremental, verify, delete, sync
//! and GC (alone and concurrent with a backup). Each panics with a description of what broke.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use pxb_core::backup::gc::{GcOptions, gc};
use pxb_core::backup::packs::{CompactOptions, CompactReport, compact};
use pxb_core::backup::verify::{VerifyStatus, verify};
use pxb_core::backup::volume::{VolumeBackupOptions, VolumeRestoreOptions, backup_volume, restore_volume};
use pxb_core::backup::{BackupId, ChunkId, RepoConfig, Repository, SyncState, layout};
use pxb_core::store::conformance::PatternReader;
use pxb_core::{Error, ManualClock, ObjectStore, PutOptions};

/// Writes a tree with every kind of entry the mover handles: nested directories, many small files,
/// large compressible and incompressible files, an empty file, a sparse file, symlinks, odd modes,
/// foreign owners and fixed mtimes.
pub fn make_tree(root: &Path, seed: u64) {
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, data).expect("write");
    };
    for i in 0..200u64 {
        w(
            &format!("small/d{}/f{i}.txt", i % 7),
            format!("small file {i} seed {seed}\n")
                .repeat((i % 50 + 1) as usize)
                .as_bytes(),
        );
    }
    w(
        "big/text.log",
        "log line with some repetition 0123456789\n"
            .repeat(120_000)
            .as_bytes(),
    );
    let mut noise = vec![0u8; 3 << 20];
    for (i, b) in noise.iter_mut().enumerate() {
        *b = PatternReader::matches_byte(seed, i as u64);
    }
    w("big/random.bin", &noise);
    w("empty", b"");
    w("unicode/Grüße 日本.txt", b"unicode name");
    let sparse = root.join("sparse.img");
    let f = fs::File::create(&sparse).expect("sparse");
    f.set_len(16 << 20).expect("set_len");
    drop(f);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::OpenOptions::new().write(true).open(&sparse).expect("open");
        f.seek(SeekFrom::Start(8 << 20)).expect("seek");
        f.write_all(b"data in the middle of a hole").expect("write");
    }
    std::os::unix::fs::symlink("big/text.log", root.join("link-to-log")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).expect("symlink");
    fs::set_permissions(root.join("small/d1"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o600)).expect("chmod");
    fs::set_permissions(root.join("big/text.log"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    // Foreign ownership (works when the tests run as root; otherwise left as is).
    let _ = std::os::unix::fs::chown(root.join("unicode/Grüße 日本.txt"), Some(1234), Some(5678));
    let t = filetime::FileTime::from_unix_time(1_700_000_000 + seed as i64, 123_456_789);
    for p in ["big/random.bin", "empty", "small/d3/f3.txt"] {
        filetime::set_file_mtime(root.join(p), t).expect("mtime");
    }
    filetime::set_symlink_file_times(root.join("link-to-log"), t, t).expect("link times");
}

/// Asserts two trees hold the same entries, content, modes, owners, mtimes and link targets, and
/// that the sparse file is still sparse.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let list = |root: &Path| {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                let m = fs::symlink_metadata(&p).expect("lstat");
                if m.is_dir() {
                    stack.push(p.clone());
                }
                out.push(p.strip_prefix(root).expect("prefix").to_path_buf());
            }
        }
        out.sort();
        out
    };
    let (la, lb) = (list(a), list(b));
    assert_eq!(la, lb, "entries differ");
    for rel in la {
        let (pa, pb) = (a.join(&rel), b.join(&rel));
        let (ma, mb) = (
            fs::symlink_metadata(&pa).expect("a"),
            fs::symlink_metadata(&pb).expect("b"),
        );
        assert_eq!(ma.file_type(), mb.file_type(), "{rel:?}: type");
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{rel:?}: owner");
        if ma.file_type().is_symlink() {
            assert_eq!(
                fs::read_link(&pa).expect("a"),
                fs::read_link(&pb).expect("b"),
                "{rel:?}: link target"
            );
        } else {
            // Setuid and setgid are restored only on request (`keep_set_id`); the roundtrip
            // checks them on their own.
            assert_eq!(ma.mode() & 0o1777, mb.mode() & 0o1777, "{rel:?}: mode");
        }
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec()),
            (mb.mtime(), mb.mtime_nsec()),
            "{rel:?}: mtime"
        );
        if ma.is_file() {
            assert_eq!(ma.len(), mb.len(), "{rel:?}: size");
            assert!(
                fs::read(&pa).expect("a") == fs::read(&pb).expect("b"),
                "{rel:?}: content differs"
            );
        }
    }
    let sparse = b.join("sparse.img");
    if let Ok(m) = fs::metadata(&sparse) {
        assert!(
            m.blocks() * 512 < m.len() / 2,
            "sparse.img was restored dense ({} blocks)",
            m.blocks()
        );
    }
}

/// Backup then restore into an empty directory: the trees are identical.
pub async fn roundtrip(repo: &Repository) {
    let src = tempfile::tempdir().expect("tmp");
    make_tree(src.path(), 1);
    let m = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("backup");
    assert!(m.warnings.is_empty(), "warnings: {:?}", m.warnings);
    assert_eq!(m.stats.symlinks, 2);
    assert!(m.stats.files >= 205, "{:?}", m.stats);
    assert!(
        m.stats.stored_bytes < m.stats.bytes,
        "compression and dedup store less: {:?}",
        m.stats
    );
    let dst = tempfile::tempdir().expect("tmp");
    let target = dst.path().join("restored");
    let mut opts = VolumeRestoreOptions::new(&target);
    opts.keep_set_id = true;
    let r = restore_volume(repo, &m.id, opts).await.expect("restore");
    assert_eq!(r.files, m.stats.files);
    assert_same_tree(src.path(), &target);
    // By default setuid and setgid bits are not restored: whoever writes the location writes the
    // index, and the restore may set any owner.
    let plain = dst.path().join("plain");
    restore_volume(repo, &m.id, VolumeRestoreOptions::new(&plain))
        .await
        .expect("restore");
    let mode = |p: &Path| fs::metadata(p.join("big/text.log")).expect("stat").mode() & 0o7777;
    assert_eq!(mode(&target), 0o4755);
    assert_eq!(mode(&plain), 0o755, "setuid is dropped unless asked for");
}

/// An incremental backup reads only changed files and uploads (almost) nothing else.
pub async fn incremental(repo: &Repository) {
    let src = tempfile::tempdir().expect("tmp");
    make_tree(src.path(), 2);
    let first = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("first");
    fs::write(src.path().join("small/d2/f2.txt"), b"changed content").expect("modify");
    fs::write(src.path().join("added.txt"), b"a new file").expect("add");
    let mut opts = VolumeBackupOptions::new(src.path());
    opts.parent = Some(first.id.clone());
    let second = backup_volume(repo, opts).await.expect("second");
    assert_eq!(
        second.stats.bytes_read,
        15 + 10,
        "only the changed and new files are read: {:?}",
        second.stats
    );
    assert!(second.stats.new_chunks <= 2, "{:?}", second.stats);
    assert!(second.stats.stored_bytes < 64 * 1024, "{:?}", second.stats);
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(repo, &second.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore");
    assert_same_tree(src.path(), dst.path());
    // The same data again, without a parent, deduplicates against the location.
    let third = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("third");
    assert!(third.stats.new_chunks <= 1, "{:?}", third.stats);
}

/// Quick verify finds a deleted chunk, deep verify a flipped byte; restore refuses both.
pub async fn verify_finds_damage(repo: &Repository) {
    let src = tempfile::tempdir().expect("tmp");
    make_tree(src.path(), 3);
    let m = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("backup");
    let ok = verify(repo, Some(vec![m.id.clone()]), true, 4)
        .await
        .expect("verify");
    assert_eq!(ok[0].status, VerifyStatus::Ok, "{:?}", ok[0]);
    let entries = pxb_core::backup::volume::read_index(repo, &m.id)
        .await
        .expect("index");
    let mut chunks: Vec<ChunkId> = entries
        .iter()
        .flat_map(|e| e.slices.iter().map(|s| s.0))
        .collect();
    chunks.sort();
    chunks.dedup();
    let (gone, flipped) = (chunks[0], chunks[1]);
    repo.store().delete(&gone.path()).await.expect("delete a chunk");
    let stored = repo
        .store()
        .get(&flipped.path())
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let mut bad = stored.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x01;
    repo.store()
        .put(&flipped.path(), Bytes::from(bad), PutOptions::default())
        .await
        .expect("damage");

    let quick = verify(repo, Some(vec![m.id.clone()]), false, 4)
        .await
        .expect("quick");
    assert_eq!(quick[0].status, VerifyStatus::Missing, "{:?}", quick[0]);
    assert_eq!(quick[0].missing, vec![gone.path().to_string()]);
    let deep = verify(repo, Some(vec![m.id.clone()]), true, 4)
        .await
        .expect("deep");
    assert_eq!(deep[0].status, VerifyStatus::Corrupt, "{:?}", deep[0]);
    assert!(
        deep[0].corrupt.iter().any(|c| c.contains(&flipped.to_hex())),
        "{:?}",
        deep[0]
    );
    assert!(
        deep[0].missing.iter().any(|c| c.contains(&gone.to_hex())),
        "{:?}",
        deep[0]
    );
    let dst = tempfile::tempdir().expect("tmp");
    let err = restore_volume(repo, &m.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect_err("damaged");
    assert!(
        err.to_string().contains(&gone.to_hex()) || err.to_string().contains(&flipped.to_hex()),
        "{err}"
    );
}

/// Delete removes the commit marker first and then the backup's objects; sync sees it go.
pub async fn delete_and_sync(repo: &Repository) {
    let src = tempfile::tempdir().expect("tmp");
    fs::write(src.path().join("a"), b"one").expect("write");
    let mut state = SyncState::default();
    let before = repo.sync(&mut state).await.expect("sync").added.len();
    let a = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("a");
    let b = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("b");
    let delta = repo.sync(&mut state).await.expect("sync");
    assert_eq!(delta.added.len(), 2, "{delta:?}");
    assert!(before + 2 == state.backups.len());
    let again = repo.sync(&mut state).await.expect("sync");
    assert!(
        again.added.is_empty() && again.removed.is_empty(),
        "nothing new: {again:?}"
    );
    let deleted = repo.delete(&a.id).await.expect("delete");
    assert!(
        deleted[0].starts_with("pxb/manifests/"),
        "manifest first: {deleted:?}"
    );
    assert!(deleted.iter().any(|d| d.ends_with("/files")), "{deleted:?}");
    let delta = repo.sync(&mut state).await.expect("sync");
    assert_eq!(delta.removed, vec![a.id.clone()]);
    assert!(state.backups.contains_key(&b.id));
    assert!(
        matches!(repo.delete(&a.id).await, Err(Error::NotFound { .. })),
        "second delete"
    );
    assert!(matches!(repo.manifest(&a.id).await, Err(Error::NotFound { .. })));
}

/// GC deletes what only deleted backups referenced, past the grace period, and nothing else.
pub async fn gc_reclaims_only_garbage(store: Arc<dyn ObjectStore>) {
    let clock = ManualClock::new(SystemTime::now());
    let repo = Repository::new(store).with_clock(Arc::new(clock.clone()));
    let (s1, s2) = (
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    );
    make_tree(s1.path(), 10);
    make_tree(s2.path(), 11);
    let a = backup_volume(&repo, VolumeBackupOptions::new(s1.path()))
        .await
        .expect("a");
    let b = backup_volume(&repo, VolumeBackupOptions::new(s2.path()))
        .await
        .expect("b");
    repo.delete(&a.id).await.expect("delete a");

    let opts = GcOptions {
        grace: Duration::from_secs(3600),
        ..GcOptions::default()
    };
    let early = gc(&repo, &opts).await.expect("gc within grace");
    assert_eq!(early.deleted_chunks, 0, "young garbage is kept: {early:?}");
    assert!(early.kept_in_grace > 0, "{early:?}");

    // Ages are the store's: this machine's clock moving on makes nothing old...
    clock.advance(Duration::from_secs(7200));
    let skewed = gc(&repo, &opts).await.expect("gc with a clock ahead");
    assert_eq!(skewed.deleted_chunks, 0, "{skewed:?}");
    // ...a grace period the garbage is past does.
    let opts = GcOptions {
        grace: Duration::ZERO,
        ..opts
    };
    let dry = gc(
        &repo,
        &GcOptions {
            dry_run: true,
            ..opts.clone()
        },
    )
    .await
    .expect("dry run");
    assert!(dry.deleted_chunks > 0, "{dry:?}");
    let r = gc(&repo, &opts).await.expect("gc");
    assert_eq!(r.deleted_chunks, dry.deleted_chunks, "{r:?}");
    assert_eq!(
        r.backups as usize,
        repo.list().await.expect("list").len(),
        "every committed backup is marked"
    );
    let again = gc(&repo, &opts).await.expect("second gc");
    assert_eq!(again.deleted_chunks, 0, "nothing left to collect: {again:?}");
    let v = verify(&repo, Some(vec![b.id.clone()]), true, 4)
        .await
        .expect("verify");
    assert_eq!(
        v[0].status,
        VerifyStatus::Ok,
        "the live backup is intact: {:?}",
        v[0]
    );
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(&repo, &b.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore b");
    assert_same_tree(s2.path(), dst.path());
}

/// GC running again and again while a backup runs never removes a chunk the backup needs, even
/// when the backup's data was garbage (of a deleted backup) when it started.
pub async fn gc_concurrent_with_backup(store: Arc<dyn ObjectStore>) {
    // A machine clock far ahead: leases and ages are the store's, so it must not matter.
    let clock = ManualClock::new(SystemTime::now() + Duration::from_secs(86_400));
    let repo = Repository::new(store).with_clock(Arc::new(clock));
    let src = tempfile::tempdir().expect("tmp");
    make_tree(src.path(), 20);
    let old = backup_volume(&repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("old");
    repo.delete(&old.id)
        .await
        .expect("delete old: its chunks are now garbage");

    // No grace at all: only the leases and the commit check protect the backup's chunks.
    let opts = GcOptions {
        grace: Duration::ZERO,
        ..GcOptions::default()
    };
    let backup = backup_volume(&repo, VolumeBackupOptions::new(src.path()));
    let gcs = async {
        let mut runs = Vec::new();
        for _ in 0..20 {
            match gc(&repo, &opts).await {
                Ok(r) => runs.push(r),
                Err(Error::AlreadyExists { .. }) => {}
                Err(e) => panic!("gc failed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        runs
    };
    let (m, runs) = tokio::join!(backup, gcs);
    let m = m.expect("backup while GC runs");
    assert!(!runs.is_empty());
    let v = verify(&repo, Some(vec![m.id.clone()]), true, 4)
        .await
        .expect("verify");
    assert_eq!(
        v[0].status,
        VerifyStatus::Ok,
        "GC removed chunks of a backup in flight: {:?}",
        v[0]
    );
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(&repo, &m.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore");
    assert_same_tree(src.path(), dst.path());
}

/// Foreign, truncated and damaged objects give errors that name them, and other backups stay
/// readable.
pub async fn bad_objects_are_named(repo: &Repository) {
    let src = tempfile::tempdir().expect("tmp");
    fs::write(
        src.path().join("keep.txt"),
        b"a backup that must survive its neighbours' damage",
    )
    .expect("write");
    let good = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("good");
    let victim = backup_volume(repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("victim");
    let store = repo.store();
    let put = |p: &str, data: &'static [u8]| {
        let p = pxb_core::ObjectPath::parse(p).expect("path");
        async move {
            store
                .put(&p, Bytes::from_static(data), PutOptions::default())
                .await
                .expect("put")
        }
    };
    // A foreign object among the manifests, and one with a name that is no backup id.
    put("pxb/manifests/20200101T000000Z-deadbeef", b"not json").await;
    put("pxb/manifests/.hidden", b"x").await;
    let mut state = SyncState::default();
    let delta = repo
        .sync(&mut state)
        .await
        .expect("sync survives foreign objects");
    assert!(state.backups.contains_key(&good.id) && state.backups.contains_key(&victim.id));
    let named: Vec<&str> = delta.unreadable.iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        named.contains(&"pxb/manifests/20200101T000000Z-deadbeef"),
        "{named:?}"
    );
    let bad_id = pxb_core::backup::BackupId::parse("20200101T000000Z-deadbeef").expect("id");
    let err = repo.manifest(&bad_id).await.expect_err("garbage manifest");
    assert!(
        matches!(err, Error::Corrupt { .. })
            && err
                .to_string()
                .contains("pxb/manifests/20200101T000000Z-deadbeef"),
        "{err}"
    );
    // A manifest of an unknown format version.
    put(
        "pxb/manifests/20200101T000000Z-00000002",
        br#"{"format": 2, "id": "20200101T000000Z-00000002"}"#,
    )
    .await;
    let id2 = pxb_core::backup::BackupId::parse("20200101T000000Z-00000002").expect("id");
    let err = repo.manifest(&id2).await.expect_err("future format");
    assert!(err.to_string().contains("format 2 is not supported"), "{err}");
    // A truncated file index.
    let index = victim.id.object_path("files").expect("path");
    let bytes = store
        .get(&index)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    store
        .put(&index, bytes.slice(..bytes.len() / 2), PutOptions::default())
        .await
        .expect("truncate");
    let dst = tempfile::tempdir().expect("tmp");
    let err = restore_volume(repo, &victim.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect_err("truncated");
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains(index.as_str()),
        "{err}"
    );
    // Verify names the damage; the good backup still restores.
    let reports = verify(
        repo,
        Some(vec![good.id.clone(), victim.id.clone(), bad_id.clone()]),
        true,
        4,
    )
    .await
    .expect("verify");
    assert_eq!(reports[0].status, VerifyStatus::Ok, "{:?}", reports[0]);
    assert_eq!(reports[1].status, VerifyStatus::Corrupt, "{:?}", reports[1]);
    assert_eq!(reports[2].status, VerifyStatus::Corrupt, "{:?}", reports[2]);
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(repo, &good.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("the good backup restores");
    assert_eq!(
        fs::read(dst.path().join("keep.txt")).expect("read"),
        fs::read(src.path().join("keep.txt")).expect("read")
    );
    // GC refuses to sweep when it cannot know what a backup references: unreadable manifests...
    let err = gc(repo, &GcOptions::default()).await.expect_err("gc must stop");
    assert!(
        err.to_string().contains("GC stopped before deleting anything")
            && err.to_string().contains("deadbeef"),
        "{err}"
    );
    // ... which `delete` removes even though they are damaged ...
    repo.delete(&bad_id).await.expect("delete a damaged manifest");
    repo.delete(&id2).await.expect("delete a future-format manifest");
    store
        .delete(&pxb_core::ObjectPath::parse("pxb/manifests/.hidden").expect("p"))
        .await
        .expect("delete");
    // ... and unreadable file indexes.
    let err = gc(repo, &GcOptions::default()).await.expect_err("gc must stop");
    assert!(
        err.to_string().contains("GC stopped before deleting anything")
            && err.to_string().contains(victim.id.as_str()),
        "{err}"
    );
    repo.delete(&victim.id).await.expect("delete the victim");
    gc(repo, &GcOptions::default())
        .await
        .expect("gc runs again once the damage is gone");
}

/// Kubernetes resources round-trip through the store: restored objects equal the originals once
/// both are stripped, objects Kubernetes re-creates are not restored, and dependencies come along.
pub async fn resources_roundtrip(store: Arc<dyn ObjectStore>) {
    use pxb_core::backup::resources::{
        ResourceBackupOptions, backup_namespace_resources, restore_namespace_resources,
    };
    use pxb_core::resources::{
        InMemoryCluster, ResourceSelector, ResourceSource, RestoreOptions, strip_server_fields,
        well_known_api_resources,
    };
    use serde_json::json;
    let source = InMemoryCluster::new();
    let seeds = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "uid": "ns-uid"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "shop", "uid": "u1", "resourceVersion": "7", "labels": {"app": "shop"}}, "data": {"k": "v"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "shop"}, "type": "Opaque", "data": {"p": "c2VjcmV0"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "shop-sa", "namespace": "shop"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-sa-token", "namespace": "shop", "annotations": {"kubernetes.io/service-account.name": "shop-sa"}}, "type": "kubernetes.io/service-account-token"}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": "shop"}, "data": {"ca.crt": "x"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "generation": 3, "managedFields": [{}]}, "spec": {"replicas": 2}, "status": {"readyReplicas": 2}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"selector": {"app": "web"}, "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 80}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-abc", "namespace": "shop", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid", "controller": true}]}, "spec": {}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "shop"}, "spec": {"storageClassName": "fast", "volumeName": "pv-data", "resources": {"requests": {"storage": "1Gi"}}}}),
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-data"}, "spec": {"storageClassName": "fast", "claimRef": {"namespace": "shop", "name": "data"}, "capacity": {"storage": "1Gi"}}}),
        json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"}, "provisioner": "disk.csi.azure.com"}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "other", "namespace": "elsewhere"}, "data": {}}),
    ];
    for s in &seeds {
        source.seed(s.clone()).expect("seed");
    }
    let repo = Repository::new(store);
    let opts = ResourceBackupOptions {
        selector: ResourceSelector {
            namespaces: vec!["shop".into()],
            ..ResourceSelector::default()
        },
        cluster: Some("shoot-a".into()),
        tag: None,
        volumes: Vec::new(),
    };
    let (manifest, stats) = backup_namespace_resources(&repo, &source, &opts)
        .await
        .expect("backup resources");
    assert_eq!(manifest.namespaces, vec!["shop".to_string()]);
    let listed = repo.list().await.expect("list");
    let summary = listed
        .iter()
        .find(|s| s.id == manifest.id)
        .expect("the resource backup is listed");
    assert_eq!(
        (summary.kind, summary.items),
        (pxb_core::backup::BackupKind::Resources, stats.objects)
    );
    let v = verify(&repo, Some(vec![manifest.id.clone()]), true, 2)
        .await
        .expect("verify");
    assert_eq!(v[0].status, VerifyStatus::Ok, "{:?}", v[0]);
    let target = InMemoryCluster::new();
    let report = restore_namespace_resources(&repo, &manifest.id, &target, &RestoreOptions::default())
        .await
        .expect("restore");
    assert_eq!(report.failed, 0, "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(
        report.created, stats.objects,
        "every archived object (dependencies included) is created: {stats:?}"
    );
    assert_eq!(
        stats.dependencies.values().sum::<u64>(),
        3,
        "namespace, PV and StorageClass recorded: {stats:?}"
    );
    let kinds = well_known_api_resources();
    let restored_names: Vec<String> = target
        .objects()
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect();
    for s in &seeds {
        let obj = pxb_core::resources::ResourceObject::new(s.clone()).expect("object");
        let res = kinds.iter().find(|r| r.kind == obj.kind()).expect("known kind");
        let got = ResourceSource::get(&target, res, obj.namespace(), obj.name())
            .await
            .expect("get");
        let skipped = ["shop-sa-token", "kube-root-ca.crt", "web-abc", "other"].contains(&obj.name());
        match (skipped, got) {
            (true, None) => {}
            (true, Some(_)) => panic!("{} should not have been restored: {restored_names:?}", obj.name()),
            (false, None) => panic!(
                "{}/{} was not restored: {restored_names:?}",
                obj.kind(),
                obj.name()
            ),
            (false, Some(mut got)) => {
                let mut want = obj.clone();
                strip_server_fields(res, &mut want);
                strip_server_fields(res, &mut got);
                assert_eq!(
                    got,
                    want,
                    "{}/{} differs after the round trip",
                    obj.kind(),
                    obj.name()
                );
            }
        }
    }
}

async fn names(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let page = store.list(prefix, None, 5000).await.expect("list");
    page.objects.into_iter().map(|m| m.path.to_string()).collect()
}

/// Format 2: a compaction folds every marker into packs; the backups are listed, restored,
/// verified, deleted and collected from them as from markers.
pub async fn packs_serve_what_they_fold(store: Arc<dyn ObjectStore>) {
    let repo = Repository::new(store.clone());
    let src = tempfile::tempdir().expect("tmp");
    make_tree(src.path(), 21);
    let a = backup_volume(&repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("a");
    fs::write(src.path().join("small/new.txt"), b"new").expect("write");
    let b = backup_volume(&repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("b");
    assert_eq!(
        repo.open().await.expect("config").format,
        2,
        "a new location is of format 2"
    );
    let mut state = SyncState::default();
    repo.sync(&mut state).await.expect("sync");
    let before: Vec<_> = state.backups.keys().cloned().collect();

    let r = compact_now(&repo).await.expect("compact");
    assert!(r.folded >= 2 && r.skipped.is_empty(), "{r:?}");
    assert!(
        names(store.as_ref(), layout::MANIFESTS).await.is_empty(),
        "every marker folded"
    );
    assert!(!names(store.as_ref(), layout::PACKS).await.is_empty());
    let mut fresh = SyncState::default();
    repo.sync(&mut fresh).await.expect("sync");
    assert_eq!(fresh.backups.keys().cloned().collect::<Vec<_>>(), before);
    let again = repo.sync(&mut state).await.expect("sync");
    assert!(again.added.is_empty() && again.removed.is_empty(), "{again:?}");

    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(&repo, &b.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore from a pack");
    assert_same_tree(src.path(), dst.path());
    let v = verify(&repo, Some(vec![a.id.clone(), b.id.clone()]), true, 4)
        .await
        .expect("verify");
    assert!(v.iter().all(|r| r.status == VerifyStatus::Ok), "{v:?}");

    repo.delete(&a.id).await.expect("delete a packed backup");
    let delta = repo.sync(&mut state).await.expect("sync");
    assert_eq!(delta.removed, vec![a.id.clone()]);
    assert!(matches!(repo.manifest(&a.id).await, Err(Error::NotFound { .. })));
    let tombstone = format!("{}{}", layout::TOMBSTONES, a.id);
    assert!(
        names(store.as_ref(), layout::TOMBSTONES)
            .await
            .contains(&tombstone)
    );
    let r = gc(&repo, &GcOptions::default()).await.expect("gc");
    let c = r.compaction.expect("GC compacts a format-2 location");
    assert_eq!(c.dropped, 1, "{c:?}");
    let mut fresh = SyncState::default();
    repo.sync(&mut fresh).await.expect("sync");
    assert!(!fresh.backups.contains_key(&a.id) && fresh.backups.contains_key(&b.id));
}

/// The ids of every backup the location lists, oldest first.
async fn ids(repo: &Repository) -> Vec<BackupId> {
    repo.list()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.id)
        .collect()
}

/// A compaction that folds every marker, however young.
async fn compact_now(repo: &Repository) -> Result<CompactReport, Error> {
    compact(
        repo,
        &CompactOptions {
            min_age: Duration::ZERO,
        },
    )
    .await
}

/// A location of format 1 (made by an earlier pxb) is used as before: backups, incremental,
/// list, restore, verify, delete and GC, with no pack and no tombstone ever written; then it is
/// upgraded to format 2 and its backups are folded into packs and still restore. Needs an empty
/// store.
pub async fn format_1_location(store: Arc<dyn ObjectStore>) {
    let config = RepoConfig {
        format: 1,
        ..RepoConfig::default()
    };
    store
        .put(
            &pxb_core::ObjectPath::parse(layout::CONFIG).expect("path"),
            serde_json::to_vec(&config).expect("config").into(),
            PutOptions::create(),
        )
        .await
        .expect("config of format 1");
    let repo = Repository::new(store.clone());
    let src = tempfile::tempdir().expect("tmp");
    make_tree(src.path(), 31);
    let a = backup_volume(&repo, VolumeBackupOptions::new(src.path()))
        .await
        .expect("a");
    fs::write(src.path().join("small/changed.txt"), b"changed").expect("write");
    let mut opts = VolumeBackupOptions::new(src.path());
    opts.parent = Some(a.id.clone());
    let b = backup_volume(&repo, opts).await.expect("incremental");
    assert_eq!(b.parent.as_ref(), Some(&a.id), "incremental to a");
    let listed = ids(&repo).await;
    let mut both = vec![a.id.clone(), b.id.clone()];
    both.sort();
    assert_eq!(listed, both);
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(&repo, &b.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore");
    assert_same_tree(src.path(), dst.path());
    let v = verify(&repo, None, true, 4).await.expect("verify");
    assert!(
        v.len() == 2 && v.iter().all(|r| r.status == VerifyStatus::Ok),
        "{v:?}"
    );

    let r = compact_now(&repo).await.expect("compact");
    assert!(r.not_done.is_some() && r.folded == 0, "{r:?}");
    repo.delete(&a.id).await.expect("delete");
    let r = gc(
        &repo,
        &GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        },
    )
    .await
    .expect("gc");
    assert!(r.compaction.as_ref().is_some_and(|c| c.folded == 0), "{r:?}");
    assert_eq!(repo.list().await.expect("list").len(), 1);
    assert!(names(store.as_ref(), layout::PACKS).await.is_empty());
    assert!(names(store.as_ref(), layout::TOMBSTONES).await.is_empty());
    assert_eq!(
        names(store.as_ref(), layout::MANIFESTS).await,
        vec![b.id.manifest_path().to_string()]
    );
    assert_eq!(
        repo.open().await.expect("config").format,
        1,
        "the location stays of format 1"
    );
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(&repo, &b.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore after GC");
    assert_same_tree(src.path(), dst.path());

    // Upgraded to format 2: the old marker is folded into a pack and still restores; a delete
    // leaves a tombstone; a second upgrade changes nothing.
    assert_eq!(repo.upgrade().await.expect("upgrade"), 1);
    assert_eq!(repo.open().await.expect("config").format, 2);
    assert_eq!(repo.upgrade().await.expect("upgrade again"), 2);
    fs::write(src.path().join("small/changed.txt"), b"changed after the upgrade").expect("write");
    let mut opts = VolumeBackupOptions::new(src.path());
    opts.parent = Some(b.id.clone());
    let c = backup_volume(&repo, opts)
        .await
        .expect("backup after the upgrade");
    let r = compact_now(&repo).await.expect("compact after the upgrade");
    assert!(r.not_done.is_none() && r.folded == 2, "{r:?}");
    assert!(names(store.as_ref(), layout::MANIFESTS).await.is_empty());
    let listed = ids(&repo).await;
    let mut both = vec![b.id.clone(), c.id.clone()];
    both.sort();
    assert_eq!(listed, both, "both backups listed from their pack");
    let dst = tempfile::tempdir().expect("tmp");
    restore_volume(&repo, &c.id, VolumeRestoreOptions::new(dst.path()))
        .await
        .expect("restore after the upgrade");
    assert_same_tree(src.path(), dst.path());
    repo.delete(&b.id).await.expect("delete after the upgrade");
    assert_eq!(
        names(store.as_ref(), layout::TOMBSTONES).await.len(),
        1,
        "a delete in format 2 leaves a tombstone"
    );
    let listed = ids(&repo).await;
    assert_eq!(listed, vec![c.id.clone()]);
}

/// Runs every scenario against a store (needs an empty store). The damaging scenario runs last:
/// chunks are shared by content, so damage it injects would reach later backups.
pub async fn run_all(store: Arc<dyn ObjectStore>) {
    let repo = Repository::new(store.clone());
    resources_roundtrip(store.clone()).await;
    roundtrip(&repo).await;
    incremental(&repo).await;
    delete_and_sync(&repo).await;
    packs_serve_what_they_fold(store.clone()).await;
    gc_reclaims_only_garbage(store.clone()).await;
    gc_concurrent_with_backup(store).await;
    bad_objects_are_named(&repo).await;
    verify_finds_damage(&repo).await;
}
