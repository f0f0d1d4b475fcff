//! `train.runner = "ray"`: the training script as a Ray job.
//!
//! Submitted with `ray job submit --no-wait --working-dir SCRIPTS -- python
//! run.py ...` (the CLI packs and uploads the working directory, which the
//! Jobs REST API alone cannot), then followed through the dashboard's Jobs
//! REST API: status every second, the logs copied to `train.log` in the run
//! directory as they grow, `POST /api/jobs/ID/stop` when the time limit
//! passes. The job's last JSON line on stdout is the training summary, as
//! with the local runner.
//!
//! With a local registry the model, the training rows and the output
//! directory are passed as paths: a cluster on this machine (or one sharing
//! the registry's volume) reads and writes them in place. With the registry
//! on an object store (`registry.uri = "s3://..."`) they are passed as its
//! URIs: the rows are uploaded first, the job (`remote.py` beside run.py)
//! downloads its inputs and uploads `challenger/model/`, which the pipeline
//! then downloads; a KubeRay cluster on EKS needs nothing but S3 access
//! (IRSA), and `train.ray_runtime_env` carries any environment it needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::config::TrainSection;
use crate::http;

const REST_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines quoted in a failure's reason.
const TAIL_LINES: usize = 12;

/// One training job: where it goes and what it runs.
pub struct Job<'a> {
    pub train: &'a TrainSection,
    /// Unique per attempt (`embedrt-train-<run>-<attempt>`).
    pub submission_id: String,
    /// Earlier attempts of the same run, stopped before this one starts.
    pub earlier: Vec<String>,
    /// The script's arguments (after `python run.py`).
    pub args: Vec<String>,
    /// `train.log` in the run directory.
    pub log: PathBuf,
}

/// The `ray` CLI: `train.ray_cli`, else the one beside `train.python`, else `ray` on PATH.
pub fn ray_cli(train: &TrainSection) -> PathBuf {
    if let Some(cli) = &train.ray_cli {
        return cli.clone();
    }
    let sibling = train.python.with_file_name("ray");
    if sibling.exists() {
        sibling
    } else {
        PathBuf::from("ray")
    }
}

/// How long the job may take in all: `train.ray_job_timeout_s`, else the
/// training budget plus 10 minutes (the budget bounds only the training
/// loop; starting Python, loading and saving the model come on top).
pub fn limit(train: &TrainSection) -> Duration {
    Duration::from_secs_f64(
        train
            .ray_job_timeout_s
            .unwrap_or(train.time_budget_s + 600.0),
    )
}

/// Runs the job to its end; the summary on success, an error quoting the
/// job's last log lines otherwise.
pub fn run(job: &Job) -> Result<Value> {
    let address = job
        .train
        .ray_address
        .as_deref()
        .context("train.runner = \"ray\" needs train.ray_address")?;
    for id in &job.earlier {
        // A killed pipeline run leaves its job running; it must not write
        // the same output directory as this one. Unknown ids answer 404.
        let _ = http::send(
            "POST",
            &jobs_url(address, id, "stop"),
            &json!({}),
            REST_TIMEOUT,
        );
    }
    submit(job, address)?;
    let started = Instant::now();
    let limit = limit(job.train);
    let mut last_log_len = 0;
    loop {
        let status = job_status(address, &job.submission_id)?;
        let state = status["status"].as_str().unwrap_or("").to_string();
        if started.elapsed() > limit && !is_terminal(&state) {
            stop(address, &job.submission_id);
            let logs = save_logs(address, job).unwrap_or_default();
            bail!(
                "the training job {} ran past its limit of {:.0}s and was stopped; its last log lines:\n{}",
                job.submission_id,
                limit.as_secs_f64(),
                tail(&logs)
            );
        }
        if is_terminal(&state) {
            let logs = save_logs(address, job)?;
            if state != "SUCCEEDED" {
                bail!(
                    "the training job {} ended {state}: {}; its last log lines:\n{}",
                    job.submission_id,
                    status["message"].as_str().unwrap_or("").trim(),
                    tail(&logs)
                );
            }
            return summary(&logs).with_context(|| {
                format!(
                    "the training job {} succeeded but printed no JSON summary; its last log lines:\n{}",
                    job.submission_id,
                    tail(&logs)
                )
            });
        }
        // Copy the log as it grows, so `tail -f train.log` follows the job.
        if let Ok(logs) = logs(address, &job.submission_id) {
            if logs.len() != last_log_len {
                last_log_len = logs.len();
                let _ = embedrt_core::fsutil::write_atomic(&job.log, logs.as_bytes());
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn submit(job: &Job, address: &str) -> Result<()> {
    let cli = ray_cli(job.train);
    let mut cmd = Command::new(&cli);
    cmd.args(["job", "submit", "--no-wait", "--address", address])
        .args(["--submission-id", &job.submission_id])
        .arg("--working-dir")
        .arg(&job.train.scripts);
    if let Some(n) = job.train.ray_num_cpus {
        cmd.args(["--entrypoint-num-cpus", &n.to_string()]);
    }
    if let Some(n) = job.train.ray_num_gpus {
        cmd.args(["--entrypoint-num-gpus", &n.to_string()]);
    }
    if let Some(env) = &job.train.ray_runtime_env {
        cmd.args(["--runtime-env-json", &env.to_string()]);
    }
    cmd.args(["--", "python", "run.py"]).args(&job.args);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {} (set train.ray_cli)", cli.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "ray job submit to {address} failed ({}): {}",
            out.status,
            tail(&stderr)
        );
    }
    Ok(())
}

fn jobs_url(address: &str, id: &str, tail: &str) -> String {
    http::join(address, &format!("api/jobs/{id}/{tail}"))
}

fn job_status(address: &str, id: &str) -> Result<Value> {
    let url = http::join(address, &format!("api/jobs/{id}"));
    Ok(http::get(&url, REST_TIMEOUT)
        .with_context(|| format!("reading the status of training job {id}"))?
        .body)
}

fn logs(address: &str, id: &str) -> Result<String> {
    let body = http::get(&jobs_url(address, id, "logs"), REST_TIMEOUT)?.body;
    Ok(body["logs"].as_str().unwrap_or("").to_string())
}

fn save_logs(address: &str, job: &Job) -> Result<String> {
    let logs = logs(address, &job.submission_id)
        .with_context(|| format!("reading the logs of training job {}", job.submission_id))?;
    embedrt_core::fsutil::write_atomic(&job.log, logs.as_bytes())
        .with_context(|| format!("{}: cannot write", job.log.display()))?;
    Ok(logs)
}

/// Asks Ray to stop the job and waits (up to 30 s) until it has.
fn stop(address: &str, id: &str) {
    let _ = http::send(
        "POST",
        &jobs_url(address, id, "stop"),
        &json!({}),
        REST_TIMEOUT,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match job_status(address, id) {
            Ok(s) if is_terminal(s["status"].as_str().unwrap_or("")) => return,
            Err(_) => return,
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "SUCCEEDED" | "FAILED" | "STOPPED")
}

/// The job's last lines that are not blank.
pub fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// The last log line that is a JSON object (run.py prints its summary last;
/// Ray may log after it).
pub fn summary(logs: &str) -> Option<Value> {
    logs.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .find(Value::is_object)
}

/// The submission id of one attempt of one run (Ray wants ids unique per cluster).
pub fn submission_id(run: &str, attempt: u32) -> String {
    format!("embedrt-train-{run}-{attempt}")
}

/// Arguments as the job's command line carries them: paths must be UTF-8.
pub fn arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(String::from)
        .with_context(|| format!("{}: a Ray job's arguments must be UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_is_the_last_json_object_line() {
        let logs = "loading\n{\"steps\": 3}\n[1, 2]\nINFO ray: job done\n";
        assert_eq!(summary(logs), Some(json!({"steps": 3})));
        assert_eq!(summary("no json here\n"), None);
    }

    #[test]
    fn a_summary_keeps_every_bit_of_its_floats() {
        // Python printed these with repr (shortest round-trip); the report must
        // hold the same doubles (CI once saw ...3717 read back as ...3716).
        for text in [
            "0.9162950930003717",
            "4.926553130149841",
            "2.2250738585072014e-308",
        ] {
            let logs = format!("{{\"seconds\": {text}}}\n");
            let got = summary(&logs).and_then(|v| v["seconds"].as_f64());
            assert_eq!(got, Some(text.parse::<f64>().unwrap()), "{text}");
            assert_eq!(serde_json::to_string(&got.unwrap()).unwrap(), text);
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let logs: String = (0..30).map(|i| format!("line {i}\n\n")).collect();
        let t = tail(&logs);
        assert!(t.starts_with("line 18") && t.ends_with("line 29"), "{t}");
    }
}
