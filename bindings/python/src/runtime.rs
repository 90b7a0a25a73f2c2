//! One Tokio runtime for every call of the module, and the two ways a call runs on it.
//!
//! [`block`]: the sync form. The calling thread detaches from the interpreter (other Python
//! threads run) and drives the work; every 100 ms it checks for signals, so Ctrl-C raises
//! `KeyboardInterrupt` and drops the work.
//! [`spawned`]: the body of the async form. Each `_async` method is an `async fn` of
//! `#[pymethods]` (pyo3's `experimental-async`), so calling it returns a coroutine object
//! (`asyncio.iscoroutine` is true) and nothing runs yet: `asyncio.run`, `create_task`, `gather`
//! and `await` all take it, inside or outside a running loop. When the coroutine is first
//! awaited, [`spawned`] starts the work as a task of the shared runtime and the coroutine waits
//! for that task; the event loop's thread only polls the task's handle, so the loop is never
//! blocked. Cancelling the awaiting task throws `CancelledError` into the coroutine, which drops
//! its future and with it the handle, which aborts the runtime's task: the work stops.

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
                return Err(crate::errors::PxbError::new_err(format!(
                    "the operation stopped unexpectedly: {}",
                    panic_message(&*panic)
                )));
            }
            Ok(None) => py.check_signals()?,
        }
    }
}

/// The text of a panic's payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A task of the shared runtime that is aborted when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `fut` as a task of the shared runtime and waits for it: what an `_async` method awaits.
///
/// Nothing starts before the returned future is first polled (the coroutine is awaited), and
/// dropping it (the coroutine is cancelled, closed or collected) aborts the task.
pub async fn spawned<T, F>(fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut task = AbortOnDrop(runtime().spawn(fut));
    match (&mut task.0).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(crate::errors::PxbError::new_err(format!(
            "the operation stopped unexpectedly: {}",
            panic_message(&*e.into_panic())
        ))),
        Err(_) => Err(crate::errors::PxbError::new_err("the operation was cancelled")),
    }
}
