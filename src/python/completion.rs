//! How a finished Rust future reaches its asyncio future, without a thread per await.
//!
//! pyo3-async-runtimes completes every awaitable through `spawn_blocking` plus
//! `call_soon_threadsafe`: a blocking-pool thread attaches to the interpreter per completion,
//! so 1,000 concurrent awaits grow the process to ~500 threads, and Python objects are dropped
//! on bare tokio threads (PyO3's deferred-decref pool, a lock a fork can leave held).
//!
//! Here each asyncio loop gets one [`Completer`] per process: tokio tasks push finished results
//! onto its queue and write one byte to a pipe only when the queue was empty; the loop watches
//! the pipe with `add_reader` and drains the whole batch on a single wake, attached to the
//! interpreter. Every Python object a task carries travels back through that queue, so none is
//! ever dropped off the GIL: a cancelled future's task is told to stop (not aborted) and hands
//! its objects back the same way.

use std::future::Future;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use pyo3::{intern, IntoPyObjectExt};
use pyo3_async_runtimes::err::RustPanic;
use pyo3_async_runtimes::TaskLocals;

use super::TASK_LOCALS;
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

/// The half of a completer that tokio tasks hold.
struct Queue {
    /// `None` once the loop is gone: late results are then dropped by their own task, attached.
    done: Mutex<Option<Vec<Done>>>,
    wake_write: OwnedFd,
    wake_read: OwnedFd,
}

impl Queue {
    fn new() -> PyResult<Self> {
        let (read, write) = wake_pipe().map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Queue {
            done: Mutex::new(Some(Vec::new())),
            wake_write: write,
            wake_read: read,
        })
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
                    // SAFETY: writing one byte from a live buffer to a pipe we own. A full pipe
                    // (EAGAIN) already holds a pending wake-up, so the result can be ignored.
                    unsafe { libc::write(self.wake_write.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
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
        let mut buf = [0u8; 256];
        // SAFETY: reading into a live buffer of its stated length from a pipe we own.
        while unsafe {
            libc::read(
                self.wake_read.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        } > 0
        {}
        let mut queue = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        queue.as_mut().map(std::mem::take).unwrap_or_default()
    }

    fn close(&self) -> Vec<Done> {
        let mut queue = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        queue.take().unwrap_or_default()
    }
}

/// A non-blocking, close-on-exec pipe `(read, write)`. Close-on-exec from birth (`pipe2`), so a
/// concurrent fork+exec in another thread cannot carry it into an unrelated program.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn wake_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Where `pipe2` is missing (macOS): `pipe`, then the flags, every `fcntl` checked. A fork+exec
/// in between can inherit the fds; nothing better exists there.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn wake_pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe to fill.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe succeeded, so both fds are open and owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [pair.0.as_raw_fd(), pair.1.as_raw_fd()] {
        // SAFETY: plain fcntl calls on an fd we own; each result is checked.
        unsafe {
            if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags == -1 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == -1 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(pair)
}

/// One asyncio loop's completer in this process; its `__call__` is the loop's reader callback.
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
    /// `asyncio.get_running_loop`, cached per process (set, never waited on).
    get_running_loop: OnceLock<Py<PyAny>>,
}

static BRIDGE: ForkLocal<Bridge> = ForkLocal::new(|| Bridge {
    completers: Mutex::new(Vec::new()),
    get_running_loop: OnceLock::new(),
});

/// The running asyncio loop of the calling thread (`RuntimeError` if there is none).
pub(super) fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let cache = &BRIDGE.get().get_running_loop;
    let get = match cache.get() {
        Some(get) => get,
        None => {
            // Importing may release the GIL, so never block on the cell while doing it.
            let get = py.import("asyncio")?.getattr("get_running_loop")?.unbind();
            let _ = cache.set(get);
            cache.get().expect("just set")
        }
    };
    get.bind(py).call0()
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
                abandoned.extend(completer.get().queue.close());
            }
            alive
        });
    }
    drop(abandoned); // dropped attached, outside the lock
    let queue = Arc::new(Queue::new()?);
    let completer = Py::new(
        py,
        Completer {
            queue: queue.clone(),
        },
    )?;
    // Only the thread running this loop calls here for it, so registering after add_reader
    // cannot race; and a loop without add_reader fails now instead of hanging later.
    event_loop.call_method1(
        intern!(py, "add_reader"),
        (queue.wake_read.as_raw_fd(), completer.clone_ref(py)),
    )?;
    let weak = PyWeakrefReference::new(event_loop)?.unbind();
    bridge
        .completers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((weak, completer));
    Ok(queue)
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
/// from `create_future`, `add_done_callback` or `add_reader`.
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
