// Prefill attention (chunks of query tokens) over compressed rows, FlashAttention-2 style: K and V
// tiles of PF_TILE cells are dequantised once into shared memory as f16 centroid values (scales kept
// apart in f32) and shared by the CTA's PF_ROWS query rows — (query token, query head of the GQA
// group) pairs of one kv head — on tensor cores (mma m16n8k16 via ldmatrix). Each warp owns PF_MT
// 16-row fragments (two up to head_dim 128, one above), so every K/V fragment it reads from shared
// memory feeds PF_MT mma. Scores are scaled by ||q|| * kscale in f32; values are weighted by
// p * vscale before the f16 mma. Split-K over cells; tq_combine merges.
//
// Per tile: one barrier, every thread dequantises 1/PF_PARTS of a cell's K and V head (16-byte
// stores, conflict-free) and checks the visibility of its cell, a second barrier that also tells
// whether the tile needs per-score visibility terms, then scores, the online softmax and P·V. The raw codes of
// the next tile are loaded into registers once the scores are packed into P fragments, so their
// latency hides behind P·V (and behind the other CTA of the multiprocessor, PF_MIN_CTAS).

// PF_ROWS query rows per CTA, PF_THREADS threads, PF_TILE cells per tile, PF_PAD halves of padding
// per shared-memory row, PF_MIN_CTAS CTAs per multiprocessor: from the host (kernels/common.cuh).
constexpr int PF_LD = D + PF_PAD;  // smem row stride in halves (conflict-free ldmatrix)
constexpr int PF_WARPS = PF_THREADS / 32;
constexpr int PF_MT = PF_ROWS / (16 * PF_WARPS);  // 16-row mma fragments per warp
static_assert(PF_MT * 16 * PF_WARPS == PF_ROWS && (PF_MT == 1 || PF_MT == 2), "one or two 16-row fragments per warp");
constexpr int PF_PARTS = PF_THREADS / PF_TILE;  // threads that dequantise one cell
static_assert(PF_PARTS * PF_TILE == PF_THREADS && D % (8 * PF_PARTS) == 0, "a thread dequantises a multiple of 8 dimensions");
constexpr int PF_DIMS = D / PF_PARTS;  // dimensions one thread dequantises per cell (K and V)
constexpr int PF_KBITS = PF_DIMS * BITS_K;
constexpr int PF_VBITS = PF_DIMS * BITS_V;
constexpr int PF_SUB = 32;  // cells per online-softmax step
static_assert(PF_TILE % PF_SUB == 0 && PF_SUB % 16 == 0, "whole steps of 16-cell P·V k-steps");
static_assert(D % 32 == 0 && PF_TILE % 16 == 0, "k-tiles of the scores go in pairs; P·V takes 16 cells per step");

__device__ __forceinline__ void ldmatrix_x4(u32 *r, const void *p) {
    u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 *r, const void *p) {
    u32 a = (u32)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// Byte offset of pair table entry `pair` at stream bit `pos` of w: pair * 128 (32 replicated words per
// entry), taken with one shift and one mask where the pair lies inside one word (always at 4 bits).
template <int B, int NBITS>
__device__ __forceinline__ u32 pf_pair_offset(const Window<NBITS> &w, int pos) {
    constexpr u32 M = ((1u << (2 * B)) - 1) << 7;
    const int wi = pos >> 5, off = pos & 31;
    if (off + 2 * B <= 32) return (off >= 7 ? w.w[wi] >> (off - 7) : w.w[wi] << (7 - off)) & M;
    return w.bits(pos, 2 * B) << 7;
}

// half2 of the pair at stream bit `pos` of w (`tab_lane` is the table plus this lane).
template <int B, int NBITS>
__device__ __forceinline__ u32 pf_lookup(const u32 *tab_lane, const Window<NBITS> &w, int pos) {
    if (Table<B>::PAIRED) {
        const u32 lane4 = (threadIdx.x & 31) * 4;  // disjoint from the entry's bits: OR, not add
        return *reinterpret_cast<const u32 *>(reinterpret_cast<const u8 *>(tab_lane - (threadIdx.x & 31)) + (pf_pair_offset<B>(w, pos) | lane4));
    } else {
        return lookup_pair<B>(tab_lane, w.bits(pos, 2 * B));
    }
}

// Dequantise PF_DIMS dimensions of one cell, loaded earlier into `w`, into an f16 smem row segment
// (16-byte aligned): four pairs per 16-byte store.
template <int B, int NBITS>
__device__ __forceinline__ void pf_dequant(u16 *dst_seg, const Window<NBITS> &w, const u32 *tab_lane) {
    uint4 *dst = reinterpret_cast<uint4 *>(dst_seg);
#pragma unroll
    for (int j = 0; j < PF_DIMS / 8; j++) {
        uint4 v;
        v.x = pf_lookup<B>(tab_lane, w, (4 * j + 0) * 2 * B);
        v.y = pf_lookup<B>(tab_lane, w, (4 * j + 1) * 2 * B);
        v.z = pf_lookup<B>(tab_lane, w, (4 * j + 2) * 2 * B);
        v.w = pf_lookup<B>(tab_lane, w, (4 * j + 3) * 2 * B);
        dst[j] = v;
    }
}

template <bool ALIGNED>
__device__ __forceinline__ void prefill_body(const AttendParams &p, u8 *smem_base) {
    u32 *tab_k = reinterpret_cast<u32 *>(smem_base);
    u32 *tab_v = SHARED_TABLE ? tab_k : tab_k + Table<BITS_K>::WORDS;
    u8 *after = reinterpret_cast<u8 *>(tab_v + Table<BITS_V>::WORDS);
    u16 *qs = reinterpret_cast<u16 *>(after);
    u16 *kt_s = qs + PF_ROWS * PF_LD;
    u16 *vt_s = kt_s + PF_TILE * PF_LD;
    float *kscale = reinterpret_cast<float *>(vt_s + PF_TILE * PF_LD);
    float *vscale = kscale + PF_TILE;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const i64 n_cols = p.n_q * p.group;
    const i64 n_rowblocks = (n_cols + PF_ROWS - 1) / PF_ROWS;
    const i64 h = blockIdx.y / n_rowblocks, rb = blockIdx.y % n_rowblocks;
    const i64 seq = blockIdx.z, split = blockIdx.x;
    const u8 *ks = p.k_stores ? reinterpret_cast<const u8 *>(p.k_stores[seq]) : p.k_store;
    const u8 *vs = p.v_stores ? reinterpret_cast<const u8 *>(p.v_stores[seq]) : p.v_store;
    constexpr int CBK = Codes<BITS_K>::BYTES, CBV = Codes<BITS_V>::BYTES;

    fill_table<BITS_K>(tab_k, p.k_centroids, tid, blockDim.x);
    if (!SHARED_TABLE) fill_table<BITS_V>(tab_v, p.v_centroids, tid, blockDim.x);
    for (int e = tid; e < PF_ROWS * D; e += blockDim.x) {
        const int r = e / D, d = e % D;
        const i64 c = rb * PF_ROWS + r;
        float v = 0.0f;
        if (c < n_cols) {
            const i64 i = c / p.group, hq = h * p.group + c % p.group;
            v = p.q_hat[((seq * p.n_q + i) * p.n_heads + hq) * D + d];
        }
        qs[r * PF_LD + d] = float_to_f16(v);
    }
    // This lane's rows: g and g + 8 of each of the warp's PF_MT fragments; column c of the CTA's
    // row block is (query token c / group, query head h * group + c % group).
    const int row0 = warp * 16 * PF_MT;
    auto col_of = [&](int mt, int r) -> i64 { return rb * PF_ROWS + row0 + mt * 16 + g + 8 * r; };
    float coef[PF_MT][2], qmu[PF_MT][2], m[PF_MT][2], l[PF_MT][2];
#pragma unroll
    for (int mt = 0; mt < PF_MT; mt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const i64 c = col_of(mt, r);
            const i64 qidx = (seq * p.n_q + c / p.group) * p.n_heads + h * p.group + c % p.group;
            coef[mt][r] = c < n_cols ? p.q_coef[qidx] : 0.0f;
            qmu[mt][r] = c < n_cols ? p.q_mu[qidx] : 0.0f;
            m[mt][r] = NEG_INF;
            l[mt][r] = 0.0f;
        }
    }
    // Query tokens of the row block, for the tile classification.
    const i64 tok0 = rb * PF_ROWS / p.group;
    const i64 tok1 = min(p.n_q - 1, (rb * PF_ROWS + PF_ROWS - 1) / p.group);
    float o[PF_MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < PF_MT; mt++)
#pragma unroll
        for (int n = 0; n < D / 8; n++) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.0f;

    // Cell indices in 32 bits (the host refuses more than 2^31 - 1 cells); byte offsets stay 64-bit.
    const int len = (int)seq_cells_of(p, seq);
    const int begin = (int)min(split * p.chunk, (i64)len);
    const int end = (int)min(split * p.chunk + p.chunk, (i64)len);
    // No mask and no positions: whole tiles need no per-cell visibility term.
    const bool plain = p.mask == nullptr && p.cell_pos == nullptr;
    const u32 *tk = tab_k + lane, *tv = tab_v + lane;
    // Thread tid dequantises dimensions [part * PF_DIMS, (part + 1) * PF_DIMS) of cell tid % PF_TILE,
    // K and V; consecutive lanes take consecutive cells (16-byte stores of 8 lanes cover all banks).
    const int cell_l = tid % PF_TILE, part = tid / PF_TILE;
    Window<PF_KBITS> wk;
    Window<PF_VBITS> wv;
    float ksc_raw = 0.0f, vsc_raw = 0.0f;
    auto load_raw = [&](int t0) {
        const i64 r = t0 + cell_l < end ? t0 + cell_l : t0;
        const u8 *krow = ks + r * p.k_row_bytes;
        const u8 *vrow = vs + r * p.v_row_bytes;
        load_window<PF_KBITS, ALIGNED>(wk, krow + h * CBK + part * (PF_KBITS / 8), 0);
        load_window<PF_VBITS, ALIGNED>(wv, vrow + h * CBV + part * (PF_VBITS / 8), 0);
        if (part == 0) {
            ksc_raw = load_scale(krow + p.k_scale_offset + 2 * h);
            vsc_raw = load_scale(vrow + p.v_scale_offset + 2 * h);
        }
    };
    if (begin < end) load_raw(begin);
    for (int t0 = begin; t0 < end; t0 += PF_TILE) {
        __syncthreads();  // the previous tile's readers are done (first tile: tables and queries written)
        pf_dequant<BITS_K, PF_KBITS>(kt_s + cell_l * PF_LD + part * PF_DIMS, wk, tk);
        pf_dequant<BITS_V, PF_VBITS>(vt_s + cell_l * PF_LD + part * PF_DIMS, wv, tv);
        if (part == 0) {
            kscale[cell_l] = ksc_raw;
            vscale[cell_l] = vsc_raw;
        }
        // Whether any (row, cell) of the tile needs a visibility term: a partial tile, or a mask or
        // position that is not 0 for some query token of the block at this thread's cell (tokens
        // part, part + PF_PARTS, ...). Whole visible tiles — all but the diagonal ones of a causal
        // prefill — then skip the per-score term.
        bool vary = t0 + PF_TILE > end;
        if (!plain && !vary) {
            for (i64 i = tok0 + part; i <= tok1; i += PF_PARTS) vary |= cell_bias(p, seq, i, t0 + cell_l) != 0.0f;
        }
        const bool masked = __syncthreads_or(vary);
        // The tile in steps of PF_SUB cells, each one online-softmax step (fewer live score registers).
#pragma unroll 1
        for (int sub = 0; sub < PF_TILE; sub += PF_SUB) {
            // S = Q K^T over the tile.
            float s[PF_MT][PF_SUB / 8][4];
    #pragma unroll
            for (int mt = 0; mt < PF_MT; mt++)
    #pragma unroll
                for (int n = 0; n < PF_SUB / 8; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
            // Fully unrolled (the 32-bit cell indices and two-instruction table lookups leave the registers
            // for it): the ldmatrix of later k-tiles issue between the mma of earlier ones.
    #pragma unroll
            for (int kt = 0; kt < D / 16; kt += 2) {
                u32 a0[PF_MT][4], a1[PF_MT][4];
    #pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
                    const u16 *qrow = qs + (row0 + mt * 16 + (lane & 15)) * PF_LD + (lane >> 4) * 8;
                    ldmatrix_x4(a0[mt], qrow + kt * 16);
                    ldmatrix_x4(a1[mt], qrow + (kt + 1) * 16);
                }
    #pragma unroll
                for (int n = 0; n < PF_SUB / 8; n++) {
                    u32 b[4];
                    ldmatrix_x4(b, kt_s + (sub + n * 8 + (lane & 7)) * PF_LD + kt * 16 + (lane >> 3) * 8);
    #pragma unroll
                    for (int mt = 0; mt < PF_MT; mt++) {
                        mma_16816(s[mt][n], a0[mt], b);
                        mma_16816(s[mt][n], a1[mt], b + 2);
                    }
                }
            }
            // Scores (log2 domain): ||q|| * kscale * (q_hat . c) + q.mu, plus the visibility term where
            // the tile is partial or masked. This lane's cells of column block n: n * 8 + 2t + e.
            float mx[PF_MT][2];
    #pragma unroll
            for (int mt = 0; mt < PF_MT; mt++) mx[mt][0] = mx[mt][1] = NEG_INF;
    #pragma unroll
            for (int n = 0; n < PF_SUB / 8; n++) {
                const float2 kk = *reinterpret_cast<const float2 *>(kscale + sub + n * 8 + 2 * t);
    #pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
    #pragma unroll
                    for (int r = 0; r < 2; r++) {
    #pragma unroll
                        for (int e = 0; e < 2; e++) {
                            float &x = s[mt][n][2 * r + e];
                            x = fmaf(coef[mt][r] * (e ? kk.y : kk.x), x, qmu[mt][r]);
                        }
                    }
                }
            }
            if (masked) {
    #pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
    #pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const i64 c = col_of(mt, r), i = c / p.group;
    #pragma unroll
                        for (int n = 0; n < PF_SUB / 8; n++) {
    #pragma unroll
                            for (int e = 0; e < 2; e++) {
                                const int j = t0 + sub + n * 8 + 2 * t + e;
                                const float bias = (j < end && c < n_cols) ? cell_bias(p, seq, i, j) : NEG_INF;
                                float &x = s[mt][n][2 * r + e];
                                x = bias == NEG_INF ? NEG_INF : x + bias;
                            }
                        }
                    }
                }
            }
    #pragma unroll
            for (int mt = 0; mt < PF_MT; mt++)
    #pragma unroll
                for (int r = 0; r < 2; r++)
    #pragma unroll
                    for (int n = 0; n < PF_SUB / 8; n++) mx[mt][r] = fmaxf(mx[mt][r], fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
            // The online softmax: raise each row's running max (the quad of lanes g shares a row); rescale
            // the accumulators only when some row of the warp grew.
            bool grow = false;
    #pragma unroll
            for (int mt = 0; mt < PF_MT; mt++) {
    #pragma unroll
                for (int r = 0; r < 2; r++) {
                    float x = mx[mt][r];
                    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
                    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
                    mx[mt][r] = fmaxf(m[mt][r], x);  // the new running max
                    grow |= mx[mt][r] > m[mt][r];
                }
            }
            if (__any_sync(0xffffffffu, grow)) {
    #pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
    #pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const float corr = mx[mt][r] == NEG_INF ? 1.0f : fast_exp2(m[mt][r] - mx[mt][r]);
                        l[mt][r] *= corr;
    #pragma unroll
                        for (int n = 0; n < D / 8; n++) {
                            o[mt][n][2 * r] *= corr;
                            o[mt][n][2 * r + 1] *= corr;
                        }
                    }
                }
            }
            float base[PF_MT][2];
    #pragma unroll
            for (int mt = 0; mt < PF_MT; mt++)
    #pragma unroll
                for (int r = 0; r < 2; r++) {
                    m[mt][r] = mx[mt][r];
                    // A row with nothing visible yet has only -inf scores: 2^(-inf - 0) = 0.
                    base[mt][r] = m[mt][r] == NEG_INF ? 0.0f : m[mt][r];
                }
            // P' = 2^(s - m) * vscale, packed into the A fragments of P·V (C layout of S = A layout of P).
            u32 pa[PF_MT][PF_SUB / 16][4];
    #pragma unroll
            for (int n = 0; n < PF_SUB / 8; n++) {
                const float2 vv = *reinterpret_cast<const float2 *>(vscale + sub + n * 8 + 2 * t);
    #pragma unroll
                for (int mt = 0; mt < PF_MT; mt++) {
                    float pr[4];
    #pragma unroll
                    for (int r = 0; r < 2; r++) {
    #pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const float x = fast_exp2(s[mt][n][2 * r + e] - base[mt][r]);
                            l[mt][r] += x;
                            pr[2 * r + e] = x * (e ? vv.y : vv.x);
                        }
                    }
                    pa[mt][n / 2][(n & 1) * 2] = pack_half2(pr[0], pr[1]);
                    pa[mt][n / 2][(n & 1) * 2 + 1] = pack_half2(pr[2], pr[3]);
                }
            }
            if (sub + PF_SUB == PF_TILE && t0 + PF_TILE < end) load_raw(t0 + PF_TILE);
            // O += P' V over the tile, 16 cells per k-step.
    #pragma unroll
            for (int kc = 0; kc < PF_SUB / 16; kc++) {
    #pragma unroll
                for (int n = 0; n < D / 8; n += 2) {
                    u32 b[4];
                    ldmatrix_x4_trans(b, vt_s + (sub + kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * PF_LD + n * 8 + (lane >> 4) * 8);
    #pragma unroll
                    for (int mt = 0; mt < PF_MT; mt++) {
                        mma_16816(o[mt][n], pa[mt][kc], b);
                        mma_16816(o[mt][n + 1], pa[mt][kc], b + 2);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int mt = 0; mt < PF_MT; mt++) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lr = l[mt][r];
            lr += __shfl_xor_sync(0xffffffffu, lr, 1);
            lr += __shfl_xor_sync(0xffffffffu, lr, 2);
            const i64 c = col_of(mt, r);
            if (c >= n_cols) continue;
            float *dst = partial_at(p, seq, c / p.group, h * p.group + c % p.group, split);
            if (t == 0) {
                dst[0] = m[mt][r];
                dst[1] = lr;
            }
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                *reinterpret_cast<float2 *>(dst + PART_O + n * 8 + 2 * t) = make_float2(o[mt][n][2 * r], o[mt][n][2 * r + 1]);
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(PF_THREADS, PF_MIN_CTAS) tq_prefill_aligned(const AttendParams p) {
    extern __shared__ __align__(16) u8 pf_smem[];
    prefill_body<true>(p, pf_smem);
}
extern "C" __global__ void __launch_bounds__(PF_THREADS, PF_MIN_CTAS) tq_prefill_unaligned(const AttendParams p) {
    extern __shared__ __align__(16) u8 pf_smem[];
    prefill_body<false>(p, pf_smem);
}
