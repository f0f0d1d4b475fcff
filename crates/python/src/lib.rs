//! The native half of the `embedrt` Python package (`embedrt._embedrt`):
//! [`engine::Engine`] over embedrt-runtime, and the exceptions it raises.
//! The Python half (re-exports, stubs) is `python/embedrt/`.

mod engine;
mod errors;

use pyo3::prelude::*;

#[pymodule]
fn _embedrt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
