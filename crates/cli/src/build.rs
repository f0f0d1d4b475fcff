//! `embedrt build`: a model turned into a plan file for one GPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::quant::GeluForm;
use embedrt_core::SentenceModel;
use embedrt_cuda::quant_plan::GemmOutput;
use embedrt_cuda::{build_plan, BuildOptions, Precision, Profile};
use indicatif::{ProgressBar, ProgressStyle};

use crate::build_quant::{self, QuantRequest};
use crate::calibrate::CalibrationArgs;
use crate::open::Device;

/// `PLAN.calib.json`: the table a quantized plan was built from.
pub fn calib_path(plan: &std::path::Path) -> PathBuf {
    let mut s = plan.as_os_str().to_os_string();
    s.push(".calib.json");
    PathBuf::from(s)
}

#[derive(Args)]
pub struct BuildArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long)]
    model: String,
    /// The GPU to build for: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// fp32, fp16 (fp16 storage, fp32 accumulation), or a quantized plan:
    /// int8 (any GPU from sm_75) or fp8 (e4m3, sm_89 and sm_90).
    #[arg(long, default_value = "fp16")]
    precision: String,
    /// int8/fp8: the activation scales, from `embedrt calibrate`.
    #[arg(long)]
    calibration_table: Option<PathBuf>,
    /// int8/fp8: calibration text (JSON lines or an STS CSV) to calibrate from here
    /// (on the CPU fp32 engine), instead of --calibration-table.
    #[arg(long)]
    calibration: Option<PathBuf>,
    #[command(flatten)]
    calibration_opts: CalibrationArgs,
    /// int8/fp8: GEMMs kept in fp16, comma-separated (layers.N.qkv|attn_out|ffn_in|ffn_out);
    /// replaces the table's list.
    #[arg(long)]
    fallback: Option<String>,
    /// int8/fp8: STS CSV whose sentences measure the plan against fp32 on this GPU
    /// (recorded in the plan; `embedrt info` shows it).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// int8/fp8: minimum mean cosine to fp32 over the held-out sentences; the most
    /// sensitive GEMMs fall back to fp16 until it holds (needs --eval).
    #[arg(long)]
    accuracy_target: Option<f64>,
    /// int8/fp8: held-out sentences taken from --eval for the cosine measurement.
    #[arg(long, default_value_t = 1000)]
    held_out: usize,
    /// int8/fp8: how the 8-bit GEMMs hand their result on: acc32 (32-bit accumulators
    /// through our epilogue kernels, every GPU), fp16 or fp16-fast (fp8 on sm_90:
    /// cuBLASLt applies the scales, bias and residual and writes fp16; -fast adds
    /// cuBLASLt's fp8 fast accumulation); auto: fp16-fast for fp8 on sm_90, else acc32.
    #[arg(long, default_value = "auto")]
    quant_gemm_output: String,
    /// int8/fp8: time cuBLASLt's top candidates for every 8-bit GEMM on this GPU and
    /// record the fastest per token count in the plan (default: the heuristic's first).
    #[arg(long)]
    tune_8bit: bool,
    /// MIN:OPT:MAX, each BATCHxSEQ; memory is sized for MAX, GEMMs tuned around OPT.
    #[arg(long, default_value = Profile::DEFAULT)]
    profile: String,
    /// Most tokens (all sequences together) one batch holds; the GPU
    /// workspace is sized by it. Default 32768.
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// The plan file to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
}

pub fn run(args: BuildArgs) -> Result<()> {
    let ordinal = match Device::parse(&args.device)? {
        Device::Cuda(n) => n,
        Device::Auto => 0,
        Device::Cpu => bail!("--device cpu: plans are for GPUs; use cuda or cuda:N"),
    };
    // Quantized plans keep fp16 activations.
    let (quant_format, precision) = crate::open_quant::parse_precision(
        &args.precision,
        Precision::Fp16,
        "fp32, fp16, int8, fp8",
    )?;
    if quant_format.is_none()
        && (args.calibration_table.is_some()
            || args.calibration.is_some()
            || args.fallback.is_some()
            || args.accuracy_target.is_some()
            || args.eval.is_some()
            || args.tune_8bit
            || args.quant_gemm_output != "auto")
    {
        bail!(
            "--calibration-table, --calibration, --fallback, --eval, --accuracy-target, \
             --quant-gemm-output and --tune-8bit are for --precision int8 or fp8"
        );
    }
    let gemm_output: Option<GemmOutput> = match args.quant_gemm_output.as_str() {
        "auto" => None,
        name => Some(name.parse()?),
    };
    if let Some(t) = args.accuracy_target {
        if !(t > 0.0 && t <= 1.0) {
            bail!("--accuracy-target {t}: give a mean cosine in (0, 1], e.g. 0.995");
        }
    }
    let mut profile: Profile = args.profile.parse()?;
    if let Some(t) = args.max_batch_tokens {
        profile = profile.with_max_tokens(t)?;
    }
    let model = SentenceModel::load(&args.model)?;
    let started = Instant::now();
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    if let Some(format) = quant_format {
        let req = QuantRequest {
            format,
            calibration: args.calibration.clone(),
            calibration_opts: args.calibration_opts.clone(),
            calibration_table: args.calibration_table.clone(),
            fallback: args.fallback.as_deref().map(|f| {
                f.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            accuracy_target: args.accuracy_target,
            eval: args.eval.clone(),
            held_out: args.held_out,
            gemm_output,
            tune: args.tune_8bit,
        };
        let result = build_quant::build(&model, ordinal, profile, &req, &|step| {
            bar.set_message(step.to_string())
        });
        bar.finish_and_clear();
        let built = result?;
        built.plan.write(&args.output)?;
        let calib = calib_path(&args.output);
        built.table.write(&calib)?;
        let h = &built.plan.header;
        let q = h.quant.as_ref();
        println!(
            "{}",
            serde_json::json!({
                "plan": args.output.display().to_string(),
                "calibration_table": calib.display().to_string(),
                "gpu": h.gpu.name,
                "compute_capability": format!("{}.{}", h.gpu.cc_major, h.gpu.cc_minor),
                "precision": h.precision_name(),
                "profile": h.profile.to_string(),
                "weight_bytes": h.weight_bytes,
                "gemm_weight_bytes": q.map(|q| q.gemm_weight_bytes),
                "gemm_weight_bytes_fp32": q.map(|q| q.gemm_weight_bytes_fp32()),
                "fallback": q.map(|q| q.fallback.clone()),
                "gemm_output": q.map(|q| q.gemm_output.name()),
                "tuned_8bit_gemms": q.map(|q| q.gemm_algos.len()),
                "accuracy": q.and_then(|q| q.accuracy.clone()),
                "evaluations": built.evaluations,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
        return Ok(());
    }
    let gelu = (args.calibration_opts.gelu.as_deref())
        .map(str::parse::<GeluForm>)
        .transpose()
        .context("--gelu")?;
    let opts = BuildOptions {
        ordinal,
        precision,
        profile,
        tune: true,
        engine: embedrt_runtime::engine_options_from_env()?,
        gelu,
    };
    let result = build_plan(&model, &opts, &|step| bar.set_message(step.to_string()));
    bar.finish_and_clear();
    let (plan, _engine) = result?;
    plan.write(&args.output)?;
    let h = &plan.header;
    let file_bytes = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "plan": args.output.display().to_string(),
            "gpu": h.gpu.name,
            "compute_capability": format!("{}.{}", h.gpu.cc_major, h.gpu.cc_minor),
            "precision": h.precision.name(),
            "profile": h.profile.to_string(),
            "max_batch_tokens": h.profile.token_budget(),
            "gelu": h.gelu.name(),
            "file_bytes": file_bytes,
            "weight_bytes": h.weight_bytes,
            "workspace_bytes": h.workspace_bytes,
            "gemm_algorithms": h.gemm_algos.len(),
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
