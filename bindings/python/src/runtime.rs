//! One Tokio runtime for every call of the module, and the two ways a call runs on it.
//!
//! [`block`]: the sync form. The calling thread detaches from the interpreter (other Python
//! threads run) and drives the work; every 100 ms it checks for signals, so Ctrl-C raises
//! `KeyboardInterrupt` and drops the work.
//! [`coroutine`]: the async form, an awaitable of the running event loop (pyo3's runtime bridge).
//! Cancelling the task drops the work; the loop is never blocked.

use std::future::Future;
use std::time::Duration;

use pyo3::prelude::*;

/// The shared runtime.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Runs `fut` on the shared runtime and waits for it without holding the interpreter.
///
/// The future itself is polled on the calling thread (`block_on`), as the CLI's is on its main
/// thread, and what it spawns runs on the runtime's workers: the same threads doing the same work
/// as `pxb` does (a spawned future left the calling thread idle and ran ~3 % slower on 2 cores).
/// Every 100 ms it returns to check for signals; a raised signal drops the future, which cancels
/// the work.
pub fn block<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut fut = Box::pin(fut);
    loop {
        let done = py.detach(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime().block_on(async {
                    tokio::time::timeout(Duration::from_millis(100), &mut fut)
                        .await
                        .ok()
                })
            }))
        });
        match done {
            Ok(Some(r)) => return r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                return Err(crate::errors::PxbError::new_err(format!(
                    "the operation stopped unexpectedly: {what}"
                )));
            }
            Ok(None) => py.check_signals()?,
        }
    }
}

/// An awaitable running `fut` on the shared runtime.
pub fn coroutine<'py, T, F>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, fut)
}
