//! Writing an export directory: `model.onnx`, `tokenizer.json` and
//! `manifest.json`, each atomically (temp file in the directory, then
//! rename), so a reader never sees a half-written file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use embedrt_core::SentenceModel;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::encoder::{ATTENTION_MASK, INPUT_IDS, SENTENCE_EMBEDDING, TOKEN_EMBEDDINGS};
use crate::{build_model_quantized, check_opset, fp32_gemm_input_names, Precision};
use embedrt_quant::trt_cache::{TrtAlgorithm, TrtCache, DEFAULT_TRT_VERSION};

pub const MODEL_FILE: &str = "model.onnx";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT: &str = "embedrt-onnx-export/1";

pub struct ExportOptions {
    pub precision: Precision,
    pub opset: i64,
    /// A calibration table (checked against the model by the caller): write
    /// QDQ int8 and a TensorRT calibration cache, or QDQ fp8 (TensorRT takes
    /// FP8 only as explicit Q/DQ: no cache).
    pub quant: Option<embedrt_core::CalibrationTable>,
}

/// TensorRT's calibration cache beside a QDQ export.
pub const TRT_CACHE_FILE: &str = "calibration.cache";

/// What the manifest records of a quantized export.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuantManifest {
    pub calibrator: String,
    /// sha256 of the calibration table's JSON as it was applied.
    pub table_sha256: String,
    pub fallback: Vec<String>,
    /// The TensorRT calibration cache beside an int8 export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trt_calibration_cache: Option<String>,
}

/// `manifest.json`: what the export is and how to check it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub source: String,
    pub architecture: String,
    pub precision: String,
    pub opset: i64,
    pub pooling: String,
    pub normalize: bool,
    pub max_seq_length: usize,
    pub hidden_size: usize,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// sha256 of the source `model.safetensors`.
    pub weights_sha256: String,
    /// sha256 of the written `model.onnx`.
    pub onnx_sha256: String,
    pub tokenizer_sha256: String,
    pub embedrt_version: String,
    /// Present for `--precision int8|fp8` (QDQ) exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantManifest>,
}

pub struct ExportReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub onnx_bytes: usize,
}

/// Exports `model` into `dir` (created if missing). `step` is told what is
/// happening, for a progress display.
pub fn export_dir(
    model: &SentenceModel,
    dir: &Path,
    opts: &ExportOptions,
    step: &dyn Fn(&str),
) -> Result<ExportReport> {
    check_opset(opts.opset)?;
    step("loading the weights");
    let weights = model
        .load_weights()
        .with_context(|| format!("loading the weights of {}", model.source))?;
    step("hashing the weights");
    let weights_sha256 = sha256_file(&model.weights_path())?;
    prepare_dir(dir, &weights_sha256)?;

    step("building the graph");
    let onnx = build_model_quantized(
        model,
        &weights,
        opts.precision,
        opts.opset,
        opts.quant.as_ref(),
    )?;
    let quantization = match &opts.quant {
        None => None,
        Some(table) => {
            let int8 = table.precision == embedrt_core::QuantFormat::Int8;
            let cache_path = dir.join(TRT_CACHE_FILE);
            if int8 {
                let cache = trt_cache(model, &weights, table);
                write_atomic(&cache_path, cache.to_text().as_bytes())?;
            } else if cache_path.exists() {
                // An earlier int8 export's cache would not describe this model.
                std::fs::remove_file(&cache_path)
                    .with_context(|| format!("{}: cannot remove", cache_path.display()))?;
            }
            Some(QuantManifest {
                calibrator: table.calibrator.clone(),
                table_sha256: hex::encode(Sha256::digest(serde_json::to_vec(table)?)),
                fallback: table.fallback.clone(),
                trt_calibration_cache: int8.then(|| TRT_CACHE_FILE.into()),
            })
        }
    };
    drop(weights);
    let tokenizer = export_tokenizer(model)?;

    step("writing");
    write_atomic(&dir.join(MODEL_FILE), &onnx)?;
    write_atomic(&dir.join(TOKENIZER_FILE), &tokenizer)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        source: model.source.clone(),
        architecture: model.config.architecture.name().into(),
        precision: match &opts.quant {
            Some(t) => t.precision.name().into(),
            None => opts.precision.name().into(),
        },
        opset: opts.opset,
        pooling: model.pooling.name().into(),
        normalize: model.normalize,
        max_seq_length: model.max_seq_length,
        hidden_size: model.config.hidden_size,
        inputs: vec![INPUT_IDS.into(), ATTENTION_MASK.into()],
        outputs: vec![TOKEN_EMBEDDINGS.into(), SENTENCE_EMBEDDING.into()],
        weights_sha256,
        onnx_sha256: hex::encode(Sha256::digest(&onnx)),
        tokenizer_sha256: hex::encode(Sha256::digest(&tokenizer)),
        embedrt_version: env!("CARGO_PKG_VERSION").into(),
        quantization,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    write_atomic(&dir.join(MANIFEST_FILE), &json)?;
    Ok(ExportReport {
        dir: dir.to_path_buf(),
        manifest,
        onnx_bytes: onnx.len(),
    })
}

/// The TensorRT cache for the fp32 export's tensor names: one line per
/// quantized GEMM input, scale amax / 127 (TensorRT's int8 scale).
fn trt_cache(
    model: &SentenceModel,
    weights: &embedrt_core::TransformerWeights,
    table: &embedrt_core::CalibrationTable,
) -> TrtCache {
    let mut scales: Vec<(String, f32)> = Vec::new();
    for (site, name) in fp32_gemm_input_names(model, weights) {
        if table.is_fallback(site) || scales.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if let Some(t) = table.tensors.iter().find(|t| t.name == site.input_name()) {
            scales.push((name, embedrt_core::QuantFormat::Int8.scale_for(t.amax)));
        }
    }
    TrtCache {
        version: DEFAULT_TRT_VERSION,
        algorithm: TrtAlgorithm::for_method(&table.calibrator),
        scales,
    }
}

/// Creates `dir` if needed and refuses one that holds an export of other
/// weights (or an ONNX model nobody vouches for); re-exporting the same
/// weights, in any precision, replaces the files.
fn prepare_dir(dir: &Path, weights_sha256: &str) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: exists and is not a directory", dir.display());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the output directory", dir.display()))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        let text = std::fs::read(&manifest_path)
            .with_context(|| format!("{}: cannot read", manifest_path.display()))?;
        let old: Manifest = serde_json::from_slice(&text).map_err(|_| {
            anyhow::anyhow!(
                "{}: already holds a manifest.json that is not an embedrt export manifest; choose another output directory",
                dir.display()
            )
        })?;
        if old.weights_sha256 != weights_sha256 {
            bail!(
                "{}: already holds an export of a different model ({}, weights sha256 {}); choose another output directory or remove it",
                dir.display(),
                old.source,
                &old.weights_sha256[..old.weights_sha256.len().min(12)]
            );
        }
    } else if dir.join(MODEL_FILE).exists() {
        bail!(
            "{}: already holds a model.onnx without a manifest.json, so it may be a different model; choose another output directory or remove it",
            dir.display()
        );
    }
    // Fail before the expensive work if we cannot write here.
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: output directory is not writable", dir.display()))?;
    Ok(())
}

/// The model's tokenizer.json, set up the way the graph expects its inputs:
/// truncation at max_seq_length, and (if the file pads at all) padding to
/// the longest sequence of the batch, which yields the attention mask.
fn export_tokenizer(model: &SentenceModel) -> Result<Vec<u8>> {
    let mut tok: serde_json::Value = serde_json::from_slice(&model.tokenizer_json)
        .with_context(|| format!("{}: tokenizer.json is not JSON", model.dir.display()))?;
    let Some(obj) = tok.as_object_mut() else {
        bail!(
            "{}: tokenizer.json is not a JSON object",
            model.dir.display()
        );
    };
    obj.insert(
        "truncation".into(),
        serde_json::json!({
            "direction": "Right",
            "max_length": model.max_seq_length,
            "strategy": "LongestFirst",
            "stride": 0
        }),
    );
    if let Some(padding) = obj.get_mut("padding").and_then(|p| p.as_object_mut()) {
        padding.insert("strategy".into(), serde_json::json!("BatchLongest"));
    }
    let mut bytes = serde_json::to_vec(&tok)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// Writes `bytes` to `path` via a temp file in the same directory and a
/// rename, so `path` is either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    embedrt_core::fsutil::write_atomic(path, bytes).with_context(|| {
        format!(
            "{}: cannot write (is the output directory writable?)",
            path.display()
        )
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    embedrt_core::fsutil::sha256_file(path).with_context(|| format!("{}", path.display()))
}
