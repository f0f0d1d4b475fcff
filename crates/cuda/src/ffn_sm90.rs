//! FFN-in with the exact GELU fused in, on Hopper (`ffn_in_gelu_sm90` in
//! kernels/ffn_gemm_sm90.cu): our own wgmma GEMM, because cuBLASLt's fused
//! GELU is the tanh approximation and the models use erf. The kernel reads
//! its operands through TMA tensor maps, made once at load: one over the
//! slot's activation buffer (MAX tokens rows), one per layer's weights.
//!
//! Opt-in (`EMBEDRT_FFN_GEMM=own`): it gives the same answers, but runs at
//! ~400 TFLOP/s where cuBLASLt reaches ~680; fused, it is still slower than
//! cuBLASLt + the separate GELU pass. `own-c2` / `own-c4` launch it in
//! clusters of 2 (2 x 1) or 4 (2 x 2) CTAs that multicast the operand slices
//! they share, cutting the L2 reads a tile costs to 3/4 or 1/2: slower still,
//! because the kernel waits on its stages, not on L2 bandwidth (ncu, H200 run
//! 24 in docs/PERFORMANCE.md).

use std::ffi::c_void;
use std::mem::MaybeUninit;

use cudarc::driver::{result as cr, sys as cu};
use embedrt_core::{Error, Result};

/// Tile and pipeline of the kernel (FG_* in the .cu file).
const TILE_M: usize = 128;
const TILE_N: usize = 128;
const TILE_K: usize = 64;
const STAGES: usize = 3;
const THREADS: u32 = 2 * 128 + 32;
/// Stage buffers, 1,024 bytes of alignment slack, the mbarriers.
const SMEM_BYTES: usize = STAGES * 2 * TILE_M * TILE_K * 2 + 1024 + 64;

pub struct FfnInGeluSm90 {
    function: cu::CUfunction,
    /// CTAs of a cluster along M and along N (the kernel entry point's).
    cluster: (usize, usize),
    map_x: cu::CUtensorMap,
    map_w: Vec<cu::CUtensorMap>,
    n: usize,
    k: usize,
    /// Persistent grid: two CTAs per multiprocessor.
    max_ctas: usize,
}

// SAFETY: plain handles and descriptors, used under the slot's mutex.
unsafe impl Send for FfnInGeluSm90 {}

impl FfnInGeluSm90 {
    /// Whether the kernel applies: fp16 on compute capability 9.0 (the
    /// module is built for sm_90a there), K a multiple of 64, N of 128 per
    /// cluster CTA along N.
    pub fn applies(
        cc: (i32, i32),
        fp16: bool,
        hidden: usize,
        inter: usize,
        cluster_n: usize,
    ) -> bool {
        cc == (9, 0)
            && fp16
            && hidden.is_multiple_of(TILE_K)
            && inter.is_multiple_of(TILE_N * cluster_n)
    }

    /// `function`: the entry point for `cluster` (M, N) CTAs (1 x 1, 2 x 1
    /// or 2 x 2); `x`: the activations the FFN reads, `max_tokens` x `hidden`
    /// fp16; `weights`: each layer's `[inter, hidden]` FFN-in matrix.
    pub fn new(
        function: cu::CUfunction,
        cluster: (usize, usize),
        multiprocessors: usize,
        x: u64,
        max_tokens: usize,
        (hidden, inter): (usize, usize),
        weights: &[u64],
    ) -> Result<Self> {
        let attr = cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
        // SAFETY: a function of a loaded module.
        unsafe { cr::function::set_function_attribute(function, attr, SMEM_BYTES as i32) }
            .map_err(|e| Error::Backend(format!("CUDA kernel attribute: {e}")))?;
        // Each CTA loads its slice of the boxes its cluster shares.
        let (cm, cn) = cluster;
        Ok(FfnInGeluSm90 {
            function,
            cluster,
            map_x: tensor_map(x, max_tokens, hidden, TILE_M / cn)?,
            map_w: weights
                .iter()
                .map(|&w| tensor_map(w, inter, hidden, TILE_N / cm))
                .collect::<Result<_>>()?,
            n: inter,
            k: hidden,
            max_ctas: 2 * multiprocessors.max(1),
        })
    }

    /// `out[tokens, inter] = GELU(x w_layer^T + bias)` on `stream`.
    ///
    /// # Safety
    /// `bias` holds `inter` and `out` `tokens * inter` fp16 values on this
    /// context's device; `tokens` is at most the MAX tokens given to `new`.
    pub unsafe fn launch(
        &self,
        layer: usize,
        bias: u64,
        out: u64,
        tokens: usize,
        stream: cu::CUstream,
    ) -> Result<()> {
        let (map_x, map_w) = (self.map_x, self.map_w[layer]);
        let (m, n, k) = (tokens as i32, self.n as i32, self.k as i32);
        let args: &mut [*mut c_void] = &mut [
            &map_x as *const _ as *mut c_void,
            &map_w as *const _ as *mut c_void,
            &bias as *const _ as *mut c_void,
            &out as *const _ as *mut c_void,
            &m as *const _ as *mut c_void,
            &n as *const _ as *mut c_void,
            &k as *const _ as *mut c_void,
        ];
        // Groups of cm x cn tiles, one a cluster at a time.
        let (cm, cn) = self.cluster;
        let size = cm * cn;
        let groups = (self.n / (TILE_N * cn)) * tokens.div_ceil(TILE_M).div_ceil(cm);
        let ctas = (groups.min(self.max_ctas / size) * size) as u32;
        // SAFETY: the arguments match the ffn_in_gelu_sm90* signature; the
        // cluster shape is the one this entry point was written for.
        unsafe { launch_clustered(self.function, ctas, size as u32, stream, args) }
            .map_err(|e| Error::Backend(format!("CUDA FFN-in kernel: {e}")))
    }
}

/// Launches `ctas` CTAs in clusters of `size` along x.
///
/// # Safety
/// As `cuLaunchKernel`; `ctas` is a multiple of `size`.
unsafe fn launch_clustered(
    f: cu::CUfunction,
    ctas: u32,
    size: u32,
    stream: cu::CUstream,
    args: &mut [*mut c_void],
) -> std::result::Result<(), cudarc::driver::DriverError> {
    if size == 1 {
        // SAFETY: the caller's promise.
        return unsafe {
            cr::launch_kernel(
                f,
                (ctas, 1, 1),
                (THREADS, 1, 1),
                SMEM_BYTES as u32,
                stream,
                args,
            )
        };
    }
    // SAFETY: a plain-data C struct; the id and value set below are the
    // only fields the driver reads for this attribute.
    let mut attr: cu::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    attr.id = cu::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attr.value.clusterDim.x = size;
    attr.value.clusterDim.y = 1;
    attr.value.clusterDim.z = 1;
    let (grid, block) = ((ctas, 1, 1), (THREADS, 1, 1));
    // SAFETY: the caller's promise on f, args and ctas.
    unsafe {
        crate::engine::launch::launch_with_attribute(
            f,
            grid,
            block,
            SMEM_BYTES as u32,
            stream,
            args,
            attr,
        )
    }
}

/// A 2-D fp16 tensor map over a row-major `[rows, cols]` matrix, read in
/// boxes of 64 columns x `box_rows` rows with the 128-byte swizzle wgmma
/// expects; rows past the end read as zeros.
fn tensor_map(ptr: u64, rows: usize, cols: usize, box_rows: usize) -> Result<cu::CUtensorMap> {
    let mut map = MaybeUninit::<cu::CUtensorMap>::zeroed();
    let dims = [cols as u64, rows as u64];
    let strides = [(cols * 2) as u64];
    let boxes = [TILE_K as u32, box_rows as u32];
    let element_strides = [1u32, 1];
    // SAFETY: all arrays have the rank's length; ptr is a device allocation
    // of rows * cols fp16 values, 16-byte aligned.
    let r = unsafe {
        cu::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            cu::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
            2,
            ptr as *mut c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            cu::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            cu::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            cu::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            cu::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != cu::CUresult::CUDA_SUCCESS {
        return Err(Error::Backend(format!(
            "cuTensorMapEncodeTiled failed: {r:?}"
        )));
    }
    // SAFETY: initialized by the successful call above.
    Ok(unsafe { map.assume_init() })
}
