//! `embedrt serve`: the HTTP embedding server (crates/server) on a model
//! opened the way `embed` opens one.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_server::{fingerprint_file, BatchSettings, LoadedModel, Options, Target};

use crate::open::{open, ModelArgs};

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["model", "plan"])))]
pub struct ServeArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long)]
    model: Option<String>,
    /// A compiled plan file.
    #[arg(long)]
    plan: Option<String>,
    /// Where to run: auto (GPU if usable, else CPU), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Override the model's pooling: mean, cls, max, mean_sqrt_len.
    #[arg(long)]
    pooling: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on standard error).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most tokens in one engine call (default: 16384, capped by the engine).
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Most sequences in one engine call (default: the engine's limit).
    #[arg(long)]
    max_batch_requests: Option<usize>,
    /// How long a non-full batch waits for more work, in microseconds.
    #[arg(long, default_value_t = 0)]
    max_wait_us: u64,
    /// Requests answered at once; beyond it: 429 with Retry-After.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// Inputs in one request; beyond it: 413.
    #[arg(long, default_value_t = 32)]
    max_client_batch_size: usize,
    /// Bytes in one request body; beyond it: 413.
    #[arg(long, default_value_t = 2_000_000)]
    payload_limit: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health and /ready.
    #[arg(long)]
    api_key: Option<String>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let initial = match (&args.model, &args.plan) {
        (Some(m), None) => Target::Model(m.clone()),
        (None, Some(p)) => Target::Plan(p.clone()),
        _ => bail!("give exactly one of --model and --plan"),
    };
    let device = args.device.clone();
    let pooling = args.pooling.clone();
    let loader = Arc::new(move |target: &Target| -> Result<LoadedModel> {
        match target {
            Target::Model(model) => {
                let embedder = open(&ModelArgs {
                    model: model.clone(),
                    device: device.clone(),
                    pooling: pooling.clone(),
                })?;
                let weights = embedder.model.weights_path();
                let fingerprint = fingerprint_file(&weights)
                    .with_context(|| format!("fingerprinting {}", weights.display()))?;
                Ok(LoadedModel {
                    embedder,
                    name: model.clone(),
                    fingerprint,
                    memory_in_use: None,
                })
            }
            Target::Plan(plan) => bail!("{plan}: this build cannot serve plan files yet"),
        }
    });
    let options = Options {
        host: args.host,
        port: args.port,
        batch: BatchSettings {
            max_batch_tokens: args.max_batch_tokens,
            max_batch_requests: args.max_batch_requests,
            max_wait: Duration::from_micros(args.max_wait_us),
        },
        max_concurrent_requests: args.max_concurrent_requests,
        max_client_batch_size: args.max_client_batch_size,
        payload_limit: args.payload_limit,
        api_key: args.api_key,
    };
    embedrt_server::run(options, initial, loader)
}
