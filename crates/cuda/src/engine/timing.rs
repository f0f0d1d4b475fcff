//! Per-stage GPU time of one batch: an event recorded after each stage of the
//! forward pass, the differences summed by stage name. The per-kernel
//! evidence for docs/perf/gpu.md (`embedrt-gpu-check bench`).

use cudarc::driver::{result as cr, sys as cu};
use embedrt_core::{Result, TokenBatch};

use super::{drv, CudaEngine};

/// Events recorded on `stream` after each stage, when a caller collects them.
pub(super) struct Marks<'a> {
    stream: cu::CUstream,
    events: Option<&'a mut Vec<(&'static str, cu::CUevent)>>,
}

impl<'a> Marks<'a> {
    pub(super) fn new(
        stream: cu::CUstream,
        events: Option<&'a mut Vec<(&'static str, cu::CUevent)>>,
    ) -> Self {
        Marks { stream, events }
    }

    /// Records the end of stage `name` (nothing when not timing).
    pub(super) fn mark(&mut self, name: &'static str) -> Result<()> {
        if let Some(events) = self.events.as_deref_mut() {
            let e = cr::event::create(cu::CUevent_flags::CU_EVENT_DEFAULT).map_err(drv("event"))?;
            // SAFETY: fresh event, live stream.
            unsafe { cr::event::record(e, self.stream) }.map_err(drv("event"))?;
            events.push((name, e));
        }
        Ok(())
    }
}

impl CudaEngine {
    /// Per-stage GPU time (ms, summed over layers) of one batch run eagerly:
    /// the per-kernel evidence for docs/perf/gpu.md.
    pub fn stage_times(&self, batch: &TokenBatch) -> Result<Vec<(String, f64)>> {
        batch.validate(self.config.vocab_size, self.max.seq)?;
        let mut g = self.lock()?;
        let (n, t) = (batch.len(), batch.total_tokens());
        let staged = self.stage(&mut g, batch, (t, n), false);
        let stream = g.stream;
        let mut events = Vec::new();
        // SAFETY: as in forward.
        let r = unsafe {
            let src = std::slice::from_raw_parts(g.pinned_in, staged);
            cr::memcpy_htod_async(g.b.tokens, src, stream).map_err(drv("copy in"))?;
            let r = self.enqueue(&mut g, t, n, batch.max_seq_len(), Some(&mut events));
            cr::stream::synchronize(stream).map_err(drv("batch"))?;
            r
        };
        let mut out: Vec<(String, f64)> = Vec::new();
        for w in events.windows(2) {
            // SAFETY: both events recorded and complete.
            let ms = unsafe { cr::event::elapsed(w[0].1, w[1].1) }.unwrap_or(0.0) as f64;
            match out.iter_mut().find(|(n, _)| n == w[1].0) {
                Some(e) => e.1 += ms,
                None => out.push((w[1].0.to_string(), ms)),
            }
        }
        for (_, e) in events {
            // SAFETY: made above, used no more.
            let _ = unsafe { cr::event::destroy(e) };
        }
        r?;
        Ok(out)
    }
}
