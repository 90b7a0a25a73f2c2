//! Everything a test process logs, captured for scans (secrets must not appear in logs).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

/// Installs (once per process) a global `tracing` subscriber at `debug` that writes every log
/// line to a shared buffer, and returns the buffer. The server and agents a test runs in-process
/// log into it.
pub fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,hyper=info,rustls=info,h2=info",
            ))
            .with_ansi(false)
            .with_writer(move || Sink(writer.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

/// The captured logs so far, as text.
pub fn text() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

/// A `Write` that appends to a shared buffer: a log writer whose output a test reads back.
pub struct Sink(pub Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
