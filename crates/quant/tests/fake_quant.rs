//! The CPU fake-quant reference on a tiny fixture: with every GEMM in
//! fallback it is the fp32 engine bit for bit (8-bit fallback weights: the
//! fp32 engine over weights rounded by hand); quantized it stays close but
//! is not identical; the observer sees every GEMM input once per batch.

use std::path::PathBuf;

use embedrt_core::quant::{qkv_output_name, Activation, AttentionInputs, GemmSite, QuantFormat};
use embedrt_core::{Backend, SentenceModel, TokenBatch};
use embedrt_quant::{calibrate, fp32_engine, with_fallback, CalibrateOptions};

fn fixture() -> SentenceModel {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert-mean-norm");
    SentenceModel::load(dir.to_str().unwrap()).unwrap()
}

fn sentences() -> Vec<String> {
    (0..40)
        .map(|i| {
            format!(
                "the cat number {i} sat on the mat {}",
                "and ran ".repeat(i % 5)
            )
        })
        .collect()
}

/// The first eight sentences as one batch.
fn first_eight(model: &SentenceModel, texts: &[String]) -> TokenBatch {
    let ids: Vec<Vec<u32>> = model
        .tokenizer
        .encode_all(&texts[..8])
        .unwrap()
        .into_iter()
        .map(|e| e.ids)
        .collect();
    TokenBatch::from_sequences(&ids)
}

#[test]
fn fallback_everywhere_is_fp32_and_quantized_is_close() {
    let model = fixture();
    let texts = sentences();
    for format in [QuantFormat::Int8, QuantFormat::Fp8] {
        let opts = CalibrateOptions {
            format,
            ..Default::default()
        };
        let table = calibrate(&model, &texts, &opts, &|_, _| {}).unwrap();
        let layers = model.config.num_hidden_layers;
        // fp8 tables also carry each layer's QKV output range (fp8 attention).
        let per_layer = if format == QuantFormat::Fp8 { 5 } else { 4 };
        assert_eq!(table.tensors.len(), per_layer * layers);
        let batch = first_eight(&model, &texts);
        let fp32 = fp32_engine(&model).unwrap();
        let reference = fp32.embed(&batch).unwrap();
        let all_float = with_fallback(&table, &GemmSite::all(layers));
        let same = fp32.clone().with_calibration(&all_float).unwrap();
        assert_eq!(same.embed(&batch).unwrap(), reference);
        let quantized = fp32.clone().with_calibration(&table).unwrap();
        let q = quantized.embed(&batch).unwrap();
        assert_ne!(q, reference);
        let h = model.config.hidden_size;
        for (a, b) in reference.chunks(h).zip(q.chunks(h)) {
            let cos = embedrt_core::sts::cosine(a, b);
            assert!(cos > 0.98, "{format:?}: cosine {cos}");
        }
        let mut seen = Vec::new();
        let mut observe = |a: Activation, x: &[f32]| seen.push((a, x.len()));
        fp32.token_embeddings_observed(&batch, &mut observe)
            .unwrap();
        let sites: Vec<GemmSite> = seen
            .iter()
            .filter_map(|s| match s.0 {
                Activation::Input(site) => Some(site),
                Activation::QkvOutput(_) => None,
            })
            .collect();
        assert_eq!(sites, GemmSite::all(layers));
        assert_eq!(seen[0].1, batch.total_tokens() * h);
        // Each layer's QKV output follows its QKV input.
        assert_eq!(
            seen[1],
            (Activation::QkvOutput(0), batch.total_tokens() * 3 * h)
        );
    }
}

#[test]
fn fp8_attention_inputs_change_the_reference_and_need_their_scales() {
    let model = fixture();
    let texts = sentences();
    let opts = CalibrateOptions {
        format: QuantFormat::Fp8,
        method: "minmax".parse().unwrap(),
        ..Default::default()
    };
    let table = calibrate(&model, &texts, &opts, &|_, _| {}).unwrap();
    let layers = model.config.num_hidden_layers;
    for l in 0..layers {
        let s = table.qkv_output_scale(l).unwrap();
        assert!(s > 0.0 && s.is_finite(), "layer {l}: {s}");
    }
    let batch = first_eight(&model, &texts);
    let fp32 = fp32_engine(&model).unwrap();
    let reference = fp32.embed(&batch).unwrap();
    let float_qkv = fp32.clone().with_calibration(&table).unwrap();
    let float_qkv = float_qkv.embed(&batch).unwrap();
    let mut fp8_table = table.clone();
    fp8_table.attention_inputs = AttentionInputs::Fp8;
    let fp8_qkv = fp32.clone().with_calibration(&fp8_table).unwrap();
    let fp8_qkv = fp8_qkv.embed(&batch).unwrap();
    assert_ne!(fp8_qkv, float_qkv, "8-bit Q, K, V must change the result");
    let h = model.config.hidden_size;
    for (a, b) in reference.chunks(h).zip(fp8_qkv.chunks(h)) {
        let cos = embedrt_core::sts::cosine(a, b);
        assert!(cos > 0.98, "cosine {cos}");
    }
    // Every QKV GEMM in fallback: attention reads float Q, K, V again.
    let qkv_sites: Vec<GemmSite> = GemmSite::all(layers)
        .into_iter()
        .filter(|s| s.kind == embedrt_core::quant::GemmKind::Qkv)
        .collect();
    let no_qkv = with_fallback(&fp8_table, &qkv_sites);
    let mut no_qkv_float = no_qkv.clone();
    no_qkv_float.attention_inputs = AttentionInputs::Float;
    let a = fp32.clone().with_calibration(&no_qkv).unwrap();
    let b = fp32.clone().with_calibration(&no_qkv_float).unwrap();
    assert_eq!(a.embed(&batch).unwrap(), b.embed(&batch).unwrap());
    // A missing range is one clear error.
    let mut missing = fp8_table.clone();
    missing.tensors.retain(|t| t.name != qkv_output_name(1));
    let e = fp32
        .clone()
        .with_calibration(&missing)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("layers.1.qkv.output"), "{e}");
    // int8 tables have no 8-bit attention.
    let mut int8 = fp8_table.clone();
    int8.precision = QuantFormat::Int8;
    let e = fp32
        .clone()
        .with_calibration(&int8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("needs an fp8 table"), "{e}");
}

/// `fallback_weights: 8bit`: a fallback GEMM keeps its fp32 input but its weight goes
/// through the 8-bit format per channel. With every GEMM in fallback that is exactly an
/// fp32 engine over weights fake-quantized here, independently of the engine's own code.
#[test]
fn eight_bit_fallback_weights_are_weight_only_quantization() {
    use embedrt_core::quant::{weight_scales, FallbackWeights, WeightScales};
    use embedrt_core::Tensor;
    let model = fixture();
    let texts = sentences();
    let batch = first_eight(&model, &texts);
    let layers = model.config.num_hidden_layers;
    let fp32 = fp32_engine(&model).unwrap();
    let reference = fp32.embed(&batch).unwrap();
    for format in [QuantFormat::Int8, QuantFormat::Fp8] {
        let opts = CalibrateOptions {
            format,
            ..Default::default()
        };
        let table = calibrate(&model, &texts, &opts, &|_, _| {}).unwrap();
        let mut all_fallback = with_fallback(&table, &GemmSite::all(layers));
        all_fallback.fallback_weights = FallbackWeights::EightBit;
        let engine = fp32.clone().with_calibration(&all_fallback).unwrap();
        let got = engine.embed(&batch).unwrap();
        // The same model by hand: each [out, in] weight rounded per output row.
        let fake = |t: &mut Tensor| {
            let out = t.shape[0];
            let scales = weight_scales(&t.data, out, format, WeightScales::Channel);
            let inp = t.data.len() / out;
            for (row, s) in t.data.chunks_exact_mut(inp).zip(scales) {
                for v in row {
                    *v = format.fake_quant(*v, s);
                }
            }
        };
        let mut w = model.load_weights().unwrap();
        for l in &mut w.layers {
            for lin in [
                &mut l.query,
                &mut l.key,
                &mut l.value,
                &mut l.attn_out,
                &mut l.ffn_in,
                &mut l.ffn_out,
            ] {
                fake(&mut lin.weight);
            }
        }
        let by_hand =
            embedrt_cpu::CpuEngine::new(&model.config, w, model.pooling, model.max_seq_length)
                .unwrap();
        assert_eq!(got, by_hand.embed(&batch).unwrap(), "{format:?}");
        assert_ne!(got, reference, "{format:?}: the weights were not quantized");
        // Weight-only stays nearer fp32 than quantizing the inputs too.
        let quantized = fp32.clone().with_calibration(&table).unwrap();
        let q = quantized.embed(&batch).unwrap();
        let h = model.config.hidden_size;
        let worst = |v: &[f32]| {
            reference
                .chunks(h)
                .zip(v.chunks(h))
                .map(|(a, b)| embedrt_core::sts::cosine(a, b))
                .fold(1.0f64, f64::min)
        };
        assert!(worst(&got) > worst(&q), "{format:?}");
        // e4m3 keeps 3 mantissa bits, int8 per channel about 7: fp8 weights lose more.
        let floor = match format {
            QuantFormat::Int8 => 0.999,
            QuantFormat::Fp8 => 0.995,
        };
        assert!(worst(&got) > floor, "{format:?}: {}", worst(&got));
    }
}
