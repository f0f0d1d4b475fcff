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
                for &tokens in &ladder {
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
                    let candidates = gemms.heuristics(kind, tokens, count)?;
                    let best = fastest(&candidates, (start, stop), stream, |algo| {
                        gemms.run_with(0, kind, tokens, w, x, res, y, stream as _, Some(*algo))
                    })?;
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

/// The index of the fastest of `candidates` on `stream`: each runs once
/// untimed (one that fails to run is skipped), then five times between the
/// two events. Shared by the fp16 and the 8-bit tuners.
pub(super) fn fastest<A>(
    candidates: &[A],
    (start, stop): (cu::CUevent, cu::CUevent),
    stream: cu::CUstream,
    mut run: impl FnMut(&A) -> Result<()>,
) -> Result<Option<usize>> {
    let mut best: Option<(f32, usize)> = None;
    for (ci, algo) in candidates.iter().enumerate() {
        if run(algo).is_err() {
            continue;
        }
        // SAFETY: the caller's events and stream are live.
        let ms = unsafe {
            cr::event::record(start, stream).map_err(drv("event"))?;
            for _ in 0..5 {
                run(algo)?;
            }
            cr::event::record(stop, stream).map_err(drv("event"))?;
            cr::event::synchronize(stop).map_err(drv("event"))?;
            cr::event::elapsed(start, stop).map_err(drv("event"))?
        };
        if best.is_none_or(|(b, _)| ms < b) {
            best = Some((ms, ci));
        }
    }
    Ok(best.map(|(_, ci)| ci))
}

/// Token counts tuned: powers of two below MAX tokens, MAX itself and OPT.
pub(super) fn token_ladder(max_t: usize, opt_tokens: usize) -> Vec<usize> {
    let mut ladder: Vec<usize> = (4..30)
        .map(|p| 1usize << p)
        .filter(|&t| t < max_t)
        .collect();
    ladder.push(max_t);
    ladder.push(opt_tokens.min(max_t));
    ladder.sort_unstable();
    ladder.dedup();
    ladder
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ladder_holds_powers_of_two_max_and_opt() {
        assert_eq!(super::token_ladder(100, 40), vec![16, 32, 40, 64, 100]);
        assert_eq!(super::token_ladder(64, 1000), vec![16, 32, 64]);
    }
}
