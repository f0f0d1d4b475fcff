//! The CUDA engine: a plan loaded onto one GPU. Everything the MAX profile
//! needs is allocated at load; a batch only copies ids in, launches, and
//! copies pooled vectors out.

use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use cudarc::driver::{result as cr, sys as cu, CudaContext};
use embedrt_core::{
    Architecture, Backend, BackendInfo, Error, ModelConfig, PoolingMode, Result, TokenBatch,
};

use crate::ffn_sm90::FfnInGeluSm90;
use crate::gemm::{algo_to_hex, GemmKind, Gemms};
use crate::kernels;
use crate::plan::{
    check_target, layer_tensor, staged_u32s, workspace_layout, GemmChoice, Plan, Precision, Shape,
    GEMM_WORKSPACE_BYTES,
};
use crate::probe;

fn drv(what: &str) -> impl Fn(cr::DriverError) -> Error + '_ {
    move |e| crate::fault::driver_fault(what, e)
}

/// What loading a plan allocated, for `info` and the logs.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub device: String,
    pub weight_bytes: usize,
    /// Per execution slot.
    pub workspace_bytes: usize,
    /// Execution slots (own stream, activations, pinned staging, graphs;
    /// weights shared): that many batches can be in flight at once.
    pub slots: usize,
    pub kernels_from_cache: bool,
}

struct LayerPtrs {
    qkv_w: u64,
    attn_out_w: u64,
    attn_norm: (u64, u64),
    ffn_in_w: u64,
    ffn_out_w: u64,
    ffn_norm: (u64, u64),
    /// qkv, attn_out, ffn_in, ffn_out biases (the small-token path adds them itself).
    biases: [u64; 4],
}

struct Functions {
    embed: cu::CUfunction,
    layernorm: cu::CUfunction,
    gelu: cu::CUfunction,
    attention: cu::CUfunction,
    /// Tensor-core attention (fp16, sm_80+, head size a multiple of 16) and the most warps
    /// (16 queries each) a block of it takes: `attention_tc` (8), or the occupancy variants
    /// `EMBEDRT_ATTENTION=tc2` (`attention_tc2`, 8) / `tc4` (`attention_tc4`, 4).
    attention_tc: Option<(cu::CUfunction, usize)>,
    pool: cu::CUfunction,
    /// Small-token linear layers with fused epilogues, for 16, 32, 48, 64
    /// tokens (fp16, sm_80+); empty where they do not apply.
    small_linear: Vec<cu::CUfunction>,
}

#[derive(Clone, Copy)]
struct Buffers {
    hidden: u64,
    qkv: u64,
    context: u64,
    scratch: u64,
    inter: u64,
    tokens: u64,
    pooled: u64,
    gemm_ws: u64,
    bucket: u64,
}

struct Gpu {
    ctx: Arc<CudaContext>,
    stream: cu::CUstream,
    module: cu::CUmodule,
    f: Functions,
    allocations: Vec<u64>,
    b: Buffers,
    word: u64,
    position: u64,
    type0: u64,
    emb_norm: (u64, u64),
    layers: Vec<LayerPtrs>,
    rel_bias: u64,
    /// Pinned staging: ids | positions | offsets | normalize flag in, pooled out.
    pinned_in: *mut u32,
    pinned_in_len: usize,
    pinned_out: *mut f32,
    pinned_out_len: usize,
    gemms: Option<Gemms>,
    /// Captured encoder graphs by (padded tokens, padded sequences).
    graphs: std::collections::HashMap<(usize, usize), cu::CUgraphExec>,
    use_graphs: bool,
    use_tc_attention: bool,
    /// `EMBEDRT_GELU=tanh`: GELU as cuBLASLt's tanh approximation in the
    /// FFN-in epilogue instead of the exact-erf pass (an experiment: what a
    /// fused epilogue saves; not the models' definition).
    tanh_gelu: bool,
    /// The weight blob (owned by slot 0's allocations).
    weights: u64,
    kernels_from_cache: bool,
    /// One u32, zero between launches: the small-token LayerNorm's ticket.
    ticket: u64,
    /// Hopper, opt-in (`EMBEDRT_FFN_GEMM=own`): FFN-in with the exact GELU
    /// fused, through our wgmma GEMM instead of cuBLASLt + the GELU pass.
    /// Correct, but slower than cuBLASLt + GELU so far (docs/perf/gpu.md run 16).
    ffn_sm90: Option<FfnInGeluSm90>,
    /// Batches of at most this many tokens (graph buckets) run their linear
    /// layers through the small-token kernels (`EMBEDRT_SMALL_LINEAR`, 0 = off).
    small_max_tokens: usize,
    /// Quantized plans: the 8-bit GEMMs and their kernels (engine/quantized.rs).
    quant: Option<quantized::QuantState>,
}

// SAFETY: the raw handles are used only while holding the engine's mutex,
// with the context bound to the calling thread first.
unsafe impl Send for Gpu {}

pub struct CudaEngine {
    config: ModelConfig,
    precision: Precision,
    /// `int8` / `fp8` for quantized plans, else the float precision.
    precision_name: &'static str,
    pooling: PoolingMode,
    max: Shape,
    /// Most tokens one batch holds (the profile's token budget).
    max_tokens: usize,
    device: String,
    report: LoadReport,
    /// Slot 0 owns the weights; slots are dropped last to first.
    slots: Vec<Mutex<Gpu>>,
    next_slot: AtomicUsize,
}

/// Execution slots made by default (`EMBEDRT_CUDA_SLOTS` overrides, 1..=4):
/// two let one batch's copies and host work overlap another's compute.
pub const DEFAULT_SLOTS: usize = 2;
/// Free memory left over after all slots, below which fewer slots are made.
const SLOT_MARGIN_BYTES: usize = 512 << 20;

/// Kernel argument list: pointers to the values, as cuLaunchKernel wants.
macro_rules! kargs {
    ($($v:expr),* $(,)?) => {
        &mut [$(&$v as *const _ as *mut c_void),*]
    };
}

// After kargs!: macro_rules are in scope only textually below them.
mod quantized;

impl CudaEngine {
    /// Loads `plan` onto GPU `ordinal`: checks the target, allocates all
    /// memory, uploads weights, compiles (or finds cached) kernels.
    pub fn load(plan: &Plan, ordinal: usize) -> Result<Self> {
        probe::check_device(ordinal)?;
        let h = &plan.header;
        let ctx = CudaContext::new(ordinal).map_err(drv("context"))?;
        let name = ctx.name().map_err(drv("device name"))?;
        let cc = ctx
            .compute_capability()
            .map_err(drv("compute capability"))?;
        check_target(h, &name, cc)?;
        quantized::check_plan(plan, &name, cc)?;
        if cc.0 < 7 || (cc.0 == 7 && cc.1 < 5) {
            return Err(Error::Backend(format!(
                "{name} has compute capability {}.{}; embedrt needs 7.5 (sm_75) or newer",
                cc.0, cc.1
            )));
        }
        ctx.bind_to_thread().map_err(drv("bind"))?;
        let config = h.config.clone();
        // Rows move as 16-byte vectors in the LayerNorm kernels.
        let lvec = 16 / h.precision.bytes();
        if !config.hidden_size.is_multiple_of(lvec) {
            return Err(Error::Model(format!(
                "hidden size {} is not a multiple of {lvec}, which the {} kernels need",
                config.hidden_size,
                h.precision.name()
            )));
        }
        let max = h.profile.max;
        let max_tokens = h.profile.token_budget();
        let mut layout = workspace_layout(&config, &h.profile, h.precision);
        if h.quant.is_some() {
            layout.extend(crate::qgemm::quant_workspace_layout(&config, &h.profile));
        }
        let workspace_bytes: usize = layout.iter().map(|(_, b)| b).sum();
        let needed = h.weight_bytes + workspace_bytes;
        let (free, total) = cr::mem_get_info().map_err(drv("memory info"))?;
        let wanted = std::env::var("EMBEDRT_CUDA_SLOTS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(DEFAULT_SLOTS)
            .clamp(1, 4);
        // Extra slots only where they fit with room to spare; one must fit.
        let slots = (1..=wanted)
            .rev()
            .find(|&n| h.weight_bytes + n * workspace_bytes + SLOT_MARGIN_BYTES <= free)
            .unwrap_or(1);
        if needed > free {
            return Err(Error::Backend(format!(
                "out of GPU memory: the plan needs {needed} bytes ({} weights + {workspace_bytes} \
                 workspace for {max_tokens}-token batches), cuda:{ordinal} has {free} of {total} bytes free; \
                 build with a smaller --max-batch-tokens",
                h.weight_bytes
            )));
        }
        let device = format!("cuda:{ordinal} ({name})");
        let mut gpus = vec![Self::make_slot(plan, &ctx, cc, &layout, None)?];
        let weights = gpus[0].weights;
        for _ in 1..slots {
            gpus.push(Self::make_slot(plan, &ctx, cc, &layout, Some(weights))?);
        }
        let kernels_from_cache = gpus[0].kernels_from_cache;
        let report = LoadReport {
            device: device.clone(),
            weight_bytes: h.weight_bytes,
            workspace_bytes,
            slots,
            kernels_from_cache,
        };
        let engine = CudaEngine {
            config,
            precision: h.precision,
            precision_name: h.precision_name(),
            pooling: h.pooling,
            max,
            max_tokens,
            device,
            report,
            slots: gpus.into_iter().map(Mutex::new).collect(),
            next_slot: AtomicUsize::new(0),
        };
        engine.capture_small_graphs()?;
        Ok(engine)
    }

    /// One execution slot: stream, activation buffers, pinned staging,
    /// kernels and GEMM handles; the weights are uploaded by the first slot
    /// and shared by the others.
    fn make_slot(
        plan: &Plan,
        ctx: &Arc<CudaContext>,
        cc: (i32, i32),
        layout: &[(&'static str, usize)],
        shared_weights: Option<u64>,
    ) -> Result<Gpu> {
        let h = &plan.header;
        let config = &h.config;
        let max = h.profile.max;
        let mut gpu = Gpu {
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
            },
            allocations: Vec::new(),
            b: Buffers {
                hidden: 0,
                qkv: 0,
                context: 0,
                scratch: 0,
                inter: 0,
                tokens: 0,
                pooled: 0,
                gemm_ws: 0,
                bucket: 0,
            },
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
            graphs: std::collections::HashMap::new(),
            use_graphs: std::env::var("EMBEDRT_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            use_tc_attention: std::env::var("EMBEDRT_ATTENTION").map_or(true, |v| v != "scalar"),
            tanh_gelu: std::env::var("EMBEDRT_GELU").is_ok_and(|v| v == "tanh"),
            weights: 0,
            kernels_from_cache: false,
            ticket: 0,
            ffn_sm90: None,
            small_max_tokens: env_usize("EMBEDRT_SMALL_LINEAR").unwrap_or(SMALL_LINEAR_MAX_TOKENS),
            quant: None,
        };
        // Quantized plans run their own encoder loop: no fp16-only variants in it.
        let quantized = h.quant.is_some();
        if quantized {
            gpu.tanh_gelu = false;
            gpu.small_max_tokens = 0;
        }
        // From here on, Gpu's Drop frees whatever was made if a step fails.
        gpu.stream =
            cr::stream::create(cr::stream::StreamKind::NonBlocking).map_err(drv("stream"))?;
        let alloc = |gpu: &mut Gpu, what: &str, bytes: usize| -> Result<u64> {
            // SAFETY: plain device allocation, freed in Gpu::drop.
            let p = unsafe { cr::malloc_sync(bytes.max(256)) }.map_err(|e| {
                let free = cr::mem_get_info().map(|(f, _)| f).unwrap_or(0);
                Error::fault(
                    crate::fault::kind_of(e.0),
                    format!("out of GPU memory allocating {what} ({bytes} bytes needed, {free} free): {e}"),
                )
            })?;
            gpu.allocations.push(p);
            Ok(p)
        };
        let weights = match shared_weights {
            Some(w) => w,
            None => {
                let w = alloc(&mut gpu, "weights", h.weight_bytes)?;
                // SAFETY: w has weight_bytes bytes; the plan's blob is that long.
                unsafe { cr::memcpy_htod_sync(w, &plan.weights) }.map_err(drv("weight upload"))?;
                w
            }
        };
        gpu.ticket = alloc(&mut gpu, "LayerNorm ticket", 4)?;
        // SAFETY: a 256-byte allocation (alloc rounds up).
        unsafe { cr::memset_d8_sync(gpu.ticket, 0, 4) }.map_err(drv("memset"))?;
        let mut bufs = Vec::new();
        for (what, bytes) in layout {
            bufs.push((*what, alloc(&mut gpu, what, *bytes)?));
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
        };
        if config.architecture == Architecture::Mpnet {
            let table: Vec<i32> = config
                .relative_bucket_table(max.seq)
                .into_iter()
                .map(|b| b as i32)
                .collect();
            // SAFETY: the buffer holds 2*max.seq-1 ints.
            unsafe { cr::memcpy_htod_sync(gpu.b.bucket, &table) }.map_err(drv("upload"))?;
        }
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
            gpu.layers.push(LayerPtrs {
                qkv_w: lt("qkv.weight")?,
                attn_out_w: lt("attn_out.weight")?,
                attn_norm: (lt("attn_norm.gamma")?, lt("attn_norm.beta")?),
                ffn_in_w: lt("ffn_in.weight")?,
                ffn_out_w: lt("ffn_out.weight")?,
                ffn_norm: (lt("ffn_norm.gamma")?, lt("ffn_norm.beta")?),
                biases: b,
            });
            biases.push(b);
        }
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
        // Kernels.
        let defines = vec![
            format!("EMBEDRT_FP16={}", (h.precision == Precision::Fp16) as i32),
            format!("HIDDEN={}", config.hidden_size),
            format!("HEAD_DIM={}", config.head_dim()),
        ];
        let mut defines = defines;
        if let Some(q) = &h.quant {
            let code = match q.format() {
                embedrt_core::quant::QuantFormat::Int8 => 1,
                embedrt_core::quant::QuantFormat::Fp8 => 2,
            };
            defines.push(format!("EMBEDRT_QUANT={code}"));
        }
        let cubin = kernels::compile_cached(kernels::ENCODER_SOURCE, &defines, cc)?;
        // SAFETY: a CUBIN NVRTC made for this GPU (checked by its trailer).
        gpu.module = unsafe { cr::module::load_data(cubin.image.as_ptr() as *const c_void) }
            .map_err(drv("kernel module load"))?;
        let func = |module, name: &str| -> Result<cu::CUfunction> {
            let c = CString::new(name).unwrap_or_default();
            // SAFETY: module loaded above.
            unsafe { cr::module::get_function(module, c) }.map_err(drv("kernel lookup"))
        };
        gpu.f = Functions {
            embed: func(gpu.module, "embed_layernorm")?,
            layernorm: func(gpu.module, "layernorm")?,
            gelu: func(gpu.module, "gelu")?,
            attention: func(gpu.module, "attention")?,
            // MPNet's bias table per block holds up to 1,024 key - query values.
            attention_tc: if cc.0 >= 8
                && h.precision == Precision::Fp16
                && config.head_dim().is_multiple_of(16)
                && (config.architecture != Architecture::Mpnet || max.seq <= 768)
            {
                let (name, warps) = tc_attention_kernel();
                func(gpu.module, name).ok().map(|f| (f, warps))
            } else {
                None
            },
            pool: func(gpu.module, "pool")?,
            small_linear: if cc.0 >= 8
                && h.precision == Precision::Fp16
                && config.hidden_size.is_multiple_of(32)
                && config.intermediate_size.is_multiple_of(32)
            {
                [
                    "small_linear_m16",
                    "small_linear_m32",
                    "small_linear_m48",
                    "small_linear_m64",
                ]
                .iter()
                .map(|n| func(gpu.module, n))
                .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            },
        };
        let ffn_in: Vec<u64> = gpu.layers.iter().map(|l| l.ffn_in_w).collect();
        let fp16 = h.precision == Precision::Fp16;
        let (hid, inter) = (config.hidden_size, config.intermediate_size);
        let wanted = std::env::var("EMBEDRT_FFN_GEMM").is_ok_and(|v| v == "own");
        if wanted && !quantized && !gpu.tanh_gelu && FfnInGeluSm90::applies(cc, fp16, hid, inter) {
            let f = func(gpu.module, "ffn_in_gelu_sm90")?;
            let sms = ctx
                .attribute(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(drv("device attribute"))?;
            gpu.ffn_sm90 = Some(FfnInGeluSm90::new(
                f,
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
        let quant_buffers = (get("quant_act"), get("quant_acc"), gpu.b.gemm_ws);
        gpu.quant = quantized::QuantState::new(plan, gpu.module, weights, quant_buffers)?;
        gpu.weights = weights;
        gpu.kernels_from_cache = cubin.from_cache;
        Ok(gpu)
    }

    /// Single short sentences are the latency case: their graphs are
    /// captured at load so the first request costs one launch too.
    fn capture_small_graphs(&self) -> Result<()> {
        for slot in &self.slots {
            let mut g = Self::bound(slot)?;
            if !g.use_graphs {
                return Ok(());
            }
            for tp in [16, 32, 64, 128] {
                if tp <= self.max.seq {
                    self.graph_for(&mut g, tp, 1)?;
                }
            }
        }
        Ok(())
    }

    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// Slot 0 (tuning, stage timing).
    fn lock(&self) -> Result<MutexGuard<'_, Gpu>> {
        Self::bound(&self.slots[0])
    }

    fn bound(slot: &Mutex<Gpu>) -> Result<MutexGuard<'_, Gpu>> {
        // A panic inside a batch poisons the lock; the GPU state itself is
        // still consistent (every batch starts from scratch), so go on.
        let g = slot.lock().unwrap_or_else(|p| p.into_inner());
        g.ctx.bind_to_thread().map_err(drv("bind context"))?;
        Ok(g)
    }

    /// A free slot if there is one, else waits for the next in turn.
    fn acquire(&self) -> Result<MutexGuard<'_, Gpu>> {
        let n = self.slots.len();
        let first = self.next_slot.fetch_add(1, Ordering::Relaxed);
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

    /// Chooses cuBLASLt algorithms by timing the top heuristic candidates on
    /// this GPU, for a ladder of token counts up to the MAX profile.
    pub fn tune_gemms(&self, opt_tokens: usize) -> Result<Vec<GemmChoice>> {
        // Quantized plans: the fp16 tuner would run on 1-byte weights; their
        // 8-bit GEMMs take cuBLASLt's heuristic, their fp16 fallbacks too.
        if self.precision_name != self.precision.name() {
            return Ok(Vec::new());
        }
        // Fill the activations with real values first (never time on garbage).
        let warm_seqs = (self.max_tokens / self.max.seq).clamp(1, self.max.batch);
        let warm = random_batch(&self.config, warm_seqs, self.max.seq, 7);
        self.embed(&warm)?;
        let mut g = self.lock()?;
        let stream = g.stream;
        let max_t = self.max_tokens;
        let mut ladder: Vec<usize> = (4..30)
            .map(|p| 1usize << p)
            .filter(|&t| t < max_t)
            .collect();
        ladder.push(max_t);
        ladder.push(opt_tokens.min(max_t));
        ladder.sort_unstable();
        ladder.dedup();
        let start = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
        let stop = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for kind in GemmKind::ALL {
                for &tokens in &ladder {
                    let (w, x, res, y) = {
                        let l = &g.layers[0];
                        let b = &g.b;
                        match kind {
                            GemmKind::Qkv => (l.qkv_w, b.hidden, None, b.qkv),
                            GemmKind::AttnOut => {
                                (l.attn_out_w, b.context, Some(b.hidden), b.scratch)
                            }
                            GemmKind::FfnIn => (l.ffn_in_w, b.hidden, None, b.inter),
                            GemmKind::FfnOut => (l.ffn_out_w, b.inter, Some(b.hidden), b.scratch),
                        }
                    };
                    let gemms = g
                        .gemms
                        .as_mut()
                        .ok_or_else(|| Error::Backend("no GEMMs".into()))?;
                    // Small token counts (the latency case) get a wider search: split-K
                    // and small-tile variants rank low in the heuristic there.
                    let count = if tokens <= 256 { 24 } else { 6 };
                    let candidates = gemms.heuristics(kind, tokens, count)?;
                    let mut best: Option<(f32, usize)> = None;
                    for (ci, algo) in candidates.iter().enumerate() {
                        let run = |gemms: &mut Gemms| {
                            gemms.run_with(0, kind, tokens, w, x, res, y, stream as _, Some(*algo))
                        };
                        if run(gemms).is_err() {
                            continue;
                        }
                        // SAFETY: events and stream are live.
                        let ms = unsafe {
                            cr::event::record(start, stream).map_err(drv("event"))?;
                            for _ in 0..5 {
                                run(gemms)?;
                            }
                            cr::event::record(stop, stream).map_err(drv("event"))?;
                            cr::event::synchronize(stop).map_err(drv("event"))?;
                            cr::event::elapsed(start, stop).map_err(drv("event"))?
                        };
                        if best.is_none_or(|(b, _)| ms < b) {
                            best = Some((ms, ci));
                        }
                    }
                    if let Some((_, ci)) = best {
                        out.push(GemmChoice {
                            gemm: kind.name().into(),
                            tokens,
                            algo: algo_to_hex(&candidates[ci]),
                        });
                    }
                }
            }
            Ok(())
        })();
        // SAFETY: events made above.
        unsafe {
            let _ = cr::event::destroy(start);
            let _ = cr::event::destroy(stop);
        }
        result?;
        Ok(out)
    }

    /// Token count and sequence count a batch runs at: padded up to a graph
    /// bucket for small batches (one graph launch), exact otherwise.
    fn run_shape(&self, g: &Gpu, t: usize, n: usize) -> (usize, usize, bool) {
        if !g.use_graphs || t > GRAPH_MAX_TOKENS {
            return (t, n, false);
        }
        let tp = if t <= 256 {
            t.next_multiple_of(16)
        } else {
            t.next_multiple_of(64)
        };
        let np = n.next_power_of_two();
        if tp > self.max_tokens || np > self.max.batch {
            return (t, n, false);
        }
        (tp, np, true)
    }

    /// ids | positions | offsets | normalize flag into pinned memory, padded
    /// to (tp, np): padding tokens are id 0 at position 0, padding sequences
    /// are empty. The flag is data, not a kernel argument, so one captured
    /// graph serves both.
    fn stage(
        &self,
        g: &mut Gpu,
        batch: &TokenBatch,
        (tp, np): (usize, usize),
        normalize: bool,
    ) -> usize {
        let (n, t) = (batch.len(), batch.total_tokens());
        let staged = staged_u32s(tp, np);
        // SAFETY: pinned_in holds pinned_in_len >= staged u32s (tp, np within MAX).
        let stage = unsafe { std::slice::from_raw_parts_mut(g.pinned_in, staged) };
        stage[..t].copy_from_slice(&batch.ids);
        stage[t..tp].fill(0);
        for s in 0..n {
            let (a, b) = (batch.offsets[s], batch.offsets[s + 1]);
            for (i, p) in stage[tp + a..tp + b].iter_mut().enumerate() {
                *p = self.config.position_id(i) as u32;
            }
        }
        stage[tp + t..2 * tp].fill(0);
        for (o, &v) in stage[2 * tp..2 * tp + n + 1].iter_mut().zip(&batch.offsets) {
            *o = v as u32;
        }
        stage[2 * tp + n + 1..staged - 1].fill(t as u32);
        stage[staged - 1] = normalize as u32;
        staged
    }

    fn forward(&self, g: &mut Gpu, batch: &TokenBatch, normalize: bool) -> Result<Vec<f32>> {
        let (n, t) = (batch.len(), batch.total_tokens());
        let h = self.config.hidden_size;
        if n > self.max.batch || t > self.max_tokens {
            return Err(Error::Input(format!(
                "batch of {n} sequences / {t} tokens exceeds the plan's limits ({} sequences, {} tokens)",
                self.max.batch, self.max_tokens
            )));
        }
        let (tp, np, graph) = self.run_shape(g, t, n);
        let staged = self.stage(g, batch, (tp, np), normalize);
        let stream = g.stream;
        if graph {
            // The graph holds the copy in and the copy out too: one launch.
            let exec = self.graph_for(g, tp, np)?;
            // SAFETY: exec was captured from this slot's buffers; pinned_out
            // holds max.batch * h floats >= n * h.
            unsafe {
                cr::graph::launch(exec, stream).map_err(drv("graph launch"))?;
                cr::stream::synchronize(stream).map_err(drv("batch"))?;
                return Ok(std::slice::from_raw_parts(g.pinned_out, n * h).to_vec());
            }
        }
        // SAFETY: pinned staging and device buffers sized for MAX; the copy
        // is ordered before the compute on the same stream.
        unsafe {
            let src = std::slice::from_raw_parts(g.pinned_in, staged);
            cr::memcpy_htod_async(g.b.tokens, src, stream).map_err(drv("copy in"))?;
        }
        self.enqueue(g, tp, np, batch.max_seq_len(), None)?;
        // SAFETY: pinned_out holds max.batch * h floats >= n * h.
        unsafe {
            let out = std::slice::from_raw_parts_mut(g.pinned_out, n * h);
            cr::memcpy_dtoh_async(out, g.b.pooled, stream).map_err(drv("copy out"))?;
            cr::stream::synchronize(stream).map_err(drv("batch"))?;
            Ok(out.to_vec())
        }
    }

    /// The graph for (tp, np), captured on first use.
    fn graph_for(&self, g: &mut Gpu, tp: usize, np: usize) -> Result<cu::CUgraphExec> {
        if let Some(&e) = g.graphs.get(&(tp, np)) {
            return Ok(e);
        }
        let stream = g.stream;
        let max_len = tp.min(self.max.seq);
        // SAFETY: capture on our own stream; ended on every path.
        unsafe {
            cr::stream::begin_capture(
                stream,
                cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(drv("graph capture"))?;
            // Copy in (ids | positions | offsets as staged for (tp, np)),
            // the encoder, copy out of the np pooled rows: all in the graph.
            let enq = (|| -> Result<()> {
                let src = std::slice::from_raw_parts(g.pinned_in, staged_u32s(tp, np));
                cr::memcpy_htod_async(g.b.tokens, src, stream).map_err(drv("copy in"))?;
                self.enqueue(g, tp, np, max_len, None)?;
                let h = self.config.hidden_size;
                let out = std::slice::from_raw_parts_mut(g.pinned_out, np * h);
                cr::memcpy_dtoh_async(out, g.b.pooled, stream).map_err(drv("copy out"))
            })();
            let graph = cr::stream::end_capture(stream);
            enq?;
            let graph = graph.map_err(drv("graph capture"))?;
            let exec = cr::graph::instantiate(graph, cu::CUgraphInstantiate_flags(0));
            let _ = cr::graph::destroy(graph);
            let exec = exec.map_err(drv("graph instantiate"))?;
            g.graphs.insert((tp, np), exec);
            Ok(exec)
        }
    }

    /// Launches the whole encoder for `tp` tokens in `np` sequences (the
    /// staged buffer already on the device). With `timer`, records an event
    /// after each stage.
    fn enqueue(
        &self,
        g: &mut Gpu,
        tp: usize,
        np: usize,
        max_len_batch: usize,
        mut timer: Option<&mut Vec<(&'static str, cu::CUevent)>>,
    ) -> Result<()> {
        if g.quant.is_some() {
            return self.enqueue_quant(g, tp, np, max_len_batch, timer);
        }
        let c = &self.config;
        let h = c.hidden_size;
        let stream = g.stream;
        let mut mark = |name: &'static str| -> Result<()> {
            if let Some(tm) = timer.as_deref_mut() {
                let e =
                    cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
                // SAFETY: fresh event, live stream.
                unsafe { cr::event::record(e, stream) }.map_err(drv("event"))?;
                tm.push((name, e));
            }
            Ok(())
        };
        let (ids, pos, offs) = (
            g.b.tokens,
            g.b.tokens + 4 * tp as u64,
            g.b.tokens + 8 * tp as u64,
        );
        let eps = c.layer_norm_eps;
        let tokens_i = tp as i32;
        let row_blocks = tp.div_ceil(4) as u32;
        mark("start")?;
        // SAFETY: every pointer below is a device buffer sized for the MAX
        // profile (tp, np within it) or a weight inside the uploaded blob; the
        // kernels' arguments match their signatures in encoder.cu.
        unsafe {
            let (wd, po, t0, (ga, be), out) = (g.word, g.position, g.type0, g.emb_norm, g.b.hidden);
            cr::launch_kernel(
                g.f.embed,
                (row_blocks, 1, 1),
                (128, 1, 1),
                0,
                stream,
                kargs![ids, pos, tokens_i, wd, po, t0, ga, be, out, eps],
            )
            .map_err(drv("embedding kernel"))?;
            mark("embedding+layernorm")?;
            let heads = c.num_attention_heads as i32;
            let scale = 1.0f32 / (c.head_dim() as f32).sqrt();
            let max_len = self.max.seq as i32;
            let b = g.b;
            let (rb, bk) = (g.rel_bias, b.bucket);
            let tc = g.f.attention_tc.filter(|_| g.use_tc_attention);
            // Both attention kernels take the same arguments: tensor cores with up to 8
            // warps of 16 queries a block, else one thread a query, 32 a block.
            let (attention, attention_threads, queries_per_block) = match tc {
                Some((f, most)) => {
                    let warps = max_len_batch.div_ceil(16).clamp(1, most);
                    (f, 32 * warps, 16 * warps)
                }
                None => (g.f.attention, 32, 32),
            };
            let query_blocks = max_len_batch.div_ceil(queries_per_block) as u32;
            // Post-attention and post-FFN LayerNorm: scratch (sum with the
            // residual, from the GEMM epilogue) normalized into hidden.
            let layernorm_fn = g.f.layernorm;
            let layernorm = |(ga, be): (u64, u64)| {
                cr::launch_kernel(
                    layernorm_fn,
                    (row_blocks, 1, 1),
                    (128, 1, 1),
                    0,
                    stream,
                    kargs![b.scratch, tokens_i, ga, be, b.hidden, eps],
                )
                .map_err(drv("layernorm kernel"))
            };
            let (hid, inter) = (h, c.intermediate_size);
            // Small batches (graph buckets of 16..64 tokens): linear layers with the bias,
            // GELU, residual and LayerNorm fused in (kernels/small_linear.cu).
            let small = match tp {
                16 | 32 | 48 | 64 if tp <= g.small_max_tokens => {
                    g.f.small_linear.get(tp / 16 - 1).copied()
                }
                _ => None,
            };
            let ticket = g.ticket;
            let small_linear = |f: cu::CUfunction,
                                (x, w, bias, res, y): (u64, u64, u64, u64, u64),
                                (n, k): (usize, usize),
                                epilogue: i32,
                                (gamma, beta): (u64, u64)| {
                let warps = (k / 32).div_ceil(4).clamp(4, 16) as u32;
                let (n_i, k_i) = (n as i32, k as i32);
                let ln_out = b.hidden;
                cr::launch_kernel(
                    f,
                    ((n / 8) as u32, 1, 1),
                    (32 * warps, 1, 1),
                    0,
                    stream,
                    kargs![
                        x, w, bias, res, y, n_i, k_i, epilogue, gamma, beta, eps, ticket, ln_out
                    ],
                )
                .map_err(drv("small linear kernel"))
            };
            let gelu_fn = g.f.gelu;
            let gelu = |x: u64, n: i64| {
                let blocks = (n as usize).div_ceil(256 * 8).clamp(1, 132 * 16) as u32;
                cr::launch_kernel(
                    gelu_fn,
                    (blocks, 1, 1),
                    (256, 1, 1),
                    0,
                    stream,
                    kargs![x, n],
                )
                .map_err(drv("gelu kernel"))
            };
            for (li, l) in g.layers.iter().enumerate() {
                let gemms = g
                    .gemms
                    .as_mut()
                    .ok_or_else(|| Error::Backend("no GEMMs".into()))?;
                match small {
                    Some(f) => small_linear(
                        f,
                        (b.hidden, l.qkv_w, l.biases[0], 0, b.qkv),
                        (3 * hid, hid),
                        0,
                        (0, 0),
                    )?,
                    None => gemms.run(
                        li,
                        GemmKind::Qkv,
                        tp,
                        l.qkv_w,
                        b.hidden,
                        None,
                        b.qkv,
                        stream as _,
                    )?,
                }
                mark("gemm qkv")?;
                cr::launch_kernel(
                    attention,
                    (query_blocks, heads as u32, np as u32),
                    (attention_threads as u32, 1, 1),
                    0,
                    stream,
                    kargs![b.qkv, offs, heads, scale, rb, bk, max_len, b.context],
                )
                .map_err(drv("attention kernel"))?;
                mark("attention")?;
                if let Some(f) = small {
                    small_linear(
                        f,
                        (b.context, l.attn_out_w, l.biases[1], b.hidden, b.scratch),
                        (hid, hid),
                        2,
                        l.attn_norm,
                    )?;
                    mark("small attn_out+layernorm")?;
                    small_linear(
                        f,
                        (b.hidden, l.ffn_in_w, l.biases[2], 0, b.inter),
                        (inter, hid),
                        1,
                        (0, 0),
                    )?;
                    mark("small ffn_in+gelu")?;
                    small_linear(
                        f,
                        (b.inter, l.ffn_out_w, l.biases[3], b.hidden, b.scratch),
                        (hid, inter),
                        2,
                        l.ffn_norm,
                    )?;
                    mark("small ffn_out+layernorm")?;
                    continue;
                }
                gemms.run(
                    li,
                    GemmKind::AttnOut,
                    tp,
                    l.attn_out_w,
                    b.context,
                    Some(b.hidden),
                    b.scratch,
                    stream as _,
                )?;
                mark("gemm attn_out (+bias+residual)")?;
                layernorm(l.attn_norm)?;
                mark("layernorm")?;
                if let Some(ffn) = &g.ffn_sm90 {
                    ffn.launch(li, l.biases[2], b.inter, tp, stream)?;
                    mark("ffn_in+gelu (own wgmma GEMM)")?;
                } else {
                    gemms.run(
                        li,
                        GemmKind::FfnIn,
                        tp,
                        l.ffn_in_w,
                        b.hidden,
                        None,
                        b.inter,
                        stream as _,
                    )?;
                    mark("gemm ffn_in (+bias)")?;
                    if !g.tanh_gelu {
                        gelu(b.inter, (tp * inter) as i64)?;
                        mark("gelu")?;
                    }
                }
                gemms.run(
                    li,
                    GemmKind::FfnOut,
                    tp,
                    l.ffn_out_w,
                    b.inter,
                    Some(b.hidden),
                    b.scratch,
                    stream as _,
                )?;
                mark("gemm ffn_out (+bias+residual)")?;
                layernorm(l.ffn_norm)?;
                mark("layernorm")?;
            }
            self.launch_pool(g, tp, np)?;
            mark("pooling")?;
        }
        Ok(())
    }

    /// Sentence pooling of the final hidden states into `pooled` (fp32).
    fn launch_pool(&self, g: &Gpu, tp: usize, np: usize) -> Result<()> {
        let mode: i32 = match self.pooling {
            PoolingMode::Mean => 0,
            PoolingMode::Cls => 1,
            PoolingMode::Max => 2,
            PoolingMode::MeanSqrtLen => 3,
        };
        let threads = self.config.hidden_size.next_multiple_of(32).min(256) as u32;
        let (hidden, pooled) = (g.b.hidden, g.b.pooled);
        let offs = g.b.tokens + 8 * tp as u64;
        let normalize_flag = g.b.tokens + 4 * (staged_u32s(tp, np) - 1) as u64;
        // SAFETY: buffers of this slot sized for the plan's limits; arguments
        // match `pool` in encoder.cu.
        unsafe {
            cr::launch_kernel(
                g.f.pool,
                (np as u32, 1, 1),
                (threads, 1, 1),
                0,
                g.stream,
                kargs![hidden, offs, mode, normalize_flag, pooled],
            )
        }
        .map_err(drv("pooling kernel"))
    }

    /// Per-stage GPU time (ms, summed over layers) of one batch run eagerly:
    /// the per-kernel evidence for docs/perf/gpu.md.
    pub fn stage_times(&self, batch: &TokenBatch) -> Result<Vec<(String, f64)>> {
        batch.validate(self.config.vocab_size, self.max.seq)?;
        let mut g = self.lock()?;
        let (n, t) = (batch.len(), batch.total_tokens());
        let staged = self.stage(&mut g, batch, (t, n), false);
        let stream = g.stream;
        let mut events = Vec::new();
        // SAFETY: as in forward.
        let r = unsafe {
            let src = std::slice::from_raw_parts(g.pinned_in, staged);
            cr::memcpy_htod_async(g.b.tokens, src, stream).map_err(drv("copy in"))?;
            let r = self.enqueue(&mut g, t, n, batch.max_seq_len(), Some(&mut events));
            cr::stream::synchronize(stream).map_err(drv("batch"))?;
            r
        };
        let mut out: Vec<(String, f64)> = Vec::new();
        for w in events.windows(2) {
            // SAFETY: both events recorded and complete.
            let ms = unsafe { cr::event::elapsed(w[0].1, w[1].1) }.unwrap_or(0.0) as f64;
            match out.iter_mut().find(|(n, _)| n == w[1].0) {
                Some(e) => e.1 += ms,
                None => out.push((w[1].0.to_string(), ms)),
            }
        }
        for (_, e) in events {
            // SAFETY: made above, used no more.
            let _ = unsafe { cr::event::destroy(e) };
        }
        r?;
        Ok(out)
    }
}

/// The tensor-core attention kernel `EMBEDRT_ATTENTION` picks and its most warps a block:
/// `tc2` / `tc4` are the occupancy variants (docs/arch/cuda.md), anything else the default.
fn tc_attention_kernel() -> (&'static str, usize) {
    match std::env::var("EMBEDRT_ATTENTION").as_deref() {
        Ok("tc2") => ("attention_tc2", 8),
        Ok("tc4") => ("attention_tc4", 4),
        _ => ("attention_tc", 8),
    }
}

/// Batches up to this many tokens run as one CUDA graph launch.
const GRAPH_MAX_TOKENS: usize = 2048;

/// Default for `EMBEDRT_SMALL_LINEAR`: graph buckets up to this many tokens
/// use the small-token linear kernels (the kernels exist for 16 to 64).
const SMALL_LINEAR_MAX_TOKENS: usize = 64;

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A deterministic batch of random token ids (for warm-up and tuning).
pub fn random_batch(config: &ModelConfig, n: usize, len: usize, seed: u64) -> TokenBatch {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut b = TokenBatch::new();
    let mut seq = Vec::with_capacity(len);
    for _ in 0..n {
        seq.clear();
        for _ in 0..len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seq.push(((x >> 33) % config.vocab_size as u64) as u32);
        }
        b.push(&seq);
    }
    b
}

impl Backend for CudaEngine {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            device: self.device.clone(),
            precision: self.precision_name.into(),
            max_batch_size: self.max.batch,
            max_batch_tokens: self.max_tokens,
            max_seq_len: self.max.seq,
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn concurrency(&self) -> usize {
        self.slots.len()
    }

    fn device_memory_bytes(&self) -> Option<u64> {
        let r = &self.report;
        Some((r.weight_bytes + self.slots.len() * r.workspace_bytes) as u64)
    }

    fn embed(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.run(batch, false)
    }

    /// A sync on an idle slot's stream: a sticky fault (lost context)
    /// shows there. With every slot busy the engine is running batches,
    /// which report their own faults.
    fn health(&self) -> Result<()> {
        for slot in &self.slots {
            let g = match slot.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => continue,
            };
            g.ctx.bind_to_thread().map_err(drv("bind context"))?;
            // SAFETY: the stream is live while the slot is.
            return unsafe { cr::stream::synchronize(g.stream) }.map_err(drv("health check"));
        }
        Ok(())
    }

    /// L2 normalization inside the pooling kernel.
    fn embed_normalized(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.run(batch, true)
    }
}

impl CudaEngine {
    fn run(&self, batch: &TokenBatch, normalize: bool) -> Result<Vec<f32>> {
        batch.validate(self.config.vocab_size, self.max.seq)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut g = self.acquire()?;
        let r = self.forward(&mut g, batch, normalize);
        if r.is_err() {
            // Leave the stream idle for the next batch; a sticky error
            // (the context is lost) will show up there too.
            // SAFETY: the stream is live.
            let _ = unsafe { cr::stream::synchronize(g.stream) };
        }
        r
    }
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        // Slot 0 owns the weights the others use: it goes last.
        while let Some(slot) = self.slots.pop() {
            drop(slot);
        }
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
        }
    }
}
