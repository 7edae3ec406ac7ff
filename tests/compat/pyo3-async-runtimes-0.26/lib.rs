//! forksafe::generic_runtime! against pyo3 0.26 and pyo3-async-runtimes 0.26.

forksafe::generic_runtime!(pub ForksafeRuntime, pyo3_async_runtimes = "0.26");

include!("../uses.rs");
