//! The quantized model's CPU reference: fake quantization. Each quantized
//! GEMM's input activation goes through quantize-dequantize with its
//! per-tensor scale from the calibration table, and its weight through
//! quantize-dequantize with one scale per output channel; the GEMM itself,
//! and everything around it, stays fp32. A fallback GEMM keeps fp32 inputs;
//! its weight goes through the 8-bit format too (per channel) where the
//! table's `fallback_weights` is `8bit`. The GPU kernels and the QDQ ONNX
//! export are checked against this.

use embedrt_core::quant::{
    scales_from_amax, weight_storage, CalibrationTable, FallbackWeights, GeluForm, GemmSite,
    QuantFormat, WeightScales,
};
use embedrt_core::{Error, Result};
use rayon::prelude::*;

/// What the forward pass needs to know per GEMM.
#[derive(Clone, Debug)]
pub(crate) struct FakeQuant {
    pub format: QuantFormat,
    pub weight_scales: WeightScales,
    /// How fallback GEMMs' weights are stored (the table's `fallback_weights`).
    pub fallback_weights: FallbackWeights,
    /// The GELU after a quantized FFN-in GEMM (the table's `gelu`).
    pub gelu: GeluForm,
    /// Input scale of each GEMM, `None` where the GEMM stays fp32
    /// (fallback); indexed by `layer * 4 + kind`.
    input_scales: Vec<Option<f32>>,
    /// Per layer: the scale Q, K and V are fake-quantized with before
    /// attention (`attention_inputs: fp8` tables, quantized QKV GEMMs).
    qkv_output_scales: Vec<Option<f32>>,
}

impl FakeQuant {
    /// Checks that the table covers every non-fallback GEMM of the model.
    pub fn from_table(table: &CalibrationTable, layers: usize) -> Result<Self> {
        let mut input_scales = Vec::with_capacity(layers * 4);
        for site in GemmSite::all(layers) {
            if table.is_fallback(site) {
                input_scales.push(None);
                continue;
            }
            match table.input_scale(site) {
                Some(s) if s > 0.0 && s.is_finite() => input_scales.push(Some(s)),
                Some(s) => {
                    return Err(Error::Input(format!(
                        "calibration table: {} has scale {s}, which is not a positive number; calibrate again",
                        site.input_name()
                    )))
                }
                None => {
                    return Err(Error::Input(format!(
                        "calibration table: no scale for {} (and it is not in the fallback list); calibrate this model again",
                        site.input_name()
                    )))
                }
            }
        }
        table.check_attention_inputs(layers)?;
        let qkv_output_scales = (0..layers)
            .map(|l| {
                table
                    .qkv_output_scale(l)
                    .filter(|_| table.attention_reads_fp8(l))
            })
            .collect();
        Ok(FakeQuant {
            format: table.precision,
            weight_scales: table.weight_scales,
            fallback_weights: table.fallback_weights,
            gelu: table.gelu,
            input_scales,
            qkv_output_scales,
        })
    }

    /// The scale of layer `layer`'s Q, K, V where attention reads them in 8 bits.
    pub fn qkv_output_scale(&self, layer: usize) -> Option<f32> {
        self.qkv_output_scales.get(layer).copied().flatten()
    }

    pub fn input_scale(&self, site: GemmSite) -> Option<f32> {
        self.input_scales[site.layer * 4 + site.kind as usize]
    }

    /// How the weight of `site` goes through the 8-bit format, `None`
    /// where it stays fp32 (`quant::weight_storage`).
    pub fn weight_storage(&self, site: GemmSite) -> Option<WeightScales> {
        let fallback = self.input_scale(site).is_none();
        weight_storage(fallback, self.fallback_weights, self.weight_scales)
    }
}

/// Quantize-dequantize `x` into `out` with one scale.
pub(crate) fn fake_quant_into(format: QuantFormat, scale: f32, x: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(o, i)| {
            for (o, &v) in o.iter_mut().zip(i) {
                *o = format.fake_quant(v, scale);
            }
        });
}

/// Quantize-dequantize `x` in place with one scale.
pub(crate) fn fake_quant_in_place(format: QuantFormat, scale: f32, x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|c| {
        for v in c {
            *v = format.fake_quant(*v, scale);
        }
    });
}

/// Quantize-dequantize a weight stored transposed, `[in, out]`, with one
/// scale per output channel (per column here), or the largest of them for
/// every channel: the same scales as `quant::weight_scales` on PyTorch's
/// `[out, in]`.
pub(crate) fn fake_quant_weight_t(
    format: QuantFormat,
    scaling: WeightScales,
    w_t: &mut [f32],
    out: usize,
) {
    let mut amax = vec![0.0f32; out];
    for row in w_t.chunks_exact(out) {
        for (m, &v) in amax.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let scales = scales_from_amax(&amax, format, scaling);
    for row in w_t.chunks_exact_mut(out) {
        for (v, &s) in row.iter_mut().zip(&scales) {
            *v = format.fake_quant(*v, s);
        }
    }
}
