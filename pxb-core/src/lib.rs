//! `pxb-core`: the domain types and seams of pxb, with in-memory twins and conformance suites.
//!
//! - [`store`]: the [`ObjectStore`] seam, with [`InMemory`] and [`LocalFileSystem`];
//! - [`credential`]: the [`TokenSource`] seam (where access tokens come from);
//! - [`clock`]: the [`Clock`] seam;
//! - [`location`]: backup location URLs;
//! - [`check`]: location validation (list, write, read back, delete);
//! - [`backup`]: the backup engine and on-location format.
//!
//! - [`catalog`]: the [`catalog::CatalogStore`] seam the server keeps its records in;
//! - [`cluster`]: the [`cluster::ClusterProvider`] seam (discovery and short-lived access);
//! - [`resources`]: Kubernetes resource backup and restore over the
//!   [`resources::ResourceSource`]/[`resources::ResourceSink`] seams;
//! - [`api`]: the contract between the daemons (custom resources, the agent's read API).
//!
//! This crate does no network I/O and depends on no cloud SDK. Every seam has an in-memory twin
//! and a conformance suite its implementations run.
//!
//! # Quick start: back up a directory and restore it
//!
//! ```
//! use std::sync::Arc;
//!
//! use pxb_core::LocalFileSystem;
//! use pxb_core::backup::Repository;
//! use pxb_core::backup::volume::{
//!     VolumeBackupOptions, VolumeRestoreOptions, backup_volume, restore_volume,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let work = tempfile::tempdir()?;
//! let data = work.path().join("data");
//! std::fs::create_dir(&data)?;
//! std::fs::write(data.join("hello.txt"), "hello, pxb")?;
//!
//! // A location on the local file system (an Azure Blob container works the same way).
//! let location = LocalFileSystem::new(work.path().join("location"))?;
//! let repo = Repository::new(Arc::new(location));
//!
//! let backup = backup_volume(&repo, VolumeBackupOptions::new(&data)).await?;
//! assert_eq!(repo.list().await?.len(), 1);
//!
//! let target = work.path().join("restored");
//! restore_volume(&repo, &backup.id, VolumeRestoreOptions::new(&target)).await?;
//! assert_eq!(std::fs::read_to_string(target.join("hello.txt"))?, "hello, pxb");
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod clock;
pub mod cluster;
pub mod credential;
mod error;
pub mod location;
mod path;
pub mod redact;
pub mod resources;
pub mod schedule;
pub mod store;

pub use check::{CheckOptions, CheckReport, CheckStep, StepOutcome, StepReport, check_location};
pub use clock::{Clock, ManualClock, SystemClock};
pub use credential::{AccessToken, StaticToken, TokenSource};
pub use error::{BoxError, Error, Result, describe_chain};
pub use location::LocationUrl;
pub use path::{MAX_PATH_LEN, ObjectPath};
pub use store::{
    GetResult, InMemory, ListPage, LocalFileSystem, Metadata, ObjectMeta, ObjectStore, PutMode, PutOptions,
    PutResult,
};
