// Prefill attention (chunks of query tokens) over compressed rows, FlashAttention-2 style: K and V
// tiles of 64 cells are dequantised once into shared memory as f16 centroid values (scales kept
// apart in f32) and shared by 64 query rows — (query token, query head of the GQA group) pairs of one
// kv head — on tensor cores (mma m16n8k16 via ldmatrix). Scores are scaled by ||q|| * kscale in f32;
// values are weighted by p * vscale before the f16 mma. Split-K over cells; tq_combine merges.

// PF_ROWS query rows per CTA (16 per warp of PF_THREADS), PF_TILE cells per tile, PF_PAD halves of
// padding per shared-memory row: from the host (kernels/common.cuh).
static_assert(PF_ROWS == 16 * (PF_THREADS / 32), "one 16-row mma fragment per warp");
constexpr int PF_LD = D + PF_PAD;   // smem row stride in halves (conflict-free ldmatrix)
constexpr int PF_KBITS = D / 4 * 2 * BITS_K;  // bits one thread dequantises per cell (half a head)
constexpr int PF_VBITS = D / 4 * 2 * BITS_V;

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

// Dequantise half a head (pairs [hh*D/4, (hh+1)*D/4)) of one cell, loaded earlier into `w`, into an
// f16 smem row.
template <int B, int NBITS>
__device__ __forceinline__ void pf_dequant(u16 *dst_row, const Window<NBITS> &w, int hh, const u32 *tab_lane) {
    u32 *dst = reinterpret_cast<u32 *>(dst_row) + hh * (D / 4);
#pragma unroll
    for (int j = 0; j < D / 4; j++) dst[j] = lookup_pair<B>(tab_lane, w.bits(j * 2 * B, 2 * B));
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
    // This lane's rows: g and g + 8 of the warp's 16.
    i64 qi[2], hq[2];
    float coef[2], qmu[2], m[2], l[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const i64 c = rb * PF_ROWS + warp * 16 + g + 8 * r;
        qi[r] = c < n_cols ? c / p.group : -1;
        hq[r] = h * p.group + c % p.group;
        const i64 qidx = (seq * p.n_q + qi[r]) * p.n_heads + hq[r];
        coef[r] = qi[r] >= 0 ? p.q_coef[qidx] : 0.0f;
        qmu[r] = qi[r] >= 0 ? p.q_mu[qidx] : 0.0f;
        m[r] = NEG_INF;
        l[r] = 0.0f;
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    const i64 len = seq_cells_of(p, seq);
    const i64 begin = split * p.chunk;
    const i64 end = min(begin + p.chunk, len);
    const u32 *tk = tab_k + lane, *tv = tab_v + lane;
    // Threads 0..127 handle K, 128..255 V: cell = (tid % 128) / 2, half hh = tid % 2. The raw bits of
    // the next tile are loaded into registers before the current tile is computed.
    const bool is_k = tid < PF_THREADS / 2;
    const int cell_l = (tid % (PF_THREADS / 2)) >> 1, hh = tid & 1;
    Window<PF_KBITS> wk;
    Window<PF_VBITS> wv;
    float sc_raw = 0.0f;
    auto load_raw = [&](i64 t0) {
        const i64 r = t0 + cell_l < end ? t0 + cell_l : t0;
        if (is_k) {
            const u8 *row = ks + r * p.k_row_bytes;
            load_window<PF_KBITS, ALIGNED>(wk, row + h * CBK + hh * (PF_KBITS / 8), 0);
            sc_raw = load_scale(row + p.k_scale_offset + 2 * h);
        } else {
            const u8 *row = vs + r * p.v_row_bytes;
            load_window<PF_VBITS, ALIGNED>(wv, row + h * CBV + hh * (PF_VBITS / 8), 0);
            sc_raw = load_scale(row + p.v_scale_offset + 2 * h);
        }
    };
    if (begin < end) load_raw(begin);
    for (i64 t0 = begin; t0 < end; t0 += PF_TILE) {
        __syncthreads();
        if (is_k) {
            pf_dequant<BITS_K, PF_KBITS>(kt_s + cell_l * PF_LD, wk, hh, tk);
            if (hh == 0) kscale[cell_l] = sc_raw;
        } else {
            pf_dequant<BITS_V, PF_VBITS>(vt_s + cell_l * PF_LD, wv, hh, tv);
            if (hh == 0) vscale[cell_l] = sc_raw;
        }
        __syncthreads();
        if (t0 + PF_TILE < end) load_raw(t0 + PF_TILE);
        float s[PF_TILE / 8][4];
#pragma unroll
        for (int n = 0; n < PF_TILE / 8; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kt = 0; kt < D / 16; kt += 2) {
            u32 a0[4], a1[4];
            ldmatrix_x4(a0, qs + (warp * 16 + (lane & 15)) * PF_LD + kt * 16 + (lane >> 4) * 8);
            ldmatrix_x4(a1, qs + (warp * 16 + (lane & 15)) * PF_LD + (kt + 1) * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int n = 0; n < PF_TILE / 8; n++) {
                u32 b[4];
                ldmatrix_x4(b, kt_s + (n * 8 + (lane & 7)) * PF_LD + kt * 16 + (lane >> 3) * 8);
                mma_16816(s[n], a0, b);
                mma_16816(s[n], a1, b + 2);
            }
        }
        // Scores (log2 domain) and the online softmax of rows g (r = 0) and g + 8 (r = 1).
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float mx = NEG_INF;
#pragma unroll
            for (int n = 0; n < PF_TILE / 8; n++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int cell = n * 8 + 2 * t + e;
                    const i64 j = t0 + cell;
                    float bias = (j < end && qi[r] >= 0) ? cell_bias(p, seq, qi[r], j) : NEG_INF;
                    float &x = s[n][2 * r + e];
                    x = bias == NEG_INF ? NEG_INF : coef[r] * kscale[cell] * x + qmu[r] + bias;
                    mx = fmaxf(mx, x);
                }
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float new_m = fmaxf(m[r], mx);
            float corr = 1.0f;
            if (new_m != NEG_INF) {
                corr = fast_exp2(m[r] - new_m);
                m[r] = new_m;
            }
            float sum = 0.0f;
#pragma unroll
            for (int n = 0; n < PF_TILE / 8; n++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[n][2 * r + e];
                    const float pr = new_m == NEG_INF ? 0.0f : fast_exp2(x - new_m);
                    sum += pr;
                    x = pr > 0.0f ? pr * vscale[n * 8 + 2 * t + e] : 0.0f;
                }
            }
            l[r] = l[r] * corr + sum;
#pragma unroll
            for (int n = 0; n < D / 8; n++) {
                o[n][2 * r] *= corr;
                o[n][2 * r + 1] *= corr;
            }
        }
        // O += P' V over the tile, 16 cells per k-step.
#pragma unroll
        for (int kc = 0; kc < PF_TILE / 16; kc++) {
            u32 a[4] = {pack_half2(s[2 * kc][0], s[2 * kc][1]), pack_half2(s[2 * kc][2], s[2 * kc][3]),
                        pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]), pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int n = 0; n < D / 8; n += 2) {
                u32 b[4];
                ldmatrix_x4_trans(b, vt_s + (kc * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * PF_LD + n * 8 + (lane >> 4) * 8);
                mma_16816(o[n], a, b);
                mma_16816(o[n + 1], a, b + 2);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (qi[r] < 0) continue;
        float *dst = partial_at(p, seq, qi[r], hq[r], split);
        if (t == 0) {
            dst[0] = m[r];
            dst[1] = l[r];
        }
#pragma unroll
        for (int n = 0; n < D / 8; n++) {
            dst[PART_O + n * 8 + 2 * t] = o[n][2 * r];
            dst[PART_O + n * 8 + 2 * t + 1] = o[n][2 * r + 1];
        }
    }
}

extern "C" __global__ void __launch_bounds__(PF_THREADS) tq_prefill_aligned(const AttendParams p) {
    extern __shared__ __align__(16) u8 pf_smem[];
    prefill_body<true>(p, pf_smem);
}
extern "C" __global__ void __launch_bounds__(PF_THREADS) tq_prefill_unaligned(const AttendParams p) {
    extern __shared__ __align__(16) u8 pf_smem[];
    prefill_body<false>(p, pf_smem);
}
