//! forksafe::generic_runtime! against pyo3 0.28 and pyo3-async-runtimes 0.28.

forksafe::generic_runtime!(pub ForksafeRuntime, pyo3_async_runtimes = "0.28");

include!("../uses.rs");
