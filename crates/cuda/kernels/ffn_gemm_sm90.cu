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
// Clusters (the _c2 / _c4 entry points): 128 x 128 tiles of one CTA read 64 FLOP per byte
// from L2, which on the H200 holds the kernel near 400 TFLOP/s. CM x CN CTAs of a cluster
// take neighbouring tiles (CM along M share their w slice, CN along N share their x slice);
// each loads 1/CM of the shared w box and 1/CN of the x box and multicasts it to the CTAs
// that share it, so a CTA reads (1/CN + 1/CM) / 2 of the bytes from L2. A stage is then
// written by several CTAs: every consumer warp releases it in every CTA of the cluster
// (remote mbarrier arrives), and a producer refills it only when all have.
// Needs: K a multiple of 64, N a multiple of 128 CN (host checks).
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

// The same, delivered to the shared memory (and mbarrier, same offsets) of every CTA in
// `mask` of the cluster.
__device__ __forceinline__ void tma_load_2d_multicast(unsigned dst, const TensorMap* map,
                                                      unsigned bar, int inner, int outer,
                                                      unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
        ".multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;" ::"r"(dst),
        "l"((unsigned long long)map), "r"(inner), "r"(outer), "r"(bar), "h"(mask)
        : "memory");
}
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// Every thread of every CTA in the cluster; orders shared-memory work around it.
__device__ __forceinline__ void cluster_sync() {
    asm volatile(
        "barrier.cluster.arrive.release.aligned;\n"
        "barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// Arrives on the mbarrier at the same shared offset in cluster CTA `cta`. CTA-scope release
// (the default): a cluster-scope one waits for this thread's global stores, which put ~1 us
// on every K slice (H200 run 24: 1.5-3x slower GEMMs).
__device__ __forceinline__ void mbar_arrive_remote(unsigned bar, unsigned cta) {
    asm volatile(
        "{ .reg .b32 ra; mapa.shared::cluster.u32 ra, %0, %1; "
        "mbarrier.arrive.shared::cluster.b64 _, [ra]; }" ::"r"(bar),
        "r"(cta)
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

// The origin of this CTA's tile in group t (groups of CM x CN tiles, N fastest).
template <int CM, int CN>
__device__ __forceinline__ void fg_tile(int t, int groups_n, int rm, int rn, int& m0, int& n0) {
    n0 = ((t % groups_n) * CN + rn) * FG_BN;
    m0 = ((t / groups_n) * CM + rm) * FG_BM;
}

// CM x CN CTAs a cluster (1 x 1: no cluster).
template <int CM, int CN>
__device__ __forceinline__ void ffn_in_gelu(const TensorMap* map_x, const TensorMap* map_w,
                                            const st_t* __restrict__ bias,
                                            st_t* __restrict__ out, int m, int n, int k) {
    constexpr int CS = CM * CN;
    extern __shared__ unsigned char fg_smem_raw[];
    // Stage buffers 1,024-byte aligned (the swizzle pattern repeats every 1,024 bytes); the
    // offsets are the same in every CTA, which multicast relies on.
    const unsigned raw = smem_u32(fg_smem_raw);
    const unsigned base = (raw + 1023u) & ~1023u;
    const unsigned bars = base + FG_STAGES * FG_STAGE_BYTES;  // full[s], then empty[s]
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const unsigned rank = CS > 1 ? cluster_rank() : 0u;
    const int rm = rank % CM, rn = rank / CM;
    const int k_tiles = k / FG_BK;
    const int groups_n = n / (FG_BN * CN);
    const int groups = groups_n * (((m + FG_BM - 1) / FG_BM + CM - 1) / CM);
    const int cluster = blockIdx.x / CS, clusters = gridDim.x / CS;
    if (threadIdx.x == 0) {
        for (int s = 0; s < FG_STAGES; ++s) {
            mbar_init(bars + 8 * s, 1);
            // One arrive per consumer thread, or per consumer warp and cluster CTA.
            mbar_init(bars + 8 * (FG_STAGES + s), CS > 1 ? 8 * CS : 256);
        }
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    // No CTA multicasts into another's ring before its mbarriers exist.
    if (CS > 1)
        cluster_sync();
    else
        __syncthreads();
    if (warp == 8) {
        // Producer: one thread issues the copies; `it` counts K slices over all tiles.
        if (lane == 0) {
            // This CTA's slices: rows [rn BM / CN, ...) of the x box, shared along N, and
            // rows [rm BN / CM, ...) of the w box, shared along M.
            constexpr int a_rows = FG_BM / CN, b_rows = FG_BN / CM;
            unsigned short a_mask = 0, b_mask = 0;
            for (int j = 0; j < CN; ++j) a_mask |= (unsigned short)(1u << (j * CM + rm));
            for (int j = 0; j < CM; ++j) b_mask |= (unsigned short)(1u << (rn * CM + j));
            int it = 0;
            for (int t = cluster; t < groups; t += clusters) {
                int m0, n0;
                fg_tile<CM, CN>(t, groups_n, rm, rn, m0, n0);
                for (int kt = 0; kt < k_tiles; ++kt, ++it) {
                    const int s = it % FG_STAGES;
                    mbar_wait(bars + 8 * (FG_STAGES + s), ((it / FG_STAGES) & 1) ^ 1);
                    const unsigned full = bars + 8 * s;
                    // The whole stage lands here: this CTA's slices and the others'.
                    mbar_expect_tx(full, FG_STAGE_BYTES);
                    const unsigned a = base + s * FG_STAGE_BYTES;
                    const unsigned a_dst = a + rn * a_rows * 128;
                    const unsigned b_dst = a + FG_TILE_BYTES + rm * b_rows * 128;
                    const int a_row = m0 + rn * a_rows;
                    if (CN > 1)
                        tma_load_2d_multicast(a_dst, map_x, full, kt * FG_BK, a_row, a_mask);
                    else
                        tma_load_2d(a_dst, map_x, full, kt * FG_BK, a_row);
                    if (CM > 1)
                        tma_load_2d_multicast(b_dst, map_w, full, kt * FG_BK,
                                              n0 + rm * b_rows, b_mask);
                    else
                        tma_load_2d(b_dst, map_w, full, kt * FG_BK, n0 + rm * b_rows);
                }
            }
        }
    } else {
        // Consumers: warpgroup wg owns rows [64 wg, 64 wg + 64) of each tile.
        const int wg = warp / 4;
        // Hands stage s back to the producers that fill it.
        auto release = [&](int s) {
            const unsigned bar = bars + 8 * (FG_STAGES + s);
            if (CS == 1) {
                mbar_arrive(bar);
            } else {
                // Lane c arrives in CTA c: the arrives go out in parallel.
                __syncwarp();
                if (lane < CS) mbar_arrive_remote(bar, (unsigned)lane);
            }
        };
        float d[64];
#pragma unroll
        for (int i = 0; i < 64; ++i) d[i] = 0.f;
        int it = 0;
        for (int t = cluster; t < groups; t += clusters) {
            int m0, n0;
            fg_tile<CM, CN>(t, groups_n, rm, rn, m0, n0);
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
                if (kt > 0) release((it - 1) % FG_STAGES);
            }
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            release((it - 1) % FG_STAGES);
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
    // The other CTAs may still arrive on this CTA's mbarriers: stay until all are done.
    if (CS > 1) cluster_sync();
}

extern "C" __global__ void __launch_bounds__(FG_THREADS, 2)
ffn_in_gelu_sm90(const __grid_constant__ TensorMap map_x, const __grid_constant__ TensorMap map_w,
                 const st_t* __restrict__ bias, st_t* __restrict__ out, int m, int n, int k) {
    ffn_in_gelu<1, 1>(&map_x, &map_w, bias, out, m, n, k);
}
// Launched in clusters of 2 (along M: the w slice multicast).
extern "C" __global__ void __launch_bounds__(FG_THREADS, 2)
ffn_in_gelu_sm90_c2(const __grid_constant__ TensorMap map_x,
                    const __grid_constant__ TensorMap map_w, const st_t* __restrict__ bias,
                    st_t* __restrict__ out, int m, int n, int k) {
    ffn_in_gelu<2, 1>(&map_x, &map_w, bias, out, m, n, k);
}
// Launched in clusters of 4 (2 along M, 2 along N: both slices multicast).
extern "C" __global__ void __launch_bounds__(FG_THREADS, 2)
ffn_in_gelu_sm90_c4(const __grid_constant__ TensorMap map_x,
                    const __grid_constant__ TensorMap map_w, const st_t* __restrict__ bias,
                    st_t* __restrict__ out, int m, int n, int k) {
    ffn_in_gelu<2, 2>(&map_x, &map_w, bias, out, m, n, k);
}
#endif
