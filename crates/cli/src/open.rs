//! The command-line options `embed`, `eval`, `bench` and `serve` share for
//! opening a model; the opening itself is embedrt-runtime's.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use embedrt_core::{Embedder, SentenceModel};
use embedrt_runtime::EngineSpec;

pub use embedrt_runtime::Device;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long, required_unless_present = "plan")]
    pub model: Option<String>,
    /// A GPU plan file made by `embedrt build` (instead of --model).
    #[arg(long, conflicts_with = "model")]
    pub plan: Option<PathBuf>,
    /// Where to run: auto (GPU if usable, else CPU), cpu, cuda or cuda:N;
    /// `serve` also takes several GPUs: cuda:all or cuda:0,1,...
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision without a plan: on a GPU fp16 (the default: a plan built
    /// once and cached in $EMBEDRT_PLAN_CACHE, else $XDG_CACHE_HOME/embedrt/plans
    /// or ~/.cache/embedrt/plans; EMBEDRT_PLAN_CACHE=off builds in memory)
    /// or fp32 (the exact path); int8 or fp8 run the CPU fake-quant
    /// reference (--device cpu, with --calibration-table).
    #[arg(long)]
    pub precision: Option<String>,
    /// Override the model's pooling: mean, cls, max, mean_sqrt_len.
    #[arg(long)]
    pub pooling: Option<String>,
    #[command(flatten)]
    pub quant: crate::open_quant::QuantArgs,
}

impl ModelArgs {
    /// The spec these options name; GPU tuning comes from the environment
    /// (`EMBEDRT_CUDA_SLOTS`, ...: embedrt_runtime::engine_options_from_env).
    pub fn spec(&self) -> Result<EngineSpec> {
        Ok(EngineSpec {
            model: self.model.clone(),
            plan: self.plan.clone(),
            device: self.device.clone(),
            precision: self.precision.clone(),
            pooling: self.pooling.clone(),
            engine_options: embedrt_runtime::engine_options_from_env()?,
            plan_cache: plan_cache_dir(),
        })
    }
}

/// The plan cache directory from the environment (the library reads none).
pub fn plan_cache_dir() -> Option<PathBuf> {
    embedrt_runtime::plan_cache::dir_from_env(|name| std::env::var_os(name))
}

fn print_notes(notes: &[String]) {
    for note in notes {
        eprintln!("note: {note}");
    }
}

pub fn open(args: &ModelArgs) -> Result<Embedder> {
    if let Some(embedder) = crate::open_quant::open_if_quantized(args)? {
        return Ok(embedder);
    }
    let opened = embedrt_runtime::open(&args.spec()?)?;
    print_notes(&opened.notes);
    Ok(opened.embedder)
}

/// The model and one engine per device, for `serve`.
pub fn open_engines(args: &ModelArgs) -> Result<(Arc<SentenceModel>, Vec<embedrt_server::Engine>)> {
    let (model, engines, notes) = embedrt_runtime::open_engines(&args.spec()?)?;
    print_notes(&notes);
    let engines = engines
        .into_iter()
        .map(|e| embedrt_server::Engine {
            label: e.label,
            backend: e.backend,
        })
        .collect();
    Ok((model, engines))
}
