//! `embedrt export`: the model as ONNX (pooling and normalization inside the
//! graph), with its tokenizer and a manifest.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use embedrt_core::SentenceModel;
use embedrt_onnx::{export_dir, ExportOptions, Precision, DEFAULT_OPSET};
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
    /// fp32); int8 writes QDQ ONNX (needs --calibration or
    /// --calibration-table) and a TensorRT calibration.cache.
    #[arg(long, default_value = "fp32")]
    precision: String,
    #[command(flatten)]
    quant: crate::open_quant::QuantArgs,
    /// ONNX opset (17 or newer: LayerNormalization).
    #[arg(long, default_value_t = DEFAULT_OPSET)]
    opset: i64,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let int8 = args.precision == "int8";
    let precision: Precision = match args.precision.as_str() {
        "int8" => Precision::Fp32,
        // FP8 has no QDQ form that ONNX Runtime's CPU provider runs; the fp8
        // path is a plan (`embedrt build --precision fp8`).
        "fp8" => bail!(
            "export --precision fp8 is not supported (QDQ ONNX is int8 only); \
             use --precision int8, or build an fp8 plan with `embedrt build --precision fp8`"
        ),
        other => other.parse().map_err(|_| {
            anyhow::anyhow!("unknown precision {other:?} for export; supported: fp32, fp16, int8")
        })?,
    };
    embedrt_onnx::check_opset(args.opset)?;
    let model = SentenceModel::load(&args.model)?;
    let quant = crate::open_quant::export_table(&model, int8, &args.quant)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} export: {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    let opts = ExportOptions {
        precision,
        opset: args.opset,
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
