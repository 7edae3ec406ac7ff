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
    /// The process token ([`guard::process_token`]) of the runtime that started this thread, or
    /// 0: `block_on` there would panic or deadlock. A token, so that a child forked from a
    /// runtime thread can tell that the thread belongs to its parent's runtime.
    static RUNTIME_THREAD: Cell<u64> = const { Cell::new(0) };
}

/// Whether the calling thread was started by a forksafe runtime (this process's or, when a
/// runtime thread forked, an ancestor's).
fn on_runtime_thread() -> bool {
    RUNTIME_THREAD.with(Cell::get) != 0
}

/// Whether the calling thread was started by an ancestor's runtime: this process was forked
/// from one of its worker threads (Python called from a bridged task that forked). tokio's
/// `CONTEXT` thread-local there still holds the parent's scheduler, so no runtime can be
/// entered on this thread (docs/design.md, "What we take from tokio").
#[cfg(feature = "python")]
pub(crate) fn on_inherited_runtime_thread() -> bool {
    let token = RUNTIME_THREAD.with(Cell::get);
    token != 0 && token != guard::process_token()
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
        .on_thread_start(|| RUNTIME_THREAD.with(|token| token.set(guard::process_token())))
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

/// Whether the calling thread is still polling a future of an ancestor process: it was forked
/// on a thread of an ancestor's runtime, or inside an ancestor's `block_on` (and is not inside a
/// `block_on` of this process's). Whatever tokio task-local that future set is the ancestor's.
#[cfg(feature = "python")]
pub(crate) fn polling_an_ancestors_future() -> bool {
    let outer = IN_BLOCK_ON.with(Cell::get);
    on_inherited_runtime_thread() || (outer != 0 && outer != guard::process_token())
}

thread_local! {
    /// The process token of the `block_on` this thread is inside, or 0. A child forked from
    /// inside `block_on` inherits its parent's token (and tokio's "entered" state with it).
    static IN_BLOCK_ON: Cell<u64> = const { Cell::new(0) };
}

/// Drives `fut` to completion on the calling thread, with this process's runtime.
///
/// # Errors
///
/// [`Error::InsideRuntime`] instead of tokio's panic (or a deadlock) when called from a thread
/// of a forksafe runtime (this process's, or a parent's that forked there: that thread still
/// carries the parent's scheduler, so run the future from another thread), or from inside
/// another `block_on`; otherwise as [`runtime`].
///
/// In a child forked from inside `block_on` (say, Python code that a `block_on` future runs,
/// forking), the thread's tokio context still says it is inside the parent's runtime. That
/// `block_on` is the parent's, not this process's: this one steps out of its state with
/// `tokio::task::block_in_place`, on this thread, and runs the child's own runtime.
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
            why: "the calling thread belongs to a runtime (or, forked there, to the parent's)",
        });
    }
    let this_process = guard::process_token();
    let outer = IN_BLOCK_ON.with(Cell::get);
    if outer == this_process {
        return Err(Error::InsideRuntime {
            why: "the calling thread is already inside block_on",
        });
    }
    let runtime = runtime()?;
    struct Reset(u64);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_BLOCK_ON.with(|token| token.set(self.0));
        }
    }
    IN_BLOCK_ON.with(|token| token.set(this_process));
    let _reset = Reset(outer);
    if outer == 0 {
        return Ok(runtime.block_on(fut));
    }
    // Forked inside an ancestor's `block_on` on this thread: tokio would panic ("Cannot start a
    // runtime from within a runtime"). That runtime was multi-threaded and this thread no worker
    // of it, so `block_in_place` only marks the thread as outside it for the closure (no core to
    // hand off, no thread started) and puts the old state back after.
    Ok(tokio::task::block_in_place(|| runtime.block_on(fut)))
}
