//! Text in, vectors out: tokenization, length-sorted batching within the
//! engine's limits, the engine, normalization, original order restored.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use crate::backend::{Backend, TokenBatch};
use crate::error::Result;
use crate::model::SentenceModel;
use crate::tokenizer::Encoded;

/// With several engine slots a job too large for one engine call is cut
/// into at least two batches per slot (so one batch's copy-out and
/// normalization overlap the next one's compute), but never into batches
/// smaller than this many tokens; a job that fits in one call is one call.
/// Measured on the H200 (docs/PERFORMANCE.md run 31): 256 x 128 tokens (the
/// 32k-token budget's one call) ran 1.5-4.4% faster (fp16) as one call than
/// cut in two; the 3,000-sentence job (49k tokens) ran 3-4% faster cut into
/// 16,384-token batches than into 32,768-token ones; 8,192 cost 3-4% (run 12).
pub const MIN_PIPELINED_BATCH_TOKENS: usize = 16384;

pub struct Embedder {
    pub model: Arc<SentenceModel>,
    pub backend: Arc<dyn Backend>,
    /// The smallest batch, in tokens, that a job is cut into for pipelining
    /// across slots ([`MIN_PIPELINED_BATCH_TOKENS`] unless set); `usize::MAX`
    /// never cuts a job below the engine's own limits.
    pub min_pipelined_batch_tokens: usize,
}

impl Embedder {
    pub fn new(model: SentenceModel, backend: Arc<dyn Backend>) -> Self {
        Embedder {
            model: Arc::new(model),
            backend,
            min_pipelined_batch_tokens: MIN_PIPELINED_BATCH_TOKENS,
        }
    }

    pub fn tokenize<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        self.model.tokenizer.encode_all(texts)
    }

    /// Embeds texts; `progress` is told how many sequences each finished batch held.
    pub fn embed<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
        batch_size: usize,
        normalize_output: bool,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let encoded = self.tokenize(texts)?;
        let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
        self.embed_ids(&ids, batch_size, normalize_output, progress)
    }

    /// How [`Embedder::embed_ids`] cuts a job into engine calls: sequence
    /// indices per batch, longest first, each batch within the engine's
    /// limits and, with several slots, small enough that the batches overlap.
    pub fn plan_batches(&self, seqs: &[&[u32]], batch_size: usize) -> Vec<Vec<usize>> {
        let info = self.backend.info();
        let max_seqs = batch_size.clamp(1, info.max_batch_size.max(1));
        let slots = self.backend.concurrency().max(1);
        let len_of = |i: usize| seqs[i].len().min(info.max_seq_len);
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let total: usize = order.iter().map(|&i| len_of(i)).sum();
        let one_call = total <= info.max_batch_tokens && seqs.len() <= max_seqs;
        let split_tokens = if slots > 1 && !one_call {
            total
                .div_ceil(2 * slots)
                .max(self.min_pipelined_batch_tokens)
        } else {
            usize::MAX
        };
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let mut members = Vec::with_capacity(max_seqs.min(order.len() - start));
            let mut tokens = 0;
            for &i in &order[start..] {
                let len = len_of(i);
                let full = members.len() == max_seqs
                    || (!members.is_empty()
                        && (tokens + len > info.max_batch_tokens || tokens >= split_tokens));
                if full {
                    break;
                }
                tokens += len;
                members.push(i);
            }
            start += members.len();
            batches.push(members);
        }
        batches
    }

    /// Embeds already tokenized sequences. Longest first, so each batch
    /// holds sequences of similar length; results come back in input order.
    /// When the backend takes several batches at once, that many worker
    /// threads drive it while this thread normalizes and places results.
    pub fn embed_ids(
        &self,
        seqs: &[&[u32]],
        batch_size: usize,
        normalize_output: bool,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let info = self.backend.info();
        let hidden = self.backend.hidden_size();
        let slots = self.backend.concurrency().max(1);
        let len_of = |i: usize| seqs[i].len().min(info.max_seq_len);
        let batches = self.plan_batches(seqs, batch_size);
        let make_batch = |members: &[usize]| {
            let mut b = TokenBatch::new();
            for &i in members {
                b.push(&seqs[i][..len_of(i)]);
            }
            b
        };
        let run = |b: &TokenBatch| {
            if normalize_output {
                self.backend.embed_normalized(b)
            } else {
                self.backend.embed(b)
            }
        };
        let mut out = vec![Vec::new(); seqs.len()];
        let mut place = |members: &[usize], pooled: &[f32]| {
            for (row, &i) in pooled.chunks_exact(hidden).zip(members) {
                out[i] = row.to_vec();
            }
            progress(members.len());
        };
        let workers = slots.min(batches.len());
        if workers <= 1 {
            for members in &batches {
                let pooled = run(&make_batch(members))?;
                place(members, &pooled);
            }
            return Ok(out);
        }
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let mut first_err = None;
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::channel();
            for _ in 0..workers {
                let tx = tx.clone();
                let (next, failed, batches, make_batch, run) =
                    (&next, &failed, &batches, &make_batch, &run);
                s.spawn(move || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= batches.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = run(&make_batch(&batches[k]));
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    if tx.send((k, r)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for (k, r) in rx {
                match r {
                    Ok(pooled) => place(&batches[k], &pooled),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        });
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendInfo;
    use crate::error::Error;

    /// A deterministic engine: each sequence's vector is (length, sum of
    /// ids, first id); the batch it came in must not matter.
    struct Summing {
        slots: usize,
        max_seqs: usize,
        max_tokens: usize,
        fail_on_id: Option<u32>,
    }

    impl Backend for Summing {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                device: "test".into(),
                precision: "fp32".into(),
                max_batch_size: self.max_seqs,
                max_batch_tokens: self.max_tokens,
                max_seq_len: 50,
            }
        }
        fn hidden_size(&self) -> usize {
            3
        }
        fn embed(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
            let mut v = Vec::new();
            for i in 0..batch.len() {
                let s = batch.seq(i);
                if self.fail_on_id.is_some_and(|f| s.contains(&f)) {
                    return Err(Error::Backend("bad id".into()));
                }
                v.extend([s.len() as f32, s.iter().sum::<u32>() as f32, s[0] as f32]);
            }
            Ok(v)
        }
        fn concurrency(&self) -> usize {
            self.slots
        }
    }

    fn seqs() -> Vec<Vec<u32>> {
        (0..700u32)
            .map(|i| (0..1 + (i * 37) % 80).map(|j| i * 3 + j).collect())
            .collect()
    }

    fn run(slots: usize, batch: usize, fail: Option<u32>) -> Result<Vec<Vec<f32>>> {
        run_with(slots, batch, fail, false)
    }

    fn run_with(
        slots: usize,
        batch: usize,
        fail: Option<u32>,
        normalize: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let model = SentenceModel::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tiny-bert-max")
                .display()
                .to_string(),
        )?;
        let backend = Summing {
            slots,
            max_seqs: 64,
            max_tokens: 2000,
            fail_on_id: fail,
        };
        let e = Embedder::new(model, Arc::new(backend));
        let s = seqs();
        let refs: Vec<&[u32]> = s.iter().map(|v| v.as_slice()).collect();
        let done = std::cell::Cell::new(0);
        let r = e.embed_ids(&refs, batch, normalize, &|n| done.set(done.get() + n))?;
        assert_eq!(
            done.get(),
            s.len(),
            "progress must count every sequence once"
        );
        Ok(r)
    }

    #[test]
    fn several_slots_give_the_same_results_in_input_order() {
        let s = seqs();
        for batch in [1, 7, 64] {
            let one = run(1, batch, None).unwrap();
            for slots in [2, 3] {
                assert_eq!(run(slots, batch, None).unwrap(), one);
            }
            for (v, q) in one.iter().zip(&s) {
                let q = &q[..q.len().min(50)];
                assert_eq!(v[0], q.len() as f32);
                assert_eq!(v[2], q[0] as f32);
            }
        }
    }

    #[test]
    fn normalized_jobs_are_the_raw_vectors_divided_by_their_norm() {
        for slots in [1, 2] {
            let raw = run_with(slots, 16, None, false).unwrap();
            let unit = run_with(slots, 16, None, true).unwrap();
            for (r, u) in raw.iter().zip(&unit) {
                let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                for (a, b) in r.iter().zip(u) {
                    assert!((a / norm - b).abs() <= 1e-6, "{a} / {norm} vs {b}");
                }
            }
        }
    }

    #[test]
    fn a_failing_batch_fails_the_job_with_several_slots() {
        let bad = seqs()[300][0];
        for slots in [1, 2] {
            match run(slots, 16, Some(bad)) {
                Err(e) => assert!(e.to_string().contains("bad id"), "{e}"),
                Ok(_) => panic!("a failing batch must fail the job"),
            }
        }
    }

    #[test]
    fn the_pipelining_threshold_sets_how_finely_a_job_is_cut() {
        let model = SentenceModel::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/fixtures/tiny-bert-max")
                .display()
                .to_string(),
        )
        .unwrap();
        let backend = Summing {
            slots: 2,
            max_seqs: 1000,
            max_tokens: 1_000_000,
            fail_on_id: None,
        };
        let mut e = Embedder::new(model, Arc::new(backend));
        let s = seqs();
        let refs: Vec<&[u32]> = s.iter().map(|v| v.as_slice()).collect();
        let tokens = |b: &[usize]| b.iter().map(|&i| s[i].len().min(50)).sum::<usize>();
        let total: usize = (0..s.len()).map(|i| s[i].len().min(50)).sum();
        // A job that fits in one engine call is one call, whatever the threshold.
        e.min_pipelined_batch_tokens = 10;
        assert_eq!(e.plan_batches(&refs, 1000).len(), 1);
        // Below the job's quarter, the quarter rules: four batches for two slots.
        let backend = Summing {
            slots: 2,
            max_seqs: 1000,
            max_tokens: total - 1,
            fail_on_id: None,
        };
        e.backend = Arc::new(backend);
        let cut = e.plan_batches(&refs, 1000);
        assert_eq!(
            cut.len(),
            4,
            "{:?}",
            cut.iter().map(|b| tokens(b)).collect::<Vec<_>>()
        );
        assert!(cut[..3].iter().all(|b| tokens(b) >= total.div_ceil(4)));
        // A threshold above the job: batches as large as the engine takes (two).
        e.min_pipelined_batch_tokens = usize::MAX;
        let whole = e.plan_batches(&refs, 1000);
        assert_eq!(whole.len(), 2);
        assert!(tokens(&whole[0]) > total / 2);
        let by_size = e.plan_batches(&refs, 64);
        assert!(by_size[..by_size.len() - 1].iter().all(|b| b.len() == 64));
        assert_eq!(
            e.embed_ids(&refs, 64, false, &|_| {}).unwrap().len(),
            s.len()
        );
    }
}
