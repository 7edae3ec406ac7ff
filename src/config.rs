//! Runtime configuration: what each process's tokio runtime is built with.
//!
//! The configuration lives in one immutable, leaked value behind an atomic pointer ([`Published`]), so a child
//! reads its parent's configuration without taking any lock (invariant 3) and rebuilds with it.

use crate::error::{Error, Result};
use crate::publish::Published;

/// How each process's tokio runtime is built. Set with [`configure`](crate::configure) before first use.
///
/// ```
/// use forksafe::RuntimeConfig;
///
/// let config = RuntimeConfig::new()
///     .worker_threads(2)
///     .thread_name("my-ext")
///     .max_blocking_threads(16)
///     .thread_stack_size(1 << 20);
/// assert_eq!(config.get_worker_threads(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeConfig {
    worker_threads: usize,
    thread_name: String,
    max_blocking_threads: usize,
    thread_stack_size: usize,
}

/// The smallest stack forksafe accepts for runtime threads.
pub const MIN_THREAD_STACK_SIZE: usize = 64 * 1024;

/// The most workers [`RuntimeConfig::new`] starts, whatever the core count.
pub const DEFAULT_MAX_WORKER_THREADS: usize = 4;

/// The blocking-pool limit of [`RuntimeConfig::new`] (tokio's own default is 512).
pub const DEFAULT_MAX_BLOCKING_THREADS: usize = 64;

impl RuntimeConfig {
    /// The defaults: one worker per available core **at most 4**
    /// ([`DEFAULT_MAX_WORKER_THREADS`]), thread names `forksafe-N`, **64** blocking threads
    /// ([`DEFAULT_MAX_BLOCKING_THREADS`]), 2 MiB stacks.
    ///
    /// These are smaller than tokio's and pyo3-async-runtimes' (one worker per core, 512
    /// blocking threads): every forked child builds a runtime of its own, so a parent with
    /// 16 DataLoader workers on a 64-core machine would otherwise start 16 × 64 workers. An
    /// extension migrating from pyo3-async-runtimes that wants its old size back passes
    /// [`RuntimeConfig::pyo3_async_runtimes_defaults`] to [`configure`](crate::configure);
    /// `process_info()` reports the size in use (docs/design.md, "Runtime size", has the
    /// measured thread counts).
    ///
    /// ```
    /// let config = forksafe::RuntimeConfig::new();
    /// assert!((1..=4).contains(&config.get_worker_threads()));
    /// assert_eq!(config.get_max_blocking_threads(), 64);
    /// ```
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        RuntimeConfig {
            worker_threads: cores.clamp(1, DEFAULT_MAX_WORKER_THREADS),
            thread_name: "forksafe".to_owned(),
            max_blocking_threads: DEFAULT_MAX_BLOCKING_THREADS,
            thread_stack_size: 2 * 1024 * 1024,
        }
    }

    /// The size pyo3-async-runtimes' default runtime has (0.30's `tokio::init` default:
    /// `Builder::new_multi_thread()`, so tokio's defaults): **one worker per available core**
    /// and **512 blocking threads**, 2 MiB stacks. The thread names stay `forksafe-N`, and the
    /// runtime is still built without the signal and process drivers (invariant 8).
    ///
    /// For an extension migrating from `pyo3_async_runtimes::tokio` (or a runtime of its own of
    /// that size, as LanceDB's was) that must keep its size: every process, each forked child
    /// included, builds a runtime this large on first use.
    ///
    /// ```
    /// let config = forksafe::RuntimeConfig::pyo3_async_runtimes_defaults();
    /// let cores = std::thread::available_parallelism().map_or(1, usize::from);
    /// assert_eq!(config.get_worker_threads(), cores);
    /// assert_eq!(config.get_max_blocking_threads(), 512);
    /// forksafe::configure(config).unwrap();
    /// ```
    pub fn pyo3_async_runtimes_defaults() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        RuntimeConfig::new()
            .worker_threads(cores)
            .max_blocking_threads(512)
    }

    /// Number of worker threads (at least 1).
    ///
    /// ```
    /// let c = forksafe::RuntimeConfig::new().worker_threads(3);
    /// assert_eq!(c.get_worker_threads(), 3);
    /// ```
    pub fn worker_threads(mut self, n: usize) -> Self {
        self.worker_threads = n;
        self
    }

    /// Prefix of the runtime's thread names; threads are named `{prefix}-{n}`.
    ///
    /// ```
    /// let c = forksafe::RuntimeConfig::new().thread_name("lance");
    /// assert_eq!(c.get_thread_name(), "lance");
    /// ```
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = prefix.into();
        self
    }

    /// Upper bound on tokio's blocking-pool threads (at least 1).
    ///
    /// ```
    /// let c = forksafe::RuntimeConfig::new().max_blocking_threads(8);
    /// assert_eq!(c.get_max_blocking_threads(), 8);
    /// ```
    pub fn max_blocking_threads(mut self, n: usize) -> Self {
        self.max_blocking_threads = n;
        self
    }

    /// Stack size of every runtime thread, in bytes (at least [`MIN_THREAD_STACK_SIZE`]).
    ///
    /// ```
    /// let c = forksafe::RuntimeConfig::new().thread_stack_size(4 << 20);
    /// assert_eq!(c.get_thread_stack_size(), 4 << 20);
    /// ```
    pub fn thread_stack_size(mut self, bytes: usize) -> Self {
        self.thread_stack_size = bytes;
        self
    }

    /// The configured number of worker threads.
    ///
    /// ```
    /// assert!(forksafe::RuntimeConfig::new().get_worker_threads() > 0);
    /// ```
    pub fn get_worker_threads(&self) -> usize {
        self.worker_threads
    }

    /// The configured thread-name prefix.
    ///
    /// ```
    /// assert_eq!(forksafe::RuntimeConfig::new().get_thread_name(), "forksafe");
    /// ```
    pub fn get_thread_name(&self) -> &str {
        &self.thread_name
    }

    /// The configured blocking-pool limit.
    ///
    /// ```
    /// assert_eq!(forksafe::RuntimeConfig::new().get_max_blocking_threads(), 64);
    /// ```
    pub fn get_max_blocking_threads(&self) -> usize {
        self.max_blocking_threads
    }

    /// The configured thread stack size in bytes.
    ///
    /// ```
    /// assert_eq!(forksafe::RuntimeConfig::new().get_thread_stack_size(), 2 << 20);
    /// ```
    pub fn get_thread_stack_size(&self) -> usize {
        self.thread_stack_size
    }

    /// Checks every field.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] naming the first field out of range.
    ///
    /// ```
    /// let err = forksafe::RuntimeConfig::new().max_blocking_threads(0).validate().unwrap_err();
    /// assert!(err.to_string().contains("max_blocking_threads"));
    /// ```
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, problem: &str| {
            Err(Error::InvalidConfig {
                field,
                problem: problem.to_owned(),
            })
        };
        if self.worker_threads == 0 {
            return invalid("worker_threads", "must be at least 1");
        }
        if self.max_blocking_threads == 0 {
            return invalid("max_blocking_threads", "must be at least 1");
        }
        if self.thread_stack_size < MIN_THREAD_STACK_SIZE {
            return invalid(
                "thread_stack_size",
                &format!(
                    "is {} bytes; it must be at least {MIN_THREAD_STACK_SIZE}",
                    self.thread_stack_size
                ),
            );
        }
        if self.thread_name.contains('\0') {
            return invalid("thread_name", "must not contain a NUL byte");
        }
        Ok(())
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// The configuration in force for this lineage; empty until the first `configure` or build.
static CONFIG: Published<RuntimeConfig> = Published::new();

/// Installs `config` for this lineage. The caller ([`configure`](crate::configure)) checks
/// that this process has not built its runtime yet.
pub(crate) fn set(config: RuntimeConfig) {
    // The value replaced is leaked: a thread of this process may still be reading it, and
    // `configure` is called a handful of times at most, before first use.
    CONFIG.replace(Box::new(config));
}

/// The configuration this process's runtime is (or would now be) built with, without pinning
/// the defaults: what `process_info()` reports.
pub(crate) fn in_force() -> RuntimeConfig {
    CONFIG.get().cloned().unwrap_or_default()
}

/// The configuration to build with, resolving and pinning the defaults on first use so that
/// children rebuild with exactly what their parent used.
pub(crate) fn current() -> &'static RuntimeConfig {
    CONFIG.get_or_publish(RuntimeConfig::new)
}
