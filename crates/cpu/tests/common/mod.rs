//! Paths and loaders shared by the CPU engine's integration tests.

use std::path::PathBuf;
use std::sync::Arc;

use embedrt_core::{Embedder, SentenceModel};
use embedrt_cpu::CpuEngine;
use serde::Deserialize;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

pub const TINY_FIXTURES: [&str; 5] = [
    "tiny-mpnet-mean-norm",
    "tiny-mpnet-cls",
    "tiny-bert-mean-norm",
    "tiny-bert-max",
    "tiny-bert-mean-sqrt-len",
];

/// The real all-MiniLM-L6-v2, installed and sha256-checked by
/// scripts/setup-test-env.sh. Missing is a failure, not a skip.
pub fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("EMBEDRT_MINILM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/all-MiniLM-L6-v2"));
    assert!(
        dir.join("model.safetensors").exists(),
        "{} has no model.safetensors: run scripts/setup-test-env.sh",
        dir.display()
    );
    dir
}

pub fn shared_data(rel: &str) -> PathBuf {
    let path = repo_root().join("../shared/data").join(rel);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

pub fn cpu_embedder(dir: &std::path::Path) -> Embedder {
    let model = SentenceModel::from_dir(&dir.display().to_string(), dir).expect("model loads");
    let weights = model.load_weights().expect("weights load");
    let engine = CpuEngine::new(&model.config, weights, model.pooling, model.max_seq_length)
        .expect("engine builds");
    Embedder::new(model, Arc::new(engine))
}

#[derive(Deserialize)]
pub struct Expected {
    pub texts: Vec<String>,
    pub token_ids: Vec<Vec<u32>>,
    pub embeddings: Vec<Vec<f32>>,
    pub normalize: bool,
    pub max_seq_length: usize,
}

pub fn read_expected(name: &str) -> Expected {
    let path = fixture_dir(name).join("expected.json");
    let bytes = std::fs::read(&path).expect("expected.json readable");
    serde_json::from_slice(&bytes).expect("expected.json parses")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
