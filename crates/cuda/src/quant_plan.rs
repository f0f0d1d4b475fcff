//! What a quantized plan records about its quantization (`PlanHeader::quant`)
//! and how its weights are packed: each non-fallback GEMM's weight in 1 byte
//! per parameter with its scales (a fallback GEMM's too, per channel, with
//! `fallback_weights: 8bit`), the activation scales of the calibration table,
//! the GEMMs kept in fp16, the accuracy measured at build.

use embedrt_core::quant::{
    qkv_output_name, quantize_weight, weight_storage, AttentionInputs, CalibrationTable,
    FallbackWeights, GeluForm, MeasuredAccuracy, TensorScale, WeightScales,
};
use embedrt_core::{Error, GemmKind, GemmSite, QuantFormat, Result, TransformerWeights};
use serde::{Deserialize, Serialize};

use crate::plan::{pack_weights_with, GemmChoice, Precision, TensorEntry};

/// How an 8-bit GEMM hands its result on (`embedrt build --quant-gemm-output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GemmOutput {
    /// 32-bit accumulators; our epilogue kernels apply the scales, bias, GELU and
    /// residual + LayerNorm (run 19's path, every GPU).
    #[default]
    Acc32,
    /// fp8 on sm_90: cuBLASLt applies the per-channel (outer-vector) scales, the bias
    /// and the residual and writes fp16, half the bytes the epilogues read back.
    Fp16,
    /// `Fp16` with `CUBLASLT_MATMUL_DESC_FAST_ACCUM` (no periodic promotion of the
    /// fp8 tensor-core partial sums: faster, less exact).
    Fp16Fast,
}

impl GemmOutput {
    pub const NAMES: &'static str = "acc32, fp16, fp16-fast";

    pub fn name(self) -> &'static str {
        match self {
            GemmOutput::Acc32 => "acc32",
            GemmOutput::Fp16 => "fp16",
            GemmOutput::Fp16Fast => "fp16-fast",
        }
    }

    pub fn is_fp16(self) -> bool {
        self != GemmOutput::Acc32
    }
}

impl GemmOutput {
    /// What `embedrt build` uses without `--quant-gemm-output`: fp16 out with
    /// fast accumulation for fp8 where cuBLASLt has the outer-vector scales
    /// (sm_90: run 21 measured fp16 out W1 +24%, W2 +19% over acc32; run 25
    /// fast accumulation W1 +8% more, MPNet-base cosine to fp32 0.99841
    /// against 0.99842), acc32 elsewhere and for int8.
    pub fn default_for(format: QuantFormat, cc: (i32, i32)) -> GemmOutput {
        if format == QuantFormat::Fp8 && cc >= (9, 0) {
            GemmOutput::Fp16Fast
        } else {
            GemmOutput::Acc32
        }
    }
}

impl std::str::FromStr for GemmOutput {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "acc32" => Ok(GemmOutput::Acc32),
            "fp16" => Ok(GemmOutput::Fp16),
            "fp16-fast" => Ok(GemmOutput::Fp16Fast),
            _ => Err(Error::Input(format!(
                "unknown 8-bit GEMM output {s:?}; expected one of {}",
                GemmOutput::NAMES
            ))),
        }
    }
}

/// Refuses a GEMM output the format or GPU cannot give: cuBLASLt's int8
/// (IMMA) GEMMs write int32, or int8 with a float scale, never fp16; fp8
/// with per-channel scales and fp16 out needs the outer-vector scale mode,
/// which cuBLASLt has on Hopper (sm_90) and newer.
pub fn check_gemm_output(
    output: GemmOutput,
    format: QuantFormat,
    gpu: &str,
    cc: (i32, i32),
) -> Result<()> {
    if !output.is_fp16() {
        return Ok(());
    }
    if format != QuantFormat::Fp8 {
        return Err(Error::Input(format!(
            "--quant-gemm-output {} is for fp8 plans: cuBLASLt's int8 GEMMs cannot write fp16 \
             with per-channel scales; use acc32 for {} plans",
            output.name(),
            format.name()
        )));
    }
    if cc < (9, 0) {
        return Err(Error::Input(format!(
            "--quant-gemm-output {} needs cuBLASLt's outer-vector fp8 scales (compute capability \
             9.0 or newer); {gpu} is {}.{}; use acc32 on this GPU",
            output.name(),
            cc.0,
            cc.1
        )));
    }
    Ok(())
}

/// Refuses a table form the GEMM output cannot give: with fp16 output the
/// tanh GELU is cuBLASLt's epilogue, which cuBLASLt has for scalar-scaled
/// fp8 GEMMs only (H200 run 25: no algorithm with outer-vector scales).
pub fn check_table_forms(
    output: GemmOutput,
    scales: WeightScales,
    gelu: GeluForm,
    attention: AttentionInputs,
) -> Result<()> {
    if attention == AttentionInputs::Fp8 && !output.is_fp16() {
        return Err(Error::Input(
            "--attention-inputs fp8 needs fp16 GEMM output (the fp8 QKV GEMM then writes Q, K, V \
             in e4m3 itself); build with --quant-gemm-output auto|fp16|fp16-fast, or calibrate \
             with --attention-inputs float"
                .into(),
        ));
    }
    if output.is_fp16() && gelu == GeluForm::Tanh && scales == WeightScales::Channel {
        return Err(Error::Input(
            "--gelu tanh with fp16 GEMM output needs --weight-scales tensor: cuBLASLt has no GELU \
             epilogue for per-channel (outer-vector) fp8 scales; calibrate with --weight-scales \
             tensor, or build with --quant-gemm-output acc32"
                .into(),
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantInfo {
    pub format: QuantFormat,
    /// The calibrator that chose the activation ranges (`CalibrationMethod::name`).
    pub calibrator: String,
    /// Sentences the calibration statistics were gathered over.
    pub calibration_sentences: usize,
    /// Input activation scales, `layers.{l}.{kind}.input`.
    pub activations: Vec<TensorScale>,
    /// GEMMs kept in fp16 (`layers.{l}.{kind}`), in execution order.
    pub fallback: Vec<String>,
    pub accuracy: Option<MeasuredAccuracy>,
    /// Parameters of all GEMM weights, and the bytes they take in this plan
    /// (1 per 8-bit parameter, 2 per fp16 fallback one, plus the fp32 scales).
    pub gemm_params: usize,
    pub gemm_weight_bytes: usize,
    /// How the 8-bit GEMMs hand their result on (absent in run 19's plans: acc32).
    #[serde(default)]
    pub gemm_output: GemmOutput,
    /// cuBLASLt algorithms timed at build time for the 8-bit GEMMs (`--tune-8bit`),
    /// for `gemm_output`'s descriptors, by GEMM and token count (a multiple of 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gemm_algos: Vec<GemmChoice>,
    /// The table's weight scaling (absent in older plans: per channel).
    #[serde(default)]
    pub weight_scales: WeightScales,
    /// The GELU after quantized FFN-in GEMMs (absent in older plans: exact).
    #[serde(default)]
    pub gelu: GeluForm,
    /// What attention reads (absent in older plans: float Q, K, V).
    #[serde(default)]
    pub attention_inputs: AttentionInputs,
    /// With fp8 attention inputs: the scale of each layer's QKV output
    /// (`layers.{l}.qkv.output`) whose QKV GEMM is quantized.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qkv_outputs: Vec<TensorScale>,
    /// How the fallback GEMMs' weights are stored (absent in older plans: fp16).
    #[serde(default)]
    pub fallback_weights: FallbackWeights,
}

impl QuantInfo {
    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// The per-tensor scale of a GEMM's input activation.
    pub fn act_scale(&self, site: GemmSite) -> Option<f32> {
        let name = site.input_name();
        self.activations
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.scale)
    }

    /// Whether a GEMM runs in fp16.
    pub fn is_fallback(&self, site: GemmSite) -> bool {
        self.fallback.contains(&site.name())
    }

    /// Whether a GEMM's weight is stored in 8 bits (with `{weight}_scale`):
    /// every quantized GEMM, and the fallbacks of an `8bit` plan.
    pub fn weight_is_8bit(&self, site: GemmSite) -> bool {
        weight_storage(
            self.is_fallback(site),
            self.fallback_weights,
            self.weight_scales,
        )
        .is_some()
    }

    /// The fallback GEMMs whose 8-bit weights the GPU widens to fp16 before
    /// their fp16 GEMM.
    pub fn eight_bit_fallbacks(&self, layers: usize) -> impl Iterator<Item = GemmSite> + '_ {
        let eight_bit = self.fallback_weights == FallbackWeights::EightBit;
        GemmSite::all(layers)
            .into_iter()
            .filter(move |&s| eight_bit && self.is_fallback(s))
    }

    /// The scale of layer `layer`'s Q, K, V where attention reads them in
    /// fp8 (None: float Q, K, V).
    pub fn qkv_output_scale(&self, layer: usize) -> Option<f32> {
        if self.attention_inputs != AttentionInputs::Fp8 {
            return None;
        }
        let name = qkv_output_name(layer);
        self.qkv_outputs
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.scale)
    }

    /// What the GEMM weights would take in fp32 (4 bytes a parameter).
    pub fn gemm_weight_bytes_fp32(&self) -> usize {
        4 * self.gemm_params
    }

    /// The plan's GEMM weight bytes as a share of fp32's (0.25 plus the
    /// scales when nothing fell back).
    pub fn gemm_weight_ratio(&self) -> f64 {
        self.gemm_weight_bytes as f64 / self.gemm_weight_bytes_fp32().max(1) as f64
    }
}

/// Refuses fp8 on a GPU without FP8 tensor cores (below Ada, sm_89).
pub fn check_format_supported(format: QuantFormat, gpu: &str, cc: (i32, i32)) -> Result<()> {
    if format == QuantFormat::Fp8 && cc < (8, 9) {
        return Err(Error::Input(format!(
            "--precision fp8 needs FP8 tensor cores (compute capability 8.9 or newer: Ada, Hopper); \
             {gpu} is compute capability {}.{}; use --precision int8 on this GPU",
            cc.0, cc.1
        )));
    }
    Ok(())
}

/// Checks a calibration table against a model of `layers` layers: every
/// GEMM that is not a fallback has a finite positive input scale, and every
/// fallback name is a GEMM of the model.
pub fn check_table(table: &CalibrationTable, layers: usize) -> Result<()> {
    for f in &table.fallback {
        match GemmSite::parse(f) {
            Some(s) if s.layer < layers && !f.ends_with(".input") => {}
            _ => {
                return Err(Error::Input(format!(
                    "calibration table: fallback entry {f:?} is not a GEMM of this {layers}-layer \
                     model (expected layers.N.qkv|attn_out|ffn_in|ffn_out)"
                )))
            }
        }
    }
    table.check_attention_inputs(layers)?;
    for site in GemmSite::all(layers) {
        if table.is_fallback(site) {
            continue;
        }
        match table.input_scale(site) {
            Some(s) if s.is_finite() && s > 0.0 => {}
            Some(s) => {
                return Err(Error::Input(format!(
                    "calibration table: {} has scale {s}, which is not a positive number; calibrate again",
                    site.input_name()
                )))
            }
            None => {
                return Err(Error::Input(format!(
                    "calibration table: no scale for {} (quantized GEMM {}); calibrate this model \
                     or list the GEMM in `fallback`",
                    site.input_name(),
                    site.name()
                )))
            }
        }
    }
    Ok(())
}

/// The weights of a quantized plan (fp16 outside the 8-bit GEMMs) and what
/// the header records. `fallback` overrides the table's list.
pub fn pack_quantized(
    weights: &TransformerWeights,
    table: &CalibrationTable,
    fallback: &[String],
) -> Result<(Vec<TensorEntry>, Vec<u8>, QuantInfo)> {
    let layers = weights.layers.len();
    let mut table = table.clone();
    table.fallback = fallback.to_vec();
    check_table(&table, layers)?;
    let format = table.precision;
    let (entries, blob) = pack_weights_with(weights, Precision::Fp16, &|(layer, kind), w| {
        let scaling = table.weight_storage(GemmSite { layer, kind })?;
        let out = gemm_out_features(weights, kind);
        Some(quantize_weight(w, out, format, scaling))
    });
    let mut gemm_params = 0;
    let mut gemm_weight_bytes = 0;
    for site in GemmSite::all(layers) {
        let name = crate::plan::layer_tensor(site.layer, &format!("{}.weight", site.kind.name()));
        for e in entries
            .iter()
            .filter(|e| e.name == name || e.name == format!("{name}_scale"))
        {
            gemm_weight_bytes += e.bytes;
            if e.name == name {
                gemm_params += e.shape.iter().product::<usize>();
            }
        }
    }
    // Fallback names in execution order, as info prints them.
    let fallback: Vec<String> = GemmSite::all(layers)
        .into_iter()
        .filter(|s| table.is_fallback(*s))
        .map(|s| s.name())
        .collect();
    let activations = GemmSite::all(layers)
        .into_iter()
        .filter(|s| !table.is_fallback(*s))
        .filter_map(|s| table.tensor(&s.input_name()).cloned())
        .collect();
    let qkv_outputs = (0..layers)
        .filter(|&l| table.attention_reads_fp8(l))
        .filter_map(|l| table.tensor(&qkv_output_name(l)).cloned())
        .collect();
    let info = QuantInfo {
        format,
        calibrator: table.calibrator.clone(),
        calibration_sentences: table.sentences,
        activations,
        fallback,
        accuracy: table.accuracy.clone(),
        gemm_params,
        gemm_weight_bytes,
        gemm_output: GemmOutput::default(),
        gemm_algos: Vec::new(),
        weight_scales: table.weight_scales,
        gelu: table.gelu,
        attention_inputs: table.attention_inputs,
        qkv_outputs,
        fallback_weights: table.fallback_weights,
    };
    Ok((entries, blob, info))
}

fn gemm_out_features(weights: &TransformerWeights, kind: GemmKind) -> usize {
    let l = &weights.layers[0];
    match kind {
        GemmKind::Qkv => 3 * l.query.weight.shape[0],
        GemmKind::AttnOut => l.attn_out.weight.shape[0],
        GemmKind::FfnIn => l.ffn_in.weight.shape[0],
        GemmKind::FfnOut => l.ffn_out.weight.shape[0],
    }
}
