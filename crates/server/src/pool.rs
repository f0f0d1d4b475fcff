//! Several engines behind one queue: one replica of the model per device
//! (`cuda:0`, `cuda:1`, ...), each with its own worker thread.
//!
//! Dispatch is pull-based: a worker takes the next batch only when its
//! engine is idle, so every batch goes to a device with nothing to do (the
//! least-loaded one) and a slower device simply takes fewer batches. Batches
//! still form from whatever queued while the engines were busy, as with one
//! engine.
//!
//! Failover: when an engine fails a batch for a reason other than the input
//! (a CUDA error, a lost device, a panic), its replica leaves the rotation
//! for good (a reload builds a fresh pool) and the batch's inputs go back to
//! the front of the queue, where another replica picks them up. An input is
//! retried once: a batch that already took one engine down fails instead of
//! taking a second one with it. When the last replica fails, everything
//! queued fails and new requests are refused until a reload.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use embedrt_core::{Backend, Error, TokenBatch};

use crate::metrics::Metrics;
use crate::queue::{Item, Queue};

/// One engine of a loaded model and the name it is reported under.
#[derive(Clone)]
pub struct Engine {
    /// `cuda:0`, `cpu`, ...: the `device` label in `/info` and `/metrics`.
    pub label: String,
    pub backend: Arc<dyn Backend>,
}

/// One engine in a pool and what it has done.
pub struct Replica {
    pub label: String,
    pub backend: Arc<dyn Backend>,
    batches: AtomicU64,
    /// Why it left the rotation; `None` while it serves.
    failure: Mutex<Option<String>>,
}

/// What `/info` says about one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub label: String,
    pub device: String,
    pub healthy: bool,
    pub batches: u64,
    pub error: Option<String>,
}

impl Replica {
    pub fn status(&self) -> ReplicaStatus {
        let error = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ReplicaStatus {
            label: self.label.clone(),
            device: self.backend.info().device,
            healthy: error.is_none(),
            batches: self.batches.load(Ordering::Relaxed),
            error,
        }
    }
}

/// The replicas of one loaded model.
pub struct Pool {
    replicas: Vec<Replica>,
    healthy: AtomicUsize,
}

impl Pool {
    pub fn new(engines: Vec<Engine>) -> Pool {
        let replicas: Vec<Replica> = engines
            .into_iter()
            .map(|e| Replica {
                label: e.label,
                backend: e.backend,
                batches: AtomicU64::new(0),
                failure: Mutex::new(None),
            })
            .collect();
        Pool {
            healthy: AtomicUsize::new(replicas.len()),
            replicas,
        }
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Replicas still in rotation.
    pub fn healthy(&self) -> usize {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn statuses(&self) -> Vec<ReplicaStatus> {
        self.replicas.iter().map(Replica::status).collect()
    }

    /// Asks every replica still in rotation whether its engine can run
    /// (`Backend::health`: a GPU engine's sticky-fault check); a replica
    /// that cannot leaves the rotation. Returns how many still serve.
    /// Blocking (a GPU sync): call it off the async threads.
    pub fn check_health(&self) -> usize {
        for (index, replica) in self.replicas.iter().enumerate() {
            if !replica.status().healthy {
                continue;
            }
            if let Err(e) = replica.backend.health() {
                let why = format!("{}: health check: {e}", replica.label);
                let left = self.take_out(index, &why);
                eprintln!(
                    "embedrt serve: {} left the rotation ({left} engine(s) still serving): {}",
                    replica.label,
                    why.replace('\n', " ")
                );
            }
        }
        self.healthy()
    }

    /// Takes replica `index` out of rotation; returns how many are left.
    fn take_out(&self, index: usize, why: &str) -> usize {
        let mut failure = self.replicas[index]
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if failure.is_some() {
            return self.healthy();
        }
        *failure = Some(why.to_string());
        self.healthy.fetch_sub(1, Ordering::AcqRel) - 1
    }
}

/// How one batch went on one engine.
pub enum Outcome {
    /// Every row was delivered, or the input was refused (its jobs failed).
    Done,
    /// The engine failed: the batch is handed back untouched.
    EngineFailed(Vec<Item>, String),
}

/// Runs one batch on `backend` and hands every row to its request. An
/// input error fails the batch's jobs; any other failure (an engine error,
/// a wrong-sized result, a panic) hands the batch back.
pub fn run_batch(
    backend: &dyn Backend,
    label: &str,
    batch: Vec<Item>,
    metrics: &Metrics,
) -> Outcome {
    let mut tokens = TokenBatch::new();
    for item in &batch {
        tokens.push(item.ids());
    }
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| backend.embed(&tokens)));
    metrics.batch_ran(label, batch.len(), tokens.total_tokens(), start.elapsed());
    let hidden = backend.hidden_size();
    match result {
        Ok(Ok(pooled)) if pooled.len() == batch.len() * hidden => {
            for (item, row) in batch.into_iter().zip(pooled.chunks_exact(hidden)) {
                item.deliver(row.to_vec());
            }
            Outcome::Done
        }
        Ok(Err(Error::Input(msg))) => {
            let msg = format!("invalid input: {msg}");
            for item in batch {
                item.fail(&msg);
            }
            Outcome::Done
        }
        Ok(Ok(pooled)) => {
            let msg = format!(
                "{label}: the engine returned {} values for {} sequences of width {hidden}",
                pooled.len(),
                batch.len()
            );
            Outcome::EngineFailed(batch, msg)
        }
        Ok(Err(e)) => Outcome::EngineFailed(batch, format!("{label}: {e}")),
        Err(_) => Outcome::EngineFailed(batch, format!("{label}: the engine panicked")),
    }
}

/// The worker loop of replica `index`: takes batches while its engine is
/// idle, until the queue is closed and drained or the engine fails.
pub fn worker(queue: Arc<Queue>, pool: Arc<Pool>, index: usize, metrics: Arc<Metrics>) {
    let replica = &pool.replicas[index];
    // A sibling worker of the same engine may have taken it out of rotation.
    let in_rotation = || {
        replica
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    };
    while in_rotation() {
        let Some(batch) = queue.next_batch() else {
            return;
        };
        // Taken out (a failed health check) while it waited for this batch.
        if !in_rotation() {
            if pool.healthy() == 0 {
                let why =
                    "every engine of this model has failed its health check; reload the model";
                for item in batch {
                    item.fail(why);
                }
                queue.fail_all(why);
            } else {
                queue.requeue(batch);
            }
            return;
        }
        replica.batches.fetch_add(1, Ordering::Relaxed);
        let Outcome::EngineFailed(batch, why) =
            run_batch(replica.backend.as_ref(), &replica.label, batch, &metrics)
        else {
            continue;
        };
        let left = pool.take_out(index, &why);
        metrics.engine_failed(&replica.label);
        eprintln!(
            "embedrt serve: {} left the rotation ({} engine(s) still serving): {}",
            replica.label,
            left,
            why.replace('\n', " ")
        );
        if left == 0 {
            for item in batch {
                item.fail(&why);
            }
            queue.fail_all(&format!(
                "every engine of this model has failed (last: {why}); reload the model"
            ));
        } else {
            let (again, twice): (Vec<Item>, Vec<Item>) =
                batch.into_iter().partition(|i| !i.was_retried());
            for item in twice {
                item.fail(&format!("{why} (this input had already been retried once)"));
            }
            metrics.inputs_retried(again.len() as u64);
            queue.requeue(again);
        }
        return;
    }
}
