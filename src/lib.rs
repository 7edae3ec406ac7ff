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
//! * [`guard`]: how a fork is detected, in about a nanosecond ([`GuardMode`]).
//! * [`registry`]: one record per process, with its runtime and the runtimes it inherited.
//! * [`config`]: what each process's runtime is built with ([`RuntimeConfig`], [`configure`]).
//! * [`ForkLocal`]: any other per-process resource, rebuilt after fork.
//! * `python` (feature `python`): the PyO3 bridge for extension authors.
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

pub mod config;
mod error;
mod fork_local;
pub mod guard;
pub mod registry;
mod runtime;

#[cfg(feature = "python")]
pub mod python;

#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use config::{configure, RuntimeConfig};
pub use error::{Error, Result};
pub use fork_local::ForkLocal;
pub use guard::GuardMode;
pub use registry::{process_info, InheritedRuntime, ProcessInfo};
pub use runtime::{block_on, handle, runtime, spawn, spawn_blocking};
