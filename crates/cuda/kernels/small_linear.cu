// ---------------------------------------------------------------------------
// Linear layers for a few tokens (fp16, sm_80+), the latency case:
//   y[M, N] = x[M, K] w[N, K]^T + bias, then the layer's next step fused in:
//   epilogue 0: nothing (QKV), 1: exact GELU (FFN-in),
//   2: + residual, then LayerNorm of the whole rows into ln_out (attention-out, FFN-out),
//   3: + residual only: the next kernel normalizes (ln_in below).
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
// Needs: K a multiple of 32, N a multiple of 8, N == HIDDEN for epilogue 2, K == HIDDEN
// and (16 MT) * SL_X_STRIDE * 2 bytes of dynamic shared memory for ln_in (host checks).
#if EMBEDRT_FP16 && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
#define SL_MAX_WARPS 16
// Rows of the normalized x in shared memory, 16 bytes longer than HIDDEN: the 8 rows one
// mma fragment reads then start in different banks.
#define SL_X_STRIDE (HIDDEN + 8)

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

template <int MT, int UNROLL, int WQ>
__device__ __forceinline__ void small_linear(const st_t* __restrict__ x,
                                             const void* __restrict__ w,
                                             const float* __restrict__ w_scale,
                                             const st_t* __restrict__ bias,
                                             const st_t* residual, st_t* y, int n, int k,
                                             int epilogue, int ln_in,
                                             const st_t* __restrict__ gamma,
                                             const st_t* __restrict__ beta, float eps,
                                             unsigned* ticket, st_t* ln_out) {
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
    const st_t* xsrc = x;
    int xstride = k;
    if (ln_in) {
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
#pragma unroll
                for (int t = 0; t < MT; ++t) {
                    const uint4 r0 = xv[u][t][0], r1 = xv[u][t][1];
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
        } else if (epilogue >= 2) {
            const unsigned r = *(const unsigned*)&residual[(size_t)row * n + col];
            v0 += ld((st_t)(r & 0xffffu));
            v1 += ld((st_t)(r >> 16));
        }
        *(unsigned*)&y[(size_t)row * n + col] = (unsigned)cv(v0) | ((unsigned)cv(v1) << 16);
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

#define SMALL_LINEAR(NAME, MT, UNROLL)                                                         \
    extern "C" __global__ void __launch_bounds__(SL_MAX_WARPS * WARP) NAME(                    \
        const st_t* __restrict__ x, const st_t* __restrict__ w, const st_t* __restrict__ bias, \
        const st_t* residual, st_t* y, int n, int k, int epilogue, int ln_in,                  \
        const st_t* __restrict__ gamma, const st_t* __restrict__ beta, float eps,              \
        unsigned* ticket, st_t* ln_out) {                                                      \
        small_linear<MT, UNROLL, 0>(x, w, nullptr, bias, residual, y, n, k, epilogue, ln_in,   \
                                    gamma, beta, eps, ticket, ln_out);                         \
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
        unsigned* ticket, st_t* ln_out) {                                                      \
        small_linear<MT, UNROLL, EMBEDRT_QUANT>(x, w, w_scale, bias, residual, y, n, k,        \
                                                epilogue, ln_in, gamma, beta, eps, ticket,     \
                                                ln_out);                                       \
    }
SMALL_LINEAR_Q(small_linear_q_m16, 1, 4)
SMALL_LINEAR_Q(small_linear_q_m32, 2, 4)
SMALL_LINEAR_Q(small_linear_q_m48, 3, 2)
SMALL_LINEAR_Q(small_linear_q_m64, 4, 2)
#endif
#endif
