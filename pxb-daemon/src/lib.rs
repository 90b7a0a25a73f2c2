//! `pxb-daemon`: the `pxb` command line, `pxb-agent` and `pxb-server`.
//!
//! Binaries stay thin: they parse arguments, set up logging and call into [`cli`]. Everything they
//! wire is a library type that tests build directly.

pub mod agent;
pub mod cli;
pub mod crd;
pub mod kube_cluster;
pub mod location;
pub mod server;
