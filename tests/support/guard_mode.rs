//! The guard mode the suite runs in (`FORKSAFE_PID_CHECK`), read in the test process.

/// True when the suite runs with `FORKSAFE_PID_CHECK=syscall`.
#[allow(
    dead_code,
    reason = "only the binaries with a test the syscall mode cannot run call it"
)]
#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switch; the library never reads the environment this way"
)]
pub fn syscall_mode_requested() -> bool {
    std::env::var("FORKSAFE_PID_CHECK").as_deref() == Ok("syscall")
}

/// The guard mode `process_info().guard` must report on this machine (Linux >= 4.14).
#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switch; the library never reads the environment this way"
)]
pub fn expected_guard() -> &'static str {
    match std::env::var("FORKSAFE_PID_CHECK").as_deref() {
        Err(_) | Ok("") | Ok("auto") | Ok("wipeonfork") => "wipeonfork",
        Ok(_) => "syscall",
    }
}
