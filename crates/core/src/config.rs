//! The transformer's shape, read from a Hugging Face `config.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{read_json, Error, Result};

/// The encoder architectures embedrt implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Absolute position embeddings, token type 0.
    Bert,
    /// Relative position bias (bucketed), positions counted from pad+1.
    Mpnet,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "\"mpnet\", \"bert\"";

    pub fn name(self) -> &'static str {
        match self {
            Architecture::Bert => "bert",
            Architecture::Mpnet => "mpnet",
        }
    }
}

/// The encoder hyper-parameters every backend needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// BERT only: rows of the token-type table (token type 0 is used).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub pad_token_id: u32,
    /// MPNet only: buckets of the relative position bias.
    pub relative_attention_num_buckets: usize,
}

/// MPNet's relative-position bucketing uses this maximum distance (fixed in
/// the reference implementation, not a config field).
pub const MPNET_MAX_DISTANCE: usize = 128;

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    max_position_embeddings: Option<usize>,
    type_vocab_size: Option<usize>,
    layer_norm_eps: Option<f64>,
    pad_token_id: Option<u32>,
    relative_attention_num_buckets: Option<usize>,
    hidden_act: Option<String>,
    position_embedding_type: Option<String>,
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawConfig = read_json(path)?;
        let bad = |msg: String| Error::Model(format!("{}: {msg}", path.display()));
        let model_type = raw.model_type.ok_or_else(|| {
            bad(format!(
                "no \"model_type\"; supported: {}",
                Architecture::SUPPORTED
            ))
        })?;
        let architecture = match model_type.as_str() {
            "bert" => Architecture::Bert,
            "mpnet" => Architecture::Mpnet,
            other => {
                return Err(bad(format!(
                    "model_type {other:?} is not supported; supported: {}",
                    Architecture::SUPPORTED
                )))
            }
        };
        let need = |v: Option<usize>, name: &str| {
            v.filter(|&n| n > 0)
                .ok_or_else(|| bad(format!("missing or zero \"{name}\"")))
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "gelu" {
                return Err(bad(format!(
                    "hidden_act {act:?} is not supported; supported: \"gelu\" (exact erf)"
                )));
            }
        }
        if let Some(pos) = raw.position_embedding_type.as_deref() {
            if pos != "absolute" {
                return Err(bad(format!(
                    "position_embedding_type {pos:?} is not supported; supported: \"absolute\""
                )));
            }
        }
        let config = ModelConfig {
            architecture,
            vocab_size: need(raw.vocab_size, "vocab_size")?,
            hidden_size: need(raw.hidden_size, "hidden_size")?,
            num_hidden_layers: need(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: need(raw.num_attention_heads, "num_attention_heads")?,
            intermediate_size: need(raw.intermediate_size, "intermediate_size")?,
            max_position_embeddings: need(raw.max_position_embeddings, "max_position_embeddings")?,
            type_vocab_size: raw.type_vocab_size.unwrap_or(2),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(match architecture {
                Architecture::Bert => 1e-12,
                Architecture::Mpnet => 1e-5,
            }) as f32,
            pad_token_id: raw.pad_token_id.unwrap_or(match architecture {
                Architecture::Bert => 0,
                Architecture::Mpnet => 1,
            }),
            relative_attention_num_buckets: raw.relative_attention_num_buckets.unwrap_or(32),
        };
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            return Err(bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The longest sequence the position table can hold.
    pub fn max_positions(&self) -> usize {
        match self.architecture {
            Architecture::Bert => self.max_position_embeddings,
            // Positions start at pad_token_id + 1.
            Architecture::Mpnet => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id as usize + 1),
        }
    }

    /// Position id of token `i` of a sequence.
    pub fn position_id(&self, i: usize) -> usize {
        match self.architecture {
            Architecture::Bert => i,
            Architecture::Mpnet => i + self.pad_token_id as usize + 1,
        }
    }

    /// MPNet's relative-position bucket of `relative = key_pos - query_pos`
    /// (bidirectional, HF `MPNetEncoder.relative_position_bucket`). Computed
    /// in f32 like the reference so bucket edges agree.
    pub fn relative_bucket(&self, relative: i64) -> usize {
        let num_buckets = self.relative_attention_num_buckets / 2;
        let n = -relative;
        let mut bucket = if n < 0 { num_buckets } else { 0 };
        let n = n.unsigned_abs() as usize;
        let max_exact = num_buckets / 2;
        if n < max_exact {
            bucket += n;
        } else {
            let ratio = (n as f32 / max_exact as f32).ln()
                / ((MPNET_MAX_DISTANCE as f64 / max_exact as f64).ln() as f32)
                * (num_buckets - max_exact) as f32;
            let large = max_exact + ratio as usize;
            bucket += large.min(num_buckets - 1);
        }
        bucket
    }

    /// Bucket for every relative distance `d = key - query` in
    /// `-(max_len-1) ..= max_len-1`, indexed by `d + max_len - 1`. Backends
    /// look buckets up in this table instead of recomputing logarithms.
    pub fn relative_bucket_table(&self, max_len: usize) -> Vec<u32> {
        let max = max_len.max(1) as i64;
        (-(max - 1)..max)
            .map(|d| self.relative_bucket(d) as u32)
            .collect()
    }
}
