//! Quantized plans (`--precision int8|fp8`) on the GPU: the encoder with its
//! GEMMs in 8 bits. Per GEMM not in the plan's fallback list:
//!
//! ```text
//! producer kernel ──► Xq (8-bit, act scale) ──► cuBLASLt 8-bit GEMM ──► ACC (32-bit)
//!                                                                        │
//!            epilogue: ACC * act_scale * w_scale[n] + bias (+GELU | +residual, LayerNorm)
//!                      ──► fp16 and/or the next GEMM's Xq
//! ```
//! The producers of a GEMM input write its quantized copy from their fp32
//! values: the embedding LayerNorm and the LayerNorms (QKV and FFN-in
//! inputs), the attention kernel (attn_out input), the FFN-in epilogue's GELU
//! (FFN-out input). No pass quantizes an activation already in memory.
//! LayerNorm, softmax, pooling run in fp32; attention reads and writes fp16
//! Q, K, V as in fp16 plans (its matmuls are a small part of the time at these
//! lengths and fp16 keeps its accuracy; docs/arch/quant-gpu.md). Fallback
//! GEMMs run the fp16 plans' cuBLASLt path on fp16 weights: the plan's own, or,
//! with `fallback_weights: 8bit`, their 8-bit weight widened into the slot's
//! `quant_fallback_w` buffer (`dequant_weight`) right before the GEMM.
//!
//! With `gemm_output` fp16 (fp8 on sm_90, qgemm.rs), cuBLASLt itself applies
//! the scales, bias and residual and writes fp16 where the fp16 GEMM would:
//! the 8-bit GEMM then takes the fp16 GEMM's place and the fp16 plans' GELU
//! (`gelu_q` when FFN-out is quantized) and LayerNorm (`layernorm_q`) follow;
//! with a `gelu: tanh` table the FFN-in GEMM applies GELU itself and writes
//! FFN-out's fp8 input (`qgemm::SiteForm`), so no GELU pass runs.

use embedrt_core::quant::{GeluForm, GemmSite, QuantFormat};

use super::attention::{AttentionArgs, TcAttention};
use super::*;
use crate::gemm::algo_to_hex;
use crate::plan::GemmChoice;
use crate::qgemm::{gemm_rows, QGemms, SiteForm, SitePointers};

/// One quantized GEMM: its 8-bit weight, per-channel scales, input scale.
#[derive(Clone, Copy)]
struct QuantGemm {
    weight: u64,
    w_scale: u64,
    act_scale: f32,
}

struct QuantFunctions {
    embed: cu::CUfunction,
    layernorm: cu::CUfunction,
    gelu: cu::CUfunction,
    epilogue_bias: cu::CUfunction,
    epilogue_ln: cu::CUfunction,
    dequant_weight: cu::CUfunction,
}

/// A slot's buffers for the quantized pass (`qgemm::quant_workspace_layout`;
/// 0 where the plan needs none).
pub(super) struct QuantBuffers {
    pub act: u64,
    pub acc: u64,
    pub gemm_ws: u64,
    /// The fp16 weight an 8-bit fallback GEMM is widened into.
    pub fallback_w: u64,
}

/// A slot's quantized-plan state: kernels, the 8-bit GEMMs, the per-GEMM
/// weights and scales (None: kept in fp16), the 8-bit input and 32-bit
/// accumulator buffers.
pub(super) struct QuantState {
    f: QuantFunctions,
    gemms: QGemms,
    /// [layer][GemmKind as usize].
    layers: Vec<[Option<QuantGemm>; 4]>,
    act: u64,
    acc: u64,
    /// Where 8-bit fallback weights are widened to fp16 (0: the plan has none).
    fallback_w: u64,
    /// The GELU after quantized FFN-in GEMMs (the plan's table).
    gelu: GeluForm,
    /// Per layer: the scale of the e4m3 Q, K, V its fp8-output QKV GEMM
    /// writes for `attention_tc_q8` (None: fp16 Q, K, V).
    qkv8_scales: Vec<Option<f32>>,
    /// `attention_tc_q8` (attention_tc's block shape), where some layer
    /// reads fp8 Q, K, V.
    attention_q8: Option<TcAttention>,
    /// Device memory this state owns (fp16 output: the combined scale
    /// vectors and B's vector of ones), freed on drop.
    owned: Vec<u64>,
}

impl Drop for QuantState {
    fn drop(&mut self) {
        // SAFETY: allocations made by `QuantState::new` in the slot's context,
        // which Gpu::drop binds (after draining the stream) before dropping this.
        for p in self.owned.drain(..) {
            let _ = unsafe { cr::free_sync(p) };
        }
    }
}

/// Refuses what the quantized kernels cannot run, before any GPU work.
pub(super) fn check_plan(plan: &Plan, name: &str, cc: (i32, i32)) -> Result<()> {
    let Some(q) = &plan.header.quant else {
        return Ok(());
    };
    let format = q.format();
    if format == QuantFormat::Fp8 && cc < (8, 9) {
        return Err(Error::Backend(format!(
            "fp8 plans need compute capability 8.9 or newer (Ada, Hopper); {name} is {}.{}; build an int8 plan for it",
            cc.0, cc.1
        )));
    }
    if plan.header.precision != Precision::Fp16 {
        return Err(Error::Model(format!(
            "this {} plan keeps its other tensors in {}; quantized plans are built on fp16",
            format.name(),
            plan.header.precision.name()
        )));
    }
    crate::quant_plan::check_gemm_output(q.gemm_output, format, name, cc)?;
    crate::quant_plan::check_table_forms(
        q.gemm_output,
        q.weight_scales,
        q.gelu,
        q.attention_inputs,
    )?;
    crate::qgemm::check_dims(&plan.header.config, format)
}

impl QuantState {
    pub(super) fn new(
        plan: &Plan,
        module: cu::CUmodule,
        weights: u64,
        buffers: QuantBuffers,
        tc_attention: bool,
    ) -> Result<Option<Self>> {
        let QuantBuffers {
            act,
            acc,
            gemm_ws,
            fallback_w,
        } = buffers;
        let Some(q) = &plan.header.quant else {
            return Ok(None);
        };
        let config = &plan.header.config;
        let func = |name: &str| -> Result<cu::CUfunction> {
            let c = CString::new(name).unwrap_or_default();
            // SAFETY: the module is loaded and outlives the state.
            unsafe { cr::module::get_function(module, c) }.map_err(drv("kernel lookup"))
        };
        let f = QuantFunctions {
            embed: func("embed_layernorm_q")?,
            layernorm: func("layernorm_q")?,
            gelu: func("gelu_q")?,
            epilogue_bias: func("epilogue_bias")?,
            epilogue_ln: func("epilogue_ln")?,
            // SAFETY: the module is loaded and outlives the state.
            dequant_weight: unsafe {
                crate::kernels::function(module, crate::kernels::Kernel::DequantWeight)
            }?,
        };
        let t = |n: &str| -> Result<u64> { Ok(weights + plan.tensor(n)?.offset as u64) };
        let mut layers = Vec::new();
        for layer in 0..config.num_hidden_layers {
            let mut row = [None; 4];
            for kind in GemmKind::ALL {
                let site = GemmSite { layer, kind };
                if q.is_fallback(site) {
                    if q.weight_is_8bit(site) {
                        check_8bit_weight(plan, site)?;
                        if fallback_w == 0 {
                            return Err(Error::Backend(
                                "a plan with 8-bit fallback weights got no buffer to widen \
                                 them into"
                                    .into(),
                            ));
                        }
                    }
                    continue;
                }
                let act_scale = q.act_scale(site).ok_or_else(|| {
                    Error::Model(format!(
                        "quantized plan lacks the input scale of {}; rebuild it",
                        site.name()
                    ))
                })?;
                let w = check_8bit_weight(plan, site)?;
                row[kind as usize] = Some(QuantGemm {
                    weight: t(&w)?,
                    w_scale: t(&format!("{w}_scale"))?,
                    act_scale,
                });
            }
            layers.push(row);
        }
        let qkv8_scales: Vec<Option<f32>> = (0..layers.len())
            .map(|l| {
                q.qkv_output_scale(l)
                    .filter(|_| layers[l][GemmKind::Qkv as usize].is_some())
            })
            .collect();
        let attention_q8 = if qkv8_scales.iter().any(Option::is_some) {
            if !tc_attention {
                return Err(Error::Model(
                    "this fp8 plan's attention reads fp8 Q, K, V, which only the tensor-core \
                     attention kernel does (head size a multiple of 16, MPNet up to 768 tokens, \
                     attention option not scalar); rebuild it from a table calibrated with \
                     --attention-inputs float"
                        .into(),
                ));
            }
            // SAFETY: the module is loaded and outlives the state.
            let f =
                unsafe { crate::kernels::function(module, crate::kernels::Kernel::AttentionTcQ8) }?;
            Some(TcAttention {
                f,
                most_warps: 8,
                row_tiles: 1,
                short: None,
                pipe: None,
                wgmma: None,
            })
        } else {
            None
        };
        let output = q.gemm_output;
        if !output.is_fp16() && acc == 0 {
            // quant_workspace_layout allocates accumulators for acc32 plans only.
            return Err(Error::Backend(
                "an acc32 quantized plan got no accumulator buffer".into(),
            ));
        }
        let mut owned = Vec::new();
        let mut sites = vec![[None; 4]; layers.len()];
        let mut ones = 0u64;
        if output.is_fp16() {
            let made = fp16_scales(plan, weights, &layers, q.gelu, &qkv8_scales, &mut owned);
            match made {
                Ok((s, o)) => {
                    sites = s;
                    ones = o;
                }
                Err(e) => {
                    free_all(&mut owned);
                    return Err(e);
                }
            }
        }
        let gemms = QGemms::new(
            q.format(),
            output,
            (config.hidden_size, config.intermediate_size),
            gemm_ws,
            GEMM_WORKSPACE_BYTES,
            &sites,
            ones,
            &q.gemm_algos,
        );
        let gemms = match gemms {
            Ok(g) => g,
            Err(e) => {
                free_all(&mut owned);
                return Err(e);
            }
        };
        Ok(Some(QuantState {
            f,
            gemms,
            layers,
            act,
            acc,
            fallback_w,
            gelu: q.gelu,
            qkv8_scales,
            attention_q8,
            owned,
        }))
    }

    /// Whether the 8-bit GEMMs write fp16 (cuBLASLt's epilogue) instead of
    /// 32-bit accumulators for our epilogue kernels.
    fn fp16_out(&self) -> bool {
        self.gemms.output().is_fp16()
    }

    /// The GELU after quantized FFN-in GEMMs.
    pub(super) fn gelu(&self) -> GeluForm {
        self.gelu
    }

    /// The quantized GEMM at (layer, kind); None: fp16 (or past the last layer).
    fn site(&self, layer: usize, kind: GemmKind) -> Option<QuantGemm> {
        self.layers.get(layer).and_then(|r| r[kind as usize])
    }

    /// (buffer, scale) a producer writes the quantized input of (layer, kind)
    /// to: (0, 1) where that GEMM runs in fp16 (the kernels then skip it).
    fn sink(&self, layer: usize, kind: GemmKind) -> (u64, f32) {
        match self.site(layer, kind) {
            Some(s) => (self.act, s.act_scale),
            None => (0, 1.0),
        }
    }
}

/// Refuses an 8-bit weight (a quantized GEMM's, or an 8-bit fallback's) the
/// plan does not hold as `n x k` bytes with `n` fp32 scales; returns the
/// weight's tensor name.
fn check_8bit_weight(plan: &Plan, site: GemmSite) -> Result<String> {
    let c = &plan.header.config;
    let (n, k) = site.kind.dims(c.hidden_size, c.intermediate_size);
    let w = layer_tensor(site.layer, &format!("{}.weight", site.kind.name()));
    for (name, bytes, what) in [
        (w.clone(), n * k, format!("a {n} x {k} 8-bit weight")),
        (format!("{w}_scale"), 4 * n, format!("{n} fp32 scales")),
    ] {
        let e = plan.tensor(&name)?;
        if e.bytes != bytes {
            return Err(Error::Model(format!(
                "plan tensor {name} holds {} bytes, {what} needs {bytes}; rebuild the plan",
                e.bytes
            )));
        }
    }
    Ok(w)
}

fn free_all(owned: &mut Vec<u64>) {
    for p in owned.drain(..) {
        // SAFETY: allocations made by `fp16_scales`, not used afterwards.
        let _ = unsafe { cr::free_sync(p) };
    }
}

/// fp16 output: uploads, per quantized GEMM, `act_scale * w_scale[n]` (A's
/// outer-vector scale: cuBLASLt multiplies output row n by it; per tensor,
/// its first value is the scalar scale), and one vector of 1.0 for B as long
/// as the padded token budget. With `gelu` tanh, a quantized FFN-in takes
/// cuBLASLt's GELU epilogue, and where FFN-out is quantized too it writes
/// FFN-out's fp8 input (scaled by `1 / act_scale`, uploaded after the
/// vectors); a quantized QKV with a `qkv8_scales` entry writes e4m3 Q, K, V
/// (D scaled by its inverse) for the fp8-input attention. Returns each site's pointers and the ones vector. The token
/// budget must be a multiple of 16: the fp16 GEMMs write (and read the
/// residual of) the padded rows in the fp16 activation buffers, which hold
/// the budget's rows.
fn fp16_scales(
    plan: &Plan,
    weights: u64,
    layers: &[[Option<QuantGemm>; 4]],
    gelu: GeluForm,
    qkv8_scales: &[Option<f32>],
    owned: &mut Vec<u64>,
) -> Result<(Vec<[Option<SitePointers>; 4]>, u64)> {
    let budget = plan.header.profile.token_budget();
    if gemm_rows(budget) != budget {
        return Err(Error::Model(format!(
            "fp16-output 8-bit GEMMs need a token budget that is a multiple of 16, this plan has \
             {budget}; rebuild it with --max-batch-tokens {}",
            gemm_rows(budget)
        )));
    }
    let config = &plan.header.config;
    let mut host: Vec<f32> = Vec::new();
    let mut offsets = vec![[None; 4]; layers.len()];
    let mut forms = vec![[SiteForm::default(); 4]; layers.len()];
    for (li, row) in layers.iter().enumerate() {
        for kind in GemmKind::ALL {
            let Some(s) = row[kind as usize] else {
                continue;
            };
            let (n, _) = kind.dims(config.hidden_size, config.intermediate_size);
            let name = layer_tensor(li, &format!("{}.weight_scale", kind.name()));
            let e = plan.tensor(&name)?;
            let bytes = plan.weights.get(e.offset..e.offset + e.bytes);
            let bytes = match bytes {
                Some(b) if e.bytes == 4 * n => b,
                _ => {
                    return Err(Error::Model(format!(
                        "plan tensor {name} is not {n} fp32 scales inside the weights; rebuild the plan"
                    )))
                }
            };
            // n is a multiple of 16: every vector starts 64-byte aligned.
            offsets[li][kind as usize] = Some(host.len());
            let start = host.len();
            host.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| s.act_scale * f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            let gelu = gelu == GeluForm::Tanh && kind == GemmKind::FfnIn;
            let qkv8 = kind == GemmKind::Qkv && qkv8_scales[li].is_some();
            forms[li][kind as usize] = SiteForm {
                per_tensor: host[start..].iter().all(|&v| v == host[start]),
                gelu,
                fp8_out: qkv8 || (gelu && row[GemmKind::FfnOut as usize].is_some()),
            };
        }
    }
    // The fp8-output sites' D scales, 16 floats apart (64-byte aligned like the rest).
    let mut d_scales = vec![[0usize; 4]; layers.len()];
    for (li, row) in layers.iter().enumerate() {
        let ffn_in = GemmKind::FfnIn as usize;
        let mut d_scale = |kind: usize, s: f32| {
            d_scales[li][kind] = host.len();
            host.push(1.0 / s);
            host.extend([0.0; 15]);
        };
        if let (true, Some(next)) = (forms[li][ffn_in].fp8_out, row[GemmKind::FfnOut as usize]) {
            d_scale(ffn_in, next.act_scale);
        }
        let qkv = GemmKind::Qkv as usize;
        if let (true, Some(s)) = (forms[li][qkv].fp8_out, qkv8_scales[li]) {
            d_scale(qkv, s);
        }
    }
    let alloc = |owned: &mut Vec<u64>, what: &str, values: &[f32]| -> Result<u64> {
        let bytes = (values.len() * 4).max(256);
        // SAFETY: plain device allocation, recorded in `owned` and freed with the state.
        let p = unsafe { cr::malloc_sync(bytes) }.map_err(|e| {
            Error::Backend(format!(
                "out of GPU memory allocating {what} ({bytes} bytes): {e}"
            ))
        })?;
        owned.push(p);
        if !values.is_empty() {
            // SAFETY: p holds at least values.len() floats.
            unsafe { cr::memcpy_htod_sync(p, values) }.map_err(drv("upload"))?;
        }
        Ok(p)
    };
    let scales = alloc(owned, "8-bit GEMM scales", &host)?;
    let ones = alloc(owned, "8-bit GEMM scales", &vec![1f32; budget])?;
    let mut sites = vec![[None; 4]; layers.len()];
    for (li, row) in offsets.iter().enumerate() {
        for kind in GemmKind::ALL {
            if let Some(off) = row[kind as usize] {
                let bias = plan.tensor(&layer_tensor(li, &format!("{}.bias", kind.name())))?;
                let bias = weights + bias.offset as u64;
                let form = forms[li][kind as usize];
                let d_off = d_scales[li][kind as usize];
                sites[li][kind as usize] = Some(SitePointers {
                    bias,
                    scale: scales + 4 * off as u64,
                    d_scale: if form.fp8_out {
                        scales + 4 * d_off as u64
                    } else {
                        0
                    },
                    form,
                });
            }
        }
    }
    Ok((sites, ones))
}

impl CudaEngine {
    /// The encoder of a quantized plan for `tp` tokens in `np` sequences (the
    /// staged tokens already on the device); as `enqueue` for float plans.
    pub(super) fn enqueue_quant(
        &self,
        g: &mut Gpu,
        tp: usize,
        np: usize,
        max_len_batch: usize,
        mut timer: Option<&mut Vec<(&'static str, cu::CUevent)>>,
    ) -> Result<()> {
        let c = &self.config;
        let (hid, inter) = (c.hidden_size, c.intermediate_size);
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
        let b = g.b;
        let (ids, pos, offs) = (b.tokens, b.tokens + 4 * tp as u64, b.tokens + 8 * tp as u64);
        let eps = c.layer_norm_eps;
        let tokens_i = tp as i32;
        let row_blocks = tp.div_ceil(4) as u32;
        let att = g.attention_args(c, self.max.seq, offs);
        let attention = g.attention_launch(np, max_len_batch, c.num_attention_heads, false);
        let plain_gelu = g.f.gelu;
        // fp8 Q, K, V: (kernel, threads, query blocks) for this batch.
        let q8_attention = g.quant.as_ref().and_then(|q| q.attention_q8).map(|k| {
            let (threads, queries) = k.block(max_len_batch);
            (k.f, threads as u32, max_len_batch.div_ceil(queries) as u32)
        });
        let q = g
            .quant
            .as_mut()
            .ok_or_else(|| Error::Backend("quantized plan without its GPU state".into()))?;
        let gemms = g
            .gemms
            .as_mut()
            .ok_or_else(|| Error::Backend("no GEMMs".into()))?;
        let (act, acc) = (q.act, q.acc);
        let f = &q.f;
        // Elementwise launches: 8 elements a thread, grid-stride beyond 132 x 16 blocks.
        let flat_blocks = |n: usize| n.div_ceil(256 * 8).clamp(1, 132 * 16) as u32;
        mark("start")?;
        // SAFETY: every pointer is a device buffer of this slot sized by the
        // plan's token budget (tp within it) or a tensor inside the uploaded
        // weights; kernel arguments match their signatures in kernels/*.cu.
        unsafe {
            let (qx, qs) = q.sink(0, GemmKind::Qkv);
            let (wd, po, t0, (ga, be), out) = (g.word, g.position, g.type0, g.emb_norm, b.hidden);
            cr::launch_kernel(
                f.embed,
                (row_blocks, 1, 1),
                (128, 1, 1),
                0,
                stream,
                kargs![ids, pos, tokens_i, wd, po, t0, ga, be, out, eps, qx, qs],
            )
            .map_err(drv("embedding kernel"))?;
            mark("embedding+layernorm(+quantize)")?;
            let epilogue_bias = |acc: u64,
                                 n: usize,
                                 s: QuantGemm,
                                 bias: u64,
                                 gelu: i32,
                                 out: u64,
                                 (qx, qs): (u64, f32)| {
                let n_i = n as i32;
                let (a_s, w_s) = (s.act_scale, s.w_scale);
                cr::launch_kernel(
                    f.epilogue_bias,
                    (flat_blocks(tp * n), 1, 1),
                    (256, 1, 1),
                    0,
                    stream,
                    kargs![acc, tokens_i, n_i, a_s, w_s, bias, gelu, out, qx, qs],
                )
                .map_err(drv("quantized GEMM epilogue"))
            };
            // acc -> LayerNorm(dequant + bias + hidden) into hidden (+ quantized copy).
            let epilogue_ln =
                |s: QuantGemm, bias: u64, (ga, be): (u64, u64), (qx, qs): (u64, f32)| {
                    let (a_s, w_s, hidden) = (s.act_scale, s.w_scale, b.hidden);
                    cr::launch_kernel(
                        f.epilogue_ln,
                        (row_blocks, 1, 1),
                        (128, 1, 1),
                        0,
                        stream,
                        kargs![acc, tokens_i, a_s, w_s, bias, hidden, ga, be, hidden, eps, qx, qs],
                    )
                    .map_err(drv("quantized GEMM epilogue + layernorm"))
                };
            // scratch (fp16 GEMM + bias + residual) -> LayerNorm into hidden (+ quantized copy).
            let layernorm = |(ga, be): (u64, u64), (qx, qs): (u64, f32)| {
                cr::launch_kernel(
                    f.layernorm,
                    (row_blocks, 1, 1),
                    (128, 1, 1),
                    0,
                    stream,
                    kargs![b.scratch, tokens_i, ga, be, b.hidden, eps, qx, qs],
                )
                .map_err(drv("layernorm kernel"))
            };
            // A fallback GEMM's fp16 weight: the plan's, or its 8-bit weight
            // (w_scale not 0) widened into the slot's buffer first.
            let (dequant, fallback_w) = (f.dequant_weight, q.fallback_w);
            let fp16_weight = |w: u64, w_scale: u64, kind: GemmKind| -> Result<u64> {
                if w_scale == 0 {
                    return Ok(w);
                }
                let (n, k) = kind.dims(hid, inter);
                let (n_i, k_i) = (n as i32, k as i32);
                cr::launch_kernel(
                    dequant,
                    (flat_blocks(n * k), 1, 1),
                    (256, 1, 1),
                    0,
                    stream,
                    kargs![w, w_scale, n_i, k_i, fallback_w],
                )
                .map_err(drv("fallback weight kernel"))?;
                Ok(fallback_w)
            };
            // fp16 output: a quantized GEMM writes where the fp16 GEMM would, so
            // the code after it is the fp16 path's.
            let fp16_out = q.fp16_out();
            // The GELU after a quantized FFN-in: 1 exact, 2 the tanh form (epilogue_bias).
            let gelu_code = if q.gelu == GeluForm::Tanh { 2 } else { 1 };
            for (li, l) in g.layers.iter().enumerate() {
                // QKV: fp16 out, or e4m3 Q, K, V where the table says so.
                match q.site(li, GemmKind::Qkv) {
                    Some(s) if !fp16_out => {
                        let w = s.weight;
                        q.gemms
                            .run(li, GemmKind::Qkv, tp, w, act, None, acc, stream as _, None)?;
                        mark("gemm qkv (8-bit)")?;
                        epilogue_bias(acc, 3 * hid, s, l.biases[0], 0, b.qkv, (0, 1.0))?;
                        mark("epilogue qkv")?;
                    }
                    Some(s) => {
                        let (w, out) = (s.weight, b.qkv);
                        q.gemms
                            .run(li, GemmKind::Qkv, tp, w, act, None, out, stream as _, None)?;
                        mark(if q.qkv8_scales[li].is_some() {
                            "gemm qkv (8-bit, fp8 out)"
                        } else {
                            "gemm qkv (8-bit, fp16 out)"
                        })?;
                    }
                    None => {
                        let w = fp16_weight(l.qkv_w, l.w_scales[0], GemmKind::Qkv)?;
                        gemms.run(li, GemmKind::Qkv, tp, w, b.hidden, None, b.qkv, stream as _)?;
                        mark("gemm qkv (fp16)")?;
                    }
                }
                let (cq, cs) = q.sink(li, GemmKind::AttnOut);
                match (q.qkv8_scales[li], q8_attention) {
                    (Some(qkv_s), Some((att_q8, threads, blocks))) => {
                        cr::launch_kernel(
                            att_q8,
                            (blocks, att.heads as u32, np as u32),
                            (threads, 1, 1),
                            0,
                            stream,
                            kargs![
                                b.qkv,
                                qkv_s,
                                offs,
                                att.heads,
                                att.scale,
                                att.bias_table,
                                att.max_len,
                                b.context,
                                cq,
                                cs
                            ],
                        )
                        .map_err(drv("attention kernel (fp8 Q, K, V)"))?;
                        mark("attention, fp8 in(+quantize)")?;
                    }
                    _ => {
                        let args = AttentionArgs {
                            quant: Some((cq, cs)),
                            ..att
                        };
                        attention
                            .launch(&args, stream)
                            .map_err(drv("attention kernel"))?;
                        mark("attention(+quantize)")?;
                    }
                }
                let ffn_in_sink = q.sink(li, GemmKind::FfnIn);
                match q.site(li, GemmKind::AttnOut) {
                    Some(s) if !fp16_out => {
                        let w = s.weight;
                        q.gemms.run(
                            li,
                            GemmKind::AttnOut,
                            tp,
                            w,
                            act,
                            None,
                            acc,
                            stream as _,
                            None,
                        )?;
                        mark("gemm attn_out (8-bit)")?;
                        epilogue_ln(s, l.biases[1], l.attn_norm, ffn_in_sink)?;
                        mark("epilogue attn_out+layernorm")?;
                    }
                    site => {
                        match site {
                            Some(s) => {
                                q.gemms.run(
                                    li,
                                    GemmKind::AttnOut,
                                    tp,
                                    s.weight,
                                    act,
                                    Some(b.hidden),
                                    b.scratch,
                                    stream as _,
                                    None,
                                )?;
                                mark("gemm attn_out (8-bit, fp16 out)")?;
                            }
                            None => {
                                let (w, s) = (l.attn_out_w, l.w_scales[1]);
                                let w = fp16_weight(w, s, GemmKind::AttnOut)?;
                                gemms.run(
                                    li,
                                    GemmKind::AttnOut,
                                    tp,
                                    w,
                                    b.context,
                                    Some(b.hidden),
                                    b.scratch,
                                    stream as _,
                                )?;
                                mark("gemm attn_out (fp16)")?;
                            }
                        }
                        layernorm(l.attn_norm, ffn_in_sink)?;
                        mark("layernorm(+quantize)")?;
                    }
                }
                let ffn_out_sink = q.sink(li, GemmKind::FfnOut);
                // FFN-out's 8-bit input: where the GELU pass quantized it, or in the
                // fp16 FFN buffer, where an fp8-output FFN-in wrote it.
                let mut ffn_out_x = act;
                match q.site(li, GemmKind::FfnIn) {
                    Some(s) if !fp16_out => {
                        let w = s.weight;
                        q.gemms.run(
                            li,
                            GemmKind::FfnIn,
                            tp,
                            w,
                            act,
                            None,
                            acc,
                            stream as _,
                            None,
                        )?;
                        mark("gemm ffn_in (8-bit)")?;
                        // GELU'd output: quantized for an 8-bit FFN-out, else fp16.
                        let out = if ffn_out_sink.0 == 0 { b.inter } else { 0 };
                        epilogue_bias(acc, inter, s, l.biases[2], gelu_code, out, ffn_out_sink)?;
                        mark("epilogue ffn_in+gelu(+quantize)")?;
                    }
                    site => {
                        match site {
                            Some(s) => {
                                let (w, out) = (s.weight, b.inter);
                                let k = GemmKind::FfnIn;
                                q.gemms
                                    .run(li, k, tp, w, act, None, out, stream as _, None)?;
                                let form = q.gemms.form(li, k);
                                if form.fp8_out {
                                    ffn_out_x = b.inter;
                                }
                                mark(match (form.gelu, form.fp8_out) {
                                    (true, true) => "gemm ffn_in+gelu (8-bit, fp8 out)",
                                    (true, false) => "gemm ffn_in+gelu (8-bit, fp16 out)",
                                    _ => "gemm ffn_in (8-bit, fp16 out)",
                                })?;
                            }
                            None => {
                                let (w, s) = (l.ffn_in_w, l.w_scales[2]);
                                let w = fp16_weight(w, s, GemmKind::FfnIn)?;
                                gemms.run(
                                    li,
                                    GemmKind::FfnIn,
                                    tp,
                                    w,
                                    b.hidden,
                                    None,
                                    b.inter,
                                    stream as _,
                                )?;
                                mark("gemm ffn_in (fp16)")?;
                            }
                        }
                        let n = (tp * inter) as i64;
                        if q.gemms.form(li, GemmKind::FfnIn).gelu {
                            // cuBLASLt's epilogue applied it.
                        } else if ffn_out_sink.0 == 0 {
                            let x = b.inter;
                            cr::launch_kernel(
                                plain_gelu,
                                (flat_blocks(tp * inter), 1, 1),
                                (256, 1, 1),
                                0,
                                stream,
                                kargs![x, n],
                            )
                            .map_err(drv("gelu kernel"))?;
                        } else {
                            let (x, (qx, qs)) = (b.inter, ffn_out_sink);
                            cr::launch_kernel(
                                f.gelu,
                                (flat_blocks(tp * inter), 1, 1),
                                (256, 1, 1),
                                0,
                                stream,
                                kargs![x, n, qx, qs],
                            )
                            .map_err(drv("gelu kernel"))?;
                        }
                        mark("gelu(+quantize)")?;
                    }
                }
                let next_sink = q.sink(li + 1, GemmKind::Qkv);
                match q.site(li, GemmKind::FfnOut) {
                    Some(s) if !fp16_out => {
                        let w = s.weight;
                        q.gemms.run(
                            li,
                            GemmKind::FfnOut,
                            tp,
                            w,
                            act,
                            None,
                            acc,
                            stream as _,
                            None,
                        )?;
                        mark("gemm ffn_out (8-bit)")?;
                        epilogue_ln(s, l.biases[3], l.ffn_norm, next_sink)?;
                        mark("epilogue ffn_out+layernorm")?;
                    }
                    site => {
                        match site {
                            Some(s) => {
                                q.gemms.run(
                                    li,
                                    GemmKind::FfnOut,
                                    tp,
                                    s.weight,
                                    ffn_out_x,
                                    Some(b.hidden),
                                    b.scratch,
                                    stream as _,
                                    None,
                                )?;
                                mark("gemm ffn_out (8-bit, fp16 out)")?;
                            }
                            None => {
                                let (w, s) = (l.ffn_out_w, l.w_scales[3]);
                                let w = fp16_weight(w, s, GemmKind::FfnOut)?;
                                gemms.run(
                                    li,
                                    GemmKind::FfnOut,
                                    tp,
                                    w,
                                    b.inter,
                                    Some(b.hidden),
                                    b.scratch,
                                    stream as _,
                                )?;
                                mark("gemm ffn_out (fp16)")?;
                            }
                        }
                        layernorm(l.ffn_norm, next_sink)?;
                        mark("layernorm(+quantize)")?;
                    }
                }
            }
            self.launch_pool(g, tp, np)?;
            mark("pooling")?;
        }
        Ok(())
    }
}

impl CudaEngine {
    /// Chooses the 8-bit GEMMs' cuBLASLt algorithms by timing the heuristic's
    /// top candidates on this GPU, for the fp16 tuner's ladder of token counts
    /// (padded to 16) up to the token budget, with the plan's GEMM output form
    /// (its descriptors decide which algorithms apply). Empty for float plans.
    /// The choices belong in `QuantInfo::gemm_algos`, not the header's
    /// `gemm_algos` (those are the fp16 GEMMs').
    pub fn tune_quant_gemms(&self, opt_tokens: usize) -> Result<Vec<GemmChoice>> {
        if self.precision_name == self.precision.name() {
            return Ok(Vec::new());
        }
        // Real activations in the buffers first (never time on garbage: NaN
        // codes can take other paths).
        let warm_seqs = (self.max_tokens / self.max.seq).clamp(1, self.max.batch);
        let warm = random_batch(&self.config, warm_seqs, self.max.seq, 7);
        self.embed(&warm)?;
        let mut guard = self.lock()?;
        let g = &mut *guard;
        let stream = g.stream;
        let b = g.b;
        // The fp16 tuner's ladder, in the multiples of 16 the 8-bit GEMMs run at.
        let ladder = super::tune::token_ladder(
            gemm_rows(self.max_tokens),
            gemm_rows(opt_tokens.min(self.max_tokens)),
        );
        let q = g
            .quant
            .as_mut()
            .ok_or_else(|| Error::Backend("quantized plan without its GPU state".into()))?;
        let fp16_out = q.fp16_out();
        let (act, acc) = (q.act, q.acc);
        let start = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
        let stop = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for kind in GemmKind::ALL {
                // The first layer where this GEMM is quantized stands for all.
                let Some((li, s)) =
                    (0..q.layers.len()).find_map(|li| q.site(li, kind).map(|s| (li, s)))
                else {
                    continue;
                };
                let (res, y) = match (fp16_out, kind) {
                    (false, _) => (None, acc),
                    (true, GemmKind::Qkv) => (None, b.qkv),
                    (true, GemmKind::FfnIn) => (None, b.inter),
                    (true, _) => (Some(b.hidden), b.scratch),
                };
                // An FFN-out behind an fp8-output FFN-in reads its input there.
                let x = match kind {
                    GemmKind::FfnOut if q.gemms.form(li, GemmKind::FfnIn).fp8_out => b.inter,
                    _ => act,
                };
                for (lo, tokens) in super::tune::step_ranges(&ladder) {
                    // Small token counts (the latency case) get a wider search: split-K
                    // and small-tile variants rank low in the heuristic there.
                    let count = if tokens <= 256 { 24 } else { 8 };
                    let form = q.gemms.form(li, kind);
                    let candidates = super::tune::merged_candidates(
                        q.gemms.heuristics((kind, form), tokens, count)?,
                        q.gemms
                            .heuristics((kind, form), lo, count)
                            .unwrap_or_default(),
                    );
                    let sizes = [lo, tokens];
                    let best = super::tune::fastest(
                        &candidates,
                        (start, stop),
                        stream,
                        &sizes,
                        |algo, t| {
                            let w = s.weight;
                            q.gemms
                                .run(li, kind, t, w, x, res, y, stream as _, Some(*algo))
                        },
                    )?;
                    if let Some(ci) = best {
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
}
