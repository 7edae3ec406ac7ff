//! The reproduction lives in `src/repro.rs`, compiled into the test and the bench binaries
//! (each also includes the fork suites' `tests/support`, whose constructor must sit in a binary).
