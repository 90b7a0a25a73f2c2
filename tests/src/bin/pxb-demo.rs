//! `pxb-demo`: pxb's main job so far, on embedded defaults, on one machine.
//!
//! It validates two backup locations the way an agent does: a local directory (the embedded default
//! location), and an Azure Blob container reached with Workload Identity, where the container is
//! Azurite over HTTPS and Entra ID is the harness's fake token endpoint. No secret is configured
//! for the second one: the only input is a projected service-account token file.

use std::process::ExitCode;

use pxb_azure::{AzureBlobStore, STORAGE_SCOPE};
use pxb_core::{CheckOptions, LocalFileSystem, check_location};
use pxb_tests::fixture::AzureFixture;

async fn demo() -> anyhow::Result<bool> {
    let opts = CheckOptions {
        scopes: vec![STORAGE_SCOPE.into()],
        ..CheckOptions::default()
    };

    let dir = tempfile::tempdir()?;
    let local = LocalFileSystem::new(dir.path())?;
    let r1 = check_location(&local.to_string(), &local, None, &opts).await;
    println!("{r1}\n");

    println!("starting Azurite (HTTPS, --oauth basic) and a fake Entra ID on 127.0.0.1 ...");
    let fx = AzureFixture::start(3600)?;
    let container = fx.container_name("demo");
    AzureBlobStore::new(fx.key_config(&container))?
        .create_container()
        .await?;
    println!(
        "federated token file {} (no storage key, no client secret)\n",
        fx.token_file().display()
    );
    let store = AzureBlobStore::new(fx.wi_config(&container))?;
    let token = store.token_source();
    let r2 = check_location(&format!("azblob://{container}"), &store, token.as_deref(), &opts).await;
    println!("{r2}\n");
    println!("Entra ID token exchanges: {}", fx.entra.exchanges().len());
    Ok(r1.passed && r2.passed)
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pxb-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(demo()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("pxb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
