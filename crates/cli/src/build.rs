//! `embedrt build`: a model turned into a plan file for one GPU.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use embedrt_core::SentenceModel;
use embedrt_cuda::{build_plan, BuildOptions, Precision, Profile};
use indicatif::{ProgressBar, ProgressStyle};

use crate::open::Device;

#[derive(Args)]
pub struct BuildArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long)]
    model: String,
    /// The GPU to build for: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// fp32 or fp16 (fp16 storage, fp32 accumulation).
    #[arg(long, default_value = "fp16")]
    precision: String,
    /// MIN:OPT:MAX, each BATCHxSEQ; memory is sized for MAX, GEMMs tuned around OPT.
    #[arg(long, default_value = Profile::DEFAULT)]
    profile: String,
    /// Most tokens (all sequences together) one batch holds; the GPU
    /// workspace is sized by it. Default 16384.
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
    let precision: Precision = args.precision.parse()?;
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
    let opts = BuildOptions {
        ordinal,
        precision,
        profile,
        tune: true,
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
            "file_bytes": file_bytes,
            "weight_bytes": h.weight_bytes,
            "workspace_bytes": h.workspace_bytes,
            "gemm_algorithms": h.gemm_algos.len(),
            "seconds": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
