//! A future driven to its end on an asyncio loop from synchronous code: `run_until_complete`
//! on a given loop, `run` on a new one that is shut down as `asyncio.run` does.

use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3_async_runtimes::TaskLocals;

use super::{completion, locals};
use crate::ForkLocal;

/// Runs `fut` on `event_loop` until it finishes, with the caller's context.
pub(super) fn until_complete<F, T>(event_loop: Bound<'_, PyAny>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let py = event_loop.py();
    let slot = Arc::new(Mutex::new(None));
    let filled = slot.clone();
    let locals = TaskLocals::new(event_loop.clone()).with_context(locals::copy_context(py)?);
    let awaitable = completion::spawn_into_py(py, locals, async move {
        let value = fut.await?;
        *filled.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
        Ok(())
    })?;
    event_loop.call_method1(intern!(py, "run_until_complete"), (awaitable,))?;
    let value = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
    value
        .ok_or_else(|| PyRuntimeError::new_err("the event loop stopped before the future finished"))
}

/// Runs `fut` on a new asyncio loop, then shuts the loop down and closes it.
pub(super) fn on_new_loop<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + Sync + 'static,
{
    let event_loop = py
        .import(intern!(py, "asyncio"))?
        .call_method0(intern!(py, "new_event_loop"))?;
    let result = until_complete(event_loop.clone(), fut);
    close(&event_loop)?;
    result
}

/// Shuts a loop down as `asyncio.run` does, then closes it.
fn close(event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = event_loop.py();
    let run = |coroutine: Bound<'_, PyAny>| -> PyResult<()> {
        event_loop.call_method1(intern!(py, "run_until_complete"), (coroutine,))?;
        Ok(())
    };
    run(event_loop.call_method0(intern!(py, "shutdown_asyncgens"))?)?;
    if event_loop.hasattr(intern!(py, "shutdown_default_executor"))? {
        run(event_loop.call_method0(intern!(py, "shutdown_default_executor"))?)?;
    }
    event_loop.call_method0(intern!(py, "close"))?;
    Ok(())
}

/// `forksafe::python::block_on`'s body: the future on this process's runtime, the GIL released.
pub(super) fn block_on<F, T>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = PyResult<T>> + Send,
    T: Send,
{
    if crate::runtime::on_inherited_runtime_thread() {
        // Forked from a tokio worker of the parent (Python called from a bridged task forked):
        // this thread still carries the parent's scheduler, so the future runs on this
        // process's relay thread, and this thread waits for it (docs/design.md, "What we take
        // from tokio").
        return py
            .detach(|| on_relay(|| crate::block_on(fut)))?
            .map_err(super::to_py_err)?;
    }
    py.detach(|| crate::block_on(fut))
        .map_err(super::to_py_err)?
}

/// A job for the relay thread: its lifetime erased (see [`on_relay`]).
type Job = Box<dyn FnOnce() + Send + 'static>;

/// One thread per process that runs `block_on` for a thread that cannot enter a runtime (a
/// thread inherited from a parent's tokio worker). Started on first use, in the process that
/// uses it; a child never touches its parent's (it is per process, and the parent's is leaked).
struct Relay {
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
}

static RELAY: ForkLocal<Relay> = ForkLocal::new(|| Relay {
    jobs: Mutex::new(None),
});

/// Runs `f` on this process's relay thread and returns what it returns, once it has run.
/// Before, each call started (and joined) a thread of its own: 1,000 calls, 1,000 threads.
fn on_relay<R: Send>(f: impl FnOnce() -> R + Send) -> PyResult<R> {
    let (done, result) = mpsc::sync_channel::<std::thread::Result<R>>(1);
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let outcome = panic::catch_unwind(AssertUnwindSafe(f));
        // The receiver is waiting below; after this send the job touches only the channel.
        let _ = done.send(outcome);
    });
    // The job borrows from this frame for `'_`. It runs on the relay thread, which runs every
    // job it receives to its end (the panics of `f` are caught inside it), and this function
    // does not return until the job has sent its outcome: `result.recv()` below. After that
    // send the job only drops its `SyncSender`, which owns no borrow. If the job cannot be
    // handed over, `send` gives it back and it is dropped here. The one way left for `recv` to
    // fail is the job being dropped unrun on the relay thread, which its loop never does;
    // should it ever happen, the process aborts rather than return with the borrow live.
    // SAFETY: so the erased lifetime never outlives this frame (the argument just above).
    let job: Job = unsafe { std::mem::transmute::<Box<dyn FnOnce() + Send + '_>, Job>(job) };
    let unsent = {
        let mut jobs = RELAY
            .get()
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let sender = match jobs.as_ref() {
            Some(sender) => sender.clone(),
            None => {
                let sender = start_relay()?;
                *jobs = Some(sender.clone());
                sender
            }
        };
        drop(jobs);
        sender.send(job).err()
    };
    if let Some(mpsc::SendError(job)) = unsent {
        drop(job); // never ran: dropped here, in this frame
        RELAY
            .get()
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        return Err(PyRuntimeError::new_err("block_on's relay thread is gone"));
    }
    match result.recv() {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panicked)) => Err(PyRuntimeError::new_err(format!(
            "block_on's future panicked: {}",
            panic_message(&*panicked)
        ))),
        Err(mpsc::RecvError) => std::process::abort(),
    }
}

/// Starts this process's relay thread; it runs each job it receives, in order.
fn start_relay() -> PyResult<mpsc::Sender<Job>> {
    let (sender, jobs) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("forksafe-block-on".into())
        .spawn(move || {
            for job in jobs {
                job();
            }
        })
        .map_err(|e| PyOSError::new_err(format!("cannot start a thread: {e}")))?;
    Ok(sender)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
