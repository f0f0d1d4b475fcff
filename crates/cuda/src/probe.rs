//! Is CUDA usable here? cudarc loads libcuda, libcublasLt and libnvrtc
//! lazily and panics when one is missing, so we open each ourselves first
//! and turn absence into an error that says which library is missing.

use embedrt_core::{Error, Result};

/// The shared libraries the engine needs at run time (CUDA 13 sonames).
pub const REQUIRED_LIBRARIES: [(&str, &str); 3] = [
    ("libcuda.so.1", "the NVIDIA driver"),
    ("libcublasLt.so.13", "cuBLASLt from CUDA 13"),
    ("libnvrtc.so.13", "NVRTC from CUDA 13"),
];

/// Checks that every required library can be opened. Only after this
/// returns Ok may cudarc be called.
pub fn check_libraries() -> Result<()> {
    let mut missing = Vec::new();
    for (name, what) in REQUIRED_LIBRARIES {
        // SAFETY: opening a library runs its initializers; these are the
        // vendor's libraries that cudarc would open anyway.
        if unsafe { libloading::Library::new(name) }.is_err() {
            missing.push(format!("{name} ({what})"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "CUDA is not usable: cannot load {}",
            missing.join(", ")
        )))
    }
}

/// Libraries present, the driver initializes and GPU `ordinal` exists.
pub fn check_device(ordinal: usize) -> Result<()> {
    check_libraries()?;
    cudarc::driver::result::init()
        .map_err(|e| Error::Backend(format!("CUDA driver failed to initialize: {e}")))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| Error::Backend(format!("cannot count CUDA devices: {e}")))?;
    if count <= 0 {
        return Err(Error::Backend("no CUDA GPU is visible".into()));
    }
    if ordinal >= count as usize {
        return Err(Error::Backend(format!(
            "cuda:{ordinal} does not exist; this machine has {count} GPU(s): cuda:0..cuda:{}",
            count - 1
        )));
    }
    Ok(())
}
