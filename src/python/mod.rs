//! The PyO3 bridge for extension authors (feature `python`).
//!
//! A drop-in for `pyo3_async_runtimes::tokio`: the same functions with the same signatures
//! (see the parity table in `docs/extension-authors.md` for the two that differ), and every
//! spawn goes through the PID guard, so an extension's awaitables keep working in a forked
//! child. Migrating is a `use` change **for the runtime**:
//!
//! ```text
//! - use pyo3_async_runtimes::tokio::{future_into_py, get_runtime, into_future};
//! + use forksafe::python::{future_into_py, get_runtime, into_future};
//! ```
//!
//! # Objects built in the parent
//!
//! The `use` change makes the runtime per-process; it does not touch what your extension built
//! with it. An object built in the parent and used in a child still belongs to the parent: an
//! HTTP client's pool of keep-alive connections (the child writes into the parent's sockets and
//! hangs, or reads the parent's responses), a task or a `Handle` on the parent's runtime (its
//! threads do not exist in the child). Make each such object per-process: hold it in a
//! [`ForkLocal`](crate::ForkLocal), built with [`ForkLocal::with_init`](crate::ForkLocal::with_init)
//! from the configuration it needs; for an `object_store` store, use the fork-local connector of
//! the `forksafe::object_store` module. The guide, `docs/extension-authors.md` (section
//! "Objects built in the parent"), shows how, and how to test it: against a keep-alive server,
//! since an HTTP/1.0 server closes every connection and hides the hazard.
//!
//! | concept | items |
//! |---|---|
//! | the loop and contextvars of a task | [`scope`], [`scope_local`], [`get_current_loop`], [`get_current_locals`] |
//! | this process's runtime | [`init`], [`get_runtime`], [`block_on`] |
//! | running a future on a given or new loop | [`run_until_complete`], [`run`] |
//! | Rust future → Python awaitable | [`future_into_py_with_locals`], [`future_into_py`], [`local_future_into_py_with_locals`], [`local_future_into_py`] |
//! | Python awaitable → Rust future | [`into_future`] |
//! | async generators → streams (feature `unstable-streams`) | `into_stream_with_locals_v1`, `into_stream_v1`, `into_stream_with_locals_v2`, `into_stream_v2` |
//!
//! The functions below come in `pyo3_async_runtimes::tokio`'s order, each over the machinery in
//! this module's private files: `generic` ([`ForksafeRuntime`], pyo3-async-runtimes' generic
//! traits over this process's runtime), `locals` (which loop and context a task belongs to),
//! `completion` (spawning a future for a loop, and the queue that brings it back finished),
//! `cancel` (cancellation from Python), `run` (a future driven to its end on a loop from
//! synchronous code) and `error` (forksafe's errors as Python exceptions); the task handle and
//! its error ([`TaskHandle`], [`TaskError`]) are the crate's, shared with
//! [`generic_runtime!`](crate::generic_runtime). [`ForksafeRuntime`] implements
//! `pyo3_async_runtimes::generic::{Runtime, ContextExt, SpawnLocalExt, LocalContextExt}`, so
//! the rest of pyo3-async-runtimes' generic API works on top of forksafe too.

use std::future::Future;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self as upstream, ContextExt, LocalContextExt};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime;

use crate::config::RuntimeConfig;
use crate::error::Error;
#[cfg(feature = "unstable-streams")]
use futures_core::Stream;

mod cancel;
mod completion;
mod error;
mod generic;
mod locals;
mod run;

pub use crate::task::{TaskError, TaskHandle};
pub use generic::ForksafeRuntime;

/// Runs `fut` with `locals` as its task locals: inside it, [`get_current_loop`],
/// [`get_current_locals`], [`future_into_py`] and
/// [`into_future`] use that loop and context.
///
/// Same signature as `pyo3_async_runtimes::tokio::scope`.
///
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::TaskLocals;
///
/// Python::initialize();
/// let event_loop: Py<PyAny> = Python::attach(|py| {
///     py.import("asyncio")?.call_method0("new_event_loop").map(Bound::unbind)
/// })
/// .unwrap();
/// let locals = Python::attach(|py| TaskLocals::new(event_loop.bind(py).clone()));
/// let same = forksafe::block_on(forksafe::python::scope(locals, async move {
///     Python::attach(|py| {
///         forksafe::python::get_current_loop(py).map(|l| l.is(event_loop.bind(py)))
///     })
/// }))
/// .unwrap()
/// .unwrap();
/// assert!(same);
/// ```
pub async fn scope<F, R>(locals: TaskLocals, fut: F) -> R
where
    F: Future<Output = R> + Send + 'static,
{
    ForksafeRuntime::scope(locals, fut).await
}

/// [`scope`] for a `!Send` future (run it on a `tokio::task::LocalSet`).
///
/// Same signature as `pyo3_async_runtimes::tokio::scope_local`.
///
/// ```
/// use std::rc::Rc;
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::TaskLocals;
///
/// Python::initialize();
/// let locals = Python::attach(|py| -> PyResult<TaskLocals> {
///     let event_loop = py.import("asyncio")?.call_method0("new_event_loop")?;
///     Ok(TaskLocals::new(event_loop))
/// })
/// .unwrap();
/// let not_send = Rc::new(7);
/// let seven = forksafe::block_on(forksafe::python::scope_local(locals, async move { *not_send }));
/// assert_eq!(seven.unwrap(), 7);
/// ```
pub async fn scope_local<F, R>(locals: TaskLocals, fut: F) -> R
where
    F: Future<Output = R> + 'static,
{
    ForksafeRuntime::scope_local(locals, fut).await
}

/// The asyncio loop of the current task: the task locals' loop inside a bridged future or a
/// [`scope`], otherwise the calling thread's running loop.
///
/// Same signature as `pyo3_async_runtimes::tokio::get_current_loop`.
///
/// # Errors
///
/// `RuntimeError` when called outside a bridged task by a thread with no running loop.
///
/// ```
/// use pyo3::prelude::*;
///
/// Python::initialize();
/// Python::attach(|py| {
///     // No running loop on this thread, and not inside a bridged task.
///     assert!(forksafe::python::get_current_loop(py).is_err());
/// });
/// ```
pub fn get_current_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    locals::current_loop(py)
}

/// The task locals of the current task, or else the calling thread's running loop with a copy
/// of the current `contextvars` context (as `pyo3_async_runtimes::tokio::get_current_locals`).
///
/// # Errors
///
/// `RuntimeError` when called outside a bridged task by a thread with no running loop.
///
/// ```
/// use pyo3::prelude::*;
///
/// Python::initialize();
/// Python::attach(|py| {
///     assert!(forksafe::python::get_current_locals(py).is_err());
/// });
/// ```
pub fn get_current_locals(py: Python<'_>) -> PyResult<TaskLocals> {
    locals::current(py)
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
/// [`Error::AlreadyStarted`] once this process's runtime exists
/// (upstream silently ignores a late `init`); [`Error::InvalidConfig`]
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

/// This process's tokio runtime, built on first use in each process (a forked child builds its
/// own, with the configuration set by [`init`]).
///
/// Same signature as `pyo3_async_runtimes::tokio::get_runtime`. **Never keep the reference
/// across a fork** (in a static, a struct, a captured `Handle`): in a child it is the parent's
/// runtime, whose threads do not exist. Call `get_runtime()` again where you use it; the check
/// costs about a nanosecond.
///
/// The runtime is per-process; the objects your extension built with it are not: see
/// [objects built in the parent](self#objects-built-in-the-parent).
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
    run::until_complete(event_loop, fut)
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
    run::on_new_loop(py, fut)
}

/// [`future_into_py`] with explicit task locals (the loop to complete
/// on), like `pyo3_async_runtimes::tokio::future_into_py_with_locals`.
///
/// # Errors
///
/// `OSError` if the runtime or the loop's wake pipe cannot be made; whatever the loop raises
/// from `create_future`, `add_done_callback` or `add_reader` (except `NotImplementedError`
/// from `add_reader`: such a loop is woken with `call_soon_threadsafe`).
///
/// ```
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::TaskLocals;
///
/// #[pyfunction]
/// fn answer_on<'py>(event_loop: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
///     let py = event_loop.py();
///     forksafe::python::future_into_py_with_locals(py, TaskLocals::new(event_loop), async { Ok(42) })
/// }
/// ```
pub fn future_into_py_with_locals<F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    completion::spawn_into_py(py, locals, fut)
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
/// The runtime is per-process; the objects your extension built with it are not: see
/// [objects built in the parent](self#objects-built-in-the-parent).
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
    upstream::local_future_into_py_with_locals::<ForksafeRuntime, F, T>(py, locals, fut)
}

/// [`local_future_into_py_with_locals`] with [`get_current_locals`].
///
/// Same signature (and deprecation) as `pyo3_async_runtimes::tokio::local_future_into_py`.
///
/// # Errors
///
/// `RuntimeError` without a running loop or task locals, as for
/// [`future_into_py`].
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
    upstream::local_future_into_py_with_locals::<ForksafeRuntime, F, T>(
        py,
        get_current_locals(py)?,
        fut,
    )
}

/// Converts a Python awaitable into a Rust future, awaited on the current task's loop with its
/// `contextvars` context ([`get_current_locals`]).
///
/// Same signature as `pyo3_async_runtimes::tokio::into_future`. Call it inside a bridged future
/// (or a [`scope`]), or from a thread running an asyncio loop.
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
    upstream::into_future::<ForksafeRuntime>(awaitable)
}

#[cfg(feature = "unstable-streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-streams")))]
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
    upstream::into_stream_with_locals_v1::<ForksafeRuntime>(locals, gen)
}

#[cfg(feature = "unstable-streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-streams")))]
/// [`into_stream_with_locals_v1`] with the current task's locals
/// ([`get_current_locals`]).
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
    upstream::into_stream_v1::<ForksafeRuntime>(gen)
}

#[cfg(feature = "unstable-streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-streams")))]
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
    upstream::into_stream_with_locals_v2::<ForksafeRuntime>(locals, gen)
}

#[cfg(feature = "unstable-streams")]
#[cfg_attr(docsrs, doc(cfg(feature = "unstable-streams")))]
/// [`into_stream_with_locals_v2`] with the current task's locals
/// ([`get_current_locals`]).
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
    upstream::into_stream_v2::<ForksafeRuntime>(gen)
}

/// Drives `fut` to completion on this process's runtime with the GIL released: the sync fast
/// path for extension authors' blocking APIs, with no Python event loop in the way.
///
/// The runtime is per-process; the objects your extension built with it are not: see
/// [objects built in the parent](self#objects-built-in-the-parent).
///
/// # Errors
///
/// What the future returns; `RuntimeError` if called on a runtime thread or inside another
/// `block_on` ([`Error::InsideRuntime`]); `OSError` if the runtime cannot be built (or, in a
/// child forked on a runtime thread of its parent, where the future runs on the child's relay
/// thread while the caller waits, if that thread cannot start: one thread per process, started
/// on the first such call and reused).
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
    run::block_on(py, fut)
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
    error::to_py_err(error)
}
