// ---------------------------------------------------------------------------
// Hopper attention (sm_90a, fp16 Q, K, V, head size 64): attention_tc's algorithm (online
// softmax in fp32 and the exp2 domain, MPNet's bias from the load-time table, masking past
// the sequence) with both products on wgmma instead of mma.sync + ldmatrix. A block is two
// warpgroups of 64 query rows (128 queries: the block shape of attention_tc's full blocks);
// each key tile of 64 keys lands in shared memory once for both by cp.async, in the layout
// wgmma reads (rows of 64 fp16 = 128 bytes, 128-byte swizzle), two tiles in flight.
// S = Q K^T: wgmma.m64n64k16, Q as the A operand from registers (mma.m16n8k16's A layout,
// loaded straight from global memory), K from shared memory (K-major). O += P V: P from the
// softmax's registers (the accumulator layout packs to the A layout in place), V from shared
// memory as an MN-major operand (transposed by the tensor core). The tensor cores read
// shared memory through the async proxy: each thread fences its cp.async writes to it
// before the barrier that publishes a tile.
// Why: attention_tc at 128 tokens is bound by its instruction stream, not by memory or
// the MMAs (run 26: 107 TFLOP/s; loads, ldmatrix, MMAs and softmax add up); wgmma takes the
// ldmatrix and MMA instructions off it (4 wgmma a product a warpgroup for 64 x 32 mma.sync
// and 32 ldmatrix across its four warps).
#if EMBEDRT_FP16 && (HEAD_DIM == 64) && defined(__CUDA_ARCH__) && \
    defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define AWG_KT 64
#define AWG_TILE_BYTES (AWG_KT * 128)

// Descriptor of an MN-major operand (V: rows of keys, 64 d's each), 128-byte swizzle: 8-key
// groups 1,024 bytes apart. A 64-wide N is one swizzle atom wide, so only the 8-row group
// stride is read; it is given as both offsets.
__device__ __forceinline__ unsigned long long awg_desc_mn(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (64ull << 16) | (64ull << 32) |
           (1ull << 62);
}

#define AWG_D4(j) "+f"(d[j][0]), "+f"(d[j][1]), "+f"(d[j][2]), "+f"(d[j][3])
// d (64 x 64 a warpgroup, fp32) = (accumulate ? d : 0) + a (64 x 16, registers) b (16 x 64,
// shared memory; TRANS_B: MN-major).
template <int TRANS_B>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[8][4], const unsigned (&a)[4],
                                                   unsigned long long db, int accumulate) {
    asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %36, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
        "{%32,%33,%34,%35}, %37, p, 1, 1, %38; }"
        : AWG_D4(0), AWG_D4(1), AWG_D4(2), AWG_D4(3), AWG_D4(4), AWG_D4(5), AWG_D4(6),
          AWG_D4(7)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(accumulate), "l"(db),
          "n"(TRANS_B));
}

// d (64 x 64 a warpgroup, fp32) = (accumulate ? d : 0) + a (64 x 16) b (16 x 64), both from
// shared memory, K-major.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[8][4], unsigned long long da,
                                                   unsigned long long db, int accumulate) {
    asm volatile(
        "{ .reg .pred p; setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
        "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, "
        "%32, %33, p, 1, 1, 0, 0; }"
        : AWG_D4(0), AWG_D4(1), AWG_D4(2), AWG_D4(3), AWG_D4(4), AWG_D4(5), AWG_D4(6),
          AWG_D4(7)
        : "l"(da), "l"(db), "r"(accumulate));
}

__device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}

// The bias (rel0 as att_tile's) and mask of a tile's scores s, then its softmax.
template <bool DEFER_O = false>
__device__ __forceinline__ void awg_softmax(float (&s)[8][4], float (&o)[HEAD_DIM / 8][4],
                                            AttRows& st, const float* rel0, bool bias, int left,
                                            float qk_scale, int tig, float* c = nullptr) {
    if (bias) {
        if (left >= AWG_KT)
            att_softmax<true, true, DEFER_O>(s, o, st, rel0, left, qk_scale, tig, c);
        else
            att_softmax<false, true, DEFER_O>(s, o, st, rel0, left, qk_scale, tig, c);
    } else {
        if (left >= AWG_KT)
            att_softmax<true, false, DEFER_O>(s, o, st, rel0, left, qk_scale, tig, c);
        else
            att_softmax<false, false, DEFER_O>(s, o, st, rel0, left, qk_scale, tig, c);
    }
}

// P (a tile's softmax in the accumulator layout) packed as wgmma A fragments, 16 keys each.
__device__ __forceinline__ void awg_pack(const float (&s)[8][4], unsigned (&pa)[AWG_KT / 16][4]) {
#pragma unroll
    for (int kt = 0; kt < AWG_KT / 16; ++kt) {
        pa[kt][0] = pack2(s[2 * kt][0], s[2 * kt][1]);
        pa[kt][1] = pack2(s[2 * kt][2], s[2 * kt][3]);
        pa[kt][2] = pack2(s[2 * kt + 1][0], s[2 * kt + 1][1]);
        pa[kt][3] = pack2(s[2 * kt + 1][2], s[2 * kt + 1][3]);
    }
}

// Bytes of dynamic shared memory attention_wg* lay out: 1,024 of alignment slack, Q (two
// warpgroups' 64 rows) where QS, two stages of K and V, the bias values
// (engine/attention.rs: wg_shared_bytes).
#define AWG_Q_BYTES (2 * 64 * 128)

// QS: Q in shared memory, S = Q K^T with both operands there (else Q's A fragments in
// registers, loaded from global memory). OVERLAP (with QS; batches of at most 128 tokens,
// two key tiles): both tiles' S are issued at once, tile 0's softmax runs while tile 1's S
// is on the tensor cores, and tile 1's softmax while tile 0's P V is; O's rescale waits
// for that P V.
template <bool QS, bool OVERLAP>
__device__ __forceinline__ void attention_wg_body(const st_t* __restrict__ qkv,
                                                  const int* __restrict__ offsets, float scale,
                                                  const float* __restrict__ rel_table,
                                                  int max_len, st_t* __restrict__ ctx
                                                      ATT_QUANT_PARAMS) {
    pdl_begin();
    const int seq = blockIdx.z, head = blockIdx.y;
    const int start = offsets[seq];
    const int len = offsets[seq + 1] - start;
    const int qspan = 128;
    const int q0 = blockIdx.x * qspan;
    if (q0 >= len) return;
    const int tid = threadIdx.x, warp = tid / WARP, lane = tid % WARP;
    const int g = lane >> 2, tig = lane & 3;
    const int stride = 3 * HIDDEN;

    // [Q,] then [stage][K, V] tiles, from a 1,024-byte aligned base (the swizzle pattern
    // repeats every 1,024 bytes), then the bias values.
    extern __shared__ unsigned char awg_smem[];
    const unsigned raw = smem_u32(awg_smem);
    const unsigned base = (raw + 1023u) & ~1023u;
    unsigned char* q_s = awg_smem + (base - raw);
    unsigned char* kv_s = q_s + (QS ? AWG_Q_BYTES : 0);
    float* rel_s = (float*)(kv_s + 4 * AWG_TILE_BYTES);
    const unsigned kv0 = base + (QS ? AWG_Q_BYTES : 0);

    // 16-byte chunk ch of row j (128 bytes) of a tile at chunk ch ^ (j % 8). Rows past the
    // sequence are zero-filled (P is 0 there, and 0 times stale shared memory could be NaN).
    auto swz = [](int j, int ch) { return j * 128 + ((ch ^ (j & 7)) << 4); };
    if (QS) {
        // Q rows [q0, q0 + 128), in tile 0's group.
        for (int c = tid; c < qspan * 8; c += blockDim.x) {
            const int j = c / 8, ch = c % 8;
            const bool valid = q0 + j < len;
            cp_async16(q_s + swz(j, ch),
                       qkv + (size_t)(start + (valid ? q0 + j : 0)) * stride + head * HEAD_DIM +
                           ch * 8,
                       valid);
        }
    }
    auto load_tile = [&](int k0, int buf) {
        unsigned char* k_s = kv_s + 2 * buf * AWG_TILE_BYTES;
        for (int c = tid; c < AWG_KT * 8; c += blockDim.x) {
            const int j = c / 8, ch = c % 8;
            const bool valid = k0 + j < len;
            const st_t* src = qkv + (size_t)(start + (valid ? k0 + j : 0)) * stride + HIDDEN +
                              head * HEAD_DIM + ch * 8;
            cp_async16(k_s + swz(j, ch), src, valid);
            cp_async16(k_s + AWG_TILE_BYTES + swz(j, ch), src + HIDDEN, valid);
        }
        asm volatile("cp.async.commit_group;\n" ::);
    };
    load_tile(0, 0);
    if (AWG_KT < len) load_tile(AWG_KT, 1);

    // This warp's rows g and g + 8 of its 16 in its warpgroup's 64.
    const int r0 = q0 + (warp / 4) * 64 + (warp % 4) * 16 + g, r1 = r0 + 8;
    const unsigned q_wg = base + (warp / 4) * (64 * 128);
    unsigned qa[QS ? 1 : HEAD_DIM / 16][4];
    if (!QS) {
        const size_t row0 = (size_t)(start + min(r0, len - 1)) * stride + head * HEAD_DIM;
        const size_t row1 = (size_t)(start + min(r1, len - 1)) * stride + head * HEAD_DIM;
        const unsigned* q_0 = (const unsigned*)(qkv + row0);
        const unsigned* q_1 = (const unsigned*)(qkv + row1);
        const bool in0 = r0 < len, in1 = r1 < len;
#pragma unroll
        for (int kk = 0; kk < (QS ? 1 : HEAD_DIM / 16); ++kk) {
            qa[kk][0] = in0 ? q_0[kk * 8 + tig] : 0u;
            qa[kk][1] = in1 ? q_1[kk * 8 + tig] : 0u;
            qa[kk][2] = in0 ? q_0[kk * 8 + 4 + tig] : 0u;
            qa[kk][3] = in1 ? q_1[kk * 8 + 4 + tig] : 0u;
        }
    }
    // rel_s[i]: bias (times log2 e) for key - query = i - (q0 + qspan - 1).
    if (rel_table)
        rel_fetch<false>(rel_s, rel_table, head, max_len, q0 + qspan - 1, len + qspan - 1, tid,
                         blockDim.x);

    float o[HEAD_DIM / 8][4];
#pragma unroll
    for (int nd = 0; nd < HEAD_DIM / 8; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
    AttRows st = {ATT_MASKED, ATT_MASKED, 0.f, 0.f};
    const float qk_scale = scale * ATT_LOG2E;
    const float* rel_row = rel_s + (2 * tig - r0 + q0 + qspan - 1);
    // Tile `buf`'s copies (this thread's) visible to the tensor cores' reads (the async
    // proxy), then to every thread.
    auto publish = [&](bool last) {
        if (last)
            asm volatile("cp.async.wait_group 0;\n" ::);
        else
            asm volatile("cp.async.wait_group 1;\n" ::);
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();
    };
    // S = Q K^T of the tile in stage buf, issued (not waited for).
    auto issue_s = [&](float (&s)[8][4], int buf) {
        const unsigned k_tile = kv0 + (2 * buf) * AWG_TILE_BYTES;
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
            if constexpr (QS)
                wgmma_m64n64k16_ss(s, wgmma_desc(q_wg + kk * 32), wgmma_desc(k_tile + kk * 32),
                                   kk > 0);
            else
                wgmma_m64n64k16_rs<0>(s, qa[kk], wgmma_desc(k_tile + kk * 32), kk > 0);
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    };
    // O += P V of the tile in stage buf, issued.
    auto issue_pv = [&](const unsigned (&pa)[AWG_KT / 16][4], int buf) {
        const unsigned v_tile = kv0 + (2 * buf + 1) * AWG_TILE_BYTES;
        wgmma_fence();
#pragma unroll
        for (int kt = 0; kt < AWG_KT / 16; ++kt)
            wgmma_m64n64k16_rs<1>(o, pa[kt], awg_desc_mn(v_tile + kt * 16 * 128), 1);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    };

    if (OVERLAP && len <= 2 * AWG_KT) {
        const bool two = len > AWG_KT;
        float s0[8][4], s1[8][4];
        unsigned pa[AWG_KT / 16][4];
        publish(!two);
        issue_s(s0, 0);
        if (two) {
            publish(true);
            issue_s(s1, 1);
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
        } else {
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        }
        awg_softmax(s0, o, st, rel_row, rel_table != nullptr, len, qk_scale, tig);
        awg_pack(s0, pa);
        issue_pv(pa, 0);
        if (two) {
            // S of tile 1 was committed before tile 0's P V: done once one group is left.
            asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory");
            float c[2];
            awg_softmax<true>(s1, o, st, rel_row + AWG_KT, rel_table != nullptr, len - AWG_KT,
                              qk_scale, tig, c);
            awg_pack(s1, pa);
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#pragma unroll
            for (int nd = 0; nd < HEAD_DIM / 8; ++nd) {
                o[nd][0] *= c[0];
                o[nd][1] *= c[0];
                o[nd][2] *= c[1];
                o[nd][3] *= c[1];
            }
            issue_pv(pa, 1);
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    } else {
        for (int k0 = 0, it = 0; k0 < len; k0 += AWG_KT, ++it) {
            const int buf = it & 1;
            publish(k0 + AWG_KT >= len);
            float s[8][4];
            issue_s(s, buf);
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            awg_softmax(s, o, st, rel_row + k0, rel_table != nullptr, len - k0, qk_scale, tig);
            unsigned pa[AWG_KT / 16][4];
            awg_pack(s, pa);
            issue_pv(pa, buf);
            asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
            // Both warpgroups are done with this stage: refill it with the tile after next.
            __syncthreads();
            if (k0 + 2 * AWG_KT < len) load_tile(k0 + 2 * AWG_KT, buf);
        }
    }
    att_store(o, st, r0, r1, len, start, head, tig, 1.f, ctx ATT_QUANT_ARGS);
}

// Two blocks of two warpgroups an SM (registers capped at 128). attention_wg: Q in
// registers; _q: Q in shared memory; _qo: and the two tiles of a batch of at most 128
// tokens overlapped (EMBEDRT_ATTENTION=wg / wg-q / wg-qo).
extern "C" __global__ void __launch_bounds__(256, 2)
attention_wg(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
             float scale, const float* __restrict__ rel_table, int max_len,
             st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_wg_body<false, false>(qkv, offsets, scale, rel_table, max_len, ctx ATT_QUANT_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2)
attention_wg_q(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
               float scale, const float* __restrict__ rel_table, int max_len,
               st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_wg_body<true, false>(qkv, offsets, scale, rel_table, max_len, ctx ATT_QUANT_ARGS);
}
extern "C" __global__ void __launch_bounds__(256, 2)
attention_wg_qo(const st_t* __restrict__ qkv, const int* __restrict__ offsets, int heads,
                float scale, const float* __restrict__ rel_table, int max_len,
                st_t* __restrict__ ctx ATT_QUANT_PARAMS) {
    attention_wg_body<true, true>(qkv, offsets, scale, rel_table, max_len, ctx ATT_QUANT_ARGS);
}
#endif
