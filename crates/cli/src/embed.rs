use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::input;
use crate::open::{open, ModelArgs};

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
}

pub fn run(args: EmbedArgs) -> Result<()> {
    let text = input::read_all(args.input.as_deref())?;
    let origin = match &args.input {
        Some(p) => p.display().to_string(),
        None => "standard input".into(),
    };
    let texts = input::parse_json_lines(&text, &origin)?;
    let embedder = open(&args.model)?;
    let normalize = embedder.model.normalize && !args.no_normalize;
    let vectors = embedder.embed(&texts, args.batch_size, normalize, &|_| {})?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for (index, embedding) in vectors.iter().enumerate() {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({"index": index, "embedding": embedding}),
        )?;
        out.write_all(b"\n").context("writing standard output")?;
    }
    out.flush().context("writing standard output")?;
    Ok(())
}
