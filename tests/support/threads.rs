//! Threads in forked children.

/// `std::thread::spawn` with an explicit stack size: without one, std reads `RUST_MIN_STACK`
/// under its environment lock the first time, a lock a parent thread could have held at fork.
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn spawn_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(512 * 1024)
        .spawn(f)
        .expect("spawn thread")
}

/// Joins `handle`; if the thread panicked, fails the caller with the thread's own message.
#[allow(
    dead_code,
    reason = "part of the harness; not every test binary that includes this module calls it"
)]
pub fn join_or_resume<T>(handle: std::thread::JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}
