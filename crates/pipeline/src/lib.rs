//! embedrt-pipeline: the daily retrain → export → optimize → evaluate →
//! register → deploy pipeline behind `embedrt pipeline`.
//!
//! Stages are library code ([`run`]); the heavy work happens in
//! subprocesses: the `embedrt` binary (export, eval, bench, embed, build)
//! and the Python training step (`python/embedrt/train/run.py`, with
//! sentence-transformers' own trainer). The registry is a local directory
//! or an S3 prefix ([`registry`] on a [`store::Store`]); deploy targets and
//! the canary are in [`deploy`] (Ray Serve's REST API in [`ray_serve`]);
//! `train.runner = "ray"` is [`ray_job`].

pub mod config;
pub mod data;
pub mod deploy;
pub mod http;
pub mod lock;
pub mod parquet_day;
pub mod ray_job;
pub mod ray_serve;
pub mod rayservice;
pub mod registry;
pub mod report;
pub mod run;
pub mod store;
pub mod tools;

use anyhow::{Context, Result};
use serde_json::{json, Value};

pub use config::Config;
pub use run::{run, Outcome, RunOptions};
pub use tools::Tools;

use registry::{Aliases, Registry};

/// Aliases and every version with its status and metrics.
pub fn status(config: &Config) -> Result<Value> {
    let reg = Registry::from_config(&config.registry)?;
    let aliases = reg.aliases()?;
    let mut versions = Vec::new();
    for v in reg.versions()? {
        let info = reg.version_info(&v)?;
        versions.push(json!({
            "version": v,
            "created": info["created"],
            "status": info["status"],
            "fingerprint": info["fingerprint"],
            "frozen_spearman": info["metrics"]["frozen_spearman"],
            "parent": info["lineage"]["parent"],
        }));
    }
    Ok(json!({"champion": aliases.champion, "previous": aliases.previous, "versions": versions}))
}

/// Every run, oldest first, with its decision.
pub fn history(config: &Config) -> Result<Value> {
    let reg = Registry::from_config(&config.registry)?;
    let mut runs = Vec::new();
    // From the store: a local registry's run directories, or the records an
    // S3 registry's runs uploaded.
    for run in reg.runs()? {
        if let Some(r) = reg.run_record(&run, "report.json")? {
            runs.push(
                json!({"run": r["run"], "decision": r["decision"], "stage": r["stage"],
                "version": r["version"], "reason": r["reason"]}),
            );
        } else if let Some(s) = reg.run_record(&run, "state.json")? {
            let s: run::State = serde_json::from_value(s).context("a run's state.json")?;
            runs.push(json!({"run": s.run, "decision": null, "finished": s.finished}));
        }
    }
    runs.sort_by(|a, b| a["run"].as_str().cmp(&b["run"].as_str()));
    Ok(json!(runs))
}

/// Serves `version` (default: the `previous` alias) on every target, checks
/// the canary, then moves the aliases. Takes the run lock.
pub fn rollback(config: &Config, tools: &Tools, version: Option<&str>) -> Result<Value> {
    let reg = Registry::from_config(&config.registry)?;
    let _lock = lock::RunLock::acquire(&reg.root.join("pipeline.lock"))?;
    let aliases = reg.aliases()?;
    let champion = aliases
        .champion
        .clone()
        .context("the registry has no champion yet; run the pipeline first")?;
    let target = match version {
        Some(v) => v.to_string(),
        None => aliases
            .previous
            .clone()
            .context("no `previous` version to roll back to; name one")?,
    };
    reg.version_info(&target)?;
    let dir = reg
        .root
        .join("runs")
        .join(format!("{}-rollback", run::utc_stamp()));
    std::fs::create_dir_all(&dir)?;
    match run::deploy_version(config, &reg, tools, &target, &champion, &dir)? {
        Ok(report) => {
            reg.set_aliases(&Aliases {
                champion: Some(target.clone()),
                previous: Some(champion.clone()),
            })?;
            let out = json!({"decision": "rolled_back", "champion": target, "previous": champion, "targets": report});
            registry::write_json(
                &dir.join("report.json"),
                &json!({"run": dir.file_name().map(|n| n.to_string_lossy().into_owned()), "decision": "rolled_back", "stage": "rollback", "version": target}),
            )?;
            let run = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            reg.publish_run(&run.unwrap_or_default(), &dir, &["report.json"])?;
            Ok(out)
        }
        Err((why, _)) => {
            anyhow::bail!("rollback to {target} failed its canary, {champion} serves again: {why}")
        }
    }
}
