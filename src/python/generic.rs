//! [`ForksafeRuntime`]: pyo3-async-runtimes' generic runtime traits over this process's runtime.
//!
//! `pyo3_async_runtimes::generic` drives every conversion it offers through these traits
//! (`Runtime`, `ContextExt`, `SpawnLocalExt`, `LocalContextExt`); implementing them over forksafe
//! makes the generic code spawn only on this process's runtime (a child's own after a fork).
//! Task locals live in a tokio task-local ([`TASK_LOCALS`]), never a thread-local.

use std::cell::OnceCell;
use std::future::Future;
use std::pin::Pin;

use pyo3_async_runtimes::generic::{
    self, ContextExt, LocalContextExt, Runtime as GenericRuntime, SpawnLocalExt,
};
use pyo3_async_runtimes::TaskLocals;

use crate::task::{self, TaskError, TaskHandle};

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

impl generic::JoinError for TaskError {
    fn is_panic(&self) -> bool {
        TaskError::is_panic(self)
    }

    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        TaskError::into_panic(self)
    }
}

impl GenericRuntime for ForksafeRuntime {
    type JoinError = TaskError;
    type JoinHandle = TaskHandle;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        task::spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        task::spawn_blocking(f)
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
        task::spawn_local(fut)
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
