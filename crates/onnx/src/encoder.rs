//! The sentence-embedding graph: BERT or MPNet encoder over padded
//! `[batch, sequence]` int64 inputs, then the model's pooling and
//! normalization, all in standard ONNX operators.
//!
//! Precision rule for fp16 exports (one rule, applied everywhere):
//! the weight matrices, the embedding tables, the matmuls and their bias
//! adds run in fp16; everything whose accuracy fp16 would hurt runs in fp32:
//! the residual stream, LayerNorm (mean/variance over 384..1024 values),
//! attention softmax (with the mask and position bias added in fp32, where
//! -1e9 is representable), GELU, and the pooling and L2 reductions. So
//! LayerNorm parameters and MPNet's relative-attention bias stay fp32
//! initializers, and both outputs are fp32.

use embedrt_core::quant::{
    quantize_with_scales, weight_scales, CalibrationTable, GeluForm, GemmKind, GemmSite,
    QuantFormat, WeightScales,
};
use embedrt_core::{
    Architecture, LayerNormWeights, LayerWeights, Linear, PoolingMode, SentenceModel, Tensor,
    TransformerWeights,
};

use crate::graph::{Attr, Dim, Elem, GraphBuilder};
use crate::Precision;

/// What the padded positions add to attention scores: exp(-1e9 - max) is
/// exactly 0 in fp32, so padded keys get zero weight.
const MASKED_SCORE: f32 = -1e9;
/// sentence-transformers' `Pooling` fills padded tokens with this before max pooling.
const MAX_POOL_FILL: f32 = -1e9;
/// sentence-transformers clamps the token count at this before dividing.
const MIN_TOKEN_COUNT: f32 = 1e-9;
/// `torch.nn.functional.normalize`'s default eps.
const NORM_EPS: f32 = 1e-12;

pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const TOKEN_EMBEDDINGS: &str = "token_embeddings";
pub const SENTENCE_EMBEDDING: &str = "sentence_embedding";

/// Builds the whole graph into `g`. With `quant` (an int8 or fp8 table), each
/// non-fallback GEMM's input goes through QuantizeLinear/DequantizeLinear
/// with the table's scale and its weight is stored as 8-bit codes with one scale
/// per output channel, dequantized in the graph (QDQ format); a fallback
/// GEMM keeps a float input, and its weight is 8-bit codes too where the
/// table's `fallback_weights` is `8bit` (per channel). Returns the
/// name of the tensor that feeds each GEMM's MatMul.
pub fn build(
    g: &mut GraphBuilder,
    model: &SentenceModel,
    weights: &TransformerWeights,
    precision: Precision,
    quant: Option<&CalibrationTable>,
) -> Vec<(GemmSite, String)> {
    let mut e = Encoder {
        g,
        model,
        low: match precision {
            Precision::Fp32 => Elem::F32,
            Precision::Fp16 => Elem::F16,
        },
        quant,
        layer: 0,
        qkv_amax: 0.0,
        gemm_inputs: Vec::new(),
    };
    e.graph(weights);
    e.gemm_inputs
}

struct Encoder<'a> {
    g: &'a mut GraphBuilder,
    model: &'a SentenceModel,
    /// Element type of the weights and matmuls (F32 or F16).
    low: Elem,
    quant: Option<&'a CalibrationTable>,
    /// The layer being built.
    layer: usize,
    /// The current layer's largest |weight| over Q, K and V.
    qkv_amax: f32,
    gemm_inputs: Vec<(GemmSite, String)>,
}

impl Encoder<'_> {
    fn graph(&mut self, w: &TransformerWeights) {
        let c = &self.model.config;
        let h = c.hidden_size as i64;
        let bs = [Dim::Named("batch"), Dim::Named("sequence")];
        let ids = self.g.input(INPUT_IDS, Elem::I64, &bs);
        let mask = self.g.input(ATTENTION_MASK, Elem::I64, &bs);

        let mask_f = self.cast(&mask, Elem::F32);
        let seq_len = self.seq_len(&ids);
        let mut x = self.embeddings(w, &ids, &mask, &seq_len);

        // Additive attention bias [batch, heads|1, seq, seq]: the padding
        // mask, plus MPNet's relative position bias (the same for every layer).
        let one = self.g.scalar(1.0, Elem::F32, "one");
        let inv = self.g.op("Sub", &[&mask_f, &one], vec![], "mask_inv");
        let big = self.g.scalar(-MASKED_SCORE, Elem::F32, "mask_big");
        let add = self.g.op("Mul", &[&inv, &big], vec![], "mask_add");
        let axes = self.g.const_i64(&[1, 2], "axes");
        let mut attn_bias = self.g.op("Unsqueeze", &[&add, &axes], vec![], "mask_bias");
        if let Some(rel) = &w.relative_attention_bias {
            let pos_bias = self.relative_position_bias(rel, &seq_len);
            attn_bias = self
                .g
                .op("Add", &[&attn_bias, &pos_bias], vec![], "attn_bias");
        }

        let last = w.layers.len().saturating_sub(1);
        for (i, layer) in w.layers.iter().enumerate() {
            self.layer = i;
            let out = (i == last).then_some(TOKEN_EMBEDDINGS);
            x = self.layer(layer, &x, &attn_bias, out);
        }
        let dims = [Dim::Named("batch"), Dim::Named("sequence"), Dim::Fixed(h)];
        self.g.output(TOKEN_EMBEDDINGS, Elem::F32, &dims);

        let pooled = self.pool(&x, &mask_f);
        if self.model.normalize {
            let norm = self.g.reduce("ReduceL2", &pooled, &[-1], true, "l2");
            let eps = self.g.scalar(NORM_EPS, Elem::F32, "norm_eps");
            let norm = self.g.op("Max", &[&norm, &eps], vec![], "l2_clamped");
            self.g
                .op_named("Div", &[&pooled, &norm], vec![], SENTENCE_EMBEDDING);
        } else {
            self.g
                .op_named("Identity", &[&pooled], vec![], SENTENCE_EMBEDDING);
        }
        self.g.output(
            SENTENCE_EMBEDDING,
            Elem::F32,
            &[Dim::Named("batch"), Dim::Fixed(h)],
        );
    }

    /// The sequence length as an int64 scalar.
    fn seq_len(&mut self, ids: &str) -> String {
        let shape = self.g.op("Shape", &[ids], vec![], "ids_shape");
        let one = self.g.init_i64("dim_sequence", &[], &[1]);
        self.g.op("Gather", &[&shape, &one], vec![], "seq_len")
    }

    fn embeddings(
        &mut self,
        w: &TransformerWeights,
        ids: &str,
        mask: &str,
        seq_len: &str,
    ) -> String {
        let c = &self.model.config;
        let e = &w.embeddings;
        let word_table = self.weight(&e.word);
        let word = self.g.op("Gather", &[&word_table, ids], vec![], "word_emb");
        let word = self.cast_f32(&word);
        let pos_table = self.weight(&e.position);
        let mut x = match c.architecture {
            Architecture::Bert => {
                // Positions 0..seq, shared by the batch; token type 0.
                let zero = self.g.init_i64("range_start", &[], &[0]);
                let step = self.g.init_i64("range_step", &[], &[1]);
                let pos = self
                    .g
                    .op("Range", &[&zero, seq_len, &step], vec![], "positions");
                let p = self.g.op("Gather", &[&pos_table, &pos], vec![], "pos_emb");
                let p = self.cast_f32(&p);
                let sum = self.g.op("Add", &[&word, &p], vec![], "emb_sum");
                match &e.token_type {
                    Some(tt) => {
                        let table = self.weight(tt);
                        let type0 = self.g.init_i64("token_type_id", &[], &[0]);
                        let t = self.g.op("Gather", &[&table, &type0], vec![], "type0_emb");
                        let t = self.cast_f32(&t);
                        self.g.op("Add", &[&sum, &t], vec![], "emb_sum")
                    }
                    None => sum,
                }
            }
            Architecture::Mpnet => {
                // HF create_position_ids_from_input_ids, with the attention
                // mask marking real tokens: cumsum(mask) * mask + pad.
                let axis = self.g.init_i64("cumsum_axis", &[], &[1]);
                let cum = self.g.op("CumSum", &[mask, &axis], vec![], "mask_cumsum");
                let real = self.g.op("Mul", &[&cum, mask], vec![], "mask_cumsum_real");
                let pad = self
                    .g
                    .init_i64("pad_token_id", &[], &[c.pad_token_id as i64]);
                let pos = self.g.op("Add", &[&real, &pad], vec![], "positions");
                let p = self.g.op("Gather", &[&pos_table, &pos], vec![], "pos_emb");
                let p = self.cast_f32(&p);
                self.g.op("Add", &[&word, &p], vec![], "emb_sum")
            }
        };
        x = self.layer_norm(&x, &e.norm, "emb_norm", None);
        x
    }

    /// MPNet's bias `[1, heads, seq, seq]`: bucket of `key - query` looked
    /// up in a table precomputed by the core (exact, no in-graph logarithm),
    /// then the learned per-bucket, per-head bias.
    fn relative_position_bias(&mut self, rel: &Tensor, seq_len: &str) -> String {
        let c = &self.model.config;
        let max_len = c.max_positions().max(1);
        let table: Vec<i64> = c
            .relative_bucket_table(max_len)
            .into_iter()
            .map(i64::from)
            .collect();
        let table = self
            .g
            .init_i64("relative_position_bucket_table", &[table.len()], &table);
        let zero = self.g.init_i64("rel_range_start", &[], &[0]);
        let step = self.g.init_i64("rel_range_step", &[], &[1]);
        let r = self
            .g
            .op("Range", &[&zero, seq_len, &step], vec![], "rel_range");
        let ax0 = self.g.const_i64(&[0], "axes");
        let ax1 = self.g.const_i64(&[1], "axes");
        let key = self.g.op("Unsqueeze", &[&r, &ax0], vec![], "rel_key");
        let query = self.g.op("Unsqueeze", &[&r, &ax1], vec![], "rel_query");
        let dist = self.g.op("Sub", &[&key, &query], vec![], "rel_dist");
        let off = self.g.init_i64("rel_offset", &[], &[max_len as i64 - 1]);
        let idx = self.g.op("Add", &[&dist, &off], vec![], "rel_index");
        let buckets = self.g.op("Gather", &[&table, &idx], vec![], "rel_bucket");
        // The bias is added to fp32 scores, so it stays fp32.
        let bias_table = self
            .g
            .init_float(&rel.name, &rel.shape, &rel.data, Elem::F32);
        let b = self
            .g
            .op("Gather", &[&bias_table, &buckets], vec![], "rel_bias");
        let b = self.g.op(
            "Transpose",
            &[&b],
            vec![("perm", Attr::Ints(vec![2, 0, 1]))],
            "rel_bias_hss",
        );
        let ax = self.g.const_i64(&[0], "axes");
        self.g.op("Unsqueeze", &[&b, &ax], vec![], "rel_bias_1hss")
    }

    /// One post-LayerNorm encoder layer; `x` and the result are fp32.
    fn layer(&mut self, l: &LayerWeights, x: &str, attn_bias: &str, out: Option<&str>) -> String {
        let c = &self.model.config;
        let (heads, d) = (c.num_attention_heads as i64, c.head_dim() as i64);
        let xl = self.cast_low(x);
        let xl = self.gemm_input(GemmKind::Qkv, &xl);
        let scale = self.g.scalar(1.0 / (d as f32).sqrt(), self.low, "scale");
        // Per-tensor scaling treats Q, K and V as the one fused weight the GPU
        // plans and the CPU reference multiply by: one amax over all three.
        if self
            .quant
            .is_some_and(|t| t.weight_scales == WeightScales::Tensor)
        {
            let amax = |t: &Tensor| t.data.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            self.qkv_amax = amax(&l.query.weight)
                .max(amax(&l.key.weight))
                .max(amax(&l.value.weight));
        }
        let q = self.linear(&xl, &l.query, GemmKind::Qkv);
        let k = self.linear(&xl, &l.key, GemmKind::Qkv);
        let v = self.linear(&xl, &l.value, GemmKind::Qkv);
        // An `attention_inputs: fp8` table: attention reads Q, K, V after one trip
        // through e4m3 with the layer's one scale (as the GPU's fp8 QKV GEMM writes them).
        let qkv8 = self.quant.and_then(|t| {
            t.attention_reads_fp8(self.layer)
                .then(|| t.qkv_output_scale(self.layer))
                .flatten()
        });
        let (q, k, v) = match qkv8 {
            Some(s) => {
                let hint = format!("layers_{}_qkv_output", self.layer);
                (
                    self.qdq(&q, s, &format!("{hint}_q")),
                    self.qdq(&k, s, &format!("{hint}_k")),
                    self.qdq(&v, s, &format!("{hint}_v")),
                )
            }
            None => (q, k, v),
        };
        let q = self.g.op("Mul", &[&q, &scale], vec![], "q_scaled");
        let split = self.g.const_i64(&[0, 0, heads, d], "heads_shape");
        let q = self.g.op("Reshape", &[&q, &split], vec![], "q_heads");
        let k = self.g.op("Reshape", &[&k, &split], vec![], "k_heads");
        let v = self.g.op("Reshape", &[&v, &split], vec![], "v_heads");
        let q = self.transpose(&q, &[0, 2, 1, 3], "q_bhsd");
        let k = self.transpose(&k, &[0, 2, 3, 1], "k_bhds");
        let v = self.transpose(&v, &[0, 2, 1, 3], "v_bhsd");
        let scores = self.g.op("MatMul", &[&q, &k], vec![], "scores");
        let scores = self.cast_f32(&scores);
        let scores = self
            .g
            .op("Add", &[&scores, attn_bias], vec![], "scores_biased");
        let probs = self.g.op(
            "Softmax",
            &[&scores],
            vec![("axis", Attr::Int(-1))],
            "probs",
        );
        let probs = self.cast_low(&probs);
        let ctx = self.g.op("MatMul", &[&probs, &v], vec![], "context");
        let ctx = self.transpose(&ctx, &[0, 2, 1, 3], "context_bshd");
        let merge = self.g.const_i64(&[0, 0, heads * d], "hidden_shape");
        let ctx = self.g.op("Reshape", &[&ctx, &merge], vec![], "context_bsh");
        let ctx = self.gemm_input(GemmKind::AttnOut, &ctx);
        let attn = self.linear(&ctx, &l.attn_out, GemmKind::AttnOut);
        let attn = self.cast_f32(&attn);
        let x = self.layer_norm(&attn, &l.attn_norm, "attn_norm", Some(x));

        let xl = self.cast_low(&x);
        let xl = self.gemm_input(GemmKind::FfnIn, &xl);
        let inter = self.linear(&xl, &l.ffn_in, GemmKind::FfnIn);
        let inter = self.cast_f32(&inter);
        // A quantized FFN-in of a `gelu: tanh` table computes the tanh form (as
        // the GPU's cuBLASLt epilogue and the CPU reference do).
        let tanh = self.quantized(GemmKind::FfnIn).is_some()
            && self.quant.is_some_and(|t| t.gelu == GeluForm::Tanh);
        let inter = if tanh {
            self.gelu_tanh(&inter)
        } else {
            self.gelu(&inter)
        };
        let inter = self.cast_low(&inter);
        let inter = self.gemm_input(GemmKind::FfnOut, &inter);
        let ffn = self.linear(&inter, &l.ffn_out, GemmKind::FfnOut);
        let ffn = self.cast_f32(&ffn);
        match out {
            Some(name) => {
                let sum = self.g.op("Add", &[&ffn, &x], vec![], "residual");
                self.layer_norm_named(&sum, &l.ffn_norm, name);
                name.to_string()
            }
            None => self.layer_norm(&ffn, &l.ffn_norm, "ffn_norm", Some(&x)),
        }
    }

    /// Exact GELU: 0.5 x (1 + erf(x / sqrt 2)), in fp32.
    fn gelu(&mut self, x: &str) -> String {
        let inv_sqrt2 = self
            .g
            .scalar(std::f32::consts::FRAC_1_SQRT_2, Elem::F32, "inv_sqrt2");
        let half = self.g.scalar(0.5, Elem::F32, "half");
        let one = self.g.scalar(1.0, Elem::F32, "one");
        let s = self.g.op("Mul", &[x, &inv_sqrt2], vec![], "gelu_scaled");
        let erf = self.g.op("Erf", &[&s], vec![], "gelu_erf");
        let p = self.g.op("Add", &[&erf, &one], vec![], "gelu_1p");
        let hx = self.g.op("Mul", &[x, &half], vec![], "gelu_half");
        self.g.op("Mul", &[&hx, &p], vec![], "gelu")
    }

    /// The tanh form: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in fp32.
    fn gelu_tanh(&mut self, x: &str) -> String {
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        let c = self.g.scalar(c, Elem::F32, "gelu_c");
        let k = self.g.scalar(0.044715, Elem::F32, "gelu_k");
        let half = self.g.scalar(0.5, Elem::F32, "half");
        let one = self.g.scalar(1.0, Elem::F32, "one");
        let x2 = self.g.op("Mul", &[x, x], vec![], "gelu_x2");
        let x3 = self.g.op("Mul", &[&x2, x], vec![], "gelu_x3");
        let kx3 = self.g.op("Mul", &[&x3, &k], vec![], "gelu_kx3");
        let inner = self.g.op("Add", &[x, &kx3], vec![], "gelu_inner");
        let z = self.g.op("Mul", &[&inner, &c], vec![], "gelu_z");
        let t = self.g.op("Tanh", &[&z], vec![], "gelu_tanh");
        let p = self.g.op("Add", &[&t, &one], vec![], "gelu_1p");
        let hx = self.g.op("Mul", &[x, &half], vec![], "gelu_half");
        self.g.op("Mul", &[&hx, &p], vec![], "gelu")
    }

    /// Sentence pooling over real tokens, fp32 `[batch, hidden]`.
    fn pool(&mut self, x: &str, mask_f: &str) -> String {
        let ax2 = self.g.const_i64(&[2], "axes");
        let mask3 = self.g.op("Unsqueeze", &[mask_f, &ax2], vec![], "mask_bs1");
        match self.model.pooling {
            PoolingMode::Cls => {
                let zero = self.g.init_i64("cls_index", &[], &[0]);
                self.g.op(
                    "Gather",
                    &[x, &zero],
                    vec![("axis", Attr::Int(1))],
                    "pool_cls",
                )
            }
            PoolingMode::Max => {
                let keep = self.cast(&mask3, Elem::Bool);
                let fill = self.g.scalar(MAX_POOL_FILL, Elem::F32, "max_fill");
                let masked = self.g.op("Where", &[&keep, x, &fill], vec![], "max_masked");
                self.g.reduce("ReduceMax", &masked, &[1], false, "pool_max")
            }
            mode @ (PoolingMode::Mean | PoolingMode::MeanSqrtLen) => {
                let masked = self.g.op("Mul", &[x, &mask3], vec![], "mean_masked");
                let sum = self
                    .g
                    .reduce("ReduceSum", &masked, &[1], false, "token_sum");
                let count = self
                    .g
                    .reduce("ReduceSum", mask_f, &[1], true, "token_count");
                let min = self.g.scalar(MIN_TOKEN_COUNT, Elem::F32, "min_count");
                let mut div = self
                    .g
                    .op("Max", &[&count, &min], vec![], "token_count_clamped");
                if mode == PoolingMode::MeanSqrtLen {
                    div = self.g.op("Sqrt", &[&div], vec![], "sqrt_len");
                }
                self.g.op("Div", &[&sum, &div], vec![], "pool_mean")
            }
        }
    }

    /// The quantization of a GEMM of the current layer, `None` when it
    /// stays float (no table, or in the fallback list).
    fn quantized(&self, kind: GemmKind) -> Option<f32> {
        let site = GemmSite {
            layer: self.layer,
            kind,
        };
        let table = self.quant?;
        if table.is_fallback(site) {
            return None;
        }
        table.input_scale(site)
    }

    /// The graph's element type of the table's 8-bit format.
    fn code_elem(&self) -> Elem {
        match self.quant.map(|t| t.precision) {
            Some(QuantFormat::Fp8) => Elem::F8E4M3,
            _ => Elem::I8,
        }
    }

    /// Records `x` as the input of a GEMM and, when the GEMM is quantized,
    /// returns `x` after QuantizeLinear/DequantizeLinear (int8 or e4m3fn,
    /// zero point 0; fp8 saturates at ±448, QuantizeLinear's default).
    fn gemm_input(&mut self, kind: GemmKind, x: &str) -> String {
        let site = GemmSite {
            layer: self.layer,
            kind,
        };
        self.gemm_inputs.push((site, x.to_string()));
        let Some(scale) = self.quantized(kind) else {
            return x.to_string();
        };
        let hint = format!("{}_input", site.name().replace('.', "_"));
        self.qdq(x, scale, &hint)
    }

    /// `x` after QuantizeLinear/DequantizeLinear in the table's 8-bit format
    /// with one scale (zero point 0).
    fn qdq(&mut self, x: &str, scale: f32, hint: &str) -> String {
        let s = self.g.scalar(scale, Elem::F32, &format!("{hint}_scale"));
        let zp_name = self.g.fresh(&format!("{hint}_zero_point"));
        let zp = self.g.init_bytes(&zp_name, &[], self.code_elem(), vec![0]);
        let q = self.g.op(
            "QuantizeLinear",
            &[x, &s, &zp],
            vec![],
            &format!("{hint}_q"),
        );
        self.g.op(
            "DequantizeLinear",
            &[&q, &s, &zp],
            vec![],
            &format!("{hint}_dq"),
        )
    }

    /// A `[out, in]` weight as 8-bit codes (int8, or e4m3fn for an fp8
    /// table) with per-output-channel scales (axis 0 of this layout) and the
    /// DequantizeLinear that restores it.
    fn quantized_weight(&mut self, t: &Tensor, kind: GemmKind, scaling: WeightScales) -> String {
        let out = t.shape[0];
        let format = self.quant.map_or(QuantFormat::Int8, |q| q.precision);
        // Per tensor: the same scale in every channel, still written per channel
        // (Q, K and V: the fused weight's).
        let scales = match (scaling, kind) {
            (WeightScales::Tensor, GemmKind::Qkv) => vec![format.scale_for(self.qkv_amax); out],
            _ => weight_scales(&t.data, out, format, scaling),
        };
        let codes = quantize_with_scales(&t.data, &scales, format);
        let elem = self.code_elem();
        let q = self
            .g
            .init_bytes(&format!("{}_quantized", t.name), &t.shape, elem, codes);
        let s = self
            .g
            .init_float(&format!("{}_scale", t.name), &[out], &scales, Elem::F32);
        let zp = self.g.init_bytes(
            &format!("{}_zero_point", t.name),
            &[out],
            elem,
            vec![0; out],
        );
        self.g.op(
            "DequantizeLinear",
            &[&q, &s, &zp],
            vec![("axis", Attr::Int(0))],
            "weight_dq",
        )
    }

    /// `x W^T + b` with W in Hugging Face layout `[out, in]` under its HF
    /// name; the Transpose of a constant is folded by every runtime.
    fn linear(&mut self, x: &str, lin: &Linear, kind: GemmKind) -> String {
        // Quantized GEMMs, and fallback GEMMs of a table that stores their
        // weights in 8 bits (weight-only: their input stays float).
        let site = GemmSite {
            layer: self.layer,
            kind,
        };
        let w = match self.quant.and_then(|t| t.weight_storage(site)) {
            Some(scaling) => self.quantized_weight(&lin.weight, kind, scaling),
            None => self.weight(&lin.weight),
        };
        let b = self.weight(&lin.bias);
        let wt = self.transpose(&w, &[1, 0], "weight_t");
        let y = self.g.op("MatMul", &[x, &wt], vec![], "matmul");
        self.g.op("Add", &[&y, &b], vec![], "linear")
    }

    /// LayerNorm of `x` (+ `residual`), fp32 in and out.
    fn layer_norm(
        &mut self,
        x: &str,
        n: &LayerNormWeights,
        hint: &str,
        residual: Option<&str>,
    ) -> String {
        let input = match residual {
            Some(r) => self.g.op("Add", &[x, r], vec![], "residual"),
            None => x.to_string(),
        };
        let out = self.g.fresh(hint);
        self.layer_norm_named(&input, n, &out);
        out
    }

    fn layer_norm_named(&mut self, x: &str, n: &LayerNormWeights, out: &str) {
        let gamma = self
            .g
            .init_float(&n.gamma.name, &n.gamma.shape, &n.gamma.data, Elem::F32);
        let beta = self
            .g
            .init_float(&n.beta.name, &n.beta.shape, &n.beta.data, Elem::F32);
        let eps = self.model.config.layer_norm_eps;
        self.g.op_named(
            "LayerNormalization",
            &[x, &gamma, &beta],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
            out,
        );
    }

    /// An initializer in the export's weight precision, under its HF name.
    fn weight(&mut self, t: &Tensor) -> String {
        self.g.init_float(&t.name, &t.shape, &t.data, self.low)
    }

    fn transpose(&mut self, x: &str, perm: &[i64], hint: &str) -> String {
        self.g.op(
            "Transpose",
            &[x],
            vec![("perm", Attr::Ints(perm.to_vec()))],
            hint,
        )
    }

    fn cast(&mut self, x: &str, to: Elem) -> String {
        self.g.op(
            "Cast",
            &[x],
            vec![("to", Attr::Int(to.onnx() as i64))],
            "cast",
        )
    }

    fn cast_low(&mut self, x: &str) -> String {
        match self.low {
            Elem::F32 => x.to_string(),
            low => self.cast(x, low),
        }
    }

    fn cast_f32(&mut self, x: &str) -> String {
        match self.low {
            Elem::F32 => x.to_string(),
            _ => self.cast(x, Elem::F32),
        }
    }
}
