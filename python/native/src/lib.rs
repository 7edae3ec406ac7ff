//! `forksafe._native`: the extension module of the `forksafe` Python package.
//!
//! Its own crate (never published), so that the `forksafe` library stays an rlib for the
//! extension authors who depend on it. The feature `control-probe` adds a control probe through
//! plain `pyo3-async-runtimes` for the fork suites; the shipped wheel never has it.

use forksafe::python::{block_on, future_into_py, to_py_err};
use forksafe::RuntimeConfig;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// tokio's features in this build. The test `tokio_features` of this crate checks this list
/// against `cargo tree -e normal,features -i tokio`, so it cannot drift from what is compiled in.
const TOKIO_FEATURES: &[&str] = &["net", "rt", "rt-multi-thread", "time"];

/// What this extension was built with.
#[pyfunction]
fn build_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("tokio_features", TOKIO_FEATURES.to_vec())?;
    dict.set_item("control_probe", cfg!(feature = "control-probe"))?;
    Ok(dict)
}

/// An identifier of this process that a descendant never shares (see `forksafe::process_token`).
#[pyfunction]
fn process_token() -> u64 {
    forksafe::process_token()
}

/// This process's runtime state as a dict.
#[pyfunction]
fn runtime_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = forksafe::process_info();
    let dict = PyDict::new(py);
    dict.set_item("pid", info.pid)?;
    dict.set_item("depth", info.depth)?;
    dict.set_item("runtimes_built", info.runtimes_built)?;
    let inherited = PyList::empty(py);
    for runtime in &info.inherited_runtimes {
        inherited.append((runtime.pid, runtime.generations_back))?;
    }
    dict.set_item("inherited_runtimes", inherited)?;
    dict.set_item("guard", info.guard.mode.as_str())?;
    dict.set_item("guard_reason", info.guard.reason)?;
    dict.set_item("tokio_parking_lot", info.tokio_parking_lot)?;
    dict.set_item("gil_enabled", gil_enabled(py)?)?;
    dict.set_item("worker_threads", info.worker_threads)?;
    dict.set_item("max_blocking_threads", info.max_blocking_threads)?;
    Ok(dict)
}

/// Whether this interpreter runs with the GIL right now: `sys._is_gil_enabled()` (CPython 3.13+;
/// a free-threaded build turns it back on for a module that declares `gil_used = true`, or with
/// `PYTHON_GIL=1`), else `True` (every older CPython has one).
fn gil_enabled(py: Python<'_>) -> PyResult<bool> {
    let sys = py.import("sys")?;
    match sys.getattr("_is_gil_enabled") {
        Ok(probe) => probe.call0()?.is_truthy(),
        Err(_) => Ok(true),
    }
}

/// Configures the tokio runtime before its first use in this process (children inherit it).
///
/// Raises ValueError for invalid values and RuntimeError once the runtime exists.
#[pyfunction]
#[pyo3(signature = (*, worker_threads=None, thread_name=None, max_blocking_threads=None, thread_stack_size=None))]
fn configure(
    worker_threads: Option<usize>,
    thread_name: Option<String>,
    max_blocking_threads: Option<usize>,
    thread_stack_size: Option<usize>,
) -> PyResult<()> {
    let mut config = RuntimeConfig::new();
    if let Some(n) = worker_threads {
        config = config.worker_threads(n);
    }
    if let Some(name) = thread_name {
        config = config.thread_name(name);
    }
    if let Some(n) = max_blocking_threads {
        config = config.max_blocking_threads(n);
    }
    if let Some(bytes) = thread_stack_size {
        config = config.thread_stack_size(bytes);
    }
    forksafe::configure(config).map_err(to_py_err)
}

/// Native probes: each goes through this process's runtime.
mod testing {
    use super::*;

    /// Awaitable: yields once to the tokio scheduler, then returns `x`.
    #[pyfunction]
    pub fn echo(py: Python<'_>, x: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            tokio::task::yield_now().await;
            Ok(x)
        })
    }

    /// Awaitable: a tokio timer of `seconds`, then returns `value`.
    #[pyfunction]
    #[pyo3(signature = (seconds, value=None))]
    pub fn sleep(
        py: Python<'_>,
        seconds: f64,
        value: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'_, PyAny>> {
        let duration = std::time::Duration::try_from_secs_f64(seconds).map_err(|_| {
            PyValueError::new_err(format!(
                "seconds must be a finite number >= 0, got {seconds}"
            ))
        })?;
        future_into_py(py, async move {
            tokio::time::sleep(duration).await;
            Ok(value)
        })
    }

    /// Awaitable: the PID seen by a task on a runtime worker thread.
    #[pyfunction]
    pub fn pid(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            let task = forksafe::spawn(async { std::process::id() }).map_err(to_py_err)?;
            task.await
                .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
        })
    }

    /// Synchronous: the `echo` future driven on this process's runtime, GIL released.
    #[pyfunction]
    pub fn echo_sync(py: Python<'_>, x: Py<PyAny>) -> PyResult<Py<PyAny>> {
        block_on(py, async move {
            tokio::task::yield_now().await;
            Ok(x)
        })
    }

    /// Test-only: an awaitable whose Rust future panics with `message` after yielding once.
    #[cfg(feature = "control-probe")]
    #[pyfunction]
    pub fn panic(py: Python<'_>, message: String) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            tokio::task::yield_now().await;
            if !message.is_empty() {
                panic!("{message}");
            }
            Ok(())
        })
    }

    /// Test-only: calls `f()` from inside a `block_on` future on the calling thread (so Python
    /// code that forks there forks inside tokio's runtime context), returning what it returns.
    #[cfg(feature = "control-probe")]
    #[pyfunction]
    pub fn call_in_block_on(py: Python<'_>, f: Py<PyAny>) -> PyResult<Py<PyAny>> {
        block_on(py, async move { Python::attach(|py| f.call0(py)) })
    }

    /// Test-only: an awaitable that calls `f()` on a tokio worker thread of this process's
    /// runtime (so Python code that forks there forks on a worker), returning what it returns.
    #[cfg(feature = "control-probe")]
    #[pyfunction]
    pub fn call_on_worker(py: Python<'_>, f: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
        future_into_py(py, async move {
            tokio::task::yield_now().await;
            Python::attach(|py| f.call0(py))
        })
    }

    /// Test-only control: `echo` through plain `pyo3_async_runtimes::tokio`, which has no PID
    /// guard. Its awaits hang in a forked child; the fork suite uses it to prove it can fail.
    #[cfg(feature = "control-probe")]
    #[pyfunction]
    pub fn control_echo(py: Python<'_>, x: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            tokio::task::yield_now().await;
            Ok(x)
        })
    }
}

// `gil_used = false`: this module runs correctly with no GIL, so a free-threaded CPython keeps
// the GIL off when it is imported. Written out rather than left to PyO3's default, because it is
// a claim: it holds only while the no-GIL suite passes (scripts/test free-threaded, run by
// scripts/test on a `--disable-gil` CPython), and the rules it rests on are in docs/design.md
// ("Without the GIL").
#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CONTROL_PROBE", cfg!(feature = "control-probe"))?;
    m.add_function(wrap_pyfunction!(process_token, m)?)?;
    m.add_function(wrap_pyfunction!(runtime_info, m)?)?;
    m.add_function(wrap_pyfunction!(configure, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;

    let probes = PyModule::new(py, "testing")?;
    probes.add_function(wrap_pyfunction!(testing::echo, &probes)?)?;
    probes.add_function(wrap_pyfunction!(testing::sleep, &probes)?)?;
    probes.add_function(wrap_pyfunction!(testing::pid, &probes)?)?;
    probes.add_function(wrap_pyfunction!(testing::echo_sync, &probes)?)?;
    #[cfg(feature = "control-probe")]
    probes.add_function(wrap_pyfunction!(testing::control_echo, &probes)?)?;
    #[cfg(feature = "control-probe")]
    probes.add_function(wrap_pyfunction!(testing::panic, &probes)?)?;
    #[cfg(feature = "control-probe")]
    probes.add_function(wrap_pyfunction!(testing::call_in_block_on, &probes)?)?;
    #[cfg(feature = "control-probe")]
    probes.add_function(wrap_pyfunction!(testing::call_on_worker, &probes)?)?;
    m.add_submodule(&probes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Invariant 8 (docs/design.md): tokio is built without its process-global drivers and
    /// without `parking_lot`, and `TOKIO_FEATURES` (what `doctor` reports) is what cargo
    /// resolves for the shipped wheel (no `control-probe`).
    #[test]
    #[allow(
        clippy::disallowed_methods,
        reason = "a unit test reads the CARGO cargo sets; nothing forks"
    )]
    fn tokio_features_are_what_cargo_resolves_and_nothing_process_global() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let output = std::process::Command::new(cargo)
            .args(["tree", "--offline", "--locked", "--manifest-path", manifest])
            .args(["-p", "forksafe-native", "--no-default-features"])
            .args(["-e", "normal,features", "-i", "tokio", "--prefix", "none"])
            .output()
            .expect("run cargo tree");
        let tree = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut features: Vec<&str> = tree
            .lines()
            .filter_map(|line| line.strip_prefix("tokio feature \""))
            .filter_map(|rest| rest.split('"').next())
            // Not features of tokio's own: optional dependencies that `net` switches on.
            .filter(|f| !matches!(*f, "default" | "libc" | "mio" | "socket2"))
            .collect();
        features.sort_unstable();
        features.dedup();
        for forbidden in ["signal", "process", "parking_lot"] {
            assert!(
                !features.contains(&forbidden),
                "tokio feature `{forbidden}` is on (a process-global driver or parking_lot):\n{tree}"
            );
        }
        assert_eq!(features, super::TOKIO_FEATURES, "cargo tree:\n{tree}");
    }
}
