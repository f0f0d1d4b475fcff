//! The versioned registry (a local directory; the layout is the one an S3
//! prefix would have):
//!
//! ```text
//! aliases.json                 {"champion": "v0002", "previous": "v0001"}
//! versions/vNNNN/model/        the trained sentence-transformers directory
//! versions/vNNNN/onnx/         embedrt's ONNX export
//! versions/vNNNN/plans/        GPU plans (and calibration tables), when built
//! versions/vNNNN/version.json  metrics, lineage (data hashes, parent, code version), fingerprint
//! data/<sha256>.jsonl          each accepted day, content-addressed; days.json lists them in order
//! runs/<run id>/               state.json, report.json, report.md, gates.svg, work files
//! ```
//!
//! Aliases live in one small file replaced by rename, so a reader sees the
//! old pair or the new pair, never a mix.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use embedrt_core::fsutil::write_atomic;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::data::{DayStats, Row};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Aliases {
    pub champion: Option<String>,
    pub previous: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DayEntry {
    pub sha256: String,
    pub source: String,
    pub stats: DayStats,
}

pub struct Registry {
    pub root: PathBuf,
}

pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    write_atomic(path, &bytes).with_context(|| format!("{}: cannot write", path.display()))
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

impl Registry {
    pub fn open(root: &Path) -> Result<Registry> {
        for sub in ["versions", "data", "runs"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("{}: cannot create", root.join(sub).display()))?;
        }
        Ok(Registry {
            root: root.to_path_buf(),
        })
    }

    pub fn aliases(&self) -> Result<Aliases> {
        let path = self.root.join("aliases.json");
        if !path.exists() {
            return Ok(Aliases::default());
        }
        read_json(&path)
    }

    pub fn set_aliases(&self, aliases: &Aliases) -> Result<()> {
        write_json(&self.root.join("aliases.json"), aliases)
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.root.join("versions").join(version)
    }

    pub fn versions(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = std::fs::read_dir(self.root.join("versions"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("version.json").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn version_info(&self, version: &str) -> Result<Value> {
        let path = self.version_dir(version).join("version.json");
        if !path.exists() {
            bail!(
                "version {version} is not in the registry {}; `embedrt pipeline status` lists them",
                self.root.display()
            );
        }
        read_json(&path)
    }

    pub fn next_version(&self) -> Result<String> {
        let last = self
            .versions()?
            .last()
            .and_then(|v| v.trim_start_matches('v').parse::<u32>().ok())
            .unwrap_or(0);
        Ok(format!("v{:04}", last + 1))
    }

    /// Copies `model` (and optional ONNX/plan directories) in under a new
    /// version, writing version.json last: a version without it does not exist.
    pub fn register(
        &self,
        version: &str,
        model: &Path,
        extra: &[(&str, &Path)],
        info: &Value,
    ) -> Result<PathBuf> {
        let dir = self.version_dir(version);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        copy_dir(model, &dir.join("model"))?;
        for (name, src) in extra {
            if src.exists() {
                copy_dir(src, &dir.join(name))?;
            }
        }
        write_json(&dir.join("version.json"), info)?;
        Ok(dir)
    }

    pub fn days(&self) -> Result<Vec<DayEntry>> {
        let path = self.root.join("data/days.json");
        if !path.exists() {
            return Ok(Vec::new());
        }
        read_json(&path)
    }

    /// Keeps an accepted day by content; idempotent (a resumed run adds nothing).
    pub fn add_day(&self, entry: DayEntry, rows: &[Row]) -> Result<()> {
        let mut days = self.days()?;
        if days.iter().any(|d| d.sha256 == entry.sha256) {
            return Ok(());
        }
        let mut text = String::new();
        for r in rows {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        let path = self.day_path(&entry.sha256);
        write_atomic(&path, text.as_bytes())
            .with_context(|| format!("{}: cannot write", path.display()))?;
        days.push(entry);
        write_json(&self.root.join("data/days.json"), &days)
    }

    pub fn day_path(&self, sha: &str) -> PathBuf {
        self.root.join("data").join(format!("{sha}.jsonl"))
    }

    pub fn day_rows(&self, sha: &str) -> Result<Vec<Row>> {
        let text = std::fs::read_to_string(self.day_path(sha))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("a stored day row"))
            .collect()
    }
}

pub fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).with_context(|| format!("{}: cannot create", dst.display()))?;
    for entry in
        std::fs::read_dir(src).with_context(|| format!("{}: cannot read", src.display()))?
    {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        // Follows links: the real MiniLM directory is a link into site-packages.
        if std::fs::metadata(&from)?.is_dir() {
            if entry.file_name() == "checkpoints" {
                continue;
            }
            copy_dir(&from, &to)?;
        } else {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.next_version().unwrap(), "v0001");
        let model = dir.path().join("m");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("a.txt"), "x").unwrap();
        reg.register(
            "v0001",
            &model,
            &[],
            &serde_json::json!({"version": "v0001"}),
        )
        .unwrap();
        assert_eq!(reg.versions().unwrap(), vec!["v0001"]);
        assert_eq!(reg.next_version().unwrap(), "v0002");
        let a = Aliases {
            champion: Some("v0001".into()),
            previous: None,
        };
        reg.set_aliases(&a).unwrap();
        assert_eq!(reg.aliases().unwrap(), a);
        assert!(reg.version_info("v0009").is_err());
    }
}
