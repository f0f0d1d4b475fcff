//! Text in, vectors out: tokenization, length-sorted batching within the
//! engine's limits, the engine, normalization, original order restored.

use std::sync::Arc;

use crate::backend::{Backend, TokenBatch};
use crate::error::Result;
use crate::model::SentenceModel;
use crate::pooling::normalize;
use crate::tokenizer::Encoded;

pub struct Embedder {
    pub model: Arc<SentenceModel>,
    pub backend: Arc<dyn Backend>,
}

impl Embedder {
    pub fn new(model: SentenceModel, backend: Arc<dyn Backend>) -> Self {
        Embedder {
            model: Arc::new(model),
            backend,
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

    /// Embeds already tokenized sequences. Longest first, so each batch
    /// holds sequences of similar length; results come back in input order.
    pub fn embed_ids(
        &self,
        seqs: &[&[u32]],
        batch_size: usize,
        normalize_output: bool,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Vec<f32>>> {
        let info = self.backend.info();
        let hidden = self.backend.hidden_size();
        let max_seqs = batch_size.clamp(1, info.max_batch_size.max(1));
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out = vec![Vec::new(); seqs.len()];
        let mut batch = TokenBatch::new();
        let mut members = Vec::with_capacity(max_seqs);
        let mut start = 0;
        while start < order.len() {
            batch.clear();
            members.clear();
            for &i in &order[start..] {
                let len = seqs[i].len().min(info.max_seq_len);
                let full = members.len() == max_seqs
                    || (!members.is_empty() && batch.total_tokens() + len > info.max_batch_tokens);
                if full {
                    break;
                }
                batch.push(&seqs[i][..len]);
                members.push(i);
            }
            let pooled = self.backend.embed(&batch)?;
            for (row, &i) in pooled.chunks_exact(hidden).zip(&members) {
                let mut v = row.to_vec();
                if normalize_output {
                    normalize(&mut v);
                }
                out[i] = v;
            }
            start += members.len();
            progress(members.len());
        }
        Ok(out)
    }
}
