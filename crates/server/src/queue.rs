//! The batching queue: requests put their tokenized inputs in; the worker
//! threads of a loaded model's engines ([`crate::pool`]) take batches out
//! under a token budget and a sequence cap, run their blocking engine and
//! hand each row back to the request it came from.
//!
//! Inputs of one request are queued together and in order, so they may span
//! batches; results are placed by index, so they come back in order whatever
//! batches they rode in. A request whose client went away is marked
//! cancelled and its queued inputs are dropped before they reach the engine.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// How large a batch the batcher forms and how long it waits to fill one.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Most tokens (all sequences together) in one backend call.
    pub max_tokens: usize,
    /// Most sequences in one backend call.
    pub max_sequences: usize,
    /// How long a non-full batch waits for more work before it runs anyway.
    pub max_wait: Duration,
}

/// What a request gets back: one pooled, not normalized vector per input,
/// in input order, or the engine's error.
pub type JobResult = Result<Vec<Vec<f32>>, String>;

/// The shared state of one request's inputs while they are queued or running.
struct Job {
    rows: Mutex<Vec<Vec<f32>>>,
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<JobResult>>>,
    cancelled: AtomicBool,
}

impl Job {
    fn deliver(&self, index: usize, row: Vec<f32>) {
        let finished = {
            let mut rows = lock(&self.rows);
            rows[index] = row;
            self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
        };
        if finished {
            let rows = std::mem::take(&mut *lock(&self.rows));
            if let Some(tx) = lock(&self.done).take() {
                let _ = tx.send(Ok(rows));
            }
        }
    }

    fn fail(&self, message: &str) {
        // The rest of this job's inputs are now useless: drop them too.
        self.cancelled.store(true, Ordering::Release);
        if let Some(tx) = lock(&self.done).take() {
            let _ = tx.send(Err(message.to_string()));
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// One queued input sequence.
pub struct Item {
    ids: Vec<u32>,
    index: usize,
    job: Arc<Job>,
    /// Handed back once already by an engine that failed.
    retried: bool,
}

impl Item {
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Hands this input's pooled vector to its request.
    pub fn deliver(self, row: Vec<f32>) {
        self.job.deliver(self.index, row);
    }

    /// Fails this input's whole request with `message`.
    pub fn fail(self, message: &str) {
        self.job.fail(message);
    }

    pub fn was_retried(&self) -> bool {
        self.retried
    }
}

/// A request's claim on its results. Dropping it before the results came
/// (the client disconnected, the handler was cancelled) drops the
/// request's remaining inputs from the queue.
pub struct Ticket {
    job: Arc<Job>,
    rx: Option<oneshot::Receiver<JobResult>>,
}

impl Ticket {
    pub async fn wait(mut self) -> JobResult {
        // While this awaits, `self` still holds the receiver: dropping the
        // future cancels the job.
        let result = match self.rx.as_mut() {
            Some(rx) => rx.await.unwrap_or_else(|_| Err(UNLOADED.into())),
            None => Err("ticket already used".into()),
        };
        self.rx = None;
        result
    }

    /// For callers outside an async runtime (tests, tools).
    pub fn wait_blocking(mut self) -> JobResult {
        match self.rx.take() {
            Some(rx) => rx.blocking_recv().unwrap_or_else(|_| Err(UNLOADED.into())),
            None => Err("ticket already used".into()),
        }
    }
}

const UNLOADED: &str = "the model was unloaded before the batch ran";

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.job.cancelled.store(true, Ordering::Release);
        }
    }
}

struct State {
    items: VecDeque<Item>,
    tokens: usize,
    closed: bool,
    /// Set when no engine is left to serve: new work fails with this.
    failed: Option<String>,
}

pub struct Queue {
    state: Mutex<State>,
    wake: Condvar,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind,
    // never a broken invariant worth taking the server down for.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Queue {
    pub fn new(limits: BatchLimits, metrics: Arc<Metrics>) -> Self {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                tokens: 0,
                closed: false,
                failed: None,
            }),
            wake: Condvar::new(),
            limits: BatchLimits {
                max_tokens: limits.max_tokens.max(1),
                max_sequences: limits.max_sequences.max(1),
                max_wait: limits.max_wait,
            },
            metrics,
        }
    }

    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Queues one request's sequences (each non-empty and no longer than the
    /// engine takes). An empty request completes at once.
    pub fn submit(&self, seqs: Vec<Vec<u32>>) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let n = seqs.len();
        let job = Arc::new(Job {
            rows: Mutex::new(vec![Vec::new(); n]),
            remaining: AtomicUsize::new(n),
            done: Mutex::new(Some(tx)),
            cancelled: AtomicBool::new(false),
        });
        if n == 0 {
            if let Some(tx) = lock(&job.done).take() {
                let _ = tx.send(Ok(Vec::new()));
            }
        } else {
            let mut st = lock(&self.state);
            if let Some(why) = st.failed.clone() {
                drop(st);
                job.fail(&why);
            } else if st.closed {
                drop(st);
                job.fail("the model is being unloaded");
            } else {
                for (index, ids) in seqs.into_iter().enumerate() {
                    st.tokens += ids.len();
                    st.items.push_back(Item {
                        ids,
                        index,
                        job: job.clone(),
                        retried: false,
                    });
                }
                self.metrics.queue_changed(n as i64);
                drop(st);
                self.wake.notify_one();
            }
        }
        Ticket { job, rx: Some(rx) }
    }

    /// Stops the batcher once the queue is empty.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_all();
    }

    /// Puts the inputs of a batch whose engine failed back at the front,
    /// in their order, for another engine to take.
    pub fn requeue(&self, items: Vec<Item>) {
        if items.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        if let Some(why) = st.failed.clone() {
            drop(st);
            items.into_iter().for_each(|i| i.fail(&why));
            return;
        }
        let n = items.len();
        for mut item in items.into_iter().rev() {
            item.retried = true;
            st.tokens += item.ids.len();
            st.items.push_front(item);
        }
        self.metrics.queue_changed(n as i64);
        drop(st);
        self.wake.notify_all();
    }

    /// No engine is left: fails everything queued and all later work.
    pub fn fail_all(&self, message: &str) {
        let mut st = lock(&self.state);
        st.failed = Some(message.to_string());
        let items: Vec<Item> = st.items.drain(..).collect();
        st.tokens = 0;
        self.metrics.queue_changed(-(items.len() as i64));
        drop(st);
        self.wake.notify_all();
        for item in items {
            item.job.fail(message);
        }
    }

    fn purge_cancelled(&self, st: &mut State) {
        let before = st.items.len();
        let mut tokens = st.tokens;
        st.items.retain(|item| {
            let keep = !item.job.is_cancelled();
            if !keep {
                tokens -= item.ids.len();
            }
            keep
        });
        st.tokens = tokens;
        let dropped = before - st.items.len();
        if dropped > 0 {
            self.metrics.queue_changed(-(dropped as i64));
            self.metrics.dropped_inputs(dropped as u64);
        }
    }

    fn is_full(&self, st: &State) -> bool {
        st.tokens >= self.limits.max_tokens || st.items.len() >= self.limits.max_sequences
    }

    /// The next batch, in arrival order: blocks until there is work, waits up
    /// to `max_wait` for a full batch, then takes items while they fit the
    /// budget (the first always goes, so nothing can starve). `None` once the
    /// queue is closed and drained.
    pub fn next_batch(&self) -> Option<Vec<Item>> {
        let mut st = lock(&self.state);
        loop {
            self.purge_cancelled(&mut st);
            if st.items.is_empty() {
                if st.closed || st.failed.is_some() {
                    return None;
                }
                st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let deadline = Instant::now() + self.limits.max_wait;
            while !self.is_full(&st) && !st.closed {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = self
                    .wake
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            self.purge_cancelled(&mut st);
            if st.items.is_empty() {
                continue;
            }
            let mut batch = Vec::new();
            let mut tokens = 0;
            while let Some(front) = st.items.front() {
                let len = front.ids.len();
                let fits = batch.is_empty()
                    || (batch.len() < self.limits.max_sequences
                        && tokens + len <= self.limits.max_tokens);
                if !fits {
                    break;
                }
                tokens += len;
                if let Some(item) = st.items.pop_front() {
                    batch.push(item);
                }
            }
            st.tokens -= tokens;
            self.metrics.queue_changed(-(batch.len() as i64));
            let more = !st.items.is_empty();
            drop(st);
            if more {
                // Another idle engine may take the rest.
                self.wake.notify_one();
            }
            return Some(batch);
        }
    }
}
