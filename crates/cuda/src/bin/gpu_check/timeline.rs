//! When each engine call of a job ran, seen from the host: a backend that
//! passes every call through and notes its thread, size, start and end.
//! Shows where a pipelined job loses time against its calls run alone
//! (gaps between calls, calls slowed by a neighbour).

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Instant;

use embedrt_core::{Backend, BackendInfo, Result, TokenBatch};
use serde_json::json;

struct Call {
    thread: ThreadId,
    seqs: usize,
    tokens: usize,
    start: f64,
    end: f64,
}

pub struct Recording {
    inner: Arc<dyn Backend>,
    origin: Mutex<Instant>,
    calls: Mutex<Vec<Call>>,
}

impl Recording {
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        Recording {
            inner,
            origin: Mutex::new(Instant::now()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Forgets earlier calls; times count from now.
    pub fn restart(&self) {
        *self.origin.lock().expect("timeline lock") = Instant::now();
        self.calls.lock().expect("timeline lock").clear();
    }

    fn since_origin_ms(&self) -> f64 {
        self.origin
            .lock()
            .expect("timeline lock")
            .elapsed()
            .as_secs_f64()
            * 1e3
    }

    fn timed(&self, batch: &TokenBatch, f: impl FnOnce() -> Result<Vec<f32>>) -> Result<Vec<f32>> {
        let start = self.since_origin_ms();
        let r = f();
        let end = self.since_origin_ms();
        self.calls.lock().expect("timeline lock").push(Call {
            thread: std::thread::current().id(),
            seqs: batch.len(),
            tokens: batch.total_tokens(),
            start,
            end,
        });
        r
    }

    /// The calls so far, in start order: `[worker, seqs, tokens, start_ms, end_ms]`,
    /// workers numbered by first appearance.
    pub fn calls_json(&self) -> serde_json::Value {
        let mut calls = self.calls.lock().expect("timeline lock");
        calls.sort_by(|a, b| a.start.total_cmp(&b.start));
        let mut threads: Vec<ThreadId> = Vec::new();
        let rows: Vec<_> = calls
            .iter()
            .map(|c| {
                let worker = match threads.iter().position(|t| *t == c.thread) {
                    Some(i) => i,
                    None => {
                        threads.push(c.thread);
                        threads.len() - 1
                    }
                };
                json!([worker, c.seqs, c.tokens, c.start, c.end])
            })
            .collect();
        json!(rows)
    }
}

impl Backend for Recording {
    fn info(&self) -> BackendInfo {
        self.inner.info()
    }
    fn hidden_size(&self) -> usize {
        self.inner.hidden_size()
    }
    fn embed(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.timed(batch, || self.inner.embed(batch))
    }
    fn embed_normalized(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        self.timed(batch, || self.inner.embed_normalized(batch))
    }
    fn concurrency(&self) -> usize {
        self.inner.concurrency()
    }
}
