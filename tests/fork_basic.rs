//! `fork()` after the parent used its runtime: the child builds its own runtime, does real work
//! on it, and the parent never notices. Also nested forks 8 deep, 32 threads racing the first
//! access in a child, a fork taken from inside a runtime task, and a child leaving through
//! `exit()`.
//!
//! All forks here go through glibc's `fork()`, so the tests of this binary may run in parallel.

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

use std::sync::{Arc, Barrier};
use std::time::Duration;

use support::host::std_thread_registry_off;
use support::{fork::*, guard_mode::*, sys::*, threads::*, wire::*, workload::*};

/// Scenario 1: the basic case, checked value by value.
#[test]
fn libc_fork_child_builds_and_uses_its_own_runtime() {
    let parent = getpid();
    parent_still_works();
    let parent_rt = forksafe::runtime().unwrap() as *const _ as usize;

    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), exercise_runtime);
    report.assert_ok();
    let child = report.pid as u32;
    assert_ne!(child, parent);
    check_workload(&report, child);
    let info = reported_info(&report, "info.");
    assert_eq!(
        info.inherited,
        vec![(parent, 1)],
        "the child inherited exactly the parent's runtime; output:\n{}",
        report.output
    );
    assert_eq!(info.depth, 1, "output:\n{}", report.output);
    assert_ne!(
        report.parse::<usize>("runtime_addr"),
        parent_rt,
        "the child must build a new runtime, not reuse the inherited one"
    );

    // Invariant 6: the parent's runtime is the same one and still works.
    parent_still_works();
    assert_eq!(forksafe::runtime().unwrap() as *const _ as usize, parent_rt);
    let info = forksafe::process_info();
    assert_eq!(info.depth, 0);
    assert!(info.inherited_runtimes.is_empty());
}

/// The guard mode is the one FORKSAFE_PID_CHECK asks for, in the parent and in a child.
#[test]
fn guard_mode_follows_the_environment_in_parent_and_child() {
    let info = forksafe::process_info();
    assert_eq!(info.guard.mode.as_str(), expected_guard());
    assert!(!info.guard.reason.is_empty());
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        report_info(rep, "info.", &forksafe::process_info());
    });
    report.assert_ok();
    let child = reported_info(&report, "info.");
    assert_eq!(child.guard, expected_guard(), "output:\n{}", report.output);
    assert_eq!(child.pid, report.pid as u32);
    assert_eq!(
        report.value("info.guard_reason"),
        info.guard.reason,
        "a child keeps its lineage's mode"
    );
}

const GENERATIONS: u32 = 8;

/// One generation of the nested chain: use the runtime, fork the next generation, pass its
/// report up, and use the runtime again afterwards.
fn generation(rep: &Reporter, gen: u32, deadline: Duration) {
    rep.kv("generation", gen);
    exercise_runtime(rep);
    if gen < GENERATIONS {
        // Each level gives its child a little less time, so the deepest hang is reported by
        // its own parent rather than by the top.
        let next = deadline - Duration::from_secs(3);
        let child = fork_child(ForkMethod::Libc, next, |r| generation(r, gen + 1, next));
        rep.forward("child.", &child);
        let after = forksafe::block_on(async {
            forksafe::spawn(async { task_value(getpid()) })
                .unwrap()
                .await
                .unwrap()
        })
        .expect("block_on after the child");
        rep.kv("after_child", after);
        report_info(rep, "after.", &forksafe::process_info());
    }
}

/// Scenario 3: forks 8 deep; generation k reports depth k and k inherited runtimes (its
/// ancestors, nearest first).
#[test]
fn nested_forks_eight_deep() {
    let top = getpid();
    parent_still_works();
    let deadline = Duration::from_secs(60);
    let report = fork_child(ForkMethod::Libc, deadline, |r| {
        generation(r, 1, deadline - Duration::from_secs(3))
    });

    let mut lineage = vec![top]; // nearest ancestor last
    let mut view = report.clone();
    for gen in 1..=GENERATIONS {
        view.assert_ok();
        let pid = view.pid as u32;
        assert_eq!(view.parse::<u32>("generation"), gen);
        check_workload(&view, pid);
        let info = reported_info(&view, "info.");
        assert_eq!(
            info.depth, gen,
            "generation {gen}; output:\n{}",
            view.output
        );
        let expected: Vec<(u32, u32)> = lineage
            .iter()
            .rev()
            .zip(1..)
            .map(|(&pid, back)| (pid, back))
            .collect();
        assert_eq!(
            info.inherited, expected,
            "generation {gen} inherits one runtime per ancestor; output:\n{}",
            view.output
        );
        if gen < GENERATIONS {
            assert_eq!(view.parse::<u64>("after_child"), task_value(pid));
            let after = reported_info(&view, "after.");
            assert_eq!(after.runtimes_built, 1);
            assert_eq!(after.inherited, expected);
        } else {
            assert!(view.get("child.@pid").is_none());
        }
        lineage.push(pid);
        view = view.sub("child.");
    }
    assert_eq!(lineage.len(), GENERATIONS as usize + 1);
    parent_still_works();
}

/// Scenario 5: 32 threads race the very first forksafe access in a fresh child (through four
/// different entry points); exactly one runtime is built and all of them see it.
#[test]
fn thirty_two_threads_racing_the_first_access_build_one_runtime() {
    const THREADS: usize = 32;
    let parent = getpid();
    parent_still_works();
    let parent_rt = forksafe::runtime().unwrap() as *const _ as usize;
    for round in 0..8 {
        let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
            let barrier = Arc::new(Barrier::new(THREADS));
            let racers: Vec<_> = (0..THREADS)
                .map(|i| {
                    let barrier = barrier.clone();
                    spawn_thread(&format!("racer-{i}"), move || {
                        barrier.wait();
                        match i % 4 {
                            0 => drop(forksafe::runtime().expect("runtime()")),
                            1 => drop(forksafe::handle().expect("handle()")),
                            2 => drop(forksafe::spawn(async {}).expect("spawn()")),
                            _ => drop(forksafe::process_info()),
                        }
                        let addr = forksafe::runtime().expect("runtime()") as *const _ as usize;
                        let worker_pid = forksafe::block_on(async {
                            forksafe::spawn(async { getpid() }).unwrap().await.unwrap()
                        })
                        .expect("block_on");
                        (addr, worker_pid)
                    })
                })
                .collect();
            for (i, racer) in racers.into_iter().enumerate() {
                let (addr, worker_pid) = racer.join().expect("racer thread panicked");
                rep.kv(&format!("t{i}.addr"), addr);
                rep.kv(&format!("t{i}.worker_pid"), worker_pid);
            }
            rep.kv(
                "runtime_addr",
                forksafe::runtime().unwrap() as *const _ as usize,
            );
            report_info(rep, "info.", &forksafe::process_info());
        });
        report.assert_ok();
        let child = report.pid as u32;
        let addr: usize = report.parse("runtime_addr");
        assert_ne!(
            addr, parent_rt,
            "round {round}: child reused the inherited runtime"
        );
        for i in 0..THREADS {
            assert_eq!(
                report.parse::<usize>(&format!("t{i}.addr")),
                addr,
                "round {round}: thread {i} saw another runtime; output:\n{}",
                report.output
            );
            assert_eq!(report.parse::<u32>(&format!("t{i}.worker_pid")), child);
        }
        let info = reported_info(&report, "info.");
        assert_eq!(info.runtimes_built, 1, "round {round}");
        assert_eq!(info.pid, child);
        assert_eq!(info.inherited, vec![(parent, 1)], "round {round}");
    }
    parent_still_works();
}

/// A fork taken on a runtime worker thread (inside a spawned task). The child's only thread is
/// a copy of that worker: its thread-locals say "inside a runtime" (invariant 7: forksafe must
/// not trust them). `block_on` there returns `InsideRuntime` instead of panicking or hanging,
/// `spawn` reaches the child's own runtime, and a fresh thread can drive everything.
#[test]
fn fork_from_inside_a_runtime_task() {
    let parent = getpid();
    let parent_rt = forksafe::runtime().unwrap() as *const _ as usize;
    let task = forksafe::spawn(async {
        fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
            let here = match forksafe::block_on(async { 1 }) {
                Err(forksafe::Error::InsideRuntime { .. }) => "inside_runtime".to_owned(),
                Ok(v) => format!("ok {v}"),
                Err(e) => format!("error {e}"),
            };
            rep.kv("block_on_on_forking_thread", here);
            let early = forksafe::spawn(async { (getpid(), task_value(getpid())) })
                .expect("spawn from the forked worker thread");
            let fresh = rep.clone();
            spawn_thread("fresh", move || {
                exercise_runtime(&fresh);
                let (pid, value) = forksafe::block_on(early)
                    .expect("block_on on a fresh thread")
                    .expect("early task");
                fresh.kv("early_task_pid", pid);
                fresh.kv("early_task_value", value);
            })
            .join()
            .expect("fresh thread panicked");
        })
    })
    .unwrap();
    let report = forksafe::block_on(task).unwrap().expect("forking task");
    report.assert_ok();
    let child = report.pid as u32;
    assert_eq!(report.value("block_on_on_forking_thread"), "inside_runtime");
    check_workload(&report, child);
    assert_eq!(report.parse::<u32>("early_task_pid"), child);
    assert_eq!(report.parse::<u64>("early_task_value"), task_value(child));
    assert_ne!(report.parse::<usize>("runtime_addr"), parent_rt);
    assert_eq!(reported_info(&report, "info.").inherited, vec![(parent, 1)]);
    parent_still_works();
}

/// A child that used the runtime and leaves through `exit()` (atexit handlers, thread-local
/// destructors) instead of `_exit` exits promptly: nothing touches the inherited runtime at
/// exit.
#[test]
fn child_leaving_through_exit_does_not_hang() {
    parent_still_works();
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        exercise_runtime(rep);
        rep.kv("leaving", "exit(7)");
        // SAFETY: ends the process; libc::exit, not std::process::exit, which would flush
        // std's stdout under a lock a parent thread may have held at fork.
        unsafe { libc::exit(7) };
    });
    assert_eq!(
        report.exit_code(),
        Some(7),
        "child {}: {}; output:\n{}",
        report.pid,
        describe_status(report.status.unwrap()),
        report.output
    );
    check_workload(&report, report.pid as u32);
    parent_still_works();
}

/// The hang detector itself: a child (and its grandchild) that never finish are killed at the
/// deadline, and the test fails with the child's last words.
#[test]
fn hang_detector_kills_a_hung_child_and_its_descendants() {
    let outcome = std::panic::catch_unwind(|| {
        fork_child(ForkMethod::Libc, Duration::from_millis(300), |rep| {
            let grandchild = fork_process(ForkMethod::Libc);
            if grandchild == 0 {
                loop {
                    // SAFETY: pause just waits for a signal.
                    unsafe { libc::pause() };
                }
            }
            rep.kv("grandchild", grandchild);
            rep.kv("about_to", "hang");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    });
    let message = match outcome {
        Ok(report) => panic!("a hung child was not detected: {report:?}"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .expect("a formatted panic message"),
    };
    assert!(
        message.contains("hung after 300ms; last words:") && message.contains("about_to=hang"),
        "unexpected message: {message}"
    );
    let grandchild: i32 = message
        .split("grandchild=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .expect("grandchild PID in the last words");
    // Killed: gone, or a zombie waiting for whoever adopted it.
    let start = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest.trim_start());
        if stat.is_empty() || state.starts_with('Z') || state.starts_with('X') {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "grandchild {grandchild} survived the hang detector: {stat}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Panics in a child, on its main thread or on another of its threads, reach the parent with
/// their message and location, and fail `assert_ok`.
#[test]
fn child_panics_are_reported_to_the_parent() {
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        rep.kv("before", "panic");
        let thread = spawn_thread("boom", || panic!("boom on a child thread"));
        assert!(thread.join().is_err());
        panic!("boom on the child's main thread");
    });
    assert_eq!(report.exit_code(), Some(101), "output:\n{}", report.output);
    assert_eq!(report.value("before"), "panic");
    assert!(report
        .value("@panic")
        .contains("boom on the child's main thread"));
    let locations = report.all("@panic_at");
    assert!(
        locations
            .iter()
            .any(|l| l.contains("thread boom") && l.contains("boom on a child thread")),
        "{locations:?}"
    );
    assert!(
        locations.iter().all(|l| l.contains("fork_basic.rs:")),
        "{locations:?}"
    );
    assert!(std::panic::catch_unwind(|| report.assert_ok()).is_err());
}

/// The suite's processes run without std's stack-overflow thread registry, like a Python
/// extension's host process (see tests/support/host.rs for why): in the test process and in a
/// forked child.
#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switch before it forks anything"
)]
fn test_processes_run_without_std_stack_overflow_registry() {
    if std::env::var_os("FORKSAFE_TEST_STD_ALTSTACK").is_some() {
        println!("FORKSAFE_TEST_STD_ALTSTACK is set: std's registry is deliberately on");
        assert!(!std_thread_registry_off());
        return;
    }
    assert!(
        std_thread_registry_off(),
        "the constructor in tests/support/host.rs did not run"
    );
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
        rep.kv("registry_off", std_thread_registry_off());
    });
    report.assert_ok();
    assert_eq!(report.value("registry_off"), "true");
}
