//! The queue and batcher against the real CPU engine on a tiny fixture:
//! ordering, the token budget, requests spanning batches, dropped work,
//! engine failures.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use embedrt_core::{Backend, SentenceModel, TokenBatch};
use embedrt_cpu::CpuEngine;
use embedrt_server::pool::{run_batch, worker, Engine, Pool};
use embedrt_server::queue::{BatchLimits, Queue};
use embedrt_server::Metrics;

fn fixture() -> (SentenceModel, Arc<dyn Backend>) {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert-mean-norm");
    let model = SentenceModel::load(dir.to_str().unwrap()).unwrap();
    let weights = model.load_weights().unwrap();
    let engine =
        CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length).unwrap();
    (model, Arc::new(engine))
}

/// Sequences of different lengths, from real text.
fn sequences(model: &SentenceModel, n: usize) -> Vec<Vec<u32>> {
    let words = [
        "alpha", "beta", "the", "model", "runs", "fast", "on", "cpu", "and", "gpu",
    ];
    (0..n)
        .map(|i| {
            let text: Vec<&str> = (0..(i % 7) + 1)
                .map(|j| words[(i + j) % words.len()])
                .collect();
            model.tokenizer.encode(&text.join(" ")).unwrap().ids
        })
        .collect()
}

/// Each sequence alone through the engine: what any batching must reproduce.
fn alone(backend: &dyn Backend, seqs: &[Vec<u32>]) -> Vec<Vec<f32>> {
    seqs.iter()
        .map(|s| backend.embed(&TokenBatch::from_sequences(&[s])).unwrap())
        .collect()
}

fn assert_close(got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "row {i}");
        let diff = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "row {i} differs by {diff}");
    }
}

fn limits(max_tokens: usize, max_sequences: usize) -> BatchLimits {
    BatchLimits {
        max_tokens,
        max_sequences,
        max_wait: Duration::ZERO,
    }
}

fn spawn_batcher(
    queue: &Arc<Queue>,
    backend: &Arc<dyn Backend>,
    metrics: &Arc<Metrics>,
) -> std::thread::JoinHandle<()> {
    let pool = Arc::new(Pool::new(vec![Engine {
        label: "cpu".into(),
        backend: backend.clone(),
    }]));
    let (q, m) = (queue.clone(), metrics.clone());
    std::thread::spawn(move || worker(q, pool, 0, m))
}

#[test]
fn requests_spanning_batches_come_back_in_order_and_match_the_engine() {
    let (model, backend) = fixture();
    let metrics = Arc::new(Metrics::new());
    // Three sequences per batch: every request below spans several batches.
    let queue = Arc::new(Queue::new(limits(10_000, 3), metrics.clone()));
    let a = sequences(&model, 10);
    let b: Vec<Vec<u32>> = sequences(&model, 17).into_iter().rev().collect();
    let ta = queue.submit(a.clone());
    let tb = queue.submit(b.clone());
    let worker = spawn_batcher(&queue, &backend, &metrics);
    assert_close(&ta.wait_blocking().unwrap(), &alone(backend.as_ref(), &a));
    assert_close(&tb.wait_blocking().unwrap(), &alone(backend.as_ref(), &b));
    queue.close();
    worker.join().unwrap();
    let text = metrics.render(None, None, &[]);
    // 27 sequences at 3 per batch: 9 engine calls.
    assert!(text.contains("embedrt_batch_size_count 9"), "{text}");
    assert!(text.contains("embedrt_queue_depth 0"), "{text}");
}

#[test]
fn batches_keep_the_token_budget_and_arrival_order() {
    let (model, _) = fixture();
    let metrics = Arc::new(Metrics::new());
    let budget = 20;
    let queue = Queue::new(limits(budget, 100), metrics);
    let seqs = sequences(&model, 12);
    let _t1 = queue.submit(seqs[..5].to_vec());
    let _t2 = queue.submit(seqs[5..].to_vec());
    queue.close();
    let mut seen = Vec::new();
    while let Some(batch) = queue.next_batch() {
        let tokens: usize = batch.iter().map(|i| i.ids().len()).sum();
        assert!(!batch.is_empty());
        assert!(
            tokens <= budget || batch.len() == 1,
            "{} sequences with {tokens} tokens exceed the budget of {budget}",
            batch.len()
        );
        seen.extend(batch.iter().map(|i| i.ids().to_vec()));
    }
    // First come, first served, nothing lost or duplicated.
    assert_eq!(seen, seqs);
}

#[test]
fn a_sequence_longer_than_the_budget_still_runs_alone() {
    let (model, _) = fixture();
    let queue = Queue::new(limits(3, 100), Arc::new(Metrics::new()));
    let seqs = sequences(&model, 3);
    assert!(seqs.iter().all(|s| s.len() > 3));
    let _t = queue.submit(seqs.clone());
    queue.close();
    let mut sizes = Vec::new();
    while let Some(batch) = queue.next_batch() {
        sizes.push(batch.len());
    }
    assert_eq!(sizes, vec![1, 1, 1]);
}

#[test]
fn work_of_a_dropped_request_never_reaches_the_engine() {
    let (model, backend) = fixture();
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(limits(10_000, 4), metrics.clone()));
    let gone = sequences(&model, 6);
    let kept: Vec<Vec<u32>> = sequences(&model, 9)[6..].to_vec();
    let ticket_gone = queue.submit(gone);
    let ticket_kept = queue.submit(kept.clone());
    drop(ticket_gone); // the client disconnected
    let batch = queue.next_batch().unwrap();
    let ids: Vec<Vec<u32>> = batch.iter().map(|i| i.ids().to_vec()).collect();
    assert_eq!(ids, kept);
    let _ = run_batch(backend.as_ref(), "cpu", batch, &metrics);
    assert_close(
        &ticket_kept.wait_blocking().unwrap(),
        &alone(backend.as_ref(), &kept),
    );
    let text = metrics.render(None, None, &[]);
    assert!(text.contains("embedrt_dropped_inputs_total 6"), "{text}");
    assert!(text.contains("embedrt_queue_depth 0"), "{text}");
}

#[test]
fn a_full_batch_does_not_wait_for_max_wait() {
    let (model, _) = fixture();
    let queue = Arc::new(Queue::new(
        BatchLimits {
            max_tokens: 10_000,
            max_sequences: 2,
            // Far longer than the test may take: only a full batch ends the wait.
            max_wait: Duration::from_secs(600),
        },
        Arc::new(Metrics::new()),
    ));
    let seqs = sequences(&model, 2);
    let _t1 = queue.submit(vec![seqs[0].clone()]);
    let q = queue.clone();
    let second = seqs[1].clone();
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        q.submit(vec![second])
    });
    // Waits for the second request, which completes the batch.
    let batch = queue.next_batch().unwrap();
    assert_eq!(batch.len(), 2);
    let _t2 = late.join().unwrap();
}

#[test]
fn an_engine_failure_fails_its_batch_only() {
    let (model, backend) = fixture();
    let metrics = Arc::new(Metrics::new());
    let queue = Arc::new(Queue::new(limits(10_000, 1), metrics.clone()));
    let good = sequences(&model, 2);
    // A token id outside the vocabulary: the engine refuses this batch.
    let bad = vec![vec![1u32, 1_000_000, 2]];
    let t_bad = queue.submit(bad);
    let t_good = queue.submit(good.clone());
    let worker = spawn_batcher(&queue, &backend, &metrics);
    let err = t_bad.wait_blocking().unwrap_err();
    assert!(err.contains("vocabulary"), "{err}");
    assert_close(
        &t_good.wait_blocking().unwrap(),
        &alone(backend.as_ref(), &good),
    );
    queue.close();
    worker.join().unwrap();
}

#[test]
fn an_empty_request_completes_at_once_and_a_closed_queue_drains() {
    let queue = Queue::new(limits(100, 10), Arc::new(Metrics::new()));
    assert_eq!(queue.submit(Vec::new()).wait_blocking().unwrap().len(), 0);
    queue.close();
    assert!(queue.next_batch().is_none());
    let refused = queue.submit(vec![vec![1, 2]]).wait_blocking();
    assert!(refused.is_err());
}
