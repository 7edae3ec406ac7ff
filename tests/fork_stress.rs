//! Forks under load and at rate (glibc `fork()` only, so the tests may run in parallel).
//!
//! * Scenario 4: 100 forks from a side thread while other parent threads keep >= 1,000 tasks
//!   going; every parent task completes with its value (invariant 6), every child works.
//! * Scenario 10: a fork storm of 1,000 forks, 600 sequential and 4 x 100 from concurrent
//!   forking threads; every child does a small real runtime operation and reports.

mod support {
    pub mod fork;
    pub mod guard_mode;
    pub mod hang;
    pub mod host;
    pub mod sys;
    pub mod threads;
    pub mod wire;
    pub mod workload;
}

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{fork::*, sys::*, threads::*, wire::*, workload::*};

#[test]
fn forks_from_a_side_thread_while_parent_tasks_run() {
    const FORKS: usize = 100;
    const SENTINELS: u64 = 200;
    const SPAWNERS: u64 = 3;
    const BATCH: u64 = 25;
    const MIN_TASKS: u64 = 1_000;

    let parent = getpid();
    parent_still_works();

    // Long-lived tasks, in flight across every fork: each loops on a timer until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sentinels: Vec<_> = (0..SENTINELS)
        .map(|id| {
            let stop = stop.clone();
            forksafe::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(1 + id % 5)).await;
                }
                (id, id * 11 + 5, getpid())
            })
            .expect("spawn sentinel")
        })
        .collect();

    // Churn: threads that keep spawning batches (timers, yields, spawn_blocking) and check
    // every result, until the forks are over.
    let forks_done = Arc::new(AtomicBool::new(false));
    let spawners: Vec<_> = (0..SPAWNERS)
        .map(|s| {
            let forks_done = forks_done.clone();
            std::thread::spawn(move || {
                let mut spawned = 0u64;
                let mut batch = 0u64;
                loop {
                    let base = (s << 40) | (batch << 16);
                    let handles: Vec<_> = (0..BATCH)
                        .map(|j| {
                            let id = base + j;
                            forksafe::spawn(async move {
                                if j % 3 == 0 {
                                    tokio::time::sleep(Duration::from_micros(200 * (j % 5))).await;
                                } else {
                                    tokio::task::yield_now().await;
                                }
                                (id, id.wrapping_mul(7) + 3, getpid())
                            })
                            .expect("spawn churn task")
                        })
                        .collect();
                    let blocking =
                        forksafe::spawn_blocking(move || (base ^ 0xb10c, getpid())).unwrap();
                    let (results, blocked) = forksafe::block_on(async {
                        let mut results = Vec::new();
                        for handle in handles {
                            results.push(handle.await.expect("churn task"));
                        }
                        (results, blocking.await.expect("blocking task"))
                    })
                    .expect("block_on in a spawner");
                    assert_eq!(results.len() as u64, BATCH);
                    for (j, (id, value, pid)) in results.into_iter().enumerate() {
                        assert_eq!(id, base + j as u64, "a task result went missing or moved");
                        assert_eq!(value, id.wrapping_mul(7) + 3, "task {id} computed garbage");
                        assert_eq!(pid, parent, "task {id} ran in another process");
                    }
                    assert_eq!(blocked, (base ^ 0xb10c, parent));
                    spawned += BATCH + 1;
                    batch += 1;
                    if forks_done.load(Ordering::SeqCst) && spawned * SPAWNERS >= MIN_TASKS {
                        return spawned;
                    }
                }
            })
        })
        .collect();

    // The forks, from a thread of their own.
    let forker = std::thread::spawn(|| {
        (0..FORKS)
            .map(|_| fork_child(ForkMethod::Libc, Duration::from_secs(30), exercise_runtime))
            .collect::<Vec<_>>()
    });
    let reports = forker.join();
    forks_done.store(true, Ordering::SeqCst);
    let spawned: Vec<u64> = spawners.into_iter().map(join_or_resume).collect();
    let reports = reports.unwrap_or_else(|payload| std::panic::resume_unwind(payload));

    stop.store(true, Ordering::SeqCst);
    let sentinel_results = forksafe::block_on(async {
        let mut out = Vec::new();
        for s in sentinels {
            out.push(s.await.expect("sentinel task"));
        }
        out
    })
    .unwrap();
    let ids: HashSet<u64> = sentinel_results.iter().map(|r| r.0).collect();
    assert_eq!(
        ids.len() as u64,
        SENTINELS,
        "sentinel results lost or duplicated"
    );
    for (id, value, pid) in sentinel_results {
        assert_eq!(value, id * 11 + 5);
        assert_eq!(pid, parent);
    }
    let total: u64 = spawned.iter().sum::<u64>() + SENTINELS;
    assert!(
        total >= MIN_TASKS,
        "only {total} parent tasks ran across the forks"
    );

    assert_eq!(reports.len(), FORKS);
    for report in &reports {
        report.assert_ok();
        check_workload(report, report.pid as u32);
        assert_eq!(
            reported_info(report, "info.").inherited,
            vec![(parent, 1)],
            "output:\n{}",
            report.output
        );
    }
    parent_still_works();
}

/// A small but real runtime operation: spawn, yield, return a value derived from the PID the
/// task sees.
fn storm_child(rep: &Reporter) {
    let (worker_pid, value) = forksafe::block_on(async {
        forksafe::spawn(async {
            tokio::task::yield_now().await;
            let pid = getpid();
            (pid, task_value(pid))
        })
        .unwrap()
        .await
        .unwrap()
    })
    .expect("block_on");
    rep.kv("pid", getpid());
    rep.kv("worker_pid", worker_pid);
    rep.kv("value", value);
    let info = forksafe::process_info();
    rep.kv("runtimes_built", info.runtimes_built);
    rep.kv("inherited", format_inherited(&info.inherited_runtimes));
}

/// `Err` with a description when the child's report is not exactly right.
fn storm_check(report: &ChildReport, parent: u32) -> Result<(), String> {
    let fail = |what: &str| {
        Err(format!(
            "child {} ({}): {what}; output:\n{}",
            report.pid,
            report.status.map_or_else(String::new, describe_status),
            report.output
        ))
    };
    let child = report.pid as u32;
    if report.exit_code() != Some(0) || report.get("@done").is_none() {
        return fail("did not finish cleanly");
    }
    if report.get("pid") != Some(&child.to_string()) {
        return fail("wrong getpid()");
    }
    if report.get("worker_pid") != Some(&child.to_string()) {
        return fail("the task ran in another process");
    }
    if report.get("value") != Some(&task_value(child).to_string()) {
        return fail("wrong task value");
    }
    if report.get("runtimes_built") != Some("1") {
        return fail("runtimes_built is not 1");
    }
    if report.get("inherited") != Some(&format!("{parent}:1")) {
        return fail("wrong inherited runtimes");
    }
    Ok(())
}

#[test]
fn sequential_fork_storm() {
    const FORKS: usize = 600;
    let parent = getpid();
    parent_still_works();
    let failures: Vec<String> = (0..FORKS)
        .filter_map(|_| {
            let report = fork_child(ForkMethod::Libc, Duration::from_secs(20), storm_child);
            storm_check(&report, parent).err()
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {FORKS} children failed; first: {}",
        failures.len(),
        failures[0]
    );
    parent_still_works();
}

#[test]
fn concurrent_fork_storm_from_four_threads() {
    const THREADS: usize = 4;
    const FORKS_PER_THREAD: usize = 100;
    let parent = getpid();
    parent_still_works();
    let forkers: Vec<_> = (0..THREADS)
        .map(|_| {
            std::thread::spawn(move || {
                (0..FORKS_PER_THREAD)
                    .filter_map(|_| {
                        let report =
                            fork_child(ForkMethod::Libc, Duration::from_secs(20), storm_child);
                        storm_check(&report, parent).err()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let failures: Vec<String> = forkers.into_iter().flat_map(join_or_resume).collect();
    assert!(
        failures.is_empty(),
        "{} of {} children failed; first: {}",
        failures.len(),
        THREADS * FORKS_PER_THREAD,
        failures[0]
    );
    parent_still_works();
}
