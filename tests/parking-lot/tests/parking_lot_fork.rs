//! The parking_lot reproduction's quick checks (issue 21), run in both configurations of this
//! crate (`cargo test` and `cargo test --features hazard`):
//!
//! * the probe: `process_info().tokio_parking_lot` says whether the feature is on, and agrees
//!   with the build (`--features hazard` pulls in the crate that asks tokio for "full");
//! * forks of the busy parent by every path, each child under a deadline, its values checked.
//!   With the feature off every child must succeed. With it on, the failure rate is a figure
//!   measured by benches/parking_lot.rs (docs/benchmarks.md), not a pass/fail: this run prints
//!   what it saw and fails only on a failure that is not the hazard's (a wrong value).
//!
//! No harness: one process, so the busy parent is the only thing running when it forks.

// The reproduction, with the parts of the fork harness (tests/support) it uses.
#[path = "../src/repro.rs"]
mod repro;

use std::time::Duration;

use repro::{BusyParent, Outcome, Path, Stacks};

const PER_PATH: usize = 8;

fn main() {
    forksafe::configure(forksafe::RuntimeConfig::new().worker_threads(repro::WORKERS))
        .expect("configure");
    let before = forksafe::process_info().tokio_parking_lot;
    assert_eq!(before, None, "probed before any runtime was built");
    let mut parent = BusyParent::start(3);
    repro::warm_up(&parent);

    let probed = forksafe::process_info().tokio_parking_lot;
    assert_eq!(
        probed,
        Some(repro::HAZARD),
        "the probe disagrees with the build (hazard feature {})",
        repro::HAZARD
    );
    println!(
        "probe: tokio_parking_lot = {probed:?} (build: hazard = {})",
        repro::HAZARD
    );

    let mut failures = Vec::new();
    let mut wrong_values = Vec::new();
    for round in 0..PER_PATH {
        for path in Path::ALL {
            match repro::fork_one(
                &mut parent,
                path,
                Duration::from_secs(5),
                Stacks::Stepped,
                false,
            ) {
                Outcome::Ok => {}
                Outcome::Crashed { status, stderr } if status == "exited with status 3" => {
                    wrong_values.push(format!("{} #{round}: wrong values: {stderr}", path.name()));
                }
                other => failures.push(format!("{} #{round}: {other:?}", path.name())),
            }
        }
    }
    drop(parent);
    let total = PER_PATH * Path::ALL.len();
    println!(
        "forks: {total} children by {:?}: {} failed",
        Path::ALL.map(Path::name),
        failures.len() + wrong_values.len()
    );
    assert!(
        wrong_values.is_empty(),
        "children computed wrong values:\n{}",
        wrong_values.join("\n")
    );
    if repro::HAZARD {
        for failure in &failures {
            println!("  (hazard on) {failure}");
        }
        println!(
            "hazard on: the failure rate is measured by benches/parking_lot.rs, not asserted here"
        );
    } else {
        assert!(
            failures.is_empty(),
            "children failed with parking_lot off:\n{}",
            failures.join("\n")
        );
    }
    println!("parking_lot_fork: ok");
}
