//! Sensitivity fallback: which GEMMs stay in float so the quantized model
//! meets its accuracy target. Generic over the engine: the caller's
//! evaluator runs the model with a given fallback set (the CPU fake-quant
//! reference here, the GPU engine in `embedrt build`) and measures it.

use embedrt_core::quant::GemmSite;
use embedrt_core::{Error, Result};

/// How close a quantized model came to fp32.
#[derive(Clone, Debug, PartialEq)]
pub struct Accuracy {
    /// Mean cosine similarity to the fp32 embeddings of the held-out sentences.
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// STS Spearman x 100, when an STS evaluation set was given.
    pub spearman: Option<f64>,
}

/// What "accurate enough" means.
#[derive(Clone, Debug, PartialEq)]
pub struct AccuracyTarget {
    /// Mean cosine to fp32 at least this (default 0.995).
    pub min_mean_cosine: f64,
    /// fp32's Spearman x 100 and the largest drop allowed (default 0.3);
    /// checked only when both are known.
    pub spearman_fp32: Option<f64>,
    pub max_spearman_drop: f64,
}

pub const DEFAULT_MIN_MEAN_COSINE: f64 = 0.995;
pub const DEFAULT_MAX_SPEARMAN_DROP: f64 = 0.3;

impl Default for AccuracyTarget {
    fn default() -> Self {
        AccuracyTarget {
            min_mean_cosine: DEFAULT_MIN_MEAN_COSINE,
            spearman_fp32: None,
            max_spearman_drop: DEFAULT_MAX_SPEARMAN_DROP,
        }
    }
}

impl AccuracyTarget {
    pub fn is_met(&self, a: &Accuracy) -> bool {
        let spearman_ok = match (self.spearman_fp32, a.spearman) {
            (Some(fp32), Some(q)) => fp32 - q <= self.max_spearman_drop,
            _ => true,
        };
        a.mean_cosine >= self.min_mean_cosine && spearman_ok
    }

    /// How far from fp32 an accuracy is, for ranking GEMMs: the cosine
    /// loss, plus the Spearman drop in the same units when it is measured
    /// (one Spearman point weighs as much as the whole cosine budget).
    fn loss(&self, a: &Accuracy) -> f64 {
        let cosine = 1.0 - a.mean_cosine;
        let budget = (1.0 - self.min_mean_cosine).max(1e-6);
        let spearman = match (self.spearman_fp32, a.spearman) {
            (Some(fp32), Some(q)) => (fp32 - q).max(0.0) / self.max_spearman_drop.max(1e-6),
            _ => 0.0,
        };
        cosine / budget + spearman
    }
}

/// The outcome of [`choose`].
#[derive(Clone, Debug, PartialEq)]
pub struct FallbackChoice {
    /// GEMMs kept in float, most sensitive first.
    pub fallback: Vec<GemmSite>,
    /// Accuracy with that fallback set.
    pub accuracy: Accuracy,
    pub target_met: bool,
    /// Each GEMM quantized alone (all others float), most sensitive first;
    /// empty when quantizing everything already met the target.
    pub sensitivity: Vec<(GemmSite, Accuracy)>,
    /// How many times the evaluator ran.
    pub evaluations: usize,
}

/// Quantizes every site if that meets `target`; otherwise measures each
/// site quantized alone, then keeps sites in float, most sensitive first,
/// until the target holds. If even everything in float misses it (a target
/// tighter than the evaluator's own noise), the choice says so with
/// `target_met: false` and every site in float.
pub fn choose(
    sites: &[GemmSite],
    target: &AccuracyTarget,
    mut evaluate: impl FnMut(&[GemmSite]) -> Result<Accuracy>,
) -> Result<FallbackChoice> {
    if sites.is_empty() {
        return Err(Error::Input("no GEMMs to quantize".into()));
    }
    let mut evaluations = 1;
    let all_quantized = evaluate(&[])?;
    if target.is_met(&all_quantized) {
        return Ok(FallbackChoice {
            fallback: Vec::new(),
            accuracy: all_quantized,
            target_met: true,
            sensitivity: Vec::new(),
            evaluations,
        });
    }
    let mut sensitivity = Vec::with_capacity(sites.len());
    for &site in sites {
        let others: Vec<GemmSite> = sites.iter().copied().filter(|&s| s != site).collect();
        sensitivity.push((site, evaluate(&others)?));
        evaluations += 1;
    }
    // Most sensitive first; ties keep execution order (stable sort).
    sensitivity.sort_by(|a, b| target.loss(&b.1).total_cmp(&target.loss(&a.1)));
    let mut fallback = Vec::new();
    let mut accuracy = all_quantized;
    for (site, _) in &sensitivity {
        fallback.push(*site);
        accuracy = evaluate(&fallback)?;
        evaluations += 1;
        if target.is_met(&accuracy) {
            return Ok(FallbackChoice {
                fallback,
                accuracy,
                target_met: true,
                sensitivity,
                evaluations,
            });
        }
    }
    Ok(FallbackChoice {
        fallback,
        accuracy,
        target_met: false,
        sensitivity,
        evaluations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedrt_core::quant::GemmKind;

    /// A model whose error is the sum of known per-site costs.
    fn additive(costs: &[(GemmSite, f64)]) -> impl FnMut(&[GemmSite]) -> Result<Accuracy> + '_ {
        move |fallback| {
            let loss: f64 = costs
                .iter()
                .filter(|(s, _)| !fallback.contains(s))
                .map(|(_, c)| c)
                .sum();
            Ok(Accuracy {
                mean_cosine: 1.0 - loss,
                min_cosine: 1.0 - 2.0 * loss,
                spearman: None,
            })
        }
    }

    #[test]
    fn keeps_the_most_sensitive_sites_in_float_until_the_target_holds() {
        let sites = GemmSite::all(2);
        let costs: Vec<(GemmSite, f64)> = sites
            .iter()
            .map(|&s| {
                let c = match (s.layer, s.kind) {
                    (1, GemmKind::FfnOut) => 0.004,
                    (0, GemmKind::Qkv) => 0.002,
                    _ => 0.0002,
                };
                (s, c)
            })
            .collect();
        let target = AccuracyTarget::default();
        let choice = choose(&sites, &target, additive(&costs)).unwrap();
        // Total 0.0072 > 0.005; dropping the 0.004 site leaves 0.0032.
        assert_eq!(
            choice.fallback,
            vec![GemmSite {
                layer: 1,
                kind: GemmKind::FfnOut
            }]
        );
        assert!(choice.target_met);
        assert_eq!(choice.evaluations, 1 + 8 + 1);
        assert_eq!(choice.sensitivity[1].0.kind, GemmKind::Qkv);
    }

    #[test]
    fn nothing_falls_back_when_everything_quantized_is_good_enough() {
        let sites = GemmSite::all(1);
        let costs: Vec<(GemmSite, f64)> = sites.iter().map(|&s| (s, 0.0001)).collect();
        let choice = choose(&sites, &AccuracyTarget::default(), additive(&costs)).unwrap();
        assert!(choice.fallback.is_empty() && choice.target_met);
        assert_eq!(choice.evaluations, 1);
    }

    #[test]
    fn an_unreachable_target_is_reported_not_hidden() {
        let sites = GemmSite::all(1);
        let target = AccuracyTarget {
            min_mean_cosine: 1.5,
            ..Default::default()
        };
        let costs: Vec<(GemmSite, f64)> = sites.iter().map(|&s| (s, 0.01)).collect();
        let choice = choose(&sites, &target, additive(&costs)).unwrap();
        assert!(!choice.target_met);
        assert_eq!(choice.fallback.len(), 4);
    }
}
