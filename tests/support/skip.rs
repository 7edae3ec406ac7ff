//! Skips that say why, and the `FORKSAFE_REQUIRE_*` switches that turn them into failures in CI.
//!
//! A test that cannot run here calls [`require_or_skip`] with its switch: CI sets the switch
//! (scripts/test), so what CI must run fails instead of skipping. No other code reads a
//! `FORKSAFE_REQUIRE_*` variable.

/// Reports a test that cannot run here, with its reason, where `cargo test` shows it: on the
/// real stderr, which libtest does not capture (it captures only `print!`/`eprint!`). A passing
/// test that did not run must never look like one that did.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Where a test cannot run here: fails with `why` when CI requires it (`FORKSAFE_REQUIRE_<what>`
/// set to anything but empty or `0`), else prints `SKIPPED <test>: <why>` (see [`skip`]).
/// Every `FORKSAFE_REQUIRE_*` switch is parsed here, one way.
#[track_caller]
#[allow(
    clippy::disallowed_methods,
    reason = "the test harness reads its switch in the test process, before it forks"
)]
pub fn require_or_skip(require: &str, test: &str, why: &str) {
    let required = std::env::var_os(require).is_some_and(|v| !v.is_empty() && v != "0");
    if required {
        panic!("{require} is set but {test} cannot run here: {why}");
    }
    skip(test, why);
}
