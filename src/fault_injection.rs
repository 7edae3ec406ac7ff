//! Fault-injection points for the fork suites, compiled only with
//! `RUSTFLAGS="--cfg forksafe_fault_injection"` (as tokio gates `tokio_unstable`): no cargo feature
//! of the published crate, and so no crate in a dependent's graph, can turn them on.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::guard;

static BUILD_HOOK: AtomicUsize = AtomicUsize::new(0);
static BUILD_HOOK_PID: AtomicU32 = AtomicU32::new(0);

/// Installs `hook`, called while this process builds its runtime, with the runtime's build
/// lock held. It runs only in the process that installed it, so a test can park a parent
/// thread inside the slow path and fork.
///
/// ```
/// forksafe::set_build_hook(|| {});
/// forksafe::clear_build_hook();
/// ```
pub fn set_build_hook(hook: fn()) {
    BUILD_HOOK_PID.store(guard::getpid(), Ordering::SeqCst);
    BUILD_HOOK.store(hook as usize, Ordering::SeqCst);
}

/// Removes the build hook.
///
/// ```
/// forksafe::clear_build_hook();
/// ```
pub fn clear_build_hook() {
    BUILD_HOOK.store(0, Ordering::SeqCst);
}

pub(crate) fn while_building_runtime() {
    let hook = BUILD_HOOK.load(Ordering::SeqCst);
    if hook != 0 && BUILD_HOOK_PID.load(Ordering::SeqCst) == guard::getpid() {
        // SAFETY: BUILD_HOOK only ever holds 0 or a `fn()` stored by `set_build_hook`.
        let hook: fn() = unsafe { std::mem::transmute::<usize, fn()>(hook) };
        hook();
    }
}

/// Write-locks one shard of this process's lineage map until the guard is dropped, so another
/// thread calling [`process_info`](crate::process_info) parks on it inside `parking_lot_core`.
///
/// ```
/// let guard = forksafe::lock_lineage_shard();
/// drop(guard);
/// ```
pub fn lock_lineage_shard() -> impl Drop {
    let lineage = guard::current().lineage();
    // An `Entry` holds its shard's write lock whether or not the key is present.
    struct Held(#[allow(dead_code)] dashmap::Entry<'static, u32, Vec<crate::InheritedRuntime>>);
    impl Drop for Held {
        fn drop(&mut self) {}
    }
    Held(lineage.entry(u32::MAX))
}
