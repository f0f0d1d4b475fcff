//! The 8-bit GEMMs of quantized plans through cuBLASLt, in one of two forms
//! (`QuantInfo::gemm_output`):
//!
//! - `acc32` (run 19's path, every GPU): `ACC[T, N] = Xq[T, K] Wq[N, K]^T`,
//!   raw 32-bit accumulators (int32 for int8, fp32 for fp8); the epilogue
//!   kernels (kernels/quant.cu) apply the activation and per-channel weight
//!   scales, bias, GELU, residual and LayerNorm. cuBLASLt has no epilogues for
//!   int8 (IMMA) GEMMs, and no fp16 output for them either.
//! - `fp16` / `fp16-fast` (fp8 on sm_90): `Y[T, N] = s_a s_w[n] (Xq Wq^T) +
//!   bias (+ residual)` in fp16, straight from cuBLASLt: outer-vector scales
//!   (`CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F`, cuBLAS 12.9+; A's vector
//!   is `act_scale * w_scale[n]`, B's all ones), the bias epilogue, the
//!   residual as C with beta = 1. The GEMM then stands where the fp16 plans'
//!   GEMM stands and the fp16 plans' GELU and LayerNorm kernels follow it,
//!   reading half the bytes of the 32-bit accumulators.
//!
//! Layout: as the fp16 GEMMs (gemm.rs), column-major `D (N x T) = op_T(W)
//! (N x K) * X^T (K x T)`: "TN", the only form cuBLASLt's int8 IMMA kernels
//! with the plain column order and its fp8 kernels accept. K, N and the
//! leading dimensions are multiples of 16 for every model we ship (checked at
//! load), pointers are 256-byte aligned allocations or 16-byte aligned plan
//! tensors. Algorithms come from the plan (timed at build time with
//! `--tune-8bit`, checked with `cublasLtMatmulAlgoCheck`) or else from
//! cuBLASLt's heuristic, once per token count.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::sys;
use embedrt_core::quant::QuantFormat;
use embedrt_core::{Error, ModelConfig, Result};

use crate::gemm::{algo_from_hex, check, GemmKind};
use crate::plan::{GemmChoice, Profile};
use crate::quant_plan::{GemmOutput, QuantInfo};

/// Extra device buffers a quantized plan's execution slot needs, by the
/// profile's token budget: the 8-bit input of the next GEMM (`quant_act`,
/// one byte per element, the widest GEMM input) and, for `acc32` output
/// only, the 32-bit accumulators of the last GEMM (`quant_acc`, the widest
/// GEMM output). fp16-output GEMMs write into the fp16 plan's own buffers,
/// so they need no accumulators: 384 MiB less per slot for MPNet-base at the
/// default 32k-token budget. A plan with 8-bit fallback weights also gets
/// the fp16 weight its largest such GEMM is widened into before running
/// (`quant_fallback_w`, 4.5 MiB for MPNet-base's FFN; one a slot, reused by
/// each fallback GEMM in turn on the slot's stream).
pub fn quant_workspace_layout(
    config: &ModelConfig,
    profile: &Profile,
    quant: &QuantInfo,
) -> Vec<(&'static str, usize)> {
    let t = gemm_rows(profile.token_budget());
    let (h, i) = (config.hidden_size, config.intermediate_size);
    let mut layout = vec![("quant_act", t * h.max(i))];
    if !quant.gemm_output.is_fp16() {
        layout.push(("quant_acc", t * (3 * h).max(i) * 4));
    }
    let widest = quant
        .eight_bit_fallbacks(config.num_hidden_layers)
        .map(|s| {
            let (n, k) = s.kind.dims(h, i);
            2 * n * k
        })
        .max();
    if let Some(bytes) = widest {
        layout.push(("quant_fallback_w", bytes));
    }
    layout
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

struct Prepared {
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    /// fp16 `C` where D is fp8 (cuBLASLt takes no fp8 C); null: C is laid out as D.
    c: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Prepared {
    fn c(&self) -> sys::cublasLtMatrixLayout_t {
        if self.c.is_null() {
            self.d
        } else {
            self.c
        }
    }
}

/// How an fp16-output (fp8, sm_90) GEMM site runs: sites of one kind and
/// form share layouts, algorithms and heuristic queries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SiteForm {
    /// Every output channel has the same scale (`--weight-scales tensor`):
    /// plain scalar scales instead of outer-vector ones.
    pub per_tensor: bool,
    /// FFN-in of a `gelu: tanh` plan: cuBLASLt's GELU_BIAS epilogue.
    pub gelu: bool,
    /// With `gelu`, where FFN-out is quantized too: D is FFN-out's fp8
    /// input (scaled by the inverse of its input scale), not fp16.
    pub fp8_out: bool,
}

/// What an fp16-output 8-bit GEMM's descriptor points at (device pointers).
#[derive(Clone, Copy, Debug)]
pub struct SitePointers {
    /// fp16 `[N]`.
    pub bias: u64,
    /// fp32 `[N]`: `act_scale * w_scale[n]` (per tensor: all equal, the
    /// first is the scalar scale).
    pub scale: u64,
    /// fp32 scalar: `1 / act_scale` of the next GEMM, for `form.fp8_out`.
    pub d_scale: u64,
    pub form: SiteForm,
}

pub struct QGemms {
    handle: sys::cublasLtHandle_t,
    format: QuantFormat,
    output: GemmOutput,
    hidden: usize,
    inter: usize,
    /// acc32: one descriptor serves every GEMM (no bias or scale pointers in it).
    desc: sys::cublasLtMatmulDesc_t,
    /// fp16 output: `[layer][kind]` descriptors with the bias and scale
    /// pointers; null where the GEMM runs in fp16.
    site_descs: Vec<[sys::cublasLtMatmulDesc_t; 4]>,
    /// `[layer][kind]`: each site's form (fp16 output only).
    site_forms: Vec<[SiteForm; 4]>,
    pref: sys::cublasLtMatmulPreference_t,
    workspace: u64,
    workspace_bytes: usize,
    /// Algorithms from the plan by kind, sorted by token count.
    plan_algos: HashMap<GemmKind, Vec<(usize, sys::cublasLtMatmulAlgo_t)>>,
    cache: HashMap<(GemmKind, SiteForm, usize), Prepared>,
}

// SAFETY: the handles are only used under the engine's mutex.
unsafe impl Send for QGemms {}

impl QGemms {
    /// `sites[layer][kind]`: the pointers of each quantized GEMM (None: fp16
    /// fallback), used by the fp16-output form; `ones` is an fp32 vector of
    /// 1.0 as long as the padded token budget (B's outer-vector scale).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        format: QuantFormat,
        output: GemmOutput,
        (hidden, inter): (usize, usize),
        workspace: u64,
        workspace_bytes: usize,
        sites: &[[Option<SitePointers>; 4]],
        ones: u64,
        choices: &[GemmChoice],
    ) -> Result<Self> {
        if output.is_fp16() && format != QuantFormat::Fp8 {
            return Err(Error::Model(format!(
                "this {} plan asks for fp16 GEMM output, which only fp8 GEMMs have; rebuild it with acc32",
                format.name()
            )));
        }
        let mut me = QGemms {
            handle: std::ptr::null_mut(),
            format,
            output,
            hidden,
            inter,
            desc: std::ptr::null_mut(),
            site_descs: Vec::new(),
            site_forms: Vec::new(),
            pref: std::ptr::null_mut(),
            workspace,
            workspace_bytes,
            plan_algos: HashMap::new(),
            cache: HashMap::new(),
        };
        // SAFETY: out-parameters; attribute values are live locals of the
        // size given. Drop releases whatever was made if a step fails.
        unsafe {
            check("create", sys::cublasLtCreate(&mut me.handle))?;
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
        if output.is_fp16() {
            for layer in sites {
                // Pushed first, so that Drop frees what was made if a later one fails.
                me.site_descs.push([std::ptr::null_mut(); 4]);
                me.site_forms.push([SiteForm::default(); 4]);
                let li = me.site_descs.len() - 1;
                for (ki, site) in layer.iter().enumerate() {
                    if let Some(p) = site {
                        let d = me.make_fp16_desc(p, ones)?;
                        me.site_descs[li][ki] = d;
                        me.site_forms[li][ki] = p.form;
                    }
                }
            }
        } else {
            me.desc = me.make_acc_desc()?;
        }
        for c in choices {
            let kind = GemmKind::ALL.iter().copied().find(|k| k.name() == c.gemm);
            if let (Some(kind), Some(algo)) = (kind, algo_from_hex(&c.algo)) {
                me.plan_algos
                    .entry(kind)
                    .or_default()
                    .push((c.tokens, algo));
            }
        }
        for v in me.plan_algos.values_mut() {
            v.sort_by_key(|(t, _)| *t);
        }
        Ok(me)
    }

    fn new_desc(&self) -> Result<sys::cublasLtMatmulDesc_t> {
        let (compute, scale) = match self.format {
            QuantFormat::Int8 => (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
                sys::cudaDataType::CUDA_R_32I,
            ),
            QuantFormat::Fp8 => (
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cudaDataType::CUDA_R_32F,
            ),
        };
        let mut desc: sys::cublasLtMatmulDesc_t = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check("descriptor", unsafe {
            sys::cublasLtMatmulDescCreate(&mut desc, compute, scale)
        })?;
        let ta: i32 = 1; // CUBLAS_OP_T: A = W^T ("TN")
        if let Err(e) = set_attr(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &ta,
        ) {
            // SAFETY: made above, not used afterwards.
            unsafe { sys::cublasLtMatmulDescDestroy(desc) };
            return Err(e);
        }
        Ok(desc)
    }

    fn make_acc_desc(&self) -> Result<sys::cublasLtMatmulDesc_t> {
        self.new_desc()
    }

    /// fp8 x fp8 -> fp16 (or fp8, `form.fp8_out`) with outer-vector (or,
    /// per tensor, scalar) scales and the bias (or GELU + bias) epilogue.
    fn make_fp16_desc(&self, p: &SitePointers, ones: u64) -> Result<sys::cublasLtMatmulDesc_t> {
        use sys::cublasLtEpilogue_t as E;
        use sys::cublasLtMatmulDescAttributes_t as A;
        let desc = self.new_desc()?;
        let mode = sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        let epilogue = if p.form.gelu {
            E::CUBLASLT_EPILOGUE_GELU_BIAS
        } else {
            E::CUBLASLT_EPILOGUE_BIAS
        };
        let bias_type = sys::cudaDataType::CUDA_R_16F;
        let fast: i8 = (self.output == GemmOutput::Fp16Fast) as i8;
        let set = || -> Result<()> {
            set_attr(desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
            set_attr(desc, A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias)?;
            set_attr(desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type)?;
            if !p.form.per_tensor {
                // Both modes must be outer-vector (cuBLASLt's rule for this scaling);
                // per tensor, the default scalar mode reads one float from each pointer.
                set_attr(desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode)?;
                set_attr(desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode)?;
            }
            set_attr(desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &p.scale)?;
            set_attr(desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &ones)?;
            if p.form.fp8_out {
                set_attr(desc, A::CUBLASLT_MATMUL_DESC_D_SCALE_POINTER, &p.d_scale)?;
            }
            set_attr(desc, A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast)
        };
        if let Err(e) = set() {
            // SAFETY: made above, not used afterwards.
            unsafe { sys::cublasLtMatmulDescDestroy(desc) };
            return Err(e);
        }
        Ok(desc)
    }

    pub fn output(&self) -> GemmOutput {
        self.output
    }

    fn input_type(&self) -> sys::cudaDataType {
        match self.format {
            QuantFormat::Int8 => sys::cudaDataType::CUDA_R_8I,
            QuantFormat::Fp8 => sys::cudaDataType::CUDA_R_8F_E4M3,
        }
    }

    fn out_type(&self) -> sys::cudaDataType {
        match (self.format, self.output.is_fp16()) {
            (_, true) => sys::cudaDataType::CUDA_R_16F,
            (QuantFormat::Int8, false) => sys::cudaDataType::CUDA_R_32I,
            (QuantFormat::Fp8, false) => sys::cudaDataType::CUDA_R_32F,
        }
    }

    /// The descriptor for (layer, kind): acc32's shared one, or the site's.
    fn desc_for(&self, layer: usize, kind: GemmKind) -> Option<sys::cublasLtMatmulDesc_t> {
        if !self.output.is_fp16() {
            return Some(self.desc);
        }
        let d = self.site_descs.get(layer)?[kind as usize];
        (!d.is_null()).then_some(d)
    }

    /// The form of the GEMM at (layer, kind); acc32 and fp16 sites: the default.
    pub fn form(&self, layer: usize, kind: GemmKind) -> SiteForm {
        self.site_forms
            .get(layer)
            .map(|r| r[kind as usize])
            .unwrap_or_default()
    }

    /// A descriptor of `kind` and `form` for heuristic queries and checks:
    /// those sites have the same types, shapes and epilogue, only their
    /// pointers differ.
    fn any_desc(&self, kind: GemmKind, form: SiteForm) -> Option<sys::cublasLtMatmulDesc_t> {
        (0..self.site_descs.len().max(1))
            .filter(|&l| self.form(l, kind) == form)
            .find_map(|l| self.desc_for(l, kind))
    }

    fn layouts(&self, kind: GemmKind, form: SiteForm, rows: usize, p: &mut Prepared) -> Result<()> {
        let (n, k) = kind.dims(self.hidden, self.inter);
        let input = self.input_type();
        let out = if form.fp8_out {
            sys::cudaDataType::CUDA_R_8F_E4M3
        } else {
            self.out_type()
        };
        if form.fp8_out {
            let c16 = sys::cudaDataType::CUDA_R_16F;
            // SAFETY: out-parameter.
            check("layout", unsafe {
                sys::cublasLtMatrixLayoutCreate(&mut p.c, c16, n as u64, rows as u64, n as i64)
            })?;
        }
        // SAFETY: out-parameters.
        unsafe {
            check(
                "layout",
                sys::cublasLtMatrixLayoutCreate(&mut p.a, input, k as u64, n as u64, k as i64),
            )?;
            check(
                "layout",
                sys::cublasLtMatrixLayoutCreate(&mut p.b, input, k as u64, rows as u64, k as i64),
            )?;
            check(
                "layout",
                sys::cublasLtMatrixLayoutCreate(&mut p.d, out, n as u64, rows as u64, n as i64),
            )
        }
    }

    fn empty() -> Prepared {
        Prepared {
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: a POD struct, filled later.
            algo: unsafe { std::mem::zeroed() },
        }
    }

    fn no_gemm(&self, kind: GemmKind, rows: usize, why: &str) -> Error {
        let (n, k) = kind.dims(self.hidden, self.inter);
        Error::Backend(format!(
            "cuBLASLt has no {} GEMM ({} output) for {} ({n} x {k} weight, {rows} tokens) on this GPU \
             ({why}); build an fp16 plan, or list the GEMM in the calibration table's fallback",
            self.format.name(),
            self.output.name(),
            kind.name()
        ))
    }

    fn query(
        &self,
        (kind, form): (GemmKind, SiteForm),
        rows: usize,
        p: &Prepared,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let desc = self
            .any_desc(kind, form)
            .ok_or_else(|| self.no_gemm(kind, rows, "no quantized GEMM of this kind"))?;
        // SAFETY: zeroed POD structs filled by cuBLASLt.
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; count.max(1)];
        let mut found = 0i32;
        // SAFETY: live descriptor, layouts and preference; `results` holds `count` entries.
        let s = unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc,
                p.a,
                p.b,
                p.c(),
                p.d,
                self.pref,
                results.len() as i32,
                results.as_mut_ptr(),
                &mut found,
            )
        };
        let algos: Vec<_> = results[..found.clamp(0, results.len() as i32) as usize]
            .iter()
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .filter(|r| r.workspaceSize <= self.workspace_bytes)
            .map(|r| r.algo)
            .collect();
        if s != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS || algos.is_empty() {
            return Err(self.no_gemm(kind, rows, &format!("heuristic: {s:?}, {found} found")));
        }
        Ok(algos)
    }

    fn algo_ok(
        &self,
        (kind, form): (GemmKind, SiteForm),
        p: &Prepared,
        algo: &sys::cublasLtMatmulAlgo_t,
    ) -> bool {
        let Some(desc) = self.any_desc(kind, form) else {
            return false;
        };
        // SAFETY: zeroed POD out-parameter; live descriptor and layouts.
        let mut res: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        let s = unsafe {
            sys::cublasLtMatmulAlgoCheck(self.handle, desc, p.a, p.b, p.c(), p.d, algo, &mut res)
        };
        s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && res.workspaceSize <= self.workspace_bytes
    }

    /// Up to `count` heuristic candidates for `kind` in `form` at `tokens`
    /// (padded), best first.
    pub fn heuristics(
        &self,
        (kind, form): (GemmKind, SiteForm),
        tokens: usize,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let rows = gemm_rows(tokens);
        let mut p = Self::empty();
        let out = self
            .layouts(kind, form, rows, &mut p)
            .and_then(|_| self.query((kind, form), rows, &p, count));
        destroy_layouts(&p);
        out
    }

    /// Layouts and the algorithm for `kind` at `rows`, made once: the plan's
    /// for the smallest timed count >= rows (else the largest) where
    /// cuBLASLt accepts it, else the heuristic's first.
    fn prepare(&mut self, kind: GemmKind, form: SiteForm, rows: usize) -> Result<()> {
        if self.cache.contains_key(&(kind, form, rows)) {
            return Ok(());
        }
        let mut p = Self::empty();
        let made = (|| -> Result<()> {
            self.layouts(kind, form, rows, &mut p)?;
            let from_plan = self.plan_algos.get(&kind).and_then(|v| {
                v.iter()
                    .find(|(t, _)| *t >= rows)
                    .or(v.last())
                    .map(|(_, a)| *a)
            });
            p.algo = match from_plan.filter(|a| self.algo_ok((kind, form), &p, a)) {
                Some(a) => a,
                None => self.query((kind, form), rows, &p, 1)?[0],
            };
            Ok(())
        })();
        if let Err(e) = made {
            destroy_layouts(&p);
            return Err(e);
        }
        self.cache.insert((kind, form, rows), p);
        Ok(())
    }

    /// Runs one GEMM of layer `layer` on `stream`. acc32: `out = xq wq^T`
    /// (32-bit accumulators; `residual` must be None). fp16 output: `out =
    /// scales * (xq wq^T) + bias (+ residual)`, fp16. `algo` overrides the
    /// prepared algorithm (build-time timing).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &mut self,
        layer: usize,
        kind: GemmKind,
        tokens: usize,
        weight: u64,
        xq: u64,
        residual: Option<u64>,
        out: u64,
        stream: sys::cudaStream_t,
        algo: Option<sys::cublasLtMatmulAlgo_t>,
    ) -> Result<()> {
        let rows = gemm_rows(tokens);
        if residual.is_some() && !self.output.is_fp16() {
            return Err(Error::Backend(
                "acc32 8-bit GEMMs take no residual (the epilogue adds it)".into(),
            ));
        }
        let desc = self
            .desc_for(layer, kind)
            .ok_or_else(|| self.no_gemm(kind, rows, "this GEMM is not quantized"))?;
        let form = self.form(layer, kind);
        self.prepare(kind, form, rows)?;
        let p = &self.cache[&(kind, form, rows)];
        let algo = algo.unwrap_or(p.algo);
        let beta_f = if residual.is_some() { 1f32 } else { 0f32 };
        let (one_i, zero_i, one_f) = (1i32, 0i32, 1f32);
        let (alpha, beta): (*const c_void, *const c_void) = match self.format {
            QuantFormat::Int8 => (
                &one_i as *const i32 as *const c_void,
                &zero_i as *const i32 as *const c_void,
            ),
            QuantFormat::Fp8 => (
                &one_f as *const f32 as *const c_void,
                &beta_f as *const f32 as *const c_void,
            ),
        };
        // With fp8 D, C (fp16, unread at beta 0) must not alias D: cuBLASLt refuses C == D
        // with different layouts (H200 run 25: CUBLAS_STATUS_INVALID_VALUE).
        let c = residual.unwrap_or(if form.fp8_out { xq } else { out });
        // SAFETY: device pointers sized by the engine for the padded token
        // budget (checked at load); descriptor and layouts live as long as
        // self; alpha and beta outlive the call.
        let status = unsafe {
            sys::cublasLtMatmul(
                self.handle,
                desc,
                alpha,
                weight as *const c_void,
                p.a,
                xq as *const c_void,
                p.b,
                beta,
                c as *const c_void,
                p.c(),
                out as *mut c_void,
                p.d,
                &algo,
                self.workspace as *mut c_void,
                self.workspace_bytes,
                stream,
            )
        };
        if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Ok(());
        }
        // The message is formatted only on failure: this runs for every GEMM launch.
        check(
            &format!("{} matmul ({})", self.format.name(), kind.name()),
            status,
        )
    }
}

/// Sets one descriptor attribute from a live value of its type.
fn set_attr<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    value: &T,
) -> Result<()> {
    // SAFETY: `value` is a live T of the size passed.
    check(&format!("descriptor attribute {attr:?}"), unsafe {
        sys::cublasLtMatmulDescSetAttribute(
            desc,
            attr,
            value as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    })
}

fn destroy_layouts(p: &Prepared) {
    // SAFETY: each layout was made by `layouts` (or is null) and is not used afterwards.
    unsafe {
        for l in [p.a, p.b, p.c, p.d] {
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
            for d in self.site_descs.iter().flatten() {
                if !d.is_null() {
                    sys::cublasLtMatmulDescDestroy(*d);
                }
            }
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
    use embedrt_core::quant::FallbackWeights;
    use embedrt_core::GemmSite;

    fn config(hidden: usize, inter: usize) -> ModelConfig {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-mpnet-cls/config.json");
        let mut c = ModelConfig::from_file(&path).expect("fixture config");
        c.hidden_size = hidden;
        c.intermediate_size = inter;
        c
    }

    /// A plan's quantization record with `output` and these fallbacks.
    fn quant(output: GemmOutput, fallback: &[&str], weights: FallbackWeights) -> QuantInfo {
        QuantInfo {
            format: QuantFormat::Int8,
            calibrator: "minmax".into(),
            calibration_sentences: 1,
            activations: Vec::new(),
            fallback: fallback.iter().map(|s| s.to_string()).collect(),
            accuracy: None,
            gemm_params: 0,
            gemm_weight_bytes: 0,
            gemm_output: output,
            gemm_algos: Vec::new(),
            weight_scales: Default::default(),
            gelu: Default::default(),
            attention_inputs: Default::default(),
            qkv_outputs: Vec::new(),
            fallback_weights: weights,
        }
    }

    #[test]
    fn quantized_buffers_follow_the_token_budget() {
        let c = config(768, 3072);
        let wide: Profile = "1x8:256x128:1024x512".parse().unwrap();
        let acc32 = quant(GemmOutput::Acc32, &[], FallbackWeights::EightBit);
        let layout = quant_workspace_layout(&c, &wide, &acc32);
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
        let l = quant_workspace_layout(&m, &wide, &acc32);
        assert_eq!(l[1].1, t * 1536 * 4);
        let wider = config(1024, 1024);
        let l = quant_workspace_layout(&wider, &wide, &acc32);
        assert_eq!(l[1].1, t * 3072 * 4);
        // A budget that is no multiple of 16 gets room for the padded GEMM rows.
        let odd = wide.with_max_tokens(1000).unwrap();
        let l = quant_workspace_layout(&c, &odd, &acc32);
        assert_eq!(l[0].1, 1008 * 3072);
        // fp16 output writes the fp16 buffers: no accumulators at all.
        for output in [GemmOutput::Fp16, GemmOutput::Fp16Fast] {
            let q = quant(output, &[], FallbackWeights::EightBit);
            let l = quant_workspace_layout(&c, &wide, &q);
            assert_eq!(l, vec![("quant_act", t * 3072)], "{output:?}");
        }
    }

    #[test]
    fn eight_bit_fallbacks_get_one_fp16_weight_to_widen_into() {
        let c = config(768, 3072);
        let wide: Profile = "1x8:256x128:1024x512".parse().unwrap();
        let fp16 = GemmOutput::Fp16;
        // The largest 8-bit fallback sets the size: FFN-in's 3072 x 768 in fp16.
        let q = quant(
            fp16,
            &["layers.0.attn_out", "layers.1.ffn_in"],
            FallbackWeights::EightBit,
        );
        let l = quant_workspace_layout(&c, &wide, &q);
        assert_eq!(l.last(), Some(&("quant_fallback_w", 2 * 3072 * 768)));
        let q = quant(fp16, &["layers.0.attn_out"], FallbackWeights::EightBit);
        let l = quant_workspace_layout(&c, &wide, &q);
        assert_eq!(l.last(), Some(&("quant_fallback_w", 2 * 768 * 768)));
        // fp16 fallback weights, or no fallback: nothing to widen.
        let q = quant(fp16, &["layers.1.ffn_in"], FallbackWeights::Float);
        assert_eq!(quant_workspace_layout(&c, &wide, &q).len(), 1);
        assert!(!q.weight_is_8bit(GemmSite::parse("layers.1.ffn_in").unwrap()));
        assert!(q.weight_is_8bit(GemmSite::parse("layers.1.qkv").unwrap()));
    }

    #[test]
    fn sizes_the_8_bit_gemms_cannot_run_are_refused() {
        assert!(check_dims(&config(384, 1536), QuantFormat::Int8).is_ok());
        let e = check_dims(&config(392, 1536), QuantFormat::Fp8).unwrap_err();
        assert!(e.to_string().contains("multiples of 16"), "{e}");
    }
}
