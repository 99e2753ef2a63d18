// Decode attention (few query tokens) over compressed rows: split-K flash-decoding with tensor cores.
//
// Grid: x = split of the cells, y = (kv-head block, column block), z = sequence. A CTA holds warps for
// `heads_per_cta` kv heads x `warps_per_head` token interleaves, so the warps of one CTA read whole
// rows (every compressed byte once, coalesced). A warp owns one kv head and a block of 8 "columns":
// (query token, query head of the GQA group) pairs, so all query heads of a group share every
// dequantised K/V element. Per 16-token step:
//   scores  S^T[16 tok x 8 col] = K[16 x D] . Qhat^T[D x 8]       (mma m16n8k16, K dequantised to f16)
//   softmax online in f32 (log2 domain), per column
//   values  O^T[D x 8] += V^T[D x 16 tok] . (p * vscale)^T[16 x 8] (mma; P transposed with movmatrix)
// Dimensions are permuted freely inside the rotated basis: on the K side lane quad t reads pairs
// [t*D/8, (t+1)*D/8) of a token (contiguous bytes), on the V side lane row g reads pairs
// [g*D/16, (g+1)*D/16). The un-rotation happens once per output row in the combine kernel.
// Each warp writes a partial (m, l, O) per column; tq_combine merges them.

constexpr int DEC_PK = D / 8;    // K pairs per lane per token
constexpr int DEC_PV = D / 16;   // V pairs per lane per token
constexpr int DEC_KBITS = DEC_PK * 2 * BITS_K;
constexpr int DEC_VBITS = DEC_PV * 2 * BITS_V;
// A lane's V bits start at bit g*DEC_VBITS: byte aligned iff DEC_VBITS is a multiple of 8.
constexpr bool DEC_V_BYTE_ALIGNED = DEC_VBITS % 8 == 0;
constexpr bool SHARED_TABLE = BITS_K == BITS_V;

template <bool ALIGNED> struct DecodeStep {
    Window<DEC_KBITS> ka, kb;  // tokens g and g + 8
    Window<DEC_VBITS> v[4];    // tokens 2t, 2t+1, 2t+8, 2t+9
    float ksa, ksb, vsa, vsb;  // scales of tokens g and g + 8
};

template <bool ALIGNED>
__device__ __forceinline__ void decode_load(DecodeStep<ALIGNED> &st, const u8 *ks, const u8 *vs, const AttendParams &p,
                                            i64 h, i64 t0, i64 end, int g, int t) {
    constexpr int CBK = Codes<BITS_K>::BYTES, CBV = Codes<BITS_V>::BYTES;
    // Rows past the end are clamped to t0 (readable) and masked by the caller.
    i64 ra = t0 + g < end ? t0 + g : t0, rb = t0 + g + 8 < end ? t0 + g + 8 : t0;
    const u8 *ka = ks + ra * p.k_row_bytes, *kb = ks + rb * p.k_row_bytes;
    load_window<DEC_KBITS, ALIGNED>(st.ka, ka + h * CBK + t * (DEC_KBITS / 8), 0);
    load_window<DEC_KBITS, ALIGNED>(st.kb, kb + h * CBK + t * (DEC_KBITS / 8), 0);
    st.ksa = load_scale(ka + p.k_scale_offset + 2 * h);
    st.ksb = load_scale(kb + p.k_scale_offset + 2 * h);
    const u8 *va = vs + ra * p.v_row_bytes, *vb = vs + rb * p.v_row_bytes;
    st.vsa = load_scale(va + p.v_scale_offset + 2 * h);
    st.vsb = load_scale(vb + p.v_scale_offset + 2 * h);
    const int vbit = g * DEC_VBITS;
    const int tok[4] = {2 * t, 2 * t + 1, 2 * t + 8, 2 * t + 9};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        i64 r = t0 + tok[j] < end ? t0 + tok[j] : t0;
        const u8 *src = vs + r * p.v_row_bytes + h * CBV + (vbit >> 3);
        if (DEC_V_BYTE_ALIGNED) load_window<DEC_VBITS, ALIGNED>(st.v[j], src, 0);
        else load_window<DEC_VBITS, false>(st.v[j], src, vbit & 7);
    }
}

template <bool ALIGNED>
__device__ __forceinline__ void decode_body(const AttendParams &p, const u32 *tab_k, const u32 *tab_v) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const i64 n_cols = p.n_q * p.group;
    const i64 n_colblocks = (n_cols + 7) / 8;
    const i64 hb = blockIdx.y / n_colblocks, cb = blockIdx.y % n_colblocks;
    const i64 seq = blockIdx.z, split = blockIdx.x;
    const i64 hl = warp % p.heads_per_cta, sub = warp / p.heads_per_cta;
    const i64 h = hb * p.heads_per_cta + hl;
    if (h >= p.n_kv_heads) return;
    const u8 *ks = p.k_stores ? reinterpret_cast<const u8 *>(p.k_stores[seq]) : p.k_store;
    const u8 *vs = p.v_stores ? reinterpret_cast<const u8 *>(p.v_stores[seq]) : p.v_store;
    const u32 *tk = tab_k + lane, *tv = tab_v + lane;

    // Query fragments (B operand of the score mma): column 8cb + g, pairs t*DEC_PK + 2kt (+1).
    u32 bq[D / 16][2];
    {
        const i64 c = cb * 8 + g;
        const float *q = nullptr;
        if (c < n_cols) {
            const i64 i = c / p.group, hq = h * p.group + c % p.group;
            q = p.q_hat + ((seq * p.n_q + i) * p.n_heads + hq) * D;
        }
#pragma unroll
        for (int kt = 0; kt < D / 16; kt++) {
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const int pair = t * DEC_PK + 2 * kt + s;
                bq[kt][s] = q ? pack_half2(q[2 * pair], q[2 * pair + 1]) : 0u;
            }
        }
    }
    // This lane's two columns.
    i64 col[2], qi[2];
    float coef[2], qmu[2], m[2], l[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        col[j] = cb * 8 + 2 * t + j;
        qi[j] = col[j] < n_cols ? col[j] / p.group : -1;
        const i64 hq = h * p.group + col[j] % p.group;
        const i64 qidx = (seq * p.n_q + qi[j]) * p.n_heads + hq;
        coef[j] = qi[j] >= 0 ? p.q_coef[qidx] : 0.0f;
        qmu[j] = qi[j] >= 0 ? p.q_mu[qidx] : 0.0f;
        m[j] = NEG_INF;
        l[j] = 0.0f;
    }
    float o[D / 16][4];
#pragma unroll
    for (int mt = 0; mt < D / 16; mt++) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.0f;

    const i64 len = seq_cells_of(p, seq);
    const i64 begin = split * p.chunk;
    const i64 end = min(begin + p.chunk, len);
    const i64 stride = 16 * p.warps_per_head;
    i64 t0 = begin + 16 * sub;
    DecodeStep<ALIGNED> cur;
    if (t0 < end) decode_load<ALIGNED>(cur, ks, vs, p, h, t0, end, g, t);
    for (; t0 < end; t0 += stride) {
        DecodeStep<ALIGNED> next;
        const bool more = t0 + stride < end;
        if (more) decode_load<ALIGNED>(next, ks, vs, p, h, t0 + stride, end, g, t);

        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int kt = 0; kt < D / 16; kt++) {
            u32 a[4];
            a[0] = lookup_pair<BITS_K>(tk, cur.ka.bits((2 * kt) * 2 * BITS_K, 2 * BITS_K));
            a[1] = lookup_pair<BITS_K>(tk, cur.kb.bits((2 * kt) * 2 * BITS_K, 2 * BITS_K));
            a[2] = lookup_pair<BITS_K>(tk, cur.ka.bits((2 * kt + 1) * 2 * BITS_K, 2 * BITS_K));
            a[3] = lookup_pair<BITS_K>(tk, cur.kb.bits((2 * kt + 1) * 2 * BITS_K, 2 * BITS_K));
            mma_16816(s, a, bq[kt]);
        }
        // Scores in the log2 domain: s[0] (token g, col 0), s[1] (g, col 1), s[2] (g+8, col 0), s[3] (g+8, col 1).
        const i64 row[2] = {t0 + g, t0 + g + 8};
        const float kscale[2] = {cur.ksa, cur.ksb};
#pragma unroll
        for (int r = 0; r < 2; r++) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
                float bias = (row[r] < end && qi[j] >= 0) ? cell_bias(p, seq, qi[j], row[r]) : NEG_INF;
                float &x = s[2 * r + j];
                x = bias == NEG_INF ? NEG_INF : coef[j] * kscale[r] * x + qmu[j] + bias;
            }
        }
        float pv[4];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            float mx = fmaxf(s[j], s[2 + j]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 4));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            const float new_m = fmaxf(m[j], mx);
            if (new_m == NEG_INF) {
                pv[j] = pv[2 + j] = 0.0f;
                continue;
            }
            const float corr = fast_exp2(m[j] - new_m);
            m[j] = new_m;
            pv[j] = fast_exp2(s[j] - new_m);
            pv[2 + j] = fast_exp2(s[2 + j] - new_m);
            l[j] = l[j] * corr + pv[j] + pv[2 + j];
#pragma unroll
            for (int mt = 0; mt < D / 16; mt++) {
                o[mt][j] *= corr;
                o[mt][2 + j] *= corr;
            }
        }
        // p * vscale as f16 (a zero weight stays zero whatever the cell holds), transposed into the
        // B fragment of the value mma: b[0] tokens 2t, 2t+1 and b[1] tokens 2t+8, 2t+9 of column g.
        u32 b[2];
        b[0] = movmatrix_trans(pack_half2(pv[0] > 0.0f ? pv[0] * cur.vsa : 0.0f, pv[1] > 0.0f ? pv[1] * cur.vsa : 0.0f));
        b[1] = movmatrix_trans(pack_half2(pv[2] > 0.0f ? pv[2] * cur.vsb : 0.0f, pv[3] > 0.0f ? pv[3] * cur.vsb : 0.0f));
#pragma unroll
        for (int mt = 0; mt < D / 16; mt++) {
            const int bitpos = mt * 2 * BITS_V;
            u32 h0 = lookup_pair<BITS_V>(tv, cur.v[0].bits(bitpos, 2 * BITS_V));
            u32 h1 = lookup_pair<BITS_V>(tv, cur.v[1].bits(bitpos, 2 * BITS_V));
            u32 h2 = lookup_pair<BITS_V>(tv, cur.v[2].bits(bitpos, 2 * BITS_V));
            u32 h3 = lookup_pair<BITS_V>(tv, cur.v[3].bits(bitpos, 2 * BITS_V));
            u32 a[4] = {__byte_perm(h0, h1, 0x5410), __byte_perm(h0, h1, 0x7632), __byte_perm(h2, h3, 0x5410),
                        __byte_perm(h2, h3, 0x7632)};
            mma_16816(o[mt], a, b);
        }
        if (more) cur = next;
    }
    // Sum the lane-partial normalisers over the 8 lanes sharing a column, then write the partials.
#pragma unroll
    for (int j = 0; j < 2; j++) {
        l[j] += __shfl_xor_sync(0xffffffffu, l[j], 4);
        l[j] += __shfl_xor_sync(0xffffffffu, l[j], 8);
        l[j] += __shfl_xor_sync(0xffffffffu, l[j], 16);
    }
    const i64 part = split * p.warps_per_head + sub;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        if (qi[j] < 0) continue;
        float *dst = partial_at(p, seq, qi[j], h * p.group + col[j] % p.group, part);
        if (g == 0) {
            dst[0] = m[j];
            dst[1] = l[j];
        }
#pragma unroll
        for (int mt = 0; mt < D / 16; mt++) {
            const int pair = g * DEC_PV + mt;
            dst[2 + 2 * pair] = o[mt][j];
            dst[2 + 2 * pair + 1] = o[mt][2 + j];
        }
    }
}

template <bool ALIGNED>
__device__ __forceinline__ void decode_entry(const AttendParams &p) {
    extern __shared__ u32 smem[];
    u32 *tab_k = smem;
    u32 *tab_v = SHARED_TABLE ? smem : smem + Table<BITS_K>::WORDS;
    fill_table<BITS_K>(tab_k, p.k_centroids, threadIdx.x, blockDim.x);
    if (!SHARED_TABLE) fill_table<BITS_V>(tab_v, p.v_centroids, threadIdx.x, blockDim.x);
    __syncthreads();
    decode_body<ALIGNED>(p, tab_k, tab_v);
}

// ALIGNED: row strides, code offsets and store pointers allow the widest vector loads (host checks).
extern "C" __global__ void __launch_bounds__(256) tq_decode_aligned(const AttendParams p) { decode_entry<true>(p); }
extern "C" __global__ void __launch_bounds__(256) tq_decode_unaligned(const AttendParams p) { decode_entry<false>(p); }
