//! Loading `model.safetensors` into a typed, shape-checked set of encoder
//! weights. Backends consume [`TransformerWeights`] and never deal with
//! tensor names; exporters use [`Tensor::name`] (the Hugging Face parameter
//! name without the `bert.` / `mpnet.` prefix).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};

/// A named fp32 tensor, row-major.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// `y = x W^T + b` with `weight` in PyTorch layout `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn out_features(&self) -> usize {
        self.weight.shape[0]
    }
    pub fn in_features(&self) -> usize {
        self.weight.shape[1]
    }
}

#[derive(Clone, Debug)]
pub struct LayerNormWeights {
    pub gamma: Tensor,
    pub beta: Tensor,
}

#[derive(Clone, Debug)]
pub struct EmbeddingWeights {
    pub word: Tensor,
    pub position: Tensor,
    /// BERT only.
    pub token_type: Option<Tensor>,
    pub norm: LayerNormWeights,
}

/// One encoder layer (post-LayerNorm, as in BERT and MPNet).
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: LayerNormWeights,
    pub ffn_in: Linear,
    pub ffn_out: Linear,
    pub ffn_norm: LayerNormWeights,
}

#[derive(Clone, Debug)]
pub struct TransformerWeights {
    pub embeddings: EmbeddingWeights,
    pub layers: Vec<LayerWeights>,
    /// MPNet only: `[num_buckets, num_heads]`.
    pub relative_attention_bias: Option<Tensor>,
}

impl TransformerWeights {
    /// Every tensor, in a stable order (embeddings, layers, bias table).
    pub fn tensors(&self) -> Vec<&Tensor> {
        let e = &self.embeddings;
        let mut out = vec![&e.word, &e.position];
        out.extend(e.token_type.as_ref());
        out.extend([&e.norm.gamma, &e.norm.beta]);
        for l in &self.layers {
            for lin in [&l.query, &l.key, &l.value, &l.attn_out] {
                out.extend([&lin.weight, &lin.bias]);
            }
            out.extend([&l.attn_norm.gamma, &l.attn_norm.beta]);
            for lin in [&l.ffn_in, &l.ffn_out] {
                out.extend([&lin.weight, &lin.bias]);
            }
            out.extend([&l.ffn_norm.gamma, &l.ffn_norm.beta]);
        }
        out.extend(self.relative_attention_bias.as_ref());
        out
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors().iter().map(|t| t.numel()).sum()
    }

    /// Loads and shape-checks `model.safetensors` against `config`.
    pub fn from_safetensors(path: &Path, config: &ModelConfig) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and dropped before we return; a
        // concurrent truncation of the file is the only hazard, as with any mmap.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            message: format!("not a valid safetensors file ({e})"),
        })?;
        let source = TensorSource::new(path, &st, config.architecture);
        build(&source, config)
    }
}

/// Looks tensors up by canonical name, accepting the `bert.` / `mpnet.`
/// prefix that `*ForMaskedLM` checkpoints carry.
struct TensorSource<'a> {
    path: PathBuf,
    st: &'a SafeTensors<'a>,
    names: HashMap<String, String>,
}

impl<'a> TensorSource<'a> {
    fn new(path: &Path, st: &'a SafeTensors<'a>, arch: Architecture) -> Self {
        let prefix = format!("{}.", arch.name());
        let names = st
            .names()
            .into_iter()
            .map(|n| {
                let canonical = n.strip_prefix(&prefix).unwrap_or(n).to_string();
                (canonical, n.to_string())
            })
            .collect();
        TensorSource {
            path: path.to_path_buf(),
            st,
            names,
        }
    }

    fn err(&self, message: String) -> Error {
        Error::Weights {
            path: self.path.clone(),
            message,
        }
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let stored = self.names.get(name).ok_or_else(|| {
            self.err(format!("missing tensor {name:?}; is this checkpoint of the architecture config.json names?"))
        })?;
        let view = self
            .st
            .tensor(stored)
            .map_err(|e| self.err(format!("tensor {name:?}: {e}")))?;
        if view.shape() != shape {
            return Err(self.err(format!(
                "tensor {name:?} has shape {:?}, config.json implies {:?}",
                view.shape(),
                shape
            )));
        }
        let bytes = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(self.err(format!(
                    "tensor {name:?} has dtype {other:?}; supported: F32, F16, BF16"
                )))
            }
        };
        Ok(Tensor {
            name: name.to_string(),
            shape: shape.to_vec(),
            data,
        })
    }

    fn linear(&self, prefix: &str, out: usize, inp: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.get(&format!("{prefix}.weight"), &[out, inp])?,
            bias: self.get(&format!("{prefix}.bias"), &[out])?,
        })
    }

    fn norm(&self, prefix: &str, n: usize) -> Result<LayerNormWeights> {
        Ok(LayerNormWeights {
            gamma: self.get(&format!("{prefix}.weight"), &[n])?,
            beta: self.get(&format!("{prefix}.bias"), &[n])?,
        })
    }
}

fn build(src: &TensorSource<'_>, c: &ModelConfig) -> Result<TransformerWeights> {
    let h = c.hidden_size;
    let embeddings = EmbeddingWeights {
        word: src.get("embeddings.word_embeddings.weight", &[c.vocab_size, h])?,
        position: src.get(
            "embeddings.position_embeddings.weight",
            &[c.max_position_embeddings, h],
        )?,
        token_type: match c.architecture {
            Architecture::Bert => Some(src.get(
                "embeddings.token_type_embeddings.weight",
                &[c.type_vocab_size, h],
            )?),
            Architecture::Mpnet => None,
        },
        norm: src.norm("embeddings.LayerNorm", h)?,
    };
    let mut layers = Vec::with_capacity(c.num_hidden_layers);
    for i in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{i}");
        let (q, k, v, o, attn_norm) = match c.architecture {
            Architecture::Bert => (
                format!("{p}.attention.self.query"),
                format!("{p}.attention.self.key"),
                format!("{p}.attention.self.value"),
                format!("{p}.attention.output.dense"),
                format!("{p}.attention.output.LayerNorm"),
            ),
            Architecture::Mpnet => (
                format!("{p}.attention.attn.q"),
                format!("{p}.attention.attn.k"),
                format!("{p}.attention.attn.v"),
                format!("{p}.attention.attn.o"),
                format!("{p}.attention.LayerNorm"),
            ),
        };
        layers.push(LayerWeights {
            query: src.linear(&q, h, h)?,
            key: src.linear(&k, h, h)?,
            value: src.linear(&v, h, h)?,
            attn_out: src.linear(&o, h, h)?,
            attn_norm: src.norm(&attn_norm, h)?,
            ffn_in: src.linear(&format!("{p}.intermediate.dense"), c.intermediate_size, h)?,
            ffn_out: src.linear(&format!("{p}.output.dense"), h, c.intermediate_size)?,
            ffn_norm: src.norm(&format!("{p}.output.LayerNorm"), h)?,
        });
    }
    let relative_attention_bias = match c.architecture {
        Architecture::Mpnet => Some(src.get(
            "encoder.relative_attention_bias.weight",
            &[c.relative_attention_num_buckets, c.num_attention_heads],
        )?),
        Architecture::Bert => None,
    };
    Ok(TransformerWeights {
        embeddings,
        layers,
        relative_attention_bias,
    })
}
