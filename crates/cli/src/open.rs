//! Opening a model on a device: the options `embed`, `eval` and `bench` share.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::{Embedder, PoolingMode, SentenceModel};
use embedrt_cpu::CpuEngine;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long)]
    pub model: String,
    /// Where to run: auto (GPU if usable, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
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
    let mut model = SentenceModel::load(&args.model)?;
    if let Some(p) = &args.pooling {
        model.pooling = p.parse::<PoolingMode>()?;
    }
    match device {
        Device::Cuda(_) => bail!("--device {}: this build has no CUDA backend", args.device),
        Device::Auto | Device::Cpu => {}
    }
    let weights = model
        .load_weights()
        .with_context(|| format!("loading the weights of {}", model.source))?;
    let engine = CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)?;
    Ok(Embedder::new(model, Arc::new(engine)))
}
