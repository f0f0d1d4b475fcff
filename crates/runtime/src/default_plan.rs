//! The plan a GPU runs when the user gave a model, not a plan.
//!
//! - No `--precision` (or fp16): fp16 with the serving profile
//!   ([`Profile::SERVING`], the default token budget), GEMM algorithms
//!   timed as `embedrt build` does, written to the plan cache and read from
//!   it on the next start. Without a cache directory the plan is built in
//!   memory with cuBLASLt's first choice per shape (timing is only worth
//!   paying once).
//! - `--precision fp32`: the exact path, as before: built in memory, not
//!   cached (converting fp32 weights costs little; the cache is for the
//!   default).

use std::path::Path;

use embedrt_core::SentenceModel;
use embedrt_cuda::{
    build_plan, gpu_identity, BuildOptions, EngineOptions, Plan, Precision, Profile,
};

use crate::error::Result;
use crate::plan_cache::{self, KeyParts};

/// The plan for `model` on GPU `ordinal`, with the pooling and
/// normalization of `model` (so overrides apply to a cached plan too), and
/// the note saying where it came from (none for fp32).
pub(crate) fn model_plan(
    model: &SentenceModel,
    ordinal: usize,
    precision: Option<Precision>,
    cache: Option<&Path>,
    engine: &EngineOptions,
) -> Result<(Plan, Option<String>)> {
    let precision = precision.unwrap_or(Precision::Fp16);
    let (mut plan, note) = if precision == Precision::Fp32 {
        let profile = Profile::DEFAULT.parse()?;
        (
            build(model, ordinal, precision, profile, false, engine)?,
            None,
        )
    } else {
        let (plan, note) = cached_plan(model, ordinal, precision, cache, engine)?;
        (plan, Some(note))
    };
    plan.header.pooling = model.pooling;
    plan.header.normalize = model.normalize;
    Ok((plan, note))
}

fn build(
    model: &SentenceModel,
    ordinal: usize,
    precision: Precision,
    profile: Profile,
    tune: bool,
    engine: &EngineOptions,
) -> Result<Plan> {
    let opts = BuildOptions {
        ordinal,
        precision,
        profile,
        tune,
        engine: engine.clone(),
        gelu: None,
    };
    // The engine the tuning ran on is dropped (its memory freed) before the
    // caller loads the tuned plan: it runs cuBLASLt's heuristic choices.
    let (plan, _tuned_on) = build_plan(model, &opts, &|_| {})?;
    Ok(plan)
}

fn cached_plan(
    model: &SentenceModel,
    ordinal: usize,
    precision: Precision,
    cache: Option<&Path>,
    engine: &EngineOptions,
) -> Result<(Plan, String)> {
    let profile: Profile = Profile::SERVING.parse()?;
    let gpu = gpu_identity(ordinal)?;
    let uncached = |why: &str| -> Result<(Plan, String)> {
        let plan = build(model, ordinal, precision, profile, false, engine)?;
        Ok((plan, plan_cache::uncached_note(precision, &gpu.target, why)))
    };
    let Some(dir) = cache else {
        return uncached("the plan cache is off");
    };
    let digest = match plan_cache::model_digest(model) {
        Ok(d) => d,
        // The build names a missing or unreadable weights file better.
        Err(e) => return uncached(&format!("cannot hash the model: {}", e.message())),
    };
    let key = plan_cache::cache_key(&KeyParts {
        model_digest: &digest,
        gpu: &gpu,
        precision,
        profile: &profile,
        tuned: true,
    });
    let path = plan_cache::plan_path(dir, &key, precision, &gpu.target);
    let (plan, outcome) = plan_cache::load_or_build(
        &path,
        |plan| plan_cache::check_cached(plan, model, precision, &profile, &gpu),
        || build(model, ordinal, precision, profile, true, engine),
    )?;
    let note = plan_cache::note(&outcome, &path, precision, &gpu.target);
    Ok((plan, note))
}
