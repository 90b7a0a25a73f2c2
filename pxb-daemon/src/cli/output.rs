//! Output helpers shared by commands: JSON documents, progress bars, byte sizes.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use pxb_core::backup::volume::{Progress, ProgressFn};
use serde::Serialize;

/// Prints `value` as one pretty JSON document.
pub(crate) fn json<T: Serialize>(value: &T) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("cannot encode the result: {e}")),
    }
}

/// Prints an error in the usual form and returns the failure code.
pub(crate) fn fail(msg: &str) -> ExitCode {
    eprintln!("pxb: {msg}");
    ExitCode::FAILURE
}

/// Prints an error, as JSON (`{"error": …, "kind": …}`) when asked, and returns the failure code.
pub(crate) fn error(as_json: bool, e: &pxb_core::Error) -> ExitCode {
    if as_json {
        println!(
            "{}",
            serde_json::json!({"error": e.to_string(), "kind": e.kind()})
        );
        ExitCode::FAILURE
    } else {
        fail(&e.to_string())
    }
}

/// Human-readable bytes.
pub(crate) fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// A progress bar on stderr when it is a terminal and JSON was not asked for.
pub(crate) struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub(crate) fn new(enabled: bool, what: &str) -> Self {
        if !enabled || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_owned());
        Self(Some(bar))
    }

    /// The callback feeding this bar.
    pub(crate) fn callback(&self) -> Option<ProgressFn> {
        let bar = self.0.clone()?;
        Some(Arc::new(move |p: &Progress| {
            bar.set_length(p.bytes_total);
            bar.set_position(p.bytes_done);
            bar.set_message(format!("{}/{} files", p.files_done, p.files_total));
        }))
    }

    pub(crate) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
