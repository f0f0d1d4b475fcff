//! The encoder's four GEMMs through cuBLASLt: `Y[T, N] = X[T, K] W[N, K]^T
//! + bias (+ residual)`, row-major. In cuBLASLt's column-major terms that is
//! `Y^T (N x T) = op_T(W) (N x K) * X^T (K x T)`: A = W transposed, B = X.
//!
//! Matmul descriptors are made once per (layer, GEMM) at load (they carry the
//! bias pointer); matrix layouts and the algorithm are made once per token
//! count and cached. The algorithm comes from the plan (chosen at build time
//! for a ladder of token counts) and is checked with `cublasLtMatmulAlgoCheck`;
//! only a token count whose plan algorithm does not apply costs one heuristic
//! query, once.

use std::collections::HashMap;
use std::ffi::c_void;

use cudarc::cublaslt::sys;
use embedrt_core::{Error, Result};

use crate::plan::{GemmChoice, Precision};

/// The four GEMMs of a layer: the one definition in embedrt-core, shared
/// with calibration tables and the ONNX export.
pub use embedrt_core::GemmKind;

pub(crate) fn check(what: &str, s: sys::cublasStatus_t) -> Result<()> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::Backend(format!("cuBLASLt {what} failed: {s:?}")))
    }
}

pub fn algo_to_hex(a: &sys::cublasLtMatmulAlgo_t) -> String {
    let mut bytes = Vec::with_capacity(64);
    for w in a.data {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    hex::encode(bytes)
}

pub fn algo_from_hex(s: &str) -> Option<sys::cublasLtMatmulAlgo_t> {
    let bytes = hex::decode(s).ok()?;
    if bytes.len() != 64 {
        return None;
    }
    let mut data = [0u64; 8];
    for (w, c) in data.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(c);
        *w = u64::from_le_bytes(b);
    }
    Some(sys::cublasLtMatmulAlgo_t { data })
}

struct Layouts {
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
}

struct Prepared {
    layouts: Layouts,
    algo: sys::cublasLtMatmulAlgo_t,
}

pub struct Gemms {
    handle: sys::cublasLtHandle_t,
    dtype: sys::cudaDataType,
    hidden: usize,
    inter: usize,
    /// [layer][kind] descriptors, bias pointer set.
    descs: Vec<[sys::cublasLtMatmulDesc_t; 4]>,
    pref: sys::cublasLtMatmulPreference_t,
    workspace: u64,
    workspace_bytes: usize,
    plan_algos: HashMap<GemmKind, Vec<(usize, sys::cublasLtMatmulAlgo_t)>>,
    cache: HashMap<(GemmKind, usize), Prepared>,
}

// SAFETY: the handles are only used under the engine's mutex.
unsafe impl Send for Gemms {}

impl Gemms {
    /// `biases[layer][kind]` are device pointers of each GEMM's bias.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        precision: Precision,
        hidden: usize,
        inter: usize,
        biases: &[[u64; 4]],
        workspace: u64,
        workspace_bytes: usize,
        choices: &[GemmChoice],
        tanh_gelu: bool,
    ) -> Result<Self> {
        let mut handle: sys::cublasLtHandle_t = std::ptr::null_mut();
        // SAFETY: out-parameter.
        check("create", unsafe { sys::cublasLtCreate(&mut handle) })?;
        let dtype = match precision {
            Precision::Fp32 => sys::cudaDataType::CUDA_R_32F,
            Precision::Fp16 => sys::cudaDataType::CUDA_R_16F,
        };
        let mut me = Gemms {
            handle,
            dtype,
            hidden,
            inter,
            descs: Vec::new(),
            pref: std::ptr::null_mut(),
            workspace,
            workspace_bytes,
            plan_algos: HashMap::new(),
            cache: HashMap::new(),
        };
        // SAFETY: out-parameter; attributes point at live locals of the right size.
        unsafe {
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
            // Weights are packed on 16-byte boundaries.
            let align: u32 = 16;
            for attr in [
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                check(
                    "preference",
                    sys::cublasLtMatmulPreferenceSetAttribute(
                        me.pref,
                        attr,
                        &align as *const u32 as *const c_void,
                        4,
                    ),
                )?;
            }
        }
        for layer in biases {
            let mut row = [std::ptr::null_mut(); 4];
            for ((slot, &bias), kind) in row.iter_mut().zip(layer).zip(GemmKind::ALL) {
                let gelu = tanh_gelu && kind == GemmKind::FfnIn;
                *slot = me.make_desc(bias, gelu)?;
            }
            me.descs.push(row);
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

    fn make_desc(&self, bias: u64, gelu: bool) -> Result<sys::cublasLtMatmulDesc_t> {
        let mut desc: sys::cublasLtMatmulDesc_t = std::ptr::null_mut();
        // SAFETY: out-parameter; attribute values are live locals.
        unsafe {
            check(
                "descriptor",
                sys::cublasLtMatmulDescCreate(
                    &mut desc,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cudaDataType::CUDA_R_32F,
                ),
            )?;
            let set = |attr, ptr: *const c_void, size: usize| {
                check(
                    "descriptor attribute",
                    sys::cublasLtMatmulDescSetAttribute(desc, attr, ptr, size),
                )
            };
            let ta: i32 = 1; // CUBLAS_OP_T
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                &ta as *const _ as *const c_void,
                std::mem::size_of_val(&ta),
            )?;
            // The tanh-approximated GELU (an opt-in: the models use exact erf).
            let epi = if gelu {
                sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS
            } else {
                sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
            };
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epi as *const _ as *const c_void,
                std::mem::size_of_val(&epi),
            )?;
            set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias as *const u64 as *const c_void,
                8,
            )?;
        }
        Ok(desc)
    }

    fn layouts(&self, kind: GemmKind, tokens: usize) -> Result<Layouts> {
        let (n, k) = kind.dims(self.hidden, self.inter);
        let mk = |rows: usize, cols: usize, ld: usize| -> Result<sys::cublasLtMatrixLayout_t> {
            let mut l: sys::cublasLtMatrixLayout_t = std::ptr::null_mut();
            // SAFETY: out-parameter.
            check("layout", unsafe {
                sys::cublasLtMatrixLayoutCreate(
                    &mut l,
                    self.dtype,
                    rows as u64,
                    cols as u64,
                    ld as i64,
                )
            })?;
            Ok(l)
        };
        Ok(Layouts {
            a: mk(k, n, k)?,
            b: mk(k, tokens, k)?,
            d: mk(n, tokens, n)?,
        })
    }

    /// Up to `count` heuristic candidates for `kind` at `tokens`, best first.
    pub fn heuristics(
        &self,
        kind: GemmKind,
        tokens: usize,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let l = self.layouts(kind, tokens)?;
        let out = self.heuristics_for(kind, &l, tokens, count);
        self.drop_layouts(&l);
        out
    }

    fn heuristics_for(
        &self,
        kind: GemmKind,
        l: &Layouts,
        tokens: usize,
        count: usize,
    ) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
        let desc = self
            .descs
            .first()
            .map(|d| d[kind as usize])
            .ok_or_else(|| Error::Backend("the model has no layers".into()))?;
        // SAFETY: zeroed POD structs filled by cuBLASLt.
        let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; count.max(1)];
        let mut found = 0i32;
        check("heuristic", unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc,
                l.a,
                l.b,
                l.d,
                l.d,
                self.pref,
                results.len() as i32,
                results.as_mut_ptr(),
                &mut found,
            )
        })?;
        let algos: Vec<_> = results[..found.max(0) as usize]
            .iter()
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .filter(|r| r.workspaceSize <= self.workspace_bytes)
            .map(|r| r.algo)
            .collect();
        if algos.is_empty() {
            return Err(Error::Backend(format!(
                "cuBLASLt has no algorithm for the {} GEMM at {} tokens",
                kind.name(),
                tokens
            )));
        }
        Ok(algos)
    }

    fn drop_layouts(&self, l: &Layouts) {
        // SAFETY: layouts made by `layouts` and not used afterwards.
        unsafe {
            sys::cublasLtMatrixLayoutDestroy(l.a);
            sys::cublasLtMatrixLayoutDestroy(l.b);
            sys::cublasLtMatrixLayoutDestroy(l.d);
        }
    }

    fn algo_ok(&self, kind: GemmKind, l: &Layouts, algo: &sys::cublasLtMatmulAlgo_t) -> bool {
        let desc = match self.descs.first() {
            Some(d) => d[kind as usize],
            None => return false,
        };
        // SAFETY: zeroed POD out-parameter.
        let mut res: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
        let s = unsafe {
            sys::cublasLtMatmulAlgoCheck(self.handle, desc, l.a, l.b, l.d, l.d, algo, &mut res)
        };
        s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && res.workspaceSize <= self.workspace_bytes
    }

    /// Layouts and algorithm for `kind` at `tokens`, made once.
    fn prepare(&mut self, kind: GemmKind, tokens: usize) -> Result<()> {
        if self.cache.contains_key(&(kind, tokens)) {
            return Ok(());
        }
        let layouts = self.layouts(kind, tokens)?;
        // The plan's algorithm for the smallest ladder step >= tokens, else the largest.
        let from_plan = self.plan_algos.get(&kind).and_then(|v| {
            v.iter()
                .find(|(t, _)| *t >= tokens)
                .or(v.last())
                .map(|(_, a)| *a)
        });
        let algo = match from_plan.filter(|a| self.algo_ok(kind, &layouts, a)) {
            Some(a) => a,
            None => match self.heuristics_for(kind, &layouts, tokens, 1) {
                Ok(v) => v[0],
                Err(e) => {
                    self.drop_layouts(&layouts);
                    return Err(e);
                }
            },
        };
        self.cache
            .insert((kind, tokens), Prepared { layouts, algo });
        Ok(())
    }

    /// Runs one GEMM on `stream`: D = X W^T + bias (+ residual).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &mut self,
        layer: usize,
        kind: GemmKind,
        tokens: usize,
        weight: u64,
        x: u64,
        residual: Option<u64>,
        out: u64,
        stream: sys::cudaStream_t,
    ) -> Result<()> {
        self.run_with(layer, kind, tokens, weight, x, residual, out, stream, None)
    }

    /// As [`run`], optionally with a given algorithm (build-time timing).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run_with(
        &mut self,
        layer: usize,
        kind: GemmKind,
        tokens: usize,
        weight: u64,
        x: u64,
        residual: Option<u64>,
        out: u64,
        stream: sys::cudaStream_t,
        algo: Option<sys::cublasLtMatmulAlgo_t>,
    ) -> Result<()> {
        self.prepare(kind, tokens)?;
        let p = &self.cache[&(kind, tokens)];
        let algo = algo.unwrap_or(p.algo);
        let alpha = 1.0f32;
        let beta = if residual.is_some() { 1.0f32 } else { 0.0 };
        let c = residual.unwrap_or(out);
        // SAFETY: device pointers sized by the engine for `tokens` rows;
        // descriptors and layouts live as long as self.
        check("matmul", unsafe {
            sys::cublasLtMatmul(
                self.handle,
                self.descs[layer][kind as usize],
                &alpha as *const f32 as *const c_void,
                weight as *const c_void,
                p.layouts.a,
                x as *const c_void,
                p.layouts.b,
                &beta as *const f32 as *const c_void,
                c as *const c_void,
                p.layouts.d,
                out as *mut c_void,
                p.layouts.d,
                &algo,
                self.workspace as *mut c_void,
                self.workspace_bytes,
                stream,
            )
        })
    }

    pub fn handle(&self) -> sys::cublasLtHandle_t {
        self.handle
    }
}

impl Drop for Gemms {
    fn drop(&mut self) {
        // SAFETY: every object was made by this struct and is destroyed once.
        unsafe {
            for p in self.cache.values() {
                sys::cublasLtMatrixLayoutDestroy(p.layouts.a);
                sys::cublasLtMatrixLayoutDestroy(p.layouts.b);
                sys::cublasLtMatrixLayoutDestroy(p.layouts.d);
            }
            for row in &self.descs {
                for d in row {
                    sys::cublasLtMatmulDescDestroy(*d);
                }
            }
            if !self.pref.is_null() {
                sys::cublasLtMatmulPreferenceDestroy(self.pref);
            }
            sys::cublasLtDestroy(self.handle);
        }
    }
}
