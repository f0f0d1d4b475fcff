//! Resolving a Hugging Face model id to a local snapshot directory through
//! the hub cache (`HF_HOME` / `~/.cache/huggingface`), downloading when
//! online. `HF_HUB_OFFLINE=1` keeps to the cache.

use std::path::PathBuf;

use hf_hub::{api::sync::ApiBuilder, Cache, Repo};
use serde::Deserialize;

use crate::error::{read_json, Error, Result};

/// Files fetched for every model; the pooling config's folder comes from
/// modules.json.
const REQUIRED: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];
const OPTIONAL: [&str; 3] = [
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer_config.json",
];

pub fn fetch(id: &str) -> Result<PathBuf> {
    let offline = std::env::var("HF_HUB_OFFLINE")
        .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
        .unwrap_or(false);
    let hub_err = |message: String| Error::Hub {
        id: id.to_string(),
        message,
    };
    let cache = Cache::from_env();
    let cached = cache.repo(Repo::model(id.to_string()));
    let api = if offline {
        None
    } else {
        ApiBuilder::from_env()
            .with_progress(true)
            .build()
            .ok()
            .map(|a| a.model(id.to_string()))
    };
    let get = |file: &str| -> std::result::Result<PathBuf, String> {
        if let Some(p) = cached.get(file) {
            return Ok(p);
        }
        match &api {
            Some(api) => api.get(file).map_err(|e| e.to_string()),
            None => Err("not in the local Hugging Face cache and HF_HUB_OFFLINE is set".into()),
        }
    };
    let mut snapshot = None;
    for file in REQUIRED {
        let p = get(file).map_err(|e| {
            hub_err(format!(
                "cannot get {file}: {e}; download the model while online, or pass a local directory"
            ))
        })?;
        snapshot.get_or_insert_with(|| p.parent().map(PathBuf::from).unwrap_or_default());
    }
    for file in OPTIONAL {
        let _ = get(file);
    }
    let dir = snapshot.unwrap_or_default();
    let modules = dir.join("modules.json");
    if modules.exists() {
        #[derive(Deserialize)]
        struct Module {
            #[serde(default)]
            path: String,
        }
        let list: Vec<Module> = read_json(&modules)?;
        for m in list.iter().filter(|m| !m.path.is_empty()) {
            let _ = get(&format!("{}/config.json", m.path));
        }
    }
    Ok(dir)
}
