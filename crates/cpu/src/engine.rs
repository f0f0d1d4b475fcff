//! The encoder forward pass on the CPU, over unpadded batches.

use embedrt_core::quant::{Activation, CalibrationTable, GeluForm, GemmKind, GemmSite};
use embedrt_core::{
    Architecture, Backend, BackendInfo, Error, ModelConfig, PoolingMode, Result, TokenBatch,
    TransformerWeights,
};
use rayon::prelude::*;

use crate::fake_quant::{fake_quant_in_place, fake_quant_into, fake_quant_weight_t, FakeQuant};
use crate::math::{
    gelu_in_place, gelu_tanh_in_place, layer_norm_rows, linear, matmul, softmax, transpose, View,
};

/// Rows per rayon task for the element-wise passes.
const ROWS_PER_TASK: usize = 16;

/// Sees each GEMM's input activation, `[tokens, in]` row-major, before the
/// GEMM runs (after fake quantization, if the engine quantizes), and each
/// layer's QKV GEMM output `[tokens, 3H]` (bias added, before any fake
/// quantization of it).
pub type GemmObserver<'a> = &'a mut dyn FnMut(Activation, &[f32]);

/// Weights are stored transposed, `[in, out]` (see `math::linear`).
#[derive(Clone)]
struct Layer {
    /// Query, key and value stacked: `[H, 3H]`, so one GEMM makes all three.
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
    o_w: Vec<f32>,
    o_b: Vec<f32>,
    attn_norm: (Vec<f32>, Vec<f32>),
    ffn_in_w: Vec<f32>,
    ffn_in_b: Vec<f32>,
    ffn_out_w: Vec<f32>,
    ffn_out_b: Vec<f32>,
    ffn_norm: (Vec<f32>, Vec<f32>),
}

#[derive(Clone)]
pub struct CpuEngine {
    config: ModelConfig,
    pooling: PoolingMode,
    max_seq_len: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    /// BERT: row 0 of the token-type table (single sentences are type 0).
    token_type0: Option<Vec<f32>>,
    emb_norm: (Vec<f32>, Vec<f32>),
    layers: Vec<Layer>,
    /// MPNet: `[buckets, heads]`.
    rel_bias: Option<Vec<f32>>,
    /// MPNet: bucket of each relative distance, indexed by `key - query + max_seq_len - 1`.
    bucket_of_distance: Vec<u32>,
    /// Set by [`CpuEngine::with_calibration`]: the fake-quant reference.
    fake_quant: Option<FakeQuant>,
}

impl CpuEngine {
    pub fn new(
        config: &ModelConfig,
        weights: TransformerWeights,
        pooling: PoolingMode,
        max_seq_len: usize,
    ) -> Result<Self> {
        if max_seq_len > config.max_positions() {
            return Err(Error::Model(format!(
                "max_seq_len {max_seq_len} exceeds the {} positions of the model",
                config.max_positions()
            )));
        }
        let layers = weights
            .layers
            .into_iter()
            .map(|l| {
                let mut qkv_w = l.query.weight.data;
                qkv_w.extend_from_slice(&l.key.weight.data);
                qkv_w.extend_from_slice(&l.value.weight.data);
                let mut qkv_b = l.query.bias.data;
                qkv_b.extend_from_slice(&l.key.bias.data);
                qkv_b.extend_from_slice(&l.value.bias.data);
                // PyTorch's [out, in] -> [in, out].
                let t = |w: &[f32], out: usize| transpose(w, out, w.len() / out);
                Layer {
                    qkv_w: t(&qkv_w, qkv_b.len()),
                    qkv_b,
                    o_w: t(&l.attn_out.weight.data, l.attn_out.bias.data.len()),
                    o_b: l.attn_out.bias.data,
                    attn_norm: (l.attn_norm.gamma.data, l.attn_norm.beta.data),
                    ffn_in_w: t(&l.ffn_in.weight.data, l.ffn_in.bias.data.len()),
                    ffn_in_b: l.ffn_in.bias.data,
                    ffn_out_w: t(&l.ffn_out.weight.data, l.ffn_out.bias.data.len()),
                    ffn_out_b: l.ffn_out.bias.data,
                    ffn_norm: (l.ffn_norm.gamma.data, l.ffn_norm.beta.data),
                }
            })
            .collect();
        let h = config.hidden_size;
        let e = weights.embeddings;
        Ok(CpuEngine {
            config: config.clone(),
            pooling,
            max_seq_len,
            word: e.word.data,
            position: e.position.data,
            token_type0: e.token_type.map(|t| t.data[..h].to_vec()),
            emb_norm: (e.norm.gamma.data, e.norm.beta.data),
            layers,
            rel_bias: weights.relative_attention_bias.map(|t| t.data),
            bucket_of_distance: match config.architecture {
                Architecture::Mpnet => config.relative_bucket_table(max_seq_len),
                Architecture::Bert => Vec::new(),
            },
            fake_quant: None,
        })
    }

    /// The fake-quant reference of the quantized model: every GEMM not in
    /// the table's fallback list gets its weight quantized-dequantized with
    /// the table's weight scaling (once, here) and its input per tensor
    /// (each call), in the table's format; a fallback GEMM's weight too
    /// (per channel) where the table stores fallback weights in 8 bits.
    /// Check the table against the model first (`CalibrationTable::check_model`).
    pub fn with_calibration(mut self, table: &CalibrationTable) -> Result<Self> {
        if self.fake_quant.is_some() {
            return Err(Error::Backend(
                "this CPU engine is already quantized; build it again from the fp32 weights".into(),
            ));
        }
        let fq = FakeQuant::from_table(table, self.layers.len())?;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            for kind in GemmKind::ALL {
                let site = GemmSite { layer: l, kind };
                let Some(scaling) = fq.weight_storage(site) else {
                    continue;
                };
                let (w, out) = match kind {
                    GemmKind::Qkv => (&mut layer.qkv_w, layer.qkv_b.len()),
                    GemmKind::AttnOut => (&mut layer.o_w, layer.o_b.len()),
                    GemmKind::FfnIn => (&mut layer.ffn_in_w, layer.ffn_in_b.len()),
                    GemmKind::FfnOut => (&mut layer.ffn_out_w, layer.ffn_out_b.len()),
                };
                fake_quant_weight_t(fq.format, scaling, w, out);
            }
        }
        self.fake_quant = Some(fq);
        Ok(self)
    }

    /// Number of encoder layers (four GEMM sites each).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Final hidden states of every token, `[total_tokens, hidden]`.
    pub fn token_embeddings(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.forward(batch, None)
    }

    /// [`Self::token_embeddings`], handing each GEMM input to `observer`
    /// (calibration statistics come from here).
    pub fn token_embeddings_observed(
        &self,
        batch: &TokenBatch,
        observer: GemmObserver<'_>,
    ) -> Result<Vec<f32>> {
        self.forward(batch, Some(observer))
    }

    fn forward(
        &self,
        batch: &TokenBatch,
        mut observer: Option<GemmObserver<'_>>,
    ) -> Result<Vec<f32>> {
        batch.validate(self.config.vocab_size, self.max_seq_len)?;
        let c = &self.config;
        let (h, t) = (c.hidden_size, batch.total_tokens());
        let mut hidden = self.embed_tokens(batch);
        let mut qkv = vec![0.0f32; t * 3 * h];
        let mut ctx = vec![0.0f32; t * h];
        let mut inter = vec![0.0f32; t * c.intermediate_size];
        // Fake-quantized GEMM inputs go here; the fp32 path never allocates it.
        let mut quantized = Vec::new();
        if self.fake_quant.is_some() {
            quantized = vec![0.0f32; t * c.intermediate_size.max(h)];
        }
        // The GEMM's input as the GEMM sees it: `x` itself, or its
        // fake-quantized copy. Only plain fp32 runs take the first branch
        // with no observer, which keeps that path exactly as it was.
        let fake_quant = &self.fake_quant;
        let gemm_input = |site: GemmSite,
                          x: &[f32],
                          quantized: &mut Vec<f32>,
                          observer: &mut Option<GemmObserver<'_>>|
         -> bool {
            let mut used_copy = false;
            if let Some(fq) = fake_quant {
                if let Some(scale) = fq.input_scale(site) {
                    fake_quant_into(fq.format, scale, x, &mut quantized[..x.len()]);
                    used_copy = true;
                }
            }
            if let Some(obs) = observer.as_mut() {
                let x = if used_copy { &quantized[..x.len()] } else { x };
                obs(Activation::Input(site), x);
            }
            used_copy
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let site = |kind| GemmSite { layer: l, kind };
            let x = if gemm_input(site(GemmKind::Qkv), &hidden, &mut quantized, &mut observer) {
                &quantized[..hidden.len()]
            } else {
                &hidden[..]
            };
            linear(x, t, &layer.qkv_w, &layer.qkv_b, None, &mut qkv);
            if let Some(obs) = observer.as_mut() {
                obs(Activation::QkvOutput(l), &qkv);
            }
            // An `attention_inputs: fp8` table: attention reads Q, K, V in e4m3.
            if let Some(fq) = fake_quant {
                if let Some(s) = fq.qkv_output_scale(l) {
                    fake_quant_in_place(fq.format, s, &mut qkv);
                }
            }
            self.attention(batch, &qkv, &mut ctx);
            // ctx -> attention output + residual, normalized; reuse qkv's
            // first T*H floats as the scratch for it.
            let attn = &mut qkv[..t * h];
            let x = if gemm_input(site(GemmKind::AttnOut), &ctx, &mut quantized, &mut observer) {
                &quantized[..ctx.len()]
            } else {
                &ctx[..]
            };
            linear(x, t, &layer.o_w, &layer.o_b, Some(&hidden), attn);
            par_layer_norm(attn, &layer.attn_norm, h, c.layer_norm_eps);
            hidden.copy_from_slice(attn);
            let x = if gemm_input(
                site(GemmKind::FfnIn),
                &hidden,
                &mut quantized,
                &mut observer,
            ) {
                &quantized[..hidden.len()]
            } else {
                &hidden[..]
            };
            linear(x, t, &layer.ffn_in_w, &layer.ffn_in_b, None, &mut inter);
            // The tanh form only after a quantized FFN-in of a `gelu: tanh` table.
            let tanh = self.fake_quant.as_ref().is_some_and(|fq| {
                fq.gelu == GeluForm::Tanh && fq.input_scale(site(GemmKind::FfnIn)).is_some()
            });
            let gelu = if tanh {
                gelu_tanh_in_place
            } else {
                gelu_in_place
            };
            inter
                .par_chunks_mut(c.intermediate_size * ROWS_PER_TASK)
                .for_each(gelu);
            let x = if gemm_input(
                site(GemmKind::FfnOut),
                &inter,
                &mut quantized,
                &mut observer,
            ) {
                &quantized[..inter.len()]
            } else {
                &inter[..]
            };
            linear(
                x,
                t,
                &layer.ffn_out_w,
                &layer.ffn_out_b,
                Some(&hidden),
                &mut ctx,
            );
            par_layer_norm(&mut ctx, &layer.ffn_norm, h, c.layer_norm_eps);
            std::mem::swap(&mut hidden, &mut ctx);
        }
        Ok(hidden)
    }

    fn embed_tokens(&self, batch: &TokenBatch) -> Vec<f32> {
        let h = self.config.hidden_size;
        let mut out = vec![0.0f32; batch.total_tokens() * h];
        for s in 0..batch.len() {
            let start = batch.offsets[s];
            for (i, &id) in batch.seq(s).iter().enumerate() {
                let row = &mut out[(start + i) * h..(start + i + 1) * h];
                let word = &self.word[id as usize * h..(id as usize + 1) * h];
                let p = self.config.position_id(i);
                let pos = &self.position[p * h..(p + 1) * h];
                for ((o, &w), &q) in row.iter_mut().zip(word).zip(pos) {
                    *o = w + q;
                }
                if let Some(tt) = &self.token_type0 {
                    for (o, &v) in row.iter_mut().zip(tt) {
                        *o += v;
                    }
                }
            }
        }
        par_layer_norm(&mut out, &self.emb_norm, h, self.config.layer_norm_eps);
        out
    }

    /// Scaled dot-product attention per (sequence, head), with MPNet's
    /// relative position bias; writes the context into `ctx` `[T, H]`.
    fn attention(&self, batch: &TokenBatch, qkv: &[f32], ctx: &mut [f32]) {
        let c = &self.config;
        let (h, heads, d) = (c.hidden_size, c.num_attention_heads, c.head_dim());
        let scale = 1.0 / (d as f32).sqrt();
        let tasks: Vec<(usize, usize)> = (0..batch.len())
            .flat_map(|s| (0..heads).map(move |hd| (s, hd)))
            .collect();
        let results: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(s, hd)| {
                let (start, len) = (batch.offsets[s], batch.seq_len(s));
                let q = &qkv[start * 3 * h + hd * d..];
                let k = &q[h..];
                let v = &q[2 * h..];
                let mut scores = vec![0.0f32; len * len];
                let mut out = vec![0.0f32; len * d];
                // SAFETY: q/k/v rows of `len` tokens at stride 3H lie inside
                // qkv; scores and out are fresh buffers of the right size.
                unsafe {
                    matmul(
                        len,
                        len,
                        d,
                        scores.as_mut_ptr(),
                        len as isize,
                        false,
                        View {
                            ptr: q.as_ptr(),
                            rs: 3 * h as isize,
                            cs: 1,
                        },
                        View {
                            ptr: k.as_ptr(),
                            rs: 1,
                            cs: 3 * h as isize,
                        },
                        scale,
                        false,
                    );
                }
                for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                    if let Some(bias) = &self.rel_bias {
                        let base = self.max_seq_len - 1 - i;
                        for (j, x) in row.iter_mut().enumerate() {
                            let bucket = self.bucket_of_distance[base + j] as usize;
                            *x += bias[bucket * heads + hd];
                        }
                    }
                    softmax(row);
                }
                // SAFETY: as above; v rows at stride 3H.
                unsafe {
                    matmul(
                        len,
                        d,
                        len,
                        out.as_mut_ptr(),
                        d as isize,
                        false,
                        View {
                            ptr: scores.as_ptr(),
                            rs: len as isize,
                            cs: 1,
                        },
                        View {
                            ptr: v.as_ptr(),
                            rs: 3 * h as isize,
                            cs: 1,
                        },
                        1.0,
                        false,
                    );
                }
                out
            })
            .collect();
        for (&(s, hd), out) in tasks.iter().zip(&results) {
            let start = batch.offsets[s];
            for (i, row) in out.chunks_exact(d).enumerate() {
                let dst = (start + i) * h + hd * d;
                ctx[dst..dst + d].copy_from_slice(row);
            }
        }
    }
}

fn par_layer_norm(x: &mut [f32], norm: &(Vec<f32>, Vec<f32>), h: usize, eps: f32) {
    x.par_chunks_mut(h * ROWS_PER_TASK)
        .for_each(|rows| layer_norm_rows(rows, &norm.0, &norm.1, eps));
}

impl Backend for CpuEngine {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            device: "cpu".into(),
            precision: match &self.fake_quant {
                None => "fp32".into(),
                Some(fq) => format!("{} (fake-quant reference)", fq.format.name()),
            },
            max_batch_size: 1024,
            max_batch_tokens: 1024 * self.max_seq_len,
            max_seq_len: self.max_seq_len,
        }
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn embed(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let tokens = self.token_embeddings(batch)?;
        let mut pooled = vec![0.0f32; batch.len() * h];
        for (s, out) in pooled.chunks_exact_mut(h).enumerate() {
            let rows = &tokens[batch.offsets[s] * h..batch.offsets[s + 1] * h];
            self.pooling.pool(rows, h, out);
        }
        Ok(pooled)
    }
}
