// Fast decode attention (v4): the common case — codes of at most 4 bits on both sides, head_dim at
// most 128, rows that are 16- (tq_decode_fast16) or 8-byte (tq_decode_fast8, tq_decode_fast8c)
// multiples, at most 8 kv heads (all in one CTA).
//
// Same mathematics and fragment layouts as tq_decode_staged (decode.cu: one warp = one kv head x 8
// columns, mma m16n8k16 for scores and values, online softmax in the log2 domain, partials merged by
// tq_combine), with three changes that cut the integer work per dequantised pair from ~4 instructions
// to 1-2 and keep the memory pipe busy:
//
//  * Table layout: entry e (the 2b bits of a pair) occupies 256 bytes: 32 words for K (column = lane)
//    then 32 words for V. The byte offset of a lookup is (e << 8) | column*4 (+128 for V), so for
//    4-bit codes — where a pair is exactly one byte of the window — one PRMT forms the whole shared
//    address from the window word and a per-lane constant; other widths need a shift and a LOP3. The
//    table base sits in a uniform register (LDS [R+UR]).
//  * Persistent CTAs: the grid is at most one CTA per multiprocessor (512 threads, 128 registers, the
//    table is 64 KB for 4 bits), each CTA walks the work items (sequence, column block, split)
//    blockIdx.x, blockIdx.x + gridDim.x, ... while one cp.async ring of FD_STAGES stages streams the
//    tiles of all its items back to back — the table is filled once and the pipeline never drains
//    between items.
//  * 32-bit shared-memory offsets, precomputed per lane; no 64-bit arithmetic in the inner loop.
//
// And at the end of each item the warps of a kv head merge their partials in pairs through shared
// memory before storing (v20), so tq_combine reads half as many.

// FD_COMPILED (the host's fast_variant): bits_k, bits_v <= 4, head_dim <= 128 and byte-aligned V windows.
#if FD_COMPILED
static_assert(BITS_K <= 4 && BITS_V <= 4 && HEAD_DIM <= 128 && (HEAD_DIM / 16 * 2 * BITS_V) % 8 == 0,
              "tq_decode_fast needs 2b-bit pair codes of at most 8 bits and byte-aligned V windows");

constexpr int FD_BMAX = BITS_K > BITS_V ? BITS_K : BITS_V;
constexpr int FD_TABLE_BYTES = (1 << (2 * FD_BMAX)) * 256;
// FD_STAGES, the stages of the ring, and FD_THREADS come from the host (compile::fast_stages in
// src/backend/cuda/compile.rs, which also sizes the shared memory): two stages from sm_90 on, four before.
// The two warps of a pair (sub and sub + ceil(wph / 2) of one kv head) merge their partials in shared
// memory at the end of each item: 16 bytes per lane for (m, l) and one per column tile of the first
// FD_MERGE_H1, then the rest in a second round through the same buffer. One buffer per pair after the
// release counters, FD_MERGE_PAIR_BYTES each (compile::fast_merge_pair_bytes, which the host also sizes
// the shared memory with).
constexpr int FD_MERGE_H1 = (D / 16 + 1) / 2;
static_assert(FD_MERGE_PAIR_BYTES >= 32 * 16 * (1 + FD_MERGE_H1) && FD_MERGE_PAIR_BYTES >= 32 * 16 * (D / 16 - FD_MERGE_H1),
              "a pair's merge buffer holds (m, l) and either round's column tiles, 16 bytes per lane");
constexpr int FD_EARLY_STAGES = 1;  // stages copied before the dependency wait (bulk-copy path)

// Byte offset in the table of pair `p` of a window: ((2b bits) << 8) | col4.
template <int B, int NBITS>
__device__ __forceinline__ u32 fd_offset(const Window<NBITS> &win, int p, u32 col4) {
    constexpr int n = 2 * B;
    const int pos = p * n;
    const int wi = pos >> 5, off = pos & 31;
    if (B == 4) {
        // byte (off/8) of the word into byte 1, col4 into byte 0, zeros above.
        return __byte_perm(win.w[wi], col4, 0x5504 | ((off >> 3) << 4));
    } else {
        u32 x;
        int o;
        if (off + n > 32) {
            x = __funnelshift_r(win.w[wi], win.w[wi + 1], off);
            o = 0;
        } else {
            x = win.w[wi];
            o = off;
        }
        const u32 sh = o >= 8 ? (x >> (o - 8)) : (x << (8 - o));
        return (sh & (((1u << n) - 1) << 8)) | col4;
    }
}

// Shared-memory loads at 32-bit shared-window addresses (LDS [R+UR]: the base stays in a uniform
// register). Volatile: they must not move above the barriers that publish the stages.
__device__ __forceinline__ u32 fd_lds(u32 a) {
    u32 v;
    asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(a));
    return v;
}
__device__ __forceinline__ u32 fd_lds16(u32 a) {
    unsigned short v;
    asm volatile("ld.shared.u16 %0, [%1];" : "=h"(v) : "r"(a));
    return v;
}
// Named barrier `id` (1-15; 0 is __syncthreads) over `n` threads (whole warps).
__device__ __forceinline__ void fd_bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void fd_sts4(u32 a, float4 v) {
    asm volatile("st.shared.v4.f32 [%0], {%1,%2,%3,%4};" ::"r"(a), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w) : "memory");
}
__device__ __forceinline__ float4 fd_lds4(u32 a) {
    float4 v;
    asm volatile("ld.shared.v4.f32 {%0,%1,%2,%3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(a) : "memory");
    return v;
}

// A window of NBITS (a multiple of 8) bits at a byte address aligned to the widest load (at most SW
// bytes: the row alignment) dividing it.
template <int NBITS, int SW>
__device__ __forceinline__ void fd_window(Window<NBITS> &win, u32 a) {
    constexpr int NB = NBITS / 8;
    static_assert(NBITS % 8 == 0, "fast decode windows are whole bytes");
    if (NB % 16 == 0 && SW >= 16) {
#pragma unroll
        for (int i = 0; i < NB / 16; i++)
            asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];"
                         : "=r"(win.w[4 * i]), "=r"(win.w[4 * i + 1]), "=r"(win.w[4 * i + 2]), "=r"(win.w[4 * i + 3])
                         : "r"(a + 16 * i));
    } else if (NB % 8 == 0) {
#pragma unroll
        for (int i = 0; i < NB / 8; i++)
            asm volatile("ld.shared.v2.b32 {%0,%1}, [%2];" : "=r"(win.w[2 * i]), "=r"(win.w[2 * i + 1]) : "r"(a + 8 * i));
    } else if (NB % 4 == 0) {
#pragma unroll
        for (int i = 0; i < NB / 4; i++) win.w[i] = fd_lds(a + 4 * i);
    } else {
#pragma unroll
        for (int i = 0; i < Window<NBITS>::WORDS; i++) win.w[i] = 0;
#pragma unroll
        for (int i = 0; i < NB; i++) {
            unsigned short b;
            asm volatile("ld.shared.u8 %0, [%1];" : "=h"(b) : "r"(a + i));
            win.w[i >> 2] |= (u32)b << (8 * (i & 3));
        }
    }
    win.w[Window<NBITS>::WORDS] = 0;
}

// Fill the table: word w = entry * 64 + side * 32 + column; both sides from their own centroids.
__device__ __forceinline__ void fd_fill_table(u8 *smem, const float *kc, const float *vc) {
    uint4 *t = reinterpret_cast<uint4 *>(smem);
    for (int q = threadIdx.x; q < FD_TABLE_BYTES / 16; q += blockDim.x) {
        const int e = q >> 4, side = (q >> 3) & 1;  // 16 uint4 per entry, 8 per side
        const int b = side ? BITS_V : BITS_K;
        const float *c = side ? vc : kc;
        u32 v = 0;
        if (e < (1 << (2 * b))) v = pack_half2(c[e & ((1 << b) - 1)], c[e >> b]);
        t[q] = make_uint4(v, v, v, v);
    }
}

// Per-warp, per-item state.
struct FdWarp {
    u32 bq[D / 16][2];
    float coef[2], qmu[2], m[2], l[2];
    int qi[2], hq[2];  // query token (-1: padding column) and query head of the lane's columns
    float o[D / 16][4];
};

// One 16-row step at stage offsets ko (K rows) and vo (V rows) of smem; fragment rows g and g+8 are the
// step's rows ra and rb (fd_row_order), valid when va / vb. FULL: no mask and all 16 rows valid —
// every score is finite, so the -inf guards drop out.
template <bool MASKED, bool FULL, int SW>
__device__ __forceinline__ void fd_step(FdWarp &w, u32 tab, u32 ko, u32 vo, const u32 (&koff)[2],
                                        const u32 (&kso)[2], const u32 (&vso)[2], const u32 (&voff)[4], bool va, bool vb,
                                        u32 kcol, u32 vcol, const AttendParams &p, i64 seq, i64 row0, int ra, int rb) {
    Window<DEC_KBITS> ka, kb;
    fd_window<DEC_KBITS, SW>(ka, ko + koff[0]);
    fd_window<DEC_KBITS, SW>(kb, ko + koff[1]);
    Window<DEC_VBITS> v[4];
#pragma unroll
    for (int j = 0; j < 4; j++) fd_window<DEC_VBITS, SW>(v[j], vo + voff[j]);
    const float ksa = bf16_bits_to_float(fd_lds16(ko + kso[0])), ksb = bf16_bits_to_float(fd_lds16(ko + kso[1]));
    const float vsa = bf16_bits_to_float(fd_lds16(vo + vso[0])), vsb = bf16_bits_to_float(fd_lds16(vo + vso[1]));

    // Two accumulator chains (even and odd k-tiles) halve the dependent-mma latency.
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f}, s2[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int kt = 0; kt < D / 16; kt++) {
        u32 a[4];
        a[0] = fd_lds(tab + fd_offset<BITS_K>(ka, 2 * kt, kcol));
        a[1] = fd_lds(tab + fd_offset<BITS_K>(kb, 2 * kt, kcol));
        a[2] = fd_lds(tab + fd_offset<BITS_K>(ka, 2 * kt + 1, kcol));
        a[3] = fd_lds(tab + fd_offset<BITS_K>(kb, 2 * kt + 1, kcol));
        mma_16816(kt & 1 ? s2 : s, a, w.bq[kt]);
    }
#pragma unroll
    for (int r = 0; r < 4; r++) s[r] += s2[r];
    // s[0] (row g, col 0), s[1] (g, col 1), s[2] (g+8, col 0), s[3] (g+8, col 1), log2 domain.
    const float ks[2] = {ksa, ksb};
    const bool vr[2] = {va, vb};
#pragma unroll
    for (int r = 0; r < 2; r++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            float &x = s[2 * r + j];
            if (FULL) {
                x = w.coef[j] * ks[r] * x + w.qmu[j];
            } else {
                float bias = vr[r] ? 0.0f : NEG_INF;
                if (MASKED && vr[r] && w.qi[j] >= 0) bias = cell_bias(p, seq, w.qi[j], row0 + (r ? rb : ra));
                x = bias == NEG_INF ? NEG_INF : w.coef[j] * ks[r] * x + w.qmu[j] + bias;
            }
        }
    }
    raise_running_max(w, s);
    float pv[4];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const bool none = !FULL && w.m[j] == NEG_INF;
        pv[j] = none ? 0.0f : fast_exp2(s[j] - w.m[j]);
        pv[2 + j] = none ? 0.0f : fast_exp2(s[2 + j] - w.m[j]);
        w.l[j] += pv[j] + pv[2 + j];
    }
    // Weights times the V scale as f16; a zero weight stays zero whatever the (maybe stale) cell holds.
    u32 b[2];
    if (FULL) {
        b[0] = movmatrix_trans(pack_half2(pv[0] * vsa, pv[1] * vsa));
        b[1] = movmatrix_trans(pack_half2(pv[2] * vsb, pv[3] * vsb));
    } else {
        b[0] = movmatrix_trans(pack_half2(pv[0] > 0.0f ? pv[0] * vsa : 0.0f, pv[1] > 0.0f ? pv[1] * vsa : 0.0f));
        b[1] = movmatrix_trans(pack_half2(pv[2] > 0.0f ? pv[2] * vsb : 0.0f, pv[3] > 0.0f ? pv[3] * vsb : 0.0f));
    }
    if (BITS_V == 4) {
        // The A fragment pairs two tokens of one dimension. The pair table does not care which two
        // codes form an entry, so interleave the nibbles of two tokens' windows — entry
        // (code of token 2t, code of token 2t+1) of one dimension — and each lookup yields a fragment
        // register directly (no transposition of dimension pairs).
        // Byte k of window word wi is dimension pair 4*wi + k; a last partial word (DEC_VBITS not a
        // multiple of 32: head_dim 96) has D/16 - 4*wi pairs.
#pragma unroll
        for (int wi = 0; wi < (DEC_VBITS + 31) / 32; wi++) {
            const u32 lo01 = (v[0].w[wi] & 0x0F0F0F0Fu) | ((v[1].w[wi] << 4) & 0xF0F0F0F0u);
            const u32 hi01 = ((v[0].w[wi] >> 4) & 0x0F0F0F0Fu) | (v[1].w[wi] & 0xF0F0F0F0u);
            const u32 lo23 = (v[2].w[wi] & 0x0F0F0F0Fu) | ((v[3].w[wi] << 4) & 0xF0F0F0F0u);
            const u32 hi23 = ((v[2].w[wi] >> 4) & 0x0F0F0F0Fu) | (v[3].w[wi] & 0xF0F0F0F0u);
#pragma unroll
            for (int k = 0; k < 4 && 4 * wi + k < D / 16; k++) {
                const int mt = 4 * wi + k;
                const u32 sel = 0x5504 | (k << 4);
                u32 a[4] = {fd_lds(tab + __byte_perm(lo01, vcol, sel)), fd_lds(tab + __byte_perm(hi01, vcol, sel)),
                            fd_lds(tab + __byte_perm(lo23, vcol, sel)), fd_lds(tab + __byte_perm(hi23, vcol, sel))};
                mma_16816(w.o[mt], a, b);
            }
        }
    } else {
#pragma unroll
        for (int mt = 0; mt < D / 16; mt++) {
            const u32 h0 = fd_lds(tab + fd_offset<BITS_V>(v[0], mt, vcol));
            const u32 h1 = fd_lds(tab + fd_offset<BITS_V>(v[1], mt, vcol));
            const u32 h2 = fd_lds(tab + fd_offset<BITS_V>(v[2], mt, vcol));
            const u32 h3 = fd_lds(tab + fd_offset<BITS_V>(v[3], mt, vcol));
            u32 a[4] = {__byte_perm(h0, h1, 0x5410), __byte_perm(h0, h1, 0x7632), __byte_perm(h2, h3, 0x5410),
                        __byte_perm(h2, h3, 0x7632)};
            mma_16816(w.o[mt], a, b);
        }
    }
}

// Which row of a 16-row step the mma fragments' row r (scores: token row; P.V: k index) stands for.
// Attention sums over tokens, so any order is the same result as long as K and V agree. With 16-byte
// K windows (LDS.128: 8 lanes at a time, fragment rows g = 2q, 2q+1 of quarter-warp q) and K rows of
// 16 modulo 32 bytes (8 heads of 66 bytes: 528), consecutive rows overlap in 48 of the 64 bytes
// (16 banks) the quarter reads — a two-way bank conflict on every K window. The order
// 0 12 2 14 4 8 6 10 (rows g < 8; +1 for g >= 8) puts those two rows 4 or 12 rows apart (64 bytes
// modulo 128: disjoint banks) and keeps V's 8-byte windows (rows 2t (+1) (+8) of a half-warp) in
// distinct banks when V rows are also 16 modulo 32 bytes. Other shapes keep the identity.
__device__ __forceinline__ int fd_row_order(int r, bool permuted) {
    return permuted ? (int)((0xA684E2C0u >> (4 * (r & 7))) & 15u) + (r >> 3) : r;
}

// Work item -> (sequence, column block, split) and its cell range (32-bit: cells < 2^31).
struct FdItem {
    int seq, cb, split, begin, end, n_tiles;
};

__device__ __forceinline__ FdItem fd_item(const AttendParams &p, int item, int n_colblocks, int sc) {
    FdItem it;
    const int n_splits = (int)p.n_splits;
    it.split = item % n_splits;
    const int rest = item / n_splits;
    it.cb = rest % n_colblocks;
    it.seq = rest / n_colblocks;
    const int len = (int)seq_cells_of(p, it.seq);
    it.begin = it.split * (int)p.chunk;
    it.end = min(it.begin + (int)p.chunk, len);
    it.n_tiles = it.end > it.begin ? (it.end - it.begin + sc - 1) / sc : 0;
    return it;
}

// The producer's cursor over this CTA's (item, tile) sequence. Every thread keeps an identical copy
// and advances it once per consumed tile, so whichever thread issues a copy knows what to copy.
struct FdCursor {
    int item, tile;
    FdItem it;
    // Move to the next tile to copy; false when the CTA has none left.
    __device__ __forceinline__ bool next(const AttendParams &p, int n_items, int n_colblocks, int sc) {
        while (item < n_items && tile >= it.n_tiles) {
            item += gridDim.x;
            tile = 0;
            if (item < n_items) it = fd_item(p, item, n_colblocks, sc);
        }
        return item < n_items;
    }
};

// ---- Hopper: bulk copies (TMA, one thread) completing on per-stage mbarriers -------------------------
#if __CUDA_ARCH__ >= 900
#define FD_BULK_ARCH 1
__device__ __forceinline__ void fd_mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void fd_mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void fd_mbar_wait(u32 bar, u32 parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void fd_bulk_copy(u32 dst, const void *src, u32 bytes, u32 bar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(bar)
                 : "memory");
}
#else
#define FD_BULK_ARCH 0
#endif

// SW: row alignment, 16 or 8 bytes (the widest window load; without BULK also the width of the
// cp.async copies and the store alignment). BULK (sm_90, 16-byte aligned stores): one thread per CTA copies each stage with two bulk copies that
// complete on the stage's mbarrier; consumers wait only for their data, and the last warp to finish
// a stage (a shared counter) refills it — no CTA-wide barrier per tile. Otherwise every thread
// issues 8/16-byte cp.async copies and the CTA synchronises once per tile.
template <int SW, bool BULK>
__device__ __forceinline__ void fd_body(const AttendParams &p) {
    extern __shared__ __align__(16) u32 smem_words[];
    u8 *smem = reinterpret_cast<u8 *>(smem_words);
    const u32 sbase = (u32)__cvta_generic_to_shared(smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int kRB = (int)p.k_row_bytes, vRB = (int)p.v_row_bytes;
    const int sc = (int)p.stage_cells;
    const u32 kbytes = (u32)(sc * kRB), stage_bytes = kbytes + (u32)(sc * vRB);
    const int n_cols = (int)(p.n_q * p.group), group = (int)p.group;
    const int n_colblocks = (n_cols + 7) / 8;
    const int n_items = (int)p.n_seqs * n_colblocks * (int)p.n_splits;
    const int hl = warp % (int)p.heads_per_cta, sub = warp / (int)p.heads_per_cta;
    const int wph = (int)p.warps_per_head;
    const int h = hl;  // all kv heads in one CTA
    const bool masked = p.mask != nullptr || p.cell_pos != nullptr;
    constexpr int CBK = Codes<BITS_K>::BYTES, CBV = Codes<BITS_V>::BYTES;
    const u32 stages = sbase + FD_TABLE_BYTES;
    // After the stages: FD_STAGES mbarriers (8 bytes each), then FD_STAGES release counters, then (at
    // 16 * FD_STAGES) the pairs' merge buffers.
    const u32 bars = stages + FD_STAGES * stage_bytes, merge_base = bars + 16 * FD_STAGES;
    int *counters = reinterpret_cast<int *>(smem + FD_TABLE_BYTES + FD_STAGES * stage_bytes + 8 * FD_STAGES);

    FdCursor cur;
    cur.item = blockIdx.x;
    cur.tile = 0;
    cur.it = cur.item < n_items ? fd_item(p, cur.item, n_colblocks, sc) : FdItem{0, 0, 0, 0, 0, 0};
    u32 issued = 0;
    // Copy the cursor's tile into stage (issued % FD_STAGES); BULK: the calling thread alone.
    auto copy_tile = [&]() {
        const int t0 = cur.it.begin + cur.tile * sc;
        const int rows = min(sc, cur.it.end - t0);
        // Read-only loads (cached: the same pointers for every tile of an item).
        const u8 *ks = p.k_stores ? reinterpret_cast<const u8 *>(__ldg(p.k_stores + cur.it.seq)) : p.k_store;
        const u8 *vs = p.v_stores ? reinterpret_cast<const u8 *>(__ldg(p.v_stores + cur.it.seq)) : p.v_store;
        const u8 *ksrc = ks + (i64)t0 * kRB, *vsrc = vs + (i64)t0 * vRB;
        const u32 slot = issued % FD_STAGES;
        const u32 dst = stages + slot * stage_bytes;
#if FD_BULK_ARCH
        if (BULK) {
            // Bulk sizes are multiples of 16 bytes: rows of 8-byte multiples can leave 8 bytes, copied
            // here before the arrive (whose release orders them before the consumers' wait).
            const u32 bar = bars + 8 * slot;
            const u32 kb = (u32)(rows * kRB), vb = (u32)(rows * vRB);
            const u32 kmain = kb & ~15u, vmain = vb & ~15u;
            if (kb != kmain) *reinterpret_cast<uint2 *>(smem + (dst - sbase) + kmain) = *reinterpret_cast<const uint2 *>(ksrc + kmain);
            if (vb != vmain)
                *reinterpret_cast<uint2 *>(smem + (dst - sbase) + kbytes + vmain) = *reinterpret_cast<const uint2 *>(vsrc + vmain);
            fd_mbar_expect_tx(bar, kmain + vmain);
            if (kmain) fd_bulk_copy(dst, ksrc, kmain, bar);
            if (vmain) fd_bulk_copy(dst + kbytes, vsrc, vmain, bar);
        } else
#endif
        {
            u8 *d = smem + (dst - sbase);
            const int kc = rows * kRB / SW, vc = rows * vRB / SW;
            for (int c = threadIdx.x; c < kc; c += blockDim.x) {
                if (SW == 16) cp_async16(d + 16 * c, ksrc + 16 * c); else cp_async8(d + 8 * c, ksrc + 8 * c);
            }
            for (int c = threadIdx.x; c < vc; c += blockDim.x) {
                if (SW == 16) cp_async16(d + kbytes + 16 * c, vsrc + 16 * c);
                else cp_async8(d + kbytes + 8 * c, vsrc + 8 * c);
            }
        }
        cur.tile++;
    };

    if (BULK) {
#if FD_BULK_ARCH
        if (threadIdx.x == 0) {
            for (int s = 0; s < FD_STAGES; s++) {
                fd_mbar_init(bars + 8 * s, 1);
                counters[s] = 0;
            }
            asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        }
#endif
        __syncthreads();
        // Fill the first stage now, the others once the first item's queries are requested (below):
        // requested behind the whole ring's copies, the queries arrived 2.9-3.5 us after the dependency
        // wait and held back the first step; with one stage ahead of them the first step starts 0.5-1 us
        // earlier (phase trace and timings: bench/gpu/RESULTS.md, v17). All threads advance their cursors alike.
#pragma unroll 1
        for (int s = 0; s < FD_EARLY_STAGES; s++) {
            if (cur.next(p, n_items, n_colblocks, sc)) {
                if (threadIdx.x == 0) copy_tile(); else cur.tile++;
            }
            issued++;
        }
    } else {
#pragma unroll 1
        for (int s = 0; s < FD_STAGES - 1; s++) {
            if (cur.next(p, n_items, n_colblocks, sc)) copy_tile();
            issued++;
            cp_async_commit();
        }
    }
    fd_fill_table(smem, p.k_centroids, p.v_centroids);
    __syncthreads();
    // Launched as a dependent of tq_rotate_queries: everything above overlapped it; the queries are
    // read below. The combine kernel may be scheduled from here on (it waits for this grid).
    grid_dependency_wait();
    grid_launch_dependents();

    // Per-lane constant offsets inside a stage, relative to the step's first row; fragment rows g and
    // g+8 are the step's rows ra and rb.
    const bool permuted = SW == 16 && DEC_KBITS == 128 && DEC_VBITS == 64 && kRB % 32 == 16 && vRB % 32 == 16;
    const int ra = fd_row_order(g, permuted), rb = fd_row_order(g + 8, permuted);
    const u32 koff[2] = {(u32)(ra * kRB + h * CBK + t * (DEC_KBITS / 8)), (u32)(rb * kRB + h * CBK + t * (DEC_KBITS / 8))};
    const u32 kso[2] = {(u32)(ra * kRB + (int)p.k_scale_offset + 2 * h), (u32)(rb * kRB + (int)p.k_scale_offset + 2 * h)};
    const u32 vso[2] = {(u32)(ra * vRB + (int)p.v_scale_offset + 2 * h), (u32)(rb * vRB + (int)p.v_scale_offset + 2 * h)};
    u32 voff[4];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int tok = fd_row_order(2 * t + (j & 1) + 8 * (j >> 1), permuted);
        voff[j] = (u32)(tok * vRB + h * CBV + g * (DEC_VBITS / 8));
    }
    const u32 kcol = 4u * lane, vcol = 128u + 4u * lane;

    u32 consumed = 0;
#pragma unroll 1
    for (int item = blockIdx.x; item < n_items; item += gridDim.x) {
        const FdItem it = fd_item(p, item, n_colblocks, sc);
        const i64 seq = it.seq;
        FdWarp w;
        {
            // All of the item's query loads go out before anything waits on them: column g's pairs
            // t*DEC_PK .. +DEC_PK (f16, 8 bytes per k-tile) and the coefficients of the lane's columns
            // 2t, 2t+1. 32-bit column arithmetic (a 64-bit division is a long subroutine on this path).
            const int c = it.cb * 8 + g;
            uint2 qv[D / 16];
            if (c < n_cols) {
                const int i = c / group, hq = h * group + c % group;
                // k-tile kt: this lane's four dimensions t*D/4 + 4kt .. +3 as f16 (q16_pos).
                const uint2 *q8 = reinterpret_cast<const uint2 *>(p.q_hat16 + ((seq * p.n_q + i) * p.n_heads + hq) * D) + t;
#pragma unroll
                for (int kt = 0; kt < D / 16; kt++) qv[kt] = q8[4 * kt];
            } else {
#pragma unroll
                for (int kt = 0; kt < D / 16; kt++) qv[kt] = make_uint2(0u, 0u);
            }
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const int col = it.cb * 8 + 2 * t + j;
                w.qi[j] = col < n_cols ? col / group : -1;
                w.hq[j] = h * group + col % group;
                const i64 qidx = (seq * p.n_q + w.qi[j]) * p.n_heads + w.hq[j];
                w.coef[j] = w.qi[j] >= 0 ? p.q_coef[qidx] : 0.0f;
                w.qmu[j] = w.qi[j] >= 0 ? p.q_mu[qidx] : 0.0f;
                w.m[j] = NEG_INF;
                w.l[j] = 0.0f;
            }
            if (BULK && item == (int)blockIdx.x) {
                // The rest of the ring, now that the queries are requested.
#pragma unroll 1
                for (int s = FD_EARLY_STAGES; s < FD_STAGES; s++) {
                    if (cur.next(p, n_items, n_colblocks, sc)) {
                        if (threadIdx.x == 0) copy_tile(); else cur.tile++;
                    }
                    issued++;
                }
            }
#pragma unroll
            for (int kt = 0; kt < D / 16; kt++) {
                w.bq[kt][0] = qv[kt].x;
                w.bq[kt][1] = qv[kt].y;
            }
        }
#pragma unroll
        for (int mt = 0; mt < D / 16; mt++) w.o[mt][0] = w.o[mt][1] = w.o[mt][2] = w.o[mt][3] = 0.0f;

#pragma unroll 1
        for (int tile = 0; tile < it.n_tiles; tile++) {
            const u32 slot = consumed % FD_STAGES;
            if (BULK) {
#if FD_BULK_ARCH
                fd_mbar_wait(bars + 8 * slot, (consumed / FD_STAGES) & 1);
#endif
            } else {
                cp_async_wait<FD_STAGES - 2>();
                __syncthreads();
                if (cur.next(p, n_items, n_colblocks, sc)) copy_tile();
                issued++;
                cp_async_commit();
            }
            const int t0 = it.begin + tile * sc;
            const int rows = min(sc, it.end - t0);
            const u32 sk = stages + slot * stage_bytes, sv = sk + kbytes;
            consumed++;
            if (masked) {
#pragma unroll 1
                for (int r0 = 16 * sub; r0 < rows; r0 += 16 * wph)
                    fd_step<true, false, SW>(w, sbase, sk + (u32)(r0 * kRB), sv + (u32)(r0 * vRB), koff, kso, vso, voff, r0 + ra < rows,
                                      r0 + rb < rows, kcol, vcol, p, seq, (i64)(t0 + r0), ra, rb);
            } else {
#pragma unroll 1
                for (int r0 = 16 * sub; r0 < rows; r0 += 16 * wph) {
                    if (r0 + 16 <= rows)
                        fd_step<false, true, SW>(w, sbase, sk + (u32)(r0 * kRB), sv + (u32)(r0 * vRB), koff, kso, vso, voff, true,
                                                 true, kcol, vcol, p, seq, (i64)(t0 + r0), ra, rb);
                    else
                        fd_step<false, false, SW>(w, sbase, sk + (u32)(r0 * kRB), sv + (u32)(r0 * vRB), koff, kso, vso, voff,
                                                  r0 + ra < rows, r0 + rb < rows, kcol, vcol, p, seq, (i64)(t0 + r0), ra, rb);
                }
            }
            if (BULK) {
                // Release the stage; the last warp out refills it with the tile FD_STAGES ahead.
                const bool more = cur.next(p, n_items, n_colblocks, sc);
                __syncwarp();
                if (lane == 0) {
                    __threadfence_block();
                    if (atomicAdd(&counters[slot], 1) == n_warps - 1) {
                        counters[slot] = 0;
                        if (more) {
                            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
                            copy_tile();
                        }
                    } else if (more) {
                        cur.tile++;
                    }
                } else if (more) {
                    cur.tile++;
                }
                issued++;
            }
        }
        // Partials (m, l, O) per column of this warp.
#pragma unroll
        for (int j = 0; j < 2; j++) {
            w.l[j] += __shfl_xor_sync(0xffffffffu, w.l[j], 4);
            w.l[j] += __shfl_xor_sync(0xffffffffu, w.l[j], 8);
            w.l[j] += __shfl_xor_sync(0xffffffffu, w.l[j], 16);
        }
        // Warp sub + np hands its partial to warp sub (np = ceil(wph / 2)) of the same kv head, lane to
        // lane (same fragment positions), through shared memory in two rounds between 64-thread named
        // barriers; the receiver merges them as tq_combine would and stores one partial for both — half
        // the partial stores and half the records tq_combine reads. With an odd wph one warp per head has
        // no mate and passes the same barriers alone (32 threads): every warp runs every barrier, so the
        // barriers sit in uniform control flow (guarded, they cost the loop its uniform registers).
        const int np = (wph + 1) / 2;
        const bool sender = sub >= np;
        const int rsub = sender ? sub - np : sub;
        const bool mated = rsub + np < wph, receiver = !sender && mated;
        const int pair = hl + (int)p.heads_per_cta * rsub, bar_n = mated ? 64 : 32;
        const u32 buf = merge_base + (u32)(pair * FD_MERGE_PAIR_BYTES) + 16u * lane;
        float fa[2], fb[2];  // the receiver's weights for its own and its mate's partial, per column
        // Column tile mt of the sender's O into the buffer slot at a; the receiver's merge of it.
        auto hand = [&](int mt, u32 a) { fd_sts4(a, make_float4(w.o[mt][0], w.o[mt][1], w.o[mt][2], w.o[mt][3])); };
        auto absorb = [&](int mt, u32 a) {
            const float4 v = fd_lds4(a);
            w.o[mt][0] = fa[0] * w.o[mt][0] + fb[0] * v.x;
            w.o[mt][1] = fa[1] * w.o[mt][1] + fb[1] * v.y;
            w.o[mt][2] = fa[0] * w.o[mt][2] + fb[0] * v.z;
            w.o[mt][3] = fa[1] * w.o[mt][3] + fb[1] * v.w;
        };
        if (sender) {
            fd_sts4(buf, make_float4(w.m[0], w.m[1], w.l[0], w.l[1]));
#pragma unroll
            for (int mt = 0; mt < FD_MERGE_H1; mt++) hand(mt, buf + 512u * (1 + mt));
        }
        fd_bar_sync(1 + pair, bar_n);
        if (receiver) {
            const float4 ml = fd_lds4(buf);
            const float mm[2] = {ml.x, ml.y}, ll[2] = {ml.z, ml.w};
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const float nm = fmaxf(w.m[j], mm[j]);
                fa[j] = w.m[j] == NEG_INF ? 0.0f : fast_exp2(w.m[j] - nm);
                fb[j] = mm[j] == NEG_INF ? 0.0f : fast_exp2(mm[j] - nm);
                w.m[j] = nm;
                w.l[j] = fa[j] * w.l[j] + fb[j] * ll[j];
            }
#pragma unroll
            for (int mt = 0; mt < FD_MERGE_H1; mt++) absorb(mt, buf + 512u * (1 + mt));
        }
        fd_bar_sync(1 + pair, bar_n);
        if (sender) {
#pragma unroll
            for (int mt = FD_MERGE_H1; mt < D / 16; mt++) hand(mt, buf + 512u * (1 + mt - FD_MERGE_H1));
        }
        fd_bar_sync(1 + pair, bar_n);
        if (receiver) {
#pragma unroll
            for (int mt = FD_MERGE_H1; mt < D / 16; mt++) absorb(mt, buf + 512u * (1 + mt - FD_MERGE_H1));
        }
        fd_bar_sync(1 + pair, bar_n);  // the buffer is free for the next item
        if (sender) continue;
        const i64 part = (i64)it.split * np + sub;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            if (w.qi[j] < 0) continue;
            float *dst = partial_at(p, seq, w.qi[j], w.hq[j], part);
            if (g == 0) {
                dst[0] = w.m[j];
                dst[1] = w.l[j];
            }
            // This lane holds O[2*g*DEC_PV .. +2*DEC_PV) of the column: 16-byte stores.
            float4 *o4 = reinterpret_cast<float4 *>(dst + PART_O + 2 * g * DEC_PV);
#pragma unroll
            for (int mt = 0; mt < D / 16; mt += 2)
                o4[mt / 2] = make_float4(w.o[mt][j], w.o[mt][2 + j], w.o[mt + 1][j], w.o[mt + 1][2 + j]);
        }
    }
    if (!BULK) cp_async_wait<0>();
}

// fast16 / fast8: rows of 16- / 8-byte multiples in 16-byte aligned stores, bulk copies where the
// architecture has them (sm_90+), cp.async otherwise. fast8c: 8-byte aligned stores, cp.async.
extern "C" __global__ void __launch_bounds__(FD_THREADS, 1) tq_decode_fast16(const AttendParams p) {
    fd_body<16, FD_BULK_ARCH != 0>(p);
}
extern "C" __global__ void __launch_bounds__(FD_THREADS, 1) tq_decode_fast8(const AttendParams p) {
    fd_body<8, FD_BULK_ARCH != 0>(p);
}
extern "C" __global__ void __launch_bounds__(FD_THREADS, 1) tq_decode_fast8c(const AttendParams p) { fd_body<8, false>(p); }

#endif
