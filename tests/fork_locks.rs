//! Locks held, and threads parked, at the instant of fork (invariant 3 and the parking-table
//! hazard of docs/design.md).
//!
//! Needs the fault injection compiled in with `RUSTFLAGS="--cfg forksafe_fault_injection"`, which
//! `scripts/test` always passes. Without it both tests are listed as ignored, with that reason.
//!
//! The two tests share a process-wide lock and take turns: the first installs a build hook (in a
//! helper child), the second holds a shard of the test process's lineage map, and both take raw
//! forks, which need every other thread of the forking process idle.

/// Without the fault injection the two scenarios cannot run: each is listed as ignored, with
/// the reason, under its own name (and fails if run anyway with `--include-ignored`).
#[cfg(not(forksafe_fault_injection))]
mod without_fault_injection {
    const WHY: &str = "needs RUSTFLAGS=\"--cfg forksafe_fault_injection\" (scripts/test sets it)";

    #[test]
    #[ignore = "needs RUSTFLAGS=\"--cfg forksafe_fault_injection\" (scripts/test sets it)"]
    fn fork_while_a_thread_holds_the_runtime_build_lock() {
        panic!("scenario 6 {WHY}");
    }

    #[test]
    #[ignore = "needs RUSTFLAGS=\"--cfg forksafe_fault_injection\" (scripts/test sets it)"]
    fn fork_while_a_thread_is_parked_on_the_lineage_lock() {
        panic!("scenario 7 {WHY}");
    }
}

#[cfg(forksafe_fault_injection)]
mod support {
    pub mod fork;
    pub mod guard_mode;
    pub mod hang;
    pub mod host;
    pub mod quiesce;
    pub mod sys;
    pub mod threads;
    pub mod wire;
    pub mod workload;
}

#[cfg(forksafe_fault_injection)]
mod with_fault_injection {

    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc, Barrier, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use crate::support::{fork::*, quiesce::*, sys::*, threads::*, wire::*, workload::*};

    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(|e| e.into_inner())
    }

    static HOOK_ENTERED: AtomicBool = AtomicBool::new(false);
    static HOOK_RELEASE: AtomicBool = AtomicBool::new(false);

    /// The build hook: parks the building thread, with the process's runtime build lock held, until
    /// released. (`park` without a timeout: the thread then has no pending wake-up, so the process
    /// can be raw-forked while it waits.)
    fn park_in_build_hook() {
        HOOK_ENTERED.store(true, Ordering::SeqCst);
        while !HOOK_RELEASE.load(Ordering::SeqCst) {
            std::thread::park();
        }
    }

    /// What a child of a process with a held lock must manage: its own runtime, fully working.
    fn child_of_a_locked_process(rep: &Reporter) {
        exercise_runtime(rep);
    }

    /// Scenario 6: a thread of a fresh process is inside the runtime's slow path (the build hook,
    /// build lock held) when another thread forks. The child must get a working runtime.
    ///
    /// Runs inside a glibc-forked helper H: a fresh process that has not built its runtime, so the
    /// build hook (which runs only in the process that installed it) parks H's builder thread. H
    /// forks twice while the builder is parked: with glibc's fork from a second thread, and with a
    /// raw clone from its main thread (H's only other thread is then the parked builder). Finally H
    /// releases the builder and checks its own runtime.
    #[test]
    fn fork_while_a_thread_holds_the_runtime_build_lock() {
        let _serial = serial();
        let report = fork_child(ForkMethod::Libc, Duration::from_secs(60), |rep| {
            let before = forksafe::process_info();
            assert_eq!(before.runtimes_built, 0, "the helper must be fresh");
            forksafe::set_build_hook(park_in_build_hook);
            let builder = spawn_thread("builder", || {
                forksafe::runtime()
                    .map(|rt| rt as *const _ as usize)
                    .map_err(|e| e.to_string())
            });
            let start = Instant::now();
            while !HOOK_ENTERED.load(Ordering::SeqCst) {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the build hook was never entered"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            rep.kv("hook_entered", 1);

            // glibc fork, from a thread that is neither the builder nor the main thread.
            let forker = spawn_thread("forker", || {
                fork_child(
                    ForkMethod::Libc,
                    Duration::from_secs(20),
                    child_of_a_locked_process,
                )
            });
            let g = forker.join().expect("forking thread panicked");
            rep.forward("G.", &g);

            // Raw clone, from this thread, while the builder still holds the build lock.
            wait_until_quiescent(Duration::from_secs(10));
            let r = fork_child(
                ForkMethod::RawSyscall,
                Duration::from_secs(20),
                child_of_a_locked_process,
            );
            rep.forward("R.", &r);

            // Let the builder finish; H's own runtime then works.
            assert!(!builder.is_finished(), "the builder left the hook early");
            HOOK_RELEASE.store(true, Ordering::SeqCst);
            builder.thread().unpark();
            let addr = builder
                .join()
                .expect("builder thread panicked")
                .expect("runtime() in the helper");
            forksafe::clear_build_hook();
            rep.kv("builder_addr", addr);
            exercise_runtime(&rep.with_prefix("H."));
        });
        report.assert_ok();
        let helper = report.pid as u32;
        assert_eq!(report.value("hook_entered"), "1");
        for name in ["G", "R"] {
            let child = report.sub(&format!("{name}."));
            child.assert_ok();
            let pid = child.pid as u32;
            assert_ne!(pid, helper);
            check_workload(&child, pid);
            let info = reported_info(&child, "info.");
            assert!(
                !info.inherited.iter().any(|&(p, _)| p == helper),
                "{name}: the helper never finished building, yet the child lists its runtime as \
             inherited: {:?}",
                info.inherited
            );
        }
        let h = report.sub("H.");
        check_workload(&h, helper);
        assert_eq!(
            report.parse::<usize>("builder_addr"),
            h.parse::<usize>("runtime_addr"),
            "the released builder and later callers must share the helper's one runtime"
        );
    }

    /// The child of scenario 7: 32 threads each use `process_info()` and the runtime at once.
    fn thirty_two_threads(rep: &Reporter) {
        const THREADS: usize = 32;
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let barrier = barrier.clone();
                spawn_thread(&format!("t{i}"), move || {
                    barrier.wait();
                    let info = forksafe::process_info();
                    let addr = forksafe::runtime().expect("runtime()") as *const _ as usize;
                    let worker_pid = forksafe::block_on(async {
                        forksafe::spawn(async { getpid() }).unwrap().await.unwrap()
                    })
                    .expect("block_on");
                    let after = forksafe::process_info();
                    (info.pid, addr, worker_pid, after.runtimes_built)
                })
            })
            .collect();
        let mut info_pids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        let mut worker_pids = BTreeSet::new();
        let mut built = BTreeSet::new();
        for t in threads {
            let (info_pid, addr, worker_pid, runtimes_built) = t.join().expect("a thread panicked");
            info_pids.insert(info_pid);
            addrs.insert(addr);
            worker_pids.insert(worker_pid);
            built.insert(runtimes_built);
        }
        let join = |set: &BTreeSet<_>| {
            set.iter()
                .map(|v: &usize| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let widen = |set: BTreeSet<u32>| set.into_iter().map(|v| v as usize).collect();
        rep.kv("pid", getpid());
        rep.kv("info_pids", join(&widen(info_pids)));
        rep.kv("runtime_addrs", addrs.len());
        rep.kv("worker_pids", join(&widen(worker_pids)));
        rep.kv("runtimes_built", join(&built));
    }

    /// Scenario 7: a parent thread is parked on a contended dashmap shard (inside parking_lot_core)
    /// at the instant of fork. 200 rounds, alternating glibc fork and raw clone; each child runs 32
    /// threads that use `process_info()` and the runtime. No crash, no hang, right values; the
    /// parked parent thread finishes once the shard is released.
    #[test]
    fn fork_while_a_thread_is_parked_on_the_lineage_lock() {
        let _serial = serial();
        let parent = getpid();
        for round in 0..200 {
            let method = if round % 2 == 0 {
                ForkMethod::Libc
            } else {
                ForkMethod::RawSyscall
            };
            let held = forksafe::lock_lineage_shard();
            let released = Arc::new(AtomicBool::new(false));
            let (tid_tx, tid_rx) = mpsc::channel();
            let parked = {
                let released = released.clone();
                spawn_thread("parked", move || {
                    tid_tx.send(gettid()).unwrap();
                    let info = forksafe::process_info();
                    (released.load(Ordering::SeqCst), info.pid)
                })
            };
            let tid = tid_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("the parked thread never started");
            // It is parked once it sleeps in futex (after parking_lot's brief spinning).
            wait_until_blocked_in_futex(tid, Duration::from_secs(10));
            if method == ForkMethod::RawSyscall {
                // Every other thread (the harness's, the parked one) must be blocked: see support/quiesce.rs.
                wait_until_quiescent(Duration::from_secs(10));
            }
            let report = fork_child(method, Duration::from_secs(20), thirty_two_threads);
            released.store(true, Ordering::SeqCst);
            drop(held);
            let (was_released, seen_pid) = parked.join().expect("the parked thread panicked");
            assert!(
                was_released,
                "round {round}: process_info() returned while the shard was held (never parked)"
            );
            assert_eq!(seen_pid, parent);

            report.assert_ok();
            let child = report.pid as u32;
            let ctx = format!("round {round} ({method:?}); output:\n{}", report.output);
            assert_eq!(report.parse::<u32>("pid"), child, "{ctx}");
            assert_eq!(report.value("info_pids"), child.to_string(), "{ctx}");
            assert_eq!(report.value("worker_pids"), child.to_string(), "{ctx}");
            assert_eq!(report.value("runtime_addrs"), "1", "{ctx}");
            assert_eq!(report.value("runtimes_built"), "1", "{ctx}");
        }
    }
}
