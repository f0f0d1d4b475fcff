// ---------------------------------------------------------------------------
// FFN-in on Hopper (sm_90a, fp16): inter = GELU(x w^T + bias) in one kernel, with the exact
// erf GELU in the epilogue (cuBLASLt's fused GELU is the tanh approximation, so without this
// the GELU is a separate pass over the [tokens, intermediate] tensor).
// x: [M, K] row-major, w: [N, K] row-major (both K-major), out: [M, N].
// Persistent: two CTAs per SM walk the 128 x 128 output tiles. In a CTA one producer warp
// loads 64-wide K slices of x and w with the tensor copy engine (TMA, 128-byte swizzle) into
// a 3-stage ring guarded by mbarriers, running ahead into the next tile while the consumers
// finish this one; two consumer warpgroups (64 rows each) multiply with wgmma.m64n128k16
// (fp32 accumulate) straight from shared memory, one group of MMAs in flight. The other CTA
// on the SM keeps the tensor cores busy during an epilogue (erf is costly). Rows past M
// are zero-filled by TMA and never stored.
// Needs: K a multiple of 64, N a multiple of 128 (host checks).
#if EMBEDRT_FP16 && defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FG_BM 128
#define FG_BN 128
#define FG_BK 64
#define FG_STAGES 3
#define FG_TILE_BYTES (FG_BM * FG_BK * 2)
#define FG_STAGE_BYTES (2 * FG_TILE_BYTES)
#define FG_THREADS (2 * 128 + 32)

// A CUtensorMap, passed by value as a __grid_constant__ kernel parameter.
struct __align__(64) TensorMap {
    unsigned long long opaque[16];
};

__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
}
// Waits until the phase of the given parity has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
    unsigned done;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; "
            "selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
    } while (!done);
}
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TensorMap* map, unsigned bar,
                                            int inner, int outer) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, "
        "{%2, %3}], [%4];" ::"r"(dst),
        "l"((unsigned long long)map), "r"(inner), "r"(outer), "r"(bar)
        : "memory");
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1,024 bytes apart.
__device__ __forceinline__ unsigned long long wgmma_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) |
           (1ull << 62);
}

#define FG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), \
    "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
__device__ __forceinline__ void wgmma_m64n128k16(float (&d)[64], unsigned long long da,
                                                 unsigned long long db, int accumulate) {
    asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
        "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
        "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
        "%64, %65, p, 1, 1, 0, 0; }"
        : FG_D8(0), FG_D8(8), FG_D8(16), FG_D8(24), FG_D8(32), FG_D8(40), FG_D8(48), FG_D8(56)
        : "l"(da), "l"(db), "r"(accumulate));
}

extern "C" __global__ void __launch_bounds__(FG_THREADS, 2)
ffn_in_gelu_sm90(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_w,
                 const st_t* __restrict__ bias, st_t* __restrict__ out, int m, int n, int k) {
    extern __shared__ unsigned char fg_smem_raw[];
    // Stage buffers 1,024-byte aligned (the swizzle pattern repeats every 1,024 bytes).
    const unsigned raw = smem_u32(fg_smem_raw);
    const unsigned base = (raw + 1023u) & ~1023u;
    const unsigned bars = base + FG_STAGES * FG_STAGE_BYTES;  // full[s], then empty[s]
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const int k_tiles = k / FG_BK;
    const int tiles_n = n / FG_BN;
    const int tiles = tiles_n * ((m + FG_BM - 1) / FG_BM);
    if (threadIdx.x == 0) {
        for (int s = 0; s < FG_STAGES; ++s) {
            mbar_init(bars + 8 * s, 1);
            mbar_init(bars + 8 * (FG_STAGES + s), 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (warp == 8) {
        // Producer: one thread issues the copies; `it` counts K slices over all tiles.
        if (lane == 0) {
            int it = 0;
            for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
                const int n0 = (t % tiles_n) * FG_BN, m0 = (t / tiles_n) * FG_BM;
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const int s = it % FG_STAGES;
                    mbar_wait(bars + 8 * (FG_STAGES + s), ((it / FG_STAGES) & 1) ^ 1);
                    const unsigned full = bars + 8 * s;
                    mbar_expect_tx(full, FG_STAGE_BYTES);
                    const unsigned a = base + s * FG_STAGE_BYTES;
                    tma_load_2d(a, &map_x, full, kt * FG_BK, m0);
                    tma_load_2d(a + FG_TILE_BYTES, &map_w, full, kt * FG_BK, n0);
                }
            }
        }
        return;
    }
    // Consumers: warpgroup wg owns rows [64 wg, 64 wg + 64) of each tile.
    const int wg = warp / 4;
    float d[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    int it = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const int n0 = (t % tiles_n) * FG_BN, m0 = (t / tiles_n) * FG_BM;
        for (int kt = 0; kt < k_tiles; ++kt, ++it) {
            const int s = it % FG_STAGES;
            mbar_wait(bars + 8 * s, (it / FG_STAGES) & 1);
            const unsigned a = base + s * FG_STAGE_BYTES + wg * (64 * 128);
            const unsigned b = base + s * FG_STAGE_BYTES + FG_TILE_BYTES;
            asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
            for (int kk = 0; kk < FG_BK / 16; ++kk) {
                wgmma_m64n128k16(d, wgmma_desc(a + kk * 32), wgmma_desc(b + kk * 32),
                                 kt > 0 || kk > 0);
            }
            asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
            // The previous slice's MMAs are done: its stage goes back to the producer.
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
            if (kt > 0) mbar_arrive(bars + 8 * (FG_STAGES + (it - 1) % FG_STAGES));
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        mbar_arrive(bars + 8 * (FG_STAGES + (it - 1) % FG_STAGES));
        // Epilogue: bias, exact GELU, fp16, straight from the accumulators.
        const int row0 = m0 + wg * 64 + (warp % 4) * 16 + (lane >> 2);
#pragma unroll
        for (int j = 0; j < 16; ++j) {
            const int col = n0 + j * 8 + (lane & 3) * 2;
            const float b0 = ld(bias[col]), b1 = ld(bias[col + 1]);
            if (row0 < m)
                *(unsigned*)&out[(size_t)row0 * n + col] =
                    pack2(gelu1(d[4 * j] + b0), gelu1(d[4 * j + 1] + b1));
            if (row0 + 8 < m)
                *(unsigned*)&out[(size_t)(row0 + 8) * n + col] =
                    pack2(gelu1(d[4 * j + 2] + b0), gelu1(d[4 * j + 3] + b1));
        }
    }
}
#endif
