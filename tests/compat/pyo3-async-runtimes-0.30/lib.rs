//! forksafe::generic_runtime! against pyo3 0.30 and pyo3-async-runtimes 0.30.

forksafe::generic_runtime!(pub ForksafeRuntime, pyo3_async_runtimes = "0.30");

include!("../uses.rs");
