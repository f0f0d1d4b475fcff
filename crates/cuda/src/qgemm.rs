//! The 8-bit GEMMs of quantized plans through cuBLASLt: `ACC[T, N] =
//! Xq[T, K] Wq[N, K]^T` with raw 32-bit accumulators out (int32 for int8,
//! fp32 for fp8). The epilogue kernels (kernels/quant.cu) apply the
//! activation and per-channel weight scales, the bias, GELU, residual and
//! LayerNorm: cuBLASLt has no epilogues for int8 (IMMA) GEMMs, and doing the
//! same for fp8 keeps both paths one shape, with per-channel weight scales on
//! every GPU (cuBLASLt's outer-vector scale mode is not on every fp8 GPU).
//!
//! Layout: as the fp16 GEMMs (gemm.rs), column-major `D (N x T) = op_T(W)
//! (N x K) * X^T (K x T)`: "TN", the only form cuBLASLt's int8 IMMA kernels
//! with the plain column order and its fp8 kernels accept. K, N and the
//! leading dimensions are multiples of 16 for every model we ship (checked at
//! load), pointers are 256-byte aligned allocations or 16-byte aligned plan
//! tensors. Algorithms come from cuBLASLt's heuristic, once per token count.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::sys;
use embedrt_core::quant::QuantFormat;
use embedrt_core::{Error, ModelConfig, Result};

use crate::gemm::GemmKind;
use crate::plan::Profile;

/// Extra device buffers a quantized plan's execution slot needs, by the
/// profile's token budget: the 8-bit input of the next GEMM (`quant_act`,
/// one byte per element, the widest GEMM input) and the 32-bit accumulators
/// of the last GEMM (`quant_acc`, the widest GEMM output).
pub fn quant_workspace_layout(
    config: &ModelConfig,
    profile: &Profile,
) -> Vec<(&'static str, usize)> {
    let t = gemm_rows(profile.token_budget());
    let (h, i) = (config.hidden_size, config.intermediate_size);
    vec![
        ("quant_act", t * h.max(i)),
        ("quant_acc", t * (3 * h).max(i) * 4),
    ]
}

/// Sizes the 8-bit GEMMs need: every K and N a multiple of 16 (int8 IMMA
/// needs 4, fp8 needs 16; the epilogues read 8 columns at a time).
pub fn check_dims(config: &ModelConfig, format: QuantFormat) -> Result<()> {
    let (h, i) = (config.hidden_size, config.intermediate_size);
    if !h.is_multiple_of(16) || !i.is_multiple_of(16) {
        return Err(Error::Model(format!(
            "{} plans need hidden and intermediate sizes that are multiples of 16; this model has {h} and {i}",
            format.name()
        )));
    }
    Ok(())
}

/// Rows an 8-bit GEMM runs for `tokens` tokens: a multiple of 16, so that
/// every token count meets fp8's and IMMA's size rules and few distinct
/// counts need a heuristic query. The padding rows read whatever the input
/// buffer holds there and their accumulators are never read.
pub fn gemm_rows(tokens: usize) -> usize {
    tokens.next_multiple_of(16)
}

fn check(what: &str, s: sys::cublasStatus_t) -> Result<()> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Backend(format!("cuBLASLt {what} failed: {s:?}")))
    }
}

struct Prepared {
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

pub struct QGemms {
    handle: sys::cublasLtHandle_t,
    format: QuantFormat,
    hidden: usize,
    inter: usize,
    /// One descriptor serves every GEMM: no bias or scale pointers in it.
    desc: sys::cublasLtMatmulDesc_t,
    pref: sys::cublasLtMatmulPreference_t,
    workspace: u64,
    workspace_bytes: usize,
    cache: HashMap<(GemmKind, usize), Prepared>,
}

// SAFETY: the handles are only used under the engine's mutex.
unsafe impl Send for QGemms {}

impl QGemms {
    pub fn new(
        format: QuantFormat,
        hidden: usize,
        inter: usize,
        workspace: u64,
        workspace_bytes: usize,
    ) -> Result<Self> {
        let mut me = QGemms {
            handle: std::ptr::null_mut(),
            format,
            hidden,
            inter,
            desc: std::ptr::null_mut(),
            pref: std::ptr::null_mut(),
            workspace,
            workspace_bytes,
            cache: HashMap::new(),
        };
        let (compute, scale) = match format {
            QuantFormat::Int8 => (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
                sys::cudaDataType::CUDA_R_32I,
            ),
            QuantFormat::Fp8 => (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            ),
        };
        // SAFETY: out-parameters; attribute values are live locals of the
        // size given. Drop releases whatever was made if a step fails.
        unsafe {
            check("create", sys::cublasLtCreate(&mut me.handle))?;
            check(
                "descriptor",
                sys::cublasLtMatmulDescCreate(&mut me.desc, compute, scale),
            )?;
            let ta: i32 = 1; // CUBLAS_OP_T: A = W^T ("TN")
            check(
                "descriptor attribute",
                sys::cublasLtMatmulDescSetAttribute(
                    me.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                    &ta as *const i32 as *const c_void,
                    4,
                ),
            )?;
            check(
                "preference",
                sys::cublasLtMatmulPreferenceCreate(&mut me.pref),
            )?;
            let ws = workspace_bytes as u64;
            check(
                "preference",
                sys::cublasLtMatmulPreferenceSetAttribute(
                    me.pref,
                    sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    &ws as *const u64 as *const c_void,
                    8,
                ),
            )?;
        }
        Ok(me)
    }

    fn input_type(&self) -> sys::cudaDataType {
        match self.format {
            QuantFormat::Int8 => sys::cudaDataType::CUDA_R_8I,
            QuantFormat::Fp8 => sys::cudaDataType::CUDA_R_8F_E4M3,
        }
    }

    fn acc_type(&self) -> sys::cudaDataType {
        match self.format {
            QuantFormat::Int8 => sys::cudaDataType::CUDA_R_32I,
            QuantFormat::Fp8 => sys::cudaDataType::CUDA_R_32F,
        }
    }

    /// Layouts and the heuristic's first algorithm for `kind` at `tokens`, made once.
    fn prepare(&mut self, kind: GemmKind, tokens: usize) -> Result<()> {
        if self.cache.contains_key(&(kind, tokens)) {
            return Ok(());
        }
        let (n, k) = kind.dims(self.hidden, self.inter);
        let mut p = Prepared {
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: a POD struct, filled below.
            algo: unsafe { std::mem::zeroed() },
        };
        let (input, acc) = (self.input_type(), self.acc_type());
        let made = (|| -> Result<()> {
            // SAFETY: out-parameters.
            unsafe {
                check(
                    "layout",
                    sys::cublasLtMatrixLayoutCreate(&mut p.a, input, k as u64, n as u64, k as i64),
                )?;
                check(
                    "layout",
                    sys::cublasLtMatrixLayoutCreate(
                        &mut p.b,
                        input,
                        k as u64,
                        tokens as u64,
                        k as i64,
                    ),
                )?;
                check(
                    "layout",
                    sys::cublasLtMatrixLayoutCreate(
                        &mut p.d,
                        acc,
                        n as u64,
                        tokens as u64,
                        n as i64,
                    ),
                )?;
            }
            // SAFETY: zeroed POD out-parameter filled by cuBLASLt.
            let mut result: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
            let mut found = 0i32;
            let s = unsafe {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    self.desc,
                    p.a,
                    p.b,
                    p.d,
                    p.d,
                    self.pref,
                    1,
                    &mut result,
                    &mut found,
                )
            };
            let ok = s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && found > 0
                && result.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS
                && result.workspaceSize <= self.workspace_bytes;
            if !ok {
                return Err(Error::Backend(format!(
                    "cuBLASLt has no {} GEMM for {} ({n} x {k} weight, {tokens} tokens) on this GPU \
                     (heuristic: {s:?}, {found} found); build an fp16 plan, or list the GEMM in the \
                     calibration table's fallback",
                    self.format.name(),
                    kind.name()
                )));
            }
            p.algo = result.algo;
            Ok(())
        })();
        if let Err(e) = made {
            destroy_layouts(&p);
            return Err(e);
        }
        self.cache.insert((kind, tokens), p);
        Ok(())
    }

    /// Runs one GEMM on `stream`: `acc = xq wq^T` (32-bit accumulators).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &mut self,
        kind: GemmKind,
        tokens: usize,
        weight: u64,
        xq: u64,
        acc: u64,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        let tokens = gemm_rows(tokens);
        self.prepare(kind, tokens)?;
        let p = &self.cache[&(kind, tokens)];
        let (one_i, zero_i, one_f, zero_f) = (1i32, 0i32, 1f32, 0f32);
        let (alpha, beta): (*const c_void, *const c_void) = match self.format {
            QuantFormat::Int8 => (
                &one_i as *const i32 as *const c_void,
                &zero_i as *const i32 as *const c_void,
            ),
            QuantFormat::Fp8 => (
                &one_f as *const f32 as *const c_void,
                &zero_f as *const f32 as *const c_void,
            ),
        };
        // SAFETY: device pointers sized by the engine for `tokens` rows (the
        // token budget); descriptor and layouts live as long as self; alpha
        // and beta outlive the call.
        check(
            &format!("{} matmul ({})", self.format.name(), kind.name()),
            unsafe {
                sys::cublasLtMatmul(
                    self.handle,
                    self.desc,
                    alpha,
                    weight as *const c_void,
                    p.a,
                    xq as *const c_void,
                    p.b,
                    beta,
                    acc as *const c_void,
                    p.d,
                    acc as *mut c_void,
                    p.d,
                    &p.algo,
                    self.workspace as *mut c_void,
                    self.workspace_bytes,
                    stream,
                )
            },
        )
    }
}

fn destroy_layouts(p: &Prepared) {
    // SAFETY: each layout was made by `prepare` (or is null) and is not used afterwards.
    unsafe {
        for l in [p.a, p.b, p.d] {
            if !l.is_null() {
                sys::cublasLtMatrixLayoutDestroy(l);
            }
        }
    }
}

impl Drop for QGemms {
    fn drop(&mut self) {
        for p in self.cache.values() {
            destroy_layouts(p);
        }
        // SAFETY: every object was made by this struct and is destroyed once.
        unsafe {
            if !self.desc.is_null() {
                sys::cublasLtMatmulDescDestroy(self.desc);
            }
            if !self.pref.is_null() {
                sys::cublasLtMatmulPreferenceDestroy(self.pref);
            }
            if !self.handle.is_null() {
                sys::cublasLtDestroy(self.handle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hidden: usize, inter: usize) -> ModelConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-mpnet-cls/config.json");
        let mut c = ModelConfig::from_file(&path).expect("fixture config");
        c.hidden_size = hidden;
        c.intermediate_size = inter;
        c
    }

    #[test]
    fn quantized_buffers_follow_the_token_budget() {
        let c = config(768, 3072);
        let wide: Profile = "1x8:256x128:1024x512".parse().unwrap();
        let layout = quant_workspace_layout(&c, &wide);
        let t = wide.token_budget();
        assert_eq!(t, crate::plan::DEFAULT_MAX_BATCH_TOKENS);
        // One byte per element of the widest GEMM input (FFN-out's 3072),
        // four per element of the widest output (QKV's 2304 < 3072).
        assert_eq!(
            layout,
            vec![("quant_act", t * 3072), ("quant_acc", t * 3072 * 4)]
        );
        // MiniLM: QKV's 3 x 384 = 1152 < 1536.
        let m = config(384, 1536);
        let l = quant_workspace_layout(&m, &wide);
        assert_eq!(l[1].1, t * 1536 * 4);
        let wider = config(1024, 1024);
        assert_eq!(quant_workspace_layout(&wider, &wide)[1].1, t * 3072 * 4);
        // A budget that is no multiple of 16 gets room for the padded GEMM rows.
        let odd = wide.with_max_tokens(1000).unwrap();
        assert_eq!(quant_workspace_layout(&c, &odd)[0].1, 1008 * 3072);
    }

    #[test]
    fn sizes_the_8_bit_gemms_cannot_run_are_refused() {
        assert!(check_dims(&config(384, 1536), QuantFormat::Int8).is_ok());
        let e = check_dims(&config(392, 1536), QuantFormat::Fp8).unwrap_err();
        assert!(e.to_string().contains("multiples of 16"), "{e}");
    }
}
