// Quantized plans (post-training quantization, crates/core/src/quant.rs). Compile-time define:
//   EMBEDRT_QUANT  0 = none (fp16/fp32 plans), 1 = int8, 2 = fp8 e4m3fn (sm_89 and newer)
// This file comes first in the program: the kernels that produce a GEMM's input (LayerNorm,
// GELU, attention) take the quantize helpers and the extra attention arguments from here.
// Codes follow QuantFormat::quantize exactly: q = x / scale (IEEE division), int8 rounded
// half to even and saturated to [-128, 127]; e4m3 rounded to nearest even, saturated to
// +-448 (satfinite), NaN stays NaN.
#ifndef EMBEDRT_QUANT
#define EMBEDRT_QUANT 0
#endif

#if EMBEDRT_QUANT == 2 && defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 890)
#error "fp8 (e4m3) plans need compute capability 8.9 or newer"
#endif

#if EMBEDRT_QUANT
// One 8-bit code (the int8 two's complement byte or the e4m3 bit pattern).
__device__ __forceinline__ unsigned quant1(float x, float scale) {
    const float v = x / scale;
#if EMBEDRT_QUANT == 1
    const int q = max(-128, min(127, __float2int_rn(v)));
    return (unsigned)q & 0xffu;
#else
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.f), "f"(v));
    return r & 0xffu;
#endif
}

// Two codes in the low 16 bits, `lo` first in memory.
__device__ __forceinline__ unsigned quant2(float lo, float hi, float scale) {
#if EMBEDRT_QUANT == 1
    return quant1(lo, scale) | (quant1(hi, scale) << 8);
#else
    unsigned short r;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(hi / scale), "f"(lo / scale));
    return r;
#endif
}

// Four codes in one u32, element 0 in the low byte (little-endian memory order).
__device__ __forceinline__ unsigned quant4(const float* v, float scale) {
    return quant2(v[0], v[1], scale) | (quant2(v[2], v[3], scale) << 16);
}

// The attention kernels' extra arguments: with ctx_q set, the context goes out quantized
// (the attn_out GEMM's input) instead of fp16.
#define ATT_QUANT_PARAMS , unsigned char* __restrict__ ctx_q, float ctx_scale
// The same arguments passed on, from a kernel to the body it wraps.
#define ATT_QUANT_ARGS , ctx_q, ctx_scale
#else
#define ATT_QUANT_PARAMS
#define ATT_QUANT_ARGS
#endif
