use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::input;
use crate::open::{open, ModelArgs};
use crate::output::Output;

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// JSON lines, one {"text": "..."} per line; `-` or absent: standard input.
    #[arg(long)]
    input: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Output the pooled vectors without L2 normalization.
    #[arg(long)]
    no_normalize: bool,
    /// Where the vectors go: FILE.npy (float32 [n, dim]), FILE.parquet
    /// (index, text, embedding), FILE.jsonl; `-` or absent: JSON lines on
    /// standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let text = input::read_all(args.input.as_deref())?;
    let origin = match &args.input {
        Some(p) => p.display().to_string(),
        None => "standard input".into(),
    };
    let texts = input::parse_json_lines(&text, &origin)?;
    // Refuse an unknown format before the model loads.
    let output = Output::parse(args.output.as_deref())?;
    let embedder = open(&args.model)?;
    let normalize = embedder.model.normalize && !args.no_normalize;
    let bar = progress_bar(texts.len() as u64);
    let vectors = embedder.embed(&texts, args.batch_size, normalize, &|n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    output.write(&texts, &vectors, embedder.backend.hidden_size())
}

/// Sentences embedded so far, on standard error; hidden when it is not a terminal.
fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} sentences {per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
