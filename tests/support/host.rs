//! Test processes start like a Python extension's host: without std's stack-overflow registry.
//! Every forking test binary includes this module (its constructor runs before `main`).

use libc::c_int;

// Why: in a Rust *binary* (these test binaries), std's runtime init installs SIGSEGV/SIGBUS
// handlers for its "thread has overflowed its stack" message, and from then on every
// `std::thread` registers itself at start (and unregisters at exit) in a process-global map
// guarded by a `Mutex` plus a spin lock (std/src/sys/pal/unix/stack_overflow/thread_info.rs).
// A fork taken while another thread of the parent is starting or exiting a std thread leaves
// that lock held in the child, and the child's first `std::thread::spawn` (tokio's worker
// threads, when forksafe builds the child's runtime) blocks forever. Measured here: about 1
// child in 1,000 hangs when the parent churns threads, and the concurrent fork storm below hit
// it. forksafe cannot prevent it (tokio spawns std threads); docs note it as a hazard of Rust
// binaries. A `cdylib` loaded by Python never runs std's runtime init, so the registry stays
// off there and the hazard does not exist.
//
// The test harness itself churns threads (one per test, run in parallel), so the suite makes
// its processes look like that production case: a constructor that runs before std's init
// installs plain SIGSEGV/SIGBUS handlers, and std, seeing handlers already in place, leaves its
// registry off. (The handlers restore the default action and return, so a fault still kills
// the process with SIGSEGV/SIGBUS; only std's stack-overflow message is lost.) Set
// FORKSAFE_TEST_STD_ALTSTACK=1 to keep std's registry and see the hazard.

#[cfg(target_os = "linux")]
extern "C" fn restore_default_and_return(
    signal: c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: signal() is async-signal-safe; returning re-runs the faulting instruction, which
    // now takes the default action.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

#[cfg(target_os = "linux")]
#[allow(
    clippy::disallowed_methods,
    reason = "runs before main, single-threaded: no lock and no other thread to hold one"
)]
extern "C" fn keep_std_stack_overflow_registry_off() {
    // SAFETY: runs single-threaded before main; getenv and sigaction have no other
    // preconditions, and the sigaction struct is fully initialised.
    unsafe {
        if !libc::getenv(c"FORKSAFE_TEST_STD_ALTSTACK".as_ptr()).is_null() {
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = restore_default_and_return
            as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGSEGV, libc::SIGBUS] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static KEEP_STD_STACK_OVERFLOW_REGISTRY_OFF: extern "C" fn() = keep_std_stack_overflow_registry_off;

/// True when the constructor above ran in this process (or in the ancestor it was forked
/// from), so std's stack-overflow registry is off.
#[cfg(target_os = "linux")]
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn std_thread_registry_off() -> bool {
    // SAFETY: a zeroed sigaction is a valid out-parameter; sigaction only reads the disposition.
    let current = unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGSEGV, std::ptr::null(), &mut current);
        current
    };
    current.sa_sigaction
        == restore_default_and_return
            as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t
}
