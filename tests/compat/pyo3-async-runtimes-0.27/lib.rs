//! forksafe::generic_runtime! against pyo3 0.27 and pyo3-async-runtimes 0.27.

forksafe::generic_runtime!(pub ForksafeRuntime, pyo3_async_runtimes = "0.27");

include!("../uses.rs");
