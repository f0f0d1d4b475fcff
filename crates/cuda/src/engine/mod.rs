//! The CUDA engine: a plan loaded onto one GPU. Everything the MAX profile
//! needs is allocated at load; a batch only copies ids in, launches, and
//! copies pooled vectors out.
//!
//! Layers, each its own module:
//! - `options`: [`EngineOptions`], the tuning switches the caller passes at load;
//! - `slot`: execution slots (stream, buffers, staging, kernels, GEMM handles)
//!   and taking a free one;
//! - `graphs`: CUDA graph capture and the padded shapes graphs run at;
//! - `launch`: kernel launches, plain or early (programmatic dependent launch);
//! - `forward`: staging a batch and the forward pass as the model's stages;
//! - `quantized`: the 8-bit plans' forward pass;
//! - `tune`: GEMM algorithm timing for `embedrt build`;
//! - `timing`: per-stage GPU times.
//!
//! Kernels are named in one table (`crate::kernels::Kernel`); the CUDA C is in
//! `crates/cuda/kernels/*.cu`.

use std::ffi::CString;
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, TryLockError};

use cudarc::driver::{result as cr, sys as cu, CudaContext};
use embedrt_core::{Backend, BackendInfo, Error, ModelConfig, PoolingMode, Result, TokenBatch};

use crate::gemm::GemmKind;
use crate::plan::{
    check_target, layer_tensor, workspace_layout, Plan, Precision, Shape, GEMM_WORKSPACE_BYTES,
};
use crate::probe;
use slot::Gpu;

pub use options::{
    Attention, EngineOptions, FfnGemm, Gelu, LargeBatches, SmallLayerNorm, WgmmaAttention,
    DEFAULT_SLOTS, MAX_SLOTS,
};

fn drv(what: &str) -> impl Fn(cr::DriverError) -> Error + '_ {
    move |e| crate::fault::driver_fault(what, e)
}

/// Kernel argument list: pointers to the values, as cuLaunchKernel wants.
macro_rules! kargs {
    ($($v:expr),* $(,)?) => {
        &mut [$(&$v as *const _ as *mut ::std::ffi::c_void),*]
    };
}

// After kargs!: macro_rules are in scope only textually below them.
mod attention;
mod forward;
mod graphs;
pub(crate) mod launch;
mod options;
mod quantized;
mod slot;
mod timing;
mod tune;

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
    /// Large batches one at a time (`EngineOptions::large_batches`): the
    /// event after the last large batch's kernels.
    large_tail: Option<Mutex<LargeTail>>,
}

/// The `done` event of the slot that launched the last large batch (None
/// before the first). Only touched under its mutex.
struct LargeTail(Option<cu::CUevent>);

// SAFETY: the event belongs to a slot of the same engine, which outlives it;
// it is only recorded and waited on under the mutex.
unsafe impl Send for LargeTail {}

/// Free memory left over after all slots, below which fewer slots are made.
const SLOT_MARGIN_BYTES: usize = 512 << 20;

impl CudaEngine {
    /// Loads `plan` onto GPU `ordinal` with `options`: checks the target,
    /// allocates all memory, uploads weights, compiles (or finds cached)
    /// kernels, captures the single-sentence graphs.
    pub fn load(plan: &Plan, ordinal: usize, options: &EngineOptions) -> Result<Self> {
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
        if let Some(q) = &h.quant {
            layout.extend(crate::qgemm::quant_workspace_layout(&config, &h.profile, q));
        }
        let workspace_bytes: usize = layout.iter().map(|(_, b)| b).sum();
        let needed = h.weight_bytes + workspace_bytes;
        let (free, total) = cr::mem_get_info().map_err(drv("memory info"))?;
        let wanted = options.slots.clamp(1, MAX_SLOTS);
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
        let mut gpus = vec![slot::make_slot(plan, &ctx, cc, &layout, None, options)?];
        let weights = gpus[0].weights;
        for _ in 1..slots {
            gpus.push(slot::make_slot(
                plan,
                &ctx,
                cc,
                &layout,
                Some(weights),
                options,
            )?);
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
            large_tail: (options.large_batches)
                .serial(h.quant.is_some())
                .then(|| Mutex::new(LargeTail(None))),
        };
        engine.capture_small_graphs()?;
        Ok(engine)
    }

    pub fn report(&self) -> &LoadReport {
        &self.report
    }

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

impl Drop for CudaEngine {
    fn drop(&mut self) {
        // Slot 0 owns the weights the others use: it goes last.
        while let Some(slot) = self.slots.pop() {
            drop(slot);
        }
    }
}
