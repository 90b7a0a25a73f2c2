//! The pxb test harness: real components started on loopback for tests, demos and benchmarks.
//!
//! - [`tls::TestCa`]: a certificate authority and server certificates generated at test time;
//! - [`azurite::Azurite`]: the Azure Storage emulator over HTTPS with bearer-token support;
//! - [`entra::FakeEntra`]: an Entra ID token endpoint that performs the Workload Identity
//!   (client-assertion) exchange and checks the assertion against the projected token file;
//! - [`jwt`]: unsigned JWTs shaped like Kubernetes service-account tokens;
//! - [`sim::Fleet`]: the fleet simulator (a Gardener garden and one Kubernetes API per shoot).
//!
//! Every component listens on 127.0.0.1 on a port it picks, and is stopped by its own process id
//! or task when its handle is dropped. A component that cannot start is an error, never a skip.

pub mod azurite;
pub mod bench;
pub mod engine;
pub mod entra;
pub mod fixture;
pub mod jwt;
pub mod server;
pub mod shoots;
pub mod sim;
pub mod tls;

use std::net::TcpListener;
use std::path::PathBuf;

/// The workspace root (where `Cargo.lock` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A free loopback port, chosen by the kernel.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
