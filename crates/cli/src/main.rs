//! The `embedrt` command line.

mod bench;
mod build;
mod build_quant;
mod calibrate;
mod embed;
mod eval;
mod export;
mod info;
mod input;
mod open;
mod open_quant;
mod output;
mod pipeline;
mod serve;

use std::process::ExitCode;

/// mimalloc keeps freed memory for the next job instead of handing it back to the kernel
/// and faulting it in again (glibc's malloc did: ~2 ms of a 3,000-sentence job's host time,
/// docs/PERFORMANCE.md run 31).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "embedrt",
    version,
    about = "Fast sentence embeddings on GPU and CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed JSON lines ({"text": ...}) into JSON lines ({"index", "embedding"}).
    Embed(embed::EmbedArgs),
    /// STS evaluation: Spearman x 100 of cosine similarity against gold scores.
    Eval(eval::EvalArgs),
    /// Throughput: sentences/s and tokens/s over a file of sentences.
    Bench(bench::BenchArgs),
    /// HTTP embedding server: TEI- and OpenAI-compatible routes, dynamic batching, reload.
    Serve(serve::ServeArgs),
    /// Build a GPU plan file: weights in the target precision, profile, GEMM algorithms.
    Build(build::BuildArgs),
    /// Show what a plan file holds.
    Info(info::InfoArgs),
    /// ONNX export (fp32/fp16) with pooling and normalization in the graph.
    Export(export::ExportArgs),
    /// Calibration table for int8/fp8 (statistics from the fp32 CPU engine, any machine).
    Calibrate(calibrate::CalibrateArgs),
    /// Daily retrain -> export -> optimize -> evaluate -> deploy pipeline, and its registry.
    Pipeline(pipeline::PipelineArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Embed(a) => embed::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Build(a) => build::run(a),
        Command::Info(a) => info::run(a),
        Command::Export(a) => export::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Pipeline(a) => match pipeline::run(a) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the whole cause chain joined by ": ".
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
