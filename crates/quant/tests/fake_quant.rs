//! The CPU fake-quant reference on a tiny fixture: with every GEMM in
//! fallback it is the fp32 engine bit for bit; quantized it stays close but
//! is not identical; the observer sees every GEMM input once per batch.

use std::path::PathBuf;

use embedrt_core::quant::{GemmSite, QuantFormat};
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
        assert_eq!(table.tensors.len(), 4 * layers);
        let ids: Vec<Vec<u32>> = model
            .tokenizer
            .encode_all(&texts[..8])
            .unwrap()
            .into_iter()
            .map(|e| e.ids)
            .collect();
        let batch = TokenBatch::from_sequences(&ids);
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
        let mut observe = |site: GemmSite, x: &[f32]| seen.push((site, x.len()));
        fp32.token_embeddings_observed(&batch, &mut observe)
            .unwrap();
        let sites: Vec<GemmSite> = seen.iter().map(|s| s.0).collect();
        assert_eq!(sites, GemmSite::all(layers));
        assert_eq!(seen[0].1, batch.total_tokens() * h);
    }
}
