//! Post-training quantization: which tensors are quantized, the calibration
//! table that carries their scales between tools, and the numerics every
//! engine and export must reproduce (the CPU fake-quant reference, the GPU
//! kernels, the QDQ ONNX graph).
//!
//! What is quantized: the input activation and the weight of each of a
//! layer's four GEMMs (QKV, attention output, FFN in, FFN out). Activations
//! get one symmetric per-tensor scale from calibration; weights get one
//! symmetric scale per output channel, computed from the weights themselves.
//! Everything else (embeddings, LayerNorm, softmax, attention, GELU,
//! pooling) stays in the engine's float precision. GEMMs listed in the
//! table's `fallback` compute in fp16 (fp32 on the CPU reference) on float
//! inputs; with `fallback_weights: 8bit` their weights are still stored in
//! the 8-bit format with one scale per output channel (weight-only
//! quantization), so a plan keeps 1 byte a GEMM parameter.

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{read_json, Error, Result};

/// The 8-bit format of a quantized plan's GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantFormat {
    /// Signed 8-bit integers, symmetric (zero point 0), saturating to [-128, 127].
    Int8,
    /// FP8 e4m3 (the `fn` variant: no infinities, saturating to ±448).
    Fp8,
}

impl QuantFormat {
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Int8 => "int8",
            QuantFormat::Fp8 => "fp8",
        }
    }

    /// Largest magnitude the format represents: a tensor's `amax` maps to it.
    pub fn max_value(self) -> f32 {
        match self {
            QuantFormat::Int8 => 127.0,
            QuantFormat::Fp8 => FP8_E4M3_MAX,
        }
    }

    /// Scale of a symmetric quantizer for values up to `amax`: x ≈ q * scale.
    /// A zero (or non-finite) amax gets scale 1 so nothing divides by zero.
    pub fn scale_for(self, amax: f32) -> f32 {
        if amax > 0.0 && amax.is_finite() {
            amax / self.max_value()
        } else {
            1.0
        }
    }

    /// The quantized code of `x / scale`, as a float (an integer for int8,
    /// an e4m3 value for fp8).
    pub fn quantize(self, x: f32, scale: f32) -> f32 {
        let v = x / scale;
        match self {
            QuantFormat::Int8 => v.round_ties_even().clamp(-128.0, 127.0),
            QuantFormat::Fp8 => round_to_e4m3(v),
        }
    }

    /// Quantize then dequantize: what a value becomes after one trip
    /// through the 8-bit format.
    pub fn fake_quant(self, x: f32, scale: f32) -> f32 {
        self.quantize(x, scale) * scale
    }
}

impl FromStr for QuantFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "int8" => Ok(QuantFormat::Int8),
            "fp8" => Ok(QuantFormat::Fp8),
            other => Err(Error::Input(format!(
                "unknown quantized precision {other:?}; supported: int8, fp8"
            ))),
        }
    }
}

/// How a GEMM weight's 8-bit codes are scaled (`--weight-scales`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightScales {
    /// One scale per output channel: the most exact, and what int8 needs.
    #[default]
    Channel,
    /// One scale for the whole weight (the largest channel's). For fp8 this
    /// loses little (e4m3's relative step is the same at every magnitude down
    /// to 2^-6 of the range), and cuBLASLt's fp8 GEMMs then take plain scalar
    /// scales instead of outer-vector ones.
    Tensor,
}

impl WeightScales {
    pub const NAMES: &'static str = "channel, tensor";

    /// What a new table gets without `--weight-scales`: per tensor for fp8
    /// (H200 run 25: W1 +3% alone, +17% with the tanh GELU it enables, the
    /// same cosine to fp32), per channel for int8 (whose uniform grid loses
    /// small channels to one scale).
    pub fn default_for(format: QuantFormat) -> WeightScales {
        match format {
            QuantFormat::Fp8 => WeightScales::Tensor,
            QuantFormat::Int8 => WeightScales::Channel,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightScales::Channel => "channel",
            WeightScales::Tensor => "tensor",
        }
    }
}

impl FromStr for WeightScales {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "channel" => Ok(WeightScales::Channel),
            "tensor" => Ok(WeightScales::Tensor),
            other => Err(Error::Input(format!(
                "unknown weight scaling {other:?}; supported: {}",
                WeightScales::NAMES
            ))),
        }
    }
}

/// The GELU of the FFN as the quantized model computes it (`--gelu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeluForm {
    /// `0.5 x (1 + erf(x / sqrt 2))`, the model's own (torch.nn.GELU()).
    #[default]
    Exact,
    /// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`: what cuBLASLt's
    /// GELU epilogue computes, so an fp8 FFN-in GEMM can apply it and write
    /// FFN-out's 8-bit input itself (no GELU pass over memory).
    Tanh,
}

impl GeluForm {
    pub const NAMES: &'static str = "exact, tanh";

    /// What a new table gets without `--gelu`: tanh for fp8 tables with
    /// per-tensor weight scales (cuBLASLt's epilogue then replaces the GELU
    /// pass; run 25: MiniLM STS-B drop 0.03, MPNet-base cosine unchanged),
    /// exact otherwise (int8's GEMMs have no such epilogue, and per-channel
    /// fp8 scales none either).
    pub fn default_for(format: QuantFormat, scales: WeightScales) -> GeluForm {
        match (format, scales) {
            (QuantFormat::Fp8, WeightScales::Tensor) => GeluForm::Tanh,
            _ => GeluForm::Exact,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GeluForm::Exact => "exact",
            GeluForm::Tanh => "tanh",
        }
    }
}

impl FromStr for GeluForm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(GeluForm::Exact),
            "tanh" => Ok(GeluForm::Tanh),
            other => Err(Error::Input(format!(
                "unknown GELU form {other:?}; supported: {}",
                GeluForm::NAMES
            ))),
        }
    }
}

/// What attention reads in the quantized model (`--attention-inputs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttentionInputs {
    /// Q, K and V as the QKV GEMM computes them (fp16 on the GPU).
    #[default]
    Float,
    /// Q, K and V in e4m3 with one calibrated scale a layer
    /// (`layers.{l}.qkv.output`): an fp8 QKV GEMM writes them in 8 bits and
    /// attention reads half the bytes. Softmax and both attention matmuls
    /// still accumulate in fp32. fp8 tables only, where the layer's QKV GEMM
    /// is quantized.
    Fp8,
}

impl AttentionInputs {
    pub const NAMES: &'static str = "float, fp8";

    pub fn name(self) -> &'static str {
        match self {
            AttentionInputs::Float => "float",
            AttentionInputs::Fp8 => "fp8",
        }
    }
}

impl FromStr for AttentionInputs {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "float" => Ok(AttentionInputs::Float),
            "fp8" => Ok(AttentionInputs::Fp8),
            other => Err(Error::Input(format!(
                "unknown attention inputs {other:?}; supported: {}",
                AttentionInputs::NAMES
            ))),
        }
    }
}

/// How the weights of fallback GEMMs are stored (`--fallback-weights`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FallbackWeights {
    /// In the engine's float precision (fp16 on the GPU): the fallback GEMM
    /// is exactly the float model's.
    #[default]
    #[serde(rename = "float")]
    Float,
    /// In the table's 8-bit format with one scale per output channel,
    /// widened to fp16 where the GEMM runs: the GEMM still computes on float
    /// activations (what made it sensitive), and its weight takes 1 byte a
    /// parameter like the quantized GEMMs'.
    #[serde(rename = "8bit")]
    EightBit,
}

impl FallbackWeights {
    pub const NAMES: &'static str = "8bit, float";

    /// What a new table gets without `--fallback-weights`: float, for now.
    /// 8-bit fallback weights are measured on the CPU reference and the QDQ
    /// export (MiniLM int8: STS-B drop 0.02 against 0.12 with float ones,
    /// docs/perf/quantization.md) but their GPU widening kernel has not run
    /// on a GPU yet (bench/gpu/fallback_weights.sh is the check); they
    /// become the default once it has. Older tables, without the field, mean
    /// float too.
    pub fn default_for_new_tables() -> FallbackWeights {
        FallbackWeights::Float
    }

    pub fn name(self) -> &'static str {
        match self {
            FallbackWeights::Float => "float",
            FallbackWeights::EightBit => "8bit",
        }
    }
}

impl FromStr for FallbackWeights {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "float" => Ok(FallbackWeights::Float),
            "8bit" => Ok(FallbackWeights::EightBit),
            other => Err(Error::Input(format!(
                "unknown fallback weight storage {other:?}; supported: {}",
                FallbackWeights::NAMES
            ))),
        }
    }
}

/// Largest finite FP8 e4m3fn value.
pub const FP8_E4M3_MAX: f32 = 448.0;

/// Nearest FP8 e4m3fn value to `x` (round half to even), saturating at
/// ±448; NaN stays NaN. e4m3: 4 exponent bits (bias 7), 3 mantissa bits,
/// smallest normal 2^-6, subnormal step 2^-9.
pub fn round_to_e4m3(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    if a >= FP8_E4M3_MAX {
        return FP8_E4M3_MAX.copysign(x);
    }
    if a == 0.0 {
        return 0.0f32.copysign(x);
    }
    let exponent = (((a.to_bits() >> 23) & 0xff) as i32 - 127).max(-6);
    // Spacing of e4m3 values in this binade: 3 mantissa bits.
    let step = 2f32.powi(exponent - 3);
    let r = (a / step).round_ties_even() * step;
    r.min(FP8_E4M3_MAX).copysign(x)
}

/// The byte of an e4m3fn value (as `round_to_e4m3` returns them: finite,
/// at most 448 in magnitude): sign, 4 exponent bits (bias 7), 3 mantissa
/// bits; exponent field 0 holds the subnormals (multiples of 2^-9). NaN is 0x7f.
pub fn e4m3_bits(v: f32) -> u8 {
    if v.is_nan() {
        return 0x7f;
    }
    let q = round_to_e4m3(v);
    let sign = if q.is_sign_negative() { 0x80u8 } else { 0 };
    let a = q.abs();
    if a == 0.0 {
        return sign;
    }
    let exponent = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
    if exponent < -6 {
        // Subnormal: a = m * 2^-9, m in 1..=7.
        return sign | (a / 2f32.powi(-9)) as u8;
    }
    let mantissa = ((a / 2f32.powi(exponent) - 1.0) * 8.0) as u8;
    sign | (((exponent + 7) as u8) << 3) | mantissa
}

/// The weight of one GEMM in its 8-bit format, row by row as given
/// (`[out, in]`), with its per-output-channel scales: int8 codes as two's
/// complement bytes, fp8 as e4m3fn bytes.
pub fn quantize_weight(
    w: &[f32],
    out: usize,
    format: QuantFormat,
    scaling: WeightScales,
) -> (Vec<u8>, Vec<f32>) {
    let scales = weight_scales(w, out, format, scaling);
    let bytes = quantize_with_scales(w, &scales, format);
    (bytes, scales)
}

/// The 8-bit codes of a `[out, in]` weight with the given scale per output
/// row (`scales.len()` rows).
pub fn quantize_with_scales(w: &[f32], scales: &[f32], format: QuantFormat) -> Vec<u8> {
    let inp = w.len() / scales.len().max(1);
    let mut bytes = Vec::with_capacity(w.len());
    for (row, &s) in w.chunks_exact(inp.max(1)).zip(scales) {
        for &v in row {
            let q = format.quantize(v, s);
            bytes.push(match format {
                QuantFormat::Int8 => q as i8 as u8,
                QuantFormat::Fp8 => e4m3_bits(q),
            });
        }
    }
    bytes
}

/// The four GEMMs of a layer, in the order the encoder runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GemmKind {
    Qkv,
    AttnOut,
    FfnIn,
    FfnOut,
}

impl GemmKind {
    pub const ALL: [GemmKind; 4] = [
        GemmKind::Qkv,
        GemmKind::AttnOut,
        GemmKind::FfnIn,
        GemmKind::FfnOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GemmKind::Qkv => "qkv",
            GemmKind::AttnOut => "attn_out",
            GemmKind::FfnIn => "ffn_in",
            GemmKind::FfnOut => "ffn_out",
        }
    }

    /// (N, K): output and input features.
    pub fn dims(self, hidden: usize, inter: usize) -> (usize, usize) {
        match self {
            GemmKind::Qkv => (3 * hidden, hidden),
            GemmKind::AttnOut => (hidden, hidden),
            GemmKind::FfnIn => (inter, hidden),
            GemmKind::FfnOut => (hidden, inter),
        }
    }

    /// Whether the residual stream is added to the GEMM's output.
    pub fn has_residual(self) -> bool {
        matches!(self, GemmKind::AttnOut | GemmKind::FfnOut)
    }
}

/// One GEMM of the model: layer and kind. Its canonical name,
/// `layers.{layer}.{kind}`, is what calibration tables, fallback lists and
/// `embedrt info` use; its input activation is `layers.{layer}.{kind}.input`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GemmSite {
    pub layer: usize,
    pub kind: GemmKind,
}

impl GemmSite {
    /// Every GEMM of a model with `layers` layers, in execution order.
    pub fn all(layers: usize) -> Vec<GemmSite> {
        (0..layers)
            .flat_map(|layer| GemmKind::ALL.map(|kind| GemmSite { layer, kind }))
            .collect()
    }

    pub fn name(&self) -> String {
        format!("layers.{}.{}", self.layer, self.kind.name())
    }

    /// Name of the GEMM's input activation in a calibration table.
    pub fn input_name(&self) -> String {
        format!("{}.input", self.name())
    }

    /// Parses `layers.N.kind` (a GEMM name), with or without `.input`.
    pub fn parse(name: &str) -> Option<GemmSite> {
        let rest = name.strip_prefix("layers.")?;
        let rest = rest.strip_suffix(".input").unwrap_or(rest);
        let (layer, kind) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        let kind = GemmKind::ALL.into_iter().find(|k| k.name() == kind)?;
        Some(GemmSite { layer, kind })
    }
}

/// A calibrated activation: a GEMM's input, or a layer's QKV GEMM output
/// (Q, K and V as attention reads them in an `attention_inputs: fp8` table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activation {
    Input(GemmSite),
    QkvOutput(usize),
}

impl Activation {
    /// `layers.{l}.{kind}.input` or `layers.{l}.qkv.output`.
    pub fn name(&self) -> String {
        match self {
            Activation::Input(site) => site.input_name(),
            Activation::QkvOutput(layer) => qkv_output_name(*layer),
        }
    }
}

/// Name of a layer's QKV GEMM output in a calibration table.
pub fn qkv_output_name(layer: usize) -> String {
    format!("layers.{layer}.qkv.output")
}

/// How a tensor's clipping range (`amax`) is chosen from its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum CalibrationMethod {
    /// The largest magnitude seen.
    Minmax,
    /// The given percentile of |x| (e.g. 99.99).
    Percentile { percentile: f64 },
    /// The threshold minimising the KL divergence between the clipped
    /// histogram and its quantized version (TensorRT's entropy calibrator).
    Entropy,
    /// The threshold minimising the mean squared quantization error.
    Mse,
}

impl CalibrationMethod {
    pub fn name(&self) -> String {
        match self {
            CalibrationMethod::Minmax => "minmax".into(),
            CalibrationMethod::Percentile { percentile } => format!("percentile:{percentile}"),
            CalibrationMethod::Entropy => "entropy".into(),
            CalibrationMethod::Mse => "mse".into(),
        }
    }
}

impl FromStr for CalibrationMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (head, arg) = match s.split_once(':') {
            Some((h, a)) => (h, Some(a)),
            None => (s, None),
        };
        match (head, arg) {
            ("minmax", None) => Ok(CalibrationMethod::Minmax),
            ("entropy", None) => Ok(CalibrationMethod::Entropy),
            ("mse", None) => Ok(CalibrationMethod::Mse),
            ("percentile", None) => Ok(CalibrationMethod::Percentile {
                percentile: 99.99,
            }),
            ("percentile", Some(p)) => match p.parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => {
                    Ok(CalibrationMethod::Percentile { percentile: v })
                }
                _ => Err(Error::Input(format!(
                    "calibrator {s:?}: the percentile must be a number in (0, 100], e.g. percentile:99.99"
                ))),
            },
            _ => Err(Error::Input(format!(
                "unknown calibrator {s:?}; supported: entropy, percentile[:P], minmax, mse"
            ))),
        }
    }
}

/// One calibrated activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorScale {
    /// `layers.{l}.{kind}.input`, or `layers.{l}.qkv.output`.
    pub name: String,
    /// Clipping range: values beyond ±amax saturate.
    pub amax: f32,
    /// `amax / format.max_value()`.
    pub scale: f32,
    /// The calibrator that chose amax (`CalibrationMethod::name`).
    pub method: String,
}

/// What a table was made for, so it is never applied to another model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFingerprint {
    pub architecture: String,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// sha256 of the weights the statistics were gathered with.
    pub weights_sha256: String,
}

/// Accuracy of a quantized model against fp32, measured when it was built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredAccuracy {
    /// Mean cosine similarity to fp32 over the held-out sentences.
    pub mean_cosine: f64,
    pub min_cosine: f64,
    pub held_out_sentences: usize,
    /// Spearman x 100 of fp32 and of the quantized model, when `--eval` gave an STS file.
    pub spearman_fp32: Option<f64>,
    pub spearman_quantized: Option<f64>,
}

/// `PLAN.calib.json` or `embedrt calibrate`'s output: the activation scales
/// of one model in one format, the GEMMs kept in float, and how it was made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CalibrationTable {
    /// Version of this file's layout.
    pub format_version: u32,
    pub model: ModelFingerprint,
    pub precision: QuantFormat,
    pub calibrator: String,
    /// Sentences the statistics were gathered over.
    pub sentences: usize,
    pub tensors: Vec<TensorScale>,
    /// GEMM names (`layers.{l}.{kind}`) kept in fp16.
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub accuracy: Option<MeasuredAccuracy>,
    /// How the quantized GEMMs' weights are scaled (absent in older tables:
    /// per channel).
    #[serde(default)]
    pub weight_scales: WeightScales,
    /// The FFN's GELU in the quantized model (absent in older tables: exact).
    #[serde(default)]
    pub gelu: GeluForm,
    /// What attention reads (absent in older tables: float Q, K, V).
    #[serde(default)]
    pub attention_inputs: AttentionInputs,
    /// How the fallback GEMMs' weights are stored (absent in older tables: float).
    #[serde(default)]
    pub fallback_weights: FallbackWeights,
}

pub const CALIBRATION_TABLE_VERSION: u32 = 1;

impl CalibrationTable {
    pub fn read(path: &Path) -> Result<Self> {
        let table: CalibrationTable = read_json(path)?;
        if table.format_version != CALIBRATION_TABLE_VERSION {
            return Err(Error::Input(format!(
                "{}: calibration table format {} is not supported (this embedrt reads {}); run `embedrt calibrate` again",
                path.display(),
                table.format_version,
                CALIBRATION_TABLE_VERSION
            )));
        }
        Ok(table)
    }

    /// Writes the table atomically, pretty-printed.
    pub fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Input(format!("calibration table: {e}")))?;
        crate::fsutil::write_atomic(path, &json).map_err(|e| Error::io(path, e))
    }

    /// Refuses a table made for another model.
    pub fn check_model(&self, model: &ModelFingerprint, path: &Path) -> Result<()> {
        if &self.model != model {
            return Err(Error::Input(format!(
                "{}: this calibration table was made for another model ({} with {} layers, weights sha256 {}), not this one ({} with {} layers, weights sha256 {}); calibrate this model",
                path.display(),
                self.model.architecture,
                self.model.num_layers,
                short(&self.model.weights_sha256),
                model.architecture,
                model.num_layers,
                short(&model.weights_sha256)
            )));
        }
        Ok(())
    }

    /// The calibrated activation named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorScale> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The scale of a GEMM's input activation.
    pub fn input_scale(&self, site: GemmSite) -> Option<f32> {
        self.tensor(&site.input_name()).map(|t| t.scale)
    }

    /// The scale of a layer's QKV GEMM output (Q, K, V in 8 bits).
    pub fn qkv_output_scale(&self, layer: usize) -> Option<f32> {
        self.tensor(&qkv_output_name(layer)).map(|t| t.scale)
    }

    /// Whether attention of `layer` reads 8-bit Q, K, V: an `fp8` table whose
    /// QKV GEMM of that layer is quantized.
    pub fn attention_reads_fp8(&self, layer: usize) -> bool {
        self.attention_inputs == AttentionInputs::Fp8
            && !self.is_fallback(GemmSite {
                layer,
                kind: GemmKind::Qkv,
            })
    }

    /// Refuses `attention_inputs: fp8` where it cannot hold: in a table
    /// that is not fp8, or without a positive `layers.{l}.qkv.output` scale
    /// for a layer whose QKV GEMM is quantized.
    pub fn check_attention_inputs(&self, layers: usize) -> Result<()> {
        if self.attention_inputs != AttentionInputs::Fp8 {
            return Ok(());
        }
        if self.precision != QuantFormat::Fp8 {
            return Err(Error::Input(format!(
                "calibration table: attention_inputs fp8 needs an fp8 table, this one is {}; \
                 calibrate with --attention-inputs float",
                self.precision.name()
            )));
        }
        for layer in (0..layers).filter(|&l| self.attention_reads_fp8(l)) {
            match self.qkv_output_scale(layer) {
                Some(s) if s > 0.0 && s.is_finite() => {}
                _ => {
                    return Err(Error::Input(format!(
                        "calibration table: attention_inputs is fp8 but {} has no positive \
                         scale; calibrate this model again",
                        qkv_output_name(layer)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Whether a GEMM stays in float.
    pub fn is_fallback(&self, site: GemmSite) -> bool {
        let name = site.name();
        self.fallback.contains(&name)
    }

    /// How a GEMM's weight is stored: `Some(scaling)` in the 8-bit format
    /// (a quantized GEMM with the table's scaling, or a fallback GEMM with
    /// `fallback_weights: 8bit`, per channel), `None` in float.
    pub fn weight_storage(&self, site: GemmSite) -> Option<WeightScales> {
        weight_storage(
            self.is_fallback(site),
            self.fallback_weights,
            self.weight_scales,
        )
    }
}

/// [`CalibrationTable::weight_storage`] from its parts, for the plans and
/// engines that carry them apart from a table. A fallback GEMM's 8-bit weight
/// is scaled per channel whatever the table's scaling: it runs as a float
/// GEMM, where one scale per channel costs nothing and is the most exact.
pub fn weight_storage(
    fallback: bool,
    fallback_weights: FallbackWeights,
    scaling: WeightScales,
) -> Option<WeightScales> {
    match (fallback, fallback_weights) {
        (false, _) => Some(scaling),
        (true, FallbackWeights::EightBit) => Some(WeightScales::Channel),
        (true, FallbackWeights::Float) => None,
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Symmetric scales of a `[out, in]` weight (PyTorch's layout), one per
/// output channel: `scale[n] = max_k |w[n, k]| / format.max_value()`; with
/// `WeightScales::Tensor` every channel gets the largest of them.
pub fn weight_scales(
    w: &[f32],
    out: usize,
    format: QuantFormat,
    scaling: WeightScales,
) -> Vec<f32> {
    let inp = w.len() / out.max(1);
    let amax: Vec<f32> = w
        .chunks_exact(inp.max(1))
        .take(out)
        .map(|row| row.iter().fold(0.0f32, |m, &v| m.max(v.abs())))
        .collect();
    scales_from_amax(&amax, format, scaling)
}

/// The scales of a weight from its channels' largest magnitudes: one per
/// channel, or (per tensor) the largest channel's for every channel.
pub fn scales_from_amax(amax: &[f32], format: QuantFormat, scaling: WeightScales) -> Vec<f32> {
    match scaling {
        WeightScales::Channel => amax.iter().map(|&a| format.scale_for(a)).collect(),
        WeightScales::Tensor => {
            let s = format.scale_for(amax.iter().fold(0.0f32, |m, &a| m.max(a)));
            vec![s; amax.len()]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_rounding_matches_the_format() {
        // Exactly representable values stay.
        for v in [
            0.0f32,
            1.0,
            1.125,
            448.0,
            -448.0,
            2f32.powi(-9),
            240.0,
            0.015625,
        ] {
            assert_eq!(round_to_e4m3(v), v, "{v}");
        }
        // Saturation, ties to even, subnormals.
        assert_eq!(round_to_e4m3(1000.0), 448.0);
        assert_eq!(round_to_e4m3(-1e9), -448.0);
        assert_eq!(round_to_e4m3(1.0625), 1.0); // tie between 1.0 and 1.125 -> even mantissa
        assert_eq!(round_to_e4m3(1.1875), 1.25); // tie between 1.125 and 1.25 -> even
        assert_eq!(round_to_e4m3(2f32.powi(-10)), 0.0); // half the smallest subnormal: tie -> 0
        assert_eq!(round_to_e4m3(3.0 * 2f32.powi(-10)), 2.0 * 2f32.powi(-9));
        assert!(round_to_e4m3(f32::NAN).is_nan());
    }

    #[test]
    fn e4m3_bytes_encode_the_format() {
        assert_eq!(e4m3_bits(0.0), 0x00);
        assert_eq!(e4m3_bits(-0.0), 0x80);
        assert_eq!(e4m3_bits(1.0), 0x38);
        assert_eq!(e4m3_bits(448.0), 0x7e);
        assert_eq!(e4m3_bits(-448.0), 0xfe);
        assert_eq!(e4m3_bits(1e9), 0x7e);
        assert_eq!(e4m3_bits(2f32.powi(-9)), 0x01);
        assert_eq!(e4m3_bits(2f32.powi(-6)), 0x08);
        assert_eq!(e4m3_bits(1.125), 0x39);
        assert_eq!(e4m3_bits(-3.0), 0xc4);
        // Every byte but NaN decodes back to itself.
        for b in 0u8..=255 {
            if b & 0x7f == 0x7f {
                continue;
            }
            let (s, e, m) = ((b >> 7) & 1, ((b >> 3) & 0xf) as i32, (b & 7) as f32);
            let mag = if e == 0 {
                m * 2f32.powi(-9)
            } else {
                (1.0 + m / 8.0) * 2f32.powi(e - 7)
            };
            let v = if s == 1 { -mag } else { mag };
            assert_eq!(e4m3_bits(v), b, "{v}");
        }
    }

    #[test]
    fn weights_quantize_per_row() {
        let w = [1.0, -0.3, 0.25, 2.0, 0.0, -2.0];
        let (bytes, scales) = quantize_weight(&w, 2, QuantFormat::Int8, WeightScales::Channel);
        assert_eq!(scales, vec![1.0 / 127.0, 2.0 / 127.0]);
        assert_eq!(bytes, vec![127, (-38i8) as u8, 32, 127, 0, (-127i8) as u8]);
        let (bytes, _) = quantize_weight(&w, 2, QuantFormat::Fp8, WeightScales::Channel);
        assert_eq!(bytes[0], e4m3_bits(448.0));
        assert_eq!(bytes[5], e4m3_bits(-448.0));
    }

    #[test]
    fn int8_saturates_and_rounds_half_to_even() {
        let f = QuantFormat::Int8;
        assert_eq!(f.quantize(2.5, 1.0), 2.0);
        assert_eq!(f.quantize(3.5, 1.0), 4.0);
        assert_eq!(f.quantize(1e6, 1.0), 127.0);
        assert_eq!(f.quantize(-1e6, 1.0), -128.0);
        assert_eq!(f.scale_for(0.0), 1.0);
        assert_eq!(f.scale_for(12.7), 0.1);
    }

    #[test]
    fn sites_and_methods_round_trip() {
        let sites = GemmSite::all(2);
        assert_eq!(sites.len(), 8);
        for s in sites {
            assert_eq!(GemmSite::parse(&s.name()), Some(s));
            assert_eq!(GemmSite::parse(&s.input_name()), Some(s));
        }
        assert_eq!(GemmSite::parse("layers.x.qkv"), None);
        assert_eq!(GemmSite::parse("layers.0.nope"), None);
        for m in ["entropy", "minmax", "mse", "percentile:99.9"] {
            let parsed: CalibrationMethod = m.parse().unwrap();
            assert_eq!(parsed.name(), m);
        }
        assert!("percentile:101".parse::<CalibrationMethod>().is_err());
        assert!("kl".parse::<CalibrationMethod>().is_err());
    }

    #[test]
    fn weight_scales_are_per_output_channel() {
        let w = [1.0, -4.0, 0.5, 0.0, 0.0, 0.0];
        let s = weight_scales(&w, 3, QuantFormat::Int8, WeightScales::Channel);
        assert_eq!(s, vec![4.0 / 127.0, 0.5 / 127.0, 1.0]);
        // Per tensor: every channel takes the largest amax.
        let s = weight_scales(&w, 3, QuantFormat::Fp8, WeightScales::Tensor);
        assert_eq!(s, vec![4.0 / FP8_E4M3_MAX; 3]);
        let (bytes, _) = quantize_weight(&w, 3, QuantFormat::Fp8, WeightScales::Tensor);
        assert_eq!(bytes[1], e4m3_bits(-448.0));
        assert_eq!(bytes[2], e4m3_bits(0.5 / (4.0 / FP8_E4M3_MAX)));
    }

    #[test]
    fn weight_scaling_and_gelu_forms_parse_and_default() {
        for w in [WeightScales::Channel, WeightScales::Tensor] {
            assert_eq!(w.name().parse::<WeightScales>().unwrap(), w);
        }
        for g in [GeluForm::Exact, GeluForm::Tanh] {
            assert_eq!(g.name().parse::<GeluForm>().unwrap(), g);
        }
        let e = "row".parse::<WeightScales>().unwrap_err().to_string();
        assert!(e.contains("channel, tensor"), "{e}");
        assert!("erf".parse::<GeluForm>().is_err());
        // Tables without the fields (older ones) mean per channel and exact.
        assert_eq!(WeightScales::default(), WeightScales::Channel);
        assert_eq!(GeluForm::default(), GeluForm::Exact);
        let fp8 = WeightScales::default_for(QuantFormat::Fp8);
        assert_eq!(fp8, WeightScales::Tensor);
        assert_eq!(GeluForm::default_for(QuantFormat::Fp8, fp8), GeluForm::Tanh);
        let int8 = WeightScales::default_for(QuantFormat::Int8);
        assert_eq!(int8, WeightScales::Channel);
        assert_eq!(
            GeluForm::default_for(QuantFormat::Int8, int8),
            GeluForm::Exact
        );
        let chan = WeightScales::Channel;
        assert_eq!(
            GeluForm::default_for(QuantFormat::Fp8, chan),
            GeluForm::Exact
        );
    }

    #[test]
    fn fallback_weights_parse_default_and_choose_the_storage() {
        for f in [FallbackWeights::Float, FallbackWeights::EightBit] {
            assert_eq!(f.name().parse::<FallbackWeights>().unwrap(), f);
        }
        let e = "int4".parse::<FallbackWeights>().unwrap_err().to_string();
        assert!(e.contains("8bit, float"), "{e}");
        // Older tables (no field) keep float fallbacks, and so do new ones until the
        // GPU path has run on a GPU (default_for_new_tables).
        assert_eq!(FallbackWeights::default(), FallbackWeights::Float);
        assert_eq!(
            FallbackWeights::default_for_new_tables(),
            FallbackWeights::Float
        );
        let (t, c) = (WeightScales::Tensor, WeightScales::Channel);
        assert_eq!(weight_storage(false, FallbackWeights::Float, t), Some(t));
        assert_eq!(weight_storage(true, FallbackWeights::Float, t), None);
        // A fallback's 8-bit weight is per channel even in a per-tensor table.
        assert_eq!(weight_storage(true, FallbackWeights::EightBit, t), Some(c));
        let json = serde_json::to_string(&FallbackWeights::EightBit).unwrap();
        assert_eq!(json, "\"8bit\"");
    }

    #[test]
    fn attention_inputs_parse_and_name_their_scales() {
        for a in [AttentionInputs::Float, AttentionInputs::Fp8] {
            assert_eq!(a.name().parse::<AttentionInputs>().unwrap(), a);
        }
        let e = "int8".parse::<AttentionInputs>().unwrap_err().to_string();
        assert!(e.contains("float, fp8"), "{e}");
        assert_eq!(AttentionInputs::default(), AttentionInputs::Float);
        assert_eq!(Activation::QkvOutput(3).name(), "layers.3.qkv.output");
        let site = GemmSite {
            layer: 1,
            kind: GemmKind::FfnOut,
        };
        assert_eq!(Activation::Input(site).name(), "layers.1.ffn_out.input");
        // An output name is not a GEMM input.
        assert_eq!(GemmSite::parse("layers.3.qkv.output"), None);
    }
}
