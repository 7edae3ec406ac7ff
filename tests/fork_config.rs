//! Scenario 11: configuration and the errors of the public API.
//!
//! * `configure` with invalid values returns `Error::InvalidConfig` naming the field, and
//!   changes nothing.
//! * `configure` after the process built its runtime returns `Error::AlreadyStarted`.
//! * A child rebuilds with the configuration in force (worker count, thread names); a child may
//!   configure before its own first use without affecting its parent.
//! * `block_on` where it would panic or deadlock returns `Error::InsideRuntime`.
//!
//! The configuring happens in forked helper processes that have not built their runtime yet, so
//! the test process's own runtime and the other tests of this binary are unaffected.

mod support {
    pub mod fork;
    pub mod hang;
    pub mod host;
    pub mod sys;
    pub mod wire;
}

use std::time::Duration;

use forksafe::{Error, RuntimeConfig};

use support::{fork::*, sys::*, wire::*};

fn invalid_field(config: RuntimeConfig) -> String {
    match forksafe::configure(config) {
        Err(Error::InvalidConfig { field, problem }) => {
            let shown = Error::InvalidConfig {
                field,
                problem: problem.clone(),
            }
            .to_string();
            assert!(shown.contains(field), "{shown:?} does not name {field}");
            field.to_owned()
        }
        Err(other) => format!("unexpected error: {other}"),
        Ok(()) => "accepted".to_owned(),
    }
}

#[test]
fn invalid_values_are_rejected_naming_the_field() {
    let cases = [
        (RuntimeConfig::new().worker_threads(0), "worker_threads"),
        (
            RuntimeConfig::new().max_blocking_threads(0),
            "max_blocking_threads",
        ),
        (
            RuntimeConfig::new().thread_stack_size(1024),
            "thread_stack_size",
        ),
        (RuntimeConfig::new().thread_name("a\0b"), "thread_name"),
    ];
    for (config, field) in cases {
        assert_eq!(invalid_field(config), field);
    }
}

/// What a process reports about its runtime's shape: worker count and a task's thread name.
fn report_shape(rep: &Reporter) {
    let rt = forksafe::runtime().expect("runtime()");
    rep.kv("num_workers", rt.metrics().num_workers());
    let info = forksafe::process_info();
    rep.kv("info_workers", info.worker_threads);
    rep.kv("info_blocking", info.max_blocking_threads);
    let (name, pid) = forksafe::block_on(async {
        forksafe::spawn(async {
            (
                std::thread::current().name().unwrap_or("").to_owned(),
                getpid(),
            )
        })
        .unwrap()
        .await
        .unwrap()
    })
    .unwrap();
    rep.kv("task_thread", name);
    rep.kv("task_pid", pid);
    let blocking = forksafe::block_on(
        forksafe::spawn_blocking(|| std::thread::current().name().unwrap_or("").to_owned())
            .unwrap(),
    )
    .unwrap()
    .unwrap();
    rep.kv("blocking_thread", blocking);
}

#[test]
fn configuration_is_inherited_by_children_and_frozen_after_first_use() {
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(60), |rep| {
        // H: a fresh process; its runtime does not exist yet.
        assert_eq!(forksafe::process_info().runtimes_built, 0);
        rep.kv(
            "invalid_before_start",
            invalid_field(RuntimeConfig::new().worker_threads(0)),
        );
        forksafe::configure(RuntimeConfig::new().worker_threads(1).thread_name("early"))
            .expect("configure before first use");
        // Before first use the last configure wins.
        forksafe::configure(RuntimeConfig::new().worker_threads(3).thread_name("fsx"))
            .expect("configure again before first use");
        report_shape(&rep.with_prefix("H."));
        let already = match forksafe::configure(RuntimeConfig::new().worker_threads(2)) {
            Err(Error::AlreadyStarted { pid }) => format!("already_started {pid}"),
            Err(other) => format!("unexpected error: {other}"),
            Ok(()) => "accepted".to_owned(),
        };
        rep.kv("configure_after_start", already);
        // Invalid and late: either error is right, acceptance is not.
        let late_invalid = match forksafe::configure(RuntimeConfig::new().max_blocking_threads(0)) {
            Err(Error::InvalidConfig { field, .. }) => field.to_owned(),
            Err(Error::AlreadyStarted { .. }) => "already_started".to_owned(),
            Err(other) => format!("unexpected error: {other}"),
            Ok(()) => "accepted".to_owned(),
        };
        rep.kv("invalid_after_start", late_invalid);

        // G inherits fsx x 3.
        let g = fork_child(ForkMethod::Libc, Duration::from_secs(20), report_shape);
        rep.forward("G.", &g);

        // K configures before its own first use: allowed, and only K (and its children)
        // see it.
        let k = fork_child(ForkMethod::Libc, Duration::from_secs(20), |rep| {
            forksafe::configure(RuntimeConfig::new().worker_threads(1).thread_name("kid"))
                .expect("a child configures before its first use");
            report_shape(rep);
            let kk = fork_child(ForkMethod::Libc, Duration::from_secs(10), report_shape);
            rep.forward("KK.", &kk);
        });
        rep.forward("K.", &k);

        // H's next child still gets fsx x 3.
        let g2 = fork_child(ForkMethod::Libc, Duration::from_secs(20), report_shape);
        rep.forward("G2.", &g2);
    });
    report.assert_ok();
    let h = report.pid as u32;
    assert_eq!(report.value("invalid_before_start"), "worker_threads");
    assert_eq!(
        report.value("configure_after_start"),
        format!("already_started {h}")
    );
    assert!(
        ["max_blocking_threads", "already_started"].contains(&report.value("invalid_after_start")),
        "output:\n{}",
        report.output
    );

    let check = |prefix: &str, workers: usize, name: &str| {
        let part = report.sub(prefix);
        if prefix != "H." {
            part.assert_ok();
        }
        let pid = if prefix == "H." { h } else { part.pid as u32 };
        let ctx = format!("{prefix}: output:\n{}", report.output);
        assert_eq!(part.parse::<usize>("num_workers"), workers, "{ctx}");
        // process_info() reports the size in use.
        assert_eq!(part.parse::<usize>("info_workers"), workers, "{ctx}");
        assert_eq!(
            part.parse::<usize>("info_blocking"),
            forksafe::DEFAULT_MAX_BLOCKING_THREADS,
            "{ctx}"
        );
        assert!(
            part.value("task_thread").starts_with(&format!("{name}-")),
            "{ctx}"
        );
        assert!(
            part.value("blocking_thread")
                .starts_with(&format!("{name}-")),
            "{ctx}"
        );
        assert_eq!(part.parse::<u32>("task_pid"), pid, "{ctx}");
    };
    check("H.", 3, "fsx");
    check("G.", 3, "fsx");
    check("K.", 1, "kid");
    check("K.KK.", 1, "kid");
    check("G2.", 3, "fsx");
}

fn describe(r: forksafe::Result<i32>) -> String {
    match r {
        Err(Error::InsideRuntime { .. }) => "inside_runtime".to_owned(),
        Err(other) => format!("unexpected error: {other}"),
        Ok(v) => format!("ok {v}"),
    }
}

/// `block_on` on a runtime thread (worker or blocking pool) or nested in another `block_on`
/// returns `InsideRuntime`; the thread can `block_on` again afterwards, also after a panic
/// inside `block_on`. Checked in the test process and in a child.
fn block_on_misuse(rep: &Reporter) {
    let in_task = forksafe::block_on(async {
        forksafe::spawn(async { describe(forksafe::block_on(async { 1 })) })
            .unwrap()
            .await
            .unwrap()
    })
    .unwrap();
    rep.kv("in_task", in_task);
    let in_blocking = forksafe::block_on(
        forksafe::spawn_blocking(move || describe(forksafe::block_on(async { 2 }))).unwrap(),
    )
    .unwrap()
    .unwrap();
    rep.kv("in_blocking", in_blocking);
    let nested = forksafe::block_on(async { describe(forksafe::block_on(async { 3 })) }).unwrap();
    rep.kv("nested", nested);
    rep.kv("again", describe(forksafe::block_on(async { 4 })));
    let panicked = std::panic::catch_unwind(|| {
        forksafe::block_on(async {
            if getpid() != 0 {
                // resume_unwind: unwinds like a panic without calling the panic hook, which
                // in a child reports every panic as a failure.
                std::panic::resume_unwind(Box::new("a panic inside block_on"));
            }
        })
    });
    rep.kv("panicked", panicked.is_err());
    rep.kv("after_panic", describe(forksafe::block_on(async { 5 })));
}

fn check_block_on_misuse(report: &ChildReport) {
    let ctx = format!("output:\n{}", report.output);
    assert_eq!(report.value("in_task"), "inside_runtime", "{ctx}");
    assert_eq!(report.value("in_blocking"), "inside_runtime", "{ctx}");
    assert_eq!(report.value("nested"), "inside_runtime", "{ctx}");
    assert_eq!(report.value("again"), "ok 4", "{ctx}");
    assert_eq!(report.value("panicked"), "true", "{ctx}");
    assert_eq!(report.value("after_panic"), "ok 5", "{ctx}");
}

#[test]
fn block_on_inside_the_runtime_is_an_error_not_a_panic() {
    // In a child (fork_child also catches a panic or a hang there)...
    let report = fork_child(ForkMethod::Libc, Duration::from_secs(30), block_on_misuse);
    report.assert_ok();
    check_block_on_misuse(&report);
    // ...and in the test process itself, reported through a pipe of our own.
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let in_parent = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                // SAFETY: reads into a live buffer.
                let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n as usize]);
            }
            String::from_utf8_lossy(&out).into_owned()
        });
        block_on_misuse(&Reporter::new(fds[1]));
        // SAFETY: our write end, closed once; the reader then sees EOF.
        unsafe { libc::close(fds[1]) };
        reader.join().unwrap()
    });
    // SAFETY: our read end, closed once.
    unsafe { libc::close(fds[0]) };
    check_block_on_misuse(&ChildReport {
        pid: getpid() as i32,
        status: Some(0),
        output: in_parent,
    });
}
