//! The baselines forksafe is measured against, as a Python module:
//!
//! * `plain_*`: plain `pyo3_async_runtimes::tokio` (a `OnceLock` runtime; hangs after fork);
//! * `hooked_*`: a hook-based runtime, an `AtomicPtr` that a `pthread_atfork` child handler
//!   resets (leaking the inherited runtime), driven through `pyo3_async_runtimes::generic`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{ContextExt, JoinError, Runtime};
use pyo3_async_runtimes::TaskLocals;
use tokio::runtime::Runtime as TokioRuntime;

static HOOKED: AtomicPtr<TokioRuntime> = AtomicPtr::new(std::ptr::null_mut());
static HOOK_REGISTERED: std::sync::Once = std::sync::Once::new();

extern "C" fn forget_runtime_in_child() {
    // Async-signal-safe: one atomic store. The inherited runtime is leaked, never dropped.
    HOOKED.store(std::ptr::null_mut(), Ordering::SeqCst);
}

#[allow(
    clippy::disallowed_methods,
    reason = "the hook-based baseline forksafe is measured against, built as such runtimes are"
)]
fn hooked_runtime() -> &'static TokioRuntime {
    HOOK_REGISTERED.call_once(|| {
        // SAFETY: registering a child handler that only performs an atomic store.
        unsafe { libc::pthread_atfork(None, None, Some(forget_runtime_in_child)) };
    });
    let current = HOOKED.load(Ordering::Acquire);
    // SAFETY: HOOKED holds null or a leaked runtime that is never freed.
    if let Some(rt) = unsafe { current.as_ref() } {
        return rt;
    }
    let fresh = Box::into_raw(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("baseline runtime"),
    ));
    match HOOKED.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: published and leaked.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // SAFETY: `fresh` was never published; `winner` is a leaked runtime.
            unsafe {
                drop(Box::from_raw(fresh));
                &*winner
            }
        }
    }
}

struct Hooked;
struct HookedJoinError(tokio::task::JoinError);

impl JoinError for HookedJoinError {
    fn is_panic(&self) -> bool {
        self.0.is_panic()
    }
    fn into_panic(self) -> Box<dyn std::any::Any + Send + 'static> {
        self.0.into_panic()
    }
}

struct HookedHandle(tokio::task::JoinHandle<()>);
impl Future for HookedHandle {
    type Output = Result<(), HookedJoinError>;
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(HookedJoinError)
    }
}

impl Runtime for Hooked {
    type JoinError = HookedJoinError;
    type JoinHandle = HookedHandle;
    fn spawn<F: Future<Output = ()> + Send + 'static>(fut: F) -> HookedHandle {
        HookedHandle(hooked_runtime().spawn(fut))
    }
    fn spawn_blocking<F: FnOnce() + Send + 'static>(f: F) -> HookedHandle {
        HookedHandle(hooked_runtime().spawn_blocking(f))
    }
}

tokio::task_local! {
    static LOCALS: std::cell::OnceCell<TaskLocals>;
}

impl ContextExt for Hooked {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        Box::pin(LOCALS.scope(std::cell::OnceCell::from(locals), fut))
    }
    fn get_task_locals() -> Option<TaskLocals> {
        LOCALS.try_with(|c| c.get().cloned()).unwrap_or_default()
    }
}

/// Plain pyo3-async-runtimes: yield once to tokio, return x.
#[pyfunction]
fn plain_echo(py: Python<'_>, x: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::tokio::future_into_py(py, async move {
        tokio::task::yield_now().await;
        Ok(x)
    })
}

/// Plain pyo3-async-runtimes, sync: block_on the global runtime with the GIL released.
#[pyfunction]
fn plain_echo_sync(py: Python<'_>, x: Py<PyAny>) -> Py<PyAny> {
    py.detach(|| {
        pyo3_async_runtimes::tokio::get_runtime().block_on(async move {
            tokio::task::yield_now().await;
            x
        })
    })
}

/// Hook-based runtime through the generic bridge: yield once to tokio, return x.
#[pyfunction]
fn hooked_echo(py: Python<'_>, x: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    pyo3_async_runtimes::generic::future_into_py::<Hooked, _, _>(py, async move {
        tokio::task::yield_now().await;
        Ok(x)
    })
}

/// Hook-based runtime, sync: block_on with the GIL released.
#[pyfunction]
fn hooked_echo_sync(py: Python<'_>, x: Py<PyAny>) -> Py<PyAny> {
    py.detach(|| {
        hooked_runtime().block_on(async move {
            tokio::task::yield_now().await;
            x
        })
    })
}

#[pymodule]
fn forksafe_baselines(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(plain_echo, m)?)?;
    m.add_function(wrap_pyfunction!(plain_echo_sync, m)?)?;
    m.add_function(wrap_pyfunction!(hooked_echo, m)?)?;
    m.add_function(wrap_pyfunction!(hooked_echo_sync, m)?)?;
    Ok(())
}
