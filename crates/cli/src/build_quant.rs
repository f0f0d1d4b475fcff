//! `embedrt build --precision int8|fp8`: a quantized plan. The activation
//! scales come from a calibration table; with `--eval`, the builder measures
//! the plan against fp32 on the GPU (cosine over held-out sentences, STS
//! Spearman) and, with `--accuracy-target`, keeps the most sensitive GEMMs
//! in fp16 until the target holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use embedrt_core::quant::MeasuredAccuracy;
use embedrt_core::{sts, CalibrationTable, Embedder, GemmSite, QuantFormat, SentenceModel};
use embedrt_cuda::build::{build_quantized_plan, gpu_target};
use embedrt_cuda::quant_plan::{
    check_format_supported, check_gemm_output, check_table_forms, GemmOutput,
};
use embedrt_cuda::{build_plan, BuildOptions, CudaEngine, Plan, Precision, Profile};

use crate::calibrate::{make_table, CalibrationArgs};

/// What `embedrt build` was given for a quantized plan.
pub struct QuantRequest {
    pub format: QuantFormat,
    pub calibration: Option<PathBuf>,
    /// Calibrator and sentence count for `calibration`.
    pub calibration_opts: CalibrationArgs,
    pub calibration_table: Option<PathBuf>,
    /// GEMM names kept in fp16, overriding the table's list.
    pub fallback: Option<Vec<String>>,
    /// Minimum mean cosine to fp32 over the held-out sentences.
    pub accuracy_target: Option<f64>,
    pub eval: Option<PathBuf>,
    pub held_out: usize,
    /// How the 8-bit GEMMs hand their result on (recorded in the plan);
    /// None: [`GemmOutput::default_for`] the format and this GPU.
    pub gemm_output: Option<GemmOutput>,
    /// Time the 8-bit GEMMs' algorithms on this GPU (`--tune-8bit`).
    pub tune: bool,
}

/// The plan built and the table it was built from (fallback and accuracy filled in).
pub struct QuantBuilt {
    pub plan: Plan,
    pub table: CalibrationTable,
    pub evaluations: usize,
}

pub fn build(
    model: &SentenceModel,
    ordinal: usize,
    profile: Profile,
    req: &QuantRequest,
    progress: &dyn Fn(&str),
) -> Result<QuantBuilt> {
    let gpu = gpu_target(ordinal)?;
    check_format_supported(req.format, &gpu.name, (gpu.cc_major, gpu.cc_minor))?;
    let gemm_output = req
        .gemm_output
        .unwrap_or_else(|| GemmOutput::default_for(req.format, (gpu.cc_major, gpu.cc_minor)));
    check_gemm_output(
        gemm_output,
        req.format,
        &gpu.name,
        (gpu.cc_major, gpu.cc_minor),
    )?;
    let table = read_table(model, req)?;
    check_table_forms(
        gemm_output,
        table.weight_scales,
        table.gelu,
        table.attention_inputs,
    )?;
    progress("loading weights");
    let weights = model.load_weights()?;
    // Every plan built here (the evaluated ones too) has the GEMM output asked for.
    let assemble = |fallback: &[String]| -> Result<Plan> {
        let plan = build_quantized_plan(
            model,
            &weights,
            &table,
            fallback,
            profile,
            &gpu,
            gemm_output,
        )?;
        Ok(plan)
    };
    let mut fallback = req
        .fallback
        .clone()
        .unwrap_or_else(|| table.fallback.clone());
    let layers = model.config.num_hidden_layers;
    let eval = match &req.eval {
        Some(path) => Some(EvalSet::read(path, req.held_out)?),
        None => {
            if req.accuracy_target.is_some() {
                bail!("--accuracy-target needs --eval STS.csv: the held-out sentences the target is measured on");
            }
            None
        }
    };
    let mut evaluations = 0;
    let mut accuracy = None;
    if let Some(eval) = &eval {
        progress("fp32 reference embeddings");
        let reference = Reference::new(model, ordinal, eval)?;
        let mut measure = |fallback: &[String]| -> Result<(f64, f64, Plan)> {
            evaluations += 1;
            let plan = assemble(fallback)?;
            let (mean, min) = reference.cosines(&open(&plan, model, ordinal)?, eval)?;
            Ok((mean, min, plan))
        };
        if let Some(target) = req.accuracy_target {
            progress("measuring the plan with every GEMM quantized");
            let (mean, _, _) = measure(&fallback)?;
            if mean < target {
                fallback = sensitivity_fallback(layers, &fallback, target, &mut measure, progress)?;
            }
        }
        progress("measuring the final plan");
        let (mean, min, plan) = measure(&fallback)?;
        let engine = open(&plan, model, ordinal)?;
        let (sp32, spq) = eval.spearman(&reference.fp32, &engine)?;
        accuracy = Some(MeasuredAccuracy {
            mean_cosine: mean,
            min_cosine: min,
            held_out_sentences: eval.held_out.len(),
            spearman_fp32: Some(sp32),
            spearman_quantized: Some(spq),
        });
    }
    progress("writing the plan");
    let mut plan = assemble(&fallback)?;
    if let Some(q) = plan.header.quant.as_mut() {
        q.accuracy = accuracy.clone().or_else(|| table.accuracy.clone());
    }
    let mut table = table;
    table.fallback = plan
        .header
        .quant
        .as_ref()
        .map(|q| q.fallback.clone())
        .unwrap_or_default();
    if accuracy.is_some() {
        table.accuracy = accuracy;
    }
    // The fp16 tuner does not run (it would time fp16 GEMMs over 1-byte weights);
    // with --tune-8bit the 8-bit GEMMs are timed on this GPU, else they take
    // cuBLASLt's heuristic choice at load.
    plan.header.gemm_algos.clear();
    if req.tune {
        progress("timing the 8-bit GEMMs");
        let options = embedrt_runtime::engine_options_from_env()?;
        let engine = CudaEngine::load(&plan, ordinal, &options)?;
        let algos = engine.tune_quant_gemms(plan.header.profile.opt.tokens())?;
        drop(engine);
        if let Some(q) = plan.header.quant.as_mut() {
            q.gemm_algos = algos;
        }
    }
    Ok(QuantBuilt {
        plan,
        table,
        evaluations,
    })
}

fn read_table(model: &SentenceModel, req: &QuantRequest) -> Result<CalibrationTable> {
    let path = match (&req.calibration_table, &req.calibration) {
        (Some(t), None) => t,
        (Some(_), Some(_)) => bail!("give --calibration or --calibration-table, not both"),
        (None, Some(text)) => {
            // Statistics on the CPU fp32 engine (embedrt-quant); the fallback search, if
            // any, runs here on the GPU.
            return make_table(model, text, req.format, &req.calibration_opts, None);
        }
        (None, None) => bail!(
            "--precision {} needs activation scales: give --calibration-table TABLE.json (from `embedrt calibrate`)",
            req.format.name()
        ),
    };
    crate::calibrate::read_table(path, model, req.format, &req.calibration_opts)
}

/// Measures a fallback set: (mean cosine, min cosine, the plan).
type Measure<'a> = dyn FnMut(&[String]) -> Result<(f64, f64, Plan)> + 'a;

/// Each GEMM's effect alone (only it quantized, every other GEMM fp16) is
/// measured; the most harmful ones then fall back, one at a time, until the
/// mean cosine reaches `target`.
fn sensitivity_fallback(
    layers: usize,
    start: &[String],
    target: f64,
    measure: &mut Measure,
    progress: &dyn Fn(&str),
) -> Result<Vec<String>> {
    let all: Vec<String> = GemmSite::all(layers).iter().map(|s| s.name()).collect();
    let mut effect = Vec::new();
    for (i, name) in all.iter().enumerate() {
        if start.contains(name) {
            continue;
        }
        progress(&format!("sensitivity {}/{}: {name}", i + 1, all.len()));
        let others: Vec<String> = all.iter().filter(|n| *n != name).cloned().collect();
        let (mean, _, _) = measure(&others)?;
        effect.push((1.0 - mean, name.clone()));
    }
    effect.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut fallback = start.to_vec();
    for (_, name) in effect {
        fallback.push(name.clone());
        progress(&format!("falling back {name}"));
        let (mean, _, _) = measure(&fallback)?;
        if mean >= target {
            return Ok(fallback);
        }
    }
    Ok(fallback)
}

fn open(plan: &Plan, model: &SentenceModel, ordinal: usize) -> Result<Embedder> {
    let options = embedrt_runtime::engine_options_from_env()?;
    let engine = CudaEngine::load(plan, ordinal, &options).context("loading the quantized plan")?;
    Ok(Embedder::new(model.clone(), Arc::new(engine)))
}

/// Held-out sentences (the first N of the STS file's sentences) and the STS pairs.
struct EvalSet {
    pairs: Vec<sts::StsPair>,
    held_out: Vec<String>,
}

impl EvalSet {
    fn read(path: &Path, n: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --eval {}", path.display()))?;
        let pairs = sts::parse_csv(&text).with_context(|| path.display().to_string())?;
        if pairs.len() < 2 {
            bail!("--eval {}: needs at least 2 sentence pairs", path.display());
        }
        let held_out = pairs
            .iter()
            .flat_map(|p| [p.sentence1.clone(), p.sentence2.clone()])
            .take(n.max(1))
            .collect();
        Ok(EvalSet { pairs, held_out })
    }

    fn sentences(&self) -> Vec<&str> {
        self.pairs
            .iter()
            .flat_map(|p| [p.sentence1.as_str(), p.sentence2.as_str()])
            .collect()
    }

    /// Spearman x 100 of fp32 and of `engine` on the pairs.
    fn spearman(&self, fp32: &Embedder, engine: &Embedder) -> Result<(f64, f64)> {
        let gold: Vec<f64> = self.pairs.iter().map(|p| p.score).collect();
        let score = |e: &Embedder| -> Result<f64> {
            let v = e.embed(&self.sentences(), 64, false, &|_| {})?;
            let cos: Vec<f64> = v
                .chunks_exact(2)
                .map(|p| sts::cosine(&p[0], &p[1]))
                .collect();
            Ok(100.0 * sts::spearman(&cos, &gold))
        };
        Ok((score(fp32)?, score(engine)?))
    }
}

/// fp32 embeddings of the held-out sentences on the same GPU.
struct Reference {
    fp32: Embedder,
    vectors: Vec<Vec<f32>>,
}

impl Reference {
    fn new(model: &SentenceModel, ordinal: usize, eval: &EvalSet) -> Result<Self> {
        let opts = BuildOptions {
            ordinal,
            precision: Precision::Fp32,
            profile: Profile::DEFAULT.parse()?,
            tune: false,
            engine: embedrt_runtime::engine_options_from_env()?,
            gelu: None,
        };
        let (plan, _) = build_plan(model, &opts, &|_| {})?;
        let fp32 = open(&plan, model, ordinal)?;
        let vectors = fp32.embed(&eval.held_out, 64, false, &|_| {})?;
        Ok(Reference { fp32, vectors })
    }

    /// Mean and min cosine of `engine`'s embeddings to fp32's.
    fn cosines(&self, engine: &Embedder, eval: &EvalSet) -> Result<(f64, f64)> {
        let v = engine.embed(&eval.held_out, 64, false, &|_| {})?;
        let cos: Vec<f64> = v
            .iter()
            .zip(&self.vectors)
            .map(|(a, b)| sts::cosine(a, b))
            .collect();
        let mean = cos.iter().sum::<f64>() / cos.len().max(1) as f64;
        let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
        Ok((mean, min))
    }
}
