//! embedrt-core: everything about a sentence-embedding model that does not
//! depend on where it runs — the model description, its weights, the
//! tokenizer, pooling, and the [`Backend`] interface that the CPU and CUDA
//! engines implement.

pub mod backend;
pub mod config;
pub mod embedder;
pub mod error;
pub mod fsutil;
mod hub;
pub mod model;
pub mod pooling;
pub mod precision;
pub mod quant;
pub mod sts;
pub mod tokenizer;
pub mod weights;

pub use backend::{Backend, BackendInfo, TokenBatch};
pub use config::{Architecture, ModelConfig};
pub use embedder::Embedder;
pub use error::{Error, FaultKind, Result};
pub use model::SentenceModel;
pub use pooling::PoolingMode;
pub use precision::Precision;
pub use quant::{CalibrationTable, GemmKind, GemmSite, QuantFormat};
pub use tokenizer::TextTokenizer;
pub use weights::{LayerNormWeights, LayerWeights, Linear, Tensor, TransformerWeights};
