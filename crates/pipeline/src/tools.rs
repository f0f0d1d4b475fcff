//! The stages' subprocesses: the `embedrt` binary itself (export, eval,
//! bench, embed, build) and the Python training/check scripts. A subprocess
//! per stage keeps this crate off the engine crates and makes a killed run
//! resumable from its last finished stage.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Where the programs the stages call are.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The `embedrt` binary (the CLI passes `current_exe()`).
    pub embedrt: PathBuf,
}

/// Runs a command; its last stdout line is parsed as JSON. Stderr's last
/// line goes into the error when it fails.
pub fn run_json(cmd: &mut Command, what: &str) -> Result<Value> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!("{what} failed ({}): {last}", out.status);
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("{what}: output is not JSON: {last:?}"))
}

impl Tools {
    fn embedrt(&self) -> Command {
        Command::new(&self.embedrt)
    }

    pub fn eval(&self, engine: &Engine, sts: &Path) -> Result<f64> {
        let mut c = self.embedrt();
        c.arg("eval").args(engine.args()).arg("--sts").arg(sts);
        let v = run_json(&mut c, "embedrt eval")?;
        v["spearman"]
            .as_f64()
            .context("embedrt eval printed no spearman")
    }

    pub fn bench(&self, engine: &Engine, input: &Path) -> Result<f64> {
        let mut c = self.embedrt();
        c.arg("bench")
            .args(engine.args())
            .arg("--input")
            .arg(input)
            .args(["--repeat", "3", "--min-seconds", "1"]);
        let v = run_json(&mut c, "embedrt bench")?;
        v["sentences_per_s"]
            .as_f64()
            .context("embedrt bench printed no sentences_per_s")
    }

    /// Normalized vectors of `input` (JSON lines `{"text"}`).
    pub fn embed(&self, engine: &Engine, input: &Path) -> Result<Vec<Vec<f32>>> {
        self.embed_with(engine.args(), input)
    }

    /// Vectors of `input` from the CPU engine with fake quantization: the
    /// scales of `table` (what a GPU int8/fp8 plan of it computes).
    pub fn embed_fake_quant(
        &self,
        model: &Path,
        precision: &str,
        table: &Path,
        input: &Path,
    ) -> Result<Vec<Vec<f32>>> {
        let mut args = Engine::Model(model.to_path_buf()).args();
        args.extend(["--precision".into(), precision.into()]);
        args.extend(["--calibration-table".into(), table.into()]);
        self.embed_with(args, input)
    }

    fn embed_with(&self, args: Vec<std::ffi::OsString>, input: &Path) -> Result<Vec<Vec<f32>>> {
        let out = self
            .embedrt()
            .arg("embed")
            .args(args)
            .arg("--input")
            .arg(input)
            .output()
            .context("cannot start embedrt embed")?;
        if !out.status.success() {
            bail!(
                "embedrt embed failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut rows = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Value = serde_json::from_str(line).context("embedrt embed output")?;
            rows.push(
                serde_json::from_value(v["embedding"].clone()).context("embedrt embed output")?,
            );
        }
        Ok(rows)
    }

    /// `embedrt calibrate` on the CPU (statistics of the fp32 engine, the
    /// default calibrator and fallback search); returns its summary line.
    pub fn calibrate(
        &self,
        model: &Path,
        input: &Path,
        precision: &str,
        size: usize,
        out: &Path,
    ) -> Result<Value> {
        let mut c = self.embedrt();
        c.arg("calibrate")
            .arg("--model")
            .arg(model)
            .arg("--input")
            .arg(input)
            .args(["--precision", precision])
            .args(["--calibration-size", &size.to_string()])
            .arg("-o")
            .arg(out);
        run_json(&mut c, "embedrt calibrate")
    }

    pub fn export(&self, model: &Path, out: &Path) -> Result<()> {
        let status = self
            .embedrt()
            .arg("export")
            .arg("--model")
            .arg(model)
            .arg("-o")
            .arg(out)
            .output()
            .context("cannot start embedrt export")?;
        if !status.status.success() {
            bail!(
                "embedrt export failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        Ok(())
    }

    /// Builds a GPU plan (int8/fp8 from `table`); the error says why when
    /// there is no GPU.
    pub fn build_plan(
        &self,
        model: &Path,
        precision: &str,
        table: Option<&Path>,
        out: &Path,
    ) -> Result<()> {
        let mut c = self.embedrt();
        c.arg("build").arg("--model").arg(model).args([
            "--device",
            "cuda",
            "--precision",
            precision,
        ]);
        if let Some(t) = table {
            c.arg("--calibration-table").arg(t);
        }
        let o = c
            .arg("-o")
            .arg(out)
            .output()
            .context("cannot start embedrt build")?;
        if !o.status.success() {
            bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
        }
        Ok(())
    }
}

/// What serves: the CPU engine on a model directory, or a GPU plan.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Engine {
    Model(PathBuf),
    Plan(PathBuf),
}

impl Engine {
    fn args(&self) -> Vec<std::ffi::OsString> {
        match self {
            Engine::Model(p) => vec!["--model".into(), p.into(), "--device".into(), "cpu".into()],
            Engine::Plan(p) => vec!["--plan".into(), p.into()],
        }
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// The smallest cosine between matching rows; `None` when the counts differ.
pub fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .map(|(x, y)| cosine(x, y))
            .fold(f64::INFINITY, f64::min),
    )
}
