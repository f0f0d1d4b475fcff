//! The on-disk cache of the plans built without `--plan`: one file per
//! model content, GPU (name, compute capability, driver, cuBLASLt), embedrt
//! version, plan format, precision and profile, so the second start loads
//! the plan instead of building it. Plain file work, testable without a
//! GPU: the build step is a closure and the GPU identity is data.
//!
//! Files are written through a temp file and a rename, so two processes
//! starting at once each read an old complete plan or a new complete one;
//! a file that does not read back (truncated, corrupted, another version)
//! or does not match what is wanted is rebuilt and replaced, never an error.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use embedrt_core::{Error as CoreError, SentenceModel};
use embedrt_cuda::plan::{GpuTarget, PLAN_FORMAT_VERSION};
use embedrt_cuda::{GpuIdentity, Plan, Precision, Profile};
use sha2::{Digest, Sha256};

use crate::error::{chain_message, Result};

/// `EMBEDRT_PLAN_CACHE=off`: no cache (every start builds in memory).
pub const OFF: &str = "off";

/// The cache directory from the environment, looked up through `var` (the
/// caller's `std::env::var_os`; the library reads no environment itself):
/// `$EMBEDRT_PLAN_CACHE` (`off`: none), else `$XDG_CACHE_HOME/embedrt/plans`,
/// else `$HOME/.cache/embedrt/plans`. Empty values count as unset and a
/// relative `XDG_CACHE_HOME` is ignored, as the XDG spec says.
pub fn dir_from_env(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = set("EMBEDRT_PLAN_CACHE") {
        return (dir != OFF).then(|| PathBuf::from(dir));
    }
    if let Some(xdg) = set("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return Some(xdg.join("embedrt").join("plans"));
    }
    set("HOME").map(|h| PathBuf::from(h).join(".cache/embedrt/plans"))
}

/// Adds one named, length-prefixed field, so no two different inputs hash
/// the same bytes.
fn field(h: &mut Sha256, name: &str, bytes: &[u8]) {
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// SHA-256 (hex) of what a plan is made from: the weights file's bytes and
/// the parsed config, maximum length and tokenizer. Pooling and
/// normalization are left out: they are set on the loaded plan, as for
/// `--plan`, so `--pooling cls` reuses the same file.
pub fn model_digest(model: &SentenceModel) -> Result<String> {
    let mut h = Sha256::new();
    let config = serde_json::to_vec(&model.config)
        .map_err(|e| CoreError::Model(format!("cannot encode the model config: {e}")))?;
    field(&mut h, "config", &config);
    field(
        &mut h,
        "max_seq_length",
        &(model.max_seq_length as u64).to_le_bytes(),
    );
    field(&mut h, "tokenizer", &model.tokenizer_json);
    let path = model.weights_path();
    let mut file = std::fs::File::open(&path).map_err(|e| CoreError::io(&path, e))?;
    let mut weights = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| CoreError::io(&path, e))?;
        if n == 0 {
            break;
        }
        weights.update(&buf[..n]);
    }
    field(&mut h, "weights", &weights.finalize());
    Ok(hex::encode(h.finalize()))
}

/// Everything a cached plan's name stands for.
pub struct KeyParts<'a> {
    pub model_digest: &'a str,
    pub gpu: &'a GpuIdentity,
    pub precision: Precision,
    /// The profile before capping (the model's length is in the digest).
    pub profile: &'a Profile,
    pub tuned: bool,
}

/// SHA-256 (hex) of the parts, this embedrt's version and the plan format.
pub fn cache_key(k: &KeyParts) -> String {
    let mut h = Sha256::new();
    field(&mut h, "embedrt", env!("CARGO_PKG_VERSION").as_bytes());
    field(&mut h, "plan_format", &PLAN_FORMAT_VERSION.to_le_bytes());
    field(&mut h, "model", k.model_digest.as_bytes());
    let g = &k.gpu.target;
    field(&mut h, "gpu", g.name.as_bytes());
    field(
        &mut h,
        "cc",
        format!("{}.{}", g.cc_major, g.cc_minor).as_bytes(),
    );
    field(&mut h, "driver", &k.gpu.driver_version.to_le_bytes());
    field(
        &mut h,
        "cublaslt",
        &(k.gpu.cublaslt_version as u64).to_le_bytes(),
    );
    field(&mut h, "precision", k.precision.name().as_bytes());
    // The numerics a default plan of this precision gets (fp16's GELU became
    // tanh within one embedrt version): a plan cached with other ones is not
    // the default any more.
    let gelu = embedrt_cuda::plan::default_gelu(k.precision);
    field(&mut h, "gelu", gelu.name().as_bytes());
    let profile = format!("{} tokens {}", k.profile, k.profile.max_tokens);
    field(&mut h, "profile", profile.as_bytes());
    field(&mut h, "tuned", &[k.tuned as u8]);
    hex::encode(h.finalize())
}

/// `DIR/fp16-sm90-<first 32 hex digits of the key>.plan`: the precision and
/// GPU generation readable in a listing, the rest in the key.
pub fn plan_path(dir: &Path, key: &str, precision: Precision, gpu: &GpuTarget) -> PathBuf {
    let short = key.get(..32).unwrap_or(key);
    dir.join(format!(
        "{}-sm{}{}-{short}.plan",
        precision.name(),
        gpu.cc_major,
        gpu.cc_minor
    ))
}

/// Whether a cached plan is the one wanted: a file under the right name
/// that says otherwise (a hand-copied file, a hash collision) is rebuilt.
pub fn check_cached(
    plan: &Plan,
    model: &SentenceModel,
    precision: Precision,
    profile: &Profile,
    gpu: &GpuIdentity,
) -> std::result::Result<(), String> {
    let h = &plan.header;
    let version = env!("CARGO_PKG_VERSION");
    let mismatch = if h.embedrt_version != version {
        format!(
            "written by embedrt {}, this is {version}",
            h.embedrt_version
        )
    } else if h.precision != precision || h.quant.is_some() {
        format!("holds {}, wanted {}", h.precision_name(), precision.name())
    } else if h.gpu != gpu.target || h.cublaslt_version != gpu.cublaslt_version {
        format!(
            "built for {} (cuBLASLt {}), this is {} (cuBLASLt {})",
            h.gpu.name, h.cublaslt_version, gpu.target.name, gpu.cublaslt_version
        )
    } else if h.config != model.config
        || h.max_seq_length != model.max_seq_length
        || plan.tokenizer_json != model.tokenizer_json
    {
        "built from another model".to_string()
    } else if h.profile != profile.capped(model.max_seq_length) {
        format!("built for profile {}", h.profile)
    } else {
        return Ok(());
    };
    Err(mismatch)
}

/// Where a plan came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Read from the cache.
    Cached,
    /// Built: nothing was cached yet.
    Built,
    /// Built: the cached file was unusable, for this reason.
    Rebuilt(String),
}

/// What [`load_or_build`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub source: Source,
    /// Whether a built plan was written to the cache (why not, if not).
    /// A failed write is no error: the plan is in memory and serves.
    pub stored: std::result::Result<(), String>,
}

/// The plan at `path` if it reads back and `accept` takes it; otherwise
/// `build()`, written to `path` atomically (creating the directory).
pub fn load_or_build(
    path: &Path,
    accept: impl Fn(&Plan) -> std::result::Result<(), String>,
    build: impl FnOnce() -> Result<Plan>,
) -> Result<(Plan, Outcome)> {
    let unusable = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        _ => {
            let cached = Plan::read(path)
                .map_err(|e| chain_message(&e))
                .and_then(|plan| accept(&plan).map(|()| plan));
            match cached {
                Ok(plan) => {
                    let outcome = Outcome {
                        source: Source::Cached,
                        stored: Ok(()),
                    };
                    return Ok((plan, outcome));
                }
                Err(why) => Some(why),
            }
        }
    };
    let plan = build()?;
    let stored = store(path, &plan);
    let source = match unusable {
        None => Source::Built,
        Some(why) => Source::Rebuilt(why),
    };
    Ok((plan, Outcome { source, stored }))
}

fn store(path: &Path, plan: &Plan) -> std::result::Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    plan.write(path).map_err(|e| chain_message(&e))
}

/// "NVIDIA H200 (sm_90)".
fn gpu_words(gpu: &GpuTarget) -> String {
    format!("{} (sm_{}{})", gpu.name, gpu.cc_major, gpu.cc_minor)
}

const EXACT_HINT: &str = "(--precision fp32 for the exact path)";

/// The one `note:` line for a plan that went through the cache.
pub fn note(outcome: &Outcome, path: &Path, precision: Precision, gpu: &GpuTarget) -> String {
    let p = precision.name();
    let path = path.display();
    let built = format!("built an {p} plan for {}", gpu_words(gpu));
    let before = match &outcome.source {
        Source::Cached => return format!("no --plan: using the cached {p} plan {path}"),
        Source::Built => String::new(),
        Source::Rebuilt(why) => format!("the cached plan {path} was unusable ({why}); "),
    };
    let line = match (&outcome.source, &outcome.stored) {
        (Source::Built, Ok(())) => format!("no --plan: {built}, cached at {path} {EXACT_HINT}"),
        (_, Ok(())) => format!("no --plan: {before}{built} and cached it {EXACT_HINT}"),
        (_, Err(why)) => {
            format!("no --plan: {before}{built}, not cached at {path} ({why}) {EXACT_HINT}")
        }
    };
    // One line, whatever the reasons held.
    line.replace('\n', " ")
}

/// The one `note:` line for a plan built without the cache (`why`: the
/// cache is off, or the model could not be hashed).
pub fn uncached_note(precision: Precision, gpu: &GpuTarget, why: &str) -> String {
    format!(
        "no --plan: built an {} plan for {} in memory, not cached ({why}) {EXACT_HINT}",
        precision.name(),
        gpu_words(gpu)
    )
}

#[cfg(test)]
#[path = "plan_cache_tests.rs"]
mod tests;
