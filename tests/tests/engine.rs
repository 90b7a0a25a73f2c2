//! The backup engine's scenarios over the in-memory store, the local filesystem and Azurite with
//! Workload Identity.

use std::sync::Arc;

use pxb_azure::AzureBlobStore;
use pxb_core::{InMemory, LocalFileSystem};
use pxb_tests::engine;
use pxb_tests::fixture::AzureFixture;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_in_memory() {
    engine::run_all(Arc::new(InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_local_filesystem() {
    let dir = tempfile::tempdir().expect("tmp");
    engine::run_all(Arc::new(LocalFileSystem::new(dir.path()).expect("store"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_azurite_workload_identity() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let store = AzureBlobStore::new(fx.wi_config("engine")).expect("store");
    store.create_container().await.expect("container");
    engine::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn format_1_location_in_memory() {
    engine::format_1_location(Arc::new(InMemory::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn format_1_location_local_filesystem() {
    let dir = tempfile::tempdir().expect("tmp");
    engine::format_1_location(Arc::new(LocalFileSystem::new(dir.path()).expect("store"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn format_1_location_azurite_workload_identity() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let store = AzureBlobStore::new(fx.wi_config("engine-v1")).expect("store");
    store.create_container().await.expect("container");
    engine::format_1_location(Arc::new(store)).await;
}
