//! One Tokio runtime for every call of the module, and the two ways a call runs on it.
//!
//! [`block`]: the sync form. The calling thread detaches from the interpreter (other Python
//! threads run) and waits; every 100 ms it checks for signals, so Ctrl-C raises
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
pub fn block<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut task = runtime().spawn(fut);
    loop {
        let done = py.detach(|| {
            runtime().block_on(async {
                tokio::time::timeout(Duration::from_millis(100), &mut task)
                    .await
                    .ok()
            })
        });
        match done {
            Some(Ok(r)) => return r,
            Some(Err(e)) => {
                return Err(crate::errors::PxbError::new_err(format!(
                    "the operation stopped unexpectedly: {e}"
                )));
            }
            None => {
                if let Err(e) = py.check_signals() {
                    task.abort();
                    return Err(e);
                }
            }
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
