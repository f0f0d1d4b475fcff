//! embedrt errors as Python exceptions, in one place: bad input is a
//! ValueError (a missing file a FileNotFoundError), an engine fault a
//! RuntimeError subclass saying which fault. Messages are the CLI's.

use embedrt_core::FaultKind;
use embedrt_runtime::{Error, ErrorKind};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _embedrt,
    EngineError,
    PyRuntimeError,
    "An engine failed (not the input): a driver, library or device fault."
);
pyo3::create_exception!(
    _embedrt,
    OutOfMemoryError,
    EngineError,
    "The device ran out of memory; smaller batches may still run."
);
pyo3::create_exception!(
    _embedrt,
    DeviceLostError,
    EngineError,
    "The device or its context is gone; open a new Engine."
);

/// The Python exception for an embedrt error.
pub fn to_py(error: Error) -> PyErr {
    let message = error.message();
    match error.kind() {
        ErrorKind::Input => PyValueError::new_err(message),
        ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        ErrorKind::Engine(Some(FaultKind::OutOfMemory)) => OutOfMemoryError::new_err(message),
        ErrorKind::Engine(Some(FaultKind::DeviceLost)) => DeviceLostError::new_err(message),
        ErrorKind::Engine(_) => EngineError::new_err(message),
    }
}

pub fn core_to_py(error: embedrt_core::Error) -> PyErr {
    to_py(Error::Core(error))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("OutOfMemoryError", py.get_type::<OutOfMemoryError>())?;
    m.add("DeviceLostError", py.get_type::<DeviceLostError>())?;
    Ok(())
}
