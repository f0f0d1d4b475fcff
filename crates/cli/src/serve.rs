//! `embedrt serve`: the HTTP embedding server (crates/server) on a model
//! opened the way `embed` opens one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use embedrt_core::SentenceModel;
use embedrt_server::{fingerprint_file, BatchSettings, LoadedModel, Options, Target};

use crate::open::{open_engines, ModelArgs};

#[derive(Args)]
pub struct ServeArgs {
    /// What to serve first (--model or --plan) and where (--device also
    /// takes cuda:all or cuda:0,1,...: one engine per GPU); a reload keeps
    /// the devices and overrides.
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (printed on standard error).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Most tokens in one engine call (default: 32768, capped by the engine).
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

/// What the command line asks to serve first.
fn initial_target(args: &ModelArgs) -> Target {
    match (&args.plan, &args.model) {
        (Some(plan), _) => Target::Plan(plan.display().to_string()),
        (None, model) => Target::Model(model.clone().unwrap_or_default()),
    }
}

/// The command line's model options, pointed at a reload target.
fn args_for(base: &ModelArgs, target: &Target) -> Result<ModelArgs> {
    Ok(match target {
        Target::Model(m) => ModelArgs {
            model: Some(m.clone()),
            plan: None,
            ..base.clone()
        },
        Target::Plan(p) => ModelArgs {
            model: None,
            plan: Some(PathBuf::from(p)),
            ..base.clone()
        },
    })
}

/// A short hash of what was loaded: the weights file, or the plan file.
fn fingerprint(target: &Target, model: &SentenceModel) -> Result<String> {
    let path = match target {
        Target::Model(_) => model.weights_path(),
        Target::Plan(plan) => PathBuf::from(plan),
    };
    fingerprint_file(&path).with_context(|| format!("fingerprinting {}", path.display()))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let initial = initial_target(&args.model);
    let base = args.model.clone();
    let loader = Arc::new(move |target: &Target| -> Result<LoadedModel> {
        let (model, engines) = open_engines(&args_for(&base, target)?)?;
        let fingerprint = fingerprint(target, &model)?;
        let name = match target {
            Target::Model(m) | Target::Plan(m) => m.clone(),
        };
        // What the engines hold on their GPUs (None on the CPU).
        let backends: Vec<_> = engines.iter().map(|e| e.backend.clone()).collect();
        let memory_in_use: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>> =
            if backends.iter().any(|b| b.device_memory_bytes().is_some()) {
                Some(Arc::new(move || {
                    Some(
                        backends
                            .iter()
                            .filter_map(|b| b.device_memory_bytes())
                            .sum(),
                    )
                }))
            } else {
                None
            };
        Ok(LoadedModel {
            model,
            engines,
            name,
            fingerprint,
            memory_in_use,
        })
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
