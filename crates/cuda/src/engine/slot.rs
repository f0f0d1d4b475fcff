//! Execution slots: each has its own stream, every activation buffer of the
//! MAX profile, pinned host staging, the compiled kernels, cuBLASLt handles
//! and CUDA graphs; the weights are uploaded by slot 0 and shared. A slot sits
//! behind its own `Mutex`; a batch takes a free one (`acquire`).

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use cudarc::driver::{result as cr, sys as cu, CudaContext};
use embedrt_core::quant::GemmSite;
use embedrt_core::{Architecture, Error, Result};

use super::attention::{
    pipe_batch_len, pipe_shared_bytes, wg_shared_bytes, PipeGrid, TcAttention, PIPE_MOST_WARPS,
};
use super::options::{Attention, EngineOptions, SmallLayerNorm, WgmmaAttention};
use super::{drv, quantized, CudaEngine};
use crate::ffn_sm90::FfnInGeluSm90;
use crate::gemm::{GemmKind, Gemms};
use crate::kernels::{self, Kernel};
use crate::plan::{layer_tensor, staged_u32s, Plan, Precision, GEMM_WORKSPACE_BYTES};
use embedrt_core::quant::GeluForm;

/// Device addresses of one layer's weights (inside the shared blob).
pub(super) struct LayerPtrs {
    pub(super) qkv_w: u64,
    pub(super) attn_out_w: u64,
    pub(super) attn_norm: (u64, u64),
    pub(super) ffn_in_w: u64,
    pub(super) ffn_out_w: u64,
    pub(super) ffn_norm: (u64, u64),
    /// qkv, attn_out, ffn_in, ffn_out biases (the small-token path adds them itself).
    pub(super) biases: [u64; 4],
    /// Quantized plans: the fp32 scales (one a channel) of each 8-bit weight, in
    /// the same order (0: that weight is fp16, an fp16 fallback or a float plan).
    pub(super) w_scales: [u64; 4],
}

/// The float encoder's kernels, looked up once per slot.
pub(super) struct Functions {
    pub(super) embed: cu::CUfunction,
    pub(super) layernorm: cu::CUfunction,
    pub(super) gelu: cu::CUfunction,
    pub(super) attention: cu::CUfunction,
    /// Tensor-core attention (fp16, sm_80+, head size a multiple of 16):
    /// the kernel the options chose and its block shape.
    pub(super) attention_tc: Option<TcAttention>,
    pub(super) pool: cu::CUfunction,
    /// Small-token linear layers with fused epilogues, for 16, 32, 48, 64
    /// tokens (fp16, sm_80+); empty where they do not apply.
    pub(super) small_linear: Vec<SmallLinear>,
    /// The same over 8-bit weights (quantized plans, sm_80+); else empty.
    pub(super) small_linear_q: Vec<SmallLinear>,
    /// Attention + attn-out in one kernel for batches of at most 16 tokens
    /// (fp16 weights, then 8-bit ones), where the small-token kernels run,
    /// the head size is a multiple of 16 and the option allows it.
    /// Each with the dynamic shared memory its x rows take (set at load).
    pub(super) small_attn_out: Option<(cu::CUfunction, u32)>,
    pub(super) small_attn_out_q: Option<(cu::CUfunction, u32)>,
}

/// One statistics buffer of `small_layernorm=stats`: SL_STATS_ROWS (64, the
/// largest small-token bucket) rows of two floats (small_linear.cu).
pub(super) const LN_STATS_BYTES: usize = 64 * 2 * 4;

/// One small-token linear kernel (one token bucket).
#[derive(Clone, Copy)]
pub(super) struct SmallLinear {
    pub(super) f: cu::CUfunction,
    /// Where the LayerNorms move into the next kernel (`ln_in` in
    /// small_linear.cu): the dynamic shared memory that takes, set on the
    /// function at load. None: the ticket epilogue, because the option says so
    /// or the rows do not fit in this GPU's shared memory.
    pub(super) ln_in_shared: Option<u32>,
}

/// A slot's activation buffers (`plan::workspace_layout`, sized for MAX).
#[derive(Clone, Copy, Default)]
pub(super) struct Buffers {
    pub(super) hidden: u64,
    pub(super) qkv: u64,
    pub(super) context: u64,
    pub(super) scratch: u64,
    pub(super) inter: u64,
    pub(super) tokens: u64,
    pub(super) pooled: u64,
    pub(super) gemm_ws: u64,
    pub(super) bucket: u64,
    /// MPNet: `[heads, 2 max_seq - 1]` fp32, the relative position bias of
    /// every key - query times log2 e (what attention_tc_pipe copies).
    pub(super) bias_table: u64,
    /// attention_tc_pipe's work counter (two ints; outside the layout, as the
    /// LayerNorm ticket).
    pub(super) attention_counter: u64,
}

/// One execution slot.
pub(super) struct Gpu {
    pub(super) ctx: Arc<CudaContext>,
    pub(super) stream: cu::CUstream,
    pub(super) module: cu::CUmodule,
    pub(super) f: Functions,
    pub(super) allocations: Vec<u64>,
    pub(super) b: Buffers,
    pub(super) word: u64,
    pub(super) position: u64,
    pub(super) type0: u64,
    pub(super) emb_norm: (u64, u64),
    pub(super) layers: Vec<LayerPtrs>,
    pub(super) rel_bias: u64,
    /// Pinned staging: ids | positions | offsets | normalize flag in, pooled out.
    pub(super) pinned_in: *mut u32,
    pub(super) pinned_in_len: usize,
    pub(super) pinned_out: *mut f32,
    pub(super) pinned_out_len: usize,
    pub(super) gemms: Option<Gemms>,
    /// Captured encoder graphs by (padded tokens, padded sequences).
    pub(super) graphs: HashMap<(usize, usize), cu::CUgraphExec>,
    pub(super) use_graphs: bool,
    pub(super) use_tc_attention: bool,
    /// A float plan running GELU's tanh form (the plan's, or the `gelu`
    /// option's): cuBLASLt's FFN-in epilogue instead of the exact-erf pass,
    /// and the small-token kernels' tanh epilogue.
    pub(super) tanh_gelu: bool,
    /// The weight blob (owned by slot 0's allocations).
    pub(super) weights: u64,
    pub(super) kernels_from_cache: bool,
    /// One u32, zero between launches: the small-token LayerNorm's ticket.
    pub(super) ticket: u64,
    /// `small_layernorm=stats`: two buffers of [64 rows][sum, sum of
    /// squares] floats (`LN_STATS_BYTES`), zero between uses; else 0.
    pub(super) ln_stats: u64,
    /// Hopper, opt-in (`FfnGemm::Own*`): FFN-in with the exact GELU fused,
    /// through our wgmma GEMM instead of cuBLASLt + the GELU pass. Correct,
    /// but slower than cuBLASLt + GELU so far (docs/perf/gpu.md run 16).
    pub(super) ffn_sm90: Option<FfnInGeluSm90>,
    /// Batches of at most this many tokens (graph buckets) run their linear
    /// layers through the small-token kernels (0 = off).
    pub(super) small_max_tokens: usize,
    /// The fp16/fp32 encoder's kernels after the first launch early
    /// (programmatic dependent launch, sm_90+; engine/launch.rs).
    pub(super) early_launch: bool,
    /// Quantized plans: the 8-bit GEMMs and their kernels (engine/quantized.rs).
    pub(super) quant: Option<quantized::QuantState>,
    /// Recorded after a large batch's kernels (`large_batches=serial`: the
    /// next large batch, on any slot, waits for it).
    pub(super) done: cu::CUevent,
}

// SAFETY: the raw handles are used only while holding the engine's mutex,
// with the context bound to the calling thread first.
unsafe impl Send for Gpu {}

impl Gpu {
    /// A slot holding nothing yet, its switches set from `options`; Drop
    /// frees whatever the steps of `make_slot` made.
    /// `gelu`: the plan's.
    fn empty(
        ctx: &Arc<CudaContext>,
        options: &EngineOptions,
        quantized: bool,
        gelu: GeluForm,
    ) -> Gpu {
        Gpu {
            ctx: ctx.clone(),
            stream: std::ptr::null_mut(),
            module: std::ptr::null_mut(),
            f: Functions {
                embed: std::ptr::null_mut(),
                layernorm: std::ptr::null_mut(),
                gelu: std::ptr::null_mut(),
                attention: std::ptr::null_mut(),
                attention_tc: None,
                pool: std::ptr::null_mut(),
                small_linear: Vec::new(),
                small_linear_q: Vec::new(),
                small_attn_out: None,
                small_attn_out_q: None,
            },
            allocations: Vec::new(),
            b: Buffers::default(),
            word: 0,
            position: 0,
            type0: 0,
            emb_norm: (0, 0),
            layers: Vec::new(),
            rel_bias: 0,
            pinned_in: std::ptr::null_mut(),
            pinned_in_len: 0,
            pinned_out: std::ptr::null_mut(),
            pinned_out_len: 0,
            gemms: None,
            graphs: HashMap::new(),
            use_graphs: options.graphs,
            use_tc_attention: options.attention != Attention::Scalar,
            // Quantized plans run their own encoder loop: no fp16-only variants in it.
            tanh_gelu: options.gelu.resolve(gelu) == GeluForm::Tanh && !quantized,
            weights: 0,
            kernels_from_cache: false,
            ticket: 0,
            ln_stats: 0,
            ffn_sm90: None,
            small_max_tokens: if quantized && !options.small_linear_8bit {
                0
            } else {
                options.small_linear_max_tokens
            },
            early_launch: false,
            quant: None,
            done: std::ptr::null_mut(),
        }
    }

    fn alloc(&mut self, what: &str, bytes: usize) -> Result<u64> {
        // SAFETY: plain device allocation, freed in Gpu::drop.
        let p = unsafe { cr::malloc_sync(bytes.max(256)) }.map_err(|e| {
            let free = cr::mem_get_info().map(|(f, _)| f).unwrap_or(0);
            Error::fault(
                crate::fault::kind_of(e.0),
                format!(
                    "out of GPU memory allocating {what} ({bytes} bytes needed, {free} free): {e}"
                ),
            )
        })?;
        self.allocations.push(p);
        Ok(p)
    }
}

/// One execution slot: stream, activation buffers, pinned staging, kernels
/// and GEMM handles; the weights are uploaded by the first slot and shared
/// by the others.
pub(super) fn make_slot(
    plan: &Plan,
    ctx: &Arc<CudaContext>,
    cc: (i32, i32),
    layout: &[(&'static str, usize)],
    shared_weights: Option<u64>,
    options: &EngineOptions,
) -> Result<Gpu> {
    let h = &plan.header;
    let config = &h.config;
    let max = h.profile.max;
    let quantized = h.quant.is_some();
    let mut gpu = Gpu::empty(ctx, options, quantized, plan.header.gelu);
    // Quantized plans' own loop (engine/quantized.rs) launches its kernels plainly;
    // their small-token batches run the float loop, and early.
    gpu.early_launch = options.early_launch && cc.0 >= 9;
    // From here on, Gpu's Drop frees whatever was made if a step fails.
    gpu.stream = cr::stream::create(cr::stream::StreamKind::NonBlocking).map_err(drv("stream"))?;
    gpu.done =
        cr::event::create(cu::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(drv("event"))?;
    let weights = match shared_weights {
        Some(w) => w,
        None => {
            let w = gpu.alloc("weights", h.weight_bytes)?;
            // SAFETY: w has weight_bytes bytes; the plan's blob is that long.
            unsafe { cr::memcpy_htod_sync(w, &plan.weights) }.map_err(drv("weight upload"))?;
            w
        }
    };
    gpu.ticket = gpu.alloc("LayerNorm ticket", 4)?;
    // SAFETY: a 256-byte allocation (alloc rounds up).
    unsafe { cr::memset_d8_sync(gpu.ticket, 0, 4) }.map_err(drv("memset"))?;
    if options.small_layernorm == SmallLayerNorm::Statistics {
        gpu.ln_stats = gpu.alloc("LayerNorm statistics", 2 * LN_STATS_BYTES)?;
        // SAFETY: an allocation of that many bytes.
        unsafe { cr::memset_d8_sync(gpu.ln_stats, 0, 2 * LN_STATS_BYTES) }
            .map_err(drv("memset"))?;
    }
    let mut bufs = Vec::new();
    for (what, bytes) in layout {
        bufs.push((*what, gpu.alloc(what, *bytes)?));
    }
    let get = |n: &str| {
        bufs.iter()
            .find(|(w, _)| *w == n)
            .map(|(_, p)| *p)
            .unwrap_or(0)
    };
    gpu.b = Buffers {
        hidden: get("hidden"),
        qkv: get("qkv"),
        context: get("context"),
        scratch: get("scratch"),
        inter: get("intermediate"),
        tokens: get("tokens"),
        pooled: get("pooled"),
        gemm_ws: get("gemm_workspace"),
        bucket: get("bucket_table"),
        bias_table: get("bias_table"),
        attention_counter: 0,
    };
    // attention_tc_pipe's work counter: zero at rest (each launch's last block resets it).
    gpu.b.attention_counter = gpu.alloc("attention work counter", 8)?;
    // SAFETY: an allocation of at least 8 bytes.
    unsafe { cr::memset_d8_sync(gpu.b.attention_counter, 0, 8) }.map_err(drv("memset"))?;
    if config.architecture == Architecture::Mpnet {
        let table: Vec<i32> = config
            .relative_bucket_table(max.seq)
            .into_iter()
            .map(|b| b as i32)
            .collect();
        // SAFETY: the buffer holds 2*max.seq-1 ints.
        unsafe { cr::memcpy_htod_sync(gpu.b.bucket, &table) }.map_err(drv("upload"))?;
        let bias = relative_bias_table(plan, &table)?;
        // SAFETY: the buffer holds heads * (2*max.seq-1) floats.
        unsafe { cr::memcpy_htod_sync(gpu.b.bias_table, &bias) }.map_err(drv("upload"))?;
    }
    let biases = weight_pointers(&mut gpu, plan, weights)?;
    // Pinned host staging.
    gpu.pinned_in_len = staged_u32s(h.profile.token_budget(), max.batch);
    gpu.pinned_out_len = max.batch * config.hidden_size;
    // SAFETY: page-locked host allocations, freed in Gpu::drop.
    unsafe {
        gpu.pinned_in = cr::malloc_host(gpu.pinned_in_len * 4, 0)
            .map_err(drv("pinned host memory"))? as *mut u32;
        gpu.pinned_out = cr::malloc_host(gpu.pinned_out_len * 4, 0)
            .map_err(drv("pinned host memory"))? as *mut f32;
    }
    let shared_optin = ctx
        .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(drv("device attribute"))?;
    load_kernels(&mut gpu, plan, cc, shared_optin as usize, options)?;
    let ffn_in: Vec<u64> = gpu.layers.iter().map(|l| l.ffn_in_w).collect();
    let fp16 = h.precision == Precision::Fp16;
    let (hid, inter) = (config.hidden_size, config.intermediate_size);
    // Quantized plans never take the own GEMM, so the option is moot there.
    if !quantized && options.ffn_gemm.own_cluster().is_some() && gpu.tanh_gelu {
        return Err(Error::Input(
            "ffn_gemm=own computes the exact GELU, and this plan runs GELU's tanh form; \
             add the engine option gelu=exact (EMBEDRT_GELU=exact) or build with --gelu exact"
                .into(),
        ));
    }
    // (A tanh-GELU float plan was refused above.)
    let own = options
        .ffn_gemm
        .own_cluster()
        .filter(|&(_, cn)| !quantized && FfnInGeluSm90::applies(cc, fp16, hid, inter, cn));
    if let Some(cluster) = own {
        let kernel = match cluster {
            (2, 1) => Kernel::FfnInGeluSm90C2,
            (2, 2) => Kernel::FfnInGeluSm90C4,
            _ => Kernel::FfnInGeluSm90,
        };
        // SAFETY: the module was loaded by load_kernels.
        let f = unsafe { kernels::function(gpu.module, kernel) }?;
        let sms = ctx
            .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("device attribute"))?;
        gpu.ffn_sm90 = Some(FfnInGeluSm90::new(
            f,
            cluster,
            sms as usize,
            gpu.b.hidden,
            h.profile.token_budget(),
            (hid, inter),
            &ffn_in,
        )?);
    }
    gpu.gemms = Some(Gemms::new(
        h.precision,
        config.hidden_size,
        config.intermediate_size,
        &biases,
        gpu.b.gemm_ws,
        GEMM_WORKSPACE_BYTES,
        &h.gemm_algos,
        gpu.tanh_gelu,
    )?);
    let quant_buffers = quantized::QuantBuffers {
        act: get("quant_act"),
        acc: get("quant_acc"),
        gemm_ws: gpu.b.gemm_ws,
        fallback_w: get("quant_fallback_w"),
    };
    let tc_attention = gpu.f.attention_tc.is_some() && gpu.use_tc_attention;
    gpu.quant = quantized::QuantState::new(plan, gpu.module, weights, quant_buffers, tc_attention)?;
    gpu.weights = weights;
    Ok(gpu)
}

/// Device addresses of every weight inside the blob at `weights`; returns
/// each layer's four GEMM biases (for the cuBLASLt epilogues).
fn weight_pointers(gpu: &mut Gpu, plan: &Plan, weights: u64) -> Result<Vec<[u64; 4]>> {
    let config = &plan.header.config;
    let t = |n: &str| -> Result<u64> { Ok(weights + plan.tensor(n)?.offset as u64) };
    gpu.word = t("embeddings.word")?;
    gpu.position = t("embeddings.position")?;
    gpu.type0 = match config.architecture {
        Architecture::Bert => t("embeddings.token_type0")?,
        Architecture::Mpnet => 0,
    };
    gpu.emb_norm = (t("embeddings.norm.gamma")?, t("embeddings.norm.beta")?);
    gpu.rel_bias = match config.architecture {
        Architecture::Mpnet => t("relative_attention_bias")?,
        Architecture::Bert => 0,
    };
    let mut biases = Vec::new();
    for i in 0..config.num_hidden_layers {
        let lt = |w: &str| t(&layer_tensor(i, w));
        let b = [
            lt("qkv.bias")?,
            lt("attn_out.bias")?,
            lt("ffn_in.bias")?,
            lt("ffn_out.bias")?,
        ];
        let mut w_scales = [0u64; 4];
        if let Some(q) = &plan.header.quant {
            for (scale, kind) in w_scales.iter_mut().zip(GemmKind::ALL) {
                if q.weight_is_8bit(GemmSite { layer: i, kind }) {
                    *scale = lt(&format!("{}.weight_scale", kind.name()))?;
                }
            }
        }
        gpu.layers.push(LayerPtrs {
            qkv_w: lt("qkv.weight")?,
            attn_out_w: lt("attn_out.weight")?,
            attn_norm: (lt("attn_norm.gamma")?, lt("attn_norm.beta")?),
            ffn_in_w: lt("ffn_in.weight")?,
            ffn_out_w: lt("ffn_out.weight")?,
            ffn_norm: (lt("ffn_norm.gamma")?, lt("ffn_norm.beta")?),
            biases: b,
            w_scales,
        });
        biases.push(b);
    }
    Ok(biases)
}

/// Compiles (or finds cached) the encoder program for this plan and GPU,
/// loads it and looks up the float encoder's kernels.
fn load_kernels(
    gpu: &mut Gpu,
    plan: &Plan,
    cc: (i32, i32),
    shared_optin: usize,
    options: &EngineOptions,
) -> Result<()> {
    let h = &plan.header;
    let config = &h.config;
    let max = h.profile.max;
    let mut defines = vec![
        format!("EMBEDRT_FP16={}", (h.precision == Precision::Fp16) as i32),
        format!("HIDDEN={}", config.hidden_size),
        format!("HEAD_DIM={}", config.head_dim()),
    ];
    if let Some(q) = &h.quant {
        let code = match q.format() {
            embedrt_core::quant::QuantFormat::Int8 => 1,
            embedrt_core::quant::QuantFormat::Fp8 => 2,
        };
        defines.push(format!("EMBEDRT_QUANT={code}"));
    }
    let cubin = kernels::compile_cached(
        kernels::ENCODER_SOURCE,
        &defines,
        cc,
        options.kernel_cache.as_deref(),
    )?;
    // SAFETY: a CUBIN NVRTC made for this GPU (checked by its trailer).
    gpu.module = unsafe { cr::module::load_data(cubin.image.as_ptr() as *const c_void) }
        .map_err(drv("kernel module load"))?;
    gpu.kernels_from_cache = cubin.from_cache;
    let module = gpu.module;
    // SAFETY: module loaded above, unloaded in Gpu::drop.
    let func = |k: Kernel| unsafe { kernels::function(module, k) };
    let tensor_cores = cc.0 >= 8 && h.precision == Precision::Fp16;
    // One bucket's kernel each (16, 32, 48, 64 tokens), with the shared memory
    // `ln_in` takes set on it where the option asks and it fits.
    let ln_in = options.small_layernorm == SmallLayerNorm::InNextKernel;
    let load_small = |list: [Kernel; 4]| -> Result<Vec<SmallLinear>> {
        let mut small = Vec::new();
        for (i, k) in list.into_iter().enumerate() {
            let f = func(k)?;
            let ln_in_shared = if ln_in {
                // SAFETY: a function of the module loaded above.
                unsafe { small_x_shared(f, 16 * (i + 1), config.hidden_size, shared_optin) }?
            } else {
                None
            };
            small.push(SmallLinear { f, ln_in_shared });
        }
        Ok(small)
    };
    gpu.f = Functions {
        embed: func(Kernel::EmbedLayernorm)?,
        layernorm: func(Kernel::Layernorm)?,
        gelu: func(Kernel::Gelu)?,
        attention: func(Kernel::Attention)?,
        // MPNet's bias table per block holds up to 1,024 key - query values.
        attention_tc: if tensor_cores
            && config.head_dim().is_multiple_of(16)
            && (config.architecture != Architecture::Mpnet || max.seq <= 768)
        {
            let (kernel, most_warps, row_tiles) = match options.attention {
                Attention::TensorCores2 => (Kernel::AttentionTc2, 8, 1),
                Attention::TensorCores4 => (Kernel::AttentionTc4, 4, 1),
                Attention::TensorCoresMt2 => (Kernel::AttentionTcMt2, 4, 2),
                Attention::TensorCores
                | Attention::TensorCoresStatic
                | Attention::Scalar
                | Attention::TensorCoresPipe
                | Attention::Wgmma(_) => (Kernel::AttentionTc, 8, 1),
            };
            match func(kernel) {
                Ok(f) => {
                    let short = match options.attention {
                        Attention::TensorCores
                        | Attention::TensorCoresPipe
                        | Attention::Wgmma(_) => Some(func(Kernel::AttentionTcShort)?),
                        _ => None,
                    };
                    let pipe = if options.attention == Attention::TensorCoresPipe {
                        let p = func(Kernel::AttentionTcPipe)?;
                        // SAFETY: a function of the module loaded above.
                        Some(unsafe {
                            pipe_grid(gpu, p, max.seq, config.head_dim(), shared_optin)
                        }?)
                    } else {
                        None
                    };
                    // Built for sm_90a and head size 64 only: elsewhere attention_tc serves.
                    let wgmma = match options.attention.wgmma() {
                        Some(w) => match func(w.kernel()) {
                            // SAFETY: a function of the module loaded above.
                            Ok(f) => unsafe { wg_shared(f, w, shared_optin) }?,
                            Err(_) => None,
                        },
                        None => None,
                    };
                    Some(TcAttention {
                        f,
                        most_warps,
                        row_tiles,
                        short: short.map(|f| (f, config.head_dim())),
                        pipe,
                        wgmma,
                    })
                }
                Err(_) => None,
            }
        } else {
            None
        },
        pool: func(Kernel::Pool)?,
        small_linear: if tensor_cores
            && config.hidden_size.is_multiple_of(32)
            && config.intermediate_size.is_multiple_of(32)
        {
            load_small(kernels::SMALL_LINEAR)?
        } else {
            Vec::new()
        },
        small_linear_q: Vec::new(),
        small_attn_out: None,
        small_attn_out_q: None,
    };
    let fused_attention = options.small_attention_fused
        && !gpu.f.small_linear.is_empty()
        && config.head_dim().is_multiple_of(16);
    // Its 16 rows of x in dynamic shared memory, beside the static reduction
    // buffer: the limit set on the function, or None where they do not fit.
    let load_attn_out = |k: Kernel| -> Result<Option<(cu::CUfunction, u32)>> {
        let f = func(k)?;
        // SAFETY: a function of the module loaded above.
        let fits = unsafe { small_x_shared(f, 16, config.hidden_size, shared_optin) }?;
        Ok(fits.map(|bytes| (f, bytes)))
    };
    if fused_attention {
        gpu.f.small_attn_out = load_attn_out(Kernel::SmallAttnOutM16)?;
    }
    if tensor_cores && h.quant.is_some() && !gpu.f.small_linear.is_empty() {
        // A layer may mix 8-bit and fp16 (fallback) weights, so both kernels of a
        // bucket place the LayerNorms alike: in the next kernel only where both can.
        let mut q = load_small(kernels::SMALL_LINEAR_Q)?;
        for (fp16, q) in gpu.f.small_linear.iter_mut().zip(&mut q) {
            if fp16.ln_in_shared.is_none() || q.ln_in_shared.is_none() {
                (fp16.ln_in_shared, q.ln_in_shared) = (None, None);
            }
        }
        gpu.f.small_linear_q = q;
        if fused_attention {
            gpu.f.small_attn_out_q = load_attn_out(Kernel::SmallAttnOutQM16)?;
        }
    }
    Ok(())
}

impl CudaEngine {
    /// Slot 0 (tuning, stage timing).
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, Gpu>> {
        Self::bound(&self.slots[0])
    }

    pub(super) fn bound(slot: &Mutex<Gpu>) -> Result<MutexGuard<'_, Gpu>> {
        // A panic inside a batch poisons the lock; the GPU state itself is
        // still consistent (every batch starts from scratch), so go on.
        let g = slot.lock().unwrap_or_else(|p| p.into_inner());
        g.ctx.bind_to_thread().map_err(drv("bind context"))?;
        Ok(g)
    }

    /// A free slot if there is one, else waits for the next in turn.
    pub(super) fn acquire(&self) -> Result<MutexGuard<'_, Gpu>> {
        let n = self.slots.len();
        let first = self
            .next_slot
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for k in 0..n {
            let g = match self.slots[(first + k) % n].try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            g.ctx.bind_to_thread().map_err(drv("bind context"))?;
            return Ok(g);
        }
        Self::bound(&self.slots[first % n])
    }
}

impl Drop for Gpu {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: each handle was made by this struct and is released once,
        // after the stream has drained.
        unsafe {
            if !self.stream.is_null() {
                let _ = cr::stream::synchronize(self.stream);
            }
            for (_, e) in self.graphs.drain() {
                let _ = cr::graph::exec_destroy(e);
            }
            self.gemms = None;
            self.quant = None;
            for p in self.allocations.drain(..) {
                let _ = cr::free_sync(p);
            }
            if !self.pinned_in.is_null() {
                let _ = cr::free_host(self.pinned_in as *mut c_void);
            }
            if !self.pinned_out.is_null() {
                let _ = cr::free_host(self.pinned_out as *mut c_void);
            }
            if !self.module.is_null() {
                let _ = cr::module::unload(self.module);
            }
            if !self.stream.is_null() {
                let _ = cr::stream::destroy(self.stream);
            }
            if !self.done.is_null() {
                let _ = cr::event::destroy(self.done);
            }
        }
    }
}

/// The dynamic shared memory that `rows` rows of a small-token kernel's x take
/// in shared memory (`ln_in`, or the fused attention's output; SL_X_STRIDE =
/// hidden + 8 halves a row), set on `f` as its limit; None where it does not
/// fit beside the kernel's static shared memory.
///
/// # Safety
/// `f` is a function of a loaded module.
unsafe fn small_x_shared(
    f: cu::CUfunction,
    rows: usize,
    hidden: usize,
    shared_optin: usize,
) -> Result<Option<u32>> {
    let bytes = rows * (hidden + 8) * 2;
    let attr = |e| Error::Backend(format!("CUDA kernel attribute: {e}"));
    let fixed = cr::function::get_function_attribute(
        f,
        cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
    )
    .map_err(attr)? as usize;
    if fixed + bytes > shared_optin {
        return Ok(None);
    }
    cr::function::set_function_attribute(
        f,
        cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(attr)?;
    Ok(Some(bytes as u32))
}

/// The dynamic shared memory the wgmma attention kernel `f` lays out, set on
/// it as its limit: Some((f, bytes)), or None where this GPU's blocks cannot
/// have that much.
///
/// # Safety
/// `f` is a function of a loaded module.
unsafe fn wg_shared(
    f: cu::CUfunction,
    w: WgmmaAttention,
    shared_optin: usize,
) -> Result<Option<(cu::CUfunction, u32)>> {
    let bytes = wg_shared_bytes(w);
    if bytes > shared_optin {
        return Ok(None);
    }
    cr::function::set_function_attribute(
        f,
        cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| Error::Backend(format!("CUDA kernel attribute: {e}")))?;
    Ok(Some((f, bytes as u32)))
}

/// `attention_tc_pipe`'s shapes for this GPU: for each block size, the
/// dynamic shared memory of the largest batch it serves (set on `f` as its
/// limit) and the blocks that stay resident on all multiprocessors at once.
///
/// # Safety
/// `f` is a function of a loaded module.
unsafe fn pipe_grid(
    gpu: &Gpu,
    f: cu::CUfunction,
    max_seq: usize,
    head_dim: usize,
    shared_optin: usize,
) -> Result<PipeGrid> {
    let attr = |e| Error::Backend(format!("CUDA kernel attribute: {e}"));
    let sms = gpu
        .ctx
        .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(drv("device attribute"))? as u32;
    let most = pipe_shared_bytes(
        PIPE_MOST_WARPS,
        pipe_batch_len(PIPE_MOST_WARPS, max_seq),
        head_dim,
    );
    if most > shared_optin {
        return Err(Error::Backend(format!(
            "attention_tc_pipe needs {most} bytes of shared memory a block; this GPU allows \
             {shared_optin}: use another EMBEDRT_ATTENTION"
        )));
    }
    cr::function::set_function_attribute(
        f,
        cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        most as i32,
    )
    .map_err(attr)?;
    let mut by_warps = [(0u32, 0u32); PIPE_MOST_WARPS];
    for (i, slot) in by_warps.iter_mut().enumerate() {
        let warps = i + 1;
        let bytes = pipe_shared_bytes(warps, pipe_batch_len(warps, max_seq), head_dim);
        let per_sm = cr::occupancy::max_active_block_per_multiprocessor(f, 32 * warps as i32, bytes)
            .map_err(attr)?
            .max(1) as u32;
        *slot = (bytes as u32, per_sm * sms);
    }
    Ok(PipeGrid { f, by_warps })
}

/// MPNet's relative position bias for every key - query (the bucket table's
/// index) and head, `[heads, 2 max_seq - 1]`, times log2 e: the attention
/// kernels' exp2-domain scores add it as is.
fn relative_bias_table(plan: &Plan, buckets: &[i32]) -> Result<Vec<f32>> {
    let heads = plan.header.config.num_attention_heads;
    let t = plan.tensor("relative_attention_bias")?;
    let raw = plan
        .weights
        .get(t.offset..t.offset + t.bytes)
        .ok_or_else(|| {
            Error::Model("plan: relative_attention_bias lies outside the weights".into())
        })?;
    let n: usize = t.shape.iter().product();
    let values: Vec<f32> = match raw.len().checked_div(n) {
        Some(2) => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Some(4) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => {
            return Err(Error::Model(format!(
                "plan: relative_attention_bias has {} bytes for {n} values",
                raw.len()
            )))
        }
    };
    let mut table = Vec::with_capacity(heads * buckets.len());
    for h in 0..heads {
        for &b in buckets {
            let v = values.get(b as usize * heads + h).ok_or_else(|| {
                Error::Model(format!("plan: relative_attention_bias has no bucket {b}"))
            })?;
            table.push(v * std::f32::consts::LOG2_E);
        }
    }
    Ok(table)
}
