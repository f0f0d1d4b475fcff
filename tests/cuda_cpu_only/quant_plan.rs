//! Quantized plans without a GPU: 8-bit GEMM weights (1 byte a parameter,
//! per-channel scales that decode back to the weights), fallback GEMMs in
//! fp16, the header's quantization record through a file, version-1 plans
//! still loading, and the errors for bad tables and fp8 on older GPUs.

use embedrt_core::quant::{
    round_to_e4m3, CalibrationTable, TensorScale, CALIBRATION_TABLE_VERSION,
};
use embedrt_core::{GemmKind, GemmSite, QuantFormat};
use embedrt_cuda::build::assemble_quantized_plan;
use embedrt_cuda::plan::GemmChoice;
use embedrt_cuda::plan::{layer_tensor, GpuTarget, Plan};
use embedrt_cuda::quant_plan::{
    check_format_supported, check_gemm_output, check_table_forms, GemmOutput,
};
use sha2::{Digest, Sha256};

use super::{h100, model, written};

const FIXTURE: &str = "tiny-bert-mean-norm";

fn table(format: QuantFormat, fallback: &[&str]) -> CalibrationTable {
    let m = model(FIXTURE);
    let layers = m.config.num_hidden_layers;
    let tensors = GemmSite::all(layers)
        .iter()
        .map(|s| TensorScale {
            name: s.input_name(),
            amax: 4.0,
            scale: format.scale_for(4.0),
            method: "minmax".into(),
        })
        .collect();
    CalibrationTable {
        format_version: CALIBRATION_TABLE_VERSION,
        model: embedrt_quant::fingerprint(&m).unwrap(),
        precision: format,
        calibrator: "minmax".into(),
        sentences: 7,
        tensors,
        fallback: fallback.iter().map(|s| s.to_string()).collect(),
        accuracy: None,
        weight_scales: Default::default(),
        gelu: Default::default(),
        attention_inputs: Default::default(),
        fallback_weights: Default::default(),
    }
}

fn quant_plan(
    format: QuantFormat,
    fallback: &[&str],
    gpu: GpuTarget,
) -> embedrt_core::Result<Plan> {
    quant_plan_writing(format, fallback, gpu, GemmOutput::Acc32)
}

fn quant_plan_writing(
    format: QuantFormat,
    fallback: &[&str],
    gpu: GpuTarget,
    output: GemmOutput,
) -> embedrt_core::Result<Plan> {
    let m = model(FIXTURE);
    let w = m.load_weights().unwrap();
    let t = table(format, fallback);
    assemble_quantized_plan(
        &m,
        &w,
        &t,
        &t.fallback,
        "1x8:16x64:64x128".parse().unwrap(),
        gpu,
        output,
    )
}

fn bytes_of<'a>(plan: &'a Plan, name: &str) -> &'a [u8] {
    let t = plan.tensor(name).unwrap();
    &plan.weights[t.offset..t.offset + t.bytes]
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn gemm_weights_take_one_byte_and_decode_to_the_weights() {
    let m = model(FIXTURE);
    let w = m.load_weights().unwrap();
    for format in [QuantFormat::Int8, QuantFormat::Fp8] {
        let plan = quant_plan(format, &["layers.1.ffn_in"], h100()).unwrap();
        let q = plan.header.quant.as_ref().expect("quant header");
        assert_eq!(q.format, format);
        assert_eq!(plan.header.precision_name(), format.name());
        assert_eq!(q.fallback, vec!["layers.1.ffn_in".to_string()]);
        // attn_out of layer 0: [H, H], one byte each, scales per row.
        let lin = &w.layers[0].attn_out.weight;
        let (out, inp) = (lin.shape[0], lin.shape[1]);
        let name = layer_tensor(0, "attn_out.weight");
        let codes = bytes_of(&plan, &name);
        assert_eq!(codes.len(), out * inp);
        let scales = f32s(bytes_of(&plan, &format!("{name}_scale")));
        assert_eq!(scales.len(), out);
        for n in 0..out {
            let row = &lin.data[n * inp..(n + 1) * inp];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!((scales[n] - format.scale_for(amax)).abs() <= 1e-12 + scales[n] * 1e-6);
            for k in 0..inp {
                let code = codes[n * inp + k];
                let decoded = match format {
                    QuantFormat::Int8 => code as i8 as f32,
                    QuantFormat::Fp8 => decode_e4m3(code),
                } * scales[n];
                let want = format.fake_quant(row[k], scales[n]);
                assert!(
                    (decoded - want).abs() <= 1e-6 * want.abs().max(1e-6),
                    "{decoded} vs {want}"
                );
            }
        }
        // The fallback GEMM stays fp16 (2 bytes a parameter, no scales).
        let f = plan.tensor(&layer_tensor(1, "ffn_in.weight")).unwrap();
        assert_eq!(f.bytes, 2 * f.shape.iter().product::<usize>());
        assert!(plan
            .tensor(&layer_tensor(1, "ffn_in.weight_scale"))
            .is_err());
        // Byte accounting: 1 byte per quantized parameter (+ fp32 scales), 2 per fallback one.
        let (mut want, mut params) = (0, 0);
        for s in GemmSite::all(m.config.num_hidden_layers) {
            let t = plan
                .tensor(&layer_tensor(s.layer, &format!("{}.weight", s.kind.name())))
                .unwrap();
            let p: usize = t.shape.iter().product();
            params += p;
            want += if s.layer == 1 && s.kind == GemmKind::FfnIn {
                2 * p
            } else {
                p + 4 * t.shape[0]
            };
        }
        assert_eq!(q.gemm_params, params);
        assert_eq!(q.gemm_weight_bytes, want);
        assert!(q.gemm_weight_ratio() < 0.5, "{}", q.gemm_weight_ratio());
    }
}

/// `fallback_weights: 8bit`: the fallback GEMM's weight is 1 byte a parameter too, scaled per
/// channel even in a per-tensor table, and each slot holds one fp16 weight to widen it into.
#[test]
fn eight_bit_fallback_weights_take_one_byte_and_a_widening_buffer() {
    use embedrt_core::quant::{FallbackWeights, WeightScales};
    let m = model(FIXTURE);
    let w = m.load_weights().unwrap();
    let profile: embedrt_cuda::Profile = "1x8:16x64:64x128".parse().unwrap();
    for format in [QuantFormat::Int8, QuantFormat::Fp8] {
        let mut t = table(format, &["layers.1.ffn_in"]);
        t.weight_scales = WeightScales::Tensor;
        let float =
            assemble_quantized_plan(&m, &w, &t, &t.fallback, profile, h100(), GemmOutput::Acc32)
                .unwrap();
        t.fallback_weights = FallbackWeights::EightBit;
        let plan =
            assemble_quantized_plan(&m, &w, &t, &t.fallback, profile, h100(), GemmOutput::Acc32)
                .unwrap();
        let q = plan.header.quant.as_ref().unwrap();
        assert_eq!(q.fallback_weights, FallbackWeights::EightBit);
        let name = layer_tensor(1, "ffn_in.weight");
        let lin = &w.layers[1].ffn_in.weight;
        let (out, inp) = (lin.shape[0], lin.shape[1]);
        let codes = bytes_of(&plan, &name);
        assert_eq!(codes.len(), out * inp);
        let scales = f32s(bytes_of(&plan, &format!("{name}_scale")));
        for n in 0..out {
            let row = &lin.data[n * inp..(n + 1) * inp];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            // Per channel: this row's own range, not the tensor's.
            assert!((scales[n] - format.scale_for(amax)).abs() <= scales[n] * 1e-6);
            for k in 0..inp {
                let decoded = match format {
                    QuantFormat::Int8 => codes[n * inp + k] as i8 as f32,
                    QuantFormat::Fp8 => decode_e4m3(codes[n * inp + k]),
                } * scales[n];
                let want = format.fake_quant(row[k], scales[n]);
                assert!((decoded - want).abs() <= 1e-6 * want.abs().max(1e-6));
            }
        }
        // Every GEMM weight is 8-bit now: a quarter of fp32 plus the scales.
        let fq = float.header.quant.as_ref().unwrap();
        assert_eq!(
            fq.gemm_weight_bytes - q.gemm_weight_bytes,
            out * inp - 4 * out
        );
        let scale_bytes: usize = GemmSite::all(m.config.num_hidden_layers)
            .iter()
            .map(|s| {
                let (n, _) = s
                    .kind
                    .dims(m.config.hidden_size, m.config.intermediate_size);
                4 * n
            })
            .sum();
        assert_eq!(q.gemm_weight_bytes, q.gemm_params + scale_bytes);
        // The slot's widening buffer: this fallback's fp16 weight.
        assert_eq!(
            plan.header.workspace_bytes - float.header.workspace_bytes,
            2 * out * inp
        );
        let sites: Vec<GemmSite> = q.eight_bit_fallbacks(m.config.num_hidden_layers).collect();
        assert_eq!(sites, vec![GemmSite::parse("layers.1.ffn_in").unwrap()]);
        // The record survives the file.
        let (_dir, path, _) = written(&plan);
        let back = Plan::read(&path).unwrap();
        assert_eq!(back.header.quant.as_ref().unwrap(), q);
    }
}

fn decode_e4m3(b: u8) -> f32 {
    let (s, e, m) = ((b >> 7) & 1, ((b >> 3) & 0xf) as i32, (b & 7) as f32);
    let mag = if e == 0 {
        m * 2f32.powi(-9)
    } else {
        (1.0 + m / 8.0) * 2f32.powi(e - 7)
    };
    let v = if s == 1 { -mag } else { mag };
    assert_eq!(round_to_e4m3(v), v);
    v
}

#[test]
fn quantization_record_survives_the_file() {
    let plan = quant_plan(QuantFormat::Int8, &[], h100()).unwrap();
    let (_dir, path, _) = written(&plan);
    let back = Plan::read(&path).unwrap();
    assert_eq!(back.header.quant, plan.header.quant);
    let q = back.header.quant.unwrap();
    let site = GemmSite {
        layer: 0,
        kind: GemmKind::Qkv,
    };
    assert_eq!(q.act_scale(site), Some(4.0 / 127.0));
    assert!(!q.is_fallback(site));
    // The workspace holds the 8-bit copies and the accumulators too.
    let fp16 = super::plan_of(FIXTURE, embedrt_cuda::Precision::Fp16);
    assert!(back.header.workspace_bytes > fp16.header.workspace_bytes);
}

#[test]
fn fp16_output_plans_hold_no_accumulators() {
    let acc32 = quant_plan_writing(QuantFormat::Fp8, &[], h100(), GemmOutput::Acc32).unwrap();
    let fp16 = quant_plan_writing(QuantFormat::Fp8, &[], h100(), GemmOutput::Fp16).unwrap();
    assert_eq!(
        fp16.header.quant.as_ref().unwrap().gemm_output,
        GemmOutput::Fp16
    );
    // The accumulators: the padded token budget x the widest GEMM output, 4 bytes each.
    let c = &fp16.header.config;
    let t = fp16.header.profile.token_budget().next_multiple_of(16);
    let acc = t * (3 * c.hidden_size).max(c.intermediate_size) * 4;
    assert_eq!(
        acc32.header.workspace_bytes - fp16.header.workspace_bytes,
        acc
    );
    // int8 GEMMs cannot write fp16: refused when the plan is made.
    let e = quant_plan_writing(QuantFormat::Int8, &[], h100(), GemmOutput::Fp16)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("acc32"), "{e}");
}

#[test]
fn version_1_plans_still_load() {
    let plan = super::plan_of(FIXTURE, embedrt_cuda::Precision::Fp16);
    let (_dir, path, mut bytes) = written(&plan);
    bytes[16..20].copy_from_slice(&1u32.to_le_bytes());
    let body = bytes.len() - 32;
    let sum = Sha256::digest(&bytes[..body]);
    bytes[body..].copy_from_slice(&sum);
    std::fs::write(&path, &bytes).unwrap();
    let back = Plan::read(&path).expect("a version-1 plan loads");
    assert_eq!(back.header.quant, None);
    assert_eq!(back.header.precision_name(), "fp16");
}

#[test]
fn fp8_is_refused_below_ada_naming_the_gpu() {
    let a10 = GpuTarget {
        name: "NVIDIA A10G".into(),
        cc_major: 8,
        cc_minor: 6,
    };
    let e = quant_plan(QuantFormat::Fp8, &[], a10.clone())
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("NVIDIA A10G") && e.contains("8.6") && e.contains("8.9"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    // int8 is fine there, and so is fp8 on Ada and Hopper.
    assert!(quant_plan(QuantFormat::Int8, &[], a10).is_ok());
    assert!(check_format_supported(QuantFormat::Fp8, "NVIDIA L4", (8, 9)).is_ok());
    assert!(check_format_supported(QuantFormat::Fp8, "Tesla T4", (7, 5)).is_err());
}

#[test]
fn bad_tables_are_refused_with_the_tensor_named() {
    let m = model(FIXTURE);
    let w = m.load_weights().unwrap();
    let profile = "1x8:16x64:64x128".parse().unwrap();
    let mut t = table(QuantFormat::Int8, &[]);
    t.tensors.retain(|s| s.name != "layers.1.ffn_out.input");
    let e = assemble_quantized_plan(&m, &w, &t, &[], profile, h100(), GemmOutput::Acc32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layers.1.ffn_out.input"), "{e}");
    // ... unless that GEMM falls back.
    let fb = vec!["layers.1.ffn_out".to_string()];
    assert!(assemble_quantized_plan(&m, &w, &t, &fb, profile, h100(), GemmOutput::Acc32).is_ok());
    let e = assemble_quantized_plan(
        &m,
        &w,
        &t,
        &["layers.9.qkv".into()],
        profile,
        h100(),
        GemmOutput::Acc32,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("layers.9.qkv"), "{e}");
    let mut t = table(QuantFormat::Int8, &[]);
    t.tensors[0].scale = f32::NAN;
    let e = assemble_quantized_plan(&m, &w, &t, &[], profile, h100(), GemmOutput::Acc32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layers.0.qkv.input"), "{e}");
}

#[test]
fn gemm_output_and_tuned_algorithms_survive_the_file_and_default_to_run_19s_path() {
    let mut plan = quant_plan(QuantFormat::Fp8, &[], h100()).unwrap();
    // A plan as `embedrt build` wrote it before these fields: acc32, no algorithms.
    assert_eq!(
        plan.header.quant.as_ref().unwrap().gemm_output,
        GemmOutput::Acc32
    );
    let json = serde_json::to_value(&plan.header).unwrap();
    assert!(
        json["quant"].get("gemm_algos").is_none(),
        "empty list not written"
    );
    let mut old = json.clone();
    old["quant"].as_object_mut().unwrap().remove("gemm_output");
    let back: embedrt_cuda::plan::PlanHeader = serde_json::from_value(old).unwrap();
    assert_eq!(back.quant.unwrap().gemm_output, GemmOutput::Acc32);
    // fp16 output with timed algorithms, through a file.
    let q = plan.header.quant.as_mut().unwrap();
    q.gemm_output = GemmOutput::Fp16Fast;
    q.gemm_algos = vec![GemmChoice {
        gemm: "ffn_in".into(),
        tokens: 4096,
        algo: "ab".repeat(64),
    }];
    let (_dir, path, _) = written(&plan);
    let back = Plan::read(&path).unwrap();
    assert_eq!(back.header.quant, plan.header.quant);
    let text = serde_json::to_string(&back.header).unwrap();
    assert!(text.contains("\"gemm_output\":\"fp16-fast\""), "{text}");
}

#[test]
fn gemm_output_names_parse_and_bad_ones_say_what_is_expected() {
    for o in [GemmOutput::Acc32, GemmOutput::Fp16, GemmOutput::Fp16Fast] {
        assert_eq!(o.name().parse::<GemmOutput>().unwrap(), o);
    }
    let e = "fp8".parse::<GemmOutput>().unwrap_err().to_string();
    assert!(
        e.contains("acc32, fp16, fp16-fast") && !e.contains('\n'),
        "{e}"
    );
}

#[test]
fn fp16_gemm_output_is_only_for_fp8_on_hopper() {
    use GemmOutput::*;
    // acc32 runs everywhere the format does.
    assert!(check_gemm_output(Acc32, QuantFormat::Int8, "Tesla T4", (7, 5)).is_ok());
    assert!(check_gemm_output(Acc32, QuantFormat::Fp8, "NVIDIA L4", (8, 9)).is_ok());
    assert!(check_gemm_output(Fp16, QuantFormat::Fp8, "NVIDIA H200", (9, 0)).is_ok());
    assert!(check_gemm_output(Fp16Fast, QuantFormat::Fp8, "NVIDIA H100", (9, 0)).is_ok());
    // int8 GEMMs cannot write fp16 with per-channel scales.
    let e = check_gemm_output(Fp16, QuantFormat::Int8, "NVIDIA H200", (9, 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("int8") && e.contains("acc32") && !e.contains('\n'),
        "{e}"
    );
    // Ada has fp8 but not the outer-vector scales: named, with what to use instead.
    let e = check_gemm_output(Fp16, QuantFormat::Fp8, "NVIDIA L4", (8, 9))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("NVIDIA L4") && e.contains("8.9") && e.contains("9.0") && e.contains("acc32"),
        "{e}"
    );
}

#[test]
fn fp8_defaults_to_fp16_gemm_output_on_hopper_only() {
    assert_eq!(
        GemmOutput::default_for(QuantFormat::Fp8, (9, 0)),
        GemmOutput::Fp16Fast
    );
    assert_eq!(
        GemmOutput::default_for(QuantFormat::Fp8, (8, 9)),
        GemmOutput::Acc32
    );
    assert_eq!(
        GemmOutput::default_for(QuantFormat::Int8, (9, 0)),
        GemmOutput::Acc32
    );
    assert_eq!(
        GemmOutput::default_for(QuantFormat::Int8, (7, 5)),
        GemmOutput::Acc32
    );
}

#[test]
fn per_tensor_tables_pack_one_scale_a_weight_and_the_forms_survive_the_file() {
    use embedrt_core::quant::{GeluForm, WeightScales};
    let m = model(FIXTURE);
    let w = m.load_weights().unwrap();
    let mut t = table(QuantFormat::Fp8, &[]);
    t.weight_scales = WeightScales::Tensor;
    t.gelu = GeluForm::Tanh;
    let profile = "1x8:16x64:64x128".parse().unwrap();
    let plan = assemble_quantized_plan(&m, &w, &t, &[], profile, h100(), GemmOutput::Fp16).unwrap();
    for kind in ["qkv", "attn_out", "ffn_in", "ffn_out"] {
        let s = f32s(bytes_of(
            &plan,
            &layer_tensor(0, &format!("{kind}.weight_scale")),
        ));
        assert!(s.len() > 1 && s.iter().all(|&v| v == s[0]), "{kind}: {s:?}");
    }
    let (_dir, path, _) = written(&plan);
    let q = Plan::read(&path).unwrap().header.quant.unwrap();
    assert_eq!(
        (q.weight_scales, q.gelu),
        (WeightScales::Tensor, GeluForm::Tanh)
    );
    // Per channel, the scales differ between channels.
    let plain = quant_plan_writing(QuantFormat::Fp8, &[], h100(), GemmOutput::Fp16).unwrap();
    let s = f32s(bytes_of(&plain, &layer_tensor(0, "ffn_in.weight_scale")));
    assert!(s.iter().any(|&v| v != s[0]));
    let q = plain.header.quant.unwrap();
    assert_eq!(
        (q.weight_scales, q.gelu),
        (WeightScales::Channel, GeluForm::Exact)
    );
}

#[test]
fn tanh_gelu_with_fp16_output_needs_per_tensor_scales() {
    use embedrt_core::quant::AttentionInputs::{Float, Fp8};
    use embedrt_core::quant::{GeluForm, WeightScales};
    use GemmOutput::*;
    let (c, t) = (WeightScales::Channel, WeightScales::Tensor);
    assert!(check_table_forms(Fp16, t, GeluForm::Tanh, Float).is_ok());
    assert!(check_table_forms(Fp16, c, GeluForm::Exact, Float).is_ok());
    // acc32 applies the tanh form in our own epilogue, at any scaling.
    assert!(check_table_forms(Acc32, c, GeluForm::Tanh, Float).is_ok());
    let e = check_table_forms(Fp16Fast, c, GeluForm::Tanh, Float)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--weight-scales tensor") && e.contains("acc32") && !e.contains('\n'),
        "{e}"
    );
    // fp8 Q, K, V come from cuBLASLt's fp8 D: fp16-output plans only.
    assert!(check_table_forms(Fp16Fast, t, GeluForm::Tanh, Fp8).is_ok());
    let e = check_table_forms(Acc32, t, GeluForm::Tanh, Fp8)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--attention-inputs") && !e.contains('\n'), "{e}");
}

#[test]
fn fp8_attention_plans_record_each_quantized_layers_qkv_scale() {
    use embedrt_core::quant::{qkv_output_name, AttentionInputs, WeightScales};
    let m = model(FIXTURE);
    let w = m.load_weights().unwrap();
    let layers = m.config.num_hidden_layers;
    let mut t = table(QuantFormat::Fp8, &[]);
    t.weight_scales = WeightScales::Tensor;
    t.attention_inputs = AttentionInputs::Fp8;
    t.tensors.extend((0..layers).map(|l| TensorScale {
        name: qkv_output_name(l),
        amax: 8.0 + l as f32,
        scale: QuantFormat::Fp8.scale_for(8.0 + l as f32),
        method: "minmax".into(),
    }));
    let profile = "1x8:16x64:64x128".parse().unwrap();
    // Layer 0's QKV stays fp16: its attention reads fp16 Q, K, V.
    let fb = vec!["layers.0.qkv".to_string()];
    let plan = assemble_quantized_plan(&m, &w, &t, &fb, profile, h100(), GemmOutput::Fp16).unwrap();
    let (_dir, path, _) = written(&plan);
    let q = Plan::read(&path).unwrap().header.quant.unwrap();
    assert_eq!(q.attention_inputs, AttentionInputs::Fp8);
    assert_eq!(q.qkv_output_scale(0), None);
    for l in 1..layers {
        assert_eq!(
            q.qkv_output_scale(l),
            Some(QuantFormat::Fp8.scale_for(8.0 + l as f32))
        );
    }
    // The GEMM count info prints is the inputs' and fallbacks' alone.
    assert_eq!(q.activations.len() + q.fallback.len(), 4 * layers);
    // A missing range is refused with its name; so is an int8 table asking for it.
    let mut missing = t.clone();
    missing.tensors.retain(|s| s.name != qkv_output_name(1));
    let e = assemble_quantized_plan(&m, &w, &missing, &[], profile, h100(), GemmOutput::Fp16)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layers.1.qkv.output"), "{e}");
    let mut int8 = t.clone();
    int8.precision = QuantFormat::Int8;
    int8.weight_scales = WeightScales::Channel;
    let e = assemble_quantized_plan(&m, &w, &int8, &[], profile, h100(), GemmOutput::Acc32)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs an fp8 table"), "{e}");
}
