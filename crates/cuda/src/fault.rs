//! CUDA driver errors sorted into the fault kinds callers act on: out of
//! memory (smaller batches may run), device lost (the context is dead:
//! take the replica out), anything else a driver/library fault.

use cudarc::driver::sys::CUresult;
use embedrt_core::{Error, FaultKind};

/// Which kind of fault a driver result is.
pub fn kind_of(result: CUresult) -> FaultKind {
    use CUresult::*;
    match result {
        CUDA_ERROR_OUT_OF_MEMORY => FaultKind::OutOfMemory,
        // Sticky errors (the context must be destroyed) and a device gone.
        CUDA_ERROR_ILLEGAL_ADDRESS
        | CUDA_ERROR_LAUNCH_FAILED
        | CUDA_ERROR_LAUNCH_TIMEOUT
        | CUDA_ERROR_ECC_UNCORRECTABLE
        | CUDA_ERROR_DEVICE_UNAVAILABLE
        | CUDA_ERROR_CONTEXT_IS_DESTROYED
        | CUDA_ERROR_HARDWARE_STACK_ERROR
        | CUDA_ERROR_ILLEGAL_INSTRUCTION
        | CUDA_ERROR_MISALIGNED_ADDRESS
        | CUDA_ERROR_INVALID_ADDRESS_SPACE
        | CUDA_ERROR_INVALID_PC
        | CUDA_ERROR_ASSERT => FaultKind::DeviceLost,
        _ => FaultKind::Driver,
    }
}

/// A driver error as a typed engine fault whose message names `what` failed.
pub fn driver_fault(what: &str, e: cudarc::driver::DriverError) -> Error {
    Error::fault(kind_of(e.0), format!("CUDA {what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_results_sort_into_fault_kinds() {
        assert_eq!(
            kind_of(CUresult::CUDA_ERROR_OUT_OF_MEMORY),
            FaultKind::OutOfMemory
        );
        assert_eq!(
            kind_of(CUresult::CUDA_ERROR_ILLEGAL_ADDRESS),
            FaultKind::DeviceLost
        );
        assert_eq!(
            kind_of(CUresult::CUDA_ERROR_LAUNCH_FAILED),
            FaultKind::DeviceLost
        );
        assert_eq!(
            kind_of(CUresult::CUDA_ERROR_ECC_UNCORRECTABLE),
            FaultKind::DeviceLost
        );
        assert_eq!(
            kind_of(CUresult::CUDA_ERROR_INVALID_VALUE),
            FaultKind::Driver
        );
        // (driver_fault's message asks libcuda for the error text: not tested here.)
    }
}
