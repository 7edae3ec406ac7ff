//! The public entry points onto this process's runtime. Each goes through the PID guard, so a
//! forked child transparently gets (and builds, on first use) a runtime of its own.
//!
//! Nothing here consults `Handle::current()` or any other thread-local that the forking thread
//! carries into a child (invariant 7): the runtime always comes from the guard.

use std::cell::Cell;
use std::future::Future;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

use crate::registry::on_runtime_thread;
use crate::{guard, Error, Result};

/// This process's runtime, built on first use in each process.
///
/// The reference is valid for the life of the process. Do not carry it, or a [`Handle`] from
/// it, across a fork: call again in the child.
///
/// ```
/// let rt = forksafe::runtime().unwrap();
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// ```
#[inline]
pub fn runtime() -> Result<&'static Runtime> {
    guard::current().runtime()
}

/// A handle to this process's runtime, built on first use in each process.
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
/// Returns [`Error::InsideRuntime`] instead of tokio's panic (or a deadlock) when called from a
/// thread of a forksafe runtime, or from inside another `block_on`.
///
/// ```
/// let answer = forksafe::block_on(async {
///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
///     42
/// });
/// assert_eq!(answer.unwrap(), 42);
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
