//! Scenario 2: forks through a raw `clone(SIGCHLD)` system call, which skips every
//! `pthread_atfork` handler (glibc's own included). forksafe registers no hooks, so it must not
//! care; the wipe-on-fork page (or getpid()) tells it a fork happened.
//!
//! A raw clone (`raw_syscall`) child also skips glibc's malloc-lock reset, so a raw fork is only safe when no
//! other thread of the forking process can be inside malloc (or hold glibc's stack-cache/TLS
//! locks). That is why this binary has a single `#[test]`: no sibling test thread runs while it
//! forks. Before each raw fork it also waits until every other thread (the harness's main thread,
//! idle tokio workers and blocking-pool threads) is blocked in the kernel outside memory
//! management (`wait_until_quiescent`), and it keeps no timer pending in the forking process.

mod support {
    pub mod fork;
    pub mod guard_mode;
    pub mod hang;
    pub mod host;
    pub mod quiesce;
    pub mod sys;
    pub mod wire;
    pub mod workload;
}

use std::time::Duration;

use support::{fork::*, quiesce::*, sys::*, wire::*, workload::*};

/// Raw fork in a process whose own runtime is idle.
fn raw_generation(rep: &Reporter, depth_left: u32) {
    exercise_runtime(rep);
    if depth_left > 0 {
        // Our runtime is idle now (its blocking-pool thread waits out its 10 s keep-alive on a
        // futex); make sure every thread is parked before cloning.
        wait_until_quiescent(Duration::from_secs(10));
        let child = fork_child(ForkMethod::RawSyscall, Duration::from_secs(20), |r| {
            raw_generation(r, depth_left - 1)
        });
        rep.forward("child.", &child);
        exercise_runtime(&rep.with_prefix("after."));
    }
}

#[test]
fn raw_clone_children_build_their_own_runtime() {
    let top = getpid();
    // The parent uses its runtime first (no spawn_blocking here: a blocking-pool thread would
    // wake up 10 s later, possibly mid-clone).
    parent_still_works();
    let top_rt = forksafe::runtime().unwrap() as *const _ as usize;

    // 1. A raw fork straight from the test process, after quiescing it.
    wait_until_quiescent(Duration::from_secs(10));
    let report = fork_child(
        ForkMethod::RawSyscall,
        Duration::from_secs(30),
        exercise_runtime,
    );
    report.assert_ok();
    let child = report.pid as u32;
    check_workload(&report, child);
    let info = reported_info(&report, "info.");
    assert_eq!(info.inherited, vec![(top, 1)], "output:\n{}", report.output);
    assert_eq!(info.depth, 1);
    assert_ne!(report.parse::<usize>("runtime_addr"), top_rt);
    parent_still_works();
    assert_eq!(forksafe::runtime().unwrap() as *const _ as usize, top_rt);

    // 2. A freshly glibc-forked helper H (single-threaded until it builds its runtime) uses its
    //    runtime fully, quiesces, and raw-forks R; R does the same and raw-forks R2. Each
    //    generation checks its runtime again after its child.
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(60), |rep| {
        raw_generation(rep, 2)
    });
    let mut lineage = vec![top];
    let mut view = report;
    for level in 0..3u32 {
        view.assert_ok();
        let pid = view.pid as u32;
        check_workload(&view, pid);
        let info = reported_info(&view, "info.");
        let expected: Vec<(u32, u32)> = lineage.iter().rev().copied().zip(1..).collect();
        assert_eq!(
            info.inherited, expected,
            "level {level} (0 = glibc-forked helper, 1 and 2 = raw clones); output:\n{}",
            view.output
        );
        if level < 2 {
            let after = view.sub("after.");
            check_workload(&after, pid);
            assert_eq!(
                after.parse::<usize>("runtime_addr"),
                view.parse::<usize>("runtime_addr"),
                "level {level}: the runtime changed after a child was forked"
            );
        }
        lineage.push(pid);
        view = view.sub("child.");
    }
    parent_still_works();
}
