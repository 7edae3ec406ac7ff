//! What `#[forksafe::python::test]` expands to refers to (feature `testing`). Not a public API.

pub use inventory;
pub use pyo3;
pub use pyo3_async_runtimes::testing::Test;

use pyo3::prelude::*;
use pyo3_async_runtimes::err::RustPanic;

/// The harness's event loop, for a test function taking `event_loop: Py<PyAny>`.
///
/// # Panics
///
/// Outside a bridged task with no running loop, as upstream's attribute does.
pub fn current_loop() -> Py<PyAny> {
    Python::attach(|py| {
        super::get_current_loop(py)
            .expect("a #[forksafe::python::test] runs inside pyo3_async_runtimes::testing::main")
            .unbind()
    })
}

/// A blocking test's panic (or cancellation) as the Python error the harness reports.
pub fn join_error(error: tokio::task::JoinError) -> PyErr {
    let message = if error.is_panic() {
        let payload = error.into_panic();
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown error".to_owned())
    } else {
        error.to_string()
    };
    RustPanic::new_err(format!("rust future panicked: {message}"))
}
