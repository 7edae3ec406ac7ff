//! Scenario 9, clones: every clone of a `ForkLocal` shares one value per process. Across threads
//! of one process the clones build once; after a fork, on every fork path the Rust suites know
//! (glibc `fork()`, a raw `clone` system call, a fork from a side thread, a grandchild), the
//! first access in the child builds the child's one value for every clone, once, even with
//! threads racing through different clones; the parent's clones keep theirs; the inherited value
//! is never dropped. Also `Prebuilt`: what a child's failed rebuild does.
//!
//! One `#[test]` on purpose: the raw clone (`raw_syscall`) fork needs a quiet process (no sibling test thread
//! inside malloc), as in `fork_raw.rs`.

mod support {
    pub mod fork;
    pub mod guard_mode;
    pub mod hang;
    pub mod host;
    pub mod quiesce;
    pub mod sys;
    pub mod wire;
}

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use forksafe::{ForkLocal, Prebuilt};

use support::{fork::*, guard_mode::*, quiesce::*, sys::*, wire::*};

/// Threads racing the first access, each through its own clone.
const THREADS: usize = 8;
/// Clones made before the fork.
const CLONES: usize = 4;
const DEADLINE: Duration = Duration::from_secs(30);

/// Builds and drops of one path's values, counted without locks.
struct Counters {
    builds: AtomicU32,
    drops: AtomicU32,
    drops_built_elsewhere: AtomicU32,
}

/// A per-process resource (a client pool) that remembers who built it.
struct Pool {
    built_by: u32,
    counters: &'static Counters,
}

impl Pool {
    fn build(counters: &'static Counters) -> Pool {
        counters.builds.fetch_add(1, Ordering::SeqCst);
        // Slow enough that racing threads all find the value missing.
        std::thread::sleep(Duration::from_millis(5));
        Pool {
            built_by: getpid(),
            counters,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.counters.drops.fetch_add(1, Ordering::SeqCst);
        if self.built_by != getpid() {
            self.counters
                .drops_built_elsewhere
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn addr(pool: &Pool) -> usize {
    pool as *const Pool as usize
}

/// `THREADS` threads, each through a clone of its own (cycling through `clones`, plus one clone
/// made here), take the first access at once; returns what each saw, `addr/built_by`.
fn race(clones: &[ForkLocal<Pool>]) -> Vec<String> {
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|i| {
                let local = if i == 0 {
                    clones[0].clone() // a clone made in this process, now
                } else {
                    clones[i % clones.len()].clone()
                };
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let pool = local.get();
                    format!("{}/{}", addr(pool), pool.built_by)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a getter panicked"))
            .collect()
    })
}

/// The child's side: nothing built here yet, one value for every clone, once.
fn child_side(rep: &Reporter, clones: &[ForkLocal<Pool>], counters: &Counters) {
    rep.kv("guard", forksafe::process_info().guard.mode.as_str());
    rep.kv(
        "built_before",
        clones.iter().any(|c| c.get_if_built().is_some()),
    );
    for (i, seen) in race(clones).iter().enumerate() {
        rep.kv(&format!("t{i}"), seen);
    }
    for (i, local) in clones.iter().enumerate() {
        rep.kv(&format!("clone{i}"), addr(local.get()));
    }
    rep.kv("builds", counters.builds.load(Ordering::SeqCst));
}

/// Drops every clone, then reports the drops: the process's own value once, nothing inherited.
fn drop_all(rep: &Reporter, clones: Vec<ForkLocal<Pool>>, counters: &Counters) {
    drop(clones);
    rep.kv("drops", counters.drops.load(Ordering::SeqCst));
    rep.kv(
        "drops_built_elsewhere",
        counters.drops_built_elsewhere.load(Ordering::SeqCst),
    );
}

/// The parent's checks of one child's report; `builds` is what the child's counter must read
/// (the builds of every ancestor's copy plus its own one).
fn check_child(path: &str, report: &ChildReport, parent_addr: usize, builds: u32) {
    report.assert_ok();
    let child = report.pid as u32;
    let ctx = format!("{path}: output:\n{}", report.output);
    assert_eq!(report.value("guard"), expected_guard(), "{ctx}");
    assert_eq!(report.value("built_before"), "false", "{ctx}");
    let first = report.value("t0").to_owned();
    let (child_addr, built_by) = first.split_once('/').expect("addr/built_by");
    assert_eq!(built_by.parse::<u32>().unwrap(), child, "{ctx}");
    assert_ne!(child_addr, parent_addr.to_string(), "{ctx}");
    for i in 0..THREADS {
        assert_eq!(report.value(&format!("t{i}")), first, "thread {i}; {ctx}");
    }
    for i in 0..CLONES {
        assert_eq!(report.value(&format!("clone{i}")), child_addr, "{ctx}");
    }
    assert_eq!(
        report.parse::<u32>("builds"),
        builds,
        "one build in the child for every clone; {ctx}"
    );
    assert_eq!(
        report.parse::<u32>("drops"),
        1,
        "its own value, once; {ctx}"
    );
    assert_eq!(
        report.parse::<u32>("drops_built_elsewhere"),
        0,
        "an inherited value was dropped; {ctx}"
    );
}

/// One fork path: clones made and raced in the parent, then inherited.
fn clones_share_one_value(path: &str) {
    let parent = getpid();
    let counters: &'static Counters = Box::leak(Box::new(Counters {
        builds: AtomicU32::new(0),
        drops: AtomicU32::new(0),
        drops_built_elsewhere: AtomicU32::new(0),
    }));
    let original = ForkLocal::with_init(move || Pool::build(counters));
    let clones: Vec<ForkLocal<Pool>> = (0..CLONES).map(|_| original.clone()).collect();
    drop(original);

    // In the parent: every thread, through every clone, sees one value, built once.
    let seen = race(&clones);
    let parent_addr = addr(clones[0].get());
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s, &format!("{parent_addr}/{parent}"), "{path}: thread {i}");
    }
    assert_eq!(counters.builds.load(Ordering::SeqCst), 1, "{path}");

    let mut inherited = Some(clones);
    let child = |rep: &Reporter| {
        let clones = inherited.take().expect("the clones");
        child_side(rep, &clones, counters);
        drop_all(rep, clones, counters);
    };
    match path {
        "libc" => check_child(
            path,
            &fork_child(ForkMethod::Libc, DEADLINE, child),
            parent_addr,
            2,
        ),
        "raw_syscall" => {
            // The race's threads have exited; wait until nothing else can be inside malloc.
            wait_until_quiescent(Duration::from_secs(10));
            let report = fork_child(ForkMethod::RawSyscall, DEADLINE, child);
            check_child(path, &report, parent_addr, 2);
        }
        "from_thread" => {
            let report = std::thread::scope(|s| {
                s.spawn(|| fork_child(ForkMethod::Libc, DEADLINE, child))
                    .join()
                    .expect("the forking thread panicked")
            });
            check_child(path, &report, parent_addr, 2);
        }
        "nested" => {
            let report = fork_child(ForkMethod::Libc, DEADLINE, |rep| {
                let clones = inherited.take().expect("the clones");
                child_side(rep, &clones, counters);
                let mut held = Some(clones);
                let grandchild = fork_child(ForkMethod::Libc, DEADLINE, |rep| {
                    let clones = held.take().expect("the child's clones");
                    child_side(rep, &clones, counters);
                    drop_all(rep, clones, counters);
                });
                rep.forward("gc.", &grandchild);
                drop_all(rep, held.take().expect("the child's clones"), counters);
            });
            check_child(path, &report, parent_addr, 2);
            let gc = report.sub("gc.");
            let child_addr = report.value("clone0").parse::<usize>().unwrap();
            check_child("nested (grandchild)", &gc, child_addr, 3);
            assert_ne!(gc.value("clone0"), parent_addr.to_string());
        }
        other => panic!("unknown fork path {other}"),
    }

    // The parent's clones keep the parent's value; nothing rebuilt or dropped here.
    let clones = inherited.expect("the parent's clones are still here");
    for local in &clones {
        assert_eq!(addr(local.get()), parent_addr, "{path}");
        assert_eq!(local.get().built_by, parent, "{path}");
    }
    assert_eq!(counters.builds.load(Ordering::SeqCst), 1, "{path}");
    assert_eq!(counters.drops.load(Ordering::SeqCst), 0, "{path}");
    drop(clones);
    assert_eq!(
        counters.drops.load(Ordering::SeqCst),
        1,
        "{path}: dropped once, by its owner"
    );
}

static REBUILD_FAILS: AtomicBool = AtomicBool::new(false);
static REBUILDS: AtomicU32 = AtomicU32::new(0);

/// `Prebuilt`: built and checked in the parent; in a child whose rebuild fails, `try_get`
/// returns the error, `get` panics with it, neither caches it, and the next call (once the
/// cause is gone) builds the child's own value; the parent's value is untouched.
fn a_prebuilt_value_whose_rebuild_fails_in_a_child() {
    let parent = getpid();
    let prebuilt: Prebuilt<(u32, Box<u8>), String> = Prebuilt::try_new(|| {
        let n = REBUILDS.fetch_add(1, Ordering::SeqCst) + 1;
        if REBUILD_FAILS.load(Ordering::SeqCst) {
            Err(format!("out of file descriptors (attempt {n})"))
        } else {
            Ok((getpid(), Box::new(0)))
        }
    })
    .expect("the parent's build succeeds");
    let parent_addr = prebuilt.get() as *const _ as usize;
    let clone = prebuilt.clone();
    REBUILD_FAILS.store(true, Ordering::SeqCst);

    let report = fork_child(ForkMethod::Libc, DEADLINE, |rep| {
        rep.kv(
            "try_get",
            prebuilt.try_get().map_or_else(|e| e, |v| v.0.to_string()),
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| clone.get().0));
        let message = match panicked {
            Ok(v) => format!("no panic: {v}"),
            Err(payload) => payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "a panic without a message".to_owned()),
        };
        rep.kv("get_panic", message);
        rep.kv("built_after_errors", prebuilt.get_if_built().is_some());
        REBUILD_FAILS.store(false, Ordering::SeqCst);
        let value = clone.get();
        rep.kv("built_by", value.0);
        rep.kv("addr", value as *const _ as usize);
        rep.kv("shared", std::ptr::eq(value, prebuilt.get()));
        rep.kv("attempts", REBUILDS.load(Ordering::SeqCst));
    });
    // One panic is expected (the harness's hook reports it as `@panic_at`): `get`'s, caught.
    let ctx = format!("output:\n{}", report.output);
    assert_eq!(report.exit_code(), Some(0), "{ctx}");
    assert!(
        report.get("@done").is_some() && report.get("@panic").is_none(),
        "{ctx}"
    );
    let panics = report.all("@panic_at");
    assert!(
        panics.len() == 1 && panics[0].contains("could not rebuild"),
        "exactly get's panic; {ctx}"
    );
    assert_eq!(
        report.value("try_get"),
        "out of file descriptors (attempt 2)",
        "{ctx}"
    );
    let message = report.value("get_panic");
    assert!(
        message.contains("could not rebuild") && message.contains("(attempt 3)"),
        "{ctx}"
    );
    assert_eq!(report.value("built_after_errors"), "false", "{ctx}");
    assert_eq!(report.parse::<u32>("built_by"), report.pid as u32, "{ctx}");
    assert_ne!(report.parse::<usize>("addr"), parent_addr, "{ctx}");
    assert_eq!(report.value("shared"), "true", "{ctx}");
    assert_eq!(report.parse::<u32>("attempts"), 4, "{ctx}");

    // The parent: its value, never rebuilt (the flag still says "fail").
    assert_eq!(prebuilt.get().0, parent);
    assert_eq!(prebuilt.get() as *const _ as usize, parent_addr);
    assert_eq!(REBUILDS.load(Ordering::SeqCst), 1);
}

#[test]
fn clones_share_one_value_per_process_on_every_fork_path() {
    assert_eq!(
        forksafe::process_info().guard.mode.as_str(),
        expected_guard()
    );
    for path in ["libc", "raw_syscall", "from_thread", "nested"] {
        clones_share_one_value(path);
    }
    a_prebuilt_value_whose_rebuild_fails_in_a_child();
}
