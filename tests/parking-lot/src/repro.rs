//! The parking_lot reproduction: a busy parent, a child workload whose values the parent checks,
//! and one fork by each path under a hang detector. Shared by `tests/parking_lot_fork.rs` (a few
//! children, CI) and `benches/parking_lot.rs` (thousands, the failure rate): each includes this
//! file with `#[path]`, and nothing else of the harness.
//!
//! It includes the fork suites' `tests/support` (its parts re-exported as `common`), whose
//! `.init_array` constructor keeps std's thread registry off as in a Python host: that registry's
//! own fork hazard (see docs/design.md) must not be counted as parking_lot's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libc::{c_int, pid_t};

// The fork harness of the Rust suites (tests/support), the parts the reproduction uses. An inline
// module of this file, which its includers load by `#[path]`: relative to `src/`.
#[path = "../../support"]
#[allow(
    dead_code,
    reason = "the harness serves many binaries; this one uses a part of each module"
)]
mod support {
    pub mod fork;
    pub mod hang;
    pub mod host;
    pub mod quiesce;
    pub mod sys;
    pub mod wire;
}
mod common {
    pub use super::support::fork::{fork_process, ForkMethod};
    pub use super::support::hang::{
        describe_hung_tree, kill_tree, wait_blocking, wait_with_deadline,
    };
    pub use super::support::quiesce::wait_until_quiescent;
    pub use super::support::sys::getpid;
    pub use super::support::wire::describe_status;
}

/// The runtime's worker threads in the busy parent (and in every child: they inherit it).
pub const WORKERS: usize = 4;

/// How a child is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// glibc `fork()` from the main thread (what a C-level fork does).
    CFork,
    /// A raw `clone(SIGCHLD)` system call, after the parent's threads are parked (quiescent).
    RawSyscall,
    /// glibc `fork()` from a short-lived side thread.
    FromThread,
    /// A child that uses its runtime, then forks the grandchild that runs the workload.
    Nested,
}

impl Path {
    /// Every path, in the order the test and the bench cycle through them.
    pub const ALL: [Path; 4] = [
        Path::CFork,
        Path::RawSyscall,
        Path::FromThread,
        Path::Nested,
    ];

    /// The engine's name for the path (python/forksafe/_cli/engine/paths.py).
    pub fn name(self) -> &'static str {
        match self {
            Path::CFork => "c_fork",
            Path::RawSyscall => "raw_syscall",
            Path::FromThread => "thread_fork",
            Path::Nested => "nested",
        }
    }
}

/// The stack sizes in the child (glibc reuses a dead thread's cached stack for a new thread
/// whose size fits: requested <= cached <= 4 x requested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "the quick test forks with `Stepped` only; the bench uses all"
)]
pub enum Stacks {
    /// forksafe as shipped: each generation's runtime threads get
    /// `GENERATION_STACK_STEP` more than their parent's; the workload's own thread 2 MiB.
    Stepped,
    /// The step cancelled: every generation's runtime threads 2 MiB (forksafe before the fix).
    SameSize,
    /// `Stepped`, and the workload's own thread stepped too.
    SteppedAll,
}

/// How one child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0: every value it computed was right.
    Ok,
    /// It ended by a signal or a non-zero status; `stderr` holds its last words.
    Crashed { status: String, stderr: String },
    /// Still running at the deadline; killed. `threads` says where each thread was blocked.
    Hung { stderr: String, threads: String },
}

/// The busy parent: forksafe users and threads parked on tokio primitives, until dropped.
pub struct BusyParent {
    stop: Arc<AtomicBool>,
    /// Held while the parent is paused: every busy thread blocks on it in `blocking_lock`.
    gate: Arc<tokio::sync::Mutex<()>>,
    paused: Option<tokio::sync::OwnedMutexGuard<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Loop iterations done, across threads (shows the parent really is busy).
    pub rounds: Arc<AtomicU64>,
}

impl BusyParent {
    /// Starts `users` threads calling forksafe (spawn, spawn_blocking, block_on, timers) and
    /// three threads of its own parked on tokio primitives: an mpsc `blocking_recv`, a contended
    /// tokio `Mutex::blocking_lock`, and oneshot `blocking_recv`s answered by runtime tasks.
    pub fn start(users: usize) -> BusyParent {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let rounds = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        let pass_gate = |gate: &tokio::sync::Mutex<()>| drop(gate.blocking_lock());
        for _ in 0..users {
            let (stop, gate, rounds) = (stop.clone(), gate.clone(), rounds.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    pass_gate(&gate);
                    let sum = forksafe::block_on(async {
                        let a = forksafe::spawn(async {
                            tokio::task::yield_now().await;
                            1u64
                        })
                        .expect("spawn");
                        let b = forksafe::spawn_blocking(|| 2u64).expect("spawn_blocking");
                        tokio::time::sleep(Duration::from_micros(200)).await;
                        a.await.expect("task") + b.await.expect("blocking")
                    })
                    .expect("block_on");
                    assert_eq!(sum, 3);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // An mpsc receiver parked in blocking_recv, fed by a runtime task.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1);
        {
            let stop = stop.clone();
            forksafe::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    n += 1;
                    if tx.send(n).await.is_err() {
                        break;
                    }
                }
            })
            .expect("spawn feeder");
        }
        {
            let (gate, rounds) = (gate.clone(), rounds.clone());
            threads.push(std::thread::spawn(move || {
                while rx.blocking_recv().is_some() {
                    pass_gate(&gate);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // A tokio Mutex contended between a runtime task and a thread in blocking_lock.
        let shared = Arc::new(tokio::sync::Mutex::new(0u64));
        {
            let (stop, shared) = (stop.clone(), shared.clone());
            forksafe::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut held = shared.lock().await;
                    tokio::time::sleep(Duration::from_micros(250)).await;
                    *held += 1;
                }
            })
            .expect("spawn locker");
        }
        {
            let (stop, gate, rounds) = (stop.clone(), gate.clone(), rounds.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    pass_gate(&gate);
                    *shared.blocking_lock() += 1;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        // A thread parked on oneshots that runtime tasks complete after a timer.
        {
            let (stop, gate, rounds) = (stop.clone(), gate.clone(), rounds.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    pass_gate(&gate);
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    forksafe::spawn(async move {
                        tokio::time::sleep(Duration::from_micros(150)).await;
                        let _ = tx.send(5u64);
                    })
                    .expect("spawn answer");
                    assert_eq!(rx.blocking_recv().expect("oneshot"), 5);
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        BusyParent {
            stop,
            gate,
            paused: None,
            threads,
            rounds,
        }
    }

    /// Parks every busy thread on the gate (in the parking table when the feature is on) and
    /// waits until no thread of the process is running: a raw clone skips glibc's malloc reset.
    fn pause(&mut self) {
        self.paused = Some(self.gate.clone().blocking_lock_owned());
        common::wait_until_quiescent(Duration::from_secs(10));
    }

    fn resume(&mut self) {
        self.paused = None;
    }
}

impl Drop for BusyParent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.resume();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What a child (or a nested child's grandchild) does: builds its runtime, runs tasks on every
/// worker, timers, the blocking pool, and a tokio channel to a thread parked in `blocking_recv`.
/// Exits 0 when every value is right, 3 otherwise; a panic on this thread exits 101.
pub fn child_workload(stacks: Stacks) -> ! {
    let code = match std::panic::catch_unwind(|| {
        let (depth, step) = configure_stacks(stacks);
        // The workload's own thread: 2 MiB (std's default) unless `SteppedAll`.
        let own_stack = match stacks {
            Stacks::SteppedAll => (2 << 20) + depth * step + step / 2,
            _ => 2 << 20,
        };
        let pid = common::getpid();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
        let receiver = std::thread::Builder::new()
            .stack_size(own_stack)
            .spawn(move || {
                let mut sum = 0;
                while let Some(v) = rx.blocking_recv() {
                    sum += v;
                }
                sum
            })
            .expect("spawn receiver");
        let (tasks, blocking) = forksafe::block_on(async move {
            let mut handles = Vec::new();
            for i in 0..16u64 {
                let tx = tx.clone();
                handles.push(
                    forksafe::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        tx.send(i).await.expect("send");
                        (common::getpid(), i * 2)
                    })
                    .expect("spawn"),
                );
            }
            let mut sum = 0;
            for handle in handles {
                let (worker_pid, v) = handle.await.expect("task");
                assert_eq!(worker_pid, pid);
                sum += v;
            }
            let blocking = forksafe::spawn_blocking(common::getpid)
                .expect("spawn_blocking")
                .await
                .expect("blocking task");
            (sum, blocking)
        })
        .expect("block_on");
        let channel = receiver.join().expect("receiver");
        tasks == 240 && blocking == pid && channel == 120
    }) {
        Ok(true) => 0,
        Ok(false) => 3,
        Err(_) => 101,
    };
    // SAFETY: _exit ends the process at once, running no destructor.
    unsafe { libc::_exit(code) }
}

/// Forks one child by `path` from the busy parent, waits at most `deadline`, and says how it
/// ended. The child's stderr goes to a pipe the parent reads (its last words); a hung child
/// is described (gdb backtraces with `gdb`) and killed with its process group.
pub fn fork_one(
    parent: &mut BusyParent,
    path: Path,
    deadline: Duration,
    stacks: Stacks,
    gdb: bool,
) -> Outcome {
    let mut fds = [0 as c_int; 2];
    assert_eq!(
        // SAFETY: `fds` has room for two descriptors.
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
        0
    );
    let (read_fd, write_fd) = (fds[0], fds[1]);
    let in_child = move || -> ! {
        // SAFETY: plain descriptor calls in the child; its own process group, so a kill on
        // expiry reaches a nested grandchild too.
        unsafe {
            libc::setpgid(0, 0);
            libc::dup2(write_fd, 2);
        }
        if path == Path::Nested {
            nested_child(deadline, stacks)
        }
        child_workload(stacks)
    };
    if path == Path::RawSyscall {
        parent.pause();
    }
    let pid: pid_t = match path {
        Path::CFork | Path::Nested => {
            let pid = common::fork_process(common::ForkMethod::Libc);
            if pid == 0 {
                in_child()
            }
            pid
        }
        Path::RawSyscall => {
            let pid = common::fork_process(common::ForkMethod::RawSyscall);
            if pid == 0 {
                in_child()
            }
            pid
        }
        Path::FromThread => std::thread::spawn(move || {
            let pid = common::fork_process(common::ForkMethod::Libc);
            if pid == 0 {
                in_child()
            }
            pid
        })
        .join()
        .expect("fork thread"),
    };
    parent.resume();
    // SAFETY: the parent's copy of the write end is no longer needed.
    unsafe { libc::close(write_fd) };
    assert!(pid > 0, "fork failed");
    let status = common::wait_with_deadline(pid, deadline);
    let outcome = match status {
        Some(0) => Outcome::Ok,
        Some(status) => Outcome::Crashed {
            status: common::describe_status(status),
            stderr: drain(read_fd),
        },
        None => {
            let threads = common::describe_hung_tree(pid, gdb);
            common::kill_tree(pid, true);
            common::wait_blocking(pid);
            Outcome::Hung {
                stderr: drain(read_fd),
                threads,
            }
        }
    };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(read_fd) };
    outcome
}

/// Configures this process's runtime for `stacks`; returns (depth, forksafe's step).
fn configure_stacks(stacks: Stacks) -> (usize, usize) {
    let depth = forksafe::process_info().depth as usize;
    let step = forksafe::GENERATION_STACK_STEP;
    if stacks == Stacks::SameSize {
        // Cancel forksafe's per-generation step: every generation's runtime threads get
        // 2 MiB stacks, which glibc serves from the dead parent threads' cached stacks.
        let size = (2 << 20) - depth * step;
        let config = forksafe::RuntimeConfig::new()
            .worker_threads(WORKERS)
            .thread_stack_size(size);
        forksafe::configure(config).expect("configure");
    }
    (depth, step)
}

/// The middle of a nested fork: uses its own runtime (so its threads park in the table too),
/// forks the grandchild that runs the workload, and exits with the grandchild's verdict.
fn nested_child(deadline: Duration, stacks: Stacks) -> ! {
    let code = std::panic::catch_unwind(|| {
        configure_stacks(stacks);
        forksafe::block_on(async {
            forksafe::spawn(async { tokio::time::sleep(Duration::from_millis(1)).await })
                .expect("spawn")
                .await
                .expect("task");
        })
        .expect("block_on");
        let pid = common::fork_process(common::ForkMethod::Libc);
        if pid == 0 {
            child_workload(stacks)
        }
        match common::wait_with_deadline(pid, deadline.mul_f32(0.8)) {
            Some(0) => 0,
            Some(_) => 4,
            None => {
                common::kill_tree(pid, false);
                5
            }
        }
    })
    .unwrap_or(101);
    // SAFETY: _exit ends the process at once.
    unsafe { libc::_exit(code) }
}

fn drain(fd: c_int) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is valid for its length; the descriptor is non-blocking.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 || out.len() > 64 * 1024 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Waits until the busy parent has done some rounds, so the first fork lands in a busy process.
pub fn warm_up(parent: &BusyParent) {
    let start = Instant::now();
    while parent.rounds.load(Ordering::Relaxed) < 200 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether tokio's `parking_lot` feature is on in this binary, by the `hazard` cargo feature
/// that pulls in `tokio-full` (what the probe under test must agree with).
pub const HAZARD: bool = cfg!(feature = "hazard");
