//! W1 and W2 of the GPU benchmark (docs/perf/gpu.md) through the server's
//! own queue and engine pool, on one device or several, so the speed-up of
//! `embedrt serve --device cuda:0,1` over `cuda:0` can be measured without
//! the HTTP client becoming the bottleneck.
//!
//!   pool_bench MODEL_DIR STSB_DEV_CSV DEVICES [fp16|fp32] [failover]
//!
//! DEVICES: `cuda:0`, `cuda:0,1`, ... (one engine per GPU, the plan built
//! once and loaded on each) or `cpu`, `cpu,cpu` (CPU engines: a check that
//! the bench runs, not a measurement). `failover`: the first engine sits
//! behind a fault injector that fails every batch from its 5th on; W1 must
//! still complete with every job answered and that engine out of rotation. W1 = jobs of 256 × 128 random ids,
//! 40 of them queued at once; W2 = the STS-B dev sentences (3,000) sorted
//! by length as one job, in batches of at most 256 sentences so that the
//! job spreads over the engines. Prints one JSON line per workload.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use embedrt_core::{sts, Backend, BackendInfo, SentenceModel, TokenBatch};
use embedrt_cpu::CpuEngine;
use embedrt_cuda::engine::random_batch;
use embedrt_cuda::{build_plan, BuildOptions, CudaEngine, EngineOptions, Precision};
use embedrt_server::pool::{worker, Engine, Pool};
use embedrt_server::queue::{BatchLimits, Queue};
use embedrt_server::Metrics;
use serde_json::json;

fn engines(model: &SentenceModel, devices: &str, precision: Precision) -> Result<Vec<Engine>> {
    if devices.split(',').all(|d| d == "cpu") {
        return devices
            .split(',')
            .enumerate()
            .map(|(i, _)| {
                let weights = model.load_weights()?;
                let engine =
                    CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)?;
                Ok(Engine {
                    label: format!("cpu:{i}"),
                    backend: Arc::new(engine) as Arc<dyn Backend>,
                })
            })
            .collect();
    }
    let Some(list) = devices.strip_prefix("cuda:") else {
        bail!("devices {devices:?}: use cpu or cuda:0,1,...");
    };
    let ordinals: Vec<usize> = list
        .split(',')
        .map(|n| n.trim().parse().context("a GPU number"))
        .collect::<Result<_>>()?;
    // The profile of the single-GPU benchmark (embedrt-gpu-check bench).
    let profile = format!("1x8:256x128:1024x{}", model.max_seq_length.min(512));
    let opts = BuildOptions {
        ordinal: ordinals[0],
        precision,
        profile: profile.parse()?,
        tune: false,
        engine: EngineOptions::default(),
        gelu: None,
    };
    let (plan, _) = build_plan(model, &opts, &|_| {})?;
    let plan = &plan;
    let loaded: Vec<Result<CudaEngine>> = std::thread::scope(|s| {
        let handles: Vec<_> = ordinals
            .iter()
            .map(|&n| s.spawn(move || Ok(CudaEngine::load(plan, n, &EngineOptions::default())?)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a loading thread panicked"))
            })
            .collect()
    });
    ordinals
        .iter()
        .zip(loaded)
        .map(|(n, e)| {
            Ok(Engine {
                label: format!("cuda:{n}"),
                backend: Arc::new(e?) as Arc<dyn Backend>,
            })
        })
        .collect()
}

/// A pool with its workers over a fresh queue.
fn start(engines: &[Engine], limits: BatchLimits) -> (Arc<Queue>, Arc<Pool>) {
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(limits, metrics.clone()));
    let pool = Arc::new(Pool::new(engines.to_vec()));
    for i in 0..engines.len() {
        let (q, p, m) = (queue.clone(), pool.clone(), metrics.clone());
        std::thread::spawn(move || worker(q, p, i, m));
    }
    (queue, pool)
}

/// Submits `jobs` at once and waits for all; returns the seconds taken.
fn run_jobs(queue: &Queue, jobs: &[Vec<Vec<u32>>]) -> Result<f64> {
    let t = Instant::now();
    let tickets: Vec<_> = jobs.iter().map(|j| queue.submit(j.clone())).collect();
    for ticket in tickets {
        ticket.wait_blocking().map_err(anyhow::Error::msg)?;
    }
    Ok(t.elapsed().as_secs_f64())
}

/// A fault injector for the `failover` mode: a real engine that fails
/// every batch from its `fail_from`-th call on, as a lost GPU does.
struct FaultInjector {
    inner: Arc<dyn Backend>,
    calls: AtomicUsize,
    fail_from: usize,
}

impl Backend for FaultInjector {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }
    fn embed(&self, batch: &TokenBatch) -> embedrt_core::Result<Vec<f32>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_from {
            return Err(embedrt_core::Error::Backend(
                "fault injector: simulated lost device".into(),
            ));
        }
        self.inner.embed(batch)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, csv, devices, rest @ ..] = args.as_slice() else {
        bail!("usage: pool_bench MODEL_DIR STSB_DEV_CSV DEVICES [fp16|fp32] [failover]");
    };
    let precision: Precision = rest.first().map_or("fp16", String::as_str).parse()?;
    let failover = rest.get(1).is_some_and(|m| m == "failover");
    let model = SentenceModel::load(model_dir)?;
    let mut engines = engines(&model, devices, precision)?;
    if failover {
        if engines.len() < 2 {
            bail!("failover needs two engines or more");
        }
        engines[0].backend = Arc::new(FaultInjector {
            inner: engines[0].backend.clone(),
            calls: AtomicUsize::new(0),
            fail_from: 5,
        });
    }
    let max_tokens = engines
        .iter()
        .map(|e| e.backend.info().max_batch_tokens)
        .min()
        .unwrap_or(1);
    let labels: Vec<&str> = engines.iter().map(|e| e.label.as_str()).collect();

    let w1: Vec<Vec<Vec<u32>>> = (0..40)
        .map(|j| {
            let len = 128.min(model.max_seq_length);
            let b: TokenBatch = random_batch(&model.config, 256, len, 11 + j);
            (0..b.len()).map(|i| b.seq(i).to_vec()).collect()
        })
        .collect();
    let pairs = sts::parse_csv(&std::fs::read_to_string(csv)?)?;
    let texts: Vec<&str> = pairs
        .iter()
        .flat_map(|p| [p.sentence1.as_str(), p.sentence2.as_str()])
        .collect();
    let mut w2: Vec<Vec<u32>> = model
        .tokenizer
        .encode_all(&texts)?
        .into_iter()
        .map(|e| e.ids)
        .collect();
    w2.sort_by_key(Vec::len);

    let workloads = if failover {
        vec![("W1 failover", w1, 256, 1)]
    } else {
        vec![("W1", w1, 256, 5), ("W2", vec![w2], 256, 7)]
    };
    for (name, jobs, per_batch, reps) in workloads {
        let (queue, pool) = start(
            &engines,
            BatchLimits {
                max_tokens,
                max_sequences: per_batch,
                max_wait: Duration::ZERO,
            },
        );
        run_jobs(&queue, &jobs[..1])?; // warm-up: kernels, graphs, allocations
        let times: Vec<f64> = (0..reps)
            .map(|_| run_jobs(&queue, &jobs))
            .collect::<Result<_>>()?;
        let sequences: usize = jobs.iter().map(Vec::len).sum();
        let t = median(times);
        queue.close();
        println!(
            "{}",
            json!({
                "workload": name,
                "devices": labels,
                "precision": precision.name(),
                "sequences_per_pass": sequences,
                "median_seconds": t,
                "sequences_per_second": sequences as f64 / t,
                "batches_per_device": pool.statuses().iter().map(|s| json!([s.label, s.batches])).collect::<Vec<_>>(),
                "healthy": pool.healthy(),
                "failed": pool.statuses().iter().filter_map(|s| s.error.clone()).collect::<Vec<_>>(),
            })
        );
    }
    Ok(())
}
