//! [`ForksafeRuntime`]: pyo3-async-runtimes' generic runtime traits over this process's runtime.
//!
//! `pyo3_async_runtimes::generic` drives every conversion it offers through these traits
//! (`Runtime`, `ContextExt`, `SpawnLocalExt`, `LocalContextExt`); implementing them over forksafe
//! makes the generic code spawn only on this process's runtime (a child's own after a fork).
//! Task locals live in a tokio task-local ([`TASK_LOCALS`]), never a thread-local.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pyo3_async_runtimes::generic::{
    self, ContextExt, LocalContextExt, Runtime as GenericRuntime, SpawnLocalExt,
};
use pyo3_async_runtimes::TaskLocals;

use crate::Error;

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
///
/// ```
/// use forksafe::python::{ForksafeRuntime, TaskHandle};
/// use pyo3_async_runtimes::generic::Runtime;
///
/// let handle: TaskHandle = ForksafeRuntime::spawn_blocking(|| {});
/// assert!(forksafe::block_on(handle).unwrap().is_ok());
/// ```
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
    /// The task locals of the bridged task being polled.
    pub(super) static TASK_LOCALS: OnceCell<TaskLocals>;
}

impl ContextExt for ForksafeRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(TASK_LOCALS.scope(OnceCell::from(locals), fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        if crate::runtime::polling_an_ancestors_future() {
            // A tokio task-local is a thread-local while its task is polled: forked from inside
            // a bridged task (or a scope in `block_on`), the child's thread still sees the
            // parent's locals, whose loop is the parent's. They are not this process's.
            return None;
        }
        TASK_LOCALS
            .try_with(|cell| cell.get().cloned())
            .unwrap_or_default()
    }
}

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
