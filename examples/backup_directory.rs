//! Backs up a directory into a backup location, then lists the location's backups.
//!
//! The location is a local directory or an Azure Blob container:
//!
//! ```text
//! # A local location (created on first use):
//! cargo run -p pxb-daemon --example backup_directory -- file:///tmp/pxb-location ./some/dir
//!
//! # An Azure Blob container (with Workload Identity, or a key as below), settings from the
//! # environment as `pxb_azure::AzureConfig::from_env` documents them:
//! AZURE_STORAGE_ACCOUNT=myaccount AZURE_STORAGE_KEY=... cargo run -p pxb-daemon \
//!     --example backup_directory -- azblob://backups/cluster-1 ./some/dir --auth shared-key
//! # Against Azurite (add --create-container on first use):
//! PXB_AZURE_ENDPOINT=http://127.0.0.1:10000/devstoreaccount1 AZURE_STORAGE_KEY=<Azurite's key> \
//!     cargo run -p pxb-daemon --example backup_directory -- azblob://backups ./some/dir \
//!     --auth shared-key --create-container
//! ```
//!
//! Run it twice on the same directory: the second backup is incremental to the first and
//! uploads (almost) nothing new.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use pxb_azure::{AzureAuth, AzureBlobStore, AzureConfig};
use pxb_core::backup::Repository;
use pxb_core::backup::volume::{VolumeBackupOptions, backup_volume};
use pxb_core::{LocalFileSystem, LocationUrl, ObjectStore};

/// Backs up a directory into a location and lists the location's backups.
#[derive(Debug, Parser)]
struct Args {
    /// The location: `file:///abs/path`, `azblob://<container>[/<prefix>]`, or a local path.
    location: String,
    /// The directory to back up.
    directory: PathBuf,
    /// How to authenticate to an Azure Blob location: workload-identity, shared-key
    /// (`AZURE_STORAGE_KEY`) or sas (`AZURE_STORAGE_SAS_TOKEN`).
    #[arg(long, default_value = "workload-identity")]
    auth: String,
    /// A tag to record in the backup.
    #[arg(long)]
    tag: Option<String>,
    /// Create the Azure Blob container first if it does not exist (needs the permission to).
    #[arg(long)]
    create_container: bool,
}

/// Opens the location named on the command line as an object store.
async fn open(args: &Args) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let location = args.location.as_str();
    // A bare path is a local location too (made absolute, as locations must be).
    let url = if location.contains("://") {
        LocationUrl::parse(location)?
    } else {
        LocationUrl::File {
            root: std::path::absolute(location).with_context(|| format!("resolving {location}"))?,
        }
    };
    Ok(match url {
        LocationUrl::File { root } => Arc::new(LocalFileSystem::new(root)?),
        LocationUrl::AzBlob { container, prefix } => {
            // Account, endpoint, CA and Workload Identity settings from the environment; the
            // method as chosen with --auth (Workload Identity unless told otherwise).
            let config = AzureConfig::from_env(container)?
                .with_prefix(prefix)
                .with_auth(AzureAuth::from_env(&args.auth)?);
            let store = AzureBlobStore::new(config)?;
            if args.create_container {
                store.create_container().await?;
            }
            Arc::new(store)
        }
    })
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let source = std::fs::canonicalize(&args.directory)
        .with_context(|| format!("the directory to back up, {}", args.directory.display()))?;
    let repo = Repository::new(open(&args).await?);

    // Incremental to the newest backup of the same directory, if there is one.
    let source_name = source.display().to_string();
    let parent = repo
        .list()
        .await?
        .into_iter()
        .filter(|s| s.source.as_deref() == Some(source_name.as_str()))
        .max_by_key(|s| s.created)
        .map(|s| s.id);

    let mut options = VolumeBackupOptions::new(&source);
    options.parent = parent.clone();
    options.tag = args.tag;
    let manifest = backup_volume(&repo, options).await?;
    let stats = &manifest.stats;
    println!(
        "backed up {} as {} ({:?}{}): {} files, {} bytes; {} of {} chunks new, {} bytes stored",
        source.display(),
        manifest.id,
        manifest.status,
        parent
            .map(|p| format!(", incremental to {p}"))
            .unwrap_or_default(),
        stats.files,
        stats.bytes,
        stats.new_chunks,
        stats.chunks,
        stats.stored_bytes,
    );

    let mut backups = repo.list().await?;
    backups.sort_by_key(|s| s.created);
    println!("\n{} backup(s) in {}:", backups.len(), args.location);
    for b in backups {
        println!(
            "  {}  {:?}/{:?}  {} items  {} bytes  {}{}",
            b.id,
            b.kind,
            b.status,
            b.items,
            b.bytes,
            b.source.as_deref().unwrap_or("-"),
            b.tag.map(|t| format!("  tag={t}")).unwrap_or_default(),
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Logging to stderr (PXB_LOG, default info) with credentials redacted, a multi-thread
    // runtime, and the error's chain on stderr with exit code 1.
    pxb_daemon::run_main("backup_directory", run())
}
