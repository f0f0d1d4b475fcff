//! Sentence pooling over token embeddings, as sentence-transformers'
//! `Pooling` module does it, and L2 normalization (`Normalize`).

use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{read_json, Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingMode {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

impl PoolingMode {
    pub const SUPPORTED: &'static str = "mean, cls, max, mean_sqrt_len";

    pub fn name(self) -> &'static str {
        match self {
            PoolingMode::Mean => "mean",
            PoolingMode::Cls => "cls",
            PoolingMode::Max => "max",
            PoolingMode::MeanSqrtLen => "mean_sqrt_len",
        }
    }

    /// Reads sentence-transformers' `1_Pooling/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Raw {
            pooling_mode: Option<String>,
            #[serde(default)]
            pooling_mode_cls_token: bool,
            #[serde(default)]
            pooling_mode_mean_tokens: bool,
            #[serde(default)]
            pooling_mode_max_tokens: bool,
            #[serde(default)]
            pooling_mode_mean_sqrt_len_tokens: bool,
            #[serde(default)]
            pooling_mode_weightedmean_tokens: bool,
            #[serde(default)]
            pooling_mode_lasttoken: bool,
        }
        let raw: Raw = read_json(path)?;
        let bad = |msg: String| Error::Model(format!("{}: {msg}", path.display()));
        if let Some(mode) = raw.pooling_mode.as_deref() {
            return mode.parse().map_err(|e: Error| bad(e.to_string()));
        }
        let mut modes = Vec::new();
        if raw.pooling_mode_cls_token {
            modes.push(PoolingMode::Cls);
        }
        if raw.pooling_mode_mean_tokens {
            modes.push(PoolingMode::Mean);
        }
        if raw.pooling_mode_max_tokens {
            modes.push(PoolingMode::Max);
        }
        if raw.pooling_mode_mean_sqrt_len_tokens {
            modes.push(PoolingMode::MeanSqrtLen);
        }
        if raw.pooling_mode_weightedmean_tokens || raw.pooling_mode_lasttoken {
            return Err(bad(format!(
                "weighted-mean and last-token pooling are not supported; supported: {}",
                Self::SUPPORTED
            )));
        }
        match modes.as_slice() {
            [one] => Ok(*one),
            [] => Err(bad("no pooling mode is enabled".into())),
            _ => Err(bad(format!(
                "several pooling modes at once are not supported; enable one of: {}",
                Self::SUPPORTED
            ))),
        }
    }

    /// Pools one sequence's token embeddings (`tokens` is `[len, hidden]`,
    /// row-major) into `out` (`[hidden]`). Every token is real: batches are
    /// unpadded, so there is no mask.
    pub fn pool(self, tokens: &[f32], hidden: usize, out: &mut [f32]) {
        let len = tokens.len() / hidden;
        debug_assert_eq!(out.len(), hidden);
        match self {
            PoolingMode::Cls => out.copy_from_slice(&tokens[..hidden]),
            PoolingMode::Max => {
                out.fill(f32::NEG_INFINITY);
                for row in tokens.chunks_exact(hidden) {
                    for (o, &x) in out.iter_mut().zip(row) {
                        *o = o.max(x);
                    }
                }
            }
            PoolingMode::Mean | PoolingMode::MeanSqrtLen => {
                out.fill(0.0);
                for row in tokens.chunks_exact(hidden) {
                    for (o, &x) in out.iter_mut().zip(row) {
                        *o += x;
                    }
                }
                let div = match self {
                    PoolingMode::Mean => len as f32,
                    _ => (len as f32).sqrt(),
                };
                for o in out.iter_mut() {
                    *o /= div;
                }
            }
        }
    }
}

impl FromStr for PoolingMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(PoolingMode::Mean),
            "cls" => Ok(PoolingMode::Cls),
            "max" => Ok(PoolingMode::Max),
            "mean_sqrt_len" | "mean_sqrt_len_tokens" => Ok(PoolingMode::MeanSqrtLen),
            other => Err(Error::Input(format!(
                "unknown pooling mode {other:?}; supported: {}",
                Self::SUPPORTED
            ))),
        }
    }
}

impl std::fmt::Display for PoolingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// L2-normalizes `v` in place, as `torch.nn.functional.normalize` does
/// (the norm is clamped at 1e-12 so a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes_on_a_known_sequence() {
        let tokens = [1.0, -2.0, 3.0, 4.0, 5.0, 0.0];
        let mut out = [0.0; 2];
        PoolingMode::Cls.pool(&tokens, 2, &mut out);
        assert_eq!(out, [1.0, -2.0]);
        PoolingMode::Max.pool(&tokens, 2, &mut out);
        assert_eq!(out, [5.0, 4.0]);
        PoolingMode::Mean.pool(&tokens, 2, &mut out);
        assert_eq!(out, [3.0, 2.0 / 3.0]);
        PoolingMode::MeanSqrtLen.pool(&tokens, 2, &mut out);
        assert!((out[0] - 9.0 / 3f32.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn unknown_mode_names_the_supported_ones() {
        let err = "median".parse::<PoolingMode>().unwrap_err().to_string();
        assert!(
            err.contains("median") && err.contains("mean_sqrt_len"),
            "{err}"
        );
    }

    #[test]
    fn normalize_gives_unit_norm_and_keeps_zero() {
        let mut v = [3.0, 4.0];
        normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}
