// ---------------------------------------------------------------------------
// Linear layers for a few tokens (fp16, sm_80+), the latency case:
//   y[M, N] = x[M, K] w[N, K]^T + bias, then the layer's next step fused in:
//   epilogue 0: nothing (QKV), 1: exact GELU (FFN-in),
//   2: + residual, then LayerNorm of the whole rows into ln_out (attention-out, FFN-out),
//   3: + residual only: the next kernel normalizes (ln_in below),
//   4: GELU's tanh form (FFN-in of quantized plans whose table says `gelu: tanh`, and of
//      float plans that say so),
//   5: + residual, and each row's sum and sum of squares added into stats_out (two floats
//      a row, atomics): the next kernel normalizes with them (ln_in 2).
// ln_in (QKV, FFN-in after an epilogue-3 kernel): x holds the rows before their LayerNorm.
// Every block reads all of x anyway, so each normalizes it into shared memory itself, and
// block 0 also writes the normalized rows to ln_out (the residual of a later kernel), in
// place of epilogue 2's ticket (the last block normalizing all rows after a fence and an
// atomic). An opt-in: on the H200 that prologue cost more than the ticket's serial tail
// (W3 0.348 vs 0.330 ms, docs/PERFORMANCE.md run 23).
// M = 16 * MT tokens (the graph buckets pad to a multiple of 16). At these sizes a GEMM only
// streams its weights once, so the work is spread over features and K: each block owns 8
// output features, its warps take 32-wide K chunks round-robin, and the tensor cores do the
// dot products (mma.m16n8k16, fp32 accumulation). A thread reads one 16-byte vector of a
// weight row and of each x row per chunk; the mma's k order is permuted the same way in x
// and w, which leaves every dot product unchanged.
// LayerNorm needs whole rows: every block takes a ticket after writing its features; the
// last one normalizes all M rows and resets the ticket for the next launch.
// ln_in 2 (after an epilogue-5 kernel): the rows' LayerNorm statistics are in stats_in, so
// each x fragment is normalized as it is loaded, with no prologue; the first HIDDEN / 8
// blocks each write 8 columns of the normalized rows to ln_out. The variance is E[x^2] -
// mean^2 in fp32 (LayerNorm inputs here have |mean| far below their spread).
// stats_clear: zeroed after the wait (block 0), for the epilogue-5 kernel after next; the
// host passes the buffer whose last reader has finished.
// Needs: K a multiple of 32, N a multiple of 8, N == HIDDEN for epilogue 2 and 5, K == HIDDEN
// and (16 MT) * SL_X_STRIDE * 2 bytes of dynamic shared memory for ln_in 1, K == HIDDEN and
// N >= HIDDEN for ln_in 2 (host checks).
#if EMBEDRT_FP16 && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define SL_MAX_WARPS 16
// Rows of the normalized x in shared memory, 16 bytes longer than HIDDEN: the 8 rows one
// mma fragment reads then start in different banks.
#define SL_X_STRIDE (HIDDEN + 8)
// Rows of the LayerNorm statistics buffers (16 MT at most).
#define SL_STATS_ROWS 64

// One row's mean and 1 / sqrt(variance + eps) from its sum and sum of squares.
__device__ __forceinline__ void sl_row_stats(const float* stats, int row, float eps, float& mean,
                                             float& rstd) {
    const float s = stats[2 * row], q = stats[2 * row + 1];
    mean = s * (1.f / HIDDEN);
    rstd = rsqrtf(fmaxf(q * (1.f / HIDDEN) - mean * mean, 0.f) + eps);
}

// 8 values of a row normalized with its statistics and gamma, beta of their columns, as
// ln_store computes them.
__device__ __forceinline__ uint4 sl_normalize8(uint4 x, uint4 g, uint4 b, float mean,
                                               float rstd) {
    const st_t* xe = (const st_t*)&x;
    const st_t* ge = (const st_t*)&g;
    const st_t* be = (const st_t*)&b;
    uint4 o;
    st_t* oe = (st_t*)&o;
#pragma unroll
    for (int i = 0; i < 8; ++i) oe[i] = cv((ld(xe[i]) - mean) * rstd * ld(ge[i]) + ld(be[i]));
    return o;
}

// Weights are read once per launch: no L1 allocation.
__device__ __forceinline__ uint4 ld_stream16(const st_t* p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// Weights of quantized plans (WQ = EMBEDRT_QUANT: 1 int8, 2 fp8 e4m3): 8 codes of one row,
// widened to fp16 in the register order ld_stream16 gives fp16 weights (codes and fp16 both
// exact), so the same mma runs; the per-channel scale multiplies the finished dot product.
// Activations stay fp16: for a few tokens the GEMM streams its weights, and 1-byte weights
// halve that, while quantizing the activations would only cost accuracy.
__device__ __forceinline__ uint2 ld_stream8(const unsigned char* p) {
    uint2 v;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}
template <int WQ>
__device__ __forceinline__ unsigned widen2(unsigned codes) {
    if (WQ == 2) {
        unsigned h;
        asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h) : "h"((unsigned short)codes));
        return h;
    }
    return pack2((float)(signed char)(codes & 0xffu), (float)(signed char)((codes >> 8) & 0xffu));
}
template <int WQ>
__device__ __forceinline__ uint4 widen8(uint2 q) {
    return make_uint4(widen2<WQ>(q.x), widen2<WQ>(q.x >> 16), widen2<WQ>(q.y),
                      widen2<WQ>(q.y >> 16));
}

// The attention of a batch of at most 16 tokens, for the attn-out kernel that reads it
// (`small_attn_out*`): one launch less a layer. Sequences are packed by `offsets`.
struct SmallAtt {
    const st_t* qkv;
    const int* offsets;
    int nseq, heads;
    float scale;
    const st_t* rel_bias;  // MPNet: [buckets, heads]; null for BERT
    const int* bucket_of;
    int max_len;
};
#define SA_LOG2E 1.4426950408889634f
#define SA_MASKED (-1e30f)

// Every head of one 16-row tile into xs[16][SL_X_STRIDE], in the context layout (head h at
// columns [h HEAD_DIM, ...)); rows past the tokens are zero. One warp a head: S = Q K^T over
// the 16 keys on mma.m16n8k16, each row masked to its own sequence, MPNet's relative bias
// added, softmax in fp32 in the exp2 domain (as attention_tc), then O = P V. At this size Q, K
// and V are read straight from global memory (L2) as mma fragments; every block of the
// attn-out kernel repeats it (a few hundred kFLOP) rather than wait for another launch.
__device__ __forceinline__ void small_attention16(const SmallAtt& a, st_t* xs, int warp,
                                                  int warps, int lane) {
#if HEAD_DIM % 16 == 0
    const int g = lane >> 2, tig = lane & 3;
    const int stride = 3 * HIDDEN;
    const int tokens = a.offsets[a.nseq];
    // Keys [lo, hi) of rows g and g + 8: their sequence; none for rows past the tokens.
    int lo[2] = {0, 0}, hi[2] = {0, 0};
    for (int q = 0; q < a.nseq; ++q) {
        const int s0 = a.offsets[q], s1 = a.offsets[q + 1];
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            const int r = g + 8 * hh;
            if (r >= s0 && r < s1) {
                lo[hh] = s0;
                hi[hh] = s1;
            }
        }
    }
    const float qk_scale = a.scale * SA_LOG2E;
    for (int h = warp; h < a.heads; h += warps) {
        const st_t* base = a.qkv + h * HEAD_DIM;
        // Two fp16 values at (row, col) of this head's Q | K | V columns, zeros past the tokens.
        auto word = [&](int row, int col) -> unsigned {
            return row < tokens ? *(const unsigned*)(base + (size_t)row * stride + col) : 0u;
        };
        auto one = [&](int row, int col) -> unsigned {
            return row < tokens ? (unsigned)base[(size_t)row * stride + col] : 0u;
        };
        float s[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
            const int c = kk * 16 + 2 * tig;
            const unsigned qa[4] = {word(g, c), word(g + 8, c), word(g, c + 8), word(g + 8, c + 8)};
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const int key = j * 8 + g;
                mma16816(s[j], qa, word(key, HIDDEN + c), word(key, HIDDEN + c + 8));
            }
        }
        float mx[2] = {SA_MASKED, SA_MASKED};
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int hh = e >> 1, r = g + 8 * hh, key = j * 8 + 2 * tig + (e & 1);
                float v = s[j][e] * qk_scale;
                if (a.rel_bias) {
                    const int bi = min(max(key - r + a.max_len - 1, 0), 2 * a.max_len - 2);
                    v += ld(a.rel_bias[a.bucket_of[bi] * a.heads + h]) * SA_LOG2E;
                }
                if (key < lo[hh] || key >= hi[hh]) v = SA_MASKED;
                s[j][e] = v;
                mx[hh] = fmaxf(mx[hh], v);
            }
        }
        float l[2] = {0.f, 0.f};
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 1));
            mx[hh] = fmaxf(mx[hh], __shfl_xor_sync(0xffffffffu, mx[hh], 2));
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                float p;
                asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(p) : "f"(s[j][e] - mx[e >> 1]));
                s[j][e] = p;
                l[e >> 1] += p;
            }
        }
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
            l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 1);
            l[hh] += __shfl_xor_sync(0xffffffffu, l[hh], 2);
        }
        // P (fp16) as the A fragment over the 16 keys; V's B fragments pair keys 2 tig, +1.
        const unsigned pa[4] = {pack2(s[0][0], s[0][1]), pack2(s[0][2], s[0][3]),
                                pack2(s[1][0], s[1][1]), pack2(s[1][2], s[1][3])};
        const float inv0 = hi[0] > lo[0] ? 1.f / l[0] : 0.f;
        const float inv1 = hi[1] > lo[1] ? 1.f / l[1] : 0.f;
#pragma unroll
        for (int nd = 0; nd < HEAD_DIM / 8; ++nd) {
            const int col = 2 * HIDDEN + nd * 8 + g;
            const unsigned b0 = one(2 * tig, col) | (one(2 * tig + 1, col) << 16);
            const unsigned b1 = one(2 * tig + 8, col) | (one(2 * tig + 9, col) << 16);
            float o[4] = {0.f, 0.f, 0.f, 0.f};
            mma16816(o, pa, b0, b1);
            const int d = h * HEAD_DIM + nd * 8 + 2 * tig;
            *(unsigned*)(xs + g * SL_X_STRIDE + d) = pack2(o[0] * inv0, o[1] * inv0);
            *(unsigned*)(xs + (g + 8) * SL_X_STRIDE + d) = pack2(o[2] * inv1, o[3] * inv1);
        }
    }
#endif
}

template <int MT, int UNROLL, int WQ, bool ATT = false>
__device__ __forceinline__ void small_linear(const st_t* __restrict__ x,
                                             const void* __restrict__ w,
                                             const float* __restrict__ w_scale,
                                             const st_t* __restrict__ bias,
                                             const st_t* residual, st_t* y, int n, int k,
                                             int epilogue, int ln_in,
                                             const st_t* __restrict__ gamma,
                                             const st_t* __restrict__ beta, float eps,
                                             unsigned* ticket, st_t* ln_out,
                                             float* stats_out, const float* stats_in,
                                             float* stats_clear,
                                             const SmallAtt& att = SmallAtt{}) {
    const int warps = blockDim.x / WARP;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int g = lane >> 2, tig = lane & 3;
    const int n0 = blockIdx.x * 8;
    const int chunks = k / 32;
    float acc[MT][4];
#pragma unroll
    for (int t = 0; t < MT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = 0.f;
    // Bytes of one weight (fp16 or an 8-bit code).
    constexpr int wb = WQ ? 1 : 2;
    const unsigned char* wbase = (const unsigned char*)w;
    const unsigned char* wrow = wbase + ((size_t)(n0 + g) * k + tig * 8) * wb;
    // The weights are constant: while the kernel before finishes (programmatic launch),
    // pull this block's 8 rows into L2, one 128-byte line per thread and step.
    const int lines = k * wb / 128;
    for (int line = threadIdx.x; line < 8 * lines; line += blockDim.x) {
        const unsigned char* p = wbase + (size_t)(n0 + line % 8) * k * wb + (line / 8) * 128;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
    }
    pdl_wait();
    pdl_trigger();
    if (stats_clear && blockIdx.x == 0)
        for (int i = threadIdx.x; i < 2 * SL_STATS_ROWS; i += blockDim.x) stats_clear[i] = 0.f;
    const st_t* xsrc = x;
    int xstride = k;
    // ln_in 2: every row's mean and 1 / sqrt(var + eps), in shared memory (registers are
    // what the m64 kernel has least of).
    __shared__ float row_norm[2 * SL_STATS_ROWS];
    if (ln_in == 2) {
        for (int row = threadIdx.x; row < 16 * MT; row += blockDim.x)
            sl_row_stats(stats_in, row, eps, row_norm[2 * row], row_norm[2 * row + 1]);
        __syncthreads();
        // The normalized rows for a later residual: 8 columns a block.
        if (blockIdx.x < HIDDEN / 8) {
            const int col = blockIdx.x * 8;
            const uint4 gq = *(const uint4*)(gamma + col), bq = *(const uint4*)(beta + col);
            for (int row = threadIdx.x; row < 16 * MT; row += blockDim.x) {
                const uint4 xq = *(const uint4*)(x + (size_t)row * HIDDEN + col);
                *(uint4*)(ln_out + (size_t)row * HIDDEN + col) =
                    sl_normalize8(xq, gq, bq, row_norm[2 * row], row_norm[2 * row + 1]);
            }
        }
    }
    if (ln_in == 1) {
        extern __shared__ uint4 sl_x[];
        st_t* xs = (st_t*)sl_x;
        constexpr int vpr = HIDDEN / 8;
        // All loads in flight at once (rows written by the previous launch: through L2).
#pragma unroll 4
        for (int i = threadIdx.x; i < 16 * MT * vpr; i += blockDim.x) {
            uint4 q;
            asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                         : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w)
                         : "l"(((const uint4*)x) + i));
            *(uint4*)(xs + (i / vpr) * SL_X_STRIDE + (i % vpr) * 8) = q;
        }
        __syncthreads();
        for (int row = warp; row < 16 * MT; row += warps)
            layernorm_row(xs + row * SL_X_STRIDE, nullptr, nullptr, gamma, beta,
                          xs + row * SL_X_STRIDE, eps);
        __syncthreads();
        if (blockIdx.x == 0) {
            for (int i = threadIdx.x; i < 16 * MT * vpr; i += blockDim.x) {
                const st_t* src = xs + (i / vpr) * SL_X_STRIDE + (i % vpr) * 8;
                ((uint4*)ln_out)[i] = *(const uint4*)src;
            }
        }
        xsrc = xs;
        xstride = SL_X_STRIDE;
    }
    if (ATT) {
        // x is this batch's attention, computed here from qkv (MT == 1, k == HIDDEN).
        extern __shared__ uint4 sl_x[];
        st_t* xs = (st_t*)sl_x;
        small_attention16(att, xs, warp, warps, lane);
        __syncthreads();
        xsrc = xs;
        xstride = SL_X_STRIDE;
    }
    const st_t* xrow = xsrc + (size_t)g * xstride + tig * 8;
    for (int c0 = warp; c0 < chunks; c0 += warps * UNROLL) {
        uint4 wv[UNROLL], xv[UNROLL][MT][2];
        // All loads of the unrolled chunks first, so they are in flight together.
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int c = c0 + u * warps;
            if (c < chunks) {
                if (WQ)
                    wv[u] = widen8<WQ>(ld_stream8(wrow + c * 32));
                else
                    wv[u] = ld_stream16((const st_t*)(wrow + c * 64));
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    xv[u][t][0] = *(const uint4*)(xrow + (size_t)(16 * t) * xstride + c * 32);
                    xv[u][t][1] = *(const uint4*)(xrow + (size_t)(16 * t + 8) * xstride + c * 32);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            if (c0 + u * warps < chunks) {
                uint4 gv, bv;
                if (ln_in == 2) {
                    // gamma, beta of this chunk's 8 columns (constant: L1 after the first).
                    const int col = (c0 + u * warps) * 32 + tig * 8;
                    gv = *(const uint4*)(gamma + col);
                    bv = *(const uint4*)(beta + col);
                }
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    uint4 r0 = xv[u][t][0], r1 = xv[u][t][1];
                    if (ln_in == 2) {
                        const float* n0 = row_norm + 2 * (16 * t + g);
                        const float* n1 = n0 + 16;
                        r0 = sl_normalize8(r0, gv, bv, n0[0], n0[1]);
                        r1 = sl_normalize8(r1, gv, bv, n1[0], n1[1]);
                    }
                    const unsigned a_lo[4] = {r0.x, r1.x, r0.y, r1.y};
                    const unsigned a_hi[4] = {r0.z, r1.z, r0.w, r1.w};
                    mma16816(acc[t], a_lo, wv[u].x, wv[u].y);
                    mma16816(acc[t], a_hi, wv[u].z, wv[u].w);
                }
            }
        }
    }
    // Sum the warps' partial dot products.
    __shared__ float part[SL_MAX_WARPS * 4 * 4 * WARP];
#pragma unroll
    for (int t = 0; t < MT; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) part[((warp * MT + t) * 4 + e) * WARP + lane] = acc[t][e];
    }
    __syncthreads();
    // One thread per pair of neighbouring features in a row: (t, half, lane).
    for (int p = threadIdx.x; p < MT * 2 * WARP; p += blockDim.x) {
        const int pl = p % WARP, half = (p / WARP) % 2, t = p / (2 * WARP);
        float v0 = 0.f, v1 = 0.f;
        for (int wp = 0; wp < warps; ++wp) {
            v0 += part[((wp * MT + t) * 4 + 2 * half) * WARP + pl];
            v1 += part[((wp * MT + t) * 4 + 2 * half + 1) * WARP + pl];
        }
        const int row = 16 * t + (pl >> 2) + 8 * half;
        const int col = n0 + 2 * (pl & 3);
        if (WQ) {
            v0 *= w_scale[col];
            v1 *= w_scale[col + 1];
        }
        v0 += ld(bias[col]);
        v1 += ld(bias[col + 1]);
        if (epilogue == 1) {
            v0 = gelu1(v0);
            v1 = gelu1(v1);
        } else if (epilogue == 4) {
            v0 = gelu_tanh1(v0);
            v1 = gelu_tanh1(v1);
        } else if (epilogue >= 2) {
            const unsigned r = *(const unsigned*)&residual[(size_t)row * n + col];
            v0 += ld((st_t)(r & 0xffffu));
            v1 += ld((st_t)(r >> 16));
        }
        *(unsigned*)&y[(size_t)row * n + col] = (unsigned)cv(v0) | ((unsigned)cv(v1) << 16);
        if (epilogue == 5) {
            // The row's statistics from the values as stored; the 4 lanes of a row add theirs.
            const float a0 = ld(cv(v0)), a1 = ld(cv(v1));
            float s = a0 + a1, q = a0 * a0 + a1 * a1;
            s += __shfl_xor_sync(0xffffffffu, s, 1);
            q += __shfl_xor_sync(0xffffffffu, q, 1);
            s += __shfl_xor_sync(0xffffffffu, s, 2);
            q += __shfl_xor_sync(0xffffffffu, q, 2);
            if ((pl & 3) == 0) {
                atomicAdd(stats_out + 2 * row, s);
                atomicAdd(stats_out + 2 * row + 1, q);
            }
        }
    }
    if (epilogue != 2) return;
    // LayerNorm: the last block to finish has every row.
    __shared__ unsigned is_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    // Rows the other blocks wrote: read through L2.
    for (int row = warp; row < 16 * MT; row += warps)
        layernorm_row<true>(y + (size_t)row * HIDDEN, nullptr, nullptr, gamma, beta,
                            ln_out + (size_t)row * HIDDEN, eps);
    if (threadIdx.x == 0) *ticket = 0u;
}

// w_scale is unused here: the fp16 and the 8-bit kernels take the same arguments.
#define SMALL_LINEAR(NAME, MT, UNROLL)                                                         \
    extern "C" __global__ void __launch_bounds__(SL_MAX_WARPS * WARP) NAME(                    \
        const st_t* __restrict__ x, const st_t* __restrict__ w,                                \
        const float* __restrict__ w_scale, const st_t* __restrict__ bias,                      \
        const st_t* residual, st_t* y, int n, int k, int epilogue, int ln_in,                  \
        const st_t* __restrict__ gamma, const st_t* __restrict__ beta, float eps,              \
        unsigned* ticket, st_t* ln_out, float* stats_out, const float* stats_in,              \
        float* stats_clear) {                                                                  \
        small_linear<MT, UNROLL, 0>(x, w, nullptr, bias, residual, y, n, k, epilogue, ln_in,   \
                                    gamma, beta, eps, ticket, ln_out, stats_out, stats_in,     \
                                    stats_clear);                                              \
    }
SMALL_LINEAR(small_linear_m16, 1, 4)
SMALL_LINEAR(small_linear_m32, 2, 4)
SMALL_LINEAR(small_linear_m48, 3, 2)
SMALL_LINEAR(small_linear_m64, 4, 2)

#if EMBEDRT_QUANT
// The same over a quantized plan's 8-bit weights w with their per-channel scales.
#define SMALL_LINEAR_Q(NAME, MT, UNROLL)                                                       \
    extern "C" __global__ void __launch_bounds__(SL_MAX_WARPS * WARP) NAME(                    \
        const st_t* __restrict__ x, const unsigned char* __restrict__ w,                       \
        const float* __restrict__ w_scale, const st_t* __restrict__ bias,                      \
        const st_t* residual, st_t* y, int n, int k, int epilogue, int ln_in,                  \
        const st_t* __restrict__ gamma, const st_t* __restrict__ beta, float eps,              \
        unsigned* ticket, st_t* ln_out, float* stats_out, const float* stats_in,              \
        float* stats_clear) {                                                                  \
        small_linear<MT, UNROLL, EMBEDRT_QUANT>(x, w, w_scale, bias, residual, y, n, k,        \
                                                epilogue, ln_in, gamma, beta, eps, ticket,     \
                                                ln_out, stats_out, stats_in, stats_clear);     \
    }
SMALL_LINEAR_Q(small_linear_q_m16, 1, 4)
SMALL_LINEAR_Q(small_linear_q_m32, 2, 4)
SMALL_LINEAR_Q(small_linear_q_m48, 3, 2)
SMALL_LINEAR_Q(small_linear_q_m64, 4, 2)
#endif

#if HEAD_DIM % 16 == 0
// Attention + attn-out for batches of at most 16 tokens (one launch a layer less): x is
// computed from qkv into 16 * SL_X_STRIDE * 2 bytes of dynamic shared memory; then as
// small_linear_m16 (epilogue 2 or 3). w: fp16 weights, or (the _q kernel) 8-bit codes
// with their per-channel w_scale. Opt-in (small_attention=fused): on the H200 the
// attention in every block's prologue cost more than the launch it saves (MPNet-base W3
// 0.361 vs 0.330 ms, docs/PERFORMANCE.md run 24), as ln_in's did.
#define SMALL_ATTN_OUT(NAME, WQ, WT)                                                          \
    extern "C" __global__ void __launch_bounds__(SL_MAX_WARPS * WARP) NAME(                   \
        const st_t* __restrict__ qkv, const int* __restrict__ offsets, int nseq, int heads,   \
        float scale, const st_t* __restrict__ rel_bias, const int* __restrict__ bucket_of,    \
        int max_len, const WT* __restrict__ w, const float* __restrict__ w_scale,             \
        const st_t* __restrict__ bias, const st_t* residual, st_t* y, int n, int k,           \
        int epilogue, const st_t* __restrict__ gamma, const st_t* __restrict__ beta,          \
        float eps, unsigned* ticket, st_t* ln_out) {                                          \
        const SmallAtt att = {qkv, offsets, nseq, heads, scale, rel_bias, bucket_of, max_len}; \
        small_linear<1, 4, WQ, true>(nullptr, w, w_scale, bias, residual, y, n, k, epilogue,  \
                                     0, gamma, beta, eps, ticket, ln_out, nullptr, nullptr,   \
                                     nullptr, att);                                           \
    }
SMALL_ATTN_OUT(small_attn_out_m16, 0, st_t)
#if EMBEDRT_QUANT
SMALL_ATTN_OUT(small_attn_out_q_m16, EMBEDRT_QUANT, unsigned char)
#endif
#endif
#endif
