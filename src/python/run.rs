//! A future driven to its end on an asyncio loop from synchronous code: `run_until_complete`
//! on a given loop, `run` on a new one that is shut down as `asyncio.run` does.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;

use super::{completion, locals};

/// Runs `fut` on `event_loop` until it finishes, with the caller's context.
pub(super) fn until_complete<F, T>(event_loop: Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let py = event_loop.py();
    let slot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    let locals = TaskLocals::new(event_loop.clone()).with_context(locals::copy_context(py)?);
    let awaitable = completion::spawn_into_py(py, locals, async move {
        let value = fut.await?;
        *filled.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        Ok(())
    })?;
    event_loop.call_method1(intern!(py, "run_until_complete"), (awaitable,))?;
    let value = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    value
        .ok_or_else(|| PyRuntimeError::new_err("the event loop stopped before the future finished"))
}

/// Runs `fut` on a new asyncio loop, then shuts the loop down and closes it.
pub(super) fn on_new_loop<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let event_loop = py
        .import(intern!(py, "asyncio"))?
        .call_method0(intern!(py, "new_event_loop"))?;
    let result = until_complete(event_loop.clone(), fut);
    close(&event_loop)?;
    result
}

/// Shuts a loop down as `asyncio.run` does, then closes it.
fn close(event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = event_loop.py();
    let run = |coroutine: Bound<'_, PyAny>| -> PyResult<()> {
        event_loop.call_method1(intern!(py, "run_until_complete"), (coroutine,))?;
        Ok(())
    };
    run(event_loop.call_method0(intern!(py, "shutdown_asyncgens"))?)?;
    if event_loop.hasattr(intern!(py, "shutdown_default_executor"))? {
        run(event_loop.call_method0(intern!(py, "shutdown_default_executor"))?)?;
    }
    event_loop.call_method0(intern!(py, "close"))?;
    Ok(())
}

/// `forksafe::python::block_on`'s body: the future on this process's runtime, the GIL released.
pub(super) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    if crate::runtime::on_inherited_runtime_thread() {
        // Forked from a tokio worker of the parent (Python called from a bridged task forked):
        // this thread still carries the parent's scheduler, so the future runs on a fresh
        // thread of the child, joined before this returns (docs/design.md, "What we take from
        // tokio").
        return py.detach(|| {
            std::thread::scope(|scope| {
                std::thread::Builder::new()
                    .name("forksafe-block-on".into())
                    .spawn_scoped(scope, || crate::block_on(fut))
                    .map_err(|e| PyOSError::new_err(format!("cannot start a thread: {e}")))?
                    .join()
                    .map_err(|_| PyRuntimeError::new_err("block_on's thread panicked"))?
                    .map_err(super::to_py_err)?
            })
        });
    }
    py.detach(|| crate::block_on(fut))
        .map_err(super::to_py_err)?
}
