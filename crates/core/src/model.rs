//! A sentence-transformers model directory: where it is (a local path or a
//! Hugging Face model id resolved through the hub cache) and what its
//! modules say (transformer config, pooling, normalization, max length).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ModelConfig;
use crate::error::{read_file, read_json, Error, Result};
use crate::pooling::PoolingMode;
use crate::tokenizer::TextTokenizer;
use crate::weights::TransformerWeights;

/// Everything about a model except its weights, which are loaded on demand
/// (a plan file already holds them in the engine's own layout).
#[derive(Clone)]
pub struct SentenceModel {
    /// What the user named: a directory or a model id.
    pub source: String,
    /// The directory holding the transformer files.
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub pooling: PoolingMode,
    pub normalize: bool,
    pub max_seq_length: usize,
    /// The raw `tokenizer.json`, kept so exports and plans can carry it.
    pub tokenizer_json: Vec<u8>,
    pub tokenizer: TextTokenizer,
}

const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

impl SentenceModel {
    /// Loads a model from a local directory or a Hugging Face model id.
    pub fn load(spec: &str) -> Result<Self> {
        let dir = resolve(spec)?;
        Self::from_dir(spec, &dir)
    }

    pub fn from_dir(source: &str, root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Model(format!(
                "{}: not a directory (expected a sentence-transformers model directory)",
                root.display()
            )));
        }
        let modules_path = root.join("modules.json");
        let (transformer_dir, pooling_dir, normalize) = if modules_path.exists() {
            let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
            let mut transformer = None;
            let mut pooling = None;
            let mut normalize = false;
            for m in &modules {
                let short = m.kind.rsplit('.').next().unwrap_or(&m.kind);
                match short {
                    "Transformer" => transformer = Some(root.join(&m.path)),
                    "Pooling" => pooling = Some(root.join(&m.path)),
                    "Normalize" => normalize = true,
                    _ => {
                        return Err(Error::Model(format!(
                            "{}: module {:?} is not supported; supported: Transformer, Pooling, Normalize",
                            modules_path.display(),
                            m.kind
                        )))
                    }
                }
            }
            let transformer = transformer.ok_or_else(|| {
                Error::Model(format!("{}: no Transformer module", modules_path.display()))
            })?;
            (transformer, pooling, normalize)
        } else {
            // A plain Hugging Face encoder: sentence-transformers would add
            // mean pooling and no normalization.
            (root.to_path_buf(), None, false)
        };
        let dir = transformer_dir;
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let pooling = match pooling_dir {
            Some(p) => PoolingMode::from_file(&p.join("config.json"))?,
            None => PoolingMode::Mean,
        };
        let max_seq_length = max_seq_length(&dir, &config)?;
        let tokenizer_path = dir.join("tokenizer.json");
        let tokenizer_json = read_file(&tokenizer_path)?;
        let tokenizer = TextTokenizer::from_json(&tokenizer_json, max_seq_length)
            .map_err(|e| Error::Model(format!("{}: {e}", tokenizer_path.display())))?;
        Ok(SentenceModel {
            source: source.to_string(),
            dir,
            config,
            pooling,
            normalize,
            max_seq_length,
            tokenizer_json,
            tokenizer,
        })
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Loads and checks `model.safetensors`.
    pub fn load_weights(&self) -> Result<TransformerWeights> {
        let path = self.weights_path();
        if !path.exists() {
            let bin = self.dir.join("pytorch_model.bin");
            if bin.exists() {
                return Err(Error::Model(format!(
                    "{}: only pytorch_model.bin is present; convert it to model.safetensors \
                     (python: `from transformers import AutoModel; \
                     AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)`)",
                    self.dir.display()
                )));
            }
            return Err(Error::Model(format!(
                "{}: no {WEIGHTS_FILE} in the model directory",
                self.dir.display()
            )));
        }
        TransformerWeights::from_safetensors(&path, &self.config)
    }
}

/// sentence_bert_config.json's max_seq_length, else the tokenizer's
/// model_max_length, capped by what the position table holds.
fn max_seq_length(dir: &Path, config: &ModelConfig) -> Result<usize> {
    #[derive(Deserialize)]
    struct StConfig {
        max_seq_length: Option<usize>,
    }
    #[derive(Deserialize)]
    struct TokConfig {
        model_max_length: Option<f64>,
    }
    let st = dir.join("sentence_bert_config.json");
    let wanted = if st.exists() {
        read_json::<StConfig>(&st)?.max_seq_length
    } else {
        None
    };
    let wanted = match wanted {
        Some(n) => Some(n),
        None => {
            let tc = dir.join("tokenizer_config.json");
            if tc.exists() {
                read_json::<TokConfig>(&tc)?
                    .model_max_length
                    .filter(|n| (1.0..1e6).contains(n))
                    .map(|n| n as usize)
            } else {
                None
            }
        }
    };
    let limit = config.max_positions();
    let n = wanted.unwrap_or(limit).min(limit);
    if n < 2 {
        return Err(Error::Model(format!(
            "{}: max_seq_length {n} is too small",
            dir.display()
        )));
    }
    Ok(n)
}

/// A local directory, or a model id fetched through the Hugging Face cache.
fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let looks_like_id = spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && !spec.contains('\\');
    if !looks_like_id {
        return Err(Error::Model(format!(
            "{spec}: no such directory (give a sentence-transformers model directory or a model id such as sentence-transformers/all-MiniLM-L6-v2)"
        )));
    }
    crate::hub::fetch(spec)
}
