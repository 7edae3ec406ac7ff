//! `!Send` futures into Python awaitables, as upstream's (deprecated) `local_future_into_py`.
//!
//! The future runs on the caller's `tokio::task::LocalSet`, so it lives on a thread the caller
//! owns. Its completion goes through pyo3-async-runtimes' generic path on forksafe's runtime (a
//! blocking-pool thread attaches and calls `call_soon_threadsafe`), not through the completion
//! queue: the queue carries `Send` results only, and these functions are deprecated upstream.

use std::future::Future;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic;
use pyo3_async_runtimes::TaskLocals;

use super::ForksafeRuntime;

/// Converts a `!Send` Rust future into a Python awaitable completed on `locals`' loop. Call it
/// from inside a `tokio::task::LocalSet` (for example `LocalSet::block_on(get_runtime(), …)`).
///
/// Same signature (and deprecation) as `pyo3_async_runtimes::tokio::local_future_into_py_with_locals`.
///
/// # Errors
///
/// Whatever creating the asyncio future on `locals`' loop raises.
///
/// ```
/// # #![allow(deprecated)]
/// use std::rc::Rc;
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::TaskLocals;
///
/// #[pyfunction]
/// fn answer_on<'py>(event_loop: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
///     let py = event_loop.py();
///     let not_send = Rc::new(42);
///     forksafe::python::local_future_into_py_with_locals(py, TaskLocals::new(event_loop), async move {
///         Ok(*not_send)
///     })
/// }
/// ```
#[deprecated(
    since = "0.1.0",
    note = "deprecated upstream (pyo3-async-runtimes 0.18): questionable real-world utility"
)]
#[allow(deprecated)]
pub fn local_future_into_py_with_locals<F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py>,
{
    generic::local_future_into_py_with_locals::<ForksafeRuntime, F, T>(py, locals, fut)
}

/// [`local_future_into_py_with_locals`] with [`get_current_locals`](super::get_current_locals).
///
/// Same signature (and deprecation) as `pyo3_async_runtimes::tokio::local_future_into_py`.
///
/// # Errors
///
/// `RuntimeError` without a running loop or task locals, as for
/// [`future_into_py`](super::future_into_py).
///
/// ```
/// # #![allow(deprecated)]
/// use std::rc::Rc;
/// use pyo3::prelude::*;
///
/// #[pyfunction]
/// fn answer(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
///     let not_send = Rc::new(42);
///     forksafe::python::local_future_into_py(py, async move { Ok(*not_send) })
/// }
/// ```
#[deprecated(
    since = "0.1.0",
    note = "deprecated upstream (pyo3-async-runtimes 0.18): questionable real-world utility"
)]
#[allow(deprecated)]
pub fn local_future_into_py<F, T>(py: Python<'_>, fut: F) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + 'static,
    T: for<'py> IntoPyObject<'py>,
{
    generic::local_future_into_py_with_locals::<ForksafeRuntime, F, T>(
        py,
        super::get_current_locals(py)?,
        fut,
    )
}
