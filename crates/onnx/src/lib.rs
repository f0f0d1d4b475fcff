//! embedrt-onnx: writes a sentence-embedding model as a self-contained ONNX
//! file — encoder, pooling and normalization in one graph of standard
//! operators — from the weights, in Rust, with no Python or torch.
//!
//! The graph takes `input_ids` and `attention_mask` (int64, `[batch,
//! sequence]`, both dynamic) and gives `token_embeddings` `[batch,
//! sequence, hidden]` and `sentence_embedding` `[batch, hidden]` (fp32).
//! [`export_dir`] writes it with the tokenizer and a manifest.

mod encoder;
mod export;
mod graph;

/// The ONNX protobuf types, generated from `proto/onnx.proto` by build.rs.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use anyhow::{bail, Result};
use embedrt_core::{SentenceModel, TransformerWeights};
use prost::Message;

pub use encoder::{ATTENTION_MASK, INPUT_IDS, SENTENCE_EMBEDDING, TOKEN_EMBEDDINGS};
pub use export::{export_dir, ExportOptions, ExportReport, Manifest, MANIFEST_FILE, MODEL_FILE};

/// LayerNormalization, the one operator the graph needs beyond the classic
/// set, arrived in opset 17.
pub const MIN_OPSET: i64 = 17;
/// The newest opset the exporter is tested against (ONNX Runtime from PyPI).
pub const MAX_OPSET: i64 = 21;
pub const DEFAULT_OPSET: i64 = 17;
/// QuantizeLinear / DequantizeLinear over FLOAT8E4M3FN arrived in opset 19:
/// the opset of an fp8 QDQ export unless one is asked for.
pub const FP8_MIN_OPSET: i64 = 19;
/// protobuf cannot serialize a message past 2 GiB; weights beyond that need
/// ONNX external data, which this exporter does not write.
const PROTOBUF_LIMIT: usize = (2 << 30) - (16 << 20);

pub use embedrt_core::Precision;

pub fn check_opset(opset: i64) -> Result<()> {
    if opset < MIN_OPSET {
        bail!(
            "opset {opset} is too old: the graph uses LayerNormalization, which needs opset {MIN_OPSET} or newer"
        );
    }
    if opset > MAX_OPSET {
        bail!("opset {opset} is not supported; supported: {MIN_OPSET} to {MAX_OPSET}");
    }
    Ok(())
}

/// Whether a QDQ export in `format` can be written at `opset`: fp8's
/// FLOAT8E4M3FN QuantizeLinear needs opset 19.
pub fn check_qdq_opset(format: embedrt_core::QuantFormat, opset: i64) -> Result<()> {
    if format == embedrt_core::QuantFormat::Fp8 && opset < FP8_MIN_OPSET {
        bail!(
            "--precision fp8 needs --opset {FP8_MIN_OPSET} or newer (FLOAT8E4M3FN QuantizeLinear); got {opset}"
        );
    }
    Ok(())
}

/// The IR version that goes with an opset (onnx/helper.py's table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=18 => 8,
        19 | 20 => 9,
        _ => 10,
    }
}

/// The complete ONNX model of `model` with `weights`, serialized.
pub fn build_model(
    model: &SentenceModel,
    weights: &TransformerWeights,
    precision: Precision,
    opset: i64,
) -> Result<Vec<u8>> {
    build_model_quantized(model, weights, precision, opset, None)
}

/// The names of the tensors feeding each GEMM's MatMul in the fp32 export
/// (what a TensorRT calibration cache for that export is keyed by).
pub fn fp32_gemm_input_names(
    model: &SentenceModel,
    weights: &TransformerWeights,
) -> Vec<(embedrt_core::GemmSite, String)> {
    let mut g = graph::GraphBuilder::new(DEFAULT_OPSET);
    encoder::build(&mut g, model, weights, Precision::Fp32, None)
}

/// [`build_model`], as QDQ int8 or fp8 when `quant` is given (a table of
/// either format; fp8 needs opset 19+).
pub fn build_model_quantized(
    model: &SentenceModel,
    weights: &TransformerWeights,
    precision: Precision,
    opset: i64,
    quant: Option<&embedrt_core::CalibrationTable>,
) -> Result<Vec<u8>> {
    check_opset(opset)?;
    if let Some(t) = quant {
        check_qdq_opset(t.precision, opset)?;
        if precision != Precision::Fp32 {
            bail!("a QDQ export keeps its float parts in fp32");
        }
    }
    let mut g = graph::GraphBuilder::new(opset);
    encoder::build(&mut g, model, weights, precision, quant);
    if g.initializer_bytes() > PROTOBUF_LIMIT {
        bail!(
            "the {} weights take {} MiB, more than a single-file ONNX model can hold (2 GiB protobuf limit); external-data export is not supported",
            precision.name(),
            g.initializer_bytes() >> 20
        );
    }
    let meta = |k: &str, v: String| proto::StringStringEntryProto {
        key: Some(k.to_string()),
        value: Some(v),
    };
    let m = proto::ModelProto {
        ir_version: Some(ir_version(opset)),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("embedrt".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!(
            "{} sentence embeddings from {}: {} pooling{}, {}",
            model.config.architecture.name(),
            model.source,
            model.pooling.name(),
            if model.normalize {
                ", L2-normalized"
            } else {
                ""
            },
            precision.name()
        )),
        graph: Some(g.finish("sentence_embedding")),
        metadata_props: vec![
            meta("pooling", model.pooling.name().into()),
            meta("normalize", model.normalize.to_string()),
            meta("max_seq_length", model.max_seq_length.to_string()),
            meta("architecture", model.config.architecture.name().into()),
            meta(
                "precision",
                match quant {
                    Some(t) => t.precision.name().into(),
                    None => precision.name().into(),
                },
            ),
            meta("source", model.source.clone()),
        ],
        ..Default::default()
    };
    Ok(m.encode_to_vec())
}
