//! Loaded models and the atomic switch between them.
//!
//! A [`Slot`] is one loaded model with its own queue and a pool of engines
//! (one per device, each with its worker thread). Requests take an `Arc<Slot>` when they start and keep it to the end, so a
//! reload only changes which slot *new* requests get; in-flight ones finish
//! on the old slot. When the last request lets go of an old slot, its queue
//! closes, its worker threads end and the engines are freed.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use embedrt_core::{Backend, BackendInfo, Embedder, SentenceModel, TokenBatch};
use serde::Deserialize;

use crate::metrics::Metrics;
use crate::pool::{worker, Engine, Pool};
use crate::queue::{BatchLimits, Queue};

/// What to load: a model (directory or hub id) or a plan file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    Model(String),
    Plan(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Model(m) => write!(f, "model {m}"),
            Target::Plan(p) => write!(f, "plan {p}"),
        }
    }
}

/// A model the caller loaded, ready to be put into a slot: the model (its
/// tokenizer, config, pooling) and one engine per device, every engine
/// holding the same weights.
pub struct LoadedModel {
    pub model: Arc<SentenceModel>,
    pub engines: Vec<Engine>,
    /// What `/info` and the OpenAI route call the model.
    pub name: String,
    /// A short hash of the weights (or plan) file: changes when the file does.
    pub fingerprint: String,
    /// Device memory the engine holds, where it can tell.
    pub memory_in_use: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>,
}

impl LoadedModel {
    /// One engine: what `open` gives for a single device.
    pub fn single(embedder: Embedder, name: String, fingerprint: String) -> LoadedModel {
        let Embedder { model, backend, .. } = embedder;
        LoadedModel {
            model,
            engines: vec![Engine {
                // `cuda:0` of `cuda:0 (NVIDIA ...)`; `cpu` stays `cpu`.
                label: backend
                    .info()
                    .device
                    .split_whitespace()
                    .next()
                    .unwrap_or("engine")
                    .to_string(),
                backend,
            }],
            name,
            fingerprint,
            memory_in_use: None,
        }
    }
}

/// Loads a target; runs on a blocking thread.
pub type Loader = Arc<dyn Fn(&Target) -> Result<LoadedModel> + Send + Sync>;

/// The first 12 hex digits of the SHA-256 of a file.
pub fn fingerprint_file(path: &Path) -> Result<String> {
    let hex = embedrt_core::fsutil::sha256_file(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(hex[..12].to_string())
}

/// One loaded model with its queue.
pub struct Slot {
    /// `<load counter>-<fingerprint>`, sent as `x-model-version`.
    pub version: String,
    pub counter: u64,
    pub name: String,
    pub target: Target,
    pub model: Arc<SentenceModel>,
    /// The limits every engine of the pool takes; `device` lists them all.
    pub info: BackendInfo,
    pub hidden_size: usize,
    pub queue: Arc<Queue>,
    pub pool: Arc<Pool>,
    /// Held by the slot and every worker: the model counts as loaded until
    /// all of them are gone.
    _unloaded: Arc<Unloaded>,
    pub memory_in_use: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // No request holds this slot any more: let the workers drain and end.
        self.queue.close();
    }
}

/// Tokens per engine call when `--max-batch-tokens` is not given (capped by
/// the engine): the GPU plan's default budget (embedrt-cuda's
/// `DEFAULT_MAX_BATCH_TOKENS`), so a default plan's batches run full.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 32768;

/// Server-wide batching settings; `None` takes the engine's own limit.
#[derive(Clone, Copy, Debug)]
pub struct BatchSettings {
    pub max_batch_tokens: Option<usize>,
    pub max_batch_requests: Option<usize>,
    pub max_wait: std::time::Duration,
}

/// Runs one short sequence through the engine, so one-time costs (kernel
/// selection, allocations) are paid before the model takes traffic.
fn warm_up(model: &SentenceModel, backend: &dyn Backend) -> Result<()> {
    let ids = model
        .tokenizer
        .encode("warm up")
        .context("tokenizing the warm-up sentence")?
        .ids;
    backend
        .embed(&TokenBatch::from_sequences(&[ids]))
        .context("warm-up batch")?;
    Ok(())
}

/// Says when the last of a model's worker threads has ended.
struct Unloaded {
    metrics: Arc<Metrics>,
    version: String,
}

impl Drop for Unloaded {
    fn drop(&mut self) {
        self.metrics.model_loaded(-1);
        eprintln!("embedrt serve: model version {} unloaded", self.version);
    }
}

/// The limits all engines take, and every engine's device.
fn common_info(engines: &[Engine]) -> Result<BackendInfo> {
    let infos: Vec<BackendInfo> = engines.iter().map(|e| e.backend.info()).collect();
    let Some(first) = infos.first() else {
        anyhow::bail!("the loader returned no engine");
    };
    let hidden = engines[0].backend.hidden_size();
    if let Some(e) = engines.iter().find(|e| e.backend.hidden_size() != hidden) {
        anyhow::bail!(
            "{}: hidden size {} differs from {}'s {hidden}",
            e.label,
            e.backend.hidden_size(),
            engines[0].label
        );
    }
    let mut labels: Vec<&str> = engines.iter().map(|e| e.label.as_str()).collect();
    labels.sort_unstable();
    if labels.windows(2).any(|w| w[0] == w[1]) {
        anyhow::bail!("two engines have the same device label");
    }
    Ok(BackendInfo {
        device: if infos.len() == 1 {
            first.device.clone()
        } else {
            engines
                .iter()
                .map(|e| e.label.as_str())
                .collect::<Vec<_>>()
                .join(",")
        },
        precision: first.precision.clone(),
        max_batch_size: infos.iter().map(|i| i.max_batch_size).min().unwrap_or(1),
        max_batch_tokens: infos.iter().map(|i| i.max_batch_tokens).min().unwrap_or(1),
        max_seq_len: infos.iter().map(|i| i.max_seq_len).min().unwrap_or(1),
    })
}

impl Slot {
    /// Warms every engine up, then starts one worker thread per engine.
    /// Blocking.
    pub fn start(
        loaded: LoadedModel,
        target: Target,
        counter: u64,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Slot> {
        let LoadedModel {
            model,
            engines,
            name,
            fingerprint,
            memory_in_use,
        } = loaded;
        let info = common_info(&engines)?;
        for engine in &engines {
            warm_up(&model, engine.backend.as_ref())
                .with_context(|| format!("warming up {}", engine.label))?;
        }
        let max_tokens = settings
            .max_batch_tokens
            .unwrap_or(DEFAULT_MAX_BATCH_TOKENS)
            .min(info.max_batch_tokens)
            .max(info.max_seq_len.min(info.max_batch_tokens));
        let max_sequences = settings
            .max_batch_requests
            .unwrap_or(info.max_batch_size)
            .clamp(1, info.max_batch_size.max(1));
        let queue = Arc::new(Queue::new(
            BatchLimits {
                max_tokens,
                max_sequences,
                max_wait: settings.max_wait,
            },
            metrics.clone(),
        ));
        let version = format!("{counter}-{fingerprint}");
        let hidden_size = engines[0].backend.hidden_size();
        let pool = Arc::new(Pool::new(engines));
        metrics.model_loaded(1);
        let unloaded = Arc::new(Unloaded {
            metrics: metrics.clone(),
            version: version.clone(),
        });
        // One worker per execution slot of each engine (`Backend::concurrency`):
        // an engine with two slots computes one batch while the next is staged.
        for (index, replica) in pool.replicas().iter().enumerate() {
            for lane in 0..replica.backend.concurrency().max(1) {
                let (q, p, m, u) = (
                    queue.clone(),
                    pool.clone(),
                    metrics.clone(),
                    unloaded.clone(),
                );
                let spawned = std::thread::Builder::new()
                    .name(format!("engine-{counter}-{}-{lane}", replica.label))
                    .spawn(move || {
                        worker(q, p, index, m);
                        drop(u);
                    });
                if let Err(e) = spawned {
                    // Workers already started end once the queue closes.
                    queue.close();
                    return Err(e).context("starting an engine worker thread");
                }
            }
        }
        Ok(Slot {
            version,
            counter,
            name,
            target,
            model,
            info,
            hidden_size,
            queue,
            pool,
            _unloaded: unloaded,
            memory_in_use,
        })
    }

    /// At least one engine still serves.
    pub fn is_serving(&self) -> bool {
        self.pool.healthy() > 0
    }
}

/// The slot new requests go to; `None` until the first model is ready.
#[derive(Default)]
pub struct Current {
    slot: RwLock<Option<Arc<Slot>>>,
}

impl Current {
    pub fn get(&self) -> Option<Arc<Slot>> {
        self.slot.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Switches atomically; returns the previous slot (dropped by the caller,
    /// which frees it once its in-flight requests are done).
    pub fn replace(&self, slot: Arc<Slot>) -> Option<Arc<Slot>> {
        self.slot
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(slot)
    }
}
