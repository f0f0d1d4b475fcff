//! GEMM tuning for `embedrt build`: cuBLASLt's top heuristic candidates timed
//! on this GPU for each GEMM on a ladder of token counts; the winners' opaque
//! algorithm bytes go into the plan.

use cudarc::driver::{result as cr, sys as cu};
use embedrt_core::{Backend, Error, Result};

use super::{drv, random_batch, CudaEngine};
use crate::gemm::{algo_to_hex, GemmKind};
use crate::plan::GemmChoice;

impl CudaEngine {
    /// Chooses cuBLASLt algorithms by timing the top heuristic candidates on
    /// this GPU, for a ladder of token counts up to the MAX profile.
    pub fn tune_gemms(&self, opt_tokens: usize) -> Result<Vec<GemmChoice>> {
        // Quantized plans: the fp16 tuner would run on 1-byte weights; their
        // 8-bit GEMMs take cuBLASLt's heuristic, their fp16 fallbacks too.
        if self.precision_name != self.precision.name() {
            return Ok(Vec::new());
        }
        // Fill the activations with real values first (never time on garbage).
        let warm_seqs = (self.max_tokens / self.max.seq).clamp(1, self.max.batch);
        let warm = random_batch(&self.config, warm_seqs, self.max.seq, 7);
        self.embed(&warm)?;
        let mut g = self.lock()?;
        let stream = g.stream;
        let ladder = token_ladder(self.max_tokens, opt_tokens);
        let start = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
        let stop = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
        let mut out = Vec::new();
        let result = (|| -> Result<()> {
            for kind in GemmKind::ALL {
                for (lo, tokens) in step_ranges(&ladder) {
                    let (w, x, res, y) = {
                        let l = &g.layers[0];
                        let b = &g.b;
                        match kind {
                            GemmKind::Qkv => (l.qkv_w, b.hidden, None, b.qkv),
                            GemmKind::AttnOut => {
                                (l.attn_out_w, b.context, Some(b.hidden), b.scratch)
                            }
                            GemmKind::FfnIn => (l.ffn_in_w, b.hidden, None, b.inter),
                            GemmKind::FfnOut => (l.ffn_out_w, b.inter, Some(b.hidden), b.scratch),
                        }
                    };
                    let gemms = g
                        .gemms
                        .as_mut()
                        .ok_or_else(|| Error::Backend("no GEMMs".into()))?;
                    // Small token counts (the latency case) get a wider search: split-K
                    // and small-tile variants rank low in the heuristic there.
                    let count = if tokens <= 256 { 24 } else { 6 };
                    let candidates = merged_candidates(
                        gemms.heuristics(kind, tokens, count)?,
                        gemms.heuristics(kind, lo, count).unwrap_or_default(),
                    );
                    let best = fastest(
                        &candidates,
                        (start, stop),
                        stream,
                        &[lo, tokens],
                        |algo, t| {
                            gemms.run_with(0, kind, t, w, x, res, y, stream as _, Some(*algo))
                        },
                    )?;
                    if let Some(ci) = best {
                        out.push(GemmChoice {
                            gemm: kind.name().into(),
                            tokens,
                            algo: algo_to_hex(&candidates[ci]),
                        });
                    }
                }
            }
            Ok(())
        })();
        // SAFETY: events made above.
        unsafe {
            let _ = cr::event::destroy(start);
            let _ = cr::event::destroy(stop);
        }
        result?;
        Ok(out)
    }
}

/// The index of the candidate with the least time over `sizes` (token counts)
/// on `stream`: each runs once untimed at every size (one that fails to run is
/// skipped), then five times a size between the two events. Shared by the
/// fp16 and the 8-bit tuners.
pub(super) fn fastest<A>(
    candidates: &[A],
    (start, stop): (cu::CUevent, cu::CUevent),
    stream: cu::CUstream,
    sizes: &[usize],
    mut run: impl FnMut(&A, usize) -> Result<()>,
) -> Result<Option<usize>> {
    let mut best: Option<(f32, usize)> = None;
    'candidates: for (ci, algo) in candidates.iter().enumerate() {
        for &t in sizes {
            if run(algo, t).is_err() {
                continue 'candidates;
            }
        }
        let mut ms = 0.0;
        for &t in sizes {
            // SAFETY: the caller's events and stream are live.
            ms += unsafe {
                cr::event::record(start, stream).map_err(drv("event"))?;
                for _ in 0..5 {
                    run(algo, t)?;
                }
                cr::event::record(stop, stream).map_err(drv("event"))?;
                cr::event::synchronize(stop).map_err(drv("event"))?;
                cr::event::elapsed(start, stop).map_err(drv("event"))?
            };
        }
        if best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, ci));
        }
    }
    Ok(best.map(|(_, ci)| ci))
}

/// The heuristic's candidates at a step's two ends, each algorithm once
/// (`a` first).
pub(super) fn merged_candidates(
    a: Vec<cudarc::cublaslt::sys::cublasLtMatmulAlgo_t>,
    b: Vec<cudarc::cublaslt::sys::cublasLtMatmulAlgo_t>,
) -> Vec<cudarc::cublaslt::sys::cublasLtMatmulAlgo_t> {
    let mut out = a;
    for algo in b {
        if !out.iter().any(|o| o.data == algo.data) {
            out.push(algo);
        }
    }
    out
}

/// Each ladder step with the smallest token count it serves: a batch runs
/// the algorithm of the smallest step at or above its tokens (gemm.rs), so
/// step `s` after step `p` serves `p + 1 ..= s`. The tuners time candidates
/// at both ends: chosen at the top alone, a step's algorithm ran W2's first
/// call (16,390 tokens, step 18,432) 14% slower than 16,384's (run 29).
pub(super) fn step_ranges(ladder: &[usize]) -> Vec<(usize, usize)> {
    let mut prev = 0;
    ladder
        .iter()
        .map(|&s| {
            let lo = (prev + 1).min(s);
            prev = s;
            (lo, s)
        })
        .collect()
}

/// Token counts tuned: from 16 on, each octave in up to 8 steps (multiples of
/// 16: 16; 32, 48; 64, 80, ..; 128, 144, ..; 256, 288, ..), below MAX tokens,
/// MAX itself and OPT. A batch runs the algorithm of the smallest step at or
/// above its tokens (gemm.rs). Why so many: a GEMM's best tiling follows its
/// wave count (tiles over SMs), which powers of two alone sample too coarsely;
/// with them W2's third call (11,774 tokens) ran 16,384's FFN-out algorithm in
/// 1.305 ms where 16,384 tokens took 1.318 (run 28).
pub(super) fn token_ladder(max_t: usize, opt_tokens: usize) -> Vec<usize> {
    let mut ladder = Vec::new();
    for p in 4..30 {
        let base = 1usize << p;
        let steps = (base / 16).min(8);
        ladder.extend(
            (0..steps)
                .map(|i| base + i * (base / steps))
                .filter(|&t| t < max_t),
        );
    }
    ladder.push(max_t);
    ladder.push(opt_tokens.min(max_t));
    ladder.sort_unstable();
    ladder.dedup();
    ladder
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ladder_steps_each_octave_and_holds_max_and_opt() {
        assert_eq!(
            super::token_ladder(100, 40),
            vec![16, 32, 40, 48, 64, 80, 96, 100]
        );
        assert_eq!(super::token_ladder(64, 1000), vec![16, 32, 48, 64]);
        let wide = super::token_ladder(32768, 32768);
        assert!(wide.windows(2).all(|w| w[1] - w[0] <= w[0] / 8 + 16));
        assert!(wide.contains(&12288) && wide.contains(&16384) && wide.ends_with(&[30720, 32768]));
        assert!(wide.iter().all(|t| t % 16 == 0));
    }

    #[test]
    fn a_step_serves_the_tokens_above_the_step_before() {
        assert_eq!(
            super::step_ranges(&[16, 32, 40, 100]),
            vec![(1, 16), (17, 32), (33, 40), (41, 100)]
        );
    }
}
