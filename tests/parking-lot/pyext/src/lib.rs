//! `forksafe_parking_lot_py`: the parking_lot reproduction as a Python extension (issue 21).
//!
//! An extension on forksafe, built (feature `hazard`) with tokio's `parking_lot` turned on by a
//! dependency. A setup makes the parent busy: [`park_threads`] leaves threads of its own parked
//! on tokio primitives (each one's `ThreadData` stays linked in parking_lot_core's global table
//! at the fork), and [`start_busy`] keeps forksafe's runtime in use. A child then calls [`work`]:
//! threads of the same stack size (glibc hands them the dead threads' cached stacks) park and
//! wake on tokio primitives, answered by tasks on forksafe's runtime, and the table's buckets
//! still hold the dead threads' nodes. docs/design.md ("Hazards that live in the dependencies")
//! says what breaks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// Senders kept alive so that the parked threads never wake (they stay in the table).
static PARKED: Mutex<Vec<tokio::sync::mpsc::Sender<()>>> = Mutex::new(Vec::new());

fn err(what: impl std::fmt::Display) -> PyErr {
    PyRuntimeError::new_err(what.to_string())
}

/// Whether tokio's `parking_lot` is on in this build (the `hazard` feature) and what forksafe's
/// probe says (`None` before a runtime was built).
#[pyfunction]
fn hazard() -> (bool, Option<bool>) {
    (
        cfg!(feature = "hazard"),
        forksafe::process_info().tokio_parking_lot,
    )
}

/// Starts `count` threads (`stack_size` bytes of stack each) that park for good in a tokio
/// `mpsc::Receiver::blocking_recv`, and returns once every one of them is parked.
///
/// # Errors
///
/// A thread could not be started.
#[pyfunction]
fn park_threads(py: Python<'_>, count: usize, stack_size: usize) -> PyResult<()> {
    py.detach(|| {
        let started = Arc::new(AtomicUsize::new(0));
        for _ in 0..count {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
            PARKED.lock().map_err(err)?.push(tx);
            let started = started.clone();
            std::thread::Builder::new()
                .name("parked".into())
                .stack_size(stack_size)
                .spawn(move || {
                    started.fetch_add(1, Ordering::SeqCst);
                    while rx.blocking_recv().is_some() {}
                })
                .map_err(err)?;
        }
        while started.load(Ordering::SeqCst) < count {
            std::thread::sleep(Duration::from_millis(1));
        }
        // From "started" to parked in the condvar is a few instructions; leave them time.
        std::thread::sleep(Duration::from_millis(50));
        Ok(())
    })
}

/// Starts `users` threads that use forksafe's runtime for the life of the process: `block_on`
/// over a spawned task, a `spawn_blocking` and a timer, in a loop.
///
/// # Errors
///
/// A thread could not be started.
#[pyfunction]
fn start_busy(py: Python<'_>, users: usize) -> PyResult<()> {
    py.detach(|| {
        for _ in 0..users {
            std::thread::Builder::new()
                .name("busy".into())
                .spawn(|| loop {
                    let sum = forksafe::block_on(async {
                        let a = forksafe::spawn(async {
                            tokio::task::yield_now().await;
                            1u64
                        })?;
                        let b = forksafe::spawn_blocking(|| 2u64)?;
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        Ok::<u64, forksafe::Error>(a.await.unwrap_or(0) + b.await.unwrap_or(0))
                    });
                    if !matches!(sum, Ok(Ok(3))) {
                        return; // nothing to report to: the parent's own threads only
                    }
                })
                .map_err(err)?;
        }
        Ok(())
    })
}

/// The child's workload: `threads` threads (`stack_size` bytes of stack each) each wait
/// `rounds` times, in a oneshot's `blocking_recv`, for a task on forksafe's runtime that answers
/// after a timer, and take a shared tokio `Mutex` with `blocking_lock`. Returns the sum of the
/// answers (the same in every process: `threads * rounds * (rounds - 1) / 2`).
///
/// # Errors
///
/// forksafe refused a call, a thread could not be started, or one panicked.
#[pyfunction]
fn work(py: Python<'_>, threads: usize, rounds: u64, stack_size: usize) -> PyResult<u64> {
    py.detach(|| {
        let shared = Arc::new(tokio::sync::Mutex::new(0u64));
        let mut handles = Vec::new();
        for _ in 0..threads {
            let shared = shared.clone();
            let handle = std::thread::Builder::new()
                .name("work".into())
                .stack_size(stack_size)
                .spawn(move || -> Result<u64, forksafe::Error> {
                    let mut sum = 0;
                    for i in 0..rounds {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        forksafe::spawn(async move {
                            tokio::time::sleep(Duration::from_micros(100)).await;
                            let _ = tx.send(i);
                        })?;
                        sum += rx.blocking_recv().unwrap_or(u64::MAX / 2);
                        *shared.blocking_lock() += 1;
                    }
                    Ok(sum)
                })
                .map_err(err)?;
            handles.push(handle);
        }
        let mut total = 0u64;
        for handle in handles {
            let sum = handle
                .join()
                .map_err(|_| err("a work thread panicked"))?
                .map_err(err)?;
            total = total.wrapping_add(sum);
        }
        Ok(total)
    })
}

#[pymodule(gil_used = false)]
fn forksafe_parking_lot_py(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hazard, m)?)?;
    m.add_function(wrap_pyfunction!(park_threads, m)?)?;
    m.add_function(wrap_pyfunction!(start_busy, m)?)?;
    m.add_function(wrap_pyfunction!(work, m)?)?;
    Ok(())
}
