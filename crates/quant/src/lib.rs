//! embedrt-quant: post-training quantization. Activation statistics over
//! calibration text (gathered from the fp32 CPU engine, so any machine can
//! make them), the calibrators that turn them into scales, the calibration
//! table, the sensitivity fallback search, and TensorRT's calibration cache.

pub mod calibrators;
pub mod fallback;
pub mod histogram;
pub mod input;
pub mod reference;
pub mod trt_cache;

use std::collections::BTreeMap;

use embedrt_core::quant::{
    Activation, CalibrationMethod, CalibrationTable, GemmSite, ModelFingerprint, QuantFormat,
    TensorScale, CALIBRATION_TABLE_VERSION,
};
use embedrt_core::{Error, Result, SentenceModel, TokenBatch};
use embedrt_cpu::CpuEngine;

pub use fallback::{Accuracy, AccuracyTarget, FallbackChoice};
pub use histogram::{AbsHistogram, DEFAULT_BINS};
pub use input::{read_calibration_text, CalibrationText};

/// The calibrator used for int8 when none is given: on MiniLM it lost the
/// least STS accuracy with every GEMM quantized (docs/perf/quantization.md).
pub const DEFAULT_CALIBRATOR: &str = "percentile:99.99";
/// fp8's 3-bit mantissa gives every magnitude the same relative error, so
/// clipping only costs: minmax is its default (same measurements).
pub const DEFAULT_FP8_CALIBRATOR: &str = "minmax";

/// The default calibrator of a format.
pub fn default_calibrator(format: QuantFormat) -> &'static str {
    match format {
        QuantFormat::Int8 => DEFAULT_CALIBRATOR,
        QuantFormat::Fp8 => DEFAULT_FP8_CALIBRATOR,
    }
}

/// How to calibrate.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    pub format: QuantFormat,
    pub method: CalibrationMethod,
    /// Histogram bins of the first batch.
    pub bins: usize,
    /// Sentences per forward pass.
    pub batch_size: usize,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        CalibrateOptions {
            format: QuantFormat::Int8,
            method: DEFAULT_CALIBRATOR
                .parse()
                .unwrap_or(CalibrationMethod::Entropy),
            bins: DEFAULT_BINS,
            batch_size: 32,
        }
    }
}

/// The statistics of every GEMM input over the calibration sentences (and,
/// for fp8, of every QKV GEMM output: what fp8 attention reads).
#[derive(Clone, Debug)]
pub struct ActivationStats {
    pub sentences: usize,
    pub histograms: BTreeMap<Activation, AbsHistogram>,
}

impl ActivationStats {
    /// The table `method` makes from these statistics, for `format`.
    pub fn table(
        &self,
        fingerprint: &ModelFingerprint,
        format: QuantFormat,
        method: &CalibrationMethod,
    ) -> CalibrationTable {
        let tensors = self
            .histograms
            .iter()
            .map(|(activation, hist)| {
                let amax = calibrators::amax(hist, method, format);
                TensorScale {
                    name: activation.name(),
                    amax,
                    scale: format.scale_for(amax),
                    method: method.name(),
                }
            })
            .collect();
        CalibrationTable {
            format_version: CALIBRATION_TABLE_VERSION,
            model: fingerprint.clone(),
            precision: format,
            calibrator: method.name(),
            sentences: self.sentences,
            tensors,
            fallback: Vec::new(),
            accuracy: None,
            weight_scales: Default::default(),
            gelu: Default::default(),
            attention_inputs: Default::default(),
            fallback_weights: Default::default(),
        }
    }
}

/// What a calibration table is bound to: architecture, shape and the
/// sha256 of `model.safetensors`.
pub fn fingerprint(model: &SentenceModel) -> Result<ModelFingerprint> {
    let path = model.weights_path();
    let weights_sha256 =
        embedrt_core::fsutil::sha256_file(&path).map_err(|e| Error::io(&path, e))?;
    Ok(ModelFingerprint {
        architecture: model.config.architecture.name().into(),
        hidden_size: model.config.hidden_size,
        num_layers: model.config.num_hidden_layers,
        weights_sha256,
    })
}

/// The fp32 CPU engine of `model` (what statistics and the fake-quant
/// reference start from).
pub fn fp32_engine(model: &SentenceModel) -> Result<CpuEngine> {
    let weights = model.load_weights()?;
    CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)
}

/// Runs `engine` (fp32) over `sentences` and gathers the statistics of
/// every GEMM input. Batches run one after another, each GEMM
/// multi-threaded inside, so the histograms (whose bins depend on the
/// order values arrive) are the same on every run. `progress(done, total)`
/// is told after each batch.
pub fn collect_stats(
    model: &SentenceModel,
    engine: &CpuEngine,
    sentences: &[String],
    opts: &CalibrateOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<ActivationStats> {
    if sentences.is_empty() {
        return Err(Error::Input("no calibration sentences".into()));
    }
    let encoded = model.tokenizer.encode_all(sentences)?;
    let layers = engine.num_layers();
    let mut watched: Vec<Activation> = GemmSite::all(layers)
        .into_iter()
        .map(Activation::Input)
        .collect();
    if opts.format == QuantFormat::Fp8 {
        // Q, K, V ranges: what an `attention_inputs: fp8` table scales them by.
        watched.extend((0..layers).map(Activation::QkvOutput));
    }
    let mut histograms: BTreeMap<Activation, AbsHistogram> = watched
        .into_iter()
        .map(|a| (a, AbsHistogram::new(opts.bins)))
        .collect();
    let batch_size = opts.batch_size.max(1);
    let mut done = 0;
    progress(0, sentences.len());
    for chunk in encoded.chunks(batch_size) {
        let ids: Vec<&[u32]> = chunk.iter().map(|e| e.ids.as_slice()).collect();
        let batch = TokenBatch::from_sequences(&ids);
        let mut observe = |activation: Activation, x: &[f32]| {
            if let Some(h) = histograms.get_mut(&activation) {
                h.add(x);
            }
        };
        engine.token_embeddings_observed(&batch, &mut observe)?;
        done += chunk.len();
        progress(done, sentences.len());
    }
    Ok(ActivationStats {
        sentences: sentences.len(),
        histograms,
    })
}

/// The calibration table of `model` over `sentences`: statistics from the
/// fp32 CPU engine, amax per GEMM input from `opts.method`. No fallback
/// and no accuracy yet (see [`reference::CpuEvaluator::choose_fallback`]).
pub fn calibrate(
    model: &SentenceModel,
    sentences: &[String],
    opts: &CalibrateOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<CalibrationTable> {
    let engine = fp32_engine(model)?;
    let stats = collect_stats(model, &engine, sentences, opts, progress)?;
    Ok(stats.table(&fingerprint(model)?, opts.format, &opts.method))
}

/// Mean and minimum cosine between two sets of embeddings, row by row.
pub fn cosine_accuracy(reference: &[Vec<f32>], quantized: &[Vec<f32>]) -> Accuracy {
    let cos: Vec<f64> = reference
        .iter()
        .zip(quantized)
        .map(|(a, b)| embedrt_core::sts::cosine(a, b))
        .collect();
    let n = cos.len().max(1) as f64;
    Accuracy {
        mean_cosine: cos.iter().sum::<f64>() / n,
        min_cosine: cos.iter().copied().fold(1.0, f64::min),
        spearman: None,
    }
}

/// `table` with `fallback` as its fallback list (names, execution order).
pub fn with_fallback(table: &CalibrationTable, fallback: &[GemmSite]) -> CalibrationTable {
    let mut sites = fallback.to_vec();
    sites.sort();
    let mut t = table.clone();
    t.fallback = sites.iter().map(GemmSite::name).collect();
    t
}

/// Writes the raw input of every GEMM in `sites`, batch by batch, as
/// little-endian f32 files `DIR/{site input name}.{batch}.f32` (`[tokens,
/// in]`), batched exactly as [`collect_stats`] batches them: what the
/// calibrator cross-check against ONNX Runtime feeds both sides.
pub fn dump_activations(
    model: &SentenceModel,
    engine: &CpuEngine,
    sentences: &[String],
    opts: &CalibrateOptions,
    sites: &[GemmSite],
    dir: &std::path::Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let encoded = model.tokenizer.encode_all(sentences)?;
    for (b, chunk) in encoded.chunks(opts.batch_size.max(1)).enumerate() {
        let ids: Vec<&[u32]> = chunk.iter().map(|e| e.ids.as_slice()).collect();
        let batch = TokenBatch::from_sequences(&ids);
        let mut failed = None;
        let mut observe = |activation: Activation, x: &[f32]| {
            let Activation::Input(site) = activation else {
                return;
            };
            if failed.is_some() || !sites.contains(&site) {
                return;
            }
            let path = dir.join(format!("{}.{b}.f32", site.input_name()));
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            if let Err(e) = embedrt_core::fsutil::write_atomic(&path, &bytes) {
                failed = Some(Error::io(&path, e));
            }
        };
        engine.token_embeddings_observed(&batch, &mut observe)?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(())
}
