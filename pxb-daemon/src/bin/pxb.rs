//! `pxb`: the command-line tool.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = pxb_daemon::cli::Cli::parse();
    if let Err(e) = pxb_daemon::init_logging(cli.default_log_filter()) {
        eprintln!("pxb: {e}");
        return ExitCode::FAILURE;
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(pxb_daemon::cli::run(cli)),
        Err(e) => {
            eprintln!("pxb: cannot start the async runtime: {e}");
            ExitCode::from(3)
        }
    }
}
