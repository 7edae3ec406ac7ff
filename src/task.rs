//! A task of this process's runtime as pyo3-async-runtimes' generic layer sees it: its
//! [`TaskHandle`], and the [`TaskError`] that says why it did not finish. One pair serves both
//! generic runtimes: [`python::ForksafeRuntime`](crate::python) and the type
//! [`generic_runtime!`](crate::generic_runtime) expands in an extension's crate.
//!
//! # `is_panic`
//!
//! The generic layer asks [`TaskError::is_panic`] when a spawned task ends without its result:
//! on `true` it fails the awaitable with `RustPanic` (the message from
//! [`TaskError::into_panic`]); on `false` it does nothing, and the awaiting coroutine waits
//! forever. So `is_panic` is `false` only where nobody waits (tokio cancelled the task: the
//! runtime is shutting down, or the task was aborted), and `true` for every other end: the task
//! panicked, this process's runtime could not be built (the task never ran), or the handle was
//! polled again after it resolved.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::Error;

/// Why a task spawned for a generic runtime did not finish (policy: the module's `is_panic`
/// section, in the source of `src/task.rs`).
///
/// ```
/// # #[cfg(feature = "python")] {
/// use forksafe::python::{ForksafeRuntime, TaskError};
/// use pyo3_async_runtimes::generic::Runtime;
///
/// let task = ForksafeRuntime::spawn(async { panic!("boom") });
/// let err: TaskError = forksafe::block_on(task).unwrap().unwrap_err();
/// assert!(err.is_panic());
/// assert!(err.to_string().contains("panicked"));
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// tokio's: the task panicked or was cancelled.
    #[error("task failed: {0}")]
    Join(#[source] tokio::task::JoinError),
    /// This process's runtime could not be built, so the task never ran.
    #[error("task never ran: {0}")]
    Runtime(#[source] Error),
    /// The handle was polled again after it resolved.
    #[error("task handle polled after it resolved")]
    Polled,
}

impl TaskError {
    /// Whether the generic layer must fail the awaitable: `false` only for a task tokio
    /// cancelled, `true` for a panic, a runtime that could not be built, or a handle polled
    /// after it resolved (so an awaitable never stays pending for a task that will not finish).
    ///
    /// ```
    /// # #[cfg(feature = "python")] {
    /// use forksafe::python::{ForksafeRuntime, TaskError};
    /// use pyo3_async_runtimes::generic::Runtime;
    ///
    /// let err = forksafe::block_on(ForksafeRuntime::spawn(async { panic!("boom") }))
    ///     .unwrap()
    ///     .unwrap_err();
    /// assert!(err.is_panic());
    /// # }
    /// ```
    pub fn is_panic(&self) -> bool {
        match self {
            TaskError::Join(error) => error.is_panic(),
            TaskError::Runtime(_) | TaskError::Polled => true,
        }
    }

    /// The panic payload, or the error's message as one (never panics, unlike tokio's).
    ///
    /// ```
    /// # #[cfg(feature = "python")] {
    /// use forksafe::python::ForksafeRuntime;
    /// use pyo3_async_runtimes::generic::Runtime;
    ///
    /// let err = forksafe::block_on(ForksafeRuntime::spawn(async { panic!("boom") }))
    ///     .unwrap()
    ///     .unwrap_err();
    /// assert_eq!(*err.into_panic().downcast::<&str>().unwrap(), "boom");
    /// # }
    /// ```
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        match self {
            TaskError::Join(error) => match error.try_into_panic() {
                Ok(payload) => payload,
                Err(error) => Box::new(error.to_string()),
            },
            other => Box::new(other.to_string()),
        }
    }
}

/// A task of this process's runtime, or the error that kept it from being spawned; resolves to
/// `Ok(())` or the [`TaskError`].
///
/// ```
/// # #[cfg(feature = "python")] {
/// use forksafe::python::{ForksafeRuntime, TaskHandle};
/// use pyo3_async_runtimes::generic::Runtime;
///
/// let handle: TaskHandle = ForksafeRuntime::spawn_blocking(|| {});
/// assert!(forksafe::block_on(handle).unwrap().is_ok());
/// # }
/// ```
#[derive(Debug)]
pub struct TaskHandle(State);

#[derive(Debug)]
enum State {
    Task(tokio::task::JoinHandle<()>),
    Failed(Option<Error>),
}

impl Future for TaskHandle {
    type Output = Result<(), TaskError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            State::Task(task) => Pin::new(task).poll(cx).map_err(TaskError::Join),
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .map_or(TaskError::Polled, TaskError::Runtime))),
        }
    }
}

fn handle_of(spawned: crate::error::Result<tokio::task::JoinHandle<()>>) -> TaskHandle {
    TaskHandle(match spawned {
        Ok(task) => State::Task(task),
        Err(error) => State::Failed(Some(error)),
    })
}

/// `Runtime::spawn`: onto this process's runtime.
pub fn spawn<F>(fut: F) -> TaskHandle
where
    F: Future<Output = ()> + Send + 'static,
{
    handle_of(crate::runtime::spawn(fut))
}

/// `Runtime::spawn_blocking`: onto this process's blocking pool.
pub fn spawn_blocking<F>(f: F) -> TaskHandle
where
    F: FnOnce() + Send + 'static,
{
    handle_of(crate::runtime::spawn_blocking(f))
}

/// `SpawnLocalExt::spawn_local`: onto the calling thread's `LocalSet`, as pyo3-async-runtimes'
/// tokio runtime does (tokio panics outside one; that is the generic layer's contract).
pub fn spawn_local<F>(fut: F) -> TaskHandle
where
    F: Future<Output = ()> + 'static,
{
    TaskHandle(State::Task(tokio::task::spawn_local(fut)))
}
