//! embedrt-runtime: the one way to open embedrt engines. An [`EngineSpec`]
//! (model or plan, device, precision, pooling) becomes an [`Embedder`]
//! ([`open`]) or one engine per GPU ([`open_engines`]). The CLI, the
//! server, the Python package and the pipeline all come through here, so
//! they parse devices, probe the GPU and fall back to the CPU the same way
//! and fail with the same messages. Without a plan, a GPU runs an fp16
//! plan cached on disk ([`plan_cache`]).
//!
//! [`Embedder`]: embedrt_core::Embedder

mod default_plan;
pub mod device;
pub mod error;
mod open;
pub mod plan_cache;

pub use device::{Device, Devices};
pub use embedrt_cuda::EngineOptions;
pub use error::{chain_message, Error, ErrorKind, Result, ResultExt};
pub use open::{engine_options_from_env, open, open_engines, EngineSpec, LabeledEngine, Opened};
