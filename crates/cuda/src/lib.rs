//! embedrt-cuda: the GPU engine. A build step turns a model into a plan for
//! one GPU ([`plan`], [`build`]); [`CudaEngine`] loads a plan and runs it.
//! The crate builds without CUDA; at run time it needs libcuda,
//! libcublasLt and libnvrtc (CUDA 13), checked by [`probe`] before use.

pub mod build;
pub mod engine;
pub mod fault;
mod ffn_sm90;
pub mod gemm;
pub mod kernels;
pub mod plan;
pub mod probe;
pub mod qgemm;
pub mod quant_plan;

pub use build::{build_plan, gpu_identity, model_from_plan, BuildOptions, GpuIdentity};
pub use engine::{CudaEngine, EngineOptions};
pub use plan::{Plan, Precision, Profile};
