//! [`generic_runtime!`](crate::generic_runtime): forksafe's runtime for an extension that stays
//! on an older PyO3.
//!
//! # Why a macro
//!
//! [`python`](crate::python) is built on pyo3 0.30 and pyo3-async-runtimes 0.30, and an
//! extension links exactly one PyO3: pyo3-ffi declares `links = "python"`, and cargo allows one
//! package per `links` value in a dependency graph. Optional dependencies do not help. A
//! workspace lockfile resolves the optional dependencies of its members whether or not a feature
//! enables them, so forksafe cannot carry `pyo3 0.25` next to `pyo3 0.30` behind features: cargo
//! refuses the whole workspace ("package `pyo3-ffi` links to the native library `python`, but it
//! conflicts with a previous package which links to `python` as well"; measured here, see
//! docs/extension-authors.md).
//!
//! What every pyo3-async-runtimes since 0.25 does ship is its runtime-agnostic layer,
//! `pyo3_async_runtimes::generic`: `future_into_py::<R, _, _>`, `into_future`,
//! `run_until_complete` and the rest, generic over a runtime type `R` that implements
//! `generic::{Runtime, ContextExt}` (and `SpawnLocalExt`, `LocalContextExt` for the local
//! functions). So forksafe never names the extension's PyO3. The macro expands *in the
//! extension's crate*, against the extension's own `pyo3_async_runtimes` (and, for 0.25 and
//! 0.26, its own `pyo3`), into a unit struct that implements those four traits. Everything else
//! the expansion needs (tokio's task-local machinery, the spawning, the join types) comes through
//! forksafe's hidden `__private` module, so the extension adds no dependency.
//!
//! # What the runtime type does
//!
//! * Spawning goes to the calling process's forksafe runtime ([`crate::spawn`],
//!   [`crate::spawn_blocking`]): in a forked child, the child's own runtime, built on first use.
//!   No at-fork hook is involved.
//! * The task locals (the asyncio loop and `contextvars` context of the awaiting coroutine) live
//!   in a tokio task-local scoped to each future. A forked child never runs its parent's tasks,
//!   so it never sees its parent's locals.
//! * The local functions (`local_future_into_py`, `scope_local`) keep pyo3-async-runtimes'
//!   contract: call them inside a `tokio::task::LocalSet` of the calling thread.
//!
//! What it does not give: the generic layer completes each await through the loop's
//! `call_soon_threadsafe`, one call per await, where [`python`](crate::python) batches
//! completions through one queue per loop (docs/benchmarks.md has the cost).
//!
//! # Versions
//!
//! The traits changed once between 0.25 and 0.30, and a PyO3 rename touches the expansion too:
//!
//! | pyo3-async-runtimes | `Runtime::spawn_blocking` | `TaskLocals` copied by                   |
//! |---------------------|---------------------------|------------------------------------------|
//! | 0.25                | absent                    | `clone_ref(py)` under `Python::with_gil` |
//! | 0.26                | absent                    | `clone_ref(py)` under `Python::attach`   |
//! | 0.27 – 0.30         | required                  | `Clone`, no GIL                          |
//!
//! So the macro takes the minor as an argument, `pyo3_async_runtimes = "0.27"`; without it the
//! expansion is the 0.25 one. A minor it does not know is a compile error naming the known ones,
//! never a guess.

/// Implements pyo3-async-runtimes' generic runtime traits for a unit struct, backed by this
/// process's forksafe runtime.
///
/// ```text
/// forksafe::generic_runtime!(ForksafeRuntime);                                   // 0.25
/// forksafe::generic_runtime!(ForksafeRuntime, pyo3_async_runtimes = "0.26");     // 0.26
/// forksafe::generic_runtime!(pub ForksafeRuntime, pyo3_async_runtimes = "0.30"); // 0.27 – 0.30
/// forksafe::generic_runtime!(pub LanceRuntime, pyo3_async_runtimes = "0.28");    // LanceDB (pyo3 0.28)
/// ```
///
/// The struct implements `pyo3_async_runtimes::generic::{Runtime, ContextExt, SpawnLocalExt,
/// LocalContextExt}`, so every function of that module takes it:
/// `pyo3_async_runtimes::generic::future_into_py::<ForksafeRuntime, _, _>(py, fut)`. Attributes
/// (doc comments) and a visibility before the name are kept.
///
/// The argument is the extension's pyo3-async-runtimes minor, as a string, because the traits
/// and PyO3 changed under it. Without it the expansion is the one for 0.25 (the oldest
/// tested). LanceDB's Python binding, on pyo3 0.28, adopted forksafe with
/// `generic_runtime!(pub LanceRuntime, pyo3_async_runtimes = "0.28")`. A minor it does not know is a compile error naming the known ones:
///
/// | pyo3-async-runtimes | argument                           | `Runtime::spawn_blocking` | `TaskLocals` copied by                   |
/// |---------------------|------------------------------------|---------------------------|------------------------------------------|
/// | 0.25                | none, or `pyo3_async_runtimes = "0.25"` | absent               | `clone_ref(py)` under `Python::with_gil` |
/// | 0.26                | `pyo3_async_runtimes = "0.26"`     | absent                    | `clone_ref(py)` under `Python::attach`   |
/// | 0.27 – 0.30         | `pyo3_async_runtimes = "0.27"` … `"0.30"` | required           | `Clone`, no GIL                          |
///
/// Why a macro at all: an extension links one PyO3 (pyo3-ffi declares `links = "python"`), so
/// forksafe cannot depend on the extension's PyO3; the macro expands in the extension's crate,
/// against its own `pyo3_async_runtimes`, and takes the rest from forksafe's hidden `__private`
/// module, so the extension adds no dependency.
///
/// The expansion names `::pyo3_async_runtimes` (and `::pyo3` for 0.25 and 0.26), so the
/// extension depends on them under those names, as extensions do (a crate that renames one puts
/// it back with `extern crate renamed as pyo3_async_runtimes;` at its root). forksafe needs no feature for
/// it: the `python` feature is the pyo3 0.30 bridge and must stay off in an extension on an older
/// PyO3.
///
/// Sync calls do not go through this type: call [`block_on`](crate::block_on) with the GIL
/// released (`py.allow_threads(|| forksafe::block_on(fut))` before pyo3 0.26,
/// `py.detach(...)` from 0.26).
///
/// If this process's runtime cannot be built (out of threads or memory), a spawn's join handle
/// resolves to an error that pyo3-async-runtimes reports as a panic, `RustPanic("rust future
/// panicked: could not build the tokio runtime ...")`. One case stays silent: the *outer* task of
/// `future_into_py` is spawned without its handle being awaited, so there the awaitable never
/// completes (pyo3-async-runtimes drops that handle).
///
/// With pyo3-async-runtimes 0.30, the one this crate's `python` feature builds on (the example
/// compiles only with that feature; `examples/pyo3-0.25` and `scripts/test generic` compile the
/// macro against every minor from 0.25 to 0.30):
///
#[cfg_attr(feature = "python", doc = "```")]
#[cfg_attr(not(feature = "python"), doc = "```ignore")]
/// use pyo3::prelude::*;
/// use pyo3_async_runtimes::generic;
///
/// forksafe::generic_runtime!(ForksafeRuntime, pyo3_async_runtimes = "0.30");
///
/// #[pyfunction]
/// fn answer(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
///     generic::future_into_py::<ForksafeRuntime, _, _>(py, async { Ok(42) })
/// }
///
/// Python::initialize();
/// Python::attach(|py| -> PyResult<()> {
///     let event_loop = py.import("asyncio")?.call_method0("new_event_loop")?;
///     let value = generic::run_until_complete::<ForksafeRuntime, _, _>(&event_loop, async {
///         // Inside the future: the task locals, kept in forksafe's task-local scope.
///         Python::attach(|py| generic::get_current_loop::<ForksafeRuntime>(py).map(|_| ()))?;
///         Ok(21 * 2)
///     })?;
///     event_loop.call_method0("close")?;
///     assert_eq!(value, 42);
///     Ok(())
/// })
/// .unwrap();
/// ```
#[macro_export]
macro_rules! generic_runtime {
    ($(#[$attr:meta])* $vis:vis $name:ident $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, with_gil, no_blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = "0.25" $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, with_gil, no_blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = "0.26" $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, attach, no_blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = "0.27" $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, clone, blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = "0.28" $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, clone, blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = "0.29" $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, clone, blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = "0.30" $(,)?) => {
        $crate::generic_runtime!(@expand [$(#[$attr])*] [$vis] $name, clone, blocking);
    };
    ($(#[$attr:meta])* $vis:vis $name:ident, pyo3_async_runtimes = $other:literal $(,)?) => {
        ::core::compile_error!(::core::concat!(
            "forksafe::generic_runtime!: pyo3-async-runtimes ", $other,
            " is not one this forksafe knows (\"0.25\" to \"0.30\"); for the newest, use forksafe::python"
        ));
    };

    // How a `TaskLocals` is copied out of the task-local scope (see the module docs).
    (@copy with_gil, $locals:ident) => {{
        #[allow(deprecated)]
        let copy = ::pyo3::Python::with_gil(|py| $locals.clone_ref(py));
        copy
    }};
    (@copy attach, $locals:ident) => {
        ::pyo3::Python::attach(|py| $locals.clone_ref(py))
    };
    (@copy clone, $locals:ident) => {
        ::core::clone::Clone::clone($locals)
    };

    // `Runtime::spawn_blocking`, required from 0.27 and absent before.
    (@spawn_blocking no_blocking) => {};
    (@spawn_blocking blocking) => {
        fn spawn_blocking<F>(f: F) -> Self::JoinHandle
        where
            F: ::core::ops::FnOnce() + ::core::marker::Send + 'static,
        {
            ForksafeJoinHandle($crate::__private::spawn_blocking(f))
        }
    };

    (@expand [$($attr:tt)*] [$vis:vis] $name:ident, $copy:ident, $blocking:ident) => {
        $($attr)*
        #[derive(Debug, Clone, Copy, Default)]
        $vis struct $name;

        // The join types are the extension's own (its pyo3-async-runtimes' traits cannot be
        // implemented for forksafe's types), unnameable outside this block.
        #[allow(unreachable_pub)]
        const _: () = {
            use ::pyo3_async_runtimes::generic;
            use ::pyo3_async_runtimes::TaskLocals;
            use ::std::boxed::Box;
            use ::std::future::Future;
            use ::std::pin::Pin;

            $crate::__private::tokio::task_local! {
                static TASK_LOCALS: TaskLocals;
            }

            /// Why a task did not finish: forksafe's `TaskError` (its `is_panic` policy included).
            #[derive(Debug)]
            pub struct ForksafeJoinError($crate::__private::JoinError);

            impl ::core::fmt::Display for ForksafeJoinError {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    ::core::fmt::Display::fmt(&self.0, f)
                }
            }

            impl ::std::error::Error for ForksafeJoinError {
                fn source(&self) -> ::core::option::Option<&(dyn ::std::error::Error + 'static)> {
                    ::core::option::Option::Some(&self.0)
                }
            }

            impl generic::JoinError for ForksafeJoinError {
                fn is_panic(&self) -> bool {
                    self.0.is_panic()
                }
                fn into_panic(self) -> Box<dyn ::core::any::Any + ::core::marker::Send + 'static> {
                    self.0.into_panic()
                }
            }

            #[derive(Debug)]
            pub struct ForksafeJoinHandle($crate::__private::JoinHandle);

            impl Future for ForksafeJoinHandle {
                type Output = ::core::result::Result<(), ForksafeJoinError>;
                fn poll(
                    mut self: Pin<&mut Self>,
                    cx: &mut ::core::task::Context<'_>,
                ) -> ::core::task::Poll<Self::Output> {
                    Pin::new(&mut self.0).poll(cx).map(|done| done.map_err(ForksafeJoinError))
                }
            }

            impl generic::Runtime for $name {
                type JoinError = ForksafeJoinError;
                type JoinHandle = ForksafeJoinHandle;

                fn spawn<F>(fut: F) -> Self::JoinHandle
                where
                    F: Future<Output = ()> + ::core::marker::Send + 'static,
                {
                    ForksafeJoinHandle($crate::__private::spawn(fut))
                }

                $crate::generic_runtime!(@spawn_blocking $blocking);
            }

            impl generic::ContextExt for $name {
                fn scope<F, R>(
                    locals: TaskLocals,
                    fut: F,
                ) -> Pin<Box<dyn Future<Output = R> + ::core::marker::Send>>
                where
                    F: Future<Output = R> + ::core::marker::Send + 'static,
                {
                    Box::pin(TASK_LOCALS.scope(locals, fut))
                }

                fn get_task_locals() -> ::core::option::Option<TaskLocals> {
                    TASK_LOCALS
                        .try_with(|locals| $crate::generic_runtime!(@copy $copy, locals))
                        .ok()
                }
            }

            impl generic::SpawnLocalExt for $name {
                fn spawn_local<F>(fut: F) -> Self::JoinHandle
                where
                    F: Future<Output = ()> + 'static,
                {
                    ForksafeJoinHandle($crate::__private::spawn_local(fut))
                }
            }

            impl generic::LocalContextExt for $name {
                fn scope_local<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R>>>
                where
                    F: Future<Output = R> + 'static,
                {
                    Box::pin(TASK_LOCALS.scope(locals, fut))
                }
            }
        };
    };
}

/// What [`generic_runtime!`](crate::generic_runtime) expands against. Not an API: it changes
/// with the macro.
#[doc(hidden)]
pub mod __private {
    pub use tokio;

    // One task type for both generic runtimes (src/task.rs); the macro's names for it.
    pub use crate::task::{
        spawn, spawn_blocking, spawn_local, TaskError as JoinError, TaskHandle as JoinHandle,
    };
}
