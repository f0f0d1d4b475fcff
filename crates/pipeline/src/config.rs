//! The declarative pipeline config (one TOML file): model, data checks,
//! training recipe, gates, deploy targets, canary. Relative paths are
//! resolved against the config file's directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelSection,
    pub registry: RegistrySection,
    #[serde(default)]
    pub data: DataSection,
    pub train: TrainSection,
    pub gates: GatesSection,
    #[serde(default)]
    pub optimize: OptimizeSection,
    #[serde(default)]
    pub deploy: Vec<DeployTarget>,
    #[serde(default)]
    pub canary: CanarySection,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A label for reports.
    pub name: String,
    /// The sentence-transformers directory the first champion is made from.
    pub base: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// A local directory (the registry, the days' data, the runs).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Or an object store: `s3://bucket/prefix` (credentials and endpoint
    /// from the `AWS_*` environment, IRSA on EKS) or `file:///dir`.
    #[serde(default)]
    pub uri: Option<String>,
    /// With `uri`: the local directory for the run lock, the runs' work
    /// files and the versions downloaded for training and serving.
    /// Default: `registry-cache` beside the config file.
    #[serde(default)]
    pub cache: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub label_min: f64,
    pub label_max: f64,
    /// Longer sentences (in characters) reject the day.
    pub max_chars: usize,
    pub min_rows: usize,
    /// Share of the day's scored rows kept out of training for the held-out gate.
    pub held_out_fraction: f64,
    /// Rows replayed from earlier days, as a share of the day's training rows.
    pub replay_fraction: f64,
    /// A day whose mean score moves more than this from the earlier days' mean is rejected.
    pub max_mean_shift: f64,
    /// Same for the standard deviation.
    pub max_std_shift: f64,
    /// Rows using a frozen-benchmark sentence are dropped; more than this share rejects the day.
    pub max_leak_fraction: f64,
    /// Repeated rows are dropped; more than this share rejects the day.
    pub max_duplicate_fraction: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            label_min: 0.0,
            label_max: 5.0,
            max_chars: 1000,
            min_rows: 20,
            held_out_fraction: 0.15,
            replay_fraction: 0.5,
            max_mean_shift: 1.0,
            max_std_shift: 0.75,
            max_leak_fraction: 0.5,
            max_duplicate_fraction: 0.1,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// The Python that has torch and sentence-transformers.
    pub python: PathBuf,
    /// `python/embedrt/train` (holds run.py and check.py).
    pub scripts: PathBuf,
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub max_steps: u64,
    #[serde(default = "default_batch")]
    pub batch_size: u64,
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    /// Training stops after this many seconds, wherever it is.
    #[serde(default = "default_budget")]
    pub time_budget_s: f64,
    /// `local` (a subprocess) or `ray` (`ray job submit` to `ray_address`).
    #[serde(default = "default_runner")]
    pub runner: String,
    /// The Ray dashboard the job goes to (`http://HEAD:8265`); `runner = "ray"` only.
    #[serde(default)]
    pub ray_address: Option<String>,
    /// The `ray` CLI that submits the job (a path or a name on PATH);
    /// default: the `ray` beside `python`, else `ray` on PATH.
    #[serde(default)]
    pub ray_cli: Option<PathBuf>,
    /// The job is stopped after this many seconds (default `time_budget_s` + 600).
    #[serde(default)]
    pub ray_job_timeout_s: Option<f64>,
    /// CPUs / GPUs reserved for the job's entrypoint (Ray's default: none).
    #[serde(default)]
    pub ray_num_cpus: Option<f64>,
    #[serde(default)]
    pub ray_num_gpus: Option<f64>,
    /// The job's Ray runtime environment (`ray job submit --runtime-env-json`),
    /// e.g. `{ env_vars = { AWS_REGION = "us-east-1" } }`; `working_dir` is
    /// always `scripts`.
    #[serde(default)]
    pub ray_runtime_env: Option<serde_json::Value>,
}

fn default_seed() -> u64 {
    42
}
fn default_batch() -> u64 {
    16
}
fn default_lr() -> f64 {
    2e-5
}
fn default_budget() -> f64 {
    600.0
}
fn default_runner() -> String {
    "local".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesSection {
    /// STS CSV; its first `frozen_rows` rows are the frozen benchmark.
    pub frozen_benchmark: PathBuf,
    #[serde(default = "default_frozen_rows")]
    pub frozen_rows: usize,
    /// The challenger may lose at most this much Spearman x 100 on the frozen benchmark.
    pub frozen_epsilon: f64,
    /// ... and this much on the day's held-out slice.
    #[serde(default)]
    pub held_out_epsilon: f64,
    /// ONNX Runtime on the export vs the trainer's model, minimum cosine.
    #[serde(default = "default_onnx_cos")]
    pub onnx_min_cosine: f64,
    /// The optimized engine vs the trainer's model, minimum cosine.
    #[serde(default = "default_engine_cos")]
    pub engine_min_cosine: f64,
    /// The optimized engine may lose at most this much Spearman x 100 against the trainer's model.
    #[serde(default = "default_quality_drop")]
    pub engine_max_quality_drop: f64,
    /// The challenger's throughput may fall at most this share below the champion's.
    #[serde(default = "default_margin")]
    pub throughput_margin: f64,
}

fn default_frozen_rows() -> usize {
    300
}
fn default_onnx_cos() -> f64 {
    0.9999
}
fn default_engine_cos() -> f64 {
    0.9999
}
fn default_quality_drop() -> f64 {
    0.5
}
fn default_margin() -> f64 {
    // Generous: a busy shared 2-core machine swings by tens of percent.
    0.5
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizeSection {
    /// `auto` (GPU plans when a GPU answers, else the CPU engine), `cpu`, `cuda`.
    pub device: String,
    /// Plan precisions to build on a GPU; `int8`/`fp8` are calibrated on the
    /// day's sentences (on the CPU, so also without a GPU).
    pub precisions: Vec<String>,
    /// Sentences of the day that `embedrt calibrate` calibrates over.
    pub calibration_size: usize,
}

impl Default for OptimizeSection {
    fn default() -> Self {
        OptimizeSection {
            device: "auto".into(),
            precisions: vec!["fp16".into()],
            calibration_size: 512,
        }
    }
}

/// Where the new version goes.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DeployTarget {
    /// A running `embedrt serve` (its `POST /admin/reload`).
    EmbedrtServe { url: String },
    /// A KubeRay RayService: the `serveConfigV2` patch is written to the run
    /// directory (apply it with `kubectl patch`); no live check.
    Rayservice {
        name: String,
        app: String,
        /// The RayService manifest as applied (a path or s3:// URI): its
        /// serveConfigV2 is what the patch keeps (`rayservice.rs`).
        manifest: String,
        #[serde(default = "default_deployment")]
        deployment: String,
    },
    /// A live Ray Serve app: its deployment's `user_config` changed through
    /// the dashboard's REST API (`PUT /api/serve/applications/`), then the
    /// canary through `url`.
    RayServe {
        /// The dashboard, `http://HEAD:8265`.
        address: String,
        /// The Serve application's name.
        app: String,
        /// The Serve HTTP endpoint, `http://HEAD:8000`.
        url: String,
        /// The app's route prefix (it must match the running app's).
        #[serde(default = "default_route_prefix")]
        route_prefix: String,
        #[serde(default = "default_deployment")]
        deployment: String,
        /// How long every replica may take to serve the new version.
        #[serde(default = "default_switch_timeout")]
        timeout_s: f64,
    },
}

fn default_route_prefix() -> String {
    "/".into()
}
fn default_deployment() -> String {
    "Embedder".into()
}
fn default_switch_timeout() -> f64 {
    300.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanarySection {
    pub sentences: Vec<String>,
    pub min_cosine: f64,
    /// Test hook: perturbs the expected vectors so the canary fails and the
    /// rollback path runs. Never set it in production.
    pub inject_fault: bool,
}

impl Default for CanarySection {
    fn default() -> Self {
        CanarySection {
            sentences: vec![
                "A man is playing a guitar.".into(),
                "The weather is lovely today.".into(),
                "A woman is slicing an onion.".into(),
                "Stock markets fell sharply on Monday.".into(),
            ],
            min_cosine: 0.9999,
            inject_fault: false,
        }
    }
}

impl Config {
    /// Reads and checks the file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the pipeline config", path.display()))?;
        let mut config: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        // Absolute: the paths are sent to servers whose working directory is not ours.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = std::fs::canonicalize(parent)
            .with_context(|| format!("{}: cannot resolve", parent.display()))?;
        let r = &mut config.registry;
        match (&r.path, &r.uri) {
            (Some(_), Some(_)) => anyhow::bail!(
                "{}: [registry] takes `path` or `uri`, not both",
                path.display()
            ),
            (None, None) => anyhow::bail!(
                "{}: [registry] needs `path` (a directory) or `uri` (s3://bucket/prefix)",
                path.display()
            ),
            _ => {}
        }
        // A file:// or plain-path uri is a local registry like `path`.
        if let Some(local) = r.uri.as_deref().and_then(crate::store::local_path) {
            r.path = Some(local);
            r.uri = None;
        }
        if r.uri.is_some() && r.cache.is_none() {
            r.cache = Some(PathBuf::from("registry-cache"));
        }
        for p in r.path.iter_mut().chain(r.cache.iter_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut config.model.base,
            &mut config.train.python,
            &mut config.train.scripts,
            &mut config.gates.frozen_benchmark,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for target in &mut config.deploy {
            if let DeployTarget::Rayservice { manifest, .. } = target {
                if let Some(local) = crate::store::local_path(manifest) {
                    if local.is_relative() {
                        *manifest = base.join(local).display().to_string();
                    }
                }
            }
        }
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let d = &self.data;
        if d.label_min >= d.label_max {
            anyhow::bail!("data.label_min must be below data.label_max");
        }
        if !(0.0..1.0).contains(&d.held_out_fraction) {
            anyhow::bail!("data.held_out_fraction must be in [0, 1)");
        }
        if self.train.runner != "local" && self.train.runner != "ray" {
            anyhow::bail!(
                "train.runner must be \"local\" or \"ray\", not {:?}",
                self.train.runner
            );
        }
        if self.train.runner == "ray" && self.train.ray_address.is_none() {
            anyhow::bail!(
                "train.runner = \"ray\" needs train.ray_address (the Ray dashboard, e.g. \"http://127.0.0.1:8265\")"
            );
        }
        if let Some(env) = &self.train.ray_runtime_env {
            if !env.is_object() {
                anyhow::bail!(
                    "train.ray_runtime_env must be a table (Ray's runtime_env), not {env}"
                );
            }
        }
        if let Some(t) = self.train.ray_job_timeout_s {
            if t.is_nan() || t <= 0.0 {
                anyhow::bail!("train.ray_job_timeout_s must be > 0");
            }
        }
        for target in &self.deploy {
            if let DeployTarget::RayServe {
                route_prefix,
                timeout_s,
                ..
            } = target
            {
                if !route_prefix.starts_with('/') {
                    anyhow::bail!(
                        "deploy.route_prefix must start with \"/\", not {route_prefix:?}"
                    );
                }
                if timeout_s.is_nan() || *timeout_s <= 0.0 {
                    anyhow::bail!("deploy.timeout_s must be > 0");
                }
            }
        }
        if !["auto", "cpu", "cuda"].contains(&self.optimize.device.as_str()) {
            anyhow::bail!("optimize.device must be auto, cpu or cuda");
        }
        if let Some(p) = self
            .optimize
            .precisions
            .iter()
            .find(|p| !["fp32", "fp16", "int8", "fp8"].contains(&p.as_str()))
        {
            anyhow::bail!("optimize.precisions: {p:?} is not fp32, fp16, int8 or fp8");
        }
        if self.optimize.calibration_size == 0 {
            anyhow::bail!("optimize.calibration_size must be at least 1");
        }
        if self.canary.sentences.is_empty() {
            anyhow::bail!("canary.sentences must not be empty");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(registry: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[model]\nname = \"m\"\nbase = \"m\"\n[registry]\n{registry}\n\
             [train]\npython = \"p\"\nscripts = \"s\"\nmax_steps = 1\n\
             [gates]\nfrozen_benchmark = \"f.csv\"\nfrozen_epsilon = 1.0\n"
        );
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap();
        Config::load(&path).map(|mut c| {
            // Relative to the config's directory, which goes away with `dir`.
            for p in c
                .registry
                .path
                .iter_mut()
                .chain(c.registry.cache.iter_mut())
            {
                let rel = p
                    .strip_prefix(&base)
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|_| p.clone());
                *p = rel;
            }
            c
        })
    }

    #[test]
    fn registry_is_a_path_or_a_uri() {
        let c = load_with("path = \"reg\"").unwrap();
        assert_eq!(c.registry.path, Some(PathBuf::from("reg")));
        let c = load_with("uri = \"s3://bucket/pre/fix\"").unwrap();
        assert_eq!(c.registry.uri.as_deref(), Some("s3://bucket/pre/fix"));
        assert_eq!(c.registry.cache, Some(PathBuf::from("registry-cache")));
        let c = load_with("uri = \"file:///abs/reg\"").unwrap();
        assert_eq!(
            (c.registry.path, c.registry.uri),
            (Some(PathBuf::from("/abs/reg")), None)
        );
        let err = load_with("path = \"a\"\nuri = \"s3://b/c\"").unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let err = load_with("cache = \"c\"").unwrap_err();
        assert!(err.to_string().contains("needs `path`"), "{err}");
    }
}
