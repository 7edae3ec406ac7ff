//! Which loop and `contextvars` context a bridged task belongs to ([`TaskLocals`]).
//!
//! Inside a bridged task they are the task's own, in a tokio task-local (`generic::TASK_LOCALS`),
//! which belongs to the task that set it. A task-local is a thread-local while its task is polled,
//! so a thread forked from inside a task would carry the parent's into the child: it is ignored
//! there (`runtime::polling_an_ancestors_future`, invariant 7). Outside one they are the calling thread's running loop and
//! a copy of its current context, through `asyncio.get_running_loop` and
//! `contextvars.copy_context`, cached per process ([`Callables`]).

use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::ContextExt;
use pyo3_async_runtimes::TaskLocals;

use super::ForksafeRuntime;
use crate::ForkLocal;

/// The Python callables the task locals come from, imported once per process.
///
/// pyo3-async-runtimes' own caches are process-global cells that block waiters while one thread
/// fills them: a fork at that instant would leave them blocked forever in the child. These are
/// set, never waited on, and a child imports its own.
struct Callables {
    get_running_loop: OnceLock<Py<PyAny>>,
    copy_context: OnceLock<Py<PyAny>>,
}

static CALLABLES: ForkLocal<Callables> = ForkLocal::new(|| Callables {
    get_running_loop: OnceLock::new(),
    copy_context: OnceLock::new(),
});

/// Calls `module.name()`, the function cached in `cache` on first use in this process.
fn call_cached<'py>(
    py: Python<'py>,
    cache: &OnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let function = match cache.get() {
        Some(function) => function,
        None => {
            // Importing may release the GIL, so never block on the cell while doing it.
            let function = py.import(module)?.getattr(name)?.unbind();
            let _ = cache.set(function);
            cache.get().expect("just set")
        }
    };
    function.bind(py).call0()
}

/// The running asyncio loop of the calling thread (`RuntimeError` if there is none).
pub(super) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let cache = &CALLABLES.get().get_running_loop;
    call_cached(py, cache, "asyncio", "get_running_loop")
}

/// A copy of the calling thread's current `contextvars` context.
pub(super) fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    call_cached(
        py,
        &CALLABLES.get().copy_context,
        "contextvars",
        "copy_context",
    )
}

/// The current task's locals, if the caller runs inside a bridged task or a `scope`.
pub(super) fn of_task() -> Option<TaskLocals> {
    ForksafeRuntime::get_task_locals()
}

/// The current task's loop, or else the calling thread's running loop.
pub(super) fn current_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    match of_task() {
        Some(locals) => Ok(locals.event_loop(py)),
        None => running_loop(py),
    }
}

/// The current task's locals, or else the calling thread's running loop with a copy of its
/// current context.
pub(super) fn current(py: Python<'_>) -> PyResult<TaskLocals> {
    match of_task() {
        Some(locals) => Ok(locals),
        None => Ok(TaskLocals::new(running_loop(py)?).with_context(copy_context(py)?)),
    }
}
