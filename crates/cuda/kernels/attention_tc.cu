// ---------------------------------------------------------------------------
// Tensor-core fused attention (fp16, sm_80+), FlashAttention-2 style, over packed unpadded
// sequences. qkv is [tokens, 3*HIDDEN] (Q | K | V), ctx is [tokens, HIDDEN].
// Grid: (query tiles of 16*warps, heads, sequences). Each warp owns 16 query rows; the
// block shares K and V tiles of 64 keys, streamed through shared memory with cp.async
// (double-buffered) and read as mma fragments with ldmatrix. S = Q K^T and O += P V run on
// mma.m16n8k16 with fp32 accumulation; the softmax is online, in fp32 and in the exp2
// domain (scale * log2 e folded into one multiply).
// MPNet's relative position bias depends only on key - query: each block first copies the
// value for every key - query it will meet from the table made at load (rel_table:
// [heads, 2 max_len - 1] fp32, already times log2 e) into shared memory (rel_fetch), so a
// score costs one shared load for its bias; no
// [batch, heads, seq, seq] tensor exists anywhere. (Gathering it through the bucket table
// and the [buckets, heads] bias cost two dependent global loads before the first MMA.)
#if EMBEDRT_FP16 && (HEAD_DIM % 16 == 0) && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define ATT_KT 64
#define KPAD (HEAD_DIM + 8)
// Bias values a block can meet: len + 16 * warps - 1, plus reads past the sequence end in
// a partial tile (discarded). The host uses this kernel for MPNet only up to 768 tokens.
#define ATT_REL_MAX 1024
#define ATT_LOG2E 1.4426950408889634f
#define ATT_MASKED (-1e30f)

__device__ __forceinline__ float exp2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ void cp_async4(void* dst, const void* src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(src));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
}

// Four 8x8 fp16 matrices from shared memory; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// rel_s[i] = the bias (times log2 e) of key - query = i - qlast, for i < n, from this head's
// row of the load-time table (indices clamped as the bucket table's are). ASYNC: by cp.async
// into the group committed next (attention_tc_short: its one-warp blocks wait on nothing
// else, W3 -0.006 ms, W2's short calls' attention -5..-12%, run 29); else plain loads while
// tile 0 is in flight (attention_tc: cp.async made W1's attention 2-3% slower, run 29; the
// opt-in tc2 / tc4 keep cp.async, where plain loads cost a spill).
template <bool ASYNC>
__device__ __forceinline__ void rel_fetch(float* rel_s, const float* __restrict__ rel_table,
                                          int head, int max_len, int qlast, int n, int tid,
                                          int threads) {
    const float* row = rel_table + (size_t)head * (2 * max_len - 1);
    const int lo = max_len - 1 - qlast;
    for (int i = tid; i < n; i += threads) {
        const float* src = &row[min(max(lo + i, 0), 2 * max_len - 2)];
        if (ASYNC)
            cp_async4(&rel_s[i], src);
        else
            rel_s[i] = *src;
    }
}

struct AttRows {
    float m0, m1, l0, l1;  // running max (exp2 domain) and sum for rows g and g + 8
};

// The online softmax of one row tile's scores for a tile of up to 8 NJ keys (64: attention_tc
// and attention_wg; 32: att2_tile) (s: the mma.m16n8k16 accumulator layout, which is also
// wgmma's for a 64-key N): scale and bias
// (rel: as att_tile's rel0), masking past keys_left (!FULL), the running max and sum, O
// rescaled; s becomes P (unnormalized, fp32), ready to pack as the next MMA's A operand.
// DEFER_O: O is still being written by an MMA in flight (attention_wg's overlapped tiles):
// its factors for rows g and g + 8 are returned in c_out and the caller applies them.
template <bool FULL, bool BIAS, bool DEFER_O = false, int NJ = 8>
__device__ __forceinline__ void att_softmax(float (&s)[NJ][4], float (&o)[HEAD_DIM / 8][4],
                                            AttRows& st, const float* rel, int keys_left,
                                            float qk_scale, int tig, float* c_out = nullptr) {
    float mx0 = ATT_MASKED, mx1 = ATT_MASKED;
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float v = s[j][e] * qk_scale;
            if (BIAS) v += rel[j * 8 + (e & 1) - (e < 2 ? 0 : 8)];
            if (!FULL && j * 8 + tig * 2 + (e & 1) >= keys_left) v = ATT_MASKED;
            s[j][e] = v;
        }
        mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
        mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
    }
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    const float mn0 = fmaxf(st.m0, mx0), mn1 = fmaxf(st.m1, mx1);
    const float c0 = exp2_approx(st.m0 - mn0), c1 = exp2_approx(st.m1 - mn1);
    st.l0 *= c0;
    st.l1 *= c1;
    if (DEFER_O) {
        c_out[0] = c0;
        c_out[1] = c1;
    } else {
#pragma unroll
        for (int nd = 0; nd < HEAD_DIM / 8; ++nd) {
            o[nd][0] *= c0;
            o[nd][1] *= c0;
            o[nd][2] *= c1;
            o[nd][3] *= c1;
        }
    }
#pragma unroll
    for (int j = 0; j < NJ; ++j) {
        s[j][0] = exp2_approx(s[j][0] - mn0);
        s[j][1] = exp2_approx(s[j][1] - mn0);
        s[j][2] = exp2_approx(s[j][2] - mn1);
        s[j][3] = exp2_approx(s[j][3] - mn1);
        st.l0 += s[j][0] + s[j][1];
        st.l1 += s[j][2] + s[j][3];
    }
    st.m0 = mn0;
    st.m1 = mn1;
}

// One tile of up to 64 keys for one warp's MT row tiles of 16 queries (MT = 1: attention_tc;
// 2: attention_tc_mt2, where every K and V fragment loaded feeds two MMAs and the two tiles'
// chains interleave). FULL: all 64 keys are in the sequence (no masking); BIAS: add the
// relative position bias (rel0: bias of row g of tile 0 at the tile's key 2 * tig, already
// times log2 e; row g + 8 is 8 entries lower, tile t 16 t lower).
template <int MT, bool FULL, bool BIAS>
__device__ __forceinline__ void att_tile(const unsigned (&qa)[MT][HEAD_DIM / 16][4],
                                         float (&o)[MT][HEAD_DIM / 8][4], AttRows (&st)[MT],
                                         const unsigned short (*ks)[KPAD],
                                         const unsigned short (*vs)[KPAD], const float* rel0,
                                         int keys_left, float qk_scale, int lane) {
    const int tig = lane & 3, mi = lane >> 3, mr = lane & 7;
    const int nb = FULL ? 8 : min(8, (keys_left + 7) / 8);
    float s[MT][8][4];
#pragma unroll
    for (int j = 0; j < 8; j += 2) {
#pragma unroll
        for (int t = 0; t < MT; ++t) {
            s[t][j][0] = s[t][j][1] = s[t][j][2] = s[t][j][3] = 0.f;
            s[t][j + 1][0] = s[t][j + 1][1] = s[t][j + 1][2] = s[t][j + 1][3] = 0.f;
        }
        // Key blocks j and j + 1 lie in one 16-row group, loaded whole (zeros past the end).
        if (FULL || j < nb) {
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
                unsigned b[4];
                ldsm_x4(b, &ks[(j + (mi >> 1)) * 8 + mr][kk * 16 + (mi & 1) * 8]);
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    mma16816(s[t][j], qa[t][kk], b[0], b[1]);
                    mma16816(s[t][j + 1], qa[t][kk], b[2], b[3]);
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MT; ++t)
        att_softmax<FULL, BIAS>(s[t], o[t], st[t], rel0 - 16 * t, keys_left, qk_scale, tig);
    // O += P V: P is the A operand straight from registers, 16 keys per MMA.
#pragma unroll
    for (int kt = 0; kt < 4; ++kt) {
        if (FULL || 2 * kt < nb) {
            unsigned pa[MT][4];
#pragma unroll
            for (int t = 0; t < MT; ++t) {
                pa[t][0] = pack2(s[t][2 * kt][0], s[t][2 * kt][1]);
                pa[t][1] = pack2(s[t][2 * kt][2], s[t][2 * kt][3]);
                pa[t][2] = pack2(s[t][2 * kt + 1][0], s[t][2 * kt + 1][1]);
                pa[t][3] = pack2(s[t][2 * kt + 1][2], s[t][2 * kt + 1][3]);
            }
#pragma unroll
            for (int nd = 0; nd < HEAD_DIM / 8; nd += 2) {
                unsigned b[4];
                ldsm_x4_trans(b, &vs[kt * 16 + (mi & 1) * 8 + mr][(nd + (mi >> 1)) * 8]);
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    mma16816(o[t][nd], pa[t], b[0], b[1]);
                    mma16816(o[t][nd + 1], pa[t], b[2], b[3]);
                }
            }
        }
    }
}

// Rows a0 and a1 (g and g + 8 of a row tile) of a warp's finished output: the row sums
// reduced over the quad, O / l (times vs_scale) written to ctx as fp16, or to ctx_q as 8-bit
// codes where a quantized plan's attn-out GEMM reads them.
__device__ __forceinline__ void att_store(const float (&o)[HEAD_DIM / 8][4], const AttRows& st,
                                          int a0, int a1, int len, int start, int head, int tig,
                                          float vs_scale, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    float l0 = st.l0, l1 = st.l1;
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    const float i0 = vs_scale / l0, i1 = vs_scale / l1;
#if EMBEDRT_QUANT
    if (ctx_q) {
#pragma unroll
        for (int nd = 0; nd < HEAD_DIM / 8; ++nd) {
            const int d = head * HEAD_DIM + nd * 8 + tig * 2;
            if (a0 < len)
                *(unsigned short*)&ctx_q[(size_t)(start + a0) * HIDDEN + d] =
                    (unsigned short)quant2(o[nd][0] * i0, o[nd][1] * i0, ctx_scale);
            if (a1 < len)
                *(unsigned short*)&ctx_q[(size_t)(start + a1) * HIDDEN + d] =
                    (unsigned short)quant2(o[nd][2] * i1, o[nd][3] * i1, ctx_scale);
        }
        return;
    }
#endif
#pragma unroll
    for (int nd = 0; nd < HEAD_DIM / 8; ++nd) {
        const int d = head * HEAD_DIM + nd * 8 + tig * 2;
        if (a0 < len)
            *(unsigned*)&ctx[(size_t)(start + a0) * HIDDEN + d] =
                pack2(o[nd][0] * i0, o[nd][1] * i0);
        if (a1 < len)
            *(unsigned*)&ctx[(size_t)(start + a1) * HIDDEN + d] =
                pack2(o[nd][2] * i1, o[nd][3] * i1);
    }
}

#if EMBEDRT_QUANT == 2
// cp.async of 8 bytes (fp8 rows: 8 elements), zero-filled when !valid.
__device__ __forceinline__ void cp_async8(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(smem_u32(dst)), "l"(src),
                 "r"(valid ? 8 : 0));
}
// Two e4m3 codes (element 0 in the low byte) as an fp16 pair: exact, no scale applied.
__device__ __forceinline__ unsigned e4m3x2_to_half2(unsigned short codes) {
    unsigned h;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"(codes));
    return h;
}
#endif

// The body of attention_tc (MT = 1 row tile of 16 queries a warp), attention_tc_mt2 (MT = 2)
// and, with Q8, of attention_tc_q8: Q, K, V as e4m3 codes (an fp8
// plan's QKV GEMM writes them, `attention_inputs: fp8`), read at half the bytes. The codes
// widen exactly to fp16 for the same mma; their one scale s (the layer's qkv.output scale)
// folds into the softmax scale (s^2) and the final 1 / l (s). K and V tiles land in a
// double-buffered 8-bit staging area by cp.async and are widened into one fp16 tile per
// step (the static shared memory would not hold two fp16 tiles beside the staging).
template <bool Q8, int MT, bool SHORT = false>
__device__ __forceinline__ void attention_tc_body(const void* __restrict__ qkv_in, float qkv_scale,
                                                  const int* __restrict__ offsets, int heads,
                                                  float scale, const float* __restrict__ rel_table,
                                                  int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    pdl_begin();
    const int seq = blockIdx.z, head = blockIdx.y;
    const int start = offsets[seq];
    const int len = offsets[seq + 1] - start;
    const int warps = blockDim.x / WARP;
    const int qspan = 16 * MT * warps;
    const int q0 = blockIdx.x * qspan;
    if (q0 >= len) return;
    const int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP;
    const int g = lane >> 2, tig = lane & 3;
    const int stride = 3 * HIDDEN;
    const st_t* qkv = (const st_t*)qkv_in;
    const unsigned char* qkv8 = (const unsigned char*)qkv_in;

    // K and V tiles (two each, one for Q8) and the bias values. SHORT (attention_tc_short)
    // takes them from dynamic shared memory cut to the batch (the host's
    // tc_short_shared_bytes): it runs blocks of fewer than 8 warps, which serve batches of at
    // most qspan tokens, so its tiles need at most qspan rows. attention_tc's 41 KB of static
    // tiles keep batches of one-warp blocks (sentences <= 16 tokens) at five blocks an SM.
    typedef unsigned short KRow[KPAD];
    KRow* ks;
    KRow* vs;
    float* rel_s;
    int kt_rows;
    if constexpr (SHORT) {
        extern __shared__ __align__(16) unsigned char att_smem[];
        kt_rows = min(ATT_KT, qspan);
        ks = (KRow*)att_smem;
        vs = ks + 2 * kt_rows;
        rel_s = (float*)(vs + 2 * kt_rows);
    } else {
        constexpr int TILES = Q8 ? 1 : 2;
        __shared__ __align__(16) unsigned short ks_s[TILES * ATT_KT][KPAD];
        __shared__ __align__(16) unsigned short vs_s[TILES * ATT_KT][KPAD];
        __shared__ float rel_st[ATT_REL_MAX];
        ks = ks_s;
        vs = vs_s;
        rel_s = rel_st;
        kt_rows = ATT_KT;
    }
#if EMBEDRT_QUANT == 2
    // 8-bit K and V rows as they arrive, two tiles.
    constexpr int STAGES = Q8 ? 2 : 1;
    constexpr int STAGE_KT = Q8 ? ATT_KT : 1;
    __shared__ __align__(16) unsigned char ks8[STAGES][STAGE_KT][HEAD_DIM];
    __shared__ __align__(16) unsigned char vs8[STAGES][STAGE_KT][HEAD_DIM];
#endif

    // Keys [k0, k0 + rows) of a tile, rows rounded up to 16 (what the MMAs read); keys past
    // the sequence are zero-filled (cp.async src-size 0).
    auto tile_rows = [&](int k0) { return min(ATT_KT, ((len - k0 + 15) / 16) * 16); };
    auto load_tile = [&](int k0, int buf) {
        const int rows = tile_rows(k0);
        for (int c = tid; c < rows * (HEAD_DIM / 8); c += blockDim.x) {
            const int j = c / (HEAD_DIM / 8), d8 = (c % (HEAD_DIM / 8)) * 8;
            const bool valid = k0 + j < len;
            const size_t row = (size_t)(start + (valid ? k0 + j : 0)) * stride;
            if constexpr (Q8) {
#if EMBEDRT_QUANT == 2
                const unsigned char* src = qkv8 + row + HIDDEN + head * HEAD_DIM + d8;
                cp_async8(&ks8[buf][j][d8], src, valid);
                cp_async8(&vs8[buf][j][d8], src + HIDDEN, valid);
#endif
            } else {
                const st_t* src = qkv + row + HIDDEN + head * HEAD_DIM + d8;
                cp_async16(&ks[buf * kt_rows + j][d8], src, valid);
                cp_async16(&vs[buf * kt_rows + j][d8], src + HIDDEN, valid);
            }
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    // Q8: widens the chunks this thread copied (its own cp.async writes are visible to it
    // after the wait) into the fp16 tile.
    auto widen_tile = [&](int k0, int buf) {
#if EMBEDRT_QUANT == 2
        const int rows = tile_rows(k0);
        for (int c = tid; c < rows * (HEAD_DIM / 8); c += blockDim.x) {
            const int j = c / (HEAD_DIM / 8), d8 = (c % (HEAD_DIM / 8)) * 8;
            const uint2 k8 = *(const uint2*)&ks8[buf][j][d8];
            const uint2 v8 = *(const uint2*)&vs8[buf][j][d8];
            *(uint4*)&ks[j][d8] =
                make_uint4(e4m3x2_to_half2(k8.x & 0xffff), e4m3x2_to_half2(k8.x >> 16),
                           e4m3x2_to_half2(k8.y & 0xffff), e4m3x2_to_half2(k8.y >> 16));
            *(uint4*)&vs[j][d8] =
                make_uint4(e4m3x2_to_half2(v8.x & 0xffff), e4m3x2_to_half2(v8.x >> 16),
                           e4m3x2_to_half2(v8.y & 0xffff), e4m3x2_to_half2(v8.y >> 16));
        }
#endif
    };
    // rel_s[i]: bias (times log2 e) for key - query = i - (q0 + qspan - 1).
    if (SHORT && rel_table)
        rel_fetch<true>(rel_s, rel_table, head, max_len, q0 + qspan - 1, len + qspan - 1, tid,
                        blockDim.x);
    load_tile(0, 0);
    if (!SHORT && rel_table)
        rel_fetch<false>(rel_s, rel_table, head, max_len, q0 + qspan - 1, len + qspan - 1, tid,
                         blockDim.x);

    const int qw = q0 + warp * 16 * MT;
    // Rows g and g + 8 of each of the warp's MT row tiles.
    int r0[MT], r1[MT];
    unsigned qa[MT][HEAD_DIM / 16][4];
#pragma unroll
    for (int t = 0; t < MT; ++t) {
        r0[t] = qw + 16 * t + g;
        r1[t] = r0[t] + 8;
        const size_t row0 = (size_t)(start + min(r0[t], len - 1)) * stride + head * HEAD_DIM;
        const size_t row1 = (size_t)(start + min(r1[t], len - 1)) * stride + head * HEAD_DIM;
        const bool in0 = r0[t] < len, in1 = r1[t] < len;
        if constexpr (Q8) {
#if EMBEDRT_QUANT == 2
            const unsigned short* q_0 = (const unsigned short*)(qkv8 + row0);
            const unsigned short* q_1 = (const unsigned short*)(qkv8 + row1);
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
                qa[t][kk][0] = in0 ? e4m3x2_to_half2(q_0[kk * 8 + tig]) : 0u;
                qa[t][kk][1] = in1 ? e4m3x2_to_half2(q_1[kk * 8 + tig]) : 0u;
                qa[t][kk][2] = in0 ? e4m3x2_to_half2(q_0[kk * 8 + 4 + tig]) : 0u;
                qa[t][kk][3] = in1 ? e4m3x2_to_half2(q_1[kk * 8 + 4 + tig]) : 0u;
            }
#endif
        } else {
            const unsigned* q_0 = (const unsigned*)(qkv + row0);
            const unsigned* q_1 = (const unsigned*)(qkv + row1);
#pragma unroll
            for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
                qa[t][kk][0] = in0 ? q_0[kk * 8 + tig] : 0u;
                qa[t][kk][1] = in1 ? q_1[kk * 8 + tig] : 0u;
                qa[t][kk][2] = in0 ? q_0[kk * 8 + 4 + tig] : 0u;
                qa[t][kk][3] = in1 ? q_1[kk * 8 + 4 + tig] : 0u;
            }
        }
    }
    float o[MT][HEAD_DIM / 8][4];
    AttRows st[MT];
#pragma unroll
    for (int t = 0; t < MT; ++t) {
#pragma unroll
        for (int nd = 0; nd < HEAD_DIM / 8; ++nd)
            o[t][nd][0] = o[t][nd][1] = o[t][nd][2] = o[t][nd][3] = 0.f;
        st[t] = {ATT_MASKED, ATT_MASKED, 0.f, 0.f};
    }
    const float qk_scale = scale * ATT_LOG2E * (Q8 ? qkv_scale * qkv_scale : 1.f);

    for (int k0 = 0, it = 0; k0 < len; k0 += ATT_KT, ++it) {
        const int buf = it & 1;
        if (k0 + ATT_KT < len) {
            load_tile(k0 + ATT_KT, buf ^ 1);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        // The fp16 tile is free: the previous step ended in a barrier.
        if constexpr (Q8) widen_tile(k0, buf);
        __syncthreads();
        if (qw < len) {
            const float* rel0 = rel_s + (k0 + 2 * tig - r0[0] + q0 + qspan - 1);
            const int left = len - k0;
            const KRow* kt = ks + (Q8 ? 0 : buf) * kt_rows;
            const KRow* vt = vs + (Q8 ? 0 : buf) * kt_rows;
            if (rel_table) {
                if (left >= ATT_KT)
                    att_tile<MT, true, true>(qa, o, st, kt, vt, rel0, left, qk_scale, lane);
                else
                    att_tile<MT, false, true>(qa, o, st, kt, vt, rel0, left, qk_scale, lane);
            } else {
                if (left >= ATT_KT)
                    att_tile<MT, true, false>(qa, o, st, kt, vt, rel0, left, qk_scale, lane);
                else
                    att_tile<MT, false, false>(qa, o, st, kt, vt, rel0, left, qk_scale, lane);
            }
        }
        __syncthreads();
    }
    if (qw >= len) return;
    const float vs_scale = Q8 ? qkv_scale : 1.f;
#pragma unroll
    for (int t = 0; t < MT; ++t)
        att_store(o[t], st[t], r0[t], r1[t], len, start, head, tig, vs_scale, ctx ATT_QUANT_ARGS);
}

// Two blocks of 8 warps per SM (registers capped at 128).
extern "C" __global__ void __launch_bounds__(256, 2)
attention_tc(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
             float scale, const float* __restrict__ rel_table,
             int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_tc_body<false, 1>(qkv, 1.f, offsets, heads, scale, rel_table, max_len,
                                ctx ATT_QUANT_ARGS);
}

// attention_tc for batches whose longest sequence is at most 16 * 7 tokens (fewer than 8
// warps a block), with shared memory sized to the batch: more blocks an SM where sentences are
// short (engine/attention.rs picks it).
extern "C" __global__ void __launch_bounds__(256, 2)
attention_tc_short(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
                   float scale, const float* __restrict__ rel_table,
                   int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_tc_body<false, 1, true>(qkv, 1.f, offsets, heads, scale, rel_table,
                                      max_len, ctx ATT_QUANT_ARGS);
}

// Two row tiles (32 queries) a warp, up to 4 warps a block, 2 blocks an SM with up to 255
// registers: fewer warps in flight than attention_tc, but every K and V fragment read from
// shared memory feeds two MMAs and each warp has two independent MMA chains
// (EMBEDRT_ATTENTION=mt2).
extern "C" __global__ void __launch_bounds__(128, 2)
attention_tc_mt2(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
                 float scale, const float* __restrict__ rel_table,
                 int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_tc_body<false, 2>(qkv, 1.f, offsets, heads, scale, rel_table, max_len,
                                ctx ATT_QUANT_ARGS);
}

#if EMBEDRT_QUANT == 2
// fp8 plans with `attention_inputs: fp8`: qkv8 holds e4m3 codes of Q, K, V with one scale.
extern "C" __global__ void __launch_bounds__(256, 2)
attention_tc_q8(const unsigned char* __restrict__ qkv8, float qkv_scale,
                const int* __restrict__ offsets, int heads, float scale,
                const float* __restrict__ rel_table, int max_len,
                st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_tc_body<true, 1>(qkv8, qkv_scale, offsets, heads, scale, rel_table, max_len,
                            ctx ATT_QUANT_ARGS);
}
#endif
// ---------------------------------------------------------------------------
// Occupancy variants (EMBEDRT_ATTENTION=tc2 / tc4; docs/arch/cuda.md): the same FlashAttention-2
// algorithm, fp32 online softmax in the exp2 domain and masking as attention_tc, with fewer
// registers a thread so more warps stay in flight. attention_tc holds Q (16 registers) and the
// scores of 64 keys (32) in registers and sits at its 128-register cap with spills, 2 blocks of
// 8 warps an SM; these keep Q in shared memory (loaded once per block with cp.async, read as
// ldmatrix fragments per key tile) and walk keys 32 at a time (16 score registers).
// Shared memory: K and V tiles of 32 keys, double-buffered (18 KB), Q (2.3 KB a warp), the
// bias table (4 KB). MAXW: most warps (16 query rows each) a block; the host launches at most
// that many. MINB: blocks an SM the register cap is set for.
#define ATT2_KT 32

// ldmatrix at a shared-memory address: the tile's lane addresses are computed once as 32-bit
// offsets, so a fragment load costs an immediate offset, not a 64-bit generic-to-shared
// conversion per load (what keeps attention_tc at its register cap).
__device__ __forceinline__ void ldsm_x4_at(unsigned (&r)[4], unsigned a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans_at(unsigned (&r)[4], unsigned a) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// One tile of up to 32 keys for one warp's 16 query rows (qs: the warp's Q rows in shared
// memory); otherwise as att_tile.
template <bool FULL, bool BIAS>
__device__ __forceinline__ void att2_tile(unsigned qa_addr, unsigned k_addr,
                                          float (&o)[HEAD_DIM / 8][4], AttRows& st,
                                          const float* rel0, int keys_left, float qk_scale,
                                          int lane) {
    const int tig = lane & 3;
    const int nb = FULL ? 4 : min(4, (keys_left + 7) / 8);
    float s[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
        unsigned qa[4];
        ldsm_x4_at(qa, qa_addr + kk * 32);
#pragma unroll
        for (int j = 0; j < 4; j += 2) {
            // Key blocks j and j + 1 lie in one 16-row group, loaded whole (zeros past the end).
            if (FULL || j < nb) {
                // b: keys 0-7 / 8-15 of the pair at columns 0-7, then the same at 8-15.
                unsigned b[4];
                ldsm_x4_at(b, k_addr + (j * 8 * KPAD + kk * 16) * 2);
                mma16816(s[j], qa, b[0], b[2]);
                mma16816(s[j + 1], qa, b[1], b[3]);
            }
        }
    }
    att_softmax<FULL, BIAS, false, 4>(s, o, st, rel0, keys_left, qk_scale, tig);
#pragma unroll
    for (int t = 0; t < 2; ++t) {
        if (FULL || 2 * t < nb) {
            const unsigned pa[4] = {pack2(s[2 * t][0], s[2 * t][1]), pack2(s[2 * t][2], s[2 * t][3]),
                                    pack2(s[2 * t + 1][0], s[2 * t + 1][1]),
                                    pack2(s[2 * t + 1][2], s[2 * t + 1][3])};
#pragma unroll
            for (int nd = 0; nd < HEAD_DIM / 8; nd += 2) {
                unsigned b[4];
                ldsm_x4_trans_at(b, k_addr + ((ATT2_KT + t * 16) * KPAD + nd * 8) * 2);
                mma16816(o[nd], pa, b[0], b[1]);
                mma16816(o[nd + 1], pa, b[2], b[3]);
            }
        }
    }
}

template <int MAXW>
__device__ __forceinline__ void attention_tc2_body(const st_t* __restrict__ qkv,
                                                   const int* __restrict__ offsets, int heads,
                                                   float scale, const float* __restrict__ rel_table,
                                                   int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    pdl_begin();
    const int seq = blockIdx.z, head = blockIdx.y;
    const int start = offsets[seq];
    const int len = offsets[seq + 1] - start;
    const int warps = blockDim.x / WARP;
    const int qspan = 16 * warps;
    const int q0 = blockIdx.x * qspan;
    if (q0 >= len) return;
    const int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP;
    const int g = lane >> 2, tig = lane & 3;
    const int stride = 3 * HIDDEN;

    // Rows: Q (MAXW * 16), then per buffer K (ATT2_KT) and V (ATT2_KT); one array, so every
    // fragment address is one per-lane base plus a constant.
    constexpr int QROWS = MAXW * 16;
    __shared__ __align__(16) unsigned short sm[QROWS + 4 * ATT2_KT][KPAD];
    __shared__ float rel_s[ATT_REL_MAX];

    // Q rows [q0, q0 + qspan): rows past the sequence are zero-filled. Committed with the
    // first K/V tile.
    for (int c = tid; c < qspan * (HEAD_DIM / 8); c += blockDim.x) {
        const int r = c / (HEAD_DIM / 8), d8 = (c % (HEAD_DIM / 8)) * 8;
        const bool valid = q0 + r < len;
        cp_async16(&sm[r][d8],
                   qkv + (size_t)(start + (valid ? q0 + r : 0)) * stride + head * HEAD_DIM + d8,
                   valid);
    }
    auto load_tile = [&](int k0, int buf) {
        const int rows = min(ATT2_KT, ((len - k0 + 15) / 16) * 16);
        for (int c = tid; c < rows * (HEAD_DIM / 8); c += blockDim.x) {
            const int j = c / (HEAD_DIM / 8), d8 = (c % (HEAD_DIM / 8)) * 8;
            const bool valid = k0 + j < len;
            const st_t* src = qkv + (size_t)(start + (valid ? k0 + j : 0)) * stride + HIDDEN +
                              head * HEAD_DIM + d8;
            unsigned short* kd = &sm[QROWS + buf * 2 * ATT2_KT + j][d8];
            cp_async16(kd, src, valid);
            cp_async16(kd + ATT2_KT * KPAD, src + HIDDEN, valid);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    // rel_s[i]: bias (times log2 e) for key - query = i - (q0 + qspan - 1); in tile 0's group
    // (plain loads here cost a 4-byte spill on sm_90a).
    if (rel_table)
        rel_fetch<true>(rel_s, rel_table, head, max_len, q0 + qspan - 1, len + qspan - 1, tid,
                        blockDim.x);
    load_tile(0, 0);

    const int qw = q0 + warp * 16;
    const int r0 = qw + g, r1 = qw + g + 8;
    // One ldmatrix lane pattern for Q, K and V: lane l addresses row l % 16 of a 16-row
    // group, columns (l / 16) * 8 on. For Q that is the mma's A fragment (a0..a3); for K
    // and V (transposed) it gives keys 0-7 / 8-15 at the first 8 columns, then the next 8.
    const unsigned lane_addr = smem_u32(&sm[lane & 15][(lane >> 4) * 8]);
    const unsigned qa_addr = lane_addr + warp * 16 * KPAD * 2;
    float o[HEAD_DIM / 8][4];
#pragma unroll
    for (int nd = 0; nd < HEAD_DIM / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
    AttRows st = {ATT_MASKED, ATT_MASKED, 0.f, 0.f};
    const float qk_scale = scale * ATT_LOG2E;

    for (int k0 = 0, it = 0; k0 < len; k0 += ATT2_KT, ++it) {
        const int buf = it & 1;
        if (k0 + ATT2_KT < len) {
            load_tile(k0 + ATT2_KT, buf ^ 1);
            asm volatile("cp.async.wait_group 1;\n" ::);
        } else {
            asm volatile("cp.async.wait_group 0;\n" ::);
        }
        __syncthreads();
        if (qw < len) {
            const float* rel0 = rel_s + (k0 + 2 * tig - r0 + q0 + qspan - 1);
            const int left = len - k0;
            const unsigned k_addr = lane_addr + (QROWS + buf * 2 * ATT2_KT) * KPAD * 2;
            if (rel_table) {
                if (left >= ATT2_KT)
                    att2_tile<true, true>(qa_addr, k_addr, o, st, rel0, left, qk_scale, lane);
                else
                    att2_tile<false, true>(qa_addr, k_addr, o, st, rel0, left, qk_scale, lane);
            } else {
                if (left >= ATT2_KT)
                    att2_tile<true, false>(qa_addr, k_addr, o, st, rel0, left, qk_scale, lane);
                else
                    att2_tile<false, false>(qa_addr, k_addr, o, st, rel0, left, qk_scale, lane);
            }
        }
        __syncthreads();
    }
    if (qw >= len) return;
    att_store(o, st, r0, r1, len, start, head, tig, 1.f, ctx ATT_QUANT_ARGS);
}

// Up to 8 warps a block, 3 blocks an SM (<= 85 registers): 24 warps in flight.
extern "C" __global__ void __launch_bounds__(256, 3)
attention_tc2(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
              float scale, const float* __restrict__ rel_table,
              int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_tc2_body<8>(qkv, offsets, heads, scale, rel_table, max_len,
                          ctx ATT_QUANT_ARGS);
}

// Up to 4 warps a block, 6 blocks an SM (<= 85 registers): 24 warps in flight; a sequence
// of 128 tokens is two blocks, each loading K and V (the second from L2).
extern "C" __global__ void __launch_bounds__(128, 6)
attention_tc4(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
              float scale, const float* __restrict__ rel_table,
              int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_tc2_body<4>(qkv, offsets, heads, scale, rel_table, max_len,
                          ctx ATT_QUANT_ARGS);
}
#endif
