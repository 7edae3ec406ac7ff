//! The parking_lot failure rate (issue 21): forks of a busy parent, by every path, counted as
//! ok, crashed or hung, with tokio's `parking_lot` feature on or off in the same source.
//!
//! Built from the reproduction's crate (tests/parking-lot, its own workspace):
//!
//! ```sh
//! cd tests/parking-lot
//! cargo bench --bench parking_lot                      # feature off
//! cargo bench --bench parking_lot --features hazard    # on, through a dependency
//! ```
//!
//! Environment: `PL_FORKS` (forks per variant, default 1000), `PL_VARIANTS` (comma-separated:
//! `same-size`: every generation's runtime threads on 2 MiB stacks, forksafe's per-generation
//! step cancelled; `stepped`: forksafe as shipped; `stepped-all`: the child's own thread stepped
//! too; default all three), `PL_DEADLINE_MS` (per child, default 3000), `PL_GDB=1`
//! (gdb backtraces of the first hung child), `PL_USERS` (forksafe threads, default 3).
//! Prints one line per variant and path, then a summary line per variant. A figure, not a test:
//! nothing here asserts a rate.

// The reproduction, with the parts of the fork harness (tests/support) it uses.
#[path = "../tests/parking-lot/src/repro.rs"]
mod repro;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use repro::{BusyParent, Outcome, Path, Stacks};

fn env_or(name: &str, default: u64) -> u64 {
    #[allow(
        clippy::disallowed_methods,
        reason = "the bench's own knobs, read before any fork"
    )]
    let value = std::env::var(name).ok();
    value.and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` / harness probes: nothing to list.
    }
    let forks = env_or("PL_FORKS", 1000);
    let deadline = Duration::from_millis(env_or("PL_DEADLINE_MS", 3000));
    let users = env_or("PL_USERS", 3) as usize;
    #[allow(
        clippy::disallowed_methods,
        reason = "the bench's own knobs, read before any fork"
    )]
    let variants =
        std::env::var("PL_VARIANTS").unwrap_or_else(|_| "same-size,stepped,stepped-all".to_owned());
    let mut gdb = env_or("PL_GDB", 0) == 1;
    forksafe::configure(forksafe::RuntimeConfig::new().worker_threads(repro::WORKERS))
        .expect("configure");
    let mut parent = BusyParent::start(users);
    repro::warm_up(&parent);
    println!(
        "parking_lot bench: tokio parking_lot feature {}, {forks} forks per variant, deadline {deadline:?}, {users} forksafe threads + 3 parked",
        if repro::HAZARD { "ON (via forksafe-tokio-full)" } else { "off" },
    );
    // The variants take turns fork by fork, so the machine's load falls on each alike.
    let variants: Vec<(&str, Stacks)> = variants
        .split(',')
        .map(|variant| match variant {
            "same-size" => (variant, Stacks::SameSize),
            "stepped" => (variant, Stacks::Stepped),
            "stepped-all" => (variant, Stacks::SteppedAll),
            other => panic!("unknown variant {other}"),
        })
        .collect();
    let start = Instant::now();
    let mut counts: BTreeMap<(&str, &str), [u64; 3]> = BTreeMap::new();
    let mut samples: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..forks {
        let path = Path::ALL[(i as usize) % Path::ALL.len()];
        for &(variant, stacks) in &variants {
            let outcome = repro::fork_one(&mut parent, path, deadline, stacks, gdb);
            let slot = counts.entry((variant, path.name())).or_default();
            let kept = samples.entry(variant).or_default();
            match outcome {
                Outcome::Ok => slot[0] += 1,
                Outcome::Crashed { status, stderr } => {
                    slot[1] += 1;
                    if kept.len() < 3 {
                        kept.push(format!(
                            "crash {}: {status}: {}",
                            path.name(),
                            last_words(&stderr)
                        ));
                    }
                }
                Outcome::Hung { stderr, threads } => {
                    slot[2] += 1;
                    if gdb {
                        println!(
                            "first hang ({variant}, {}):\n{threads}\nstderr: {stderr}",
                            path.name()
                        );
                        gdb = false;
                    }
                    if kept.len() < 3 {
                        kept.push(format!("hang {}: {}", path.name(), last_words(&stderr)));
                    }
                }
            }
        }
    }
    for &(variant, _) in &variants {
        let (mut ok, mut crashed, mut hung) = (0, 0, 0);
        for ((_, path), [o, c, h]) in counts.iter().filter(|((v, _), _)| *v == variant) {
            println!("  {variant:11} {path:12} ok {o:5}  crashed {c:4}  hung {h:4}");
            ok += o;
            crashed += c;
            hung += h;
        }
        let failed = crashed + hung;
        println!(
            "{variant:11} total {forks}: failed {failed} ({:.2} %): crashed {crashed}, hung {hung}, ok {ok}",
            100.0 * failed as f64 / forks as f64,
        );
        for sample in samples.remove(variant).unwrap_or_default() {
            println!("    e.g. {sample}");
        }
    }
    println!(
        "{} forks in {:.0} s",
        forks * variants.len() as u64,
        start.elapsed().as_secs_f64()
    );
    drop(parent);
}

fn last_words(stderr: &str) -> String {
    let interesting: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("panicked") || l.contains("parking_lot") || l.contains("misaligned"))
        .take(2)
        .collect();
    if interesting.is_empty() {
        stderr
            .lines()
            .last()
            .unwrap_or("(nothing)")
            .chars()
            .take(200)
            .collect()
    } else {
        interesting.join(" | ").chars().take(300).collect()
    }
}
