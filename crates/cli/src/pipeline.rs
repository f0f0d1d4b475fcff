//! `embedrt pipeline run|status|history|rollback`: a thin layer over
//! `embedrt-pipeline`. The stages call this same binary for export, eval,
//! bench, embed and build.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use embedrt_pipeline::{Config, RunOptions, Tools};

#[derive(Args)]
pub struct PipelineArgs {
    #[command(subcommand)]
    command: PipelineCommand,
}

#[derive(Subcommand)]
enum PipelineCommand {
    /// Validate, train, export, optimize, evaluate, register and deploy one day's data.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// The day's data: CSV or JSON lines (sentence1,sentence2,score or anchor,positive).
        #[arg(long)]
        data: String,
    },
    /// The champion/previous aliases and every registered version.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// Every run with its decision.
    History {
        #[arg(long)]
        config: PathBuf,
    },
    /// Serve VERSION (default: `previous`) everywhere, check the canary, move the aliases.
    Rollback {
        #[arg(long)]
        config: PathBuf,
        version: Option<String>,
    },
}

fn tools() -> Result<Tools> {
    Ok(Tools {
        embedrt: std::env::current_exe().context("cannot find the embedrt binary itself")?,
    })
}

/// Exit code 0 for `deployed` and for a correct rejection; 1 otherwise.
pub fn run(args: PipelineArgs) -> Result<ExitCode> {
    match args.command {
        PipelineCommand::Run { config, data } => {
            let config = Config::load(&config)?;
            let opts = RunOptions {
                data,
                tools: tools()?,
                code_version: format!(
                    "embedrt {}{}",
                    env!("CARGO_PKG_VERSION"),
                    std::env::var("EMBEDRT_GIT_COMMIT")
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default()
                ),
            };
            let outcome = embedrt_pipeline::run(&config, &opts)?;
            if let Some(reason) = &outcome.reason {
                eprintln!(
                    "embedrt pipeline: {} at {}: {reason}",
                    outcome.decision, outcome.stage
                );
            }
            println!("{}", serde_json::to_string(&outcome)?);
            Ok(match outcome.decision.as_str() {
                "deployed" | "rejected" => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
        }
        PipelineCommand::Status { config } => {
            let v = embedrt_pipeline::status(&Config::load(&config)?)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        PipelineCommand::History { config } => {
            let v = embedrt_pipeline::history(&Config::load(&config)?)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        PipelineCommand::Rollback { config, version } => {
            let v =
                embedrt_pipeline::rollback(&Config::load(&config)?, &tools()?, version.as_deref())?;
            println!("{}", serde_json::to_string(&v)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
