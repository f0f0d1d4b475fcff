//! CUDA graphs: batches of up to [`GRAPH_MAX_TOKENS`] tokens run as one graph
//! launch (copy in, the encoder, copy out), captured per padded shape on
//! first use; single short sentences' graphs are captured at load.

use cudarc::driver::{result as cr, sys as cu};
use embedrt_core::Result;

use super::slot::Gpu;
use super::{drv, CudaEngine};
use crate::plan::staged_u32s;

/// Batches up to this many tokens run as one CUDA graph launch.
const GRAPH_MAX_TOKENS: usize = 2048;

impl CudaEngine {
    /// Single short sentences are the latency case: their graphs are
    /// captured at load so the first request costs one launch too.
    pub(super) fn capture_small_graphs(&self) -> Result<()> {
        for slot in &self.slots {
            let mut g = Self::bound(slot)?;
            if !g.use_graphs {
                return Ok(());
            }
            for tp in [16, 32, 64, 128] {
                if tp <= self.max.seq {
                    self.graph_for(&mut g, tp, 1)?;
                }
            }
        }
        Ok(())
    }

    /// Token count and sequence count a batch runs at: padded up to a graph
    /// bucket for small batches (one graph launch), exact otherwise.
    pub(super) fn run_shape(&self, g: &Gpu, t: usize, n: usize) -> (usize, usize, bool) {
        if !g.use_graphs || t > GRAPH_MAX_TOKENS {
            return (t, n, false);
        }
        let tp = if t <= 256 {
            t.next_multiple_of(16)
        } else {
            t.next_multiple_of(64)
        };
        let np = n.next_power_of_two();
        if tp > self.max_tokens || np > self.max.batch {
            return (t, n, false);
        }
        (tp, np, true)
    }

    /// The graph for (tp, np), captured on first use.
    pub(super) fn graph_for(&self, g: &mut Gpu, tp: usize, np: usize) -> Result<cu::CUgraphExec> {
        if let Some(&e) = g.graphs.get(&(tp, np)) {
            return Ok(e);
        }
        let stream = g.stream;
        let max_len = tp.min(self.max.seq);
        // SAFETY: capture on our own stream; ended on every path.
        unsafe {
            cr::stream::begin_capture(
                stream,
                cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(drv("graph capture"))?;
            // Copy in (ids | positions | offsets as staged for (tp, np)),
            // the encoder, copy out of the np pooled rows: all in the graph.
            let enq = (|| -> Result<()> {
                let src = std::slice::from_raw_parts(g.pinned_in, staged_u32s(tp, np));
                cr::memcpy_htod_async(g.b.tokens, src, stream).map_err(drv("copy in"))?;
                self.enqueue(g, tp, np, max_len, None)?;
                let h = self.config.hidden_size;
                let out = std::slice::from_raw_parts_mut(g.pinned_out, np * h);
                cr::memcpy_dtoh_async(out, g.b.pooled, stream).map_err(drv("copy out"))
            })();
            let graph = cr::stream::end_capture(stream);
            enq?;
            let graph = graph.map_err(drv("graph capture"))?;
            let exec = cr::graph::instantiate(graph, cu::CUgraphInstantiate_flags(0));
            let _ = cr::graph::destroy(graph);
            let exec = exec.map_err(drv("graph instantiate"))?;
            g.graphs.insert((tp, np), exec);
            Ok(exec)
        }
    }
}
