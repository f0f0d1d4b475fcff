// ---------------------------------------------------------------------------
// Quantized plans' kernels (EMBEDRT_QUANT 1 = int8, 2 = fp8; quant_io.cu has the helpers).
// A quantized GEMM runs on cuBLASLt with 8-bit inputs and writes its raw 32-bit
// accumulators acc[T, N] (int32 for int8, fp32 for fp8); the epilogues here turn them into
// y = acc * (act_scale * w_scale[n]) + bias[n], then GELU, or residual + LayerNorm, and
// write fp16 and/or the next GEMM's quantized input. The producers of a GEMM input
// (embedding LayerNorm, LayerNorm, GELU, attention) write its quantized copy themselves,
// from the fp32 values, so no separate quantize pass reads activations back from memory.
#if EMBEDRT_QUANT
#if !EMBEDRT_FP16
#error "quantized plans keep their float tensors in fp16"
#endif
#if EMBEDRT_QUANT == 1
typedef int acc_t;
#else
typedef float acc_t;
#endif

// ln_store's sink: the quantized copy of one row (q: the row's first byte; null = none).
struct QuantSink {
    unsigned char* q;
    float scale;
    __device__ __forceinline__ void operator()(int vi, const float* y) const {
        if (!q) return;
        uint2 o;
        o.x = quant4(y, scale);
        o.y = quant4(y + 4, scale);
        ((uint2*)q)[vi] = o;
    }
};

__device__ __forceinline__ QuantSink row_sink(unsigned char* q, int row, float scale) {
    return QuantSink{q ? q + (size_t)row * HIDDEN : nullptr, scale};
}

// embed_layernorm, plus the quantized copy of its output (layer 0's QKV input) in q.
extern "C" __global__ void embed_layernorm_q(const unsigned* __restrict__ ids,
                                             const unsigned* __restrict__ pos, int tokens,
                                             const st_t* __restrict__ word,
                                             const st_t* __restrict__ position,
                                             const st_t* __restrict__ type0,
                                             const st_t* __restrict__ gamma,
                                             const st_t* __restrict__ beta,
                                             st_t* __restrict__ out, float eps,
                                             unsigned char* __restrict__ q, float q_scale) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= tokens) return;
    layernorm_row<false>(word + (size_t)ids[row] * HIDDEN, position + (size_t)pos[row] * HIDDEN,
                         type0, gamma, beta, out + (size_t)row * HIDDEN, eps,
                         row_sink(q, row, q_scale));
}

// layernorm (after a GEMM kept in fp16), plus the quantized copy in q (null = none).
extern "C" __global__ void layernorm_q(const st_t* x, int rows, const st_t* __restrict__ gamma,
                                       const st_t* __restrict__ beta, st_t* out, float eps,
                                       unsigned char* __restrict__ q, float q_scale) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    layernorm_row<false>(x + (size_t)row * HIDDEN, nullptr, nullptr, gamma, beta,
                         out + (size_t)row * HIDDEN, eps, row_sink(q, row, q_scale));
}

// Exact GELU of x (fp16, after an fp16 FFN-in GEMM) written only as the quantized FFN-out
// input q. n is a multiple of 8 (the intermediate size is; the host checks).
extern "C" __global__ void gelu_q(const st_t* __restrict__ x, long long n,
                                  unsigned char* __restrict__ q, float q_scale) {
    const long long nv = n / 8;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nv; i += stride) {
        const uint4 v = ((const uint4*)x)[i];
        const st_t* e = (const st_t*)&v;
        float y[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) y[k] = gelu1(ld(e[k]));
        uint2 o;
        o.x = quant4(y, q_scale);
        o.y = quant4(y + 4, q_scale);
        ((uint2*)q)[i] = o;
    }
}

// Eight accumulators from 32 aligned bytes, dequantized: acc * act_scale * w_scale[col + i].
__device__ __forceinline__ void dequant8(const acc_t* acc, const float* __restrict__ w_scale,
                                         float act_scale, float (&y)[8]) {
    const uint4 a0 = ((const uint4*)acc)[0], a1 = ((const uint4*)acc)[1];
    const float4 w0 = ((const float4*)w_scale)[0], w1 = ((const float4*)w_scale)[1];
    const acc_t* a = (const acc_t*)&a0;
    const acc_t* b = (const acc_t*)&a1;
    const float w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        y[i] = (float)a[i] * (act_scale * w[i]);
        y[i + 4] = (float)b[i] * (act_scale * w[i + 4]);
    }
}

// QKV and FFN-in epilogue: y = dequant(acc) + bias (then GELU: 1 exact, 2 the tanh form), written as
// fp16 to out and/or quantized to q (either may be null). acc is [rows, n], n % 8 == 0.
extern "C" __global__ void epilogue_bias(const acc_t* __restrict__ acc, int rows, int n,
                                         float act_scale, const float* __restrict__ w_scale,
                                         const st_t* __restrict__ bias, int gelu,
                                         st_t* __restrict__ out, unsigned char* __restrict__ q,
                                         float q_scale) {
    const long long nv = (long long)rows * n / 8;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nv; i += stride) {
        const int col = (int)((i * 8) % n);
        float y[8];
        dequant8(acc + i * 8, w_scale + col, act_scale, y);
        const uint4 bq = *(const uint4*)(bias + col);
        const st_t* be = (const st_t*)&bq;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            y[k] += ld(be[k]);
            if (gelu == 1) y[k] = gelu1(y[k]);
            if (gelu == 2) y[k] = gelu_tanh1(y[k]);
        }
        if (out) {
            uint4 o;
            st_t* oe = (st_t*)&o;
#pragma unroll
            for (int k = 0; k < 8; ++k) oe[k] = cv(y[k]);
            ((uint4*)out)[i] = o;
        }
        if (q) {
            uint2 o;
            o.x = quant4(y, q_scale);
            o.y = quant4(y + 4, q_scale);
            ((uint2*)q)[i] = o;
        }
    }
}

// attn_out and FFN-out epilogue, fused with the LayerNorm that follows them:
// out = LayerNorm(dequant(acc) + bias + residual), the quantized copy in q (null = none).
// One warp per row; acc is [rows, HIDDEN]. out may equal residual (each row is read
// before it is written, by the same warp).
extern "C" __global__ void epilogue_ln(const acc_t* __restrict__ acc, int rows, float act_scale,
                                       const float* __restrict__ w_scale,
                                       const st_t* __restrict__ bias, const st_t* residual,
                                       const st_t* __restrict__ gamma,
                                       const st_t* __restrict__ beta, st_t* out, float eps,
                                       unsigned char* __restrict__ q, float q_scale) {
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= rows) return;
    const int lane = threadIdx.x % WARP;
    const size_t base = (size_t)row * HIDDEN;
    float x[VPL * LVEC];
#pragma unroll
    for (int k = 0; k < VPL * LVEC; ++k) x[k] = 0.f;
#pragma unroll
    for (int k = 0; k < VPL; ++k) {
        const int vi = lane + k * WARP;
        if (vi < NVEC) {
            float y[8];
            dequant8(acc + base + vi * 8, w_scale + vi * 8, act_scale, y);
            const uint4 bq = ((const uint4*)bias)[vi];
            const uint4 rq = ((const uint4*)(residual + base))[vi];
            const st_t* be = (const st_t*)&bq;
            const st_t* re = (const st_t*)&rq;
#pragma unroll
            for (int i = 0; i < 8; ++i) x[k * 8 + i] = y[i] + ld(be[i]) + ld(re[i]);
        }
    }
    ln_store(x, gamma, beta, out + base, eps, row_sink(q, row, q_scale));
}
// A fallback GEMM's 8-bit weight widened to fp16 for its fp16 GEMM (`fallback_weights: 8bit`):
// w[r, c] = code[r, c] * scale[r], row-major [n, k] as the plan stores it, k % 8 == 0. The
// GEMM then runs on fp16 activations as a float plan's would, with the weight a quantized
// plan keeps in 1 byte a parameter; the product is rounded to fp16 once, as an fp16 plan
// rounds the fake-quantized weight.
extern "C" __global__ void dequant_weight(const unsigned char* __restrict__ codes,
                                          const float* __restrict__ scale, int n, int k,
                                          st_t* __restrict__ w) {
    const long long nv = (long long)n * k / 8;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < nv; i += stride) {
        const float s = scale[(i * 8) / k];
        const uint2 c = ((const uint2*)codes)[i];
        const unsigned words[2] = {c.x, c.y};
        uint4 o;
        unsigned* ow = (unsigned*)&o;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
            const unsigned pair = words[h / 2] >> (16 * (h % 2));
            float lo, hi;
#if EMBEDRT_QUANT == 1
            lo = (float)(signed char)(pair & 0xffu);
            hi = (float)(signed char)((pair >> 8) & 0xffu);
#else
            unsigned hh;
            asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(hh) : "h"((unsigned short)(pair & 0xffffu)));
            lo = ld((st_t)(hh & 0xffffu));
            hi = ld((st_t)(hh >> 16));
#endif
            ow[h] = (unsigned)cv(lo * s) | ((unsigned)cv(hi * s) << 16);
        }
        ((uint4*)w)[i] = o;
    }
}
#endif
