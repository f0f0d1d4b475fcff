//! One pipeline run: validate → train → export → optimize → evaluate →
//! register → deploy, each stage recorded in the run's `state.json` when it
//! finishes, so a run that died resumes after its last finished stage.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::data::{self, Row};
use crate::deploy;
use crate::lock::RunLock;
use crate::ray_job;
use crate::registry::{read_json, write_json, Aliases, DayEntry, Registry};
use crate::report;
use crate::tools::{cosine, min_cosine, Engine, Tools};

pub const STAGES: [&str; 7] = [
    "validate", "train", "export", "optimize", "evaluate", "register", "deploy",
];

/// What the caller passes besides the config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub data: String,
    pub tools: Tools,
    /// Recorded in each version's lineage.
    pub code_version: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub run: String,
    pub data_sha256: String,
    pub source: String,
    pub finished: Vec<String>,
    pub outputs: Map<String, Value>,
    pub stage_seconds: Map<String, Value>,
    pub resumed: u32,
    pub decision: Option<String>,
}

/// The last line `embedrt pipeline run` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub run: String,
    pub decision: String,
    pub stage: String,
    pub version: Option<String>,
    pub champion: Option<String>,
    pub metrics: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A stage's verdict: go on, or stop the run with a decision.
enum Step {
    Next(Value),
    Stop {
        decision: &'static str,
        reason: String,
        out: Value,
    },
}

struct Ctx<'a> {
    config: &'a Config,
    opts: &'a RunOptions,
    reg: Registry,
    dir: PathBuf,
    state: State,
    rows: Vec<Row>,
}

pub fn fingerprint(engine: &Engine) -> Result<String> {
    let file = match engine {
        Engine::Model(p) => p.join("model.safetensors"),
        Engine::Plan(p) => p.clone(),
    };
    let hex = embedrt_core::fsutil::sha256_file(&file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    Ok(hex[..12].to_string())
}

pub fn utc_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The engine a version serves with (a plan when one was built).
pub fn version_engine(reg: &Registry, version: &str) -> Result<Engine> {
    let info = reg.version_info(version)?;
    Ok(match info["engine"]["plan"].as_str() {
        Some(plan) => Engine::Plan(reg.version_dir(version)?.join(plan)),
        None => Engine::Model(reg.version_dir(version)?.join("model")),
    })
}

/// A version as a deploy target gets it: its local engine, and where a Ray
/// replica loads it from (the registry's URI when the registry is remote).
pub fn version_artifact(reg: &Registry, version: &str) -> Result<deploy::Artifact> {
    let engine = version_engine(reg, version)?;
    let location = match &engine {
        Engine::Model(p) | Engine::Plan(p) => {
            reg.remote_uri(p).unwrap_or_else(|| p.display().to_string())
        }
    };
    let fingerprint = fingerprint(&engine)?;
    Ok(deploy::Artifact {
        engine,
        location,
        fingerprint,
    })
}

/// The first champion: the configured base model, registered as is.
fn bootstrap(config: &Config, reg: &Registry, tools: &Tools, frozen: &Path) -> Result<String> {
    let version = reg.next_version()?;
    let base = &config.model.base;
    if !base.join("config.json").exists() {
        bail!(
            "{}: model.base is not a sentence-transformers directory (no config.json)",
            base.display()
        );
    }
    let spearman = tools.eval(&Engine::Model(base.clone()), frozen)?;
    let info = json!({
        "version": version,
        "created": utc_stamp(),
        "fingerprint": fingerprint(&Engine::Model(base.clone()))?,
        "engine": {"kind": "cpu"},
        "metrics": {"frozen_spearman": spearman},
        "lineage": {"parent": null, "base": base, "data": []},
    });
    reg.register(&version, base, &[], &info)?;
    reg.set_aliases(&Aliases {
        champion: Some(version.clone()),
        previous: None,
    })?;
    Ok(version)
}

fn write_frozen(config: &Config, dir: &Path) -> Result<(PathBuf, HashSet<String>)> {
    let text = std::fs::read_to_string(&config.gates.frozen_benchmark).with_context(|| {
        format!(
            "{}: cannot read gates.frozen_benchmark",
            config.gates.frozen_benchmark.display()
        )
    })?;
    let pairs = embedrt_core::sts::parse_csv(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.gates.frozen_benchmark.display()))?;
    let pairs: Vec<_> = pairs.into_iter().take(config.gates.frozen_rows).collect();
    let mut csv = String::new();
    let mut sentences = HashSet::new();
    for p in &pairs {
        csv.push_str(&format!(
            "{},{},{}\n",
            quote(&p.sentence1),
            quote(&p.sentence2),
            p.score
        ));
        sentences.insert(data::normalize(&p.sentence1));
        sentences.insert(data::normalize(&p.sentence2));
    }
    let path = dir.join("frozen.csv");
    embedrt_core::fsutil::write_atomic(&path, csv.as_bytes())?;
    Ok((path, sentences))
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn write_texts(path: &Path, texts: &[&str]) -> Result<()> {
    let mut s = String::new();
    for t in texts {
        s.push_str(&json!({ "text": t }).to_string());
        s.push('\n');
    }
    embedrt_core::fsutil::write_atomic(path, s.as_bytes())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// A stable pseudo-random number for a row, so splits and samples are seeded.
fn row_hash(row: &Row, seed: u64) -> u64 {
    let h = data::sha256_hex(format!("{seed}\u{1}{:?}", row.texts()).as_bytes());
    u64::from_str_radix(&h[..16], 16).unwrap_or(0)
}

fn find_unfinished(reg: &Registry, sha: &str) -> Result<Option<State>> {
    let mut found: Vec<State> = Vec::new();
    for e in std::fs::read_dir(reg.root.join("runs"))?.flatten() {
        let p = e.path().join("state.json");
        if let Ok(s) = read_json::<State>(&p) {
            if s.data_sha256 == sha && s.decision.is_none() {
                found.push(s);
            }
        }
    }
    found.sort_by(|a, b| a.run.cmp(&b.run));
    Ok(found.pop())
}

/// Runs (or resumes) the pipeline on one day's data.
pub fn run(config: &Config, opts: &RunOptions) -> Result<Outcome> {
    let reg = Registry::from_config(&config.registry)?;
    let _lock = RunLock::acquire(&reg.root.join("pipeline.lock"))?;
    let bytes = data::fetch(&opts.data)?;
    // Readable but malformed: a rejection, with a report.
    let parsed = data::parse_day(&opts.data, &bytes).map_err(|e| format!("{e:#}"));
    let sha = data::sha256_hex(&bytes);
    let state = match find_unfinished(&reg, &sha)? {
        Some(mut s) => {
            s.resumed += 1;
            eprintln!(
                "embedrt pipeline: resuming run {} after its finished stages {:?}",
                s.run, s.finished
            );
            s
        }
        None => State {
            run: format!("{}-{}", utc_stamp(), &sha[..8]),
            data_sha256: sha.clone(),
            source: opts.data.clone(),
            ..State::default()
        },
    };
    let dir = reg.root.join("runs").join(&state.run);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut ctx = Ctx {
        config,
        opts,
        reg,
        dir,
        state,
        rows: Vec::new(),
    };
    let rows = match parsed {
        Ok(r) => r,
        Err(reason) => {
            return ctx.finish("rejected", "validate", None, reason, Value::Null);
        }
    };
    ctx.rows = rows;
    ctx.save()?;
    let mut last = Value::Null;
    for stage in STAGES {
        if ctx.state.finished.iter().any(|s| s == stage) {
            last = ctx.state.outputs.get(stage).cloned().unwrap_or(Value::Null);
            continue;
        }
        let started = Instant::now();
        let step = match ctx.stage(stage) {
            Ok(s) => s,
            Err(e) => {
                ctx.record_seconds(stage, started);
                let version = ctx.output("register")["version"].as_str().map(String::from);
                return ctx.finish("failed", stage, version, format!("{e:#}"), Value::Null);
            }
        };
        ctx.record_seconds(stage, started);
        match step {
            Step::Next(out) => {
                ctx.state.outputs.insert(stage.into(), out.clone());
                ctx.state.finished.push(stage.into());
                ctx.save()?;
                last = out;
            }
            Step::Stop {
                decision,
                reason,
                out,
            } => {
                ctx.state.outputs.insert(stage.into(), out.clone());
                let version = ctx.output("register")["version"].as_str().map(String::from);
                return ctx.finish(decision, stage, version, reason, out);
            }
        }
    }
    let version = last["version"].as_str().map(String::from);
    ctx.finish("deployed", "deploy", version, String::new(), last)
}

impl Ctx<'_> {
    fn save(&self) -> Result<()> {
        write_json(&self.dir.join("state.json"), &self.state)?;
        self.reg
            .publish_run(&self.state.run, &self.dir, &["state.json"])
    }

    fn output(&self, stage: &str) -> Value {
        self.state
            .outputs
            .get(stage)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn record_seconds(&mut self, stage: &str, started: Instant) {
        let prev = self
            .state
            .stage_seconds
            .get(stage)
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        self.state
            .stage_seconds
            .insert(stage.into(), json!(prev + started.elapsed().as_secs_f64()));
    }

    fn finish(
        &mut self,
        decision: &str,
        stage: &str,
        version: Option<String>,
        reason: String,
        _out: Value,
    ) -> Result<Outcome> {
        self.state.decision = Some(decision.into());
        self.save()?;
        let champion = self.reg.aliases()?.champion;
        let eval = self.output("evaluate");
        let metrics = eval.get("metrics").cloned().unwrap_or(json!({}));
        let gates = eval.get("gates").cloned().unwrap_or(json!([]));
        let outcome = Outcome {
            run: self.state.run.clone(),
            decision: decision.into(),
            stage: stage.into(),
            version,
            champion,
            metrics,
            reason: (!reason.is_empty()).then_some(reason),
        };
        let mut report = serde_json::to_value(&outcome)?;
        report["gates"] = gates;
        report["stage_seconds"] = Value::Object(self.state.stage_seconds.clone());
        report["resumed"] = json!(self.state.resumed);
        report["data"] = json!({"source": self.state.source, "sha256": self.state.data_sha256});
        report["stages"] = Value::Object(self.state.outputs.clone());
        report::write(&self.dir, &self.reg, &report)?;
        self.reg.publish_run(
            &self.state.run,
            &self.dir,
            &["report.json", "report.md", "gates.svg"],
        )?;
        Ok(outcome)
    }

    fn stage(&mut self, stage: &str) -> Result<Step> {
        match stage {
            "validate" => self.validate(),
            "train" => self.train(),
            "export" => self.export(),
            "optimize" => self.optimize(),
            "evaluate" => self.evaluate(),
            "register" => self.register(),
            "deploy" => self.deploy(),
            _ => bail!("unknown stage {stage}"),
        }
    }

    fn validate(&mut self) -> Result<Step> {
        let (frozen_csv, frozen) = write_frozen(self.config, &self.dir)?;
        if self.reg.aliases()?.champion.is_none() {
            let v = bootstrap(self.config, &self.reg, &self.opts.tools, &frozen_csv)?;
            eprintln!("embedrt pipeline: registered the base model as {v}, the first champion");
        }
        let days = self.reg.days()?;
        let earlier: Vec<_> = days
            .iter()
            .filter(|d| d.sha256 != self.state.data_sha256)
            .map(|d| d.stats.clone())
            .collect();
        let stats = match data::validate(&self.rows, &self.config.data, &frozen, &earlier) {
            Ok((s, kept)) => {
                self.rows = kept;
                s
            }
            Err(reason) => {
                return Ok(Step::Stop {
                    decision: "rejected",
                    reason,
                    out: json!({}),
                })
            }
        };
        self.reg.add_day(
            DayEntry {
                sha256: self.state.data_sha256.clone(),
                source: self.state.source.clone(),
                stats: stats.clone(),
            },
            &self.rows,
        )?;
        Ok(Step::Next(json!({"stats": stats, "rows": self.rows.len()})))
    }

    fn train(&mut self) -> Result<Step> {
        let cfg = &self.config;
        let seed = cfg.train.seed;
        let scale = cfg.data.label_max - cfg.data.label_min;
        // Held-out slice: a seeded share of the day's scored rows.
        let cut = (cfg.data.held_out_fraction * u64::MAX as f64) as u64;
        let (mut held, mut train) = (Vec::new(), Vec::new());
        // The validated rows as stored (also when validate ran in an earlier, killed run).
        let rows = self.reg.day_rows(&self.state.data_sha256)?;
        for r in &rows {
            if matches!(r, Row::Scored { .. }) && row_hash(r, seed) < cut {
                held.push(r.clone());
            } else {
                train.push(r.clone());
            }
        }
        // Replay: a seeded sample of earlier accepted days.
        let mut replay = Vec::new();
        let mut replay_days = Vec::new();
        for d in self.reg.days()? {
            if d.sha256 == self.state.data_sha256 {
                continue;
            }
            replay_days.push(d.sha256.clone());
            replay.extend(self.reg.day_rows(&d.sha256)?);
        }
        replay.sort_by_key(|r| row_hash(r, seed));
        replay.truncate((train.len() as f64 * cfg.data.replay_fraction) as usize);
        let mut lines = String::new();
        for r in train.iter().chain(&replay) {
            let v = match r {
                Row::Scored {
                    sentence1,
                    sentence2,
                    score,
                } => json!({"sentence1": sentence1, "sentence2": sentence2,
                        "score": (score - cfg.data.label_min) / scale}),
                Row::Pair { anchor, positive } => json!({"anchor": anchor, "positive": positive}),
            };
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
        let train_file = self.dir.join("train.jsonl");
        embedrt_core::fsutil::write_atomic(&train_file, lines.as_bytes())?;
        let mut held_csv = String::new();
        for r in &held {
            if let Row::Scored {
                sentence1,
                sentence2,
                score,
            } = r
            {
                held_csv.push_str(&format!(
                    "{},{},{score}\n",
                    quote(sentence1),
                    quote(sentence2)
                ));
            }
        }
        embedrt_core::fsutil::write_atomic(&self.dir.join("held.csv"), held_csv.as_bytes())?;
        // Sentences for the export and engine checks: the held slice, else training rows.
        let source = if held.is_empty() { &train } else { &held };
        let texts: Vec<&str> = source.iter().flat_map(|r| r.texts()).take(64).collect();
        write_texts(&self.dir.join("held.jsonl"), &texts)?;

        let champion = self.reg.aliases()?.champion.context("no champion")?;
        let base = self.reg.version_dir(&champion)?.join("model");
        let out = self.dir.join("challenger");
        // A Ray job on a cluster cannot see this disk: with the registry on an
        // object store it reads and writes the store (python/embedrt/train/remote.py).
        let via_store = cfg.train.runner == "ray" && self.reg.is_remote();
        let run_key = format!("runs/{}", self.state.run);
        let (base_arg, data_arg, out_arg) = if via_store {
            self.reg
                .store
                .put_file(&format!("{run_key}/train.jsonl"), &train_file)?;
            // What a killed attempt uploaded must not pass for this one's model.
            self.reg
                .store
                .delete_prefix(&format!("{run_key}/challenger"))?;
            (
                self.reg.uri_of(&format!("versions/{champion}/model/")),
                self.reg.uri_of(&format!("{run_key}/train.jsonl")),
                self.reg.uri_of(&format!("{run_key}/challenger/")),
            )
        } else {
            (
                ray_job::arg(&base)?,
                ray_job::arg(&train_file)?,
                ray_job::arg(&out)?,
            )
        };
        let args: Vec<String> = vec![
            "--base".into(),
            base_arg,
            "--data".into(),
            data_arg,
            "--out".into(),
            out_arg,
            "--seed".into(),
            seed.to_string(),
            "--max-steps".into(),
            cfg.train.max_steps.to_string(),
            "--batch-size".into(),
            cfg.train.batch_size.to_string(),
            "--learning-rate".into(),
            cfg.train.learning_rate.to_string(),
            "--time-budget-s".into(),
            cfg.train.time_budget_s.to_string(),
        ];
        let summary = if cfg.train.runner == "ray" {
            let attempt = self.state.resumed;
            let summary = ray_job::run(&ray_job::Job {
                train: &cfg.train,
                submission_id: ray_job::submission_id(&self.state.run, attempt),
                earlier: (0..attempt)
                    .map(|a| ray_job::submission_id(&self.state.run, a))
                    .collect(),
                args,
                log: self.dir.join("train.log"),
            })?;
            if via_store {
                self.download_challenger(&format!("{run_key}/challenger/model"))?;
            }
            summary
        } else {
            let mut cmd = Command::new(&cfg.train.python);
            cmd.arg(cfg.train.scripts.join("run.py")).args(&args);
            crate::tools::run_json(&mut cmd, "training")?
        };
        Ok(Step::Next(json!({
            "parent": champion,
            "train_rows": train.len(),
            "replay_rows": replay.len(),
            "replay_days": replay_days,
            "held_out_rows": held.len(),
            "summary": summary,
        })))
    }

    fn model_dir(&self) -> PathBuf {
        self.dir.join("challenger/model")
    }

    /// The model a Ray job uploaded under `key`, into [`Self::model_dir`].
    fn download_challenger(&self, key: &str) -> Result<()> {
        let model = self.model_dir();
        if model.exists() {
            std::fs::remove_dir_all(&model)
                .with_context(|| format!("{}: cannot remove", model.display()))?;
        }
        if self.reg.store.get_dir(key, &model)? == 0 {
            bail!(
                "the training job succeeded but uploaded no model to {}",
                self.reg.uri_of(&format!("{key}/"))
            );
        }
        Ok(())
    }

    fn export(&mut self) -> Result<Step> {
        let onnx = self.dir.join("challenger/onnx");
        self.opts.tools.export(&self.model_dir(), &onnx)?;
        let check_file = self.dir.join("check.json");
        let mut cmd = Command::new(&self.config.train.python);
        cmd.arg(self.config.train.scripts.join("check.py"))
            .arg("--model")
            .arg(self.model_dir())
            .arg("--onnx")
            .arg(&onnx)
            .arg("--sentences")
            .arg(self.dir.join("held.jsonl"))
            .arg("--sts")
            .arg(self.dir.join("frozen.csv"))
            .arg("--out")
            .arg(&check_file);
        let summary = crate::tools::run_json(&mut cmd, "the ONNX check")?;
        let cos = summary["onnx_min_cosine"].as_f64().unwrap_or(f64::NAN);
        let min = self.config.gates.onnx_min_cosine;
        // NaN fails too.
        if cos.is_nan() || cos < min {
            return Ok(Step::Stop {
                decision: "rejected",
                reason: format!(
                    "ONNX Runtime on the export differs from the trainer's model: min cosine {cos} < gates.onnx_min_cosine {min}"
                ),
                out: summary,
            });
        }
        Ok(Step::Next(summary))
    }

    fn optimize(&mut self) -> Result<Step> {
        let device = self.config.optimize.device.as_str();
        let dir = self.dir.join("challenger/plans");
        let (quantized, metrics) = self.calibrate_quantized(&dir)?;
        let mut plans = Vec::new();
        let mut note = None;
        if device != "cpu" {
            std::fs::create_dir_all(&dir)?;
            for p in &self.config.optimize.precisions {
                let path = dir.join(format!("{p}.plan"));
                let table = quantized
                    .get(p)
                    .map(|_| dir.join(format!("{p}.calib.json")));
                match self
                    .opts
                    .tools
                    .build_plan(&self.model_dir(), p, table.as_deref(), &path)
                {
                    Ok(()) => {
                        plans.push(json!({"precision": p, "file": format!("plans/{p}.plan")}))
                    }
                    Err(e) if device == "auto" && plans.is_empty() => {
                        note = Some(format!("no GPU plan ({e:#}); serving the CPU engine"));
                        break;
                    }
                    Err(e) => bail!("building the {p} plan: {e:#}"),
                }
            }
        }
        let engine = match plans.first() {
            Some(p) => json!({"kind": "plan", "plan": p["file"]}),
            None => json!({"kind": "cpu"}),
        };
        Ok(Step::Next(json!({
            "engine": engine,
            "plans": plans,
            "note": note,
            "quantized": quantized,
            "metrics": metrics,
        })))
    }

    /// For `int8`/`fp8` in `optimize.precisions`, on any machine: the
    /// challenger's calibration table over the new day's accepted sentences
    /// (`embedrt calibrate`: fp32 CPU statistics, default calibrator and
    /// fallback search), written into `plans/` so the version keeps it, and
    /// the CPU fake-quant engine with that table against fp32 on the held
    /// sentences: the chain a GPU plan of the table runs, checked without a
    /// GPU. Returns the per-precision summary and flat metrics for the report.
    fn calibrate_quantized(&self, dir: &Path) -> Result<(Map<String, Value>, Map<String, Value>)> {
        let (mut quantized, mut metrics) = (Map::new(), Map::new());
        let wanted: Vec<&String> = self
            .config
            .optimize
            .precisions
            .iter()
            .filter(|p| matches!(p.as_str(), "int8" | "fp8"))
            .collect();
        if wanted.is_empty() {
            return Ok((quantized, metrics));
        }
        std::fs::create_dir_all(dir)?;
        let tools = &self.opts.tools;
        let model = self.model_dir();
        let rows = self.reg.day_rows(&self.state.data_sha256)?;
        let texts: Vec<&str> = rows.iter().flat_map(|r| r.texts()).collect();
        let input = self.dir.join("calibration.jsonl");
        write_texts(&input, &texts)?;
        let held = self.dir.join("held.jsonl");
        let fp32 = tools.embed(&Engine::Model(model.clone()), &held)?;
        for p in wanted {
            let table = dir.join(format!("{p}.calib.json"));
            let size = self.config.optimize.calibration_size;
            let summary = tools
                .calibrate(&model, &input, p, size, &table)
                .with_context(|| format!("calibrating {p} on the day's sentences"))?;
            let fq = tools.embed_fake_quant(&model, p, &table, &held)?;
            let cos: Vec<f64> = fp32.iter().zip(&fq).map(|(a, b)| cosine(a, b)).collect();
            if cos.is_empty() || fp32.len() != fq.len() {
                bail!(
                    "the {p} CPU check embedded {} of {} held sentences",
                    fq.len(),
                    fp32.len()
                );
            }
            let mean = cos.iter().sum::<f64>() / cos.len() as f64;
            let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
            metrics.insert(format!("{p}_cpu_fake_quant_mean_cosine"), json!(mean));
            metrics.insert(format!("{p}_cpu_fake_quant_min_cosine"), json!(min));
            quantized.insert(
                p.clone(),
                json!({
                    "table": format!("plans/{p}.calib.json"),
                    "calibrator": summary["calibrator"],
                    "sentences": summary["sentences"],
                    "fallback": summary["fallback"],
                    "calibration_accuracy": summary["accuracy"],
                    "cpu_check_sentences": cos.len(),
                    "cpu_fake_quant_mean_cosine": mean,
                    "cpu_fake_quant_min_cosine": min,
                }),
            );
        }
        Ok((quantized, metrics))
    }

    fn challenger_engine(&self) -> Engine {
        match self.output("optimize")["engine"]["plan"].as_str() {
            Some(p) => Engine::Plan(self.dir.join("challenger").join(p)),
            None => Engine::Model(self.model_dir()),
        }
    }

    /// The engine the champion's throughput is measured on: the same kind as
    /// the challenger's, so the gate compares versions, not devices. A
    /// champion with no plan (the base model registered as the first
    /// champion, or one made on a CPU-only run) facing a challenger plan gets
    /// a plan of the challenger's precision built into the run directory (for
    /// int8/fp8, calibrated on the same day's sentences).
    fn champion_speed_engine(&self, champ: &Engine) -> Result<Engine> {
        let Engine::Model(model) = champ else {
            return Ok(champ.clone());
        };
        let optimize = self.output("optimize");
        let Some(precision) = optimize["plans"][0]["precision"].as_str() else {
            return Ok(champ.clone());
        };
        let tools = &self.opts.tools;
        let dir = self.dir.join("champion-plan");
        std::fs::create_dir_all(&dir)?;
        let table = match precision {
            "int8" | "fp8" => {
                let table = dir.join(format!("{precision}.calib.json"));
                let input = self.dir.join("calibration.jsonl");
                let size = self.config.optimize.calibration_size;
                tools
                    .calibrate(model, &input, precision, size, &table)
                    .with_context(|| format!("calibrating the champion's {precision} plan"))?;
                Some(table)
            }
            _ => None,
        };
        let plan = dir.join(format!("{precision}.plan"));
        tools
            .build_plan(model, precision, table.as_deref(), &plan)
            .with_context(|| format!("building the champion's {precision} plan to time it"))?;
        Ok(Engine::Plan(plan))
    }

    fn evaluate(&mut self) -> Result<Step> {
        let g = &self.config.gates;
        let tools = &self.opts.tools;
        let champion = self.reg.aliases()?.champion.context("no champion")?;
        let champ = version_engine(&self.reg, &champion)?;
        let chall = self.challenger_engine();
        let frozen = self.dir.join("frozen.csv");
        let held = self.dir.join("held.csv");
        let champ_frozen = tools.eval(&champ, &frozen)?;
        let chall_frozen = tools.eval(&chall, &frozen)?;
        let has_held = std::fs::metadata(&held)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        let (champ_held, chall_held) = if has_held {
            (
                Some(tools.eval(&champ, &held)?),
                Some(tools.eval(&chall, &held)?),
            )
        } else {
            (None, None)
        };
        let check: Value = read_json(&self.dir.join("check.json"))?;
        let trainer_vectors: Vec<Vec<f32>> =
            serde_json::from_value(check["trainer_vectors"].clone()).context("check.json")?;
        let engine_vectors = tools.embed(&chall, &self.dir.join("held.jsonl"))?;
        let engine_cos = min_cosine(&engine_vectors, &trainer_vectors).unwrap_or(f64::NAN);
        let trainer_spearman = check["trainer_spearman"].as_f64().unwrap_or(f64::NAN);
        let bench_input = frozen.clone();
        let champ_speed = self.champion_speed_engine(&champ)?;
        let champ_tput = tools.bench(&champ_speed, &bench_input)?;
        let chall_tput = tools.bench(&chall, &bench_input)?;

        let mut gates = vec![gate(
            "frozen_benchmark",
            chall_frozen,
            champ_frozen - g.frozen_epsilon,
            format!(
                "challenger {chall_frozen:.3} vs champion {champ_frozen:.3} - frozen_epsilon {}",
                g.frozen_epsilon
            ),
        )];
        if let (Some(c), Some(h)) = (champ_held, chall_held) {
            gates.push(gate(
                "held_out",
                h,
                c - g.held_out_epsilon,
                format!(
                    "challenger {h:.3} vs champion {c:.3} - held_out_epsilon {}",
                    g.held_out_epsilon
                ),
            ));
        }
        gates.push(gate(
            "engine_vs_trainer_cosine",
            engine_cos,
            g.engine_min_cosine,
            "min cosine of the optimized engine vs sentence-transformers encode".into(),
        ));
        gates.push(gate("engine_quality", chall_frozen, trainer_spearman - g.engine_max_quality_drop,
            format!("optimized engine {chall_frozen:.3} vs trainer {trainer_spearman:.3} - engine_max_quality_drop {}", g.engine_max_quality_drop)));
        gates.push(gate("throughput", chall_tput, champ_tput * (1.0 - g.throughput_margin),
            format!("challenger {chall_tput:.1}/s vs champion {champ_tput:.1}/s x (1 - throughput_margin {})", g.throughput_margin)));
        let first_fail = gates.iter().position(|x| x["passed"] == json!(false));
        if let Some(i) = first_fail {
            gates[i]["decided"] = json!(true);
        }
        let metrics = json!({
            "champion": champion,
            "champion_frozen_spearman": champ_frozen,
            "champion_timed_on": match &champ_speed {
                Engine::Plan(p) => p.display().to_string(),
                Engine::Model(_) => "the CPU engine".to_string(),
            },
            "frozen_spearman": chall_frozen,
            "champion_held_out_spearman": champ_held,
            "held_out_spearman": chall_held,
            "trainer_frozen_spearman": trainer_spearman,
            "onnx_min_cosine": check["onnx_min_cosine"],
            "engine_min_cosine": engine_cos,
            "champion_sentences_per_s": champ_tput,
            "sentences_per_s": chall_tput,
        });
        // The optimize stage's own checks (int8/fp8 CPU fake-quant cosines).
        let mut metrics = metrics;
        if let (Some(o), Value::Object(m)) = (
            metrics.as_object_mut(),
            self.output("optimize")["metrics"].clone(),
        ) {
            o.extend(m);
        }
        let out = json!({"metrics": metrics, "gates": gates});
        if let Some(i) = first_fail {
            return Ok(Step::Stop {
                decision: "rejected",
                reason: format!(
                    "gate {} failed: {}",
                    gates[i]["name"].as_str().unwrap_or(""),
                    gates[i]["detail"].as_str().unwrap_or("")
                ),
                out,
            });
        }
        Ok(Step::Next(out))
    }

    fn register(&mut self) -> Result<Step> {
        let version = match self.state.outputs.get("register") {
            Some(v) => return Ok(Step::Next(v.clone())),
            None => self.reg.next_version()?,
        };
        let train = self.output("train");
        let eval = self.output("evaluate");
        let engine = self.output("optimize")["engine"].clone();
        let mut data = vec![json!(self.state.data_sha256)];
        data.extend(train["replay_days"].as_array().cloned().unwrap_or_default());
        let info = json!({
            "version": version,
            "created": utc_stamp(),
            "run": self.state.run,
            "fingerprint": fingerprint(&self.challenger_engine())?,
            "engine": engine,
            "plans": self.output("optimize")["plans"],
            "metrics": eval["metrics"],
            "status": "registered",
            "lineage": {
                "parent": train["parent"],
                "data": data,
                "code_version": self.opts.code_version,
                "training": train["summary"],
            },
        });
        let ch = self.dir.join("challenger");
        self.reg.register(
            &version,
            &self.model_dir(),
            &[("onnx", &ch.join("onnx")), ("plans", &ch.join("plans"))],
            &info,
        )?;
        Ok(Step::Next(json!({"version": version})))
    }

    fn deploy(&mut self) -> Result<Step> {
        let version = self.output("register")["version"]
            .as_str()
            .context("no registered version")?
            .to_string();
        let aliases = self.reg.aliases()?;
        let champion = aliases.champion.clone().context("no champion")?;
        match deploy_version(
            self.config,
            &self.reg,
            &self.opts.tools,
            &version,
            &champion,
            &self.dir,
        )? {
            Ok(report) => {
                self.reg.set_aliases(&Aliases {
                    champion: Some(version.clone()),
                    previous: Some(champion),
                })?;
                set_status(&self.reg, &version, "champion")?;
                Ok(Step::Next(json!({"version": version, "targets": report})))
            }
            Err((reason, report)) => {
                set_status(&self.reg, &version, "rolled_back")?;
                Ok(Step::Stop {
                    decision: "rolled_back",
                    reason,
                    out: json!({"version": version, "targets": report}),
                })
            }
        }
    }
}

fn set_status(reg: &Registry, version: &str, status: &str) -> Result<()> {
    let mut info = reg.version_info(version)?;
    info["status"] = json!(status);
    reg.write_version_info(version, &info)
}

fn gate(name: &str, value: f64, threshold: f64, detail: String) -> Value {
    json!({
        "name": name,
        "value": value,
        "threshold": threshold,
        // NaN never passes.
        "passed": value >= threshold,
        "decided": false,
        "detail": detail,
    })
}

/// Switches every target to `version` and runs the canary; on a failure
/// every target switched so far goes back to `fallback`.
/// Ok(Ok(report)) deployed, Ok(Err((why, report))) rolled back.
pub fn deploy_version(
    config: &Config,
    reg: &Registry,
    tools: &Tools,
    version: &str,
    fallback: &str,
    dir: &Path,
) -> Result<std::result::Result<Value, (String, Value)>> {
    let artifact = version_artifact(reg, version)?;
    let engine = &artifact.engine;
    let fp = &artifact.fingerprint;
    let canary_in = dir.join("canary.jsonl");
    let texts: Vec<&str> = config.canary.sentences.iter().map(String::as_str).collect();
    write_texts(&canary_in, &texts)?;
    let expected = tools.embed(engine, &canary_in)?;
    let mut reports = Vec::new();
    // What each target served before, for a rollback that puts it back.
    let mut snapshots = Vec::new();
    let mut failure = None;
    for (i, target) in config.deploy.iter().enumerate() {
        match deploy::snapshot(target) {
            Ok(s) => snapshots.push(s),
            Err(e) => {
                snapshots.push(Value::Null);
                failure = Some((i, format!("reading target {i}: {e:#}")));
                break;
            }
        }
        let switched = match deploy::switch(target, &artifact, version, dir) {
            Ok(v) => v,
            Err(e) => {
                failure = Some((i, format!("switching target {i}: {e:#}")));
                break;
            }
        };
        match deploy::canary(target, &config.canary, &expected, fp) {
            Ok(c) => reports.push(json!({"target": i, "switch": switched, "canary": c})),
            Err(why) => {
                failure = Some((i, why));
                break;
            }
        }
    }
    let Some((failed, why)) = failure else {
        return Ok(Ok(json!(reports)));
    };
    let back = version_artifact(reg, fallback)?;
    let mut rollback = Vec::new();
    for (target, snap) in config.deploy.iter().take(failed + 1).zip(&snapshots) {
        rollback.push(match deploy::restore(target, snap, &back, fallback, dir) {
            Ok(v) => json!({"ok": v}),
            Err(e) => json!({"error": format!("{e:#}")}),
        });
    }
    Ok(Err((
        format!("{why}; rolled back to {fallback}"),
        json!({"targets": reports, "rollback": rollback}),
    )))
}
