//! pxb-azure against Azurite over HTTPS: the object store conformance suite with Workload
//! Identity (through the fake Entra ID), with shared key and with SAS.

use std::time::{Duration, SystemTime};

use pxb_azure::{AzureAuth, AzureBlobStore, account_sas};
use pxb_core::store::conformance;
use pxb_tests::azurite;
use pxb_tests::fixture::{AzureFixture, CLIENT_ID};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azurite_workload_identity_conforms() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let store = AzureBlobStore::new(fx.wi_config("wi-conformance")).expect("store");
    store
        .create_container()
        .await
        .expect("create container with a bearer token");
    conformance::run_all(&store).await;
    let exchanges = fx.entra.exchanges();
    assert!(
        !exchanges.is_empty(),
        "no token exchange reached the fake Entra ID"
    );
    assert!(
        exchanges.iter().all(|e| e.granted && e.client_id == CLIENT_ID),
        "{exchanges:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azurite_shared_key_conforms() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let store = AzureBlobStore::new(fx.key_config("key-conformance")).expect("store");
    store
        .create_container()
        .await
        .expect("create container with the account key");
    conformance::run_all(&store).await;
    assert!(
        fx.entra.exchanges().is_empty(),
        "shared key must not talk to Entra ID"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azurite_shared_key_with_prefix_and_small_parts_conforms() {
    // A location under a prefix, with the smallest block size, so large objects take many blocks.
    let fx = AzureFixture::start(3600).expect("fixture");
    let mut cfg = fx.key_config("prefixed");
    cfg.prefix = "tenants/a b/ü".into();
    cfg.part_size = 1 << 20;
    cfg.concurrency = 3;
    let store = AzureBlobStore::new(cfg).expect("store");
    store.create_container().await.expect("create container");
    conformance::put_get_head_roundtrip(&store).await;
    conformance::list_paging_and_prefixes(&store).await;
    conformance::create_only_never_overwrites(&store).await;
    conformance::large_object(&store, 7 * (1 << 20) + 12345).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azurite_sas_roundtrip() {
    let fx = AzureFixture::start(3600).expect("fixture");
    let admin = AzureBlobStore::new(fx.key_config("sas")).expect("store");
    admin.create_container().await.expect("create container");
    let sas = account_sas(
        azurite::ACCOUNT,
        azurite::ACCOUNT_KEY,
        SystemTime::now() + Duration::from_secs(3600),
    )
    .expect("sas");
    let store = AzureBlobStore::new(fx.config("sas", AzureAuth::Sas { token: sas })).expect("store");
    conformance::put_get_head_roundtrip(&store).await;
    conformance::list_paging_and_prefixes(&store).await;
    conformance::ranges(&store).await;
    conformance::empty_object(&store).await;
    conformance::missing_objects(&store).await;
    conformance::concurrent_create_has_one_winner(&store).await;
}
