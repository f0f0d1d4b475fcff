//! FFN-in with the exact GELU fused in, on Hopper (`ffn_in_gelu_sm90` in
//! kernels/ffn_gemm_sm90.cu): our own wgmma GEMM, because cuBLASLt's fused
//! GELU is the tanh approximation and the models use erf. The kernel reads
//! its operands through TMA tensor maps, made once at load: one over the
//! slot's activation buffer (MAX tokens rows), one per layer's weights.
//!
//! Opt-in (`EMBEDRT_FFN_GEMM=own`): it gives the same answers, but with
//! 128 x 128 tiles and no cluster multicast it is L2-bound at ~400 TFLOP/s,
//! where cuBLASLt (256 x 128 tiles, 2-CTA clusters) reaches ~680; fused, it
//! is still slower than cuBLASLt + the separate GELU pass (docs/perf/gpu.md).

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
    /// module is built for sm_90a there), K a multiple of 64, N of 128.
    pub fn applies(cc: (i32, i32), fp16: bool, hidden: usize, inter: usize) -> bool {
        cc == (9, 0) && fp16 && hidden.is_multiple_of(TILE_K) && inter.is_multiple_of(TILE_N)
    }

    /// `x`: the activations the FFN reads, `max_tokens` x `hidden` fp16;
    /// `weights`: each layer's `[inter, hidden]` FFN-in matrix.
    pub fn new(
        function: cu::CUfunction,
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
        Ok(FfnInGeluSm90 {
            function,
            map_x: tensor_map(x, max_tokens, hidden, TILE_M)?,
            map_w: weights
                .iter()
                .map(|&w| tensor_map(w, inter, hidden, TILE_N))
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
        let tiles = (self.n / TILE_N) * tokens.div_ceil(TILE_M);
        // SAFETY: the arguments match ffn_in_gelu_sm90's signature.
        unsafe {
            cr::launch_kernel(
                self.function,
                (tiles.min(self.max_ctas) as u32, 1, 1),
                (THREADS, 1, 1),
                SMEM_BYTES as u32,
                stream,
                args,
            )
        }
        .map_err(|e| Error::Backend(format!("CUDA FFN-in kernel: {e}")))
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
