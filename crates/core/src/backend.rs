//! The interface every engine (CPU, CUDA) implements, and the unpadded
//! batch it consumes.

use crate::error::{Error, Result};

/// Sequences packed end to end: sequence `i` is
/// `ids[offsets[i]..offsets[i + 1]]`. No padding anywhere, so engines spend
/// work on real tokens only and one sequence's result cannot depend on its
/// neighbours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    pub offsets: Vec<usize>,
}

impl TokenBatch {
    pub fn new() -> Self {
        TokenBatch {
            ids: Vec::new(),
            offsets: vec![0],
        }
    }

    pub fn from_sequences<S: AsRef<[u32]>>(seqs: &[S]) -> Self {
        let mut b = TokenBatch::new();
        for s in seqs {
            b.push(s.as_ref());
        }
        b
    }

    pub fn push(&mut self, seq: &[u32]) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.ids.extend_from_slice(seq);
        self.offsets.push(self.ids.len());
    }

    pub fn clear(&mut self) {
        self.ids.clear();
        self.offsets.clear();
        self.offsets.push(0);
    }

    /// Number of sequences.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn seq(&self, i: usize) -> &[u32] {
        &self.ids[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn seq_len(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    pub fn max_seq_len(&self) -> usize {
        (0..self.len()).map(|i| self.seq_len(i)).max().unwrap_or(0)
    }

    /// Checks what every engine relies on: monotone offsets, no empty
    /// sequence, every id inside the vocabulary, every length within `max_len`.
    pub fn validate(&self, vocab_size: usize, max_len: usize) -> Result<()> {
        if self.offsets.first() != Some(&0) || self.offsets.last() != Some(&self.ids.len()) {
            return Err(Error::Input("batch offsets do not span the ids".into()));
        }
        for i in 0..self.len() {
            if self.offsets[i + 1] <= self.offsets[i] {
                return Err(Error::Input(format!("sequence {i} of the batch is empty")));
            }
            if self.seq_len(i) > max_len {
                return Err(Error::Input(format!(
                    "sequence {i} has {} tokens, more than the {max_len} this engine takes",
                    self.seq_len(i)
                )));
            }
        }
        if let Some(&bad) = self.ids.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab_size}"
            )));
        }
        Ok(())
    }
}

/// What an engine is and how large a batch it takes in one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// e.g. "cpu" or "cuda:0 (NVIDIA H100 80GB HBM3)".
    pub device: String,
    /// "fp32", "fp16", ...
    pub precision: String,
    /// Most sequences in one `embed` call.
    pub max_batch_size: usize,
    /// Most tokens (all sequences together) in one `embed` call.
    pub max_batch_tokens: usize,
    /// Longest sequence one `embed` call takes.
    pub max_seq_len: usize,
}

/// An engine that turns token ids into pooled sentence embeddings.
pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;

    /// Width of one embedding.
    fn hidden_size(&self) -> usize;

    /// Pooled, not yet normalized embeddings, `[batch.len(), hidden]`
    /// row-major. A failure fails this batch only; the engine stays usable.
    fn embed(&self, batch: &TokenBatch) -> Result<Vec<f32>>;

    /// Like `embed`, each row L2-normalized. Engines that can fuse the
    /// normalization into their pooling step override this.
    fn embed_normalized(&self, batch: &TokenBatch) -> Result<Vec<f32>> {
        let mut v = self.embed(batch)?;
        let hidden = self.hidden_size().max(1);
        v.chunks_exact_mut(hidden)
            .for_each(crate::pooling::normalize);
        Ok(v)
    }

    /// How many `embed` calls can usefully run at the same time (a GPU
    /// engine with several execution slots overlaps one batch's copies and
    /// host work with another's compute). The `Embedder` drives that many
    /// batches at once from its own threads.
    fn concurrency(&self) -> usize {
        1
    }

    /// Device memory the engine holds (weights and preallocated buffers),
    /// for engines on a GPU; `None` for host engines.
    fn device_memory_bytes(&self) -> Option<u64> {
        None
    }

    /// Can this engine still run a batch? Cheap (no batch runs); a GPU
    /// engine checks its context for a sticky fault. Host engines are
    /// always healthy.
    fn health(&self) -> Result<()> {
        Ok(())
    }
}
