// ---------------------------------------------------------------------------
// Persistent, software-pipelined tensor-core attention (fp16, sm_80+; EMBEDRT_ATTENTION=pipe).
// attention_tc's arithmetic (att_tile: mma.m16n8k16, online softmax in the exp2 domain, the
// MPNet bias from shared memory, att_store), arranged so that loads overlap MMAs across work
// items. attention_tc starts each block by loading Q into registers and gathering its bias
// values, waiting on both, and ends it with nothing loading: at 128 tokens a block's loads
// and its arithmetic add up (docs/perf/gpu.md, run 26), and short sequences are all waiting.
// Here blocks stay resident and take work items, one (sequence, head) each (batches of at
// most 128 tokens), from a counter; the key tiles of all of a block's items form one
// stream, and while tile t is computed, tile t + 1 is in
// flight by cp.async, with its item's Q rows and MPNet bias values when it starts an item.
// The bias values come from a table made once at load (rel_table: [heads, 2 max_len - 1]
// floats, the bias of every key - query already times log2 e), so an item's are one
// contiguous slice, copied like the rest instead of gathered through the bucket table.
// Dynamic shared memory (pipe_shared_bytes in engine/attention.rs computes the same):
//   K, V   2 stages x kt_rows rows (kt_rows = min(64, batch_max_len rounded up to 16))
//   Q      2 items (by item parity) x 16 * warps rows
//   bias   2 items x rel_stride floats
// Q and the bias values are kept per item, not per stage: the next item's are written while
// the current item, of the other parity, is read; the previous one (same parity) is done.
#if EMBEDRT_FP16 && (HEAD_DIM % 16 == 0) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
typedef unsigned short PipeRow[KPAD];

// Floats of bias values per item: the largest index att_tile reads (len + 16 * warps + 62,
// partial tiles included) rounded up to 4.
__device__ __forceinline__ int pipe_rel_stride(int batch_max_len, int qspan) {
    return (batch_max_len + qspan + 64 + 3) & ~3;
}

// Where a block is in its stream of key tiles.
struct PipeCursor {
    int item;  // seq * heads + head; >= n_items: none left
    int k0;    // the tile's first key
    int j;     // items of this block before this one (the buffers' parity)
    int start, len, head;
};

// The block's items: the first is blockIdx.x, the k-th after it the k-th claim from the
// work counter (claims come in order: gridDim.x, gridDim.x + 1, ...), so blocks that start
// late, behind another slot's kernels, take fewer items instead of holding up the rest.
// claims[k & 1] holds item k from the step before any cursor needs it (see the loop).
struct PipeWork {
    const int* offsets;
    const volatile int* claims;
    int n_items, heads;

    __device__ __forceinline__ void enter(PipeCursor& c, int item) const {
        c.item = item;
        c.k0 = 0;
        if (item < n_items) {
            const int seq = item / heads;
            c.start = offsets[seq];
            c.len = offsets[seq + 1] - c.start;
            c.head = item % heads;
        }
    }

    __device__ __forceinline__ void next(PipeCursor& c) const {
        if (c.item >= n_items) return;
        c.k0 += ATT_KT;
        if (c.k0 >= c.len) {
            ++c.j;
            enter(c, claims[c.j & 1]);
        }
    }
};

template <bool BIAS>
__device__ __forceinline__ void attention_pipe_body(
    const st_t* __restrict__ qkv, const int* __restrict__ offsets, int n_seqs, int batch_max_len,
    int heads, float scale, const float* __restrict__ rel_table, int max_len,
    st_t* __restrict__ ctx, int* __restrict__ counter ATT_QUANT_PARAMS) {
    pdl_begin();
    extern __shared__ __align__(16) unsigned char pipe_smem[];
    __shared__ int claims[2];
    const int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP;
    const int g = lane >> 2, tig = lane & 3;
    const int warps = blockDim.x / WARP, qspan = 16 * warps;
    const int stride = 3 * HIDDEN;
    const int kt_rows = min(ATT_KT, ((batch_max_len + 15) / 16) * 16);
    const int rel_stride = pipe_rel_stride(batch_max_len, qspan);
    const PipeWork work = {offsets, claims, n_seqs * heads, heads};
    PipeRow* ks = (PipeRow*)pipe_smem;
    PipeRow* vs = ks + 2 * kt_rows;
    PipeRow* qs = vs + 2 * kt_rows;
    float* rel = (float*)(qs + 2 * qspan);

    // Issues the cp.async of c's tile into `stage` (and of its item's Q rows when the tile
    // starts the item) as one commit group; an empty group when the stream has ended, so
    // every step waits on the same count.
    auto load = [&](const PipeCursor& c, int stage) {
        if (c.item < work.n_items) {
            const int rows = min(ATT_KT, ((c.len - c.k0 + 15) / 16) * 16);
            for (int x = tid; x < rows * (HEAD_DIM / 8); x += blockDim.x) {
                const int r = x / (HEAD_DIM / 8), d8 = (x % (HEAD_DIM / 8)) * 8;
                const bool valid = c.k0 + r < c.len;
                const st_t* src = qkv + (size_t)(c.start + (valid ? c.k0 + r : 0)) * stride +
                                  HIDDEN + c.head * HEAD_DIM + d8;
                cp_async16(&ks[stage * kt_rows + r][d8], src, valid);
                cp_async16(&vs[stage * kt_rows + r][d8], src + HIDDEN, valid);
            }
            if (c.k0 == 0) {
                const int rows_q = ((c.len + 15) / 16) * 16;
                PipeRow* q = qs + (c.j & 1) * qspan;
                for (int x = tid; x < rows_q * (HEAD_DIM / 8); x += blockDim.x) {
                    const int r = x / (HEAD_DIM / 8), d8 = (x % (HEAD_DIM / 8)) * 8;
                    const bool valid = r < c.len;
                    const st_t* src = qkv + (size_t)(c.start + (valid ? r : 0)) * stride +
                                      c.head * HEAD_DIM + d8;
                    cp_async16(&q[r][d8], src, valid);
                }
                // Bias values for key - query = i - (qspan - 1), i < len + qspan - 1.
                if (rel_table) {
                    float* dst = rel + (c.j & 1) * rel_stride;
                    const float* row = rel_table + (size_t)c.head * (2 * max_len - 1);
                    const int lo = max_len - 1 - (qspan - 1);
                    for (int i = tid; i < c.len + qspan - 1; i += blockDim.x)
                        cp_async4(&dst[i], &row[min(max(lo + i, 0), 2 * max_len - 2)]);
                }
            }
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    // Every (sequence, head) is one item: the host runs this kernel for batches of at most
    // 16 * warps tokens, so one block's queries cover a sequence.
    const int claim_base = gridDim.x;
    if (tid == 0) claims[1] = claim_base + atomicAdd(counter, 1);
    PipeCursor cc;  // the tile computed
    cc.j = 0;
    work.enter(cc, blockIdx.x);
    load(cc, 0);

    const float qk_scale = scale * ATT_LOG2E;
    // One ldmatrix lane pattern gives the warp's Q rows as the mma's A fragments.
    const int q_row = warp * 16 + (lane & 15), q_col = (lane >> 4) * 8;
    unsigned qa[1][HEAD_DIM / 16][4];
    float o[1][HEAD_DIM / 8][4];
    AttRows st[1];
    for (int stage = 0; cc.item < work.n_items; stage ^= 1) {
        asm volatile("cp.async.wait_group 0;\n" ::);
        // Tile t (and Q, bias values) landed for every thread; tile t - 1's stage is free.
        __syncthreads();
        // Item j + 2's claim goes where item j's was: item j's was read (by the tile loaded
        // ahead and by cc) before this step's barrier, and item j + 2 is needed from the next
        // step on at the earliest (when this step's item j ends in one tile and j + 1 too).
        if (tid == 0 && cc.k0 == 0) claims[cc.j & 1] = claim_base + atomicAdd(counter, 1);
        const int qw = warp * 16, r0 = qw + g;
        const bool active = qw < cc.len;
        if (active && cc.k0 == 0) {
            const PipeRow* q = qs + (cc.j & 1) * qspan;
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; ++kk) ldsm_x4(qa[0][kk], &q[q_row][q_col + kk * 16]);
#pragma unroll
            for (int nd = 0; nd < HEAD_DIM / 8; ++nd)
                o[0][nd][0] = o[0][nd][1] = o[0][nd][2] = o[0][nd][3] = 0.f;
            st[0] = {ATT_MASKED, ATT_MASKED, 0.f, 0.f};
        }
        {
            // The tile after this one, found again rather than kept: fewer live registers.
            PipeCursor nx = cc;
            work.next(nx);
            load(nx, stage ^ 1);
        }
        if (active) {
            const float* rel0 =
                rel + (cc.j & 1) * rel_stride + (cc.k0 + 2 * tig - r0 + qspan - 1);
            const int left = cc.len - cc.k0;
            const PipeRow* kt = ks + stage * kt_rows;
            const PipeRow* vt = vs + stage * kt_rows;
            if (left >= ATT_KT)
                att_tile<1, true, BIAS>(qa, o, st, kt, vt, rel0, left, qk_scale, lane);
            else
                att_tile<1, false, BIAS>(qa, o, st, kt, vt, rel0, left, qk_scale, lane);
            if (left <= ATT_KT)
                att_store(o[0], st[0], r0, r0 + 8, cc.len, cc.start, cc.head, tig, 1.f,
                          ctx ATT_QUANT_ARGS);
        }
        work.next(cc);
    }
    // The last block out resets the counter for the next launch (graphs replay it as is).
    if (tid == 0) {
        __threadfence();
        if (atomicAdd(counter + 1, 1) == (int)gridDim.x - 1) {
            counter[0] = 0;
            counter[1] = 0;
            __threadfence();
        }
    }
}

// Up to 8 warps (16 queries each) a block, registers capped for 2 blocks an SM; the host
// sizes the grid to the blocks that stay resident (occupancy at this batch's shared memory).
extern "C" __global__ void __launch_bounds__(256, 2)
attention_tc_pipe(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int n_seqs,
                  int batch_max_len, int heads, float scale, const float* __restrict__ rel_table,
                  int max_len, st_t* __restrict__ ctx, int* __restrict__ counter ATT_QUANT_PARAMS) {
    if (rel_table)
        attention_pipe_body<true>(qkv, offsets, n_seqs, batch_max_len, heads, scale, rel_table,
                                  max_len, ctx, counter ATT_QUANT_ARGS);
    else
        attention_pipe_body<false>(qkv, offsets, n_seqs, batch_max_len, heads, scale, rel_table,
                                   max_len, ctx, counter ATT_QUANT_ARGS);
}
#endif
