//! The native half of the `embedrt` Python package (`embedrt._embedrt`):
//! [`engine::Engine`] over embedrt-runtime, and the exceptions it raises.
//! The Python half (re-exports, stubs) is `python/embedrt/`.

mod engine;
mod errors;

use pyo3::prelude::*;

/// mimalloc keeps freed memory for the next job instead of handing it back to the kernel
/// and faulting it in again (glibc's malloc did: ~2 ms of a 3,000-sentence job's host time,
/// docs/PERFORMANCE.md run 31).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _embedrt(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    errors::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
