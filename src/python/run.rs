//! This process's runtime ([`get_runtime`], [`init`]), Python awaitables as Rust futures
//! ([`into_future`]), and running a Rust future to completion on an asyncio loop ([`run`],
//! [`run_until_complete`]), as in `pyo3_async_runtimes::tokio`.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3_async_runtimes::{generic, TaskLocals};
use tokio::runtime::Runtime;

use super::ForksafeRuntime;
use crate::RuntimeConfig;

/// This process's tokio runtime, built on first use in each process (a forked child builds its
/// own, with the configuration set by [`init`]).
///
/// Same signature as `pyo3_async_runtimes::tokio::get_runtime`. **Never keep the reference
/// across a fork** (in a static, a struct, a captured `Handle`): in a child it is the parent's
/// runtime, whose threads do not exist. Call `get_runtime()` again where you use it; the check
/// costs about a nanosecond.
///
/// # Panics
///
/// When the runtime cannot be built (the OS refuses threads), as upstream's does. Use
/// [`forksafe::runtime`](crate::runtime) for a `Result`.
///
/// ```
/// let rt = forksafe::python::get_runtime();
/// assert_eq!(rt.block_on(async { 6 * 7 }), 42);
/// ```
pub fn get_runtime<'a>() -> &'a Runtime {
    match crate::runtime() {
        Ok(runtime) => runtime,
        Err(error) => panic!("Unable to build Tokio runtime: {error}"),
    }
}

/// Sets how this process's runtime, and every forked child's, is built. Call it before the
/// first use (typically in the `#[pymodule]` function).
///
/// Upstream's `init` takes a `tokio::runtime::Builder`. A builder is consumed by the process that
/// builds with it, and forksafe must rebuild the runtime in every child with its own settings
/// (multi-thread flavor, no signal or process driver, runtime-thread marker, explicit stack
/// size); so this takes the [`RuntimeConfig`] a child rebuilds from (see the parity table in
/// `docs/extension-authors.md`).
///
/// # Errors
///
/// [`Error::AlreadyStarted`](crate::Error::AlreadyStarted) once this process's runtime exists
/// (upstream silently ignores a late `init`); [`Error::InvalidConfig`](crate::Error::InvalidConfig)
/// for an out-of-range value.
///
/// ```
/// use forksafe::RuntimeConfig;
///
/// forksafe::python::init(RuntimeConfig::new().worker_threads(2).thread_name("my-ext")).unwrap();
/// assert_eq!(forksafe::python::get_runtime().metrics().num_workers(), 2);
/// assert!(forksafe::python::init(RuntimeConfig::new()).is_err()); // too late now
/// ```
pub fn init(config: RuntimeConfig) -> crate::Result<()> {
    crate::configure(config)
}

/// Converts a Python awaitable into a Rust future, awaited on the current task's loop with its
/// `contextvars` context ([`get_current_locals`](super::get_current_locals)).
///
/// Same signature as `pyo3_async_runtimes::tokio::into_future`. Call it inside a bridged future
/// (or a [`scope`](super::scope)), or from a thread running an asyncio loop.
///
/// # Errors
///
/// `RuntimeError` without task locals or a running loop; the future itself resolves to what the
/// awaitable returns or raises (`CancelledError` if it is cancelled).
///
/// ```
/// use pyo3::prelude::*;
///
/// Python::initialize();
/// let value = Python::attach(|py| {
///     forksafe::python::run(py, async {
///         let awaitable = Python::attach(|py| -> PyResult<_> {
///             let asyncio = py.import("asyncio")?;
///             forksafe::python::into_future(asyncio.call_method1("sleep", (0.01, 42))?)
///         })?;
///         let value = awaitable.await?;
///         Python::attach(|py| value.extract::<u32>(py))
///     })
/// })
/// .unwrap();
/// assert_eq!(value, 42);
/// ```
pub fn into_future(
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<Py<PyAny>>> + Send> {
    generic::into_future::<ForksafeRuntime>(awaitable)
}

/// Runs `fut` to completion on `event_loop` (which must not be running), returning its value.
/// The future runs on this process's runtime with the loop and a copy of the current
/// `contextvars` context as its task locals.
///
/// Same signature as `pyo3_async_runtimes::tokio::run_until_complete`; the result comes back
/// through forksafe's completion queue.
///
/// # Errors
///
/// What the future returns, what `run_until_complete` raises (a Rust panic surfaces as
/// `pyo3_async_runtimes.err.RustPanic`), or `RuntimeError` if the loop stopped first.
///
/// ```
/// use pyo3::prelude::*;
///
/// Python::initialize();
/// let value = Python::attach(|py| -> PyResult<u32> {
///     let event_loop = py.import("asyncio")?.call_method0("new_event_loop")?;
///     let value = forksafe::python::run_until_complete(event_loop.clone(), async { Ok(42) });
///     event_loop.call_method0("close")?;
///     value
/// })
/// .unwrap();
/// assert_eq!(value, 42);
/// ```
pub fn run_until_complete<F, T>(event_loop: Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let py = event_loop.py();
    let slot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    let locals =
        TaskLocals::new(event_loop.clone()).with_context(super::completion::copy_context(py)?);
    let awaitable = super::future_into_py_with_locals(py, locals, async move {
        let value = fut.await?;
        *filled.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        Ok(())
    })?;
    event_loop.call_method1(intern!(py, "run_until_complete"), (awaitable,))?;
    let value = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    value
        .ok_or_else(|| PyRuntimeError::new_err("the event loop stopped before the future finished"))
}

/// Runs `fut` to completion on a new asyncio loop, then shuts the loop down (async generators,
/// default executor) and closes it.
///
/// Same signature as `pyo3_async_runtimes::tokio::run`; works the same in a forked child, which
/// builds its own runtime on first use.
///
/// # Errors
///
/// As [`run_until_complete`], plus whatever creating or closing the loop raises.
///
/// ```
/// use pyo3::prelude::*;
///
/// Python::initialize();
/// let value = Python::attach(|py| {
///     forksafe::python::run(py, async {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///         Ok(42)
///     })
/// })
/// .unwrap();
/// assert_eq!(value, 42);
/// ```
pub fn run<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let event_loop = py
        .import(intern!(py, "asyncio"))?
        .call_method0(intern!(py, "new_event_loop"))?;
    let result = run_until_complete(event_loop.clone(), fut);
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
