//! The fork harness: the only place a Rust test forks (`scripts/lib/check-layout` enforces it).
//!
//! [`fork_child`] forks, runs the child's closure with a [`Reporter`] on a fresh pipe, and waits
//! for it under the hang detector (`hang.rs`); the parent then checks the [`ChildReport`].
//! The child leaves with `libc::_exit`, so no harness teardown runs twice; a panic in the child
//! is caught, reported as a line, and turned into exit status 101.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;
use std::time::Duration;

use libc::{c_int, pid_t};

use super::hang::wait_child;
use super::sys::{errno, getpid};
use super::wire::{sanitize, write_all_fd, ChildReport, Reporter};

/// How to create the child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkMethod {
    /// glibc's `fork()`: runs the `pthread_atfork` handlers (glibc's own reset the malloc locks).
    Libc,
    /// A raw `clone(SIGCHLD)` system call: no `pthread_atfork` handler runs, glibc's included.
    /// Only safe when no other thread of the caller can hold a libc lock: quiesce first
    /// ([`wait_until_quiescent`]).
    #[allow(
        dead_code,
        reason = "part of the harness; not every test binary that includes this module calls it"
    )]
    RawSyscall,
}

/// Forks with `method`. Returns what `fork()` returns: 0 in the child, the child's PID in the
/// parent, -1 on failure.
pub fn fork_process(method: ForkMethod) -> pid_t {
    match method {
        // SAFETY: fork has no preconditions; the callers keep the child to async-signal-safe-ish
        // work plus what glibc's own fork handlers make safe (malloc).
        ForkMethod::Libc => unsafe { libc::fork() },
        ForkMethod::RawSyscall => raw_fork_syscall(),
    }
}

/// `clone(SIGCHLD, 0, 0, 0, 0)`: with every pointer argument zero, the argument order that
/// differs between x86_64 and aarch64 does not matter.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn raw_fork_syscall() -> pid_t {
    // Every argument is passed as a full c_ulong: a bare `0` would be a 32-bit variadic int.
    let (flags, zero) = (libc::SIGCHLD as libc::c_ulong, 0 as libc::c_ulong);
    // SAFETY: a clone with only the exit signal set and no new stack behaves like fork(2),
    // minus glibc's atfork handlers; the caller has quiesced the other threads.
    unsafe { libc::syscall(libc::SYS_clone, flags, zero, zero, zero, zero) as pid_t }
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn raw_fork_syscall() -> pid_t {
    panic!("the raw clone fork is wired only for Linux on x86_64 and aarch64")
}

/// The write end of the pipe of the nearest enclosing `fork_child` (-1 in the test process).
/// A panic hook writes panics there, from whichever thread or descendant process panics.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

static PANIC_HOOK: Once = Once::new();

/// Installed once in the test process, before its first fork. In a child it writes the panic's
/// location and message to the report pipe and does nothing else: the default hook prints
/// through locks a parent thread may have held at the instant of fork.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fd = REPORT_FD.load(Ordering::SeqCst);
            if fd < 0 {
                previous(info);
                return;
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let thread = std::thread::current();
            let line = format!(
                "@panic_at=pid {} thread {} at {}: {}\n",
                getpid(),
                thread.name().unwrap_or("?"),
                location,
                sanitize(&payload_text(info.payload())),
            );
            write_all_fd(fd, line.as_bytes());
        }));
    });
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}

/// Runs `f` in a child process and leaves with `_exit`: 0 after reporting `@done=1`, or 101
/// after reporting `@panic=<message>`. Never returns.
pub fn child_main(rep: &Reporter, f: impl FnOnce()) -> ! {
    REPORT_FD.store(rep.fd, Ordering::SeqCst);
    let code = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => {
            rep.kv("@done", 1);
            0
        }
        Err(payload) => {
            rep.kv("@panic", payload_text(&*payload));
            // Never drop the payload here: keep the child to the minimum before _exit.
            std::mem::forget(payload);
            101
        }
    };
    // SAFETY: _exit ends the process at once, running no atexit handler or destructor.
    unsafe { libc::_exit(code) }
}

/// Forks (with `method`), runs `child` in the child with a [`Reporter`] on a fresh pipe, and
/// waits for the child at most `deadline`. On expiry the child and all its descendants are
/// SIGKILLed and reaped, and this panics with "child <pid> hung after <deadline>; last words:
/// <what it wrote>". Otherwise returns the report; the caller checks the status and values.
///
/// Usable in the test process and in any child (nested forks): in a child it allocates, which
/// is fine after `fork()` (glibc resets its malloc locks) and after a quiesced raw fork.
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn fork_child<F: FnOnce(&Reporter)>(
    method: ForkMethod,
    deadline: Duration,
    child: F,
) -> ChildReport {
    fork_child_with(
        &format!("{method:?}"),
        || fork_process(method),
        deadline,
        child,
    )
}

/// [`fork_child`] with any fork primitive (for example Python's `os.fork`): `fork` returns 0 in
/// the child, the child's PID in the parent, -1 on failure; `name` labels a failure.
pub fn fork_child_with<F: FnOnce(&Reporter)>(
    name: &str,
    fork: impl FnOnce() -> pid_t,
    deadline: Duration,
    child: F,
) -> ChildReport {
    install_panic_hook();
    let top_level = REPORT_FD.load(Ordering::SeqCst) < 0;
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        panic!("pipe2 failed: {}", errno());
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let pid = fork();
    if pid < 0 {
        let err = errno();
        // SAFETY: both descriptors are ours.
        unsafe {
            libc::close(read_fd);
            libc::close(write_fd);
        }
        panic!("fork ({name}) failed: {err}");
    }
    if pid == 0 {
        // The child.
        // SAFETY: closing our copy of the read end touches nothing else.
        unsafe { libc::close(read_fd) };
        if top_level {
            // Its own process group, so that a hang can be killed with every descendant.
            // SAFETY: setpgid on ourselves has no memory-safety preconditions.
            unsafe { libc::setpgid(0, 0) };
        }
        let rep = Reporter::new(write_fd);
        child_main(&rep, || child(&rep));
    }
    // The parent.
    if top_level {
        // SAFETY: as above; both sides call it to close the race with the child's first fork.
        unsafe { libc::setpgid(pid, pid) };
    }
    // SAFETY: our copy of the write end; the child has its own.
    unsafe { libc::close(write_fd) };
    wait_child(pid, read_fd, deadline, top_level)
}
