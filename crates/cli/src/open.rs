//! Opening a model on a device: the options `embed`, `eval` and `bench` share.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use embedrt_core::{Backend, Embedder, PoolingMode, SentenceModel};
use embedrt_cpu::CpuEngine;
use embedrt_cuda::{build_plan, model_from_plan, BuildOptions, CudaEngine, Plan, Precision};

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// A sentence-transformers model directory or a Hugging Face model id.
    #[arg(long, required_unless_present = "plan")]
    pub model: Option<String>,
    /// A GPU plan file made by `embedrt build` (instead of --model).
    #[arg(long, conflicts_with = "model")]
    pub plan: Option<PathBuf>,
    /// Where to run: auto (GPU if usable, else CPU), cpu, cuda or cuda:N;
    /// `serve` also takes several GPUs: cuda:all or cuda:0,1,...
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision without a plan: fp32 or fp16 on the GPU; int8 or fp8 run
    /// the CPU fake-quant reference (--device cpu, with --calibration-table).
    #[arg(long)]
    pub precision: Option<String>,
    /// Override the model's pooling: mean, cls, max, mean_sqrt_len.
    #[arg(long)]
    pub pooling: Option<String>,
    #[command(flatten)]
    pub quant: crate::open_quant::QuantArgs,
}

/// Where the user asked to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Auto,
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Device::Auto,
            "cpu" => Device::Cpu,
            "cuda" => Device::Cuda(0),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Device::Cuda(n),
                _ if s == "cuda:all" || (s.starts_with("cuda:") && s.contains(',')) => {
                    bail!("--device {s}: several GPUs are for `embedrt serve`; give one device here (cuda:N)")
                }
                _ => bail!("unknown device {s:?}; use auto, cpu, cuda or cuda:N"),
            },
        })
    }
}

/// Where `serve` runs: one device, or one engine per GPU of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Devices {
    One(Device),
    /// `cuda:all`: every GPU the driver reports.
    AllGpus,
    /// `cuda:0,1,...`: these GPUs, in this order.
    Gpus(Vec<usize>),
}

impl Devices {
    pub fn parse(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("cuda:") else {
            return Ok(Devices::One(Device::parse(s)?));
        };
        if rest == "all" {
            return Ok(Devices::AllGpus);
        }
        if !rest.contains(',') {
            return Ok(Devices::One(Device::parse(s)?));
        }
        let mut ordinals = Vec::new();
        for part in rest.split(',') {
            let Ok(n) = part.trim().parse::<usize>() else {
                bail!("--device {s}: {part:?} is not a GPU number; use cuda:all or cuda:0,1,...");
            };
            if ordinals.contains(&n) {
                bail!("--device {s}: cuda:{n} is listed twice");
            }
            ordinals.push(n);
        }
        Ok(Devices::Gpus(ordinals))
    }
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

/// The model and one engine per device, for `serve`. One device opens as
/// `open` does; several GPUs share one plan (read once from --plan, or
/// built once from --model for the first GPU), loaded once per GPU, in
/// parallel.
pub fn open_engines(args: &ModelArgs) -> Result<(Arc<SentenceModel>, Vec<embedrt_server::Engine>)> {
    let ordinals = match Devices::parse(&args.device)? {
        Devices::One(_) => {
            let Embedder { model, backend } = open(args)?;
            let label = device_label(backend.as_ref());
            return Ok((model, vec![embedrt_server::Engine { label, backend }]));
        }
        Devices::AllGpus => all_gpus()?,
        Devices::Gpus(list) => list,
    };
    let context = || format!("--device {}", args.device);
    let (model, plan) = gpu_plan(args, ordinals[0]).with_context(context)?;
    let loaded: Vec<Result<CudaEngine>> = std::thread::scope(|scope| {
        let plan = &plan;
        let handles: Vec<_> = ordinals
            .iter()
            .map(|&n| {
                scope.spawn(move || {
                    CudaEngine::load(plan, n)
                        .with_context(|| format!("loading the model onto cuda:{n}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a GPU loading thread panicked")))
            })
            .collect()
    });
    let mut engines = Vec::new();
    for (n, engine) in ordinals.iter().zip(loaded) {
        let backend: Arc<dyn Backend> = Arc::new(engine.with_context(context)?);
        engines.push(embedrt_server::Engine {
            label: format!("cuda:{n}"),
            backend,
        });
    }
    Ok((Arc::new(model), engines))
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

/// The `--pooling` and `--precision` overrides, parsed.
fn overrides(args: &ModelArgs) -> Result<(Option<PoolingMode>, Option<Precision>)> {
    let pooling = args.pooling.as_deref().map(str::parse).transpose()?;
    let precision = args.precision.as_deref().map(str::parse).transpose()?;
    Ok((pooling, precision))
}

/// The model and the plan every GPU of a set loads.
fn gpu_plan(args: &ModelArgs, first: usize) -> Result<(SentenceModel, Plan)> {
    let (pooling, precision) = overrides(args)?;
    if let Some(path) = &args.plan {
        let plan = read_plan(path, pooling, precision)?;
        let model = model_from_plan(&plan, path)?;
        return Ok((model, plan));
    }
    let Some(spec) = &args.model else {
        bail!("give --model or --plan");
    };
    let mut model = SentenceModel::load(spec)?;
    if let Some(p) = pooling {
        model.pooling = p;
    }
    let opts = BuildOptions {
        ordinal: first,
        precision: precision.unwrap_or(Precision::Fp32),
        profile: embedrt_cuda::Profile::DEFAULT.parse()?,
        tune: false,
    };
    let (plan, _) = build_plan(&model, &opts, &|_| {})?;
    Ok((model, plan))
}

pub fn open(args: &ModelArgs) -> Result<Embedder> {
    if let Some(embedder) = crate::open_quant::open_if_quantized(args)? {
        return Ok(embedder);
    }
    let device = Device::parse(&args.device)?;
    let (pooling, precision) = overrides(args)?;
    if let Some(path) = &args.plan {
        return open_plan(path, device, pooling, precision);
    }
    let Some(spec) = &args.model else {
        bail!("give --model or --plan");
    };
    let mut model = SentenceModel::load(spec)?;
    if let Some(p) = pooling {
        model.pooling = p;
    }
    match device {
        Device::Cpu => {
            if precision == Some(Precision::Fp16) {
                bail!("--precision fp16 needs a GPU; the CPU engine runs fp32");
            }
            open_cpu(model)
        }
        Device::Cuda(n) => open_gpu(model, n, precision.unwrap_or(Precision::Fp32))
            .with_context(|| format!("--device {}", args.device)),
        Device::Auto => match embedrt_cuda::probe::check_device(0) {
            // A usable GPU: model errors are errors, not a reason to fall back.
            Ok(()) => open_gpu(model, 0, precision.unwrap_or(Precision::Fp32))
                .context("--device auto (cuda:0)"),
            Err(why) => {
                // Say so only once the CPU engine is up, so a failure stays one line.
                let embedder = open_cpu(model)?;
                eprintln!("note: --device auto: no usable GPU ({why:#}); running on the CPU");
                Ok(embedder)
            }
        },
    }
}

fn open_cpu(model: SentenceModel) -> Result<Embedder> {
    let weights = model
        .load_weights()
        .with_context(|| format!("loading the weights of {}", model.source))?;
    let engine = CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

/// A GPU engine from a model directory: an in-memory plan with the default
/// profile (cuBLASLt's first choice per shape instead of timed algorithms).
fn open_gpu(model: SentenceModel, ordinal: usize, precision: Precision) -> Result<Embedder> {
    let opts = BuildOptions {
        ordinal,
        precision,
        profile: embedrt_cuda::Profile::DEFAULT.parse()?,
        tune: false,
    };
    let (plan, _) = build_plan(&model, &opts, &|_| {})?;
    let engine = CudaEngine::load(&plan, ordinal)?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

fn open_plan(
    path: &std::path::Path,
    device: Device,
    pooling: Option<PoolingMode>,
    precision: Option<Precision>,
) -> Result<Embedder> {
    let ordinal = match device {
        Device::Cpu => bail!("--plan runs on a GPU; for the CPU give --model instead"),
        Device::Auto => 0,
        Device::Cuda(n) => n,
    };
    let plan = read_plan(path, pooling, precision)?;
    let model = model_from_plan(&plan, path)?;
    let engine = CudaEngine::load(&plan, ordinal)
        .with_context(|| format!("loading plan {}", path.display()))?;
    Ok(Embedder::new(model, Arc::new(engine)))
}

/// A plan file, with the precision checked and the pooling overridden.
fn read_plan(
    path: &std::path::Path,
    pooling: Option<PoolingMode>,
    precision: Option<Precision>,
) -> Result<Plan> {
    let mut plan = Plan::read(path)?;
    if let Some(p) = precision.filter(|&p| p != plan.header.precision) {
        bail!(
            "--precision {}: the plan holds {} weights; build another plan for {}",
            p.name(),
            plan.header.precision.name(),
            p.name()
        );
    }
    if let Some(p) = pooling {
        plan.header.pooling = p;
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_sets_parse_and_bad_ones_are_refused() {
        assert_eq!(Devices::parse("cuda:all").unwrap(), Devices::AllGpus);
        assert_eq!(
            Devices::parse("cuda:0,1").unwrap(),
            Devices::Gpus(vec![0, 1])
        );
        assert_eq!(
            Devices::parse("cuda:3, 1").unwrap(),
            Devices::Gpus(vec![3, 1])
        );
        assert_eq!(
            Devices::parse("cuda:2").unwrap(),
            Devices::One(Device::Cuda(2))
        );
        assert_eq!(Devices::parse("cpu").unwrap(), Devices::One(Device::Cpu));
        assert_eq!(Devices::parse("auto").unwrap(), Devices::One(Device::Auto));
        for bad in [
            "cuda:0,0",
            "cuda:0,",
            "cuda:0,x",
            "cuda:",
            "cpu,cuda:0",
            "cuda:al",
        ] {
            assert!(Devices::parse(bad).is_err(), "{bad} was accepted");
        }
        // One-device commands refuse a set with a pointer to `serve`.
        let err = Device::parse("cuda:all").unwrap_err().to_string();
        assert!(err.contains("embedrt serve"), "{err}");
        assert!(Device::parse("cuda:0,1").is_err());
    }
}
