//! How a finished Rust future reaches its asyncio future, without a thread per await.
//!
//! pyo3-async-runtimes completes every awaitable through `spawn_blocking` plus
//! `call_soon_threadsafe`: a blocking-pool thread attaches to the interpreter per completion,
//! so 1,000 concurrent awaits grow the process to ~500 threads, and Python objects are dropped
//! on bare tokio threads (PyO3's deferred-decref pool, a lock a fork can leave held).
//!
//! Here each asyncio loop gets one [`Completer`] per process: tokio tasks push finished results
//! onto its queue and wake the loop only when the queue was empty; the loop drains the whole
//! batch on a single wake, attached to the interpreter. Every Python object a task carries
//! travels back through that queue, so none is ever dropped off the GIL: a cancelled future's
//! task is told to stop (not aborted) and hands its objects back the same way.
//!
//! The wake-up, chosen per loop ([`Wake`]):
//!
//! * a pipe the loop watches with `add_reader` (Unix: selector loops and uvloop);
//! * `loop.call_soon_threadsafe(completer)` where the loop cannot watch a pipe: a loop whose
//!   `add_reader` raises `NotImplementedError` (Windows' `ProactorEventLoop`, some custom loops)
//!   and every loop on Windows (a selector loop there watches sockets only). The tokio thread
//!   that pushes the first item of a batch attaches to the interpreter for that one call; the
//!   rest of the batch rides on the same wake-up. Nothing is dropped there but the call's own
//!   temporaries, attached.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use pyo3::exceptions::{PyNotImplementedError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use pyo3::{intern, IntoPyObjectExt};
use pyo3_async_runtimes::err::RustPanic;
use pyo3_async_runtimes::TaskLocals;

use super::TASK_LOCALS;
use crate::sys::wake::Pipe;
use crate::ForkLocal;

/// Turns a finished future's output into the value (or exception) for its asyncio future.
type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A result on its way back to its asyncio future.
struct Done {
    future: Py<PyAny>,
    /// Kept so the last reference to the loop is dropped here, attached, not on a tokio thread.
    _locals: TaskLocals,
    /// A future that was cancelled or panicked, with whatever Python objects it captured.
    _abandoned: Option<Box<dyn Send>>,
    outcome: Outcome,
}

/// `(loop.call_soon_threadsafe, the loop's completer)`.
type Scheduler = (Py<PyAny>, Py<Completer>);

/// How the first result of a batch wakes the loop.
enum Wake {
    /// The loop watches the pipe's read end with `add_reader`.
    Pipe(Pipe),
    /// `(loop.call_soon_threadsafe, completer)`, for a loop that cannot watch a pipe. Taken out
    /// (attached) when the loop is forgotten, so a queue never holds a Python object when its
    /// last reference goes away on a tokio thread.
    Soon(Mutex<Option<Scheduler>>),
}

/// The half of a completer that tokio tasks hold.
struct Queue {
    /// `None` once the loop is gone: late results are then dropped by their own task, attached.
    done: Mutex<Option<Vec<Done>>>,
    wake: Wake,
}

impl Queue {
    fn new(wake: Wake) -> Self {
        Queue {
            done: Mutex::new(Some(Vec::new())),
            wake,
        }
    }

    fn wake(&self) {
        match &self.wake {
            Wake::Pipe(pipe) => pipe.wake(),
            Wake::Soon(slot) => Python::attach(|py| {
                // Clone under the lock, call outside it: the call may release the GIL, and a
                // thread holding the GIL may be waiting for this lock in `close`.
                let target = slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map(|(call, completer)| (call.clone_ref(py), completer.clone_ref(py)));
                if let Some((call_soon_threadsafe, completer)) = target {
                    // Fails only once the loop is closed ("Event loop is closed"): its futures
                    // can never complete, and the batch waits in the queue until the loop is
                    // forgotten, exactly as unread bytes would wait in a pipe.
                    let _ = call_soon_threadsafe.call1(py, (completer,));
                }
            }),
        }
    }

    /// Called by the task that finished. Wakes the loop only for the first item of a batch.
    fn push(&self, done: Done) {
        let mut queue = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        match queue.as_mut() {
            Some(items) => {
                items.push(done);
                let first = items.len() == 1;
                drop(queue);
                if first {
                    self.wake();
                }
            }
            None => {
                drop(queue);
                // Rare: the loop closed while this task ran. Drop its objects attached.
                Python::attach(|_py| drop(done));
            }
        }
    }

    fn take(&self) -> Vec<Done> {
        if let Wake::Pipe(pipe) = &self.wake {
            pipe.drain();
        }
        let mut queue = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        queue.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Forgets the loop: returns what the queue held, to be dropped attached by the caller.
    fn close(&self) -> (Vec<Done>, Option<Scheduler>) {
        let done = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let wake = match &self.wake {
            Wake::Pipe(_) => None,
            Wake::Soon(slot) => slot.lock().unwrap_or_else(PoisonError::into_inner).take(),
        };
        (done.unwrap_or_default(), wake)
    }
}

/// One asyncio loop's completer in this process; its `__call__` is the loop's reader callback
/// (or the callback `call_soon_threadsafe` schedules).
#[pyclass(frozen)]
struct Completer {
    queue: Arc<Queue>,
}

#[pymethods]
impl Completer {
    /// Drains every finished result onto its asyncio future.
    fn __call__(&self, py: Python<'_>) {
        for done in self.queue.take() {
            settle(py, done);
        }
    }
}

fn settle(py: Python<'_>, done: Done) {
    let future = done.future.bind(py);
    let already = future
        .call_method0(intern!(py, "done"))
        .and_then(|d| d.is_truthy())
        .unwrap_or(true);
    if already {
        return; // cancelled from Python; the result is dropped here, attached
    }
    let outcome = (done.outcome)(py);
    let settled = match outcome {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),)),
    };
    if let Err(err) = settled {
        err.write_unraisable(py, Some(future));
    }
}

/// Per-process state of the bridge. A child builds its own and never touches its parent's.
struct Bridge {
    /// `(weak loop, its completer)`; a handful of entries at most.
    completers: Mutex<Vec<(Py<PyWeakrefReference>, Py<Completer>)>>,
    /// `asyncio.get_running_loop` and `contextvars.copy_context`, cached per process.
    /// (pyo3-async-runtimes' own caches are process-global cells that block waiters while one
    /// thread fills them: a fork at that instant would leave them blocked forever in the child.
    /// These are set, never waited on.)
    get_running_loop: OnceLock<Py<PyAny>>,
    copy_context: OnceLock<Py<PyAny>>,
}

static BRIDGE: ForkLocal<Bridge> = ForkLocal::new(|| Bridge {
    completers: Mutex::new(Vec::new()),
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
    call_cached(
        py,
        &BRIDGE.get().get_running_loop,
        "asyncio",
        "get_running_loop",
    )
}

/// A copy of the calling thread's current `contextvars` context.
pub(super) fn copy_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    call_cached(
        py,
        &BRIDGE.get().copy_context,
        "contextvars",
        "copy_context",
    )
}

fn queue_for(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Queue>> {
    let py = event_loop.py();
    let bridge = BRIDGE.get();
    let mut abandoned = Vec::new();
    {
        // Held only across calls that cannot run Python code (no decref, no method call), so
        // a finaliser can never re-enter here while it is held.
        let mut completers = bridge
            .completers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (weak, completer) in completers.iter() {
            if weak.bind(py).upgrade().is_some_and(|l| l.is(event_loop)) {
                return Ok(completer.get().queue.clone());
            }
        }
        // A loop we have not seen: forget the completers of loops that died.
        completers.retain(|(weak, completer)| {
            let alive = weak.bind(py).upgrade().is_some();
            if !alive {
                abandoned.push(completer.get().queue.close());
            }
            alive
        });
    }
    drop(abandoned); // dropped attached, outside the lock
                     // Only the thread running this loop calls here for it, so registering after add_reader
                     // cannot race.
    let (queue, completer) = match watched_queue(event_loop)? {
        Some(watched) => watched,
        None => {
            let (queue, completer) = completer(py, Wake::Soon(Mutex::new(None)))?;
            if let Wake::Soon(slot) = &queue.wake {
                let call = event_loop.getattr(intern!(py, "call_soon_threadsafe"))?;
                *slot.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((call.unbind(), completer.clone_ref(py)));
            }
            (queue, completer)
        }
    };
    let weak = PyWeakrefReference::new(event_loop)?.unbind();
    bridge
        .completers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((weak, completer));
    Ok(queue)
}

/// A fresh queue woken by `wake`, and the completer that drains it.
fn completer(py: Python<'_>, wake: Wake) -> PyResult<(Arc<Queue>, Py<Completer>)> {
    let queue = Arc::new(Queue::new(wake));
    let completer = Py::new(
        py,
        Completer {
            queue: queue.clone(),
        },
    )?;
    Ok((queue, completer))
}

/// A queue woken through a pipe the loop watches, or `None` where the loop cannot watch one
/// (no pipes on this platform, or `add_reader` raises `NotImplementedError`).
fn watched_queue(event_loop: &Bound<'_, PyAny>) -> PyResult<Option<(Arc<Queue>, Py<Completer>)>> {
    let py = event_loop.py();
    let Some(pipe) = Pipe::new().map_err(|e| PyOSError::new_err(e.to_string()))? else {
        return Ok(None);
    };
    let reader = pipe.reader();
    let (queue, completer) = completer(py, Wake::Pipe(pipe))?;
    match event_loop.call_method1(intern!(py, "add_reader"), (reader, completer.clone_ref(py))) {
        Ok(_) => Ok(Some((queue, completer))),
        Err(err) if err.is_instance_of::<PyNotImplementedError>(py) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Set by the Python future's done-callback when it is cancelled; the task stops at its next
/// poll and hands its objects back through the queue.
#[pyclass(frozen)]
struct CancelOnDone {
    cancelled: Arc<Cancel>,
}

#[derive(Default)]
struct Cancel {
    flag: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future
            .call_method0(intern!(future.py(), "cancelled"))?
            .is_truthy()?
        {
            self.cancelled.flag.store(true, Ordering::Release);
            let waker = self
                .cancelled
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        Ok(())
    }
}

/// Runs the user's future until it finishes, panics, or Python cancels it.
struct Guarded<F> {
    inner: Option<Pin<Box<F>>>,
    cancel: Arc<Cancel>,
}

enum Ending<T> {
    Finished(T),
    /// The panic message, and the future, to be dropped attached.
    Panicked(String, Box<dyn Send>),
    /// The future, to be dropped attached.
    Cancelled(Box<dyn Send>),
}

impl<F: Future + Send + 'static> Guarded<F> {
    /// Takes the unfinished future out, to be dropped attached with its Python objects.
    fn abandon(&mut self) -> Box<dyn Send> {
        match self.inner.take() {
            Some(future) => Box::new(future),
            None => Box::new(()),
        }
    }
}

impl<F: Future + Send + 'static> Future for Guarded<F> {
    type Output = Ending<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Pending; // polled after completion: never happens inside our task
        };
        if !this.cancel.flag.load(Ordering::Acquire) {
            *this
                .cancel
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        }
        if this.cancel.flag.load(Ordering::Acquire) {
            return Poll::Ready(Ending::Cancelled(this.abandon()));
        }
        match catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(value)) => {
                this.inner = None; // finished: holds nothing any more
                Poll::Ready(Ending::Finished(value))
            }
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                Poll::Ready(Ending::Panicked(message, this.abandon()))
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned())
}

/// [`future_into_py`](super::future_into_py) with explicit task locals (the loop to complete
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
    let runtime = crate::runtime().map_err(super::to_py_err)?;
    let event_loop = locals.event_loop(py);
    let queue = queue_for(&event_loop)?;
    let py_future = event_loop.call_method0(intern!(py, "create_future"))?;
    let cancel = Arc::new(Cancel::default());
    py_future.call_method1(
        intern!(py, "add_done_callback"),
        (CancelOnDone {
            cancelled: cancel.clone(),
        },),
    )?;
    let future = py_future.clone().unbind();
    let keep = locals.clone();
    let guarded = Guarded {
        inner: Some(Box::pin(fut)),
        cancel,
    };
    runtime.spawn(async move {
        let scoped = TASK_LOCALS.scope(std::cell::OnceCell::from(locals), guarded);
        let ending = scoped.await;
        let (outcome, abandoned): (Outcome, _) = match ending {
            Ending::Finished(result) => (
                Box::new(move |py| result.and_then(|value| value.into_py_any(py))),
                None,
            ),
            Ending::Panicked(message, future) => (
                Box::new(move |_py| {
                    Err(RustPanic::new_err(format!(
                        "rust future panicked: {message}"
                    )))
                }),
                Some(future),
            ),
            Ending::Cancelled(future) => (Box::new(|py| Ok(py.None())), Some(future)),
        };
        queue.push(Done {
            future,
            _locals: keep,
            _abandoned: abandoned,
            outcome,
        });
    });
    Ok(py_future)
}
