//! This process's tokio runtime: how it is built, configured, and reached.
//!
//! Each entry point goes through the PID [guard](crate::guard), so a forked child transparently
//! gets (and builds, on first use) a runtime of its own; the runtime is stored in the calling
//! process's [record](crate::process). Nothing here consults `Handle::current()` or any other
//! thread-local that the forking thread carries into a child (invariant 7): the runtime always
//! comes from the guard.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::config::{self, RuntimeConfig};
use crate::error::{Error, Result};
use crate::guard;
use crate::tokio_probe;

/// This process's runtime, built on first use in each process.
///
/// The reference is valid for the life of the process. Do not carry it, or a [`Handle`] from
/// it, across a fork: call again in the child.
///
/// # Errors
///
/// [`Error::Build`] if tokio cannot build the runtime (out of threads, file descriptors or
/// memory); the next call tries again.
///
/// ```
/// let rt = forksafe::runtime().unwrap();
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// ```
#[inline]
pub fn runtime() -> Result<&'static Runtime> {
    let process = guard::current();
    if let Some(runtime) = process.runtime() {
        return Ok(runtime);
    }
    build_for(process)
}

#[cold]
fn build_for(process: &'static crate::process::Process) -> Result<&'static Runtime> {
    process
        .runtime_or_build(|| {
            #[cfg(forksafe_fault_injection)]
            crate::fault_injection::while_building_runtime();
            build(config::current(), process.depth()).map_err(|source| Error::Build {
                pid: process.pid(),
                source,
            })
        })
        .inspect(|runtime| tokio_probe::probe_once(runtime))
}

/// Added to the configured stack size of the runtime threads once per generation (a process
/// `depth` forks below the first forksafe user gets `depth` steps).
///
/// Why: glibc keeps the stacks of the threads a child did not inherit in its stack cache and
/// serves a new thread from it when the requested size fits (requested <= cached <= 4 x
/// requested). With tokio's `parking_lot` feature on, those dead stacks (and the TLS glibc
/// frees with them) hold the parking-table nodes of the parent's parked threads; a runtime
/// thread built on one overwrites nodes the table still links (docs/design.md, "Hazards that
/// live in the dependencies"). A child's runtime threads always ask for more than any of its
/// ancestors' runtime threads had, so glibc never hands them one of those stacks.
///
/// ```
/// assert_eq!(forksafe::GENERATION_STACK_STEP, 64 * 1024);
/// ```
pub const GENERATION_STACK_STEP: usize = 64 * 1024;

/// The stack size of a runtime thread `depth` generations down.
fn stack_size(config: &RuntimeConfig, depth: u32) -> usize {
    let steps = usize::try_from(depth).unwrap_or(usize::MAX);
    config
        .get_thread_stack_size()
        .saturating_add(steps.saturating_mul(GENERATION_STACK_STEP))
}

/// Sets the configuration of this process's runtime, and of the runtimes its children build.
///
/// Call it before the first use of the runtime in this process.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the first field out of range; [`Error::AlreadyStarted`] once
/// this process has built its runtime.
///
/// ```
/// forksafe::configure(forksafe::RuntimeConfig::new().worker_threads(2)).unwrap();
/// let seven = forksafe::block_on(async { 7 }).unwrap();
/// assert_eq!(seven, 7);
/// assert!(matches!(
///     forksafe::configure(forksafe::RuntimeConfig::new()),
///     Err(forksafe::Error::AlreadyStarted { .. })
/// ));
/// ```
pub fn configure(config: RuntimeConfig) -> Result<()> {
    config.validate()?;
    let process = guard::current();
    if process.while_not_started(|| config::set(config)) {
        Ok(())
    } else {
        Err(Error::AlreadyStarted { pid: process.pid() })
    }
}

thread_local! {
    /// Set on every thread a forksafe runtime starts: `block_on` there would panic or deadlock.
    static RUNTIME_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread was started by a forksafe runtime (this process's or, when a
/// runtime thread forked, an ancestor's).
fn on_runtime_thread() -> bool {
    RUNTIME_THREAD.with(Cell::get)
}

fn build(config: &RuntimeConfig, depth: u32) -> std::io::Result<Runtime> {
    let prefix = config.get_thread_name().to_owned();
    let counter = AtomicUsize::new(0);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.get_worker_threads())
        .max_blocking_threads(config.get_max_blocking_threads())
        // Always explicit: without it std reads RUST_MIN_STACK under its environment lock.
        .thread_stack_size(stack_size(config, depth))
        .thread_name_fn(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            format!("{prefix}-{n}")
        })
        .on_thread_start(|| RUNTIME_THREAD.with(|flag| flag.set(true)))
        .enable_io()
        .enable_time()
        .build()
}

/// A handle to this process's runtime, built on first use in each process.
///
/// # Errors
///
/// As [`runtime`].
///
/// ```
/// let handle = forksafe::handle().unwrap();
/// let task = handle.spawn(async { 21 * 2 });
/// assert_eq!(forksafe::block_on(task).unwrap().unwrap(), 42);
/// ```
#[inline]
pub fn handle() -> Result<Handle> {
    Ok(runtime()?.handle().clone())
}

/// Spawns `fut` onto this process's runtime.
///
/// # Errors
///
/// As [`runtime`].
///
/// ```
/// let task = forksafe::spawn(async { "done" }).unwrap();
/// assert_eq!(forksafe::block_on(task).unwrap().unwrap(), "done");
/// ```
#[inline]
pub fn spawn<F>(fut: F) -> Result<JoinHandle<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(runtime()?.spawn(fut))
}

/// Runs `f` on this process's blocking pool.
///
/// # Errors
///
/// As [`runtime`].
///
/// ```
/// let task = forksafe::spawn_blocking(|| std::process::id()).unwrap();
/// assert_eq!(forksafe::block_on(task).unwrap().unwrap(), std::process::id());
/// ```
#[inline]
pub fn spawn_blocking<F, R>(f: F) -> Result<JoinHandle<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    Ok(runtime()?.spawn_blocking(f))
}

thread_local! {
    static IN_BLOCK_ON: Cell<bool> = const { Cell::new(false) };
}

/// Drives `fut` to completion on the calling thread, with this process's runtime.
///
/// # Errors
///
/// [`Error::InsideRuntime`] instead of tokio's panic (or a deadlock) when called from a thread
/// of a forksafe runtime, or from inside another `block_on`; otherwise as [`runtime`].
///
/// ```
/// let answer = forksafe::block_on(async {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///     42
/// });
/// assert_eq!(answer.unwrap(), 42);
/// ```
///
/// A drop-in for `Runtime::block_on` at call sites that cannot return the error: `.expect()`,
/// or one small wrapper (it panics where this function errs; never let that panic cross an FFI
/// boundary, return the error there):
///
/// ```
/// async fn lookup() -> u32 {
///     7
/// }
///
/// // was: RUNTIME.block_on(lookup())
/// let n = forksafe::block_on(lookup()).expect("forksafe runtime");
///
/// /// `Runtime::block_on`'s shape. Panics where `forksafe::block_on` errs (on a runtime
/// /// thread, nested, or when no runtime can be built).
/// fn block_on<F: std::future::Future>(fut: F) -> F::Output {
///     match forksafe::block_on(fut) {
///         Ok(output) => output,
///         Err(e) => panic!("cannot block on forksafe's runtime: {e}"),
///     }
/// }
/// let m = block_on(lookup());
/// assert_eq!((n, m), (7, 7));
/// ```
pub fn block_on<F: Future>(fut: F) -> Result<F::Output> {
    if on_runtime_thread() {
        return Err(Error::InsideRuntime {
            why: "the calling thread belongs to a runtime",
        });
    }
    if IN_BLOCK_ON.with(Cell::get) {
        return Err(Error::InsideRuntime {
            why: "the calling thread is already inside block_on",
        });
    }
    let runtime = runtime()?;
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_BLOCK_ON.with(|flag| flag.set(false));
        }
    }
    IN_BLOCK_ON.with(|flag| flag.set(true));
    let _reset = Reset;
    Ok(runtime.block_on(fut))
}
