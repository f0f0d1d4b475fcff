// embedrt encoder kernels. Header-free: NVRTC compiles this at run time
// with no include path. Compile-time defines (set by the host):
//   EMBEDRT_FP16  1 = activations and weights stored as fp16, 0 = fp32
//   HIDDEN        hidden size
//   HEAD_DIM      size of one attention head
// All arithmetic (LayerNorm, softmax, pooling, dot products) is fp32.

#if EMBEDRT_FP16
typedef unsigned short st_t;
__device__ __forceinline__ float ld(st_t v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}
__device__ __forceinline__ st_t cv(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#else
typedef float st_t;
__device__ __forceinline__ float ld(st_t v) { return v; }
__device__ __forceinline__ st_t cv(float f) { return f; }
#endif

#define WARP 32

// Programmatic dependent launch (sm_90+). The host may launch a kernel with the
// programmatic-serialization attribute, so that it starts while the kernel before it in the
// stream is still finishing (engine/launch.rs). Such a kernel must call pdl_wait() before it
// reads or writes any activation: it returns once the kernel before has completed and its
// writes are visible. Weights are constant and may be read (prefetched) before.
// pdl_trigger() lets the next kernel start launching now. Without the attribute, or before
// sm_90, both do nothing.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
// Both, for kernels that prefetch nothing.
__device__ __forceinline__ void pdl_begin() {
    pdl_wait();
    pdl_trigger();
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Rows are read and written as 16-byte vectors: LVEC elements each, VPL
// vectors per lane (HIDDEN must be a multiple of LVEC, true for BERT and
// MPNet sizes; the host checks).
#define LVEC (16 / (int)sizeof(st_t))
#define NVEC (HIDDEN / LVEC)
#define VPL ((NVEC + WARP - 1) / WARP)

// Receives each normalized vector of a row in fp32 (see quant.cu's QuantSink, which
// writes the quantized copy for the next GEMM); this one does nothing.
struct NoSink {
    __device__ __forceinline__ void operator()(int, const float*) const {}
};

// LayerNorm of one row held in registers (biased variance, as PyTorch),
// written to out; sink(vi, values) sees the fp32 values of vector vi.
template <class Sink = NoSink>
__device__ __forceinline__ void ln_store(float (&x)[VPL * LVEC], const st_t* gamma,
                                         const st_t* beta, st_t* out, float eps,
                                         Sink sink = Sink()) {
    const int lane = threadIdx.x % WARP;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < VPL; ++k) {
        if (lane + k * WARP < NVEC) {
#pragma unroll
            for (int i = 0; i < LVEC; ++i) s += x[k * LVEC + i];
        }
    }
    const float mean = warp_sum(s) / HIDDEN;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < VPL; ++k) {
        if (lane + k * WARP < NVEC) {
#pragma unroll
            for (int i = 0; i < LVEC; ++i) {
                const float d = x[k * LVEC + i] - mean;
                v += d * d;
            }
        }
    }
    const float inv = rsqrtf(warp_sum(v) / HIDDEN + eps);
#pragma unroll
    for (int k = 0; k < VPL; ++k) {
        const int vi = lane + k * WARP;
        if (vi < NVEC) {
            const uint4 gq = ((const uint4*)gamma)[vi], bq = ((const uint4*)beta)[vi];
            const st_t* ge = (const st_t*)&gq;
            const st_t* be = (const st_t*)&bq;
            uint4 o;
            st_t* oe = (st_t*)&o;
            float y[LVEC];
#pragma unroll
            for (int i = 0; i < LVEC; ++i) {
                y[i] = (x[k * LVEC + i] - mean) * inv * ld(ge[i]) + ld(be[i]);
                oe[i] = cv(y[i]);
            }
            ((uint4*)out)[vi] = o;
            sink(vi, y);
        }
    }
}

// Adds row vector vi of `src` into x. FROM_L2: the row was written by other
// blocks of this launch, so read it through L2, never from a stale L1 line.
template <bool FROM_L2 = false>
__device__ __forceinline__ void add_row(float (&x)[VPL * LVEC], const st_t* src, int k, int vi) {
    uint4 q;
    if (FROM_L2) {
        asm volatile("ld.global.cg.v4.u32 {%0,%1,%2,%3}, [%4];"
                     : "=r"(q.x), "=r"(q.y), "=r"(q.z), "=r"(q.w)
                     : "l"(((const uint4*)src) + vi));
    } else {
        q = ((const uint4*)src)[vi];
    }
    const st_t* e = (const st_t*)&q;
#pragma unroll
    for (int i = 0; i < LVEC; ++i) x[k * LVEC + i] += ld(e[i]);
}

// out = LayerNorm(a + b + c) for one row, by one warp; b and c may be null.
template <bool FROM_L2 = false, class Sink = NoSink>
__device__ __forceinline__ void layernorm_row(const st_t* a, const st_t* b, const st_t* c,
                                              const st_t* __restrict__ gamma,
                                              const st_t* __restrict__ beta, st_t* out,
                                              float eps, Sink sink = Sink()) {
    const int lane = threadIdx.x % WARP;
    float v[VPL * LVEC];
#pragma unroll
    for (int k = 0; k < VPL * LVEC; ++k) v[k] = 0.f;
#pragma unroll
    for (int k = 0; k < VPL; ++k) {
        const int vi = lane + k * WARP;
        if (vi < NVEC) {
            add_row<FROM_L2>(v, a, k, vi);
            if (b) add_row<FROM_L2>(v, b, k, vi);
            if (c) add_row<FROM_L2>(v, c, k, vi);
        }
    }
    ln_store(v, gamma, beta, out, eps, sink);
}

// Word + position (+ BERT token type 0) embedding, then LayerNorm.
// One warp per token.
extern "C" __global__ void embed_layernorm(const unsigned* __restrict__ ids,
                                           const unsigned* __restrict__ pos, int tokens,
                                           const st_t* __restrict__ word,
                                           const st_t* __restrict__ position,
                                           const st_t* __restrict__ type0,
                                           const st_t* __restrict__ gamma,
                                           const st_t* __restrict__ beta, st_t* __restrict__ out,
                                           float eps) {
    pdl_begin();
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= tokens) return;
    layernorm_row(word + (size_t)ids[row] * HIDDEN, position + (size_t)pos[row] * HIDDEN, type0,
                  gamma, beta, out + (size_t)row * HIDDEN, eps);
}

// out = LayerNorm(x) row by row; x already holds GEMM + bias + residual.
// One warp per row. out may equal x (each row is read before it is written).
extern "C" __global__ void layernorm(const st_t* x, int rows, const st_t* __restrict__ gamma,
                                     const st_t* __restrict__ beta, st_t* out, float eps) {
    pdl_begin();
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    layernorm_row(x + (size_t)row * HIDDEN, nullptr, nullptr, gamma, beta,
                  out + (size_t)row * HIDDEN, eps);
}

// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in place (the bias was added by
// the GEMM epilogue; cuBLASLt's own GELU is the tanh approximation).
// 16-byte loads and stores; a scalar tail if n is not a multiple of VEC.
// On the H200 this pass is as much compute-bound (erff) as memory-bound:
// two vectors in flight and packed conversions did not make it faster.
#define VEC (16 / (int)sizeof(st_t))
__device__ __forceinline__ float gelu1(float v) {
    return 0.5f * v * (1.f + erff(v * 0.70710678118654752f));
}
// GELU's tanh form (cuBLASLt's GELU epilogue; quantized plans with `gelu: tanh` use it
// where a GEMM's own epilogue does not).
__device__ __forceinline__ float gelu_tanh1(float v) {
    return 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
}
extern "C" __global__ void gelu(st_t* x, long long n) {
    pdl_begin();
    const long long nv = n / VEC;
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    uint4* xv = (uint4*)x;
    for (long long i = first; i < nv; i += stride) {
        uint4 v = xv[i];
        st_t* e = (st_t*)&v;
#pragma unroll
        for (int k = 0; k < VEC; ++k) e[k] = cv(gelu1(ld(e[k])));
        xv[i] = v;
    }
    for (long long i = nv * VEC + first; i < n; i += stride) x[i] = cv(gelu1(ld(x[i])));
}

// Fused attention over packed, unpadded sequences. qkv is [tokens, 3*HIDDEN]
// (Q | K | V), ctx is [tokens, HIDDEN]. Grid: (query tiles, heads, sequences);
// one thread per query row, keys streamed through shared memory in tiles with
// an online softmax, so no [seq, seq] matrix exists anywhere. MPNet's
// relative position bias is looked up per (query, key) from the bucket table
// (bucket_of[key - query + max_len - 1]) and the [buckets, heads] bias.
#define Q_TILE 32
#define K_TILE 32
extern "C" __global__ void __launch_bounds__(Q_TILE)
attention(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
          float scale, const st_t* __restrict__ rel_bias, const int* __restrict__ bucket_of,
          int max_len, st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    pdl_begin();
    const int seq = blockIdx.z, head = blockIdx.y;
    const int start = offsets[seq];
    const int len = offsets[seq + 1] - start;
    const int q0 = blockIdx.x * Q_TILE;
    if (q0 >= len) return;
    const int tid = threadIdx.x;
    const int qi = q0 + tid;
    const bool active = qi < len;
    const int stride = 3 * HIDDEN;

    __shared__ float ks[K_TILE][HEAD_DIM + 1];
    __shared__ float vs[K_TILE][HEAD_DIM + 1];

    float q[HEAD_DIM], acc[HEAD_DIM];
    const st_t* qrow = qkv + (size_t)(start + (active ? qi : 0)) * stride + head * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) {
        q[d] = ld(qrow[d]) * scale;
        acc[d] = 0.f;
    }
    float m = -1e30f, l = 0.f;
    for (int k0 = 0; k0 < len; k0 += K_TILE) {
        const int nk = min(K_TILE, len - k0);
        __syncthreads();
        for (int idx = tid; idx < nk * HEAD_DIM; idx += Q_TILE) {
            const int j = idx / HEAD_DIM, d = idx % HEAD_DIM;
            const st_t* krow = qkv + (size_t)(start + k0 + j) * stride + HIDDEN + head * HEAD_DIM;
            ks[j][d] = ld(krow[d]);
            vs[j][d] = ld(krow[HIDDEN + d]);
        }
        __syncthreads();
        if (!active) continue;
        float s[K_TILE];
        float tile_max = -1e30f;
#pragma unroll
        for (int j = 0; j < K_TILE; ++j) {
            float dot = -1e30f;
            if (j < nk) {
                dot = 0.f;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) dot += q[d] * ks[j][d];
                if (rel_bias) dot += ld(rel_bias[bucket_of[k0 + j - qi + max_len - 1] * heads + head]);
            }
            s[j] = dot;
            tile_max = fmaxf(tile_max, dot);
        }
        const float m_new = fmaxf(m, tile_max);
        const float corr = __expf(m - m_new);
        l *= corr;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) acc[d] *= corr;
#pragma unroll
        for (int j = 0; j < K_TILE; ++j) {
            if (j < nk) {
                const float p = __expf(s[j] - m_new);
                l += p;
#pragma unroll
                for (int d = 0; d < HEAD_DIM; ++d) acc[d] += p * vs[j][d];
            }
        }
        m = m_new;
    }
    if (!active) return;
    const float inv = 1.f / l;
#if EMBEDRT_QUANT
    if (ctx_q) {
        unsigned char* oq = ctx_q + (size_t)(start + qi) * HIDDEN + head * HEAD_DIM;
#pragma unroll
        for (int d = 0; d < HEAD_DIM; ++d) oq[d] = (unsigned char)quant1(acc[d] * inv, ctx_scale);
        return;
    }
#endif
    st_t* out = ctx + (size_t)(start + qi) * HIDDEN + head * HEAD_DIM;
#pragma unroll
    for (int d = 0; d < HEAD_DIM; ++d) out[d] = cv(acc[d] * inv);
}

// Sentence pooling over each sequence's tokens, fp32 out [sequences, HIDDEN].
// mode: 0 mean, 1 cls, 2 max, 3 mean / sqrt(len). One block per sequence
// (at most 256 threads). With *normalize set, the row is then divided by its
// L2 norm (at least 1e-12), as the host's normalize does.
extern "C" __global__ void pool(const st_t* __restrict__ hidden, const int* __restrict__ offsets,
                                int mode, const unsigned* __restrict__ normalize,
                                float* __restrict__ out) {
    pdl_begin();
    const int seq = blockIdx.x;
    const int start = offsets[seq], len = offsets[seq + 1] - start;
    float* row = out + (size_t)seq * HIDDEN;
    float ss = 0.f;
    for (int c = threadIdx.x; c < HIDDEN; c += blockDim.x) {
        const st_t* col = hidden + (size_t)start * HIDDEN + c;
        float r;
        if (mode == 1) {
            r = ld(col[0]);
        } else if (mode == 2) {
            r = -3.4e38f;
            for (int i = 0; i < len; ++i) r = fmaxf(r, ld(col[(size_t)i * HIDDEN]));
        } else {
            r = 0.f;
            for (int i = 0; i < len; ++i) r += ld(col[(size_t)i * HIDDEN]);
            r = mode == 0 ? r / (float)len : r / sqrtf((float)len);
        }
        row[c] = r;
        ss += r * r;
    }
    if (!*normalize) return;
    __shared__ float warp_ss[8];
    ss = warp_sum(ss);
    if (threadIdx.x % WARP == 0) warp_ss[threadIdx.x / WARP] = ss;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < (int)(blockDim.x + WARP - 1) / WARP; ++w) total += warp_ss[w];
    const float norm = fmaxf(sqrtf(total), 1e-12f);
    // Each thread rescales the values it wrote itself.
    for (int c = threadIdx.x; c < HIDDEN; c += blockDim.x) row[c] = row[c] / norm;
}

// ---------------------------------------------------------------------------
#if EMBEDRT_FP16 && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 800)
// Tensor-core helpers shared by the attention and the small-token linear kernels.
__device__ __forceinline__ unsigned pack2(float lo, float hi) {
    return (unsigned)cv(lo) | ((unsigned)cv(hi) << 16);
}

// Shared-memory address of a generic pointer, as the async copy and matrix
// instructions take it.
__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned long long s;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
    return (unsigned)s;
}

// c += a (16x16, row) * b (16x8, col); fp16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif

