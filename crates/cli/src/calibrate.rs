//! `embedrt calibrate`: the calibration table of a model, made on the CPU
//! from the fp32 reference, with the fallback set that meets the accuracy
//! target on the held-out sentences (measured with the CPU fake-quant
//! reference).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::quant::{
    AttentionInputs, CalibrationMethod, CalibrationTable, FallbackWeights, GeluForm, QuantFormat,
    WeightScales,
};
use embedrt_core::{sts, SentenceModel};
use embedrt_quant::fallback::AccuracyTarget;
use embedrt_quant::reference::{CpuEvaluator, StsSet};
use embedrt_quant::CalibrateOptions;
use indicatif::{ProgressBar, ProgressStyle};

/// The calibration options `calibrate`, `export` and the CPU reference share.
#[derive(Args, Clone, Debug)]
pub struct CalibrationArgs {
    /// Calibrator: entropy, percentile[:P], minmax or mse [default:
    /// percentile:99.99 for int8, minmax for fp8, chosen by measurement].
    #[arg(long)]
    pub calibrator: Option<String>,
    /// Sentences to calibrate over (taken evenly across the file; every
    /// fifth distinct sentence is held out for the accuracy check).
    #[arg(long, default_value_t = embedrt_quant::input::DEFAULT_CALIBRATION_SIZE)]
    pub calibration_size: usize,
    /// How the quantized GEMMs' weights are scaled: channel (one scale per
    /// output channel) or tensor (one for the whole weight; fp8 GEMMs then
    /// take cuBLASLt's scalar scales) [default: tensor for fp8, channel for
    /// int8, chosen by measurement]. Recorded in the table.
    #[arg(long)]
    pub weight_scales: Option<String>,
    /// The FFN's GELU: exact (erf), or tanh (cuBLASLt's GELU epilogue: no
    /// GELU pass; an fp8 FFN-in GEMM on sm_90 then writes FFN-out's input
    /// itself) [default: tanh for fp16 plans and for fp8 with per-tensor
    /// weight scales, else exact, chosen by measurement]. Recorded in the
    /// plan (quantized: in the table).
    #[arg(long)]
    pub gelu: Option<String>,
    /// What attention reads: float Q, K, V, or fp8 (an fp8 QKV GEMM writes
    /// them in e4m3 with a calibrated scale a layer; fp8 tables only)
    /// [default: float]. Recorded in the table.
    #[arg(long)]
    pub attention_inputs: Option<String>,
    /// How the GEMMs kept in float (the fallback) store their weights: 8bit
    /// (the table's format, one scale per output channel, widened to fp16
    /// where the GEMM runs: 1 byte a parameter) or float (fp16, 2 bytes)
    /// [default: float; 8bit is measured on the CPU reference, not yet on a
    /// GPU]. The fallback search measures the model with them. Recorded in
    /// the table.
    #[arg(long)]
    pub fallback_weights: Option<String>,
}

/// The table forms given on the command line (None: not given).
struct Forms {
    weight_scales: Option<WeightScales>,
    gelu: Option<GeluForm>,
    attention_inputs: Option<AttentionInputs>,
    fallback_weights: Option<FallbackWeights>,
}

impl CalibrationArgs {
    /// `--weight-scales`, `--gelu` and `--attention-inputs`, parsed.
    fn forms(&self) -> Result<Forms> {
        let w = self.weight_scales.as_deref().map(str::parse).transpose();
        let g = self.gelu.as_deref().map(str::parse).transpose();
        let a = self.attention_inputs.as_deref().map(str::parse).transpose();
        let f = self.fallback_weights.as_deref().map(str::parse).transpose();
        Ok(Forms {
            weight_scales: w.context("--weight-scales")?,
            gelu: g.context("--gelu")?,
            attention_inputs: a.context("--attention-inputs")?,
            fallback_weights: f.context("--fallback-weights")?,
        })
    }

    /// Refuses a form flag that contradicts a table made earlier (its scales
    /// and accuracy were measured with the table's forms).
    pub fn check_table(&self, table: &CalibrationTable, path: &Path) -> Result<()> {
        let Forms {
            weight_scales,
            gelu,
            attention_inputs,
            fallback_weights,
        } = self.forms()?;
        if let Some(f) = fallback_weights.filter(|f| *f != table.fallback_weights) {
            bail!(
                "{}: the table stores fallback weights as {}, --fallback-weights asks for {}; calibrate again with --fallback-weights {}",
                path.display(),
                table.fallback_weights.name(),
                f.name(),
                f.name()
            );
        }
        if let Some(a) = attention_inputs.filter(|a| *a != table.attention_inputs) {
            bail!(
                "{}: the table's attention inputs are {}, --attention-inputs asks for {}; calibrate again with --attention-inputs {}",
                path.display(),
                table.attention_inputs.name(),
                a.name(),
                a.name()
            );
        }
        if let Some(w) = weight_scales.filter(|w| *w != table.weight_scales) {
            bail!(
                "{}: the table scales weights per {}, --weight-scales asks for {}; calibrate again with --weight-scales {}",
                path.display(),
                table.weight_scales.name(),
                w.name(),
                w.name()
            );
        }
        if let Some(g) = gelu.filter(|g| *g != table.gelu) {
            bail!(
                "{}: the table's GELU is {}, --gelu asks for {}; calibrate again with --gelu {}",
                path.display(),
                table.gelu.name(),
                g.name(),
                g.name()
            );
        }
        Ok(())
    }
}

#[derive(Args)]
pub struct CalibrateArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long)]
    model: String,
    /// Calibration text: JSON lines ({"text": ...}) or an STS CSV.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the table (JSON).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// 8-bit format: int8 or fp8.
    #[arg(long, default_value = "int8")]
    precision: String,
    #[command(flatten)]
    calibration: CalibrationArgs,
    /// Mean cosine to fp32 on the held-out sentences that the table must
    /// reach; the most sensitive GEMMs stay in float until it does.
    #[arg(long, default_value_t = embedrt_quant::fallback::DEFAULT_MIN_MEAN_COSINE)]
    accuracy_target: f64,
    /// STS CSV: also require Spearman x 100 to drop by at most --max-spearman-drop.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, default_value_t = embedrt_quant::fallback::DEFAULT_MAX_SPEARMAN_DROP)]
    max_spearman_drop: f64,
    /// Skip the accuracy check and the fallback search: quantize every GEMM.
    #[arg(long)]
    no_fallback: bool,
    /// Debugging: also write the raw inputs of these GEMMs (comma-separated
    /// site names such as layers.0.qkv), batch by batch, into this directory
    /// as little-endian f32 (what tests feed ONNX Runtime's calibrators).
    #[arg(long, hide = true, requires = "dump_sites")]
    dump_activations: Option<PathBuf>,
    #[arg(long, hide = true, value_delimiter = ',')]
    dump_sites: Vec<String>,
}

pub fn run(args: CalibrateArgs) -> Result<()> {
    let format: QuantFormat = args.precision.parse()?;
    let model = SentenceModel::load(&args.model)?;
    let target = AccuracyTarget {
        min_mean_cosine: args.accuracy_target,
        max_spearman_drop: args.max_spearman_drop,
        spearman_fp32: None,
    };
    let sts_set = args.eval.as_deref().map(read_sts).transpose()?;
    if let Some(dir) = &args.dump_activations {
        dump(
            &model,
            &args.input,
            &args.calibration,
            &args.dump_sites,
            dir,
        )?;
    }
    let table = make_table(
        &model,
        &args.input,
        format,
        &args.calibration,
        (!args.no_fallback).then_some((&target, sts_set.as_ref())),
    )?;
    table
        .write(&args.output)
        .with_context(|| "writing the calibration table")?;
    println!(
        "{}",
        serde_json::json!({
            "table": args.output.display().to_string(),
            "precision": table.precision.name(),
            "calibrator": table.calibrator,
            "sentences": table.sentences,
            "tensors": table.tensors.len(),
            "fallback": table.fallback,
            "accuracy": table.accuracy,
        })
    );
    Ok(())
}

/// `--dump-activations`: the raw GEMM inputs of the calibration sentences.
fn dump(
    model: &SentenceModel,
    input: &Path,
    args: &CalibrationArgs,
    names: &[String],
    dir: &Path,
) -> Result<()> {
    let sites = names
        .iter()
        .map(|n| {
            embedrt_core::quant::GemmSite::parse(n).with_context(|| {
                format!(
                    "--dump-sites: {n:?} is not a GEMM site (layers.L.qkv|attn_out|ffn_in|ffn_out)"
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let text = embedrt_quant::read_calibration_text(input, Some(args.calibration_size))?;
    let engine = embedrt_quant::fp32_engine(model)?;
    embedrt_quant::dump_activations(
        model,
        &engine,
        &text.calibration,
        &CalibrateOptions::default(),
        &sites,
        dir,
    )?;
    Ok(())
}

pub fn read_sts(path: &Path) -> Result<StsSet> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let pairs = sts::parse_csv(&text).with_context(|| path.display().to_string())?;
    if pairs.len() < 2 {
        bail!("{}: needs at least 2 STS pairs", path.display());
    }
    Ok(StsSet { pairs })
}

/// Calibrates `model` over `input`; with a target, also chooses the
/// fallback set and records the accuracy.
pub fn make_table(
    model: &SentenceModel,
    input: &Path,
    format: QuantFormat,
    args: &CalibrationArgs,
    target: Option<(&AccuracyTarget, Option<&StsSet>)>,
) -> Result<CalibrationTable> {
    let method: CalibrationMethod = args
        .calibrator
        .as_deref()
        .unwrap_or(embedrt_quant::default_calibrator(format))
        .parse()?;
    let forms = args.forms()?;
    let attention_inputs = forms.attention_inputs.unwrap_or_default();
    if attention_inputs == AttentionInputs::Fp8 && format != QuantFormat::Fp8 {
        bail!(
            "--attention-inputs fp8 needs --precision fp8 (int8 plans keep float Q, K, V); drop the flag or use fp8"
        );
    }
    let text = embedrt_quant::read_calibration_text(input, Some(args.calibration_size))?;
    let opts = CalibrateOptions {
        format,
        method,
        ..Default::default()
    };
    let engine = embedrt_quant::fp32_engine(model)
        .with_context(|| format!("loading the weights of {}", model.source))?;
    let bar = ProgressBar::new(text.calibration.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "calibrate {bar:40} {pos}/{len} sentences {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let stats =
        embedrt_quant::collect_stats(model, &engine, &text.calibration, &opts, &|done, _| {
            bar.set_position(done as u64)
        });
    bar.finish_and_clear();
    let mut table = stats?.table(&embedrt_quant::fingerprint(model)?, format, &opts.method);
    // Before the fallback search: it measures the model these forms make.
    table.weight_scales = forms
        .weight_scales
        .unwrap_or(WeightScales::default_for(format));
    table.gelu = forms
        .gelu
        .unwrap_or(GeluForm::default_for(format, table.weight_scales));
    table.attention_inputs = attention_inputs;
    table.fallback_weights = forms
        .fallback_weights
        .unwrap_or(FallbackWeights::default_for_new_tables());
    let Some((target, sts_set)) = target else {
        return Ok(table);
    };
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} accuracy check: {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner.set_message("fp32 reference");
    let evaluator = CpuEvaluator::new(model, engine, &text.held_out, sts_set)?;
    let result = evaluator.choose_fallback(&table, target, &|n| {
        spinner.set_message(format!("{n} evaluations"))
    });
    spinner.finish_and_clear();
    let (table, choice) = result?;
    if !choice.target_met {
        eprintln!(
            "warning: the accuracy target was not met even with every GEMM in float (mean cosine {:.5}); the table keeps them all in float",
            choice.accuracy.mean_cosine
        );
    }
    Ok(table)
}

/// A table from `--calibration-table`, checked against the model, the
/// format and the forms `args` ask for.
pub fn read_table(
    path: &Path,
    model: &SentenceModel,
    format: QuantFormat,
    args: &CalibrationArgs,
) -> Result<CalibrationTable> {
    let table = CalibrationTable::read(path)?;
    args.check_table(&table, path)?;
    table.check_model(&embedrt_quant::fingerprint(model)?, path)?;
    if table.precision != format {
        bail!(
            "{}: the table was calibrated for {}, not {}; calibrate again with --precision {}",
            path.display(),
            table.precision.name(),
            format.name(),
            format.name()
        );
    }
    table.check_attention_inputs(model.config.num_hidden_layers)?;
    Ok(table)
}
