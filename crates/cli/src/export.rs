//! `embedrt export`: the model as ONNX (pooling and normalization inside the
//! graph), with its tokenizer and a manifest.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use embedrt_core::{QuantFormat, SentenceModel};
use embedrt_onnx::{export_dir, ExportOptions, Precision, DEFAULT_OPSET, FP8_MIN_OPSET};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct ExportArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long)]
    model: String,
    /// Output directory (created if missing).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Weights and matmuls in fp32 or fp16 (LayerNorm, softmax, pooling stay
    /// fp32); int8 / fp8 write QDQ ONNX (need --calibration or
    /// --calibration-table), int8 with a TensorRT calibration.cache, fp8 at
    /// opset 19+ (FLOAT8E4M3FN).
    #[arg(long, default_value = "fp32")]
    precision: String,
    #[command(flatten)]
    quant: crate::open_quant::QuantArgs,
    /// ONNX opset (17 or newer: LayerNormalization; 19 or newer for fp8)
    /// [default: 17, 19 for fp8]
    #[arg(long)]
    opset: Option<i64>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    // QDQ keeps the float parts in fp32.
    let (quant_format, precision) = crate::open_quant::parse_precision(
        &args.precision,
        Precision::Fp32,
        "fp32, fp16, int8, fp8",
    )?;
    let opset = match (args.opset, quant_format) {
        (Some(o), _) => o,
        (None, Some(QuantFormat::Fp8)) => FP8_MIN_OPSET,
        (None, _) => DEFAULT_OPSET,
    };
    embedrt_onnx::check_opset(opset)?;
    // Before the model loads and calibration runs.
    if let Some(format) = quant_format {
        embedrt_onnx::check_qdq_opset(format, opset)?;
    }
    let model = SentenceModel::load(&args.model)?;
    let quant = crate::open_quant::export_table(&model, quant_format, &args.quant)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} export: {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let opts = ExportOptions {
        precision,
        opset,
        quant,
    };
    let result = export_dir(&model, &args.output, &opts, &|msg| {
        bar.set_message(msg.to_string())
    });
    bar.finish_and_clear();
    let report = result?;
    println!(
        "{}",
        serde_json::json!({
            "dir": report.dir.display().to_string(),
            "onnx_bytes": report.onnx_bytes,
            "manifest": report.manifest,
        })
    );
    Ok(())
}
