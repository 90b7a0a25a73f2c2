//! `pxb`: the command-line tool.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pxb_daemon::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PXB_LOG")
                .unwrap_or_else(|_| cli.default_log_filter().into()),
        )
        .with_writer(|| pxb_daemon::RedactingWriter(std::io::stderr()))
        .init();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(pxb_daemon::cli::run(cli)),
        Err(e) => {
            eprintln!("pxb: cannot start the async runtime: {e}");
            ExitCode::from(3)
        }
    }
}
