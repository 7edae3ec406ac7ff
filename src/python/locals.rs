//! The loop and `contextvars` context a bridged task belongs to ([`TaskLocals`]), as in
//! `pyo3_async_runtimes::tokio`: [`get_current_loop`], [`get_current_locals`], [`scope`] and
//! [`scope_local`].
//!
//! Task locals live in a tokio task-local, which belongs to the task that set it: nothing here
//! reads a thread-local a forking thread could carry into a child (invariant 7).

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{ContextExt, LocalContextExt, SpawnLocalExt};
use pyo3_async_runtimes::TaskLocals;

use super::{completion, ForksafeRuntime, TaskHandle, TASK_LOCALS};

impl SpawnLocalExt for ForksafeRuntime {
    /// Spawns onto the current `tokio::task::LocalSet` (panics outside one, as tokio does).
    fn spawn_local<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + 'static,
    {
        TaskHandle(Ok(tokio::task::spawn_local(fut)))
    }
}

impl LocalContextExt for ForksafeRuntime {
    fn scope_local<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R>>>
    where
        F: Future<Output = R> + 'static,
    {
        Box::pin(TASK_LOCALS.scope(OnceCell::from(locals), fut))
    }
}

/// Runs `fut` with `locals` as its task locals: inside it, [`get_current_loop`],
/// [`get_current_locals`], [`future_into_py`](super::future_into_py) and
/// [`into_future`](super::into_future) use that loop and context.
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
    match ForksafeRuntime::get_task_locals() {
        Some(locals) => Ok(locals.event_loop(py)),
        None => completion::running_loop(py),
    }
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
    match ForksafeRuntime::get_task_locals() {
        Some(locals) => Ok(locals),
        None => Ok(TaskLocals::new(completion::running_loop(py)?)
            .with_context(completion::copy_context(py)?)),
    }
}
