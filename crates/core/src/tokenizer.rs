//! The Hugging Face fast tokenizer (`tokenizer.json`), configured as
//! sentence-transformers uses it: special tokens added, no padding,
//! truncation to `max_seq_length`.

use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};

#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_len: usize,
}

/// One tokenized text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Whether the text was longer than `max_len` tokens and was cut.
    pub truncated: bool,
}

impl TextTokenizer {
    /// Parses `tokenizer.json` bytes; sequences are cut to `max_len` tokens.
    pub fn from_json(json: &[u8], max_len: usize) -> Result<Self> {
        let mut inner = Tokenizer::from_bytes(json)
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(TextTokenizer { inner, max_len })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            // Truncation moves the cut-off tail into the overflow.
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    /// Tokenizes many texts on the rayon pool, keeping their order.
    pub fn encode_all<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Token id to string, for `/tokenize`-style views.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
}
