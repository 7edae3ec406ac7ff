//! Cancellation from Python: a bridged future that Python cancels is told to stop, not aborted.
//!
//! Aborting the tokio task would drop the user's future (and every Python object it captured)
//! on a tokio thread, off the GIL. Instead the asyncio future's done-callback ([`CancelOnDone`])
//! raises a flag; [`Cancellable`] sees it at its next poll and ends with the unfinished future,
//! which then travels back through the completion queue to be dropped attached. A panic ends
//! the same way, with the future and the panic message.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use pyo3::intern;
use pyo3::prelude::*;

/// The flag Python's cancellation raises, and the waker of the task to tell.
#[derive(Default)]
struct Cancel {
    flag: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// The asyncio future's done-callback: if the future was cancelled, tells the task to stop.
#[pyclass(frozen)]
pub(super) struct CancelOnDone {
    cancel: Arc<Cancel>,
}

#[pymethods]
impl CancelOnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future
            .call_method0(intern!(future.py(), "cancelled"))?
            .is_truthy()?
        {
            // Release: pairs with the Acquire loads in `Cancellable::poll`.
            self.cancel.flag.store(true, Ordering::Release);
            let waker = self
                .cancel
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
pub(super) struct Cancellable<F> {
    inner: Option<Pin<Box<F>>>,
    cancel: Arc<Cancel>,
}

/// How a [`Cancellable`] ended.
pub(super) enum Ending<T> {
    Finished(T),
    /// The panic message, and the future, to be dropped attached.
    Panicked(String, Box<dyn Send>),
    /// The future, to be dropped attached.
    Cancelled(Box<dyn Send>),
}

impl<F: Future + Send + 'static> Cancellable<F> {
    /// `fut`, and the done-callback to add to its asyncio future.
    pub(super) fn new(fut: F) -> (Self, CancelOnDone) {
        let cancel = Arc::new(Cancel::default());
        let on_done = CancelOnDone {
            cancel: cancel.clone(),
        };
        let task = Cancellable {
            inner: Some(Box::pin(fut)),
            cancel,
        };
        (task, on_done)
    }

    /// Takes the unfinished future out, to be dropped attached with its Python objects.
    fn abandon(&mut self) -> Box<dyn Send> {
        match self.inner.take() {
            Some(future) => Box::new(future),
            None => Box::new(()),
        }
    }
}

impl<F: Future + Send + 'static> Future for Cancellable<F> {
    type Output = Ending<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Pending; // polled after completion: never happens inside our task
        };
        // Register the waker before the second look at the flag, so a cancellation between
        // the two either is seen here or wakes the registered waker.
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
