//! Threads a process holds with each runtime size (docs/design.md, "Runtime size").
//!
//! For each configuration, a fresh process (this binary, re-run with `FORKSAFE_SIZE_CONFIG`)
//! builds the runtime, uses it, and counts its threads in `/proc/self/task`: once after one
//! task and one `spawn_blocking` call, and once after a burst of 1,000 blocking calls in flight
//! at once (each sleeps 20 ms), which grows the blocking pool to its limit. Counts, not timings:
//! nothing here depends on the machine's speed, only on its core count (printed).

use std::time::Duration;

use forksafe::RuntimeConfig;

const CONFIGS: [&str; 3] = ["new", "pyo3_async_runtimes_defaults", "pyo3_on_64_cores"];

fn config(name: &str) -> RuntimeConfig {
    match name {
        "new" => RuntimeConfig::new(),
        "pyo3_async_runtimes_defaults" => RuntimeConfig::pyo3_async_runtimes_defaults(),
        // What pyo3_async_runtimes_defaults() gives on a 64-core machine.
        "pyo3_on_64_cores" => RuntimeConfig::pyo3_async_runtimes_defaults().worker_threads(64),
        other => panic!("unknown configuration {other}"),
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn measure(name: &str) {
    forksafe::configure(config(name)).expect("configure");
    let before = threads();
    forksafe::block_on(async {
        forksafe::spawn(async { 1 }).unwrap().await.unwrap();
        forksafe::spawn_blocking(|| 2).unwrap().await.unwrap();
    })
    .unwrap();
    let used = threads();
    forksafe::block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                forksafe::spawn_blocking(|| std::thread::sleep(Duration::from_millis(20))).unwrap()
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    })
    .unwrap();
    let burst = threads();
    let info = forksafe::process_info();
    println!(
        "{name:<30} workers={:<3} max_blocking={:<4} threads: before={before} after_use={used} after_1000_blocking={burst}",
        info.worker_threads, info.max_blocking_threads
    );
}

#[allow(
    clippy::disallowed_methods,
    reason = "the bench's own switch between its runs; the library never reads the environment"
)]
fn main() {
    if let Ok(name) = std::env::var("FORKSAFE_SIZE_CONFIG") {
        measure(&name);
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!("available_parallelism = {cores}");
    let me = std::env::current_exe().expect("current_exe");
    for name in CONFIGS {
        let status = std::process::Command::new(&me)
            .env("FORKSAFE_SIZE_CONFIG", name)
            .status()
            .expect("run a measurement");
        assert!(status.success(), "{name}: {status}");
    }
}
