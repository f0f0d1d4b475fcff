use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::sts;

use crate::input;
use crate::open::{open, ModelArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// CSV `sentence1,sentence2,score` without header (STS Benchmark format).
    #[arg(long)]
    sts: PathBuf,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let text = input::read_all(Some(&args.sts))?;
    let pairs = sts::parse_csv(&text).with_context(|| args.sts.display().to_string())?;
    if pairs.len() < 2 {
        bail!("{}: needs at least 2 pairs", args.sts.display());
    }
    let embedder = open(&args.model)?;
    let sentences: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.sentence1.as_str(), p.sentence2.as_str()])
        .collect();
    let vectors = embedder.embed(&sentences, args.batch_size, false, &|_| {})?;
    let cosines: Vec<f64> = vectors
        .chunks_exact(2)
        .map(|v| sts::cosine(&v[0], &v[1]))
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    let spearman = 100.0 * sts::spearman(&cosines, &gold);
    println!(
        "{}",
        serde_json::json!({"spearman": spearman, "pairs": pairs.len()})
    );
    Ok(())
}
