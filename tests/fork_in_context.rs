//! A fork from inside `forksafe::block_on`: the child's thread still carries tokio's `CONTEXT`
//! thread-local, which says it is inside the parent's runtime (entered, with the parent's handle
//! as the ambient `Handle::current`). `block_on` in the child must run the child's own runtime:
//! never tokio's "Cannot start a runtime from within a runtime" panic, never the parent's
//! runtime (docs/design.md, "What we take from tokio").
//!
//! All forks here go through glibc's `fork()`, so the tests of this binary may run in parallel.

mod support {
    pub mod fork;
    pub mod guard_mode;
    pub mod hang;
    pub mod host;
    pub mod sys;
    pub mod wire;
    pub mod workload;
}

use std::time::Duration;

use support::{fork::*, sys::*, workload::*};

#[test]
fn block_on_in_a_child_forked_inside_block_on_runs_the_child_runtime() {
    let parent = getpid();
    parent_still_works();
    let parent_rt = forksafe::runtime().unwrap() as *const _ as usize;
    let report = forksafe::block_on(async {
        fork_child(ForkMethod::Libc, Duration::from_secs(30), |rep| {
            // tokio's thread-local, inherited: the ambient handle is the parent's. Read here only
            // to show what invariant 7 guards against.
            #[allow(clippy::disallowed_methods)]
            let ambient = tokio::runtime::Handle::try_current().is_ok();
            rep.kv("ambient_handle_outside", ambient);
            // Every entry of exercise_runtime goes through forksafe::block_on.
            exercise_runtime(rep);
            // Inside the child's block_on, tokio's ambient handle is the child's runtime: a
            // task spawned through it runs (the parent's workers do not exist here).
            let ambient = forksafe::block_on(async {
                tokio::spawn(async { getpid() })
                    .await
                    .expect("ambient task")
            })
            .expect("block_on again");
            rep.kv("ambient_task_pid", ambient);
            // Nesting in the child is still refused, as in any process.
            let nested = forksafe::block_on(async {
                matches!(
                    forksafe::block_on(async { 1 }),
                    Err(forksafe::Error::InsideRuntime { .. })
                )
            })
            .expect("outer block_on");
            rep.kv("nested_refused", nested);
        })
    })
    .expect("the parent's block_on");
    report.assert_ok();
    let child = report.pid as u32;
    assert_ne!(child, parent);
    check_workload(&report, child);
    assert_ne!(
        report.parse::<usize>("runtime_addr"),
        parent_rt,
        "the child must build a new runtime, not reuse the inherited one"
    );
    assert_eq!(report.parse::<u32>("ambient_task_pid"), child);
    assert_eq!(report.value("nested_refused"), "true");
    // Why forksafe never reads the ambient handle (invariant 7): in the child it still points
    // at the parent's runtime.
    assert_eq!(report.value("ambient_handle_outside"), "true");
    let info = reported_info(&report, "info.");
    assert_eq!(
        info.inherited,
        vec![(parent, 1)],
        "output:\n{}",
        report.output
    );

    // The parent's block_on state was its own: nesting is refused in the parent, and the
    // parent's runtime is the same one and still works.
    assert!(matches!(
        forksafe::block_on(async { forksafe::block_on(async { 1 }) }).unwrap(),
        Err(forksafe::Error::InsideRuntime { .. })
    ));
    parent_still_works();
    assert_eq!(forksafe::runtime().unwrap() as *const _ as usize, parent_rt);
}
