//! `--precision int8|fp8` on `embed`, `eval` and `bench` with `--device
//! cpu`: the CPU fake-quant reference of the quantized model, from a
//! calibration table or calibrated on the fly.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::quant::QuantFormat;
use embedrt_core::{Embedder, Precision, SentenceModel};

use crate::calibrate::{make_table, read_table, CalibrationArgs};
use crate::open::ModelArgs;

#[derive(Args, Clone, Debug)]
pub struct QuantArgs {
    /// int8/fp8 on the CPU: a table from `embedrt calibrate`.
    #[arg(long, conflicts_with = "calibration")]
    pub calibration_table: Option<PathBuf>,
    /// int8/fp8 on the CPU: calibrate on this text first (JSON lines or STS CSV).
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    #[command(flatten)]
    pub calibration_args: CalibrationArgs,
}

/// The fake-quant CPU engine when `--precision` is int8 or fp8, else `None`
/// (the caller opens the model as usual).
pub fn open_if_quantized(args: &ModelArgs) -> Result<Option<Embedder>> {
    let q = &args.quant;
    let format = match args.precision.as_deref() {
        Some(p @ ("int8" | "fp8")) => p.parse::<QuantFormat>()?,
        _ => {
            if q.calibration_table.is_some() || q.calibration.is_some() {
                bail!("--calibration-table and --calibration go with --precision int8 or fp8");
            }
            return Ok(None);
        }
    };
    if args.device != "cpu" {
        bail!(
            "--precision {} without a plan runs the CPU fake-quant reference: give --device cpu (for the GPU, build a plan with `embedrt build --precision {}`)",
            format.name(),
            format.name()
        );
    }
    let Some(spec) = &args.model else {
        bail!("--precision {} on the CPU needs --model", format.name());
    };
    let mut model = SentenceModel::load(spec)?;
    if let Some(p) = args.pooling.as_deref() {
        model.pooling = p.parse()?;
    }
    let table = match (&q.calibration_table, &q.calibration) {
        (Some(path), _) => read_table(path, &model, format, &q.calibration_args)?,
        (None, Some(text)) => make_table(&model, text, format, &q.calibration_args, None)?,
        (None, None) => bail!(
            "--precision {} needs --calibration-table TABLE (from `embedrt calibrate`) or --calibration FILE",
            format.name()
        ),
    };
    let engine = embedrt_quant::fp32_engine(&model)
        .with_context(|| format!("loading the weights of {}", model.source))?
        .with_calibration(&table)?;
    Ok(Some(Embedder::new(model, Arc::new(engine))))
}

/// The table of `embedrt export --precision int8|fp8` (`format`), or `None`
/// for a float export (which refuses calibration options).
pub fn export_table(
    model: &SentenceModel,
    format: Option<QuantFormat>,
    q: &QuantArgs,
) -> Result<Option<embedrt_core::CalibrationTable>> {
    let Some(format) = format else {
        if q.calibration_table.is_some() || q.calibration.is_some() {
            bail!("--calibration-table and --calibration go with --precision int8 or fp8");
        }
        return Ok(None);
    };
    Ok(Some(match (&q.calibration_table, &q.calibration) {
        (Some(path), _) => read_table(path, model, format, &q.calibration_args)?,
        (None, Some(text)) => make_table(model, text, format, &q.calibration_args, None)?,
        (None, None) => bail!(
            "--precision {} needs --calibration-table TABLE (from `embedrt calibrate`) or --calibration FILE",
            format.name()
        ),
    }))
}

/// A `--precision` value: int8 / fp8 (with `quant_float`, the precision the
/// float parts keep) or a float precision. `supported` lists the values
/// for the error.
pub fn parse_precision(
    text: &str,
    quant_float: Precision,
    supported: &str,
) -> Result<(Option<QuantFormat>, Precision)> {
    match text {
        "int8" | "fp8" => Ok((Some(text.parse::<QuantFormat>()?), quant_float)),
        other => Ok((
            None,
            other.parse().map_err(|_| {
                anyhow::anyhow!("unknown precision {other:?}; supported: {supported}")
            })?,
        )),
    }
}
