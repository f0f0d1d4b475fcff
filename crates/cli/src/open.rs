//! Opening a model on a device: the options `embed`, `eval` and `bench` share.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::{Embedder, PoolingMode, SentenceModel};
use embedrt_cpu::CpuEngine;
use embedrt_cuda::{build_plan, model_from_plan, BuildOptions, CudaEngine, Plan, Precision};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long, required_unless_present = "plan")]
    pub model: Option<String>,
    /// A GPU plan file made by `embedrt build` (instead of --model).
    #[arg(long, conflicts_with = "model")]
    pub plan: Option<PathBuf>,
    /// Where to run: auto (GPU if usable, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// GPU precision without a plan: fp32 or fp16 (the CPU runs fp32).
    #[arg(long)]
    pub precision: Option<String>,
    /// Override the model's pooling: mean, cls, max, mean_sqrt_len.
    #[arg(long)]
    pub pooling: Option<String>,
}

/// Where the user asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Device::Auto,
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::Cuda(n),
                _ => bail!("unknown device {s:?}; use auto, cpu, cuda or cuda:N"),
            },
        })
    }
}

pub fn open(args: &ModelArgs) -> Result<Embedder> {
    let device = Device::parse(&args.device)?;
    let pooling = match &args.pooling {
        Some(p) => Some(p.parse::<PoolingMode>()?),
        None => None,
    };
    let precision = match &args.precision {
        Some(p) => Some(p.parse::<Precision>()?),
        None => None,
    };
    if let Some(path) = &args.plan {
        return open_plan(path, device, pooling, precision);
    }
    let Some(spec) = &args.model else {
        bail!("give --model or --plan");
    };
    let mut model = SentenceModel::load(spec)?;
    if let Some(p) = pooling {
        model.pooling = p;
    }
    match device {
        Device::Cpu => {
            if precision == Some(Precision::Fp16) {
                bail!("--precision fp16 needs a GPU; the CPU engine runs fp32");
            }
            open_cpu(model)
        }
        Device::Cuda(n) => open_gpu(model, n, precision.unwrap_or(Precision::Fp32))
            .with_context(|| format!("--device {}", args.device)),
        Device::Auto => match embedrt_cuda::probe::check_device(0) {
            // A usable GPU: model errors are errors, not a reason to fall back.
            Ok(()) => open_gpu(model, 0, precision.unwrap_or(Precision::Fp32))
                .context("--device auto (cuda:0)"),
            Err(why) => {
                // Say so only once the CPU engine is up, so a failure stays one line.
                let embedder = open_cpu(model)?;
                eprintln!("note: --device auto: no usable GPU ({why:#}); running on the CPU");
                Ok(embedder)
            }
        },
    }
}

fn open_cpu(model: SentenceModel) -> Result<Embedder> {
    let weights = model
        .load_weights()
        .with_context(|| format!("loading the weights of {}", model.source))?;
    let engine = CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

/// A GPU engine from a model directory: an in-memory plan with the default
/// profile (cuBLASLt's first choice per shape instead of timed algorithms).
fn open_gpu(model: SentenceModel, ordinal: usize, precision: Precision) -> Result<Embedder> {
    let opts = BuildOptions {
        ordinal,
        precision,
        profile: embedrt_cuda::Profile::DEFAULT.parse()?,
        tune: false,
    };
    let (plan, _) = build_plan(&model, &opts, &|_| {})?;
    let engine = CudaEngine::load(&plan, ordinal)?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

fn open_plan(
    path: &std::path::Path,
    device: Device,
    pooling: Option<PoolingMode>,
    precision: Option<Precision>,
) -> Result<Embedder> {
    let ordinal = match device {
        Device::Cpu => bail!("--plan runs on a GPU; for the CPU give --model instead"),
        Device::Auto => 0,
        Device::Cuda(n) => n,
    };
    let mut plan = Plan::read(path)?;
    if let Some(p) = precision.filter(|&p| p != plan.header.precision) {
        bail!(
            "--precision {}: the plan holds {} weights; build another plan for {}",
            p.name(),
            plan.header.precision.name(),
            p.name()
        );
    }
    if let Some(p) = pooling {
        plan.header.pooling = p;
    }
    let model = model_from_plan(&plan, path)?;
    let engine = CudaEngine::load(&plan, ordinal)
        .with_context(|| format!("loading plan {}", path.display()))?;
    Ok(Embedder::new(model, Arc::new(engine)))
}
