//! Loaded models and the atomic switch between them.
//!
//! A [`Slot`] is one loaded model with its own queue and batcher thread.
//! Requests take an `Arc<Slot>` when they start and keep it to the end, so a
//! reload only changes which slot *new* requests get; in-flight ones finish
//! on the old slot. When the last request lets go of an old slot, its queue
//! closes, its batcher thread ends and the engine is freed.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use embedrt_core::{Backend, BackendInfo, Embedder, SentenceModel, TokenBatch};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::queue::{batcher, BatchLimits, Queue};

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

/// A model the caller loaded, ready to be put into a slot.
pub struct LoadedModel {
    pub embedder: Embedder,
    /// What `/info` and the OpenAI route call the model.
    pub name: String,
    /// A short hash of the weights (or plan) file: changes when the file does.
    pub fingerprint: String,
    /// Device memory the engine holds, where it can tell.
    pub memory_in_use: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>,
}

/// Loads a target; runs on a blocking thread.
pub type Loader = Arc<dyn Fn(&Target) -> Result<LoadedModel> + Send + Sync>;

/// The first 12 hex digits of the SHA-256 of a file.
pub fn fingerprint_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize())[..12].to_string())
}

/// One loaded model with its queue.
pub struct Slot {
    /// `<load counter>-<fingerprint>`, sent as `x-model-version`.
    pub version: String,
    pub counter: u64,
    pub name: String,
    pub target: Target,
    pub model: Arc<SentenceModel>,
    pub info: BackendInfo,
    pub hidden_size: usize,
    pub queue: Arc<Queue>,
    pub memory_in_use: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        // No request holds this slot any more: let the batcher drain and end.
        self.queue.close();
    }
}

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

impl Slot {
    /// Warms the model up, then starts its batcher thread. Blocking.
    pub fn start(
        loaded: LoadedModel,
        target: Target,
        counter: u64,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Slot> {
        let LoadedModel {
            embedder,
            name,
            fingerprint,
            memory_in_use,
        } = loaded;
        let Embedder { model, backend } = embedder;
        warm_up(&model, backend.as_ref())?;
        let info = backend.info();
        let max_tokens = settings
            .max_batch_tokens
            .unwrap_or(16384)
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
        let thread_queue = queue.clone();
        let thread_version = version.clone();
        let hidden_size = backend.hidden_size();
        metrics.model_loaded(1);
        std::thread::Builder::new()
            .name(format!("batcher-{counter}"))
            .spawn(move || {
                batcher(thread_queue, backend, metrics.clone());
                metrics.model_loaded(-1);
                eprintln!("embedrt serve: model version {thread_version} unloaded");
            })
            .context("starting the batcher thread")?;
        Ok(Slot {
            version,
            counter,
            name,
            target,
            model,
            info,
            hidden_size,
            queue,
            memory_in_use,
        })
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
