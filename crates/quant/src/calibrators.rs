//! The four ways to pick a tensor's clipping range (`amax`) from its
//! statistics. All work on the |x| histogram of [`AbsHistogram`], so one
//! calibration pass serves every method.

use embedrt_core::quant::{CalibrationMethod, QuantFormat};

use crate::histogram::AbsHistogram;

/// Quantized bins of the entropy search: TensorRT's 128 levels of |x|
/// (int8's 127 positive codes plus zero).
pub const ENTROPY_QUANTIZED_BINS: usize = 128;

/// The amax `method` picks for `hist` in `format`. Never more than the
/// largest |x| seen; 0 only for an all-zero tensor.
pub fn amax(hist: &AbsHistogram, method: &CalibrationMethod, format: QuantFormat) -> f32 {
    if hist.amax == 0.0 || hist.width == 0.0 {
        return hist.amax;
    }
    let chosen = match method {
        CalibrationMethod::Minmax => return hist.amax,
        CalibrationMethod::Percentile { percentile } => percentile_amax(hist, *percentile),
        CalibrationMethod::Entropy => entropy_amax(hist, ENTROPY_QUANTIZED_BINS),
        CalibrationMethod::Mse => mse_amax(hist, format),
    };
    (chosen as f32).min(hist.amax)
}

/// ONNX Runtime's `compute_percentile` (symmetric): the left edge of the
/// first bin where the cumulative share reaches `percentile`.
pub fn percentile_amax(hist: &AbsHistogram, percentile: f64) -> f64 {
    let target = percentile / 100.0;
    let total = hist.total.max(1) as f64;
    let mut cum = 0.0f64;
    for (i, &c) in hist.counts.iter().enumerate() {
        cum += c as f64 / total;
        if cum >= target {
            return hist.left_edge(i);
        }
    }
    hist.left_edge(hist.counts.len())
}

/// TensorRT's entropy calibration (the KL-divergence threshold search of
/// "8-bit inference with TensorRT", GTC 2017, as ONNX Runtime's
/// `get_entropy_threshold` writes it, here over |x|): for each candidate
/// threshold bin `i` from `levels` to the last, clip the histogram to its
/// first `i` bins (outliers piled into the last kept bin), quantize that to
/// `levels` bins and expand back over the non-empty bins, and keep the `i`
/// whose quantized distribution is closest (KL) to the clipped one.
pub fn entropy_amax(hist: &AbsHistogram, levels: usize) -> f64 {
    let n = hist.counts.len();
    if n <= levels {
        return hist.left_edge(n);
    }
    let counts: Vec<f64> = hist.counts.iter().map(|&c| c as f64).collect();
    // suffix[i] = sum of counts[i..]
    let mut suffix = vec![0.0f64; n + 1];
    for i in (0..n).rev() {
        suffix[i] = suffix[i + 1] + counts[i];
    }
    let mut best = (f64::INFINITY, n);
    let mut p = vec![0.0f64; n];
    let mut q = vec![0.0f64; n];
    for i in levels..=n {
        let sliced = &counts[..i];
        p[..i].copy_from_slice(sliced);
        p[i - 1] += suffix[i];
        let merged = i / levels;
        q[..i].fill(0.0);
        for level in 0..levels {
            let start = level * merged;
            let end = if level == levels - 1 {
                i
            } else {
                start + merged
            };
            let sum: f64 = sliced[start..end].iter().sum();
            let nonzero = p[start..end].iter().filter(|&&v| v != 0.0).count();
            if nonzero > 0 {
                let share = sum / nonzero as f64;
                for (qv, &pv) in q[start..end].iter_mut().zip(&p[start..end]) {
                    if pv != 0.0 {
                        *qv = share;
                    }
                }
            }
        }
        let kl = match (smooth(&p[..i]), smooth(&q[..i])) {
            (Some(ps), Some(qs)) => kl_divergence(&ps, &qs),
            _ => f64::INFINITY,
        };
        if kl < best.0 {
            best = (kl, i);
        }
    }
    hist.left_edge(best.1)
}

/// ONNX Runtime's `smooth_distribution`: move a little mass (eps = 1e-4)
/// from the non-empty bins to the empty ones so the KL divergence is finite.
fn smooth(p: &[f64]) -> Option<Vec<f64>> {
    const EPS: f64 = 0.0001;
    let zeros = p.iter().filter(|&&v| v == 0.0).count();
    let nonzeros = p.len() - zeros;
    if nonzeros == 0 {
        return None;
    }
    let eps1 = EPS * zeros as f64 / nonzeros as f64;
    if eps1 >= 1.0 {
        return None;
    }
    Some(
        p.iter()
            .map(|&v| if v == 0.0 { EPS } else { v - eps1 })
            .collect(),
    )
}

/// KL(p || q) of two unnormalized distributions (scipy.stats.entropy).
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    p.iter()
        .zip(q)
        .map(|(&a, &b)| {
            let (a, b) = (a / sp, b / sq);
            if a > 0.0 {
                a * (a / b).ln()
            } else {
                0.0
            }
        })
        .sum()
}

/// The amax with the smallest mean squared error of quantize-dequantize in
/// `format`, each bin standing for its centre: candidates are every bin
/// edge from 1/16 of the range up (a smaller amax clips most of the tensor).
pub fn mse_amax(hist: &AbsHistogram, format: QuantFormat) -> f64 {
    let n = hist.counts.len();
    let centres: Vec<(f64, f64)> = hist
        .counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| ((i as f64 + 0.5) * hist.width, c as f64))
        .collect();
    let mut best = (f64::INFINITY, n);
    for i in (n / 16).max(1)..=n {
        let amax = hist.left_edge(i) as f32;
        let scale = format.scale_for(amax);
        let err: f64 = centres
            .iter()
            .map(|&(x, c)| {
                let d = f64::from(format.fake_quant(x as f32, scale)) - x;
                d * d * c
            })
            .sum();
        if err < best.0 {
            best = (err, i);
        }
    }
    hist.left_edge(best.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_hist(outlier: f32) -> AbsHistogram {
        // Deterministic normal-ish sample (sum of uniforms) plus one outlier.
        let mut state = 12345u64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut v: Vec<f32> = (0..200_000)
            .map(|_| (0..12).map(|_| uniform()).sum::<f32>() - 6.0)
            .collect();
        v.push(outlier);
        let mut h = AbsHistogram::new(2048);
        h.add(&v);
        h
    }

    #[test]
    fn minmax_is_the_largest_magnitude() {
        let h = gaussian_hist(-40.0);
        assert_eq!(
            amax(&h, &CalibrationMethod::Minmax, QuantFormat::Int8),
            40.0
        );
    }

    #[test]
    fn clipping_methods_ignore_a_lone_outlier() {
        let h = gaussian_hist(40.0);
        for m in [
            CalibrationMethod::Entropy,
            CalibrationMethod::Mse,
            CalibrationMethod::Percentile { percentile: 99.99 },
        ] {
            let a = amax(&h, &m, QuantFormat::Int8);
            // A unit normal: the useful range is a few sigma, far below 40.
            assert!((2.0..8.0).contains(&a), "{}: {a}", m.name());
        }
        let p = percentile_amax(&h, 50.0);
        // The median of |N(0,1)| is 0.674.
        assert!((p - 0.674).abs() < 0.05, "{p}");
    }
}
