//! `forksafe::python` in a forked child, in the style of pyo3-async-runtimes' `pytests/` test
//! binaries (`harness = false`, an embedded interpreter, one `fn main`).
//!
//! The parent uses `get_runtime`, `run`, `into_future` and `future_into_py` (a Python coroutine
//! awaits a Rust future that awaits a Python coroutine, and a `ContextVar` set by the outer
//! coroutine must be seen by the inner one), on an asyncio loop and on a uvloop loop. Then it
//! forks with Python's `os.fork()` and with a C-level `fork()` (as `ctypes.PyDLL(None).fork`
//! does: the GIL stays held, no Python fork hook runs), and the child does it all again; the
//! parent checks the child's values. Every child runs under the suite's hang detector: a hung
//! child is killed at its deadline and the test fails with its last words.
//!
//! With the feature `unstable-streams`, parent and child also pull an async generator through
//! `into_stream_v1` and `into_stream_v2`.
//!
//! `FORKSAFE_REQUIRE_UVLOOP=1` (set by scripts/test) turns a missing uvloop into a failure;
//! otherwise the uvloop checks are skipped with the reason printed.

mod support {
    pub mod fork;
    pub mod guard_mode;
    pub mod hang;
    pub mod host;
    pub mod skip;
    pub mod sys;
    pub mod wire;
}

use std::ffi::CString;
use std::time::Duration;

use support::{fork::*, guard_mode::*, skip::*, sys::*};
// The bridge under test. (The control run of the report swaps this line for
// `use pyo3_async_runtimes::tokio as bridge;`: every child then hangs at its deadline.)
use forksafe::python as bridge;
use pyo3::prelude::*;
use pyo3::types::PyModule;

const CHILD_DEADLINE: Duration = Duration::from_secs(30);

const ROUNDTRIP: &str = r#"
import asyncio, contextvars, os

cv = contextvars.ContextVar("cv")

async def read_cv():
    return cv.get()

async def count(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i * 10

async def roundtrip(double, read_back, x):
    cv.set(f"pid-{os.getpid()}")
    doubled = await double(x)          # future_into_py
    seen = await read_back(read_cv)    # future_into_py, awaiting into_future(read_cv())
    return doubled, seen
"#;

/// A Rust future as a Python awaitable.
#[pyfunction]
fn double(py: Python<'_>, x: u64) -> PyResult<Bound<'_, PyAny>> {
    bridge::future_into_py(py, async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(x * 2)
    })
}

/// A Rust future that awaits a Python coroutine (with the caller's contextvars).
#[pyfunction]
fn read_back(py: Python<'_>, callback: Py<PyAny>) -> PyResult<Bound<'_, PyAny>> {
    bridge::future_into_py(py, async move {
        let fut = Python::attach(move |py| bridge::into_future(callback.into_bound(py).call0()?))?;
        let value = fut.await?;
        Python::attach(move |py| value.extract::<String>(py))
    })
}

/// What one round of the workload produced, as `key=value` pairs.
struct Round(Vec<(String, String)>);

impl Round {
    fn get(&self, key: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.0))
    }
}

/// The coroutine `roundtrip(double, read_back, x)` run to completion by `drive`, which is
/// `bridge::run` or `bridge::run_until_complete` on a given loop.
fn roundtrip_on(
    py: Python<'_>,
    module: &Bound<'_, PyModule>,
    x: u64,
    drive: impl FnOnce(
        Python<'_>,
        std::pin::Pin<Box<dyn std::future::Future<Output = PyResult<(u64, String, String)>> + Send>>,
    ) -> PyResult<(u64, String, String)>,
) -> PyResult<(u64, String, String)> {
    let coroutine = module
        .getattr("roundtrip")?
        .call1((
            wrap_pyfunction!(double, module)?,
            wrap_pyfunction!(read_back, module)?,
            x,
        ))?
        .unbind();
    drive(
        py,
        Box::pin(async move {
            let fut = Python::attach(move |py| bridge::into_future(coroutine.into_bound(py)))?;
            let value = fut.await?;
            let loop_type = Python::attach(|py| -> PyResult<String> {
                let event_loop = bridge::get_current_loop(py)?;
                Ok(event_loop.get_type().name()?.to_string())
            })?;
            Python::attach(move |py| {
                let (doubled, seen) = value.extract::<(u64, String)>(py)?;
                Ok((doubled, seen, loop_type))
            })
        }),
    )
}

/// Uses get_runtime, run, into_future and future_into_py (and uvloop when present).
fn workload(py: Python<'_>, module: &Bound<'_, PyModule>, x: u64) -> PyResult<Round> {
    let mut round = Round(Vec::new());
    workload_reporting(py, module, x, &mut |k, v| round.0.push((k.to_owned(), v)))?;
    Ok(round)
}

/// [`workload`], handing each value to `put` as soon as it exists (a hung child's last words
/// then say how far it got).
fn workload_reporting(
    py: Python<'_>,
    module: &Bound<'_, PyModule>,
    x: u64,
    put: &mut dyn FnMut(&str, String),
) -> PyResult<()> {
    let runtime = bridge::get_runtime();
    put("runtime_addr", format!("{}", runtime as *const _ as usize));
    let spawned =
        py.detach(|| runtime.block_on(async move { runtime.spawn(async move { x + 1 }).await }));
    put(
        "get_runtime",
        spawned.map_or_else(|e| format!("join error: {e}"), |v| v.to_string()),
    );

    let (doubled, seen, loop_type) = roundtrip_on(py, module, x, bridge::run)?;
    put("run.doubled", doubled.to_string());
    put("run.seen", seen);
    put("run.loop_type", loop_type);

    #[cfg(feature = "unstable-streams")]
    {
        let (v1, v2) = streams(py, module, x)?;
        put("streams.v1", v1);
        put("streams.v2", v2);
    }

    match py.import("uvloop") {
        Ok(uvloop) => {
            let event_loop = uvloop.call_method0("new_event_loop")?;
            let result = roundtrip_on(py, module, x, |_py, fut| {
                bridge::run_until_complete(event_loop.clone(), fut)
            });
            event_loop.call_method0("close")?;
            let (doubled, seen, loop_type) = result?;
            put("uvloop.doubled", doubled.to_string());
            put("uvloop.seen", seen);
            put("uvloop.loop_type", loop_type);
        }
        Err(err) => put("uvloop.skipped", err.to_string()),
    }
    Ok(())
}

/// `into_stream_v1` and `into_stream_v2` over the async generator `count(x % 7 + 2)`.
#[cfg(feature = "unstable-streams")]
fn streams(py: Python<'_>, module: &Bound<'_, PyModule>, x: u64) -> PyResult<(String, String)> {
    use futures_util::StreamExt;

    let n = x % 7 + 2;
    let gen1 = module.getattr("count")?.call1((n,))?.unbind();
    let gen2 = module.getattr("count")?.call1((n,))?.unbind();
    bridge::run(py, async move {
        let stream = Python::attach(move |py| bridge::into_stream_v1(gen1.into_bound(py)))?;
        let mut stream = Box::pin(stream);
        let mut v1 = Vec::new();
        while let Some(item) = stream.next().await {
            let item = item?;
            v1.push(Python::attach(move |py| item.extract::<u64>(py))?);
        }
        let stream = Python::attach(move |py| bridge::into_stream_v2(gen2.into_bound(py)))?;
        let mut stream = Box::pin(stream);
        let mut v2 = Vec::new();
        while let Some(item) = stream.next().await {
            v2.push(Python::attach(move |py| item.extract::<u64>(py))?);
        }
        Ok((format!("{v1:?}"), format!("{v2:?}")))
    })
}

/// Checks one round's values for the process `pid`.
fn check_round(round: &Round, pid: u32, x: u64, context: &str) {
    assert_eq!(round.get("get_runtime"), (x + 1).to_string(), "{context}");
    assert_eq!(round.get("run.doubled"), (x * 2).to_string(), "{context}");
    assert_eq!(
        round.get("run.seen"),
        format!("pid-{pid}"),
        "{context}: contextvars copied"
    );
    assert_eq!(
        round.get("run.loop_type"),
        "_UnixSelectorEventLoop",
        "{context}"
    );
    #[cfg(feature = "unstable-streams")]
    {
        let expected = format!("{:?}", (0..x % 7 + 2).map(|i| i * 10).collect::<Vec<_>>());
        assert_eq!(
            round.get("streams.v1"),
            expected,
            "{context}: into_stream_v1"
        );
        assert_eq!(
            round.get("streams.v2"),
            expected,
            "{context}: into_stream_v2"
        );
    }
    if let Some((_, reason)) = round.0.iter().find(|(k, _)| k == "uvloop.skipped") {
        require_or_skip(
            "FORKSAFE_REQUIRE_UVLOOP",
            &format!("the uvloop checks in {context}"),
            reason,
        );
        return;
    }
    assert_eq!(
        round.get("uvloop.doubled"),
        (x * 2).to_string(),
        "{context}"
    );
    assert_eq!(round.get("uvloop.seen"), format!("pid-{pid}"), "{context}");
    assert_eq!(
        round.get("uvloop.loop_type"),
        "Loop",
        "{context}: a uvloop.Loop"
    );
}

fn test_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    PyModule::from_code(
        py,
        &CString::new(ROUNDTRIP).expect("no NUL"),
        c"python_fork_roundtrip.py",
        c"python_fork_roundtrip",
    )
}

/// The parent's round, a fork by `how`, the child's round checked against the parent's.
fn fork_and_compare(name: &str, fork: impl FnOnce(Python<'_>) -> libc::pid_t) {
    Python::attach(|py| {
        let module = test_module(py).unwrap();
        let parent = getpid();
        let before = workload(py, &module, 20).unwrap();
        check_round(
            &before,
            parent,
            20,
            &format!("{name}: parent before the fork"),
        );

        let report = fork_child_with(
            name,
            || fork(py),
            CHILD_DEADLINE,
            |rep| {
                workload_reporting(py, &module, 30, &mut |k, v| rep.kv(k, v)).unwrap();
            },
        );
        report.assert_ok();
        let child = Round(
            report
                .output
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| !k.starts_with('@'))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        let context = format!("{name}: child {}; output:\n{}", report.pid, report.output);
        check_round(&child, report.pid as u32, 30, &context);
        assert_ne!(
            child.get("runtime_addr"),
            before.get("runtime_addr"),
            "{context}: the child must use a runtime of its own"
        );

        let after = workload(py, &module, 40).unwrap();
        check_round(
            &after,
            parent,
            40,
            &format!("{name}: parent after the fork"),
        );
        assert_eq!(after.get("runtime_addr"), before.get("runtime_addr"));
    });
    println!("test {name} ... ok");
}

fn main() {
    Python::initialize();
    println!(
        "guard mode: {}",
        forksafe::process_info().guard.mode.as_str()
    );
    assert_eq!(
        forksafe::process_info().guard.mode.as_str(),
        expected_guard()
    );

    fork_and_compare("python_os_fork", |py| {
        py.import("os")
            .and_then(|os| os.call_method0("fork"))
            .and_then(|pid| pid.extract())
            .unwrap_or(-1)
    });
    // A C-level fork with the GIL held and no Python fork hook, as ctypes.PyDLL(None).fork.
    fork_and_compare("c_level_fork", |_py| fork_process(ForkMethod::Libc));
}
