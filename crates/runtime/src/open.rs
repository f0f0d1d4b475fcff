//! Opening engines from an [`EngineSpec`]: the model or plan, the device
//! (with the GPU probe and its CPU fallback), the precision and pooling
//! overrides. A model on a GPU runs the plan of [`crate::default_plan`]
//! (fp16, cached on disk, unless `--precision fp32`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use embedrt_core::{Backend, Embedder, PoolingMode, SentenceModel};
use embedrt_cpu::CpuEngine;
use embedrt_cuda::{model_from_plan, CudaEngine, EngineOptions, Plan, Precision};

use crate::device::{Device, Devices};
use crate::error::{Error, Result, ResultExt};

/// What to open and where: plain data, filled from a command line, Python
/// keyword arguments or a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSpec {
    /// A sentence-transformers model directory or a Hugging Face model id.
    pub model: Option<String>,
    /// A GPU plan file made by `embedrt build` (instead of `model`).
    pub plan: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N; [`open_engines`] also takes cuda:all and cuda:0,1,...
    pub device: String,
    /// GPU precision without a plan: fp32 or fp16 (None: fp16 on a GPU,
    /// fp32 on the CPU).
    pub precision: Option<String>,
    /// Overrides the model's pooling: mean, cls, max, mean_sqrt_len.
    pub pooling: Option<String>,
    /// How GPU engines run (slots, graphs, kernel choices, kernel cache);
    /// the CLI and the Python package fill it from the environment
    /// ([`engine_options_from_env`]).
    pub engine_options: EngineOptions,
    /// Where fp16 plans built from `model` are cached (None: built in
    /// memory every time). Callers fill it from the environment with
    /// [`crate::plan_cache::dir_from_env`].
    pub plan_cache: Option<PathBuf>,
}

impl Default for EngineSpec {
    fn default() -> Self {
        EngineSpec {
            model: None,
            plan: None,
            device: "auto".into(),
            precision: None,
            pooling: None,
            engine_options: EngineOptions::default(),
            plan_cache: None,
        }
    }
}

/// [`EngineOptions`] from the `EMBEDRT_*` variables the CLI and the Python
/// package honour (`EngineOptions::ENV_VARS`: `EMBEDRT_CUDA_SLOTS`,
/// `EMBEDRT_CUDA_GRAPHS`, `EMBEDRT_ATTENTION`, `EMBEDRT_GELU`,
/// `EMBEDRT_FFN_GEMM`, `EMBEDRT_SMALL_LINEAR`, `EMBEDRT_EARLY_LAUNCH`,
/// `EMBEDRT_KERNEL_CACHE`); a bad value is an error naming the variable. Libraries below read no environment.
pub fn engine_options_from_env() -> Result<EngineOptions> {
    let lookup = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    Ok(EngineOptions::from_lookup(lookup)?)
}

/// An opened engine and what the caller may want to tell the user (the
/// CPU fallback of `auto`); a library does not print.
pub struct Opened {
    pub embedder: Embedder,
    pub notes: Vec<String>,
}

/// One engine of a set and the label it is reported under (`cuda:0`, `cpu`).
pub struct LabeledEngine {
    pub label: String,
    pub backend: Arc<dyn Backend>,
}

/// The model and one engine per device, for servers. One device opens as
/// [`open`] does; several GPUs share one plan (read once from `plan`, or
/// built once from `model` for the first GPU), loaded once per GPU, in
/// parallel.
pub fn open_engines(
    spec: &EngineSpec,
) -> Result<(Arc<SentenceModel>, Vec<LabeledEngine>, Vec<String>)> {
    let ordinals = match Devices::parse(&spec.device)? {
        Devices::One(_) => {
            let Opened { embedder, notes } = open(spec)?;
            let Embedder { model, backend, .. } = embedder;
            let label = device_label(backend.as_ref());
            return Ok((model, vec![LabeledEngine { label, backend }], notes));
        }
        Devices::AllGpus => all_gpus()?,
        Devices::Gpus(list) => list,
    };
    let context = || format!("--device {}", spec.device);
    let (model, plan, notes) = gpu_plan(spec, ordinals[0]).with_context(context)?;
    let loaded: Vec<Result<CudaEngine>> = std::thread::scope(|scope| {
        let plan = &plan;
        let handles: Vec<_> = ordinals
            .iter()
            .map(|&n| {
                scope.spawn(move || {
                    CudaEngine::load(plan, n, &spec.engine_options)
                        .with_context(|| format!("loading the model onto cuda:{n}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::spec("a GPU loading thread panicked")))
            })
            .collect()
    });
    let mut engines = Vec::new();
    for (n, engine) in ordinals.iter().zip(loaded) {
        let backend: Arc<dyn Backend> = Arc::new(engine.with_context(context)?);
        engines.push(LabeledEngine {
            label: format!("cuda:{n}"),
            backend,
        });
    }
    Ok((Arc::new(model), engines, notes))
}

/// Every GPU the driver reports: cuda:0 up to the first ordinal the probe
/// refuses. No usable GPU at all is an error.
fn all_gpus() -> Result<Vec<usize>> {
    embedrt_cuda::probe::check_device(0).context("--device cuda:all")?;
    // A bound far above any one host, so a misbehaving probe cannot loop forever.
    Ok((0..1024)
        .take_while(|&n| embedrt_cuda::probe::check_device(n).is_ok())
        .collect())
}

/// `cuda:0` from an engine's `cuda:0 (NVIDIA H100 ...)`; `cpu` stays `cpu`.
fn device_label(backend: &dyn Backend) -> String {
    let device = backend.info().device;
    device
        .split_whitespace()
        .next()
        .unwrap_or("engine")
        .to_string()
}

/// The `pooling` and `precision` overrides, parsed.
fn overrides(spec: &EngineSpec) -> Result<(Option<PoolingMode>, Option<Precision>)> {
    let pooling = spec.pooling.as_deref().map(str::parse).transpose()?;
    let precision = spec.precision.as_deref().map(str::parse).transpose()?;
    Ok((pooling, precision))
}

fn no_model() -> Error {
    Error::spec("give --model or --plan")
}

/// The model and the plan every GPU of a set loads, and the note on it.
fn gpu_plan(spec: &EngineSpec, first: usize) -> Result<(SentenceModel, Plan, Vec<String>)> {
    let (pooling, precision) = overrides(spec)?;
    if let Some(path) = &spec.plan {
        let plan = read_plan(path, pooling, precision)?;
        let model = model_from_plan(&plan, path)?;
        return Ok((model, plan, Vec::new()));
    }
    let model_id = spec.model.as_ref().ok_or_else(no_model)?;
    let mut model = SentenceModel::load(model_id)?;
    if let Some(p) = pooling {
        model.pooling = p;
    }
    let (plan, note) = crate::default_plan::model_plan(
        &model,
        first,
        precision,
        spec.plan_cache.as_deref(),
        &spec.engine_options,
    )?;
    Ok((model, plan, note.into_iter().collect()))
}

/// One engine on one device (`auto` falls back to the CPU, with a note).
pub fn open(spec: &EngineSpec) -> Result<Opened> {
    let device = Device::parse(&spec.device)?;
    let (pooling, precision) = overrides(spec)?;
    if spec.model.is_some() && spec.plan.is_some() {
        return Err(Error::spec("give --model or --plan, not both"));
    }
    if let Some(path) = &spec.plan {
        return open_plan(path, device, pooling, precision, &spec.engine_options)
            .map(without_notes);
    }
    let model_id = spec.model.as_ref().ok_or_else(no_model)?;
    let mut model = SentenceModel::load(model_id)?;
    if let Some(p) = pooling {
        model.pooling = p;
    }
    match device {
        Device::Cpu => {
            if precision == Some(Precision::Fp16) {
                return Err(Error::spec(
                    "--precision fp16 needs a GPU; the CPU engine runs fp32",
                ));
            }
            open_cpu(model).map(without_notes)
        }
        Device::Cuda(n) => {
            open_gpu(model, n, precision, spec).with_context(|| format!("--device {}", spec.device))
        }
        Device::Auto => match embedrt_cuda::probe::check_device(0) {
            // A usable GPU: model errors are errors, not a reason to fall back.
            Ok(()) => open_gpu(model, 0, precision, spec).context("--device auto (cuda:0)"),
            Err(why) => {
                // The note only once the CPU engine is up, so a failure stays one line.
                let embedder = open_cpu(model)?;
                let why = crate::error::chain_message(&why);
                Ok(Opened {
                    embedder,
                    notes: vec![format!(
                        "--device auto: no usable GPU ({why}); running on the CPU"
                    )],
                })
            }
        },
    }
}

fn without_notes(embedder: Embedder) -> Opened {
    Opened {
        embedder,
        notes: Vec::new(),
    }
}

fn open_cpu(model: SentenceModel) -> Result<Embedder> {
    let weights = model
        .load_weights()
        .with_context(|| format!("loading the weights of {}", model.source))?;
    let engine = CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

/// A GPU engine from a model directory, on the plan [`crate::default_plan`]
/// gives (cached fp16 by default), with its note.
fn open_gpu(
    model: SentenceModel,
    ordinal: usize,
    precision: Option<Precision>,
    spec: &EngineSpec,
) -> Result<Opened> {
    let (plan, note) = crate::default_plan::model_plan(
        &model,
        ordinal,
        precision,
        spec.plan_cache.as_deref(),
        &spec.engine_options,
    )?;
    let engine = CudaEngine::load(&plan, ordinal, &spec.engine_options)?;
    Ok(Opened {
        embedder: Embedder::new(model, Arc::new(engine)),
        notes: note.into_iter().collect(),
    })
}

fn open_plan(
    path: &Path,
    device: Device,
    pooling: Option<PoolingMode>,
    precision: Option<Precision>,
    options: &EngineOptions,
) -> Result<Embedder> {
    let ordinal = match device {
        Device::Cpu => {
            return Err(Error::spec(
                "--plan runs on a GPU; for the CPU give --model instead",
            ))
        }
        Device::Auto => 0,
        Device::Cuda(n) => n,
    };
    let plan = read_plan(path, pooling, precision)?;
    let model = model_from_plan(&plan, path)?;
    let engine = CudaEngine::load(&plan, ordinal, options)
        .with_context(|| format!("loading plan {}", path.display()))?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

/// A plan file, with the precision checked and the pooling overridden.
fn read_plan(
    path: &Path,
    pooling: Option<PoolingMode>,
    precision: Option<Precision>,
) -> Result<Plan> {
    let mut plan = Plan::read(path)?;
    if let Some(p) = precision.filter(|&p| p != plan.header.precision) {
        return Err(Error::spec(format!(
            "--precision {}: the plan holds {} weights; build another plan for {}",
            p.name(),
            plan.header.precision.name(),
            p.name()
        )));
    }
    if let Some(p) = pooling {
        plan.header.pooling = p;
    }
    Ok(plan)
}
