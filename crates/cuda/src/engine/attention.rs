//! The attention launch: which kernel a batch takes, its grid and block, and
//! the arguments, for the float encoder and a quantized plan's loop alike.

use cudarc::driver::{sys as cu, DriverError};
use embedrt_core::ModelConfig;

use super::launch::launch_with_shared;
use super::options::WgmmaAttention;
use super::slot::Gpu;

/// A tensor-core attention kernel and its block shape: warps of
/// `16 * row_tiles` queries, at most `most_warps` a block.
#[derive(Clone, Copy)]
pub(super) struct TcAttention {
    pub(super) f: cu::CUfunction,
    pub(super) most_warps: usize,
    pub(super) row_tiles: usize,
    /// `attention_tc_short` and the head size, where chosen: the batches
    /// whose blocks have fewer than `most_warps` warps, with shared memory
    /// cut to the batch.
    pub(super) short: Option<(cu::CUfunction, usize)>,
    /// `attention_tc_pipe`, where chosen: it takes the batches of at most
    /// 128 tokens with more (sequence, head) items than one wave of `f`.
    pub(super) pipe: Option<PipeGrid>,
    /// A wgmma kernel of `attention_wg.cu` (Hopper, head size 64) and its
    /// dynamic shared memory, where chosen: it takes the full blocks
    /// (`most_warps` warps of one row tile: 128 queries, two warpgroups), the
    /// same grid and arguments as `f`.
    pub(super) wgmma: Option<(cu::CUfunction, u32)>,
}

impl TcAttention {
    /// (threads a block, queries a block) for a batch whose longest
    /// sequence has `max_len` tokens.
    pub(super) fn block(&self, max_len: usize) -> (usize, usize) {
        let rows = 16 * self.row_tiles;
        let warps = max_len.div_ceil(rows).clamp(1, self.most_warps);
        (32 * warps, rows * warps)
    }
}

/// Most warps a block of `attention_tc_pipe` (its `__launch_bounds__`).
pub(super) const PIPE_MOST_WARPS: usize = 8;

/// `attention_tc_pipe` and its launch shapes, fixed at load: for 1..=8
/// warps a block, the dynamic shared memory of the largest batch that block
/// size serves, and how many such blocks the GPU holds at once (its grid:
/// the blocks stay resident and take items from a counter).
#[derive(Clone, Copy)]
pub(super) struct PipeGrid {
    pub(super) f: cu::CUfunction,
    pub(super) by_warps: [(u32, u32); PIPE_MOST_WARPS],
}

/// Bytes of dynamic shared memory `attention_tc_pipe` lays out for a batch
/// whose longest sequence is `max_len` tokens, with `warps` warps a block
/// (the layout at the top of attention_pipe.cu): K and V tiles (2 stages of
/// up to 64 keys), Q rows for 2 items, bias values for 2 items.
pub(super) fn pipe_shared_bytes(warps: usize, max_len: usize, head_dim: usize) -> usize {
    let row = (head_dim + 8) * 2;
    let kt_rows = max_len.div_ceil(16).saturating_mul(16).min(64);
    let qspan = 16 * warps;
    let rel_stride = (max_len + qspan + 64 + 3) & !3;
    2 * 2 * kt_rows * row + 2 * qspan * row + 2 * rel_stride * 4
}

/// Bytes of dynamic shared memory `attention_tc_short` lays out (the top of
/// `attention_tc_body`) for blocks of `qspan` queries, which serve batches of
/// at most `qspan` tokens: two K and two V tiles of min(64, qspan) rows, and
/// the bias values a block reads (len + qspan + 62 at most).
pub(super) fn tc_short_shared_bytes(qspan: usize, head_dim: usize) -> usize {
    let row = (head_dim + 8) * 2;
    4 * qspan.min(64) * row + ((2 * qspan + 64 + 3) & !3) * 4
}

/// Bytes of dynamic shared memory a wgmma attention kernel lays out (the top
/// of `attention_wg_body`): 1,024 of alignment slack, Q (128 rows of 128
/// bytes) where it lives there, two stages of K and V tiles of 64 keys, the
/// bias values (ATT_REL_MAX floats).
pub(super) fn wg_shared_bytes(w: WgmmaAttention) -> usize {
    let q = match w {
        WgmmaAttention::QInRegisters => 0,
        WgmmaAttention::QShared | WgmmaAttention::QSharedOverlapped => 128 * 128,
    };
    1024 + q + 4 * 64 * 128 + 1024 * 4
}

/// The largest batch (longest sequence) a pipe block of `warps` warps
/// serves: 16 queries a warp, one block a (sequence, head).
pub(super) fn pipe_batch_len(warps: usize, max_seq: usize) -> usize {
    (16 * warps).min(max_seq)
}

/// What one attention launch needs besides the buffers.
#[derive(Debug)]
pub(super) struct AttentionLaunch {
    f: cu::CUfunction,
    grid: (u32, u32, u32),
    threads: u32,
    shared: u32,
    /// `attention_tc_pipe`'s two extra arguments: sequences and this batch's
    /// longest sequence.
    pipe: Option<(i32, i32)>,
    /// Launched early (programmatic dependent launch); the kernel choice
    /// depends on it (`Gpu::attention_launch`).
    early: bool,
    /// The CUDA-core kernel: it takes MPNet's bias as the bias and the bucket
    /// table; the tensor-core kernels take the load-time bias table.
    scalar: bool,
}

/// The buffers and model constants every attention kernel takes.
#[derive(Clone, Copy)]
pub(super) struct AttentionArgs {
    pub(super) qkv: u64,
    pub(super) offsets: u64,
    pub(super) heads: i32,
    pub(super) scale: f32,
    pub(super) rel_bias: u64,
    pub(super) bucket: u64,
    /// MPNet's bias per key - query and head (Buffers::bias_table), what the
    /// tensor-core kernels read; 0: none.
    pub(super) bias_table: u64,
    pub(super) max_len: i32,
    pub(super) ctx: u64,
    /// attention_tc_pipe's work counter (two ints, zero between launches).
    pub(super) counter: u64,
    /// The program is a quantized plan's: (8-bit context or 0, its scale),
    /// the two arguments its attention kernels take (ATT_QUANT_PARAMS).
    pub(super) quant: Option<(u64, f32)>,
}

impl Gpu {
    /// The attention launch for a batch on this slot: its tensor-core kernel
    /// where the options and the model allow it, else the CUDA-core one.
    /// `early`: the loop launches its kernels early (programmatic dependent
    /// launch); see [`AttentionLaunch::in_loop`].
    pub(super) fn attention_launch(
        &self,
        np: usize,
        max_len: usize,
        heads: usize,
        early: bool,
    ) -> AttentionLaunch {
        let tc = self.f.attention_tc.filter(|_| self.use_tc_attention);
        AttentionLaunch::in_loop(tc, self.f.attention, np, max_len, heads, early)
    }

    /// The attention kernels' arguments for a batch staged with its offsets
    /// at `offsets`, on this slot's buffers (no quantized context).
    pub(super) fn attention_args(
        &self,
        config: &ModelConfig,
        max_seq: usize,
        offsets: u64,
    ) -> AttentionArgs {
        let b = &self.b;
        AttentionArgs {
            qkv: b.qkv,
            offsets,
            heads: config.num_attention_heads as i32,
            scale: 1.0 / (config.head_dim() as f32).sqrt(),
            rel_bias: self.rel_bias,
            bucket: b.bucket,
            bias_table: b.bias_table,
            max_len: max_seq as i32,
            ctx: b.context,
            counter: b.attention_counter,
            quant: None,
        }
    }
}

impl AttentionLaunch {
    /// [`AttentionLaunch::new`] for a loop whose kernels launch `early` or
    /// not. `attention_tc_short` is launched plainly in either: launched
    /// early it was slower (run 27: fp16 W2 calls +4%, W3 +0.02 ms), plainly
    /// faster (run 28: fp16 W2 calls -2%, W3 -0.005..-0.013 ms).
    pub(super) fn in_loop(
        tc: Option<TcAttention>,
        scalar: cu::CUfunction,
        np: usize,
        max_len: usize,
        heads: usize,
        early: bool,
    ) -> AttentionLaunch {
        let launch = AttentionLaunch::new(tc, scalar, np, max_len, heads);
        let short = tc.and_then(|k| k.short).is_some_and(|(f, _)| f == launch.f);
        AttentionLaunch {
            early: early && !short,
            ..launch
        }
    }

    /// The kernel for a batch of `np` sequences, the longest `max_len`
    /// tokens: `tc` where it applies, else the CUDA-core `scalar` kernel (one
    /// thread a query, 32 a block).
    pub(super) fn new(
        tc: Option<TcAttention>,
        scalar: cu::CUfunction,
        np: usize,
        max_len: usize,
        heads: usize,
    ) -> AttentionLaunch {
        let Some(k) = tc else {
            let blocks = max_len.div_ceil(32) as u32;
            return AttentionLaunch {
                f: scalar,
                grid: (blocks, heads as u32, np as u32),
                threads: 32,
                shared: 0,
                pipe: None,
                early: false,
                scalar: true,
            };
        };
        let (threads, queries) = k.block(max_len);
        let query_blocks = max_len.div_ceil(queries);
        let warps = threads / 32;
        let pipe = k
            .pipe
            .filter(|_| max_len <= 16 * PIPE_MOST_WARPS)
            .and_then(|p| {
                let (shared, resident) = p.by_warps[warps - 1];
                // One wave or less: nothing to overlap; attention_tc's own blocks serve.
                (np * heads > resident as usize).then_some((p.f, shared, resident))
            });
        match pipe {
            Some((f, shared, resident)) => AttentionLaunch {
                f,
                grid: (resident, 1, 1),
                threads: threads as u32,
                shared,
                pipe: Some((np as i32, max_len as i32)),
                early: false,
                scalar: false,
            },
            None => {
                // Fewer warps than the most: a batch of at most `queries` tokens.
                let short = k.short.filter(|_| warps < k.most_warps);
                let full = k
                    .wgmma
                    .filter(|_| warps == k.most_warps && k.row_tiles == 1);
                let (f, shared) = match (short, full) {
                    (Some((f, head_dim)), _) => {
                        (f, tc_short_shared_bytes(queries, head_dim) as u32)
                    }
                    (None, Some((f, bytes))) => (f, bytes),
                    (None, None) => (k.f, 0),
                };
                AttentionLaunch {
                    f,
                    grid: (query_blocks as u32, heads as u32, np as u32),
                    threads: threads as u32,
                    shared,
                    pipe: None,
                    early: false,
                    scalar: false,
                }
            }
        }
    }

    /// Launches it on `stream` (early where it was made so).
    ///
    /// # Safety
    /// The buffers in `a` are live and sized for the batch this launch was
    /// made for; `a.quant` is Some exactly when the program is a quantized
    /// plan's; if early, as [`launch_with_shared`].
    pub(super) unsafe fn launch(
        &self,
        a: &AttentionArgs,
        stream: cu::CUstream,
    ) -> Result<(), DriverError> {
        let (block, shared, early) = ((self.threads, 1, 1), self.shared, self.early);
        let AttentionArgs {
            qkv,
            offsets,
            heads,
            scale,
            rel_bias,
            bucket,
            bias_table,
            max_len,
            ctx,
            counter,
            quant,
        } = *a;
        let l = |args: &mut [*mut std::ffi::c_void]| {
            launch_with_shared(self.f, self.grid, block, shared, stream, args, early)
        };
        match (self.pipe, quant) {
            (Some((np, batch_len)), Some((cq, cs))) => l(kargs![
                qkv, offsets, np, batch_len, heads, scale, bias_table, max_len, ctx, counter, cq,
                cs
            ]),
            (Some((np, batch_len)), None) => l(kargs![
                qkv, offsets, np, batch_len, heads, scale, bias_table, max_len, ctx, counter
            ]),
            (None, Some((cq, cs))) if self.scalar => l(kargs![
                qkv, offsets, heads, scale, rel_bias, bucket, max_len, ctx, cq, cs
            ]),
            (None, None) if self.scalar => l(kargs![
                qkv, offsets, heads, scale, rel_bias, bucket, max_len, ctx
            ]),
            (None, Some((cq, cs))) => l(kargs![
                qkv, offsets, heads, scale, bias_table, max_len, ctx, cq, cs
            ]),
            (None, None) => l(kargs![qkv, offsets, heads, scale, bias_table, max_len, ctx]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tc(pipe: bool) -> TcAttention {
        let mut by_warps = [(0, 0); PIPE_MOST_WARPS];
        for (i, s) in by_warps.iter_mut().enumerate() {
            *s = (1000 + i as u32, 264);
        }
        TcAttention {
            f: std::ptr::null_mut(),
            most_warps: 8,
            row_tiles: 1,
            short: None,
            pipe: pipe.then_some(PipeGrid {
                f: std::ptr::NonNull::dangling().as_ptr(),
                by_warps,
            }),
            wgmma: None,
        }
    }

    #[test]
    fn pipe_takes_batches_of_many_short_sequences_on_a_resident_grid() {
        // W1: 256 sequences of 128 tokens, 12 heads: 8 warps, 264 resident blocks.
        let w1 = AttentionLaunch::new(Some(tc(true)), std::ptr::null_mut(), 256, 128, 12);
        assert!(!w1.f.is_null());
        assert_eq!((w1.grid, w1.threads, w1.shared), ((264, 1, 1), 256, 1007));
        assert_eq!(w1.pipe, Some((256, 128)));
        // 1,024 sentences of at most 14 tokens: one warp a block.
        let short = AttentionLaunch::new(Some(tc(true)), std::ptr::null_mut(), 1024, 14, 12);
        assert_eq!(
            (short.grid, short.threads, short.shared),
            ((264, 1, 1), 32, 1000)
        );
    }

    #[test]
    fn one_wave_and_long_sequences_stay_with_attention_tc() {
        // One 16-token sentence: 12 items, less than a wave.
        let w3 = AttentionLaunch::new(Some(tc(true)), std::ptr::null_mut(), 1, 16, 12);
        assert!(w3.f.is_null() && w3.pipe.is_none());
        assert_eq!((w3.grid, w3.threads), ((1, 12, 1), 32));
        // 300 tokens: more than one block's queries.
        let long = AttentionLaunch::new(Some(tc(true)), std::ptr::null_mut(), 64, 300, 12);
        assert!(long.pipe.is_none());
        assert_eq!((long.grid, long.threads), ((3, 12, 64), 256));
        let plain = AttentionLaunch::new(Some(tc(false)), std::ptr::null_mut(), 256, 128, 12);
        assert_eq!(
            (plain.grid, plain.threads, plain.shared, plain.pipe),
            ((1, 12, 256), 256, 0, None)
        );
        let scalar = AttentionLaunch::new(None, std::ptr::null_mut(), 3, 100, 12);
        assert_eq!((scalar.grid, scalar.threads), ((4, 12, 3), 32));
    }

    #[test]
    fn short_batches_take_attention_tc_short_with_shared_memory_cut_to_them() {
        let short_f = std::ptr::NonNull::dangling().as_ptr();
        let k = TcAttention {
            short: Some((short_f, 64)),
            ..tc(false)
        };
        // Sentences of at most 14 tokens: one-warp blocks, 16-row tiles.
        let s = AttentionLaunch::new(Some(k), std::ptr::null_mut(), 1024, 14, 12);
        assert_eq!((s.f, s.grid, s.threads), (short_f, (1, 12, 1024), 32));
        assert_eq!(s.shared as usize, 4 * 16 * 144 + 96 * 4);
        // 4 warps (<= 64 tokens): full 64-row tiles, under the 48 KB static limit.
        let s = AttentionLaunch::new(Some(k), std::ptr::null_mut(), 574, 53, 12);
        assert_eq!(s.shared as usize, 4 * 64 * 144 + 192 * 4);
        assert!(tc_short_shared_bytes(16 * 7, 64) <= 48 * 1024);
        // A full block (W1) keeps attention_tc and its static memory.
        let w1 = AttentionLaunch::new(Some(k), std::ptr::null_mut(), 256, 128, 12);
        assert!(w1.f.is_null() && w1.shared == 0);
    }

    #[test]
    fn the_wgmma_kernel_takes_full_blocks_and_the_short_kernel_the_rest() {
        let short_f: cu::CUfunction = std::ptr::NonNull::dangling().as_ptr();
        let wg_f = (short_f as usize + 64) as cu::CUfunction;
        let k = TcAttention {
            short: Some((short_f, 64)),
            wgmma: Some((wg_f, 37_888)),
            ..tc(false)
        };
        let null = std::ptr::null_mut();
        // W1: 128 tokens, two warpgroups a (sequence, head), launched as the loop launches.
        let w1 = AttentionLaunch::in_loop(Some(k), null, 256, 128, 12, true);
        assert_eq!(
            (w1.f, w1.grid, w1.threads, w1.shared),
            (wg_f, (1, 12, 256), 256, 37_888)
        );
        assert!(w1.early && !w1.scalar);
        // Longer sequences: one block a 128 queries.
        let long = AttentionLaunch::new(Some(k), null, 64, 300, 12);
        assert_eq!((long.f, long.grid), (wg_f, (3, 12, 64)));
        // Short batches keep attention_tc_short.
        let s = AttentionLaunch::new(Some(k), null, 1024, 14, 12);
        assert_eq!((s.f, s.threads), (short_f, 32));
    }

    #[test]
    fn the_short_kernel_is_launched_plainly_in_early_loops_too() {
        let short_f = std::ptr::NonNull::dangling().as_ptr();
        let k = TcAttention {
            short: Some((short_f, 64)),
            ..tc(false)
        };
        let null = std::ptr::null_mut();
        for early in [true, false] {
            let s = AttentionLaunch::in_loop(Some(k), null, 1024, 14, 12, early);
            assert_eq!((s.f, s.early), (short_f, false));
        }
        // Full blocks keep attention_tc, launched as the loop launches.
        let w1 = AttentionLaunch::in_loop(Some(k), null, 256, 128, 12, true);
        assert!(w1.f.is_null() && w1.early);
        let w1 = AttentionLaunch::in_loop(Some(k), null, 256, 128, 12, false);
        assert!(w1.f.is_null() && !w1.early);
    }

    #[test]
    fn pipe_shared_memory_fits_two_blocks_an_h200_multiprocessor() {
        // K, V: 2 stages x 64 rows x 144 bytes each; Q: 2 x 128 rows; bias: 2 x 320 floats.
        assert_eq!(pipe_shared_bytes(8, 128, 64), 36_864 + 36_864 + 2_560);
        assert!(2 * (pipe_shared_bytes(8, 128, 64) + 1024) <= 228 * 1024);
        // Short batches take short tiles: a block for 16-token sentences is small.
        assert_eq!(
            pipe_shared_bytes(1, 16, 64),
            4 * 16 * 144 + 2 * 16 * 144 + 2 * 96 * 4
        );
        assert_eq!(pipe_batch_len(3, 512), 48);
        assert_eq!(pipe_batch_len(8, 384), 128);
        assert_eq!(pipe_batch_len(8, 100), 100);
    }
}
