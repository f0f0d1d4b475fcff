//! The versioned registry on a [`Store`]: a local directory or an S3 prefix,
//! with the same keys:
//!
//! ```text
//! aliases.json                 {"champion": "v0002", "previous": "v0001"}
//! versions/vNNNN/model/        the trained sentence-transformers directory
//! versions/vNNNN/onnx/         embedrt's ONNX export
//! versions/vNNNN/plans/        GPU plans (and calibration tables), when built
//! versions/vNNNN/version.json  metrics, lineage (data hashes, parent, code version), fingerprint
//! data/<sha256>.jsonl          each accepted day, content-addressed; days.json lists them in order
//! runs/<run id>/               state.json, report.json, report.md, gates.svg (+ work files locally)
//! ```
//!
//! Beside the store there is a local directory, [`Registry::root`]: the
//! registry directory itself for a local store, `registry.cache` for S3. It
//! holds the run lock, the runs' work files, and the versions materialized
//! for stages that need files (training from the champion, the engines that
//! `embedrt serve` reloads).
//!
//! Aliases are one object, written only if it is unchanged since this
//! registry last read it (S3: `If-Match` on its ETag), so two writers cannot
//! interleave: the one that lost gets an error, not a silent overwrite.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use object_store::UpdateVersion;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::RegistrySection;
use crate::data::{DayStats, Row};
use crate::store::{Conflict, Store};
use embedrt_core::fsutil::write_atomic;

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
    pub store: Store,
    /// The local directory: the lock, the runs, materialized versions.
    pub root: PathBuf,
    /// The aliases object's version when last read (None: it did not exist),
    /// the condition of the next [`Registry::set_aliases`].
    aliases_read: Mutex<Option<Option<UpdateVersion>>>,
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

const ALIASES: &str = "aliases.json";
const DAYS: &str = "data/days.json";
/// Written in a materialized version's directory once every file is there.
const MATERIALIZED: &str = ".materialized";

impl Registry {
    /// The registry the config names (`registry.path` or `registry.uri`).
    pub fn from_config(section: &RegistrySection) -> Result<Registry> {
        match (&section.path, &section.uri) {
            (Some(path), _) => Registry::open(path),
            (None, Some(uri)) => {
                let store = Store::open(uri)?;
                let root = match store.local_root() {
                    Some(r) => r.to_path_buf(),
                    None => section.cache.clone().context("registry.cache is not set")?,
                };
                Registry::with_store(store, root)
            }
            (None, None) => bail!("[registry] needs `path` or `uri`"),
        }
    }

    /// A registry in a local directory.
    pub fn open(root: &Path) -> Result<Registry> {
        Registry::with_store(Store::local(root)?, root.to_path_buf())
    }

    fn with_store(store: Store, root: PathBuf) -> Result<Registry> {
        for sub in ["versions", "data", "runs"] {
            std::fs::create_dir_all(root.join(sub))
                .with_context(|| format!("{}: cannot create", root.join(sub).display()))?;
        }
        Ok(Registry {
            store,
            root,
            aliases_read: Mutex::new(None),
        })
    }

    /// Whether the registry lives on an object store (not a local directory).
    pub fn is_remote(&self) -> bool {
        self.store.local_root().is_none()
    }

    /// Where a reader that is not this process (a Ray job, a Serve replica)
    /// finds `key`: the store's URI (`s3://BUCKET/PREFIX/key`) on a remote
    /// registry, the local path otherwise. A key ending in `/` names a
    /// prefix (a directory); the URI keeps the slash, as `fetch` expects.
    pub fn uri_of(&self, key: &str) -> String {
        match self.store.local_root() {
            Some(root) => root.join(key.trim_end_matches('/')).display().to_string(),
            None => format!("{}/{key}", self.store.uri().trim_end_matches('/')),
        }
    }

    /// The store's URI of a file or directory in the local copy of a remote
    /// registry (a materialized version); None for a local registry or a
    /// path outside the registry directory.
    pub fn remote_uri(&self, path: &Path) -> Option<String> {
        if !self.is_remote() {
            return None;
        }
        let key = path.strip_prefix(&self.root).ok()?.to_str()?;
        let slash = if path.is_dir() { "/" } else { "" };
        Some(self.uri_of(&format!("{key}{slash}")))
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{}/{key}: not valid JSON", self.store.uri())),
        }
    }

    fn put_json(&self, key: &str, value: &impl Serialize) -> Result<()> {
        self.store.put(key, serde_json::to_vec_pretty(value)?)
    }

    /// Reads the aliases and remembers their version for [`Self::set_aliases`].
    pub fn aliases(&self) -> Result<Aliases> {
        let got = self.store.get_versioned(ALIASES)?;
        let (aliases, version) = match got {
            None => (Aliases::default(), None),
            Some((b, v)) => (
                serde_json::from_slice(&b)
                    .with_context(|| format!("{}/{ALIASES}: not valid JSON", self.store.uri()))?,
                Some(v),
            ),
        };
        *self.aliases_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(version);
        Ok(aliases)
    }

    /// Replaces the aliases, only if nobody wrote them since this registry
    /// last read them (a lost race is an error naming what happened).
    pub fn set_aliases(&self, aliases: &Aliases) -> Result<()> {
        let read = self
            .aliases_read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let expected = match read {
            Some(v) => v,
            // Not read yet: the condition is the current version.
            None => {
                self.aliases()?;
                self.aliases_read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .flatten()
            }
        };
        let bytes = serde_json::to_vec_pretty(aliases)?;
        match self.store.put_if(ALIASES, bytes, expected.as_ref()) {
            Ok(()) => Ok(()),
            Err(e) if e.downcast_ref::<Conflict>().is_some() => {
                let now = self.aliases().map(|a| format!("{a:?}")).unwrap_or_default();
                bail!(
                    "{e}: the aliases changed while this run worked (now {now}); \
                     not setting {aliases:?}. Check `embedrt pipeline status`"
                )
            }
            Err(e) => Err(e),
        }
    }

    /// A local directory holding the version's files: in the registry
    /// directory itself, or downloaded from the store into `root` once.
    pub fn version_dir(&self, version: &str) -> Result<PathBuf> {
        let dir = self.root.join("versions").join(version);
        if !self.is_remote() || dir.join(MATERIALIZED).exists() {
            return Ok(dir);
        }
        let key = format!("versions/{version}");
        if !self.store.exists(&format!("{key}/version.json"))? {
            bail!(
                "version {version} is not in the registry {}; `embedrt pipeline status` lists them",
                self.store.uri()
            );
        }
        // Into a sibling first, then renamed: a killed download leaves no
        // half directory that looks complete.
        let partial = self
            .root
            .join("versions")
            .join(format!(".{version}.partial"));
        if partial.exists() {
            std::fs::remove_dir_all(&partial)?;
        }
        self.store.get_dir(&key, &partial)?;
        std::fs::write(partial.join(MATERIALIZED), b"")?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::rename(&partial, &dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        Ok(dir)
    }

    pub fn versions(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for v in self.store.list_dirs("versions")? {
            // Hidden names are local partial downloads, not versions.
            if !v.starts_with('.') && self.store.exists(&format!("versions/{v}/version.json"))? {
                out.push(v);
            }
        }
        Ok(out)
    }

    pub fn version_info(&self, version: &str) -> Result<Value> {
        match self.get_json(&format!("versions/{version}/version.json"))? {
            Some(v) => Ok(v),
            None => bail!(
                "version {version} is not in the registry {}; `embedrt pipeline status` lists them",
                self.store.uri()
            ),
        }
    }

    /// Rewrites a registered version's version.json (its status changes).
    pub fn write_version_info(&self, version: &str, info: &Value) -> Result<()> {
        self.put_json(&format!("versions/{version}/version.json"), info)?;
        let cached = self.root.join("versions").join(version);
        if self.is_remote() && cached.join(MATERIALIZED).exists() {
            write_json(&cached.join("version.json"), info)?;
        }
        Ok(())
    }

    pub fn next_version(&self) -> Result<String> {
        let last = self
            .versions()?
            .last()
            .and_then(|v| v.trim_start_matches('v').parse::<u32>().ok())
            .unwrap_or(0);
        Ok(format!("v{:04}", last + 1))
    }

    /// Uploads `model` (and optional ONNX/plan directories) under a new
    /// version, writing version.json last: a version without it does not exist.
    pub fn register(
        &self,
        version: &str,
        model: &Path,
        extra: &[(&str, &Path)],
        info: &Value,
    ) -> Result<()> {
        let key = format!("versions/{version}");
        // Leftovers of a killed attempt at this version.
        self.store.delete_prefix(&key)?;
        let cached = self.root.join("versions").join(version);
        if self.is_remote() && cached.exists() {
            std::fs::remove_dir_all(&cached)?;
        }
        self.store.put_dir(&format!("{key}/model"), model)?;
        for (name, src) in extra {
            if src.exists() {
                self.store.put_dir(&format!("{key}/{name}"), src)?;
            }
        }
        self.put_json(&format!("{key}/version.json"), info)
    }

    pub fn days(&self) -> Result<Vec<DayEntry>> {
        Ok(self.get_json(DAYS)?.unwrap_or_default())
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
        self.store.put(&day_key(&entry.sha256), text.into_bytes())?;
        days.push(entry);
        self.put_json(DAYS, &days)
    }

    pub fn day_rows(&self, sha: &str) -> Result<Vec<Row>> {
        let key = day_key(sha);
        let bytes = self
            .store
            .get(&key)?
            .with_context(|| format!("{}/{key}: missing", self.store.uri()))?;
        let text = std::str::from_utf8(&bytes).context("a stored day is not UTF-8")?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("a stored day row"))
            .collect()
    }

    /// The run ids the store has records of.
    pub fn runs(&self) -> Result<Vec<String>> {
        self.store.list_dirs("runs")
    }

    /// A run's record (state.json, report.json) from the store.
    pub fn run_record(&self, run: &str, file: &str) -> Result<Option<Value>> {
        self.get_json(&format!("runs/{run}/{file}"))
    }

    /// Copies a run's record files to the store, where they already are for
    /// a local registry. Missing files are skipped.
    pub fn publish_run(&self, run: &str, dir: &Path, files: &[&str]) -> Result<()> {
        if !self.is_remote() {
            return Ok(());
        }
        for f in files {
            let p = dir.join(f);
            if p.exists() {
                self.store.put_file(&format!("runs/{run}/{f}"), &p)?;
            }
        }
        Ok(())
    }
}

fn day_key(sha: &str) -> String {
    format!("data/{sha}.jsonl")
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
        assert_eq!(
            std::fs::read(reg.version_dir("v0001").unwrap().join("model/a.txt")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn a_second_alias_writer_that_read_the_same_pair_loses() {
        let dir = tempfile::tempdir().unwrap();
        let one = Registry::open(dir.path()).unwrap();
        let two = Registry::open(dir.path()).unwrap();
        let first = Aliases {
            champion: Some("v0001".into()),
            previous: None,
        };
        // Both see no aliases; the first creates them, the second may not.
        assert_eq!(one.aliases().unwrap(), Aliases::default());
        assert_eq!(two.aliases().unwrap(), Aliases::default());
        one.set_aliases(&first).unwrap();
        let err = two.set_aliases(&first).unwrap_err().to_string();
        assert!(err.contains("aliases changed"), "{err}");
        // Both read v0001; the first moves it, the second's write is refused.
        assert_eq!(one.aliases().unwrap(), first);
        assert_eq!(two.aliases().unwrap(), first);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let moved = Aliases {
            champion: Some("v0002".into()),
            previous: Some("v0001".into()),
        };
        one.set_aliases(&moved).unwrap();
        let other = Aliases {
            champion: Some("v0003".into()),
            previous: Some("v0001".into()),
        };
        assert!(two.set_aliases(&other).is_err());
        assert_eq!(two.aliases().unwrap(), moved);
        // Having read the new pair, it may write.
        two.set_aliases(&other).unwrap();
        assert_eq!(one.aliases().unwrap(), other);
    }
}
