use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::input;
use crate::open::{open, ModelArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Sentences: JSON lines ({"text": ...}) or an STS CSV (both sides of each pair).
    #[arg(long)]
    input: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Timed passes over the whole input (after one untimed warm-up pass).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Keep making timed passes until this many seconds have gone by, so
    /// that a small input on a fast GPU is timed over more than a few
    /// milliseconds.
    #[arg(long, default_value_t = 0.0)]
    min_seconds: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let texts = input::read_sentences(&args.input)?;
    if texts.is_empty() {
        bail!("{}: no sentences", args.input.display());
    }
    let embedder = open(&args.model)?;
    let encoded = embedder.tokenize(&texts)?;
    let seqs: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    // Warm-up: one whole pass, so one-time costs (graph captures of each
    // batch shape, first-touch allocations) stay out of the numbers.
    embedder.embed_ids(&seqs, args.batch_size, false, &|_| {})?;

    let repeat = args.repeat.max(1);
    let bar = ProgressBar::new((seqs.len() * repeat) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sentences {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut passes: Vec<f64> = Vec::new();
    while passes.len() < repeat || start.elapsed().as_secs_f64() < args.min_seconds {
        let pass = Instant::now();
        embedder.embed_ids(&seqs, args.batch_size, false, &|n| bar.inc(n as u64))?;
        passes.push(pass.elapsed().as_secs_f64());
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // The median pass: a stall in one pass (another process, a clock change)
    // does not move it, as it moves the mean.
    passes.sort_by(f64::total_cmp);
    let median = passes[passes.len() / 2];
    let info = embedder.backend.info();
    let n = passes.len();
    println!(
        "{}",
        serde_json::json!({
            "device": info.device,
            "precision": info.precision,
            "batch_size": args.batch_size,
            "passes": n,
            "sentences": seqs.len() * n,
            "tokens": tokens * n,
            "seconds": seconds,
            "median_pass_seconds": median,
            "sentences_per_s": seqs.len() as f64 / median,
            "tokens_per_s": tokens as f64 / median,
            "mean_sentences_per_s": (seqs.len() * n) as f64 / seconds,
        })
    );
    Ok(())
}
