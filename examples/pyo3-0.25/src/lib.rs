//! `forksafe_pyo3_025._native`: an extension on pyo3 0.25 and pyo3-async-runtimes 0.25 (LanceDB's
//! pair) whose async and sync paths survive `fork()`, without a PyO3 upgrade.
//!
//! The async path is `pyo3_async_runtimes::generic` over the runtime type that
//! `forksafe::generic_runtime!` defines here; the sync path is `forksafe::block_on` with the GIL
//! released. With the cargo feature `control` the same functions run on plain
//! `pyo3_async_runtimes::tokio` (one global runtime, built once): the negative control, whose
//! forked children hang.

use std::future::Future;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

// The one line that adopts forksafe (no argument: the expansion for pyo3-async-runtimes 0.25).
#[cfg(not(feature = "control"))]
forksafe::generic_runtime!(ForksafeRuntime);

/// A tokio timer and a subtask: both need the runtime's worker threads and its time driver,
/// which is exactly what a forked child of a global runtime no longer has.
async fn work(value: String, delay_ms: u64) -> PyResult<String> {
    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    let pid = std::process::id();
    let task = tokio::spawn(async move { format!("{value}@{pid}") });
    task.await
        .map_err(|e| PyRuntimeError::new_err(format!("subtask failed: {e}")))
}

#[cfg(not(feature = "control"))]
fn to_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::generic::future_into_py::<ForksafeRuntime, _, _>(py, fut)
}

#[cfg(feature = "control")]
fn to_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    pyo3_async_runtimes::tokio::future_into_py(py, fut)
}

#[cfg(not(feature = "control"))]
fn from_py(
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<PyObject>> + Send> {
    // Finds the awaiting coroutine's loop in the task locals the runtime type keeps.
    pyo3_async_runtimes::generic::into_future::<ForksafeRuntime>(awaitable)
}

#[cfg(feature = "control")]
fn from_py(
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl Future<Output = PyResult<PyObject>> + Send> {
    pyo3_async_runtimes::tokio::into_future(awaitable)
}

#[cfg(not(feature = "control"))]
fn block_on<T: Send>(py: Python<'_>, fut: impl Future<Output = PyResult<T>> + Send) -> PyResult<T> {
    py.allow_threads(|| forksafe::block_on(fut))
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?
}

#[cfg(feature = "control")]
fn block_on<T: Send>(py: Python<'_>, fut: impl Future<Output = PyResult<T>> + Send) -> PyResult<T> {
    py.allow_threads(|| pyo3_async_runtimes::tokio::get_runtime().block_on(fut))
}

/// Awaitable: `"{value}@{pid}"` after `delay_ms`, computed by a subtask of the runtime.
#[pyfunction]
#[pyo3(signature = (value, delay_ms = 1))]
fn echo_async(py: Python<'_>, value: String, delay_ms: u64) -> PyResult<Bound<'_, PyAny>> {
    to_py(py, work(value, delay_ms))
}

/// The same, blocking (GIL released).
#[pyfunction]
#[pyo3(signature = (value, delay_ms = 1))]
fn echo_sync(py: Python<'_>, value: String, delay_ms: u64) -> PyResult<String> {
    block_on(py, work(value, delay_ms))
}

/// Awaitable: awaits the Python awaitable `inner` from Rust (through the task locals), then
/// returns `[inner's result, "{tag}@{pid}"]`.
#[pyfunction]
fn roundtrip<'py>(
    py: Python<'py>,
    inner: Bound<'py, PyAny>,
    tag: String,
) -> PyResult<Bound<'py, PyAny>> {
    let inner = inner.unbind();
    to_py(py, async move {
        // The conversion runs inside the task, where the task locals are in scope.
        let fut = Python::with_gil(|py| from_py(inner.into_bound(py)))?;
        let got = fut.await?;
        let mine = work(tag, 1).await?;
        Ok((got, mine))
    })
}

/// Awaitable: `value` itself after one yield to tokio. The benchmark's trivial future
/// (benches/bridge.py, variant `generic`): it measures the bridge, not the work.
#[pyfunction]
fn echo(py: Python<'_>, value: PyObject) -> PyResult<Bound<'_, PyAny>> {
    to_py(py, async move {
        tokio::task::yield_now().await;
        Ok(value)
    })
}

/// The same, blocking (GIL released).
#[pyfunction]
fn echo_blocking(py: Python<'_>, value: PyObject) -> PyResult<PyObject> {
    block_on(py, async move {
        tokio::task::yield_now().await;
        Ok(value)
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(echo_async, m)?)?;
    m.add_function(wrap_pyfunction!(echo_sync, m)?)?;
    m.add_function(wrap_pyfunction!(roundtrip, m)?)?;
    m.add_function(wrap_pyfunction!(echo, m)?)?;
    m.add_function(wrap_pyfunction!(echo_blocking, m)?)?;
    m.add("CONTROL", cfg!(feature = "control"))?;
    Ok(())
}
