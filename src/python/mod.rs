//! The PyO3 bridge for extension authors (feature `python`).
//!
//! A drop-in for `pyo3_async_runtimes::tokio`: the same functions with the same signatures
//! (see the parity table in `docs/extension-authors.md` for the two that differ), and every
//! spawn goes through the PID guard, so an extension's awaitables keep working in a forked
//! child. Migrating is a `use` change:
//!
//! ```text
//! - use pyo3_async_runtimes::tokio::{future_into_py, get_runtime, into_future};
//! + use forksafe::python::{future_into_py, get_runtime, into_future};
//! ```
//!
//! | concept | items |
//! |---|---|
//! | Rust future → Python awaitable | [`future_into_py`], [`future_into_py_with_locals`], [`local_future_into_py`], [`local_future_into_py_with_locals`] |
//! | Python awaitable → Rust future | [`into_future`] |
//! | the loop and contextvars of a task | [`get_current_loop`], [`get_current_locals`], [`scope`], [`scope_local`] |
//! | running a future on a new or given loop | [`run`], [`run_until_complete`] |
//! | this process's runtime | [`get_runtime`], [`init`], [`block_on`] |
//! | async generators → streams (feature `unstable-streams`) | `into_stream_v1`, `into_stream_v2`, `into_stream_with_locals_v1`, `into_stream_with_locals_v2` |
//!
//! [`ForksafeRuntime`] implements `pyo3_async_runtimes::generic::{Runtime, ContextExt,
//! SpawnLocalExt, LocalContextExt}`, so the rest of pyo3-async-runtimes' generic API works on
//! top of forksafe too.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self, ContextExt, Runtime as GenericRuntime};
use pyo3_async_runtimes::TaskLocals;

use crate::Error;

mod completion;
mod local;
mod locals;
mod run;
#[cfg(feature = "unstable-streams")]
mod streams;

pub use completion::future_into_py_with_locals;
#[allow(deprecated)]
pub use local::{local_future_into_py, local_future_into_py_with_locals};
pub use locals::{get_current_locals, get_current_loop, scope, scope_local};
pub use run::{get_runtime, init, into_future, run, run_until_complete};
#[cfg(feature = "unstable-streams")]
pub use streams::{
    into_stream_v1, into_stream_v2, into_stream_with_locals_v1, into_stream_with_locals_v2,
};

/// The pyo3-async-runtimes runtime type backed by this process's forksafe runtime.
///
/// ```
/// use forksafe::python::ForksafeRuntime;
/// use pyo3_async_runtimes::generic::Runtime;
///
/// let task = ForksafeRuntime::spawn(async {});
/// forksafe::block_on(task).unwrap().unwrap();
/// ```
pub struct ForksafeRuntime;

/// Why a task spawned through [`ForksafeRuntime`] did not complete.
///
/// ```
/// use forksafe::python::{ForksafeRuntime, TaskError};
/// use pyo3_async_runtimes::generic::Runtime;
///
/// let task = ForksafeRuntime::spawn(async { panic!("boom") });
/// let err: TaskError = forksafe::block_on(task).unwrap().unwrap_err();
/// assert!(err.to_string().contains("panicked"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The task panicked or was cancelled.
    #[error("task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// This process's runtime could not be built, so the task never ran.
    #[error("task never ran: {0}")]
    Runtime(#[source] Error),
}

impl generic::JoinError for TaskError {
    fn is_panic(&self) -> bool {
        matches!(self, TaskError::Join(e) if e.is_panic())
    }

    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        match self {
            TaskError::Join(e) if e.is_panic() => e.into_panic(),
            other => Box::new(format!("{other:?}")),
        }
    }
}

/// The join handle returned by [`ForksafeRuntime`]'s spawns.
pub struct TaskHandle(Result<tokio::task::JoinHandle<()>, Option<Error>>);

impl Future for TaskHandle {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Ok(handle) => Pin::new(handle).poll(cx).map_err(TaskError::Join),
            Err(error) => Poll::Ready(Err(TaskError::Runtime(
                error.take().expect("TaskHandle polled after completion"),
            ))),
        }
    }
}

impl GenericRuntime for ForksafeRuntime {
    type JoinError = TaskError;
    type JoinHandle = TaskHandle;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        TaskHandle(crate::spawn(fut).map_err(Some))
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        TaskHandle(crate::spawn_blocking(f).map_err(Some))
    }
}

tokio::task_local! {
    static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl ContextExt for ForksafeRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(TASK_LOCALS.scope(OnceCell::from(locals), fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|cell| cell.get().cloned())
            .unwrap_or_default()
    }
}

/// Converts a Rust future into a Python awaitable, run on this process's runtime.
///
/// A drop-in for `pyo3_async_runtimes::tokio::future_into_py`. Must be called with a running
/// asyncio loop (from a coroutine, or a function called by one), or from inside another
/// bridged future. The future runs with [`get_current_locals`]: the loop and a copy of the
/// caller's `contextvars` context, so Python code it awaits through [`into_future`] sees the
/// caller's `ContextVar`s. Inside the future, [`get_current_loop`] finds the loop.
///
/// Completions reach the loop through one queue per loop, drained on a single wake (see
/// `docs/design.md`): no thread per await, and no Python object is dropped off the GIL by the
/// bridge. If Python cancels the awaitable, the future is dropped at its next poll.
///
/// # Errors
///
/// `RuntimeError` if no asyncio loop is running on the calling thread; `OSError` if the runtime
/// or the loop's wake pipe cannot be made; whatever the loop raises when asked for a future.
///
/// ```
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn answer(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
///     forksafe::python::future_into_py(py, async { Ok(42) })
/// }
/// ```
pub fn future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    future_into_py_with_locals(py, get_current_locals(py)?, fut)
}

/// Drives `fut` to completion on this process's runtime with the GIL released: the sync fast
/// path for extension authors' blocking APIs, with no Python event loop in the way.
///
/// # Errors
///
/// What the future returns; `RuntimeError` if called on a runtime thread or inside another
/// `block_on` ([`Error::InsideRuntime`]); `OSError` if the runtime cannot be built.
///
/// ```
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn answer_sync(py: Python<'_>) -> PyResult<u32> {
///     forksafe::python::block_on(py, async { Ok(42) })
/// }
/// ```
pub fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    py.detach(|| crate::block_on(fut)).map_err(to_py_err)?
}

/// Maps a forksafe [`Error`] onto the matching Python exception: `ValueError` for an invalid
/// configuration, `OSError` when the runtime cannot be built, `RuntimeError` otherwise. The same
/// mapping as `PyErr::from(error)`, so `?` works in a `#[pyfunction]`.
///
/// ```
/// use pyo3::exceptions::PyValueError;
/// use pyo3::Python;
///
/// Python::initialize();
/// Python::attach(|py| {
///     let err = forksafe::configure(forksafe::RuntimeConfig::new().worker_threads(0)).unwrap_err();
///     assert!(forksafe::python::to_py_err(err).is_instance_of::<PyValueError>(py));
/// });
/// ```
pub fn to_py_err(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::InvalidConfig { .. } => PyValueError::new_err(message),
        Error::Build { .. } => PyOSError::new_err(message),
        _ => PyRuntimeError::new_err(message),
    }
}

impl From<Error> for PyErr {
    /// As [`to_py_err`].
    fn from(error: Error) -> PyErr {
        to_py_err(error)
    }
}
