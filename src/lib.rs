//! Async Rust that survives `fork()`.
//!
//! Python extensions written in Rust drive async work through a process-global tokio runtime.
//! `fork()` copies memory but not threads: in the child the runtime's workers are gone, yet the
//! global still points at them, and the first async call hangs forever. Hook-based fixes
//! (at-fork handlers registered with libc or with Python) miss every fork path that skips them.
//!
//! forksafe registers no hooks. Every access asks *which process am I?* and compares the answer
//! with the process that built the cached state; a child builds fresh state and never touches
//! the inherited one again (it is leaked, not dropped).
//!
//! * [`runtime`], [`handle`], [`spawn`], [`spawn_blocking`], [`block_on`]: this process's tokio
//!   runtime, built on first use in each process, configured once with [`configure`].
//! * [`ForkLocal`]: any other per-process resource, rebuilt after fork.
//! * [`process_info`]: what this process built and inherited, and how forks are detected
//!   ([`GuardMode`], in about a nanosecond per access on Linux).
//! * [`python`] (feature `python`): the PyO3 bridge for extension authors, a drop-in for
//!   `pyo3_async_runtimes::tokio`.
//! * [`generic_runtime!`]: for an extension on an older PyO3 (pyo3-async-runtimes 0.25 to 0.30),
//!   a runtime type for `pyo3_async_runtimes::generic`, with no PyO3 dependency of forksafe's.
//!
//! The modules, in dependency order (none imports one that imports it back; `scripts/lib/check-layout`
//! checks it, and docs/design.md's module table says what each holds): `error`; `publish` (a
//! value published through one atomic pointer, without a lock); `sys` (platform code: can the
//! platform fork, `getpid`, the wipe-on-fork page, the loop wake-up pipe); `config` (the
//! [`RuntimeConfig`]); `process` (the per-process record: the registry); `guard` (which record is
//! mine); `runtime`, `fork_local` and `info` on top; then the integrations: `generic_runtime`
//! (what [`generic_runtime!`] expands against), `object_store` (features `object-store-0-13`,
//! `object-store-0-14`) and `python` last. `fault_injection` exists only under
//! `--cfg forksafe_fault_injection`.
//!
//! ```
//! // Works the same in the parent and in any forked child.
//! let value = forksafe::block_on(async {
//!     let task = forksafe::spawn(async { 40 + 2 }).unwrap();
//!     task.await.unwrap()
//! })
//! .unwrap();
//! assert_eq!(value, 42);
//! ```
//!
//! # What a child may not do
//!
//! tokio's signal and process drivers are process-global (one shared socket pair). forksafe's
//! runtimes are built without them and the crate does not enable tokio's `signal` or `process`
//! features: a child may not use `tokio::signal` or `tokio::process` through forksafe.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod fork_local;
mod generic_runtime;
mod guard;
mod info;
mod process;
mod publish;
mod runtime;
mod sys;
mod task;
mod tokio_probe;

#[cfg(feature = "python")]
#[cfg_attr(docsrs, doc(cfg(feature = "python")))]
pub mod python;

#[cfg(any(feature = "object-store-0-13", feature = "object-store-0-14"))]
pub mod object_store;

/// Fault injection for forksafe's own fork suites, compiled in only with
/// `RUSTFLAGS="--cfg forksafe_fault_injection"`: no feature of this crate can turn it on.
#[cfg(forksafe_fault_injection)]
mod fault_injection;
#[cfg(forksafe_fault_injection)]
#[doc(hidden)]
pub use fault_injection::{clear_build_hook, lock_lineage_shard, set_build_hook};

pub use config::{
    RuntimeConfig, DEFAULT_MAX_BLOCKING_THREADS, DEFAULT_MAX_WORKER_THREADS, MIN_THREAD_STACK_SIZE,
};
pub use error::{Error, Result};
pub use fork_local::{ForkLocal, Prebuilt};
pub use guard::{process_token, GuardChoice, GuardMode};
pub use info::{process_info, ProcessInfo};
pub use process::InheritedRuntime;
pub use runtime::{
    block_on, configure, handle, runtime, spawn, spawn_blocking, GENERATION_STACK_STEP,
};

/// What `generic_runtime!` expands against: not an API.
#[doc(hidden)]
pub use generic_runtime::__private;
