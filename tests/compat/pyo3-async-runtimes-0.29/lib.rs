//! forksafe::generic_runtime! against pyo3 0.29 and pyo3-async-runtimes 0.29.

forksafe::generic_runtime!(pub ForksafeRuntime, pyo3_async_runtimes = "0.29");

include!("../uses.rs");
