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
    /// Timed passes over the whole input (after one warm-up batch).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
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
    // Warm-up: one batch, so one-time costs stay out of the numbers.
    let warm = &seqs[..seqs.len().min(args.batch_size)];
    embedder.embed_ids(warm, args.batch_size, false, &|_| {})?;

    let repeat = args.repeat.max(1);
    let bar = ProgressBar::new((seqs.len() * repeat) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} sentences {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    for _ in 0..repeat {
        embedder.embed_ids(&seqs, args.batch_size, false, &|n| bar.inc(n as u64))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let info = embedder.backend.info();
    let sentences = seqs.len() * repeat;
    println!(
        "{}",
        serde_json::json!({
            "device": info.device,
            "precision": info.precision,
            "batch_size": args.batch_size,
            "sentences": sentences,
            "tokens": tokens * repeat,
            "seconds": seconds,
            "sentences_per_s": sentences as f64 / seconds,
            "tokens_per_s": (tokens * repeat) as f64 / seconds,
        })
    );
    Ok(())
}
