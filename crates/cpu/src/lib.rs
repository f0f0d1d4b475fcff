//! embedrt-cpu: the fp32 CPU engine. Batches are unpadded (tokens packed
//! end to end), so every GEMM runs over real tokens only and a sequence's
//! result does not depend on which other sequences share its batch.

mod engine;
mod fake_quant;
mod math;

pub use engine::{CpuEngine, GemmObserver};
