//! Helpers shared by the CLI tests.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `pxb` binary with `args` and the context file `config`, ignoring the caller's
/// `PXB_*` connection settings.
pub(crate) fn pxb(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pxb"))
        .args(args)
        .env("PXB_CONFIG", config)
        .env_remove("PXB_TOKEN")
        .env_remove("PXB_SERVER")
        .env_remove("PXB_ORG")
        .env_remove("PXB_CONTEXT")
        .output()
        .expect("run pxb")
}
