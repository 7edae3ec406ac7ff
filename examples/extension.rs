//! The small extension of `docs/extension-authors.md`, compiled by `cargo clippy --all-targets
//! --all-features` so the guide cannot drift from the API. Build a real extension module from it
//! with maturin; as an example binary it only checks that it compiles.

use std::time::Duration;

use pyo3::prelude::*;

/// async: `await ext.fetch("key")`
#[pyfunction]
fn fetch(py: Python<'_>, key: String) -> PyResult<Bound<'_, PyAny>> {
    forksafe::python::future_into_py(py, async move {
        tokio::time::sleep(Duration::from_millis(1)).await; // stands in for real I/O
        Ok(format!("value of {key}"))
    })
}

/// sync: `ext.fetch_sync("key")`, the GIL released while the future runs
#[pyfunction]
fn fetch_sync(py: Python<'_>, key: String) -> PyResult<String> {
    forksafe::python::block_on(py, async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(format!("value of {key}"))
    })
}

/// One client per process: a child must never reuse the parent's sockets.
static CLIENT: forksafe::ForkLocal<Client> = forksafe::ForkLocal::new(Client::new);

struct Client {
    built_by: u32,
}

impl Client {
    fn new() -> Self {
        Client {
            built_by: std::process::id(),
        }
    }
}

/// The PID of the process that built this process's client: always this one.
#[pyfunction]
fn client_owner() -> u32 {
    CLIENT.get().built_by
}

#[pymodule]
fn ext(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Optional, before first use; children rebuild with the same settings.
    forksafe::configure(
        forksafe::RuntimeConfig::new()
            .worker_threads(2)
            .thread_name("ext"),
    )
    .map_err(forksafe::python::to_py_err)?;
    m.add_function(wrap_pyfunction!(fetch, m)?)?;
    m.add_function(wrap_pyfunction!(fetch_sync, m)?)?;
    m.add_function(wrap_pyfunction!(client_owner, m)?)?;
    Ok(())
}

fn main() {}
