//! Python async generators as Rust streams (feature `unstable-streams`, as upstream's).
//!
//! Each wraps pyo3-async-runtimes' generic converter over [`ForksafeRuntime`], so the tasks that
//! pull the generator run on this process's runtime (a child's own after a fork).

use futures_core::Stream;
use pyo3::prelude::*;
use pyo3_async_runtimes::{generic, TaskLocals};

use super::ForksafeRuntime;

/// Converts a Python async generator into a stream of its items, each a `PyResult` (the
/// generator's exception ends the stream with an `Err`).
///
/// Same signature as `pyo3_async_runtimes::tokio::into_stream_with_locals_v1`.
///
/// # Errors
///
/// When `gen` has no `__anext__`.
///
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::TaskLocals;
///
/// fn items(locals: TaskLocals, gen: Bound<'_, PyAny>) -> PyResult<()> {
///     let _stream = forksafe::python::into_stream_with_locals_v1(locals, gen)?;
///     Ok(())
/// }
/// ```
pub fn into_stream_with_locals_v1(
    locals: TaskLocals,
    gen: Bound<'_, PyAny>,
) -> PyResult<impl Stream<Item = PyResult<Py<PyAny>>> + 'static> {
    generic::into_stream_with_locals_v1::<ForksafeRuntime>(locals, gen)
}

/// [`into_stream_with_locals_v1`] with the current task's locals
/// ([`get_current_locals`](super::get_current_locals)).
///
/// Same signature as `pyo3_async_runtimes::tokio::into_stream_v1`.
///
/// # Errors
///
/// `RuntimeError` without task locals or a running loop; or when `gen` has no `__anext__`.
///
/// ```
/// use pyo3::prelude::*;
///
/// fn items(gen: Bound<'_, PyAny>) -> PyResult<()> {
///     let _stream = forksafe::python::into_stream_v1(gen)?;
///     Ok(())
/// }
/// ```
pub fn into_stream_v1(
    gen: Bound<'_, PyAny>,
) -> PyResult<impl Stream<Item = PyResult<Py<PyAny>>> + 'static> {
    generic::into_stream_v1::<ForksafeRuntime>(gen)
}

/// Converts a Python async generator into a stream of its items; the stream ends when the
/// generator does (an exception ends it too, after being reported by Python).
///
/// Same signature as `pyo3_async_runtimes::tokio::into_stream_with_locals_v2`.
///
/// # Errors
///
/// Whatever Python raises while setting up the generator's pump on `locals`' loop.
///
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::TaskLocals;
///
/// fn items(locals: TaskLocals, gen: Bound<'_, PyAny>) -> PyResult<()> {
///     let _stream = forksafe::python::into_stream_with_locals_v2(locals, gen)?;
///     Ok(())
/// }
/// ```
pub fn into_stream_with_locals_v2(
    locals: TaskLocals,
    gen: Bound<'_, PyAny>,
) -> PyResult<impl Stream<Item = Py<PyAny>> + 'static> {
    generic::into_stream_with_locals_v2::<ForksafeRuntime>(locals, gen)
}

/// [`into_stream_with_locals_v2`] with the current task's locals
/// ([`get_current_locals`](super::get_current_locals)).
///
/// Same signature as `pyo3_async_runtimes::tokio::into_stream_v2`.
///
/// # Errors
///
/// `RuntimeError` without task locals or a running loop, or what setting up the pump raises.
///
/// ```
/// use pyo3::prelude::*;
///
/// fn items(gen: Bound<'_, PyAny>) -> PyResult<()> {
///     let _stream = forksafe::python::into_stream_v2(gen)?;
///     Ok(())
/// }
/// ```
pub fn into_stream_v2(gen: Bound<'_, PyAny>) -> PyResult<impl Stream<Item = Py<PyAny>> + 'static> {
    generic::into_stream_v2::<ForksafeRuntime>(gen)
}
