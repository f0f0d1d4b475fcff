//! Kernel launches, plain or early.
//!
//! An early launch sets CUDA's programmatic stream serialization (programmatic
//! dependent launch, sm_90+): the kernel may start while the kernel before it
//! in the stream is still finishing, so its launch latency and weight
//! prefetch hide behind that kernel's tail. That is what single sentences
//! spend most of their time on (60 small kernels in a row, docs/perf/gpu.md).
//! Only kernels that call `pdl_wait()` before touching activations
//! (encoder.cu, attention_tc.cu, small_linear.cu) may be launched early;
//! CUDA graph capture keeps the relation as a programmatic edge.

use std::ffi::c_void;

use cudarc::driver::{result as cr, sys as cu, DriverError};

/// Launches `f` on `stream`, early where `early` is set.
///
/// # Safety
/// As `cuLaunchKernel`: `args` match the kernel's parameters and every
/// pointer among them is live for the launch; with `early`, the kernel calls
/// `pdl_wait()` before it reads or writes anything an earlier launch touches.
pub(super) unsafe fn launch(
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    stream: cu::CUstream,
    args: &mut [*mut c_void],
    early: bool,
) -> Result<(), DriverError> {
    launch_with_shared(f, grid, block, 0, stream, args, early)
}

/// [`launch`] with `shared` bytes of dynamic shared memory.
///
/// # Safety
/// As [`launch`]; `shared` is at most what the function's
/// `MAX_DYNAMIC_SHARED_SIZE_BYTES` attribute allows.
pub(super) unsafe fn launch_with_shared(
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared: u32,
    stream: cu::CUstream,
    args: &mut [*mut c_void],
    early: bool,
) -> Result<(), DriverError> {
    if !early {
        return cr::launch_kernel(f, grid, block, shared, stream, args);
    }
    // SAFETY: a plain-data C struct; the id and value written below are the
    // only fields the driver reads for this attribute.
    let mut attr: cu::CUlaunchAttribute = std::mem::zeroed();
    attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    launch_with_attribute(f, grid, block, shared, stream, args, attr)
}

/// Launches `f` through `cuLaunchKernelEx` with one launch attribute (early
/// launch here, a cluster shape for the Hopper GEMM).
///
/// # Safety
/// As [`launch_with_shared`]; `attr` is one the kernel was written for.
pub(crate) unsafe fn launch_with_attribute(
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared: u32,
    stream: cu::CUstream,
    args: &mut [*mut c_void],
    mut attr: cu::CUlaunchAttribute,
) -> Result<(), DriverError> {
    let config = cu::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: shared,
        hStream: stream,
        attrs: &mut attr,
        numAttrs: 1,
    };
    cu::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()).result()
}
