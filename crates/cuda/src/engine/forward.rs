//! The float encoder's forward pass over an unpadded batch, as the model's
//! stages:
//!
//! ```text
//! embeddings + LayerNorm
//! per layer: QKV GEMM → attention → attn-out GEMM (+bias +residual) → LayerNorm
//!            → FFN-in GEMM (+bias) → GELU → FFN-out GEMM (+bias +residual) → LayerNorm
//! pooling (+ L2 normalization when the staged flag asks)
//! ```
//!
//! Graph buckets of 16..64 tokens fuse each linear layer with its epilogue
//! (small_linear.cu: bias, GELU, or residual + LayerNorm). Staging the batch
//! into pinned memory and the eager / graph choice are here too; the graph
//! machinery is graphs.rs, quantized plans' pass is quantized.rs.

use cudarc::driver::{result as cr, sys as cu};
use embedrt_core::{Error, PoolingMode, Result, TokenBatch};

use super::attention::{AttentionArgs, AttentionLaunch};
use super::launch::{launch, launch_with_shared};
use super::slot::{Buffers, Gpu, LayerPtrs, SmallLinear, LN_STATS_BYTES};
use super::timing::Marks;
use super::{drv, CudaEngine};
use crate::ffn_sm90::FfnInGeluSm90;
use crate::gemm::{GemmKind, Gemms};
use crate::plan::staged_u32s;

impl CudaEngine {
    /// ids | positions | offsets | normalize flag into pinned memory, padded
    /// to (tp, np): padding tokens are id 0 at position 0, padding sequences
    /// are empty. The flag is data, not a kernel argument, so one captured
    /// graph serves both.
    pub(super) fn stage(
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

    /// One batch on slot `g`: staged, run (one graph launch for small
    /// batches, else copy in + the encoder + copy out), pooled vectors back.
    pub(super) fn forward(
        &self,
        g: &mut Gpu,
        batch: &TokenBatch,
        normalize: bool,
    ) -> Result<Vec<f32>> {
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
        self.enqueue_large(g, tp, np, batch.max_seq_len())?;
        // SAFETY: pinned_out holds max.batch * h floats >= n * h.
        unsafe {
            let out = std::slice::from_raw_parts_mut(g.pinned_out, n * h);
            cr::memcpy_dtoh_async(out, g.b.pooled, stream).map_err(drv("copy out"))?;
            cr::stream::synchronize(stream).map_err(drv("batch"))?;
            Ok(out.to_vec())
        }
    }

    /// [`Self::enqueue`] for a batch too large for a graph. With
    /// `large_batches=serial` its kernels wait for the previous large batch's
    /// (whichever slot ran it): two such batches fill the GPU each, and
    /// running them side by side only makes them contend. The copy in,
    /// already queued, still overlaps the other batch.
    fn enqueue_large(&self, g: &mut Gpu, tp: usize, np: usize, max_len: usize) -> Result<()> {
        let Some(tail) = &self.large_tail else {
            return self.enqueue(g, tp, np, max_len, None);
        };
        let mut tail = tail
            .lock()
            .map_err(|_| Error::Backend("the large-batch order lock is poisoned".into()))?;
        if let Some(previous) = tail.0 {
            // SAFETY: both are live handles of this engine's slots.
            unsafe {
                cr::stream::wait_event(
                    g.stream,
                    previous,
                    cu::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT,
                )
            }
            .map_err(drv("wait for the previous batch"))?;
        }
        self.enqueue(g, tp, np, max_len, None)?;
        // SAFETY: the event and the stream are this slot's.
        unsafe { cr::event::record(g.done, g.stream) }.map_err(drv("record"))?;
        tail.0 = Some(g.done);
        Ok(())
    }

    /// Launches the whole encoder for `tp` tokens in `np` sequences (the
    /// staged buffer already on the device). With `timer`, records an event
    /// after each stage.
    pub(super) fn enqueue(
        &self,
        g: &mut Gpu,
        tp: usize,
        np: usize,
        max_len_batch: usize,
        timer: Option<&mut Vec<(&'static str, cu::CUevent)>>,
    ) -> Result<()> {
        let pass = Pass::new(self, g, tp, np, max_len_batch);
        // Quantized plans run this loop only for small batches (8-bit weights
        // in the small-token kernels); everything else is their own loop.
        if g.quant.is_some() && pass.small.is_none() {
            return self.enqueue_quant(g, tp, np, max_len_batch, timer);
        }
        let mut marks = Marks::new(g.stream, timer);
        let gemms = g
            .gemms
            .as_mut()
            .ok_or_else(|| Error::Backend("no GEMMs".into()))?;
        marks.mark("start")?;
        pass.embeddings()?;
        marks.mark("embedding+layernorm")?;
        let last = g.layers.len().saturating_sub(1);
        for (li, l) in g.layers.iter().enumerate() {
            let prev_ffn_norm = li.checked_sub(1).map(|p| g.layers[p].ffn_norm);
            pass.qkv(gemms, li, l, prev_ffn_norm)?;
            marks.mark("gemm qkv")?;
            if pass.small_attn.is_none() {
                pass.attention()?;
                marks.mark("attention")?;
            }
            if let Some(s) = pass.small {
                pass.small_tail(s, l, li == last, &mut marks)?;
                continue;
            }
            pass.attn_out_residual(gemms, li, l)?;
            marks.mark("gemm attn_out (+bias+residual)")?;
            pass.layernorm(l.attn_norm)?;
            marks.mark("layernorm")?;
            pass.ffn_in_gelu(gemms, g.ffn_sm90.as_ref(), li, l, &mut marks)?;
            pass.ffn_out_residual(gemms, li, l)?;
            marks.mark("gemm ffn_out (+bias+residual)")?;
            pass.layernorm(l.ffn_norm)?;
            marks.mark("layernorm")?;
        }
        self.launch_pool(g, tp, np)?;
        marks.mark("pooling")?;
        Ok(())
    }

    /// Sentence pooling of the final hidden states into `pooled` (fp32).
    pub(super) fn launch_pool(&self, g: &Gpu, tp: usize, np: usize) -> Result<()> {
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
            launch(
                g.f.pool,
                (np as u32, 1, 1),
                (threads, 1, 1),
                g.stream,
                kargs![hidden, offs, mode, normalize_flag, pooled],
                g.early_launch,
            )
        }
        .map_err(drv("pooling kernel"))
    }
}

/// A fused attention + attn-out kernel and the dynamic shared memory set on
/// it at load.
type AttnOut = (cu::CUfunction, u32);

/// What every launch of one batch shares, copied out of the slot (all plain
/// handles and addresses) so the layer loop can borrow the slot's GEMMs
/// mutably. Made only by [`Pass::new`] from a slot whose buffers hold the
/// batch: every launch below relies on that (the `SAFETY` notes say so).
struct Pass {
    stream: cu::CUstream,
    b: Buffers,
    tp: usize,
    np: usize,
    tokens_i: i32,
    /// LayerNorm grids: one warp per token, four tokens per 128-thread block.
    row_blocks: u32,
    eps: f32,
    hidden: usize,
    inter: usize,
    /// ids and positions inside the staged tokens buffer (the offsets: `att`).
    ids: u64,
    pos: u64,
    embeddings: (u64, u64, u64, (u64, u64)),
    embed_fn: cu::CUfunction,
    layernorm_fn: cu::CUfunction,
    gelu_fn: cu::CUfunction,
    /// The attention kernel and its shape for this batch, and the arguments
    /// the attention kernels take (the fused small attn-out kernel too).
    attention: AttentionLaunch,
    att: AttentionArgs,
    /// The small-token linear kernel for this token bucket, if it runs.
    small: Option<SmallLinear>,
    /// Its 8-bit-weight twin (quantized plans).
    small_q: Option<SmallLinear>,
    /// Batches of 16 tokens: attention inside the attn-out kernel (fp16
    /// weights, 8-bit weights); no attention launch.
    small_attn: Option<(AttnOut, Option<AttnOut>)>,
    ticket: u64,
    /// `small_layernorm=stats` on a small batch (no fused attn-out): the two
    /// statistics buffers, A for the attention LayerNorm, B for the FFN's.
    ln_stats: Option<(u64, u64)>,
    tanh_gelu: bool,
    /// A quantized plan whose table says `gelu: tanh`: its 8-bit FFN-in
    /// GEMMs take GELU's tanh form.
    quant_tanh_gelu: bool,
    /// Kernels after the first launch early (engine/launch.rs).
    early: bool,
}

impl Pass {
    fn new(e: &CudaEngine, g: &Gpu, tp: usize, np: usize, max_len_batch: usize) -> Pass {
        let c = &e.config;
        let attention =
            g.attention_launch(np, max_len_batch, c.num_attention_heads, g.early_launch);
        // Small batches (graph buckets of 16..64 tokens): linear layers with the bias,
        // GELU, residual and LayerNorm fused in (kernels/small_linear.cu).
        let bucket = match tp {
            16 | 32 | 48 | 64 if tp <= g.small_max_tokens => Some(tp / 16 - 1),
            _ => None,
        };
        let quant_program = g.quant.is_some();
        let small_q = bucket.and_then(|i| g.f.small_linear_q.get(i).copied());
        let small = bucket
            .and_then(|i| g.f.small_linear.get(i).copied())
            .filter(|_| !quant_program || small_q.is_some());
        let small_attn =
            g.f.small_attn_out
                .filter(|_| bucket == Some(0) && small.is_some())
                .map(|f| (f, g.f.small_attn_out_q))
                .filter(|(_, q)| !quant_program || q.is_some());
        let b = g.b;
        Pass {
            stream: g.stream,
            b,
            tp,
            np,
            tokens_i: tp as i32,
            row_blocks: tp.div_ceil(4) as u32,
            eps: c.layer_norm_eps,
            hidden: c.hidden_size,
            inter: c.intermediate_size,
            ids: b.tokens,
            pos: b.tokens + 4 * tp as u64,
            embeddings: (g.word, g.position, g.type0, g.emb_norm),
            embed_fn: g.f.embed,
            layernorm_fn: g.f.layernorm,
            gelu_fn: g.f.gelu,
            attention,
            att: AttentionArgs {
                // A quantized plan's program: its kernels take the 8-bit context
                // arguments (none here: fp16 context).
                quant: quant_program.then_some((0, 1.0)),
                ..g.attention_args(c, e.max.seq, b.tokens + 8 * tp as u64)
            },
            small,
            small_q,
            small_attn,
            ticket: g.ticket,
            // ln_in 2 writes the normalized rows from the first HIDDEN / 8 blocks.
            ln_stats: (g.ln_stats != 0
                && small.is_some()
                && small_attn.is_none()
                && c.intermediate_size >= c.hidden_size)
                .then_some((g.ln_stats, g.ln_stats + LN_STATS_BYTES as u64)),
            tanh_gelu: g.tanh_gelu,
            quant_tanh_gelu: g
                .quant
                .as_ref()
                .is_some_and(|q| q.gelu() == embedrt_core::quant::GeluForm::Tanh),
            early: g.early_launch,
        }
    }

    /// Word (+ position, + token type 0) embeddings and their LayerNorm into hidden.
    fn embeddings(&self) -> Result<()> {
        let (ids, pos, tokens_i, eps) = (self.ids, self.pos, self.tokens_i, self.eps);
        let (wd, po, t0, (ga, be)) = self.embeddings;
        let out = self.b.hidden;
        // SAFETY: see Pass; arguments match `embed_layernorm` in encoder.cu.
        unsafe {
            launch(
                self.embed_fn,
                (self.row_blocks, 1, 1),
                (128, 1, 1),
                self.stream,
                kargs![ids, pos, tokens_i, wd, po, t0, ga, be, out, eps],
                false,
            )
        }
        .map_err(drv("embedding kernel"))
    }

    /// hidden → qkv (+bias). Small batches where the LayerNorms run in the
    /// next kernel: the previous layer's FFN sum (scratch) → its LayerNorm
    /// (into hidden, by block 0) → qkv.
    fn qkv(
        &self,
        gemms: &mut Gemms,
        li: usize,
        l: &LayerPtrs,
        prev_ffn_norm: Option<(u64, u64)>,
    ) -> Result<()> {
        let b = &self.b;
        let Some(s) = self.small else {
            return self.gemm(gemms, li, GemmKind::Qkv, l.qkv_w, b.hidden, None, b.qkv);
        };
        let io = |x| (x, l.qkv_w, l.biases[0], 0, b.qkv);
        let (nk, ws) = ((3 * self.hidden, self.hidden), l.w_scales[0]);
        let none = (0, 0, 0);
        match prev_ffn_norm.filter(|_| self.ln_in_next(s)) {
            Some(norm) => {
                // Reads B (the FFN-out before), clears A (read by the last FFN-in).
                let st = self.ln_stats.map_or(none, |(a, b)| (0, b, a));
                self.small_linear(s, io(b.scratch), ws, nk, 0, true, norm, st)
            }
            None => self.small_linear(s, io(b.hidden), ws, nk, 0, false, (0, 0), none),
        }
    }

    /// qkv → context: one kernel over all sequences (query tiles × heads × sequences).
    fn attention(&self) -> Result<()> {
        // SAFETY: see Pass; the launch and the arguments were made for this batch.
        unsafe { self.attention.launch(&self.att, self.stream) }.map_err(drv("attention kernel"))
    }

    /// context → scratch = attn_out(context) + bias + hidden (the residual).
    fn attn_out_residual(&self, gemms: &mut Gemms, li: usize, l: &LayerPtrs) -> Result<()> {
        let b = &self.b;
        let (w, x, res, y) = (l.attn_out_w, b.context, Some(b.hidden), b.scratch);
        self.gemm(gemms, li, GemmKind::AttnOut, w, x, res, y)
    }

    /// hidden → inter = GELU(ffn_in(hidden) + bias): our Hopper GEMM with the
    /// GELU fused where chosen, else cuBLASLt then the GELU pass (or cuBLASLt's
    /// tanh GELU epilogue).
    fn ffn_in_gelu(
        &self,
        gemms: &mut Gemms,
        own: Option<&FfnInGeluSm90>,
        li: usize,
        l: &LayerPtrs,
        marks: &mut Marks,
    ) -> Result<()> {
        let b = &self.b;
        if let Some(ffn) = own {
            // SAFETY: see Pass; the tensor maps were made for this slot's buffers.
            unsafe { ffn.launch(li, l.biases[2], b.inter, self.tp, self.stream) }?;
            return marks.mark("ffn_in+gelu (own wgmma GEMM)");
        }
        self.gemm(
            gemms,
            li,
            GemmKind::FfnIn,
            l.ffn_in_w,
            b.hidden,
            None,
            b.inter,
        )?;
        marks.mark("gemm ffn_in (+bias)")?;
        if !self.tanh_gelu {
            self.gelu(b.inter, (self.tp * self.inter) as i64)?;
            marks.mark("gelu")?;
        }
        Ok(())
    }

    /// inter → scratch = ffn_out(inter) + bias + hidden (the residual).
    fn ffn_out_residual(&self, gemms: &mut Gemms, li: usize, l: &LayerPtrs) -> Result<()> {
        let b = &self.b;
        let (w, x, res, y) = (l.ffn_out_w, b.inter, Some(b.hidden), b.scratch);
        self.gemm(gemms, li, GemmKind::FfnOut, w, x, res, y)
    }

    /// Post-attention and post-FFN LayerNorm: scratch (sum with the residual,
    /// from the GEMM epilogue) normalized into hidden.
    fn layernorm(&self, (ga, be): (u64, u64)) -> Result<()> {
        let (b, tokens_i, eps) = (self.b, self.tokens_i, self.eps);
        // SAFETY: see Pass; arguments match `layernorm` in encoder.cu.
        unsafe {
            launch(
                self.layernorm_fn,
                (self.row_blocks, 1, 1),
                (128, 1, 1),
                self.stream,
                kargs![b.scratch, tokens_i, ga, be, b.hidden, eps],
                self.early,
            )
        }
        .map_err(drv("layernorm kernel"))
    }

    /// Exact-erf GELU in place over `n` values.
    fn gelu(&self, x: u64, n: i64) -> Result<()> {
        let blocks = (n as usize).div_ceil(256 * 8).clamp(1, 132 * 16) as u32;
        // SAFETY: see Pass; x holds n values; arguments match `gelu` in encoder.cu.
        unsafe {
            launch(
                self.gelu_fn,
                (blocks, 1, 1),
                (256, 1, 1),
                self.stream,
                kargs![x, n],
                self.early,
            )
        }
        .map_err(drv("gelu kernel"))
    }

    /// The rest of a layer for small batches, each linear layer one kernel
    /// with its epilogue: attn-out + residual + LayerNorm, FFN-in + GELU,
    /// FFN-out + residual + LayerNorm. Where the kernel takes the LayerNorm
    /// into the next one (`ln_in_shared`), attn-out and FFN-out only add the
    /// residual and FFN-in (then the next layer's QKV) normalizes; the last
    /// layer's FFN-out keeps it, for the pooling.
    fn small_tail(
        &self,
        s: SmallLinear,
        l: &LayerPtrs,
        last_layer: bool,
        marks: &mut Marks,
    ) -> Result<()> {
        let (b, hid, inter, ws) = (&self.b, self.hidden, self.inter, l.w_scales);
        let next = self.ln_in_next(s);
        let io = (b.context, l.attn_out_w, l.biases[1], b.hidden, b.scratch);
        // With statistics: (out, in, clear) buffers of each kernel; see qkv.
        let none = (0, 0, 0);
        let (sum_only, attn_st, ffn_in_st, ffn_out_st, last_st) = match self.ln_stats {
            Some((a, bb)) => (5, (a, 0, 0), (0, a, bb), (bb, 0, 0), (0, 0, a)),
            None => (3, none, none, none, none),
        };
        // attn-out (with the attention itself for 16 tokens): the sum only, or
        // normalized too.
        let epilogue = if next { sum_only } else { 2 };
        match self.small_attn {
            Some(fused) => {
                self.small_attn_out(fused, io, ws[1], epilogue, l.attn_norm)?;
                marks.mark("small attention+attn_out")?;
            }
            None => {
                let st = attn_st;
                self.small_linear(s, io, ws[1], (hid, hid), epilogue, false, l.attn_norm, st)?;
                marks.mark("small attn_out")?;
            }
        }
        // FFN-in + GELU, normalizing its input first where attn-out did not.
        let (x, norm) = if next {
            (b.scratch, l.attn_norm)
        } else {
            (b.hidden, (0, 0))
        };
        let io = (x, l.ffn_in_w, l.biases[2], 0, b.inter);
        // Epilogue 4: GELU's tanh form, in a float plan that runs it or for an
        // 8-bit FFN-in in a `gelu: tanh` table's plan.
        let gelu = if self.tanh_gelu || (ws[2] != 0 && self.quant_tanh_gelu) {
            4
        } else {
            1
        };
        let st = if next { ffn_in_st } else { none };
        self.small_linear(s, io, ws[2], (inter, hid), gelu, next, norm, st)?;
        marks.mark("small ffn_in+gelu")?;
        let io = (b.inter, l.ffn_out_w, l.biases[3], b.hidden, b.scratch);
        if next && !last_layer {
            let st = ffn_out_st;
            self.small_linear(s, io, ws[3], (hid, inter), sum_only, false, (0, 0), st)?;
            marks.mark("small ffn_out+residual")
        } else {
            // The last layer keeps the ticket (pooling reads hidden) and clears A.
            let st = if next { last_st } else { none };
            self.small_linear(s, io, ws[3], (hid, inter), 2, false, l.ffn_norm, st)?;
            marks.mark("small ffn_out+layernorm")
        }
    }

    /// Whether this batch's LayerNorms run in the next kernel: from shared
    /// memory (`small_layernorm=next`, where the rows fit) or from the
    /// statistics buffers (`stats`).
    fn ln_in_next(&self, s: SmallLinear) -> bool {
        s.ln_in_shared.is_some() || self.ln_stats.is_some()
    }

    /// `y = x wᵀ + bias` for `n` outputs over `k` inputs, then the epilogue:
    /// 0 none, 1 GELU (4 its tanh form), 2 + residual and the LayerNorm of whole rows into
    /// hidden, 3 + residual, 5 + residual and the rows' statistics into
    /// `stats_out`. With `ln_in`, x holds rows before their LayerNorm (gamma,
    /// beta): the kernel normalizes them (with `stats_in` where not 0), and
    /// writes them into hidden. `stats_clear` (not 0) is zeroed.
    /// A `w_scale` (not 0) makes w 8-bit codes with those per-channel scales.
    #[allow(clippy::too_many_arguments)]
    fn small_linear(
        &self,
        s: SmallLinear,
        (x, w, bias, res, y): (u64, u64, u64, u64, u64),
        w_scale: u64,
        (n, k): (usize, usize),
        epilogue: i32,
        ln_in: bool,
        (gamma, beta): (u64, u64),
        (stats_out, stats_in, stats_clear): (u64, u64, u64),
    ) -> Result<()> {
        let warps = (k / 32).div_ceil(4).clamp(4, 16) as u32;
        let (n_i, k_i) = (n as i32, k as i32);
        let (eps, ticket, ln_out) = (self.eps, self.ticket, self.b.hidden);
        let (grid, block) = (((n / 8) as u32, 1, 1), (32 * warps, 1, 1));
        let f = for_weights(s, self.small_q, w_scale)?;
        // Both kernels of a bucket agree on ln_in (slot.rs load_kernels).
        let (shared, ln_in_i) = if ln_in && stats_in != 0 {
            (0, 2i32)
        } else {
            match f.ln_in_shared.filter(|_| ln_in) {
                Some(bytes) => (bytes, 1),
                None => (0, 0),
            }
        };
        // SAFETY: see Pass; arguments match SMALL_LINEAR / SMALL_LINEAR_Q in
        // small_linear.cu, and `shared` is the limit set on the function at load.
        // The fp16 kernels take w_scale too (unused: 0).
        unsafe {
            let args = kargs![
                x,
                w,
                w_scale,
                bias,
                res,
                y,
                n_i,
                k_i,
                epilogue,
                ln_in_i,
                gamma,
                beta,
                eps,
                ticket,
                ln_out,
                stats_out,
                stats_in,
                stats_clear
            ];
            launch_with_shared(f.f, grid, block, shared, self.stream, args, self.early)
        }
        .map_err(drv("small linear kernel"))
    }

    /// Attention of a 16-token batch and attn-out in one kernel
    /// (`small_attn_out*`): `y = attention(qkv) attn_outᵀ + bias + residual`,
    /// then the LayerNorm (epilogue 2) or not (3), as [`Self::small_linear`].
    fn small_attn_out(
        &self,
        (fp16, q): (AttnOut, Option<AttnOut>),
        (_context, w, bias, res, y): (u64, u64, u64, u64, u64),
        w_scale: u64,
        epilogue: i32,
        (gamma, beta): (u64, u64),
    ) -> Result<()> {
        let b = &self.b;
        let (f, shared) = for_weights(fp16, q, w_scale)?;
        let hid = self.hidden;
        // A warp a head for the attention; the linear part splits K over them.
        let warps = ((hid / 32).div_ceil(4).max(self.att.heads as usize)).clamp(4, 16) as u32;
        let (n_i, k_i, np_i) = (hid as i32, hid as i32, self.np as i32);
        let a = self.att;
        let (offs, heads, scale, max_len) = (a.offsets, a.heads, a.scale, a.max_len);
        let (rb, bk, qkv) = (a.rel_bias, a.bucket, a.qkv);
        let (eps, ticket, ln_out) = (self.eps, self.ticket, b.hidden);
        // SAFETY: see Pass; arguments match SMALL_ATTN_OUT in small_linear.cu;
        // `shared` is the limit set on both functions at load (slot.rs).
        unsafe {
            let args = kargs![
                qkv, offs, np_i, heads, scale, rb, bk, max_len, w, w_scale, bias, res, y, n_i, k_i,
                epilogue, gamma, beta, eps, ticket, ln_out
            ];
            launch_with_shared(
                f,
                ((hid / 8) as u32, 1, 1),
                (32 * warps, 1, 1),
                shared,
                self.stream,
                args,
                self.early,
            )
        }
        .map_err(drv("small attention+attn-out kernel"))
    }

    /// One cuBLASLt GEMM of layer `li` over this batch's tokens.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        gemms: &mut Gemms,
        li: usize,
        kind: GemmKind,
        w: u64,
        x: u64,
        res: Option<u64>,
        y: u64,
    ) -> Result<()> {
        gemms.run(li, kind, self.tp, w, x, res, y, self.stream as _)
    }
}

/// The small-token kernel for a weight: its 8-bit twin `q` where the weight
/// has scales (`w_scale` not 0: 8-bit codes), else the fp16 kernel.
fn for_weights<K>(fp16: K, q: Option<K>, w_scale: u64) -> Result<K> {
    match q {
        Some(q) if w_scale != 0 => Ok(q),
        None if w_scale != 0 => Err(Error::Backend(
            "an 8-bit weight without the small-token 8-bit kernel".into(),
        )),
        _ => Ok(fp16),
    }
}
