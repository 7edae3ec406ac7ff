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
//! Cancellation and panics are `cancel`'s; this module only carries their endings back.
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
//!
//! A closed loop never drains its queue again, and a queued result holds its loop (through its
//! locals): so nothing but the loop itself holds the callback that drains the queue. When the
//! loop lets go of it (its selector closes, or `close` clears a scheduled wake-up that never
//! ran), the completer's `Drop` closes the queue: what it held is dropped there, attached, and
//! later results are dropped by their own task. The loop is then free to be collected. A
//! wake-up that races `close()` and lands in the closed loop's `_ready` after the clear is
//! cancelled by the thread that scheduled it (`Queue::wake`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use pyo3::exceptions::{PyNotImplementedError, PyOSError};
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;
use pyo3::{intern, IntoPyObjectExt};
use pyo3_async_runtimes::err::RustPanic;
use pyo3_async_runtimes::TaskLocals;

use super::cancel::Ending;
use crate::sys::wake::Pipe;
use crate::ForkLocal;

/// Turns a finished future's output into the value (or exception) for its asyncio future.
type Outcome = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A result on its way back to its asyncio future.
pub(super) struct Done {
    future: Py<PyAny>,
    /// The task's locals, taken back out of its task-local scope, so that the last reference to
    /// the loop is dropped here, attached, not on a tokio thread (PyO3's deferred-decref pool).
    _locals: Option<TaskLocals>,
    /// A future that was cancelled or panicked, with whatever Python objects it captured.
    _abandoned: Option<Box<dyn Send>>,
    outcome: Outcome,
}

impl Done {
    /// How a task that completes `future` (on `locals`' loop) ended, ready to be pushed: a value
    /// or error to set, a panic to raise as `RustPanic`, or nothing for a cancelled future.
    pub(super) fn new<T>(
        future: Py<PyAny>,
        locals: Option<TaskLocals>,
        ending: Ending<PyResult<T>>,
    ) -> Self
    where
        T: for<'py> IntoPyObject<'py> + Send + 'static,
    {
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
        Done {
            future,
            _locals: locals,
            _abandoned: abandoned,
            outcome,
        }
    }
}

/// How the first result of a batch wakes the loop.
enum Wake {
    /// The loop watches the pipe's read end with `add_reader`.
    Pipe(Pipe),
    /// A weak reference to a loop that cannot watch a pipe: each batch schedules a one-shot
    /// completer with `call_soon_threadsafe`. Weak, so the queue never keeps its loop alive;
    /// taken out (attached) when the queue closes, so a queue never holds a Python object when
    /// its last reference goes away on a tokio thread.
    Soon(Mutex<Option<Py<PyWeakrefReference>>>),
}

/// The half of a completer that tokio tasks hold.
pub(super) struct Queue {
    /// `None` once the loop is gone: late results are then dropped by their own task, attached.
    done: Mutex<Option<Vec<Done>>>,
    wake: Wake,
    /// The process that made this queue. A child can drop its parent's completers (the
    /// parent's loops are in its memory) but must never lock its parent's queue: a tokio thread
    /// of the parent may have held the lock at the instant of fork.
    process: u64,
}

impl Queue {
    fn new(wake: Wake) -> Self {
        Queue {
            done: Mutex::new(Some(Vec::new())),
            wake,
            process: crate::process_token(),
        }
    }

    fn wake(self: &Arc<Self>) {
        match &self.wake {
            Wake::Pipe(pipe) => pipe.wake(),
            Wake::Soon(slot) => Python::attach(|py| {
                // Upgrade under the lock, call outside it: the call may release the GIL, and a
                // thread holding the GIL may be waiting for this lock in `close`.
                let weak = slot
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
                    .map(|weak| weak.clone_ref(py));
                let Some(alive) = weak.and_then(|weak| weak.bind(py).upgrade()) else {
                    return; // closed, or the loop is gone: the result was dropped, attached
                };
                // Fails only once the loop is closed ("Event loop is closed"): the one-shot
                // completer is then dropped here, never run, and its `Drop` closes the queue.
                let scheduled = Py::new(py, Completer::one_shot(self.clone()))
                    .and_then(|c| alive.call_method1(intern!(py, "call_soon_threadsafe"), (c,)));
                // The loop may have closed while the call ran: `call_soon_threadsafe` checks
                // `_closed`, then appends to `_ready`, and `close()` sets `_closed`, then clears
                // `_ready`. Where the two interleave (they do without a GIL; with one, only at a
                // thread switch) the wake-up lands in a closed loop's `_ready` after the clear,
                // and nothing ever runs or clears it: the loop holds the completer, the completer
                // the queue, a queued result the loop, through Rust, where the collector cannot
                // see. Checked after the append, `is_closed()` is true whenever the clear may
                // already have run, so cancelling the handle then lets the completer go (its
                // `Drop` closes the queue) and the loop becomes collectable.
                if let Ok(handle) = &scheduled {
                    let closed = alive
                        .call_method0(intern!(py, "is_closed"))
                        .and_then(|closed| closed.is_truthy())
                        .unwrap_or(true);
                    if closed {
                        let _ = handle.call_method0(intern!(py, "cancel"));
                    }
                }
                drop(scheduled);
            }),
        }
    }

    /// Called by the task that finished. Wakes the loop only for the first item of a batch.
    pub(super) fn push(self: &Arc<Self>, done: Done) {
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
    fn close(&self) -> (Vec<Done>, Option<Py<PyWeakrefReference>>) {
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
/// (or the callback `call_soon_threadsafe` schedules, one per batch). Only the loop holds it.
#[pyclass(frozen)]
struct Completer {
    queue: Arc<Queue>,
    /// Scheduled for one batch (`Wake::Soon`), rather than the loop's reader for its life.
    one_shot: bool,
    ran: AtomicBool,
}

impl Completer {
    fn reader(queue: Arc<Queue>) -> Self {
        Completer {
            queue,
            one_shot: false,
            ran: AtomicBool::new(false),
        }
    }

    fn one_shot(queue: Arc<Queue>) -> Self {
        Completer {
            queue,
            one_shot: true,
            ran: AtomicBool::new(false),
        }
    }
}

#[pymethods]
impl Completer {
    /// Drains every finished result onto its asyncio future.
    fn __call__(&self, py: Python<'_>) {
        self.ran.store(true, Ordering::Relaxed);
        for done in self.queue.take() {
            settle(py, done);
        }
    }
}

impl Drop for Completer {
    /// The loop let go of its reader (it closed, or was collected), or dropped a wake-up before
    /// running it (it closed with the wake-up scheduled): nobody will drain this queue again.
    /// Runs attached (the object's deallocation), so the queued objects are released here.
    fn drop(&mut self) {
        let spent = self.one_shot && self.ran.load(Ordering::Relaxed);
        if spent || self.queue.process != crate::process_token() {
            return; // a batch already drained; or the parent's, inherited: never lock it
        }
        let leftovers = self.queue.close();
        Python::attach(|_py| drop(leftovers));
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

/// The completers of this process's loops. A child builds its own and never touches its
/// parent's.
struct Completers {
    /// `(weak loop, its completer's queue)`; a handful of entries at most. The completer itself
    /// is held by its loop only, so that a closed loop's queue closes with it.
    completers: Mutex<Vec<(Py<PyWeakrefReference>, Arc<Queue>)>>,
}

static COMPLETERS: ForkLocal<Completers> = ForkLocal::new(|| Completers {
    completers: Mutex::new(Vec::new()),
});

/// The queue of `event_loop`'s completer in this process, made (and its wake-up set up) on the
/// loop's first bridged future.
pub(super) fn queue_for(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<Queue>> {
    let py = event_loop.py();
    let this_process = COMPLETERS.get();
    // Taken out under the lock, dropped after it: the entries of dead loops, and the strong loop
    // references `upgrade()` returns. Without a GIL (free-threaded builds) the last reference to
    // a loop could otherwise go away under the lock and run the loop's `__del__` there, which may
    // re-enter here or wait for a stop-the-world pause (docs/design.md, "Without the GIL").
    let mut dead = Vec::new();
    let mut upgraded = Vec::new();
    let mut found = None;
    {
        // Held only across calls that cannot run Python code (no decref, no method call), so
        // a finaliser can never re-enter here while it is held.
        let mut completers = lock_attached(py, &this_process.completers);
        for (weak, queue) in completers.iter() {
            if let Some(alive) = weak.bind(py).upgrade() {
                let same = alive.is(event_loop);
                upgraded.push(alive);
                if same {
                    found = Some(queue.clone());
                    break;
                }
            }
        }
        if found.is_none() {
            // A loop we have not seen: forget the completers of loops that died.
            for (weak, queue) in std::mem::take(&mut *completers) {
                match weak.bind(py).upgrade() {
                    Some(alive) => {
                        upgraded.push(alive);
                        completers.push((weak, queue));
                    }
                    None => dead.push((weak, queue)),
                }
            }
        }
    }
    // Attached, outside the lock: these may run Python.
    let abandoned: Vec<_> = dead.iter().map(|(_, queue)| queue.close()).collect();
    drop((abandoned, dead, upgraded));
    if let Some(queue) = found {
        return Ok(queue);
    }
    // Only the thread running this loop calls here for it, so registering after add_reader
    // cannot race.
    let weak = PyWeakrefReference::new(event_loop)?.unbind();
    let queue = match watched_queue(event_loop)? {
        Some(watched) => watched,
        None => Arc::new(Queue::new(Wake::Soon(Mutex::new(Some(weak.clone_ref(py)))))),
    };
    lock_attached(py, &this_process.completers).push((weak, queue.clone()));
    Ok(queue)
}

/// Locks `mutex` from an attached thread, never running Python while it is held.
///
/// A thread that waits attached holds up every stop-the-world pause of a free-threaded
/// interpreter, so a contended waiter detaches. But PyO3's `lock_py_attached` re-attaches with
/// the lock already taken, and re-attaching applies PyO3's deferred decrefs, which can run
/// finalisers under the lock. So: try while attached; if the lock is taken, wait for it
/// detached, let it go, and try again.
fn lock_attached<'a, T: Send>(py: Python<'_>, mutex: &'a Mutex<T>) -> MutexGuard<'a, T> {
    loop {
        match mutex.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => py.detach(|| drop(mutex.lock())),
        }
    }
}

/// A queue woken through a pipe the loop watches, or `None` where the loop cannot watch one
/// (no pipes on this platform, or `add_reader` raises `NotImplementedError`). The loop holds
/// the only reference to the queue's completer.
fn watched_queue(event_loop: &Bound<'_, PyAny>) -> PyResult<Option<Arc<Queue>>> {
    let py = event_loop.py();
    let Some(pipe) = Pipe::new().map_err(|e| PyOSError::new_err(e.to_string()))? else {
        return Ok(None);
    };
    let reader = pipe.reader();
    let queue = Arc::new(Queue::new(Wake::Pipe(pipe)));
    let completer = Py::new(py, Completer::reader(queue.clone()))?;
    match event_loop.call_method1(intern!(py, "add_reader"), (reader, completer)) {
        Ok(_) => Ok(Some(queue)),
        Err(err) if err.is_instance_of::<PyNotImplementedError>(py) => Ok(None),
        Err(err) => Err(err),
    }
}

/// `future_into_py_with_locals`: spawns `fut` on this process's runtime, in `locals`' task-local
/// scope, and returns the asyncio future it completes through `locals`' loop's queue.
pub(super) fn spawn_into_py<F, T>(
    py: Python<'_>,
    locals: TaskLocals,
    fut: F,
) -> PyResult<Bound<'_, PyAny>>
where
    F: std::future::Future<Output = PyResult<T>> + Send + 'static,
    T: for<'py> IntoPyObject<'py> + Send + 'static,
{
    let runtime = crate::runtime::runtime().map_err(super::error::to_py_err)?;
    let event_loop = locals.event_loop(py);
    let queue = queue_for(&event_loop)?;
    let py_future = event_loop.call_method0(intern!(py, "create_future"))?;
    let (task, on_done) = super::cancel::Cancellable::new(fut);
    py_future.call_method1(intern!(py, "add_done_callback"), (on_done,))?;
    let future = py_future.clone().unbind();
    runtime.spawn(async move {
        let scope = super::generic::TASK_LOCALS.scope(std::cell::OnceCell::from(locals), task);
        let mut scoped = std::pin::pin!(scope);
        let ending = scoped.as_mut().await;
        // The locals come back out of the scope and travel with the result, so the loop's last
        // reference is never dropped on this tokio thread (docs/design.md, "Without the GIL").
        let locals = scoped
            .as_mut()
            .take_value()
            .and_then(std::cell::OnceCell::into_inner);
        queue.push(Done::new(future, locals, ending));
    });
    Ok(py_future)
}
