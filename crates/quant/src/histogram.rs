//! Statistics of one activation tensor over the calibration set: the
//! running max of |x| and a histogram of |x| whose range grows as larger
//! values arrive.
//!
//! Binning follows ONNX Runtime's `HistogramCollector.collect_absolute_value`
//! (what its percentile calibrator uses): the first batch fixes the bin
//! width, `max|x| / bins`, and a later batch with a larger value appends
//! bins of the same width, so no count is ever redistributed. One difference,
//! on purpose: our first edge is 0, where ORT's is the batch's smallest |x|
//! (numpy's default range); for activations that is 0 to within one bin.

/// Histogram bins of the first batch: TensorRT's and ONNX Runtime's choice.
pub const DEFAULT_BINS: usize = 2048;

#[derive(Clone, Debug, PartialEq)]
pub struct AbsHistogram {
    /// Counts of |x| in `[i * width, (i + 1) * width)`; the last bin also
    /// holds values equal to its right edge.
    pub counts: Vec<u64>,
    /// Bin width, 0 until a non-zero value arrives.
    pub width: f64,
    /// Largest |x| seen.
    pub amax: f32,
    /// Values seen (NaN is skipped, as numpy's nanmax does).
    pub total: u64,
    bins: usize,
}

impl AbsHistogram {
    pub fn new(bins: usize) -> Self {
        AbsHistogram {
            counts: Vec::new(),
            width: 0.0,
            amax: 0.0,
            total: 0,
            bins: bins.max(1),
        }
    }

    /// Right edge of bin `i` (so `edge(0) == width`, `edge(len) == range`);
    /// `left_edge(i) == edge(i - 1)`.
    pub fn left_edge(&self, i: usize) -> f64 {
        i as f64 * self.width
    }

    /// Adds one batch of values.
    pub fn add(&mut self, values: &[f32]) {
        let batch_max = values
            .iter()
            .filter(|v| !v.is_nan())
            .fold(0.0f32, |m, v| m.max(v.abs()));
        if batch_max == 0.0 && self.width == 0.0 {
            // All zeros so far: count them without fixing a width.
            let n = values.iter().filter(|v| !v.is_nan()).count() as u64;
            if self.counts.is_empty() {
                self.counts = vec![0; self.bins];
            }
            self.counts[0] += n;
            self.total += n;
            return;
        }
        if self.width == 0.0 {
            self.width = f64::from(batch_max) / self.bins as f64;
            if self.counts.is_empty() {
                self.counts = vec![0; self.bins];
            }
        }
        let range = self.width * self.counts.len() as f64;
        if f64::from(batch_max) > range {
            let more = ((f64::from(batch_max) - range) / self.width).ceil() as usize;
            self.counts.resize(self.counts.len() + more.max(1), 0);
        }
        let last = self.counts.len() - 1;
        let inv = 1.0 / self.width;
        for &v in values {
            if v.is_nan() {
                continue;
            }
            let i = ((f64::from(v.abs()) * inv) as usize).min(last);
            self.counts[i] += 1;
        }
        self.total += values.iter().filter(|v| !v.is_nan()).count() as u64;
        self.amax = self.amax.max(batch_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_grows_without_redistributing_counts() {
        let mut h = AbsHistogram::new(4);
        h.add(&[0.5, -1.0, 2.0, 0.1]);
        assert_eq!(h.width, 0.5);
        assert_eq!(h.counts, vec![1, 1, 1, 1]);
        h.add(&[3.2, -0.2, f32::NAN]);
        assert_eq!(h.counts, vec![2, 1, 1, 1, 0, 0, 1]);
        assert_eq!(h.amax, 3.2);
        assert_eq!(h.total, 6);
    }
}
