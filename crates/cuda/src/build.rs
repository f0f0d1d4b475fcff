//! Model -> plan: weights converted to the target precision and layout, the
//! profile, and GEMM algorithms chosen by timing on the GPU in hand.

use std::path::Path;

use embedrt_core::quant::GeluForm;
use embedrt_core::{
    CalibrationTable, Error, Result, SentenceModel, TextTokenizer, TransformerWeights,
};

use crate::engine::CudaEngine;
use crate::plan::{
    default_gelu, pack_weights, workspace_bytes, GpuTarget, Plan, PlanHeader, Precision, Profile,
    TensorEntry,
};
use crate::probe;
use crate::qgemm::quant_workspace_layout;
use crate::quant_plan::QuantInfo;
use crate::quant_plan::{check_format_supported, check_gemm_output, pack_quantized, GemmOutput};

#[derive(Clone, Debug)]
pub struct BuildOptions {
    pub ordinal: usize,
    pub precision: Precision,
    pub profile: Profile,
    /// Time cuBLASLt's candidates (embedrt build); off for in-memory plans,
    /// which then take cuBLASLt's first heuristic choice once per shape.
    pub tune: bool,
    /// How the engine that tunes (and is handed back) runs.
    pub engine: crate::engine::EngineOptions,
    /// The FFN's GELU; None: [`default_gelu`] of the precision.
    pub gelu: Option<GeluForm>,
}

/// A plan with no GEMM algorithms yet, for `gpu`. Needs no GPU.
pub fn assemble_plan(
    model: &SentenceModel,
    weights: &TransformerWeights,
    precision: Precision,
    profile: Profile,
    gpu: GpuTarget,
) -> Plan {
    let profile = profile.capped(model.max_seq_length);
    let (tensors, blob) = pack_weights(weights, precision);
    let workspace = workspace_bytes(&model.config, &profile, precision);
    plan_of(
        model, precision, profile, gpu, tensors, blob, workspace, None,
    )
}

/// A plan from packed weights: the header every plan shares (no GEMM
/// algorithms yet: tuning fills them in).
#[allow(clippy::too_many_arguments)]
fn plan_of(
    model: &SentenceModel,
    precision: Precision,
    profile: Profile,
    gpu: GpuTarget,
    tensors: Vec<TensorEntry>,
    blob: Vec<u8>,
    workspace_bytes: usize,
    quant: Option<QuantInfo>,
) -> Plan {
    let header = PlanHeader {
        embedrt_version: env!("CARGO_PKG_VERSION").into(),
        precision,
        config: model.config.clone(),
        pooling: model.pooling,
        normalize: model.normalize,
        max_seq_length: model.max_seq_length,
        profile,
        gpu,
        cublaslt_version: 0,
        gemm_algos: Vec::new(),
        tensors,
        tokenizer_bytes: model.tokenizer_json.len(),
        weight_bytes: blob.len(),
        workspace_bytes,
        gelu: default_gelu(precision),
        quant,
    };
    Plan {
        header,
        tokenizer_json: model.tokenizer_json.clone(),
        weights: blob,
    }
}

/// A quantized plan with no GEMM algorithms yet, for `gpu`: the table's
/// activation scales, 8-bit weights for every GEMM not in `fallback` (which
/// overrides the table's list), fp16 for everything else, its 8-bit GEMMs
/// writing `gemm_output` (which sizes the workspace). Needs no GPU.
pub fn assemble_quantized_plan(
    model: &SentenceModel,
    weights: &TransformerWeights,
    table: &CalibrationTable,
    fallback: &[String],
    profile: Profile,
    gpu: GpuTarget,
    gemm_output: GemmOutput,
) -> Result<Plan> {
    check_format_supported(table.precision, &gpu.name, (gpu.cc_major, gpu.cc_minor))?;
    check_gemm_output(
        gemm_output,
        table.precision,
        &gpu.name,
        (gpu.cc_major, gpu.cc_minor),
    )?;
    let profile = profile.capped(model.max_seq_length);
    let (tensors, blob, mut info) = pack_quantized(weights, table, fallback)?;
    info.gemm_output = gemm_output;
    let precision = Precision::Fp16;
    let workspace = workspace_bytes(&model.config, &profile, precision)
        + quant_workspace_layout(&model.config, &profile, &info)
            .iter()
            .map(|(_, b)| b)
            .sum::<usize>();
    let mut plan = plan_of(
        model,
        precision,
        profile,
        gpu,
        tensors,
        blob,
        workspace,
        Some(info),
    );
    plan.header.gelu = table.gelu;
    Ok(plan)
}

/// The GPU in hand: name and compute capability.
pub fn gpu_target(ordinal: usize) -> Result<GpuTarget> {
    probe::check_device(ordinal)?;
    let ctx = cudarc::driver::CudaContext::new(ordinal)
        .map_err(|e| Error::Backend(format!("CUDA context on cuda:{ordinal}: {e}")))?;
    let name = ctx
        .name()
        .map_err(|e| Error::Backend(format!("CUDA device name: {e}")))?;
    let (cc_major, cc_minor) = ctx
        .compute_capability()
        .map_err(|e| Error::Backend(format!("CUDA compute capability: {e}")))?;
    Ok(GpuTarget {
        name,
        cc_major,
        cc_minor,
    })
}

/// Everything about the GPU in hand that a plan built on it depends on:
/// the target (name, compute capability) and the driver and cuBLASLt
/// versions, whose GEMM algorithms a tuned plan records. A plan cache keys
/// on it, so a driver or library upgrade rebuilds instead of reusing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    pub target: GpuTarget,
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    /// `cublasLtGetVersion`, as the plan header records it.
    pub cublaslt_version: usize,
}

/// The identity of GPU `ordinal` (probes it first).
pub fn gpu_identity(ordinal: usize) -> Result<GpuIdentity> {
    let target = gpu_target(ordinal)?;
    let mut driver_version = 0;
    // SAFETY: the driver was loaded and initialized by gpu_target; the
    // pointer is to a live local.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
        .result()
        .map_err(|e| Error::Backend(format!("CUDA driver version: {e}")))?;
    // SAFETY: a plain version query; the library was checked by gpu_target.
    let cublaslt_version = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
    Ok(GpuIdentity {
        target,
        driver_version,
        cublaslt_version,
    })
}

/// Builds a quantized plan for GPU `ordinal` from already loaded weights
/// (the builder evaluates several fallback sets on the same weights). Its
/// 8-bit GEMMs take cuBLASLt's heuristic choice per token count; no fp16
/// tuning runs (it would run fp16 GEMMs over 1-byte weights).
pub fn build_quantized_plan(
    model: &SentenceModel,
    weights: &TransformerWeights,
    table: &CalibrationTable,
    fallback: &[String],
    profile: Profile,
    gpu: &GpuTarget,
    gemm_output: GemmOutput,
) -> Result<Plan> {
    let mut plan = assemble_quantized_plan(
        model,
        weights,
        table,
        fallback,
        profile,
        gpu.clone(),
        gemm_output,
    )?;
    // SAFETY: a plain version query; the library was checked by gpu_target.
    plan.header.cublaslt_version = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
    Ok(plan)
}

/// Builds a plan for GPU `opts.ordinal`. Returns the plan and, when tuned,
/// the engine it was tuned on (ready to use).
pub fn build_plan(
    model: &SentenceModel,
    opts: &BuildOptions,
    progress: &dyn Fn(&str),
) -> Result<(Plan, Option<CudaEngine>)> {
    probe::check_device(opts.ordinal)?;
    let ctx = cudarc::driver::CudaContext::new(opts.ordinal)
        .map_err(|e| Error::Backend(format!("CUDA context on cuda:{}: {e}", opts.ordinal)))?;
    let name = ctx
        .name()
        .map_err(|e| Error::Backend(format!("CUDA device name: {e}")))?;
    let (cc_major, cc_minor) = ctx
        .compute_capability()
        .map_err(|e| Error::Backend(format!("CUDA compute capability: {e}")))?;
    drop(ctx);
    progress("loading weights");
    let weights = model.load_weights()?;
    progress("converting weights");
    let mut plan = assemble_plan(
        model,
        &weights,
        opts.precision,
        opts.profile,
        GpuTarget {
            name,
            cc_major,
            cc_minor,
        },
    );
    drop(weights);
    if let Some(g) = opts.gelu {
        plan.header.gelu = g;
    }
    // SAFETY: a plain version query; the library was checked above.
    plan.header.cublaslt_version = unsafe { cudarc::cublaslt::sys::cublasLtGetVersion() };
    if !opts.tune {
        return Ok((plan, None));
    }
    progress("loading onto the GPU, compiling kernels");
    let engine = CudaEngine::load(&plan, opts.ordinal, &opts.engine)?;
    progress("timing GEMM algorithms");
    plan.header.gemm_algos = engine.tune_gemms(plan.header.profile.opt.tokens())?;
    Ok((plan, Some(engine)))
}

/// The model description a plan carries (config, tokenizer, pooling,
/// normalization), so `--plan` needs no model directory.
pub fn model_from_plan(plan: &Plan, path: &Path) -> Result<SentenceModel> {
    let h = &plan.header;
    let tokenizer = TextTokenizer::from_json(&plan.tokenizer_json, h.max_seq_length)
        .map_err(|e| Error::Model(format!("plan {}: {e}", path.display())))?;
    Ok(SentenceModel {
        source: path.display().to_string(),
        dir: path.to_path_buf(),
        config: h.config.clone(),
        pooling: h.pooling,
        normalize: h.normalize,
        max_seq_length: h.max_seq_length,
        tokenizer_json: plan.tokenizer_json.clone(),
        tokenizer,
    })
}
