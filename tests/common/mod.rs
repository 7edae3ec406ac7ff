//! Shared machinery for the fork suites: fork a child under a hang detector, let it report text
//! lines through a pipe, and check the values in the parent.
//!
//! Rules every forking test follows (see docs/design.md, "Testing forks without hanging"):
//!
//! * The child never prints. The test harness captures `println!` output behind a `Mutex` that a
//!   parent thread may hold at the instant of fork; the child writes `key=value` lines to a pipe
//!   with raw `libc::write` (one `write` per line, so lines from several threads or processes
//!   sharing the pipe never interleave: each is shorter than `PIPE_BUF`).
//! * The child leaves with `libc::_exit`, so no harness teardown runs twice. A panic in the child
//!   is caught (`catch_unwind`), reported as a line, and turned into exit status 101.
//! * The parent waits with a deadline (`poll` on the pipe and on a pidfd). On expiry it kills the
//!   child and everything below it, reaps it, and fails the test with the child's last words.
//!   A hung child fails the test; it never hangs CI. The failure message also lists what every
//!   thread of the hung process was blocked in (and, where gdb exists, their backtraces).
//! * Test processes start without std's stack-overflow thread registry, like a Python
//!   extension's host process (see the next section for why).
//!
//! Not every helper is used by every test binary.
#![allow(dead_code)]

use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use libc::{c_int, pid_t};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Test processes start like a Python extension's host: without std's stack-overflow registry
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Forking
// ---------------------------------------------------------------------------------------------

/// How to create the child process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForkMethod {
    /// glibc's `fork()`: runs the `pthread_atfork` handlers (glibc's own reset the malloc locks).
    Libc,
    /// A raw `clone(SIGCHLD)` system call: no `pthread_atfork` handler runs, glibc's included.
    /// Only safe when no other thread of the caller can hold a libc lock: quiesce first
    /// ([`wait_until_quiescent`]).
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

/// The calling process's PID, straight from the kernel.
pub fn getpid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() as u32 }
}

/// The calling thread's kernel thread ID.
pub fn gettid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

// ---------------------------------------------------------------------------------------------
// The child's side: reporting
// ---------------------------------------------------------------------------------------------

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

fn sanitize(text: &str) -> String {
    text.replace('\n', " | ")
}

/// Writes all of `bytes` with raw `write(2)` calls (no std lock, no stdout).
fn write_all_fd(fd: c_int, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live slice; a bad fd only makes write fail.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            if errno().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return; // nobody left to tell
        }
        bytes = &bytes[n as usize..];
    }
}

/// Writes `key=value` lines to the parent. Cheap to clone; usable from any thread of the child
/// and from the child's own descendants (they inherit the descriptor).
#[derive(Clone, Debug)]
pub struct Reporter {
    fd: c_int,
    prefix: String,
}

impl Reporter {
    fn new(fd: c_int) -> Self {
        Reporter {
            fd,
            prefix: String::new(),
        }
    }

    /// The same pipe, with `prefix` prepended to every key.
    pub fn with_prefix(&self, prefix: &str) -> Reporter {
        Reporter {
            fd: self.fd,
            prefix: format!("{}{prefix}", self.prefix),
        }
    }

    /// Reports `key=value` (newlines in the value are flattened).
    pub fn kv(&self, key: &str, value: impl Display) {
        let line = format!("{}{key}={}\n", self.prefix, sanitize(&value.to_string()));
        write_all_fd(self.fd, line.as_bytes());
    }

    /// Passes a grandchild's report up: its PID, its wait status, and every line, each under
    /// `prefix`. The test process reads it back with [`ChildReport::sub`].
    pub fn forward(&self, prefix: &str, report: &ChildReport) {
        let sub = self.with_prefix(prefix);
        sub.kv("@pid", report.pid);
        if let Some(status) = report.status {
            sub.kv("@status", status);
        }
        for line in report.output.lines() {
            write_all_fd(
                self.fd,
                format!("{}{prefix}{line}\n", self.prefix).as_bytes(),
            );
        }
    }
}

/// A reporter on any descriptor (for checks that run in the test process itself).
pub fn reporter_on(fd: c_int) -> Reporter {
    Reporter::new(fd)
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

// ---------------------------------------------------------------------------------------------
// The parent's side: waiting with a deadline
// ---------------------------------------------------------------------------------------------

/// What a child reported, and how it ended.
#[derive(Clone, Debug)]
pub struct ChildReport {
    /// The child's PID as the parent sees it (`fork`'s return value).
    pub pid: i32,
    /// The raw `waitpid` status; `None` for a sub-report that carries none.
    pub status: Option<i32>,
    /// Everything the child wrote, one `key=value` per line.
    pub output: String,
}

/// A human description of a raw wait status.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!(
            "killed by signal {}{}",
            libc::WTERMSIG(status),
            if libc::WCOREDUMP(status) {
                " (core dumped)"
            } else {
                ""
            }
        )
    } else {
        format!("raw wait status {status:#x}")
    }
}

impl ChildReport {
    /// The last value reported under `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).pop()
    }

    /// Every value reported under `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.output
            .lines()
            .filter_map(|line| line.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .collect()
    }

    /// The value under `key`; fails the test, showing everything the child said, if missing.
    #[track_caller]
    pub fn value(&self, key: &str) -> &str {
        match self.get(key) {
            Some(v) => v,
            None => panic!(
                "child {} did not report `{key}` ({}); it said:\n{}",
                self.pid,
                self.status_text(),
                self.output
            ),
        }
    }

    /// The value under `key`, parsed.
    #[track_caller]
    pub fn parse<T: FromStr>(&self, key: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        let raw = self.value(key);
        match raw.parse() {
            Ok(v) => v,
            Err(e) => panic!(
                "child {}: `{key}={raw}` does not parse: {e:?}; it said:\n{}",
                self.pid, self.output
            ),
        }
    }

    /// The exit code, if the child exited normally.
    pub fn exit_code(&self) -> Option<i32> {
        let status = self.status?;
        libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
    }

    fn status_text(&self) -> String {
        self.status
            .map_or_else(|| "status unknown".to_owned(), describe_status)
    }

    /// Fails the test unless the child exited with status 0, said `@done`, and reported no
    /// panic (from any of its threads).
    #[track_caller]
    pub fn assert_ok(&self) {
        let panicked = self.get("@panic").is_some() || self.get("@panic_at").is_some();
        if self.exit_code() != Some(0) || self.get("@done").is_none() || panicked {
            panic!(
                "child {} failed ({}); it said:\n{}",
                self.pid,
                self.status_text(),
                self.output
            );
        }
    }

    /// The lines reported under `prefix` (for example by [`Reporter::forward`]), prefix removed.
    pub fn sub(&self, prefix: &str) -> ChildReport {
        let output: String = self
            .output
            .lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .fold(String::new(), |mut acc, line| {
                acc.push_str(line);
                acc.push('\n');
                acc
            });
        let mut sub = ChildReport {
            pid: -1,
            status: None,
            output,
        };
        sub.pid = sub.get("@pid").and_then(|p| p.parse().ok()).unwrap_or(-1);
        sub.status = sub.get("@status").and_then(|s| s.parse().ok());
        sub
    }
}

/// Forks (with `method`), runs `child` in the child with a [`Reporter`] on a fresh pipe, and
/// waits for the child at most `deadline`. On expiry the child and all its descendants are
/// SIGKILLed and reaped, and this panics with "child <pid> hung after <deadline>; last words:
/// <what it wrote>". Otherwise returns the report; the caller checks the status and values.
///
/// Usable in the test process and in any child (nested forks): in a child it allocates, which
/// is fine after `fork()` (glibc resets its malloc locks) and after a quiesced raw fork.
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

fn wait_child(pid: pid_t, read_fd: c_int, deadline: Duration, group: bool) -> ChildReport {
    let start = Instant::now();
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let flags = libc::fcntl(read_fd, libc::F_GETFL);
        libc::fcntl(read_fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    // A pidfd turns "the child exited" into a poll event (Linux >= 5.3); without one, poll in
    // short slices and ask waitpid.
    // SAFETY: pidfd_open takes a PID and flags; a failure returns -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as c_int;
    let mut output = Vec::new();
    let mut eof = false;
    let status = loop {
        if let Some(status) = try_wait(pid) {
            drain(read_fd, &mut output);
            break status;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            drain(read_fd, &mut output);
            // gdb takes a second or two: not for the harness's own sub-second self-test.
            let diagnosis = describe_hung_tree(pid, deadline >= Duration::from_secs(1));
            kill_tree(pid, group);
            let _ = wait_blocking(pid);
            drain(read_fd, &mut output);
            close_fds(read_fd, pidfd);
            panic!(
                "child {pid} hung after {deadline:?}; last words: {}\n{diagnosis}",
                String::from_utf8_lossy(&output)
            );
        }
        let remaining = (deadline - elapsed).as_millis().min(1_000) as c_int + 1;
        let mut polled = Vec::with_capacity(2);
        if !eof {
            polled.push(libc::pollfd {
                fd: read_fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if pidfd >= 0 {
            polled.push(libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = if pidfd >= 0 {
            remaining
        } else {
            remaining.min(5)
        };
        // SAFETY: `polled` is a live array of `polled.len()` pollfds.
        unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout) };
        if !eof && polled[0].revents != 0 {
            eof = read_some(read_fd, &mut output);
        }
    };
    close_fds(read_fd, pidfd);
    ChildReport {
        pid,
        status: Some(status),
        output: String::from_utf8_lossy(&output).into_owned(),
    }
}

fn close_fds(read_fd: c_int, pidfd: c_int) {
    // SAFETY: our own descriptors, closed once.
    unsafe {
        libc::close(read_fd);
        if pidfd >= 0 {
            libc::close(pidfd);
        }
    }
}

/// Reads what is there; true at end of file.
fn read_some(fd: c_int, out: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: `buf` is a live buffer of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            out.extend_from_slice(&buf[..n as usize]);
            continue;
        }
        if n == 0 {
            return true;
        }
        return match errno().kind() {
            std::io::ErrorKind::Interrupted => continue,
            _ => false, // EAGAIN: nothing more for now
        };
    }
}

/// After the child exited: take whatever it left in the pipe. Another process may still hold a
/// copy of the write end (a sibling test forked while our pipe was open), so never wait for EOF.
fn drain(fd: c_int, out: &mut Vec<u8>) {
    read_some(fd, out);
}

fn try_wait(pid: pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Some(status);
        }
        if r == 0 {
            return None;
        }
        let err = errno();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        panic!("waitpid({pid}) failed: {err}");
    }
}

/// Waits for `pid` without a deadline; only used right after SIGKILL.
pub fn wait_blocking(pid: pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        if r < 0 && errno().kind() != std::io::ErrorKind::Interrupted {
            return -1;
        }
    }
}

/// Waits for `pid` at most `deadline`; on expiry kills it (and its descendants) and returns
/// `None`. For hand-made forks (the PID-namespace chain) that do not use [`fork_child`].
pub fn wait_with_deadline(pid: pid_t, deadline: Duration) -> Option<i32> {
    let start = Instant::now();
    loop {
        if let Some(status) = try_wait(pid) {
            return Some(status);
        }
        if start.elapsed() >= deadline {
            kill_tree(pid, false);
            wait_blocking(pid);
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the threads of a hung process and of its descendants are doing: name, scheduler state,
/// the system call each is blocked in, and its kernel wait channel; then, if `gdb` and gdb is
/// installed (and `FORKSAFE_TEST_NO_GDB` is unset), every thread's user-space backtrace.
#[allow(
    clippy::disallowed_methods,
    reason = "the parent reads its switch after the child hung, never in a forked child"
)]
pub fn describe_hung_tree(pid: pid_t, gdb: bool) -> String {
    let mut text = String::from("--- threads of the hung process and its descendants ---\n");
    let mut pending = vec![pid];
    let mut all = Vec::new();
    while let Some(p) = pending.pop() {
        all.push(p);
        pending.extend(children_of(p));
    }
    for &p in &all {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let read = |file: &str| {
                std::fs::read_to_string(task.path().join(file))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            };
            let stat = read("stat");
            let state = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest.trim_start());
            text.push_str(&format!(
                "pid {p} tid {}: {:?} state {:.1} wchan {} syscall {}\n",
                task.file_name().to_string_lossy(),
                read("comm"),
                state,
                read("wchan"),
                read("syscall"),
            ));
        }
    }
    if gdb && std::env::var_os("FORKSAFE_TEST_NO_GDB").is_none() {
        for &p in &all {
            let pid_text = p.to_string();
            let args = [
                "30",
                "gdb",
                "-p",
                pid_text.as_str(),
                "-batch",
                "-nx",
                "-ex",
                "thread apply all bt",
            ];
            if let Ok(out) = std::process::Command::new("timeout").args(args).output() {
                let bt = String::from_utf8_lossy(&out.stdout);
                let bt: String = bt
                    .lines()
                    .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
                    .collect::<Vec<_>>()
                    .join("\n");
                text.push_str(&format!("--- gdb backtraces of {p} ---\n{bt:.20000}\n"));
            }
        }
    }
    text
}

/// SIGKILLs `pid` and every descendant (found through /proc/<pid>/task/*/children after
/// stopping each process, so none can fork behind our back), and the whole process group when
/// `pid` leads one.
pub fn kill_tree(pid: pid_t, group: bool) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for child in children_of(pid) {
        kill_tree(child, false);
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        if group {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

fn children_of(pid: pid_t) -> Vec<pid_t> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<pid_t>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Quiescing before a raw fork
// ---------------------------------------------------------------------------------------------

/// Waits until every other thread of this process is blocked in the kernel in a system call
/// that is not memory management, on two samples in a row, and panics after `timeout`.
///
/// Why: a raw `clone` skips glibc's fork handlers, so a malloc arena lock (or glibc's stack-cache
/// or TLS lock) held by another thread at that instant stays held forever in the child. A
/// thread blocked in `futex`/`epoll_wait`/`poll`/`nanosleep`… holds none of them: glibc takes
/// those locks only around short stretches of user-space code or around `mmap`/`munmap`/`brk`/
/// `mprotect`/`madvise`/`mremap`, which this check treats as busy. Idle tokio workers (parked in
/// `epoll_wait` or on a futex), the harness's main thread (waiting on a channel) and a thread
/// parked on a lock all pass. The window between the last sample and the clone is only a real
/// risk for a thread with a pending wake-up, which the callers make sure none has (no timers
/// in flight, no blocking-pool thread about to time out).
pub fn wait_until_quiescent(timeout: Duration) {
    let me = gettid();
    let start = Instant::now();
    let mut calm = 0;
    loop {
        let busy = busy_threads(me);
        if busy.is_empty() {
            calm += 1;
            if calm >= 2 {
                return;
            }
        } else {
            calm = 0;
            if start.elapsed() > timeout {
                panic!("threads still busy after {timeout:?}, refusing to raw-fork: {busy:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn busy_threads(me: i32) -> Vec<String> {
    let have_syscall_file = std::path::Path::new("/proc/self/syscall").exists();
    let memory_syscalls = [
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_mprotect,
        libc::SYS_madvise,
    ];
    let mut busy = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return vec!["/proc/self/task unreadable".to_owned()];
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        if tid == me {
            continue;
        }
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let name = name.trim();
        if have_syscall_file {
            let Ok(state) = std::fs::read_to_string(task.path().join("syscall")) else {
                continue; // exited meanwhile
            };
            let first = state.split_whitespace().next().unwrap_or("");
            match first.parse::<libc::c_long>() {
                Ok(nr) if nr >= 0 && !memory_syscalls.contains(&nr) => {}
                _ => busy.push(format!("{tid} ({name}): {}", state.trim())),
            }
        } else {
            // No /proc/<tid>/syscall (kernel without CONFIG_HAVE_ARCH_TRACEHOOK): fall back to
            // the scheduler state, which at least excludes running threads.
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let state = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest.trim_start());
            if !state.starts_with('S') {
                busy.push(format!("{tid} ({name}): state {state:.1}"));
            }
        }
    }
    busy
}

/// Waits until thread `tid` of this process is blocked in `futex` (for a thread about to park on
/// a lock), panicking after `timeout`. Falls back to a fixed 5 ms wait where
/// /proc/<tid>/syscall does not exist.
pub fn wait_until_blocked_in_futex(tid: i32, timeout: Duration) {
    let path = format!("/proc/self/task/{tid}/syscall");
    if !std::path::Path::new("/proc/self/syscall").exists() {
        std::thread::sleep(Duration::from_millis(5));
        return;
    }
    let start = Instant::now();
    loop {
        let state = std::fs::read_to_string(&path).unwrap_or_default();
        let first = state.split_whitespace().next().unwrap_or("");
        if first.parse::<libc::c_long>().ok() == Some(libc::SYS_futex) {
            return;
        }
        if start.elapsed() > timeout {
            panic!("thread {tid} never blocked in futex within {timeout:?}: {state:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Threads in children
// ---------------------------------------------------------------------------------------------

/// `std::thread::spawn` with an explicit stack size: without one, std reads `RUST_MIN_STACK`
/// under its environment lock the first time, a lock a parent thread could have held at fork.
pub fn spawn_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(512 * 1024)
        .spawn(f)
        .expect("spawn thread")
}

/// Joins `handle`; if the thread panicked, fails the caller with the thread's own message.
pub fn join_or_resume<T>(handle: std::thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}

// ---------------------------------------------------------------------------------------------
// Guard mode
// ---------------------------------------------------------------------------------------------

/// True when the suite runs with `FORKSAFE_PID_CHECK=syscall`.
#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switch; the library never reads the environment this way"
)]
pub fn syscall_mode_requested() -> bool {
    std::env::var("FORKSAFE_PID_CHECK").as_deref() == Ok("syscall")
}

/// The guard mode `process_info().guard` must report on this machine (Linux >= 4.14).
#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switch; the library never reads the environment this way"
)]
pub fn expected_guard() -> &'static str {
    match std::env::var("FORKSAFE_PID_CHECK").as_deref() {
        Err(_) | Ok("") | Ok("auto") | Ok("wipeonfork") => "wipeonfork",
        Ok(_) => "syscall",
    }
}

// ---------------------------------------------------------------------------------------------
// The runtime workload a child performs, and its checks
// ---------------------------------------------------------------------------------------------

/// The value a spawned task computes from the PID it runs in.
pub fn task_value(pid: u32) -> u64 {
    u64::from(pid) * 1_000_003 + 17
}

/// The seed a child sends over loopback TCP, and the server's answer.
pub fn tcp_seed(pid: u32) -> u64 {
    u64::from(pid) ^ 0x5eed_0000
}

pub fn tcp_answer(seed: u64) -> u64 {
    seed.wrapping_mul(3) + 1
}

/// `process_info()` as lines: `info.pid`, `info.depth`, `info.runtimes_built`,
/// `info.inherited` (`pid:generations_back,...`), `info.guard`, `info.guard_reason`.
pub fn report_info(rep: &Reporter, prefix: &str, info: &forksafe::ProcessInfo) {
    let rep = rep.with_prefix(prefix);
    rep.kv("pid", info.pid);
    rep.kv("depth", info.depth);
    rep.kv("runtimes_built", info.runtimes_built);
    rep.kv("inherited", format_inherited(&info.inherited_runtimes));
    rep.kv("guard", info.guard.mode);
    rep.kv("guard_reason", info.guard.reason);
}

pub fn format_inherited(list: &[forksafe::InheritedRuntime]) -> String {
    list.iter()
        .map(|r| format!("{}:{}", r.pid, r.generations_back))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses `pid:generations_back,...` back into pairs.
pub fn parse_inherited(text: &str) -> Vec<(u32, u32)> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (pid, back) = pair.split_once(':').expect("pid:generations_back");
            (pid.parse().unwrap(), back.parse().unwrap())
        })
        .collect()
}

/// Round trip on loopback: a server task (on a worker) answers `tcp_answer(seed)`. Returns the
/// answer and the PID the server task saw.
pub async fn tcp_round_trip(seed: u64) -> (u64, u32) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    let server = forksafe::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 8];
        sock.read_exact(&mut buf).await.expect("server read");
        let answer = tcp_answer(u64::from_le_bytes(buf));
        sock.write_all(&answer.to_le_bytes())
            .await
            .expect("server write");
        getpid()
    })
    .expect("spawn server");
    let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client
        .write_all(&seed.to_le_bytes())
        .await
        .expect("client write");
    let mut buf = [0u8; 8];
    client.read_exact(&mut buf).await.expect("client read");
    let server_pid = server.await.expect("server task");
    (u64::from_le_bytes(buf), server_pid)
}

/// The full workload: a spawned task on a worker (after a timer) computes `task_value` from the
/// PID it sees, a timer, a loopback TCP round trip, `spawn_blocking`, then `process_info()`.
/// Must run on a thread that is not a runtime thread. Keys (under `rep`'s prefix): `pid`,
/// `runtime_addr`, `worker_pid`, `worker_thread`, `task_value`, `timer`, `tcp_answer`,
/// `tcp_server_pid`, `blocking_pid`, and `info.*`.
pub fn exercise_runtime(rep: &Reporter) {
    let me = getpid();
    rep.kv("pid", me);
    let runtime = forksafe::runtime().expect("forksafe::runtime()");
    rep.kv("runtime_addr", runtime as *const _ as usize);
    let result = forksafe::block_on(async move {
        let task = forksafe::spawn(async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let pid = getpid();
            let name = std::thread::current().name().unwrap_or("").to_owned();
            (pid, task_value(pid), name)
        })
        .expect("forksafe::spawn");
        let (worker_pid, value, worker_thread) = task.await.expect("task");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (answer, server_pid) = tcp_round_trip(tcp_seed(getpid())).await;
        let blocking_pid = forksafe::spawn_blocking(getpid)
            .expect("forksafe::spawn_blocking")
            .await
            .expect("blocking task");
        (
            worker_pid,
            value,
            worker_thread,
            answer,
            server_pid,
            blocking_pid,
        )
    })
    .expect("forksafe::block_on");
    let (worker_pid, value, worker_thread, answer, server_pid, blocking_pid) = result;
    rep.kv("worker_pid", worker_pid);
    rep.kv("worker_thread", worker_thread);
    rep.kv("task_value", value);
    rep.kv("timer", "fired");
    rep.kv("tcp_answer", answer);
    rep.kv("tcp_server_pid", server_pid);
    rep.kv("blocking_pid", blocking_pid);
    report_info(rep, "info.", &forksafe::process_info());
}

/// What `report_info` wrote, parsed.
#[derive(Debug)]
pub struct ReportedInfo {
    pub pid: u32,
    pub depth: u32,
    pub runtimes_built: usize,
    pub inherited: Vec<(u32, u32)>,
    pub guard: String,
}

#[track_caller]
pub fn reported_info(report: &ChildReport, prefix: &str) -> ReportedInfo {
    ReportedInfo {
        pid: report.parse(&format!("{prefix}pid")),
        depth: report.parse(&format!("{prefix}depth")),
        runtimes_built: report.parse(&format!("{prefix}runtimes_built")),
        inherited: parse_inherited(report.value(&format!("{prefix}inherited"))),
        guard: report.value(&format!("{prefix}guard")).to_owned(),
    }
}

/// Checks what [`exercise_runtime`] reported for a process whose PID is `pid`: every task,
/// the TCP server and the blocking task ran in that process, the values are the ones derived
/// from that PID, and exactly one runtime was built there.
#[track_caller]
pub fn check_workload(report: &ChildReport, pid: u32) {
    let ctx = || format!("child output:\n{}", report.output);
    assert_eq!(
        report.parse::<u32>("pid"),
        pid,
        "getpid() in the child; {}",
        ctx()
    );
    assert_eq!(
        report.parse::<u32>("worker_pid"),
        pid,
        "PID seen by a runtime worker; {}",
        ctx()
    );
    assert!(
        report.value("worker_thread").starts_with("forksafe-"),
        "task ran on {:?}, not a forksafe worker; {}",
        report.value("worker_thread"),
        ctx()
    );
    assert_eq!(
        report.parse::<u64>("task_value"),
        task_value(pid),
        "{}",
        ctx()
    );
    assert_eq!(report.value("timer"), "fired", "{}", ctx());
    assert_eq!(
        report.parse::<u64>("tcp_answer"),
        tcp_answer(tcp_seed(pid)),
        "{}",
        ctx()
    );
    assert_eq!(report.parse::<u32>("tcp_server_pid"), pid, "{}", ctx());
    assert_eq!(report.parse::<u32>("blocking_pid"), pid, "{}", ctx());
    let info = reported_info(report, "info.");
    assert_eq!(info.pid, pid, "process_info().pid; {}", ctx());
    assert_eq!(info.runtimes_built, 1, "runtimes_built; {}", ctx());
    assert_eq!(info.guard, expected_guard(), "guard mode; {}", ctx());
}

/// The same workload run in the test process itself, checked on the spot: the parent still
/// works (and its record still says what it said).
pub fn parent_still_works() {
    let me = getpid();
    let value = forksafe::block_on(async {
        let task = forksafe::spawn(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            task_value(getpid())
        })
        .unwrap();
        let (answer, server_pid) = tcp_round_trip(tcp_seed(getpid())).await;
        (task.await.unwrap(), answer, server_pid)
    })
    .expect("block_on in the parent");
    assert_eq!(value.0, task_value(me), "parent's task value");
    assert_eq!(value.1, tcp_answer(tcp_seed(me)), "parent's TCP answer");
    assert_eq!(value.2, me, "parent's TCP server PID");
    let info = forksafe::process_info();
    assert_eq!(info.pid, me);
    assert_eq!(info.runtimes_built, 1);
}

/// Reports a test that cannot run here, with its reason, where `cargo test` shows it: on the
/// real stderr, which libtest does not capture (it captures only `print!`/`eprint!`). A passing
/// test that did not run must never look like one that did.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}
