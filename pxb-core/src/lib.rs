//! `pxb-core`: the domain types and seams of pxb, with in-memory twins and conformance suites.
//!
//! - [`store`]: the [`ObjectStore`] seam, with [`InMemory`] and [`LocalFileSystem`];
//! - [`credential`]: the [`TokenSource`] seam (where access tokens come from);
//! - [`clock`]: the [`Clock`] seam;
//! - [`location`]: backup location URLs;
//! - [`check`]: location validation (list, write, read back, delete);
//! - [`backup`]: the backup engine and on-location format.
//!
//! This crate does no network I/O and depends on no cloud SDK.

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
pub use error::{BoxError, Error, Result};
pub use location::LocationUrl;
pub use path::{MAX_PATH_LEN, ObjectPath};
pub use store::{
    GetResult, InMemory, ListPage, LocalFileSystem, Metadata, ObjectMeta, ObjectStore, PutMode, PutOptions,
    PutResult,
};
