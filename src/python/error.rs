//! forksafe's [`Error`] as a Python exception: one mapping, used by `to_py_err` and by `?`.

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::PyErr;

use crate::error::Error;

/// `ValueError` for an invalid configuration, `OSError` when the runtime cannot be built,
/// `RuntimeError` otherwise.
pub(super) fn to_py_err(error: Error) -> PyErr {
    let message = error.to_string();
    match error {
        Error::InvalidConfig { .. } => PyValueError::new_err(message),
        Error::Build { .. } => PyOSError::new_err(message),
        _ => PyRuntimeError::new_err(message),
    }
}

impl From<Error> for PyErr {
    /// As [`to_py_err`](super::to_py_err).
    fn from(error: Error) -> PyErr {
        to_py_err(error)
    }
}
