//! `pxb._pxb`: the native module of the Python package `pxb`.
//!
//! The same crates the daemons and the CLI are made of, for provider automation in Python:
//! volume backup and restore, location checks, verification and GC on `file://` and `azblob://`
//! locations ([`location`]); Gardener discovery and short-lived access ([`gardener`]); the typed
//! client of pxb-server's REST API ([`client`]); and the fleet simulator for testing automation
//! without Gardener ([`testing`]).
//!
//! Every I/O call has a sync form, which detaches from the interpreter while it works (other
//! Python threads run; Ctrl-C cancels it), and an `_async` form, a coroutine on one shared Tokio
//! runtime that never blocks the event loop and is cancelled with its task ([`runtime`]).
//! Errors are `pxb.PxbError` and its subclasses, one per kind of [`pxb_core::Error`]
//! ([`errors`]). The Python package (`python/pxb`) re-exports all of it with typed stubs.

pub mod client;
pub mod errors;
pub mod gardener;
pub mod location;
pub mod runtime;
pub mod testing;

use pyo3::prelude::*;

/// The module `pxb._pxb`.
#[pymodule]
fn _pxb(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    location::register(m)?;
    gardener::register(m)?;
    client::register(m)?;
    testing::register(m)?;
    Ok(())
}
