//! The object store conformance suite over the in-memory and local-filesystem stores.

use pxb_core::store::conformance;
use pxb_core::{InMemory, LocalFileSystem};

#[tokio::test]
async fn in_memory_conforms() {
    conformance::run_all(&InMemory::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_filesystem_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalFileSystem::new(dir.path()).expect("store");
    conformance::run_all(&store).await;
    // Nothing is left in the temp area after all those writes.
    let tmp = std::fs::read_dir(dir.path().join(".pxb-tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tmp, 0, "temp files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn local_filesystem_rejects_its_reserved_prefix() {
    use pxb_core::{ObjectPath, ObjectStore, PutOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LocalFileSystem::new(dir.path()).expect("store");
    let p = ObjectPath::parse(".pxb-tmp/x").expect("valid name");
    let r = store.put(&p, bytes::Bytes::new(), PutOptions::default()).await;
    assert!(matches!(r, Err(pxb_core::Error::Invalid { .. })), "{r:?}");
    assert!(LocalFileSystem::new("relative/dir").is_err());
}
