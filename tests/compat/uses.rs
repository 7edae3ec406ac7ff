// Shared by every compat crate: the runtime type through each of pyo3-async-runtimes' generic
// entry points, and all four traits named. Compiled (`cargo check`) by scripts/test generic.

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{self, ContextExt, LocalContextExt, Runtime, SpawnLocalExt};

fn all_four_traits<R: Runtime + ContextExt + SpawnLocalExt + LocalContextExt>() {}

/// Names the four trait impls of the macro's type.
pub fn check_traits() {
    all_four_traits::<ForksafeRuntime>();
}

/// The async path.
#[pyfunction]
pub fn answer(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    generic::future_into_py::<ForksafeRuntime, _, _>(py, async { Ok(42) })
}

/// The local (`!Send`) path (deprecated upstream since 0.x, still part of the traits' surface).
#[allow(deprecated)]
#[pyfunction]
pub fn answer_local(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    generic::local_future_into_py::<ForksafeRuntime, _, _>(py, async { Ok(42) })
}

/// A Python awaitable as a Rust future (reads the task locals).
pub fn awaiting(
    awaitable: Bound<'_, PyAny>,
) -> PyResult<impl std::future::Future<Output = PyResult<Py<PyAny>>> + Send> {
    generic::into_future::<ForksafeRuntime>(awaitable)
}

/// The task locals, as the generic layer looks them up.
pub fn locals(py: Python<'_>) -> PyResult<pyo3_async_runtimes::TaskLocals> {
    generic::get_current_locals::<ForksafeRuntime>(py)
}
