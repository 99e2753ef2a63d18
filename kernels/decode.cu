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
//
// Two ways to feed the warps:
//   tq_decode_staged* (8/16-byte aligned rows, all kv heads in one CTA): the CTA copies whole row
//                     ranges into a ring of shared-memory stages with cp.async (several stages in
//                     flight), warps read their windows from shared memory;
//   tq_decode_direct  (any alignment): each lane loads its windows from global memory byte-wise,
//                     one step ahead.

constexpr int DEC_PK = D / 8;    // K pairs per lane per token
constexpr int DEC_PV = D / 16;   // V pairs per lane per token
constexpr int DEC_KBITS = DEC_PK * 2 * BITS_K;
constexpr int DEC_VBITS = DEC_PV * 2 * BITS_V;
// A lane's V bits start at bit g*DEC_VBITS: byte aligned iff DEC_VBITS is a multiple of 8.
constexpr bool DEC_V_BYTE_ALIGNED = DEC_VBITS % 8 == 0;
constexpr bool SHARED_TABLE = BITS_K == BITS_V;
// DEC_STAGES (stages of the staged kernel's ring) and DEC_MIN_CTAS come from the host. The staged kernel is
// latency-bound with one CTA per multiprocessor: the host asks for two where the registers allow it
// without spilling much (head_dim <= 128) and sizes the stages to fit them.

struct DecodeStep {
    Window<DEC_KBITS> ka, kb;  // tokens g and g + 8
    Window<DEC_VBITS> v[4];    // tokens 2t, 2t+1, 2t+8, 2t+9
    float ksa, ksb, vsa, vsb;  // scales of tokens g and g + 8
};

// Load a step's windows. Rows are addressed as ks + (row - base) * row_bytes; rows at or past `end`
// are clamped to t0 (readable) and masked by the caller.
template <bool STAGED, int SW>
__device__ __forceinline__ void decode_load(DecodeStep &st, const u8 *ks, const u8 *vs, i64 base, const AttendParams &p,
                                            i64 h, i64 t0, i64 end, int g, int t) {
    constexpr int CBK = Codes<BITS_K>::BYTES, CBV = Codes<BITS_V>::BYTES;
    i64 ra = t0 + g < end ? t0 + g : t0, rb = t0 + g + 8 < end ? t0 + g + 8 : t0;
    const u8 *ka = ks + (ra - base) * p.k_row_bytes, *kb = ks + (rb - base) * p.k_row_bytes;
    load_window<DEC_KBITS, STAGED, STAGED, SW>(st.ka, ka + h * CBK + t * (DEC_KBITS / 8), 0);
    load_window<DEC_KBITS, STAGED, STAGED, SW>(st.kb, kb + h * CBK + t * (DEC_KBITS / 8), 0);
    st.ksa = load_scale(ka + p.k_scale_offset + 2 * h);
    st.ksb = load_scale(kb + p.k_scale_offset + 2 * h);
    const u8 *va = vs + (ra - base) * p.v_row_bytes, *vb = vs + (rb - base) * p.v_row_bytes;
    st.vsa = load_scale(va + p.v_scale_offset + 2 * h);
    st.vsb = load_scale(vb + p.v_scale_offset + 2 * h);
    const int vbit = g * DEC_VBITS;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int tok = 2 * t + (j & 1) + 8 * (j >> 1);
        i64 r = t0 + tok < end ? t0 + tok : t0;
        const u8 *src = vs + (r - base) * p.v_row_bytes + h * CBV + (vbit >> 3);
        if (DEC_V_BYTE_ALIGNED) load_window<DEC_VBITS, STAGED, STAGED, SW>(st.v[j], src, 0);
        else load_window<DEC_VBITS, false, STAGED, SW>(st.v[j], src, vbit & 7);
    }
}

// Per-warp state: query fragments, this lane's two columns, the running softmax and O^T fragments.
struct DecodeWarp {
    u32 bq[D / 16][2];
    i64 col[2], qi[2];
    float coef[2], qmu[2], m[2], l[2];
    float o[D / 16][4];
};

__device__ __forceinline__ void decode_step(DecodeWarp &w, const DecodeStep &cur, const AttendParams &p, i64 seq, i64 t0,
                                            i64 end, int g, int t, const u32 *tk, const u32 *tv) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kt = 0; kt < D / 16; kt++) {
        u32 a[4];
        a[0] = lookup_pair<BITS_K>(tk, cur.ka.bits((2 * kt) * 2 * BITS_K, 2 * BITS_K));
        a[1] = lookup_pair<BITS_K>(tk, cur.kb.bits((2 * kt) * 2 * BITS_K, 2 * BITS_K));
        a[2] = lookup_pair<BITS_K>(tk, cur.ka.bits((2 * kt + 1) * 2 * BITS_K, 2 * BITS_K));
        a[3] = lookup_pair<BITS_K>(tk, cur.kb.bits((2 * kt + 1) * 2 * BITS_K, 2 * BITS_K));
        mma_16816(s, a, w.bq[kt]);
    }
    // Scores in the log2 domain: s[0] (token g, col 0), s[1] (g, col 1), s[2] (g+8, col 0), s[3] (g+8, col 1).
    const i64 row[2] = {t0 + g, t0 + g + 8};
    const float kscale[2] = {cur.ksa, cur.ksb};
#pragma unroll
    for (int r = 0; r < 2; r++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            float bias = (row[r] < end && w.qi[j] >= 0) ? cell_bias(p, seq, w.qi[j], row[r]) : NEG_INF;
            float &x = s[2 * r + j];
            x = bias == NEG_INF ? NEG_INF : w.coef[j] * kscale[r] * x + w.qmu[j] + bias;
        }
    }
    float pv[4];
    raise_running_max(w, s);
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const bool none = w.m[j] == NEG_INF;
        pv[j] = none ? 0.0f : fast_exp2(s[j] - w.m[j]);
        pv[2 + j] = none ? 0.0f : fast_exp2(s[2 + j] - w.m[j]);
        w.l[j] += pv[j] + pv[2 + j];
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
        mma_16816(w.o[mt], a, b);
    }
}

template <bool STAGED, int SW>
__device__ __forceinline__ void decode_body(const AttendParams &p, const u32 *tab_k, const u32 *tab_v, u8 *stages) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const i64 n_cols = p.n_q * p.group;
    const i64 n_colblocks = (n_cols + 7) / 8;
    const i64 hb = blockIdx.y / n_colblocks, cb = blockIdx.y % n_colblocks;
    const i64 seq = blockIdx.z, split = blockIdx.x;
    const i64 hl = warp % p.heads_per_cta, sub = warp / p.heads_per_cta;
    const i64 h = hb * p.heads_per_cta + hl;
    const bool active = h < p.n_kv_heads;
    const u8 *ks = p.k_stores ? reinterpret_cast<const u8 *>(p.k_stores[seq]) : p.k_store;
    const u8 *vs = p.v_stores ? reinterpret_cast<const u8 *>(p.v_stores[seq]) : p.v_store;
    const u32 *tk = tab_k + lane, *tv = tab_v + lane;

    DecodeWarp w;
    {
        // Query fragments (B operand of the score mma): column 8cb + g, pairs t*DEC_PK + 2kt (+1).
        const i64 c = cb * 8 + g;
        const float *q = nullptr;
        if (active && c < n_cols) {
            const i64 i = c / p.group, hq = h * p.group + c % p.group;
            q = p.q_hat + ((seq * p.n_q + i) * p.n_heads + hq) * D;
        }
#pragma unroll
        for (int kt = 0; kt < D / 16; kt++) {
#pragma unroll
            for (int s = 0; s < 2; s++) {
                const int pair = t * DEC_PK + 2 * kt + s;
                w.bq[kt][s] = q ? pack_half2(q[2 * pair], q[2 * pair + 1]) : 0u;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 2; j++) {
        w.col[j] = cb * 8 + 2 * t + j;
        w.qi[j] = (active && w.col[j] < n_cols) ? w.col[j] / p.group : -1;
        const i64 hq = h * p.group + w.col[j] % p.group;
        const i64 qidx = (seq * p.n_q + w.qi[j]) * p.n_heads + hq;
        w.coef[j] = w.qi[j] >= 0 ? p.q_coef[qidx] : 0.0f;
        w.qmu[j] = w.qi[j] >= 0 ? p.q_mu[qidx] : 0.0f;
        w.m[j] = NEG_INF;
        w.l[j] = 0.0f;
    }
#pragma unroll
    for (int mt = 0; mt < D / 16; mt++) w.o[mt][0] = w.o[mt][1] = w.o[mt][2] = w.o[mt][3] = 0.0f;

    const i64 len = seq_cells_of(p, seq);
    const i64 begin = split * p.chunk;
    const i64 end = min(begin + p.chunk, len);
    if (STAGED) {
        // Ring of DEC_STAGES stages of stage_cells rows (K rows then V rows), filled with cp.async.
        const i64 sc = p.stage_cells;
        const i64 kbytes = sc * p.k_row_bytes, stage_bytes = kbytes + sc * p.v_row_bytes;
        const i64 n_tiles = end > begin ? (end - begin + sc - 1) / sc : 0;
        auto issue = [&](i64 tile) {
            if (tile < n_tiles) {
                const i64 t0 = begin + tile * sc;
                const i64 rows = min(sc, end - t0);
                u8 *dst = stages + (tile % DEC_STAGES) * stage_bytes;
                const u8 *ksrc = ks + t0 * p.k_row_bytes, *vsrc = vs + t0 * p.v_row_bytes;
                const i64 kc = rows * p.k_row_bytes / SW, vc = rows * p.v_row_bytes / SW;
                for (i64 c = threadIdx.x; c < kc; c += blockDim.x) {
                    if (SW == 16) cp_async16(dst + 16 * c, ksrc + 16 * c); else cp_async8(dst + 8 * c, ksrc + 8 * c);
                }
                for (i64 c = threadIdx.x; c < vc; c += blockDim.x) {
                    if (SW == 16) cp_async16(dst + kbytes + 16 * c, vsrc + 16 * c);
                    else cp_async8(dst + kbytes + 8 * c, vsrc + 8 * c);
                }
            }
            cp_async_commit();
        };
#pragma unroll
        for (int s = 0; s < DEC_STAGES - 1; s++) issue(s);
        for (i64 tile = 0; tile < n_tiles; tile++) {
            cp_async_wait<DEC_STAGES - 2>();
            __syncthreads();
            issue(tile + DEC_STAGES - 1);
            if (!active) continue;
            const i64 t0 = begin + tile * sc;
            const u8 *sk = stages + (tile % DEC_STAGES) * stage_bytes;
            const u8 *sv = sk + kbytes;
            for (i64 s0 = t0 + 16 * sub; s0 < min(t0 + sc, end); s0 += 16 * p.warps_per_head) {
                DecodeStep cur;
                decode_load<true, SW>(cur, sk, sv, t0, p, h, s0, end, g, t);
                decode_step(w, cur, p, seq, s0, end, g, t, tk, tv);
            }
        }
        cp_async_wait<0>();
    } else {
        const i64 stride = 16 * p.warps_per_head;
        i64 t0 = begin + 16 * sub;
        DecodeStep cur;
        if (active && t0 < end) decode_load<false, SW>(cur, ks, vs, 0, p, h, t0, end, g, t);
        for (; active && t0 < end; t0 += stride) {
            DecodeStep next;
            const bool more = t0 + stride < end;
            if (more) decode_load<false, SW>(next, ks, vs, 0, p, h, t0 + stride, end, g, t);
            decode_step(w, cur, p, seq, t0, end, g, t, tk, tv);
            if (more) cur = next;
        }
    }
    if (!active) return;
    // Sum the lane-partial normalisers over the 8 lanes sharing a column, then write the partials.
#pragma unroll
    for (int j = 0; j < 2; j++) {
        w.l[j] += __shfl_xor_sync(0xffffffffu, w.l[j], 4);
        w.l[j] += __shfl_xor_sync(0xffffffffu, w.l[j], 8);
        w.l[j] += __shfl_xor_sync(0xffffffffu, w.l[j], 16);
    }
    const i64 part = split * p.warps_per_head + sub;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        if (w.qi[j] < 0) continue;
        float *dst = partial_at(p, seq, w.qi[j], h * p.group + w.col[j] % p.group, part);
        if (g == 0) {
            dst[0] = w.m[j];
            dst[1] = w.l[j];
        }
#pragma unroll
        for (int mt = 0; mt < D / 16; mt++) {
            const int pair = g * DEC_PV + mt;
            dst[PART_O + 2 * pair] = w.o[mt][j];
            dst[PART_O + 2 * pair + 1] = w.o[mt][2 + j];
        }
    }
}

template <bool STAGED, int SW>
__device__ __forceinline__ void decode_entry(const AttendParams &p) {
    extern __shared__ __align__(16) u32 smem[];
    u32 *tab_k = smem;
    u32 *tab_v = SHARED_TABLE ? smem : smem + Table<BITS_K>::WORDS;
    u8 *stages = reinterpret_cast<u8 *>(tab_v + Table<BITS_V>::WORDS);
    fill_table<BITS_K>(tab_k, p.k_centroids, threadIdx.x, blockDim.x);
    if (!SHARED_TABLE) fill_table<BITS_V>(tab_v, p.v_centroids, threadIdx.x, blockDim.x);
    __syncthreads();
    decode_body<STAGED, SW>(p, tab_k, tab_v, stages);
}

// Staged: stores and rows aligned to 16 (staged16) or 8 bytes (staged8), all kv heads in one CTA
// (host checks).
extern "C" __global__ void __launch_bounds__(256, DEC_MIN_CTAS) tq_decode_staged16(const AttendParams p) { decode_entry<true, 16>(p); }
extern "C" __global__ void __launch_bounds__(256, DEC_MIN_CTAS) tq_decode_staged8(const AttendParams p) { decode_entry<true, 8>(p); }
extern "C" __global__ void __launch_bounds__(256) tq_decode_direct(const AttendParams p) { decode_entry<false, 16>(p); }
