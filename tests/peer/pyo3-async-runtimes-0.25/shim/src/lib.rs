//! pyo3-async-runtimes 0.25 with its `tokio` module replaced by the generic layer over
//! `forksafe::generic_runtime!`'s type: what the peer suite's sources see as
//! `pyo3_async_runtimes` (see Cargo.toml). Every function below is one call into
//! `upstream::generic` with `ForksafeRuntime`; nothing of upstream's tokio runtime is built.

// The macro expands against `::pyo3_async_runtimes`; here that crate is renamed `upstream`, and
// this puts it back under its own name in the extern prelude.
extern crate upstream as pyo3_async_runtimes;

pub use upstream::*;

/// `pyo3_async_runtimes::tokio`, as the suite calls it, on forksafe's runtime.
pub mod tokio {
    use std::future::Future;

    use pyo3::prelude::*;
    use upstream::{generic, TaskLocals};

    pub use pyo3_async_runtimes_macros::tokio_test as test;

    forksafe::generic_runtime!(
        /// The runtime type under test.
        pub ForksafeRuntime
    );

    /// This process's forksafe runtime (what upstream's test attribute spawns its tests on).
    pub fn get_runtime<'a>() -> &'a ::tokio::runtime::Runtime {
        forksafe::runtime().expect("forksafe could not build this process's runtime")
    }

    pub async fn scope<F, R>(locals: TaskLocals, fut: F) -> R
    where
        F: Future<Output = R> + Send + 'static,
    {
        <ForksafeRuntime as generic::ContextExt>::scope(locals, fut).await
    }

    pub async fn scope_local<F, R>(locals: TaskLocals, fut: F) -> R
    where
        F: Future<Output = R> + 'static,
    {
        <ForksafeRuntime as generic::LocalContextExt>::scope_local(locals, fut).await
    }

    pub fn get_current_loop(py: Python) -> PyResult<Bound<PyAny>> {
        generic::get_current_loop::<ForksafeRuntime>(py)
    }

    pub fn get_current_locals(py: Python) -> PyResult<TaskLocals> {
        generic::get_current_locals::<ForksafeRuntime>(py)
    }

    pub fn run_until_complete<F, T>(event_loop: Bound<PyAny>, fut: F) -> PyResult<T>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: Send + Sync + 'static,
    {
        generic::run_until_complete::<ForksafeRuntime, _, _>(&event_loop, fut)
    }

    pub fn run<F, T>(py: Python, fut: F) -> PyResult<T>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: Send + Sync + 'static,
    {
        generic::run::<ForksafeRuntime, _, _>(py, fut)
    }

    pub fn future_into_py_with_locals<F, T>(
        py: Python,
        locals: TaskLocals,
        fut: F,
    ) -> PyResult<Bound<PyAny>>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py>,
    {
        generic::future_into_py_with_locals::<ForksafeRuntime, _, _>(py, locals, fut)
    }

    pub fn future_into_py<F, T>(py: Python, fut: F) -> PyResult<Bound<PyAny>>
    where
        F: Future<Output = PyResult<T>> + Send + 'static,
        T: for<'py> IntoPyObject<'py>,
    {
        generic::future_into_py::<ForksafeRuntime, _, _>(py, fut)
    }

    #[allow(deprecated)]
    pub fn local_future_into_py_with_locals<F, T>(
        py: Python,
        locals: TaskLocals,
        fut: F,
    ) -> PyResult<Bound<PyAny>>
    where
        F: Future<Output = PyResult<T>> + 'static,
        T: for<'py> IntoPyObject<'py>,
    {
        generic::local_future_into_py_with_locals::<ForksafeRuntime, _, _>(py, locals, fut)
    }

    #[allow(deprecated)]
    pub fn local_future_into_py<F, T>(py: Python, fut: F) -> PyResult<Bound<PyAny>>
    where
        F: Future<Output = PyResult<T>> + 'static,
        T: for<'py> IntoPyObject<'py>,
    {
        generic::local_future_into_py::<ForksafeRuntime, _, _>(py, fut)
    }

    pub fn into_future(
        awaitable: Bound<PyAny>,
    ) -> PyResult<impl Future<Output = PyResult<PyObject>> + Send> {
        generic::into_future::<ForksafeRuntime>(awaitable)
    }

    pub fn into_stream_v1(
        gen: Bound<'_, PyAny>,
    ) -> PyResult<impl futures::Stream<Item = PyResult<PyObject>> + 'static> {
        generic::into_stream_v1::<ForksafeRuntime>(gen)
    }

    pub fn into_stream_v2(
        gen: Bound<'_, PyAny>,
    ) -> PyResult<impl futures::Stream<Item = PyObject> + 'static> {
        generic::into_stream_v2::<ForksafeRuntime>(gen)
    }
}
