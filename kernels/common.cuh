// Shared definitions of the libturboquant CUDA kernels. Compiled by NVRTC at context creation with
// -DHEAD_DIM=d -DBITS_K=bk -DBITS_V=bv, the specialisation; group size, head counts, dtypes, rotation
// kind and strides are run-time arguments. Every other value the host also knows (the dtype codes of
// the C API, launch geometry, shared-memory layout) comes from the host as a -D option too
// (compile::shared_defines in src/backend/cuda/compile.rs), so no value is written on both sides; the
// check below refuses to compile without them. The parameter structs mirror #[repr(C)] structs in src/backend/cuda/params.rs: every
// field is 8 bytes wide so both sides agree on the layout without padding rules.
//
// Row format (src/codec/layout.rs): [codes head 0..H-1][pad][bf16 scale head 0..H-1]; codes of one
// head are ceil(d*b/8) bytes of an LSB-first bit stream. "Pair" p of a head is codes 2p and 2p+1,
// i.e. stream bits [2pb, 2pb+2b): the unit the kernels dequantise, into one half2.

#if !defined(HEAD_DIM) || !defined(BITS_K) || !defined(BITS_V) || !defined(DTYPE_F32) || !defined(DTYPE_F16) || \
    !defined(DTYPE_BF16) || !defined(APPEND_WARPS) || !defined(PF_ROWS) || !defined(PF_THREADS) || !defined(PF_MIN_CTAS) ||             \
    !defined(PF_TILE) || !defined(PF_PAD) || !defined(DEC_STAGES) || !defined(DEC_MIN_CTAS) ||                  \
    !defined(FD_COMPILED) || !defined(FD_THREADS) || !defined(FD_STAGES) || !defined(FD_MERGE_PAIR_BYTES) ||    \
    !defined(ROT_WARPS) || !defined(CMB_MAX_THREADS) || !defined(CMB_BATCH) || !defined(PART_HEADER)
#error "the shared constants are -D options from the host (compile::shared_defines, src/backend/cuda/compile.rs)"
#endif

#define D HEAD_DIM
static_assert(D % 32 == 0 && D >= 32 && D <= 256, "CUDA kernels need head_dim a multiple of 32, at most 256");
static_assert(BITS_K >= 1 && BITS_K <= 8 && BITS_V >= 1 && BITS_V <= 8, "bits must be 1..8");

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

// Bytes of packed codes of one head.
template <int B> struct Codes {
    static constexpr int BYTES = D * B / 8;
};

// Half-precision conversions in inline PTX: NVRTC then needs no CUDA headers at run time.
__device__ __forceinline__ float f16_to_float(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 float_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ u16 float_to_bf16(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf16_bits_to_float(u32 bits) { return __uint_as_float(bits << 16); }
// Two floats as f16x2: lo in bits 0..15, hi in bits 16..31.
__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ float load_elem(const u8 *p, i64 dtype) {
    if (dtype == DTYPE_F32) return *reinterpret_cast<const float *>(p);
    if (dtype == DTYPE_F16) return f16_to_float(*reinterpret_cast<const u16 *>(p));
    return bf16_bits_to_float(*reinterpret_cast<const u16 *>(p));
}

__device__ __forceinline__ void store_elem(u8 *p, i64 dtype, float v) {
    if (dtype == DTYPE_F32) *reinterpret_cast<float *>(p) = v;
    else if (dtype == DTYPE_F16) *reinterpret_cast<u16 *>(p) = float_to_f16(v);
    else *reinterpret_cast<u16 *>(p) = float_to_bf16(v);
}

__device__ __forceinline__ float load_scale(const u8 *p) {
    return bf16_bits_to_float(*reinterpret_cast<const u16 *>(p));
}

// ---- dequantisation tables --------------------------------------------------------------------
// For b <= 4 a "pair table" maps the 2b bits of a pair to half2(c[lo], c[hi]); it is replicated 32
// times so that lane l reads column l: table[pair * 32 + l], never a bank conflict. For b > 4 a plain
// table of 2^b halves (bank conflicts possible; a slow path).
template <int B> struct Table {
    static constexpr bool PAIRED = B <= 4;
    static constexpr int WORDS = PAIRED ? (1 << (2 * B)) * 32 : (1 << B) / 2;
};

// Fill the table from the f32 centroids (global memory); all threads of the block take part.
template <int B>
__device__ void fill_table(u32 *tab, const float *centroids, int tid, int nthreads) {
    if (Table<B>::PAIRED) {
        for (int w = tid; w < Table<B>::WORDS; w += nthreads) {
            int pair = w >> 5;
            tab[w] = pack_half2(centroids[pair & ((1 << B) - 1)], centroids[pair >> B]);
        }
    } else {
        u16 *t = reinterpret_cast<u16 *>(tab);
        for (int i = tid; i < (1 << B); i += nthreads) t[i] = float_to_f16(centroids[i]);
    }
}

// half2 (c[lo], c[hi]) of a pair. `tab_lane` is tab + lane for paired tables.
template <int B>
__device__ __forceinline__ u32 lookup_pair(const u32 *tab_lane, u32 pair) {
    if (Table<B>::PAIRED) {
        return tab_lane[pair << 5];
    } else {
        const u16 *t = reinterpret_cast<const u16 *>(tab_lane - (threadIdx.x & 31));
        u32 lo = t[pair & ((1u << B) - 1)];
        u32 hi = t[pair >> B];
        return lo | (hi << 16);
    }
}

// ---- bit windows --------------------------------------------------------------------------------
// A thread's NBITS consecutive stream bits, starting at a byte boundary plus a run-time bit offset,
// shifted so that bit 0 of w[0] is the first wanted bit.
template <int NBITS> struct Window {
    static constexpr int WORDS = (NBITS + 31) / 32;
    u32 w[WORDS + 1];

    __device__ __forceinline__ u32 bits(int pos, int n) const {  // pos, n compile-time after unrolling
        int wi = pos >> 5, off = pos & 31;
        u32 v = w[wi] >> off;
        if (off + n > 32) v |= w[wi + 1] << (32 - off);
        return v & ((1u << n) - 1);
    }
};

// Load NBITS bits at byte pointer p plus bit offset `bit_off` (0..7). ALIGNED: p is aligned to the
// widest power of two (<= 16) dividing the byte count, and bit_off is 0.
// SHARED: p points into shared memory (plain loads instead of the read-only global path).
// MAXW: the widest shared-memory load the row alignment allows.
template <int NBITS, bool ALIGNED, bool SHARED = false, int MAXW = 16>
__device__ __forceinline__ void load_window(Window<NBITS> &win, const u8 *p, int bit_off) {
    constexpr int NBYTES = (NBITS + 7) / 8;
    if (ALIGNED && SHARED) {
        // Shared memory: 16-, 8- or 4-byte words, whichever divides the window.
        constexpr int W = (NBYTES % 16 == 0 && MAXW >= 16) ? 16 : NBYTES % 8 == 0 ? 8 : NBYTES % 4 == 0 ? 4 : 1;
        if (W == 16) {
#pragma unroll
            for (int i = 0; i < NBYTES / 16; i++) {
                uint4 v = reinterpret_cast<const uint4 *>(p)[i];
                win.w[4 * i] = v.x; win.w[4 * i + 1] = v.y; win.w[4 * i + 2] = v.z; win.w[4 * i + 3] = v.w;
            }
        } else if (W == 8) {
#pragma unroll
            for (int i = 0; i < NBYTES / 8; i++) {
                uint2 v = reinterpret_cast<const uint2 *>(p)[i];
                win.w[2 * i] = v.x; win.w[2 * i + 1] = v.y;
            }
        } else if (W == 4) {
#pragma unroll
            for (int i = 0; i < NBYTES / 4; i++) win.w[i] = reinterpret_cast<const u32 *>(p)[i];
        } else {
#pragma unroll
            for (int i = 0; i <= Window<NBITS>::WORDS; i++) win.w[i] = 0;
#pragma unroll
            for (int i = 0; i < NBYTES; i++) win.w[i >> 2] |= (u32)p[i] << (8 * (i & 3));
        }
        win.w[Window<NBITS>::WORDS] = 0;
    } else if (ALIGNED && NBYTES % 16 == 0) {
#pragma unroll
        for (int i = 0; i < NBYTES / 16; i++) {
            uint4 v = __ldg(reinterpret_cast<const uint4 *>(p) + i);
            win.w[4 * i] = v.x; win.w[4 * i + 1] = v.y; win.w[4 * i + 2] = v.z; win.w[4 * i + 3] = v.w;
        }
        win.w[Window<NBITS>::WORDS] = 0;
    } else if (ALIGNED && NBYTES % 8 == 0) {
#pragma unroll
        for (int i = 0; i < NBYTES / 8; i++) {
            uint2 v = __ldg(reinterpret_cast<const uint2 *>(p) + i);
            win.w[2 * i] = v.x; win.w[2 * i + 1] = v.y;
        }
        win.w[Window<NBITS>::WORDS] = 0;
    } else if (ALIGNED && NBYTES % 4 == 0) {
#pragma unroll
        for (int i = 0; i < NBYTES / 4; i++) win.w[i] = __ldg(reinterpret_cast<const u32 *>(p) + i);
        win.w[Window<NBITS>::WORDS] = 0;
    } else {
        // Byte loads: (NBITS + 7 + 7) / 8 bytes cover the window for any bit offset.
        constexpr int LOAD = (NBITS + 14) / 8;
        u32 raw[(LOAD + 3) / 4 + 1];
#pragma unroll
        for (int i = 0; i < (LOAD + 3) / 4 + 1; i++) raw[i] = 0;
#pragma unroll
        for (int i = 0; i < LOAD; i++) raw[i >> 2] |= (u32)(SHARED ? p[i] : __ldg(p + i)) << (8 * (i & 3));
#pragma unroll
        for (int i = 0; i <= Window<NBITS>::WORDS; i++) {
            u32 a = i < (LOAD + 3) / 4 + 1 ? raw[i] : 0u;
            u32 b = i + 1 < (LOAD + 3) / 4 + 1 ? raw[i + 1] : 0u;
            win.w[i] = __funnelshift_r(a, b, bit_off);
        }
    }
}

// ---- warp-level matrix instructions (sm_80+) ----------------------------------------------------
// D (f32 16x8) += A (f16 16x16, row) * B (f16 16x8, col).
__device__ __forceinline__ void mma_16816(float *c, const u32 *a, const u32 *b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// Transpose an 8x8 matrix of halves held one row per lane-quad (thread l: row l/4, cols 2(l%4)..+1).
__device__ __forceinline__ u32 movmatrix_trans(u32 x) {
    u32 y;
    asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
    return y;
}


// 2^x (ex2.approx: 2 ulp; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Asynchronous 16-byte global -> shared copies (sm_80+).
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    u32 a = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem));
}
__device__ __forceinline__ void cp_async8(void *smem, const void *gmem) {
    u32 a = (u32)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(a), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Programmatic dependent launch (sm_90+; no-ops before): a kernel launched as a dependent waits for
// the previous kernel's completion and memory before reading what it wrote; a kernel lets its
// dependents be scheduled early.
__device__ __forceinline__ void grid_dependency_wait() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void grid_launch_dependents() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

#define LOG2E 1.4426950408889634f
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One online-softmax step of a decode warp over a 16-token m16n8 score fragment: s[j] and s[2 + j] are
// this lane's log2-domain scores of its two tokens for query column j (C-fragment order; lanes 4, 8 and
// 16 apart hold the step's other tokens). Raises each column's running max w.m[j] to the step's and,
// where it grows, rescales the running sum w.l[j] and the output accumulators w.o[D / 16][4] by
// 2^(old max - new max) — rare after the first steps, so the warp skips it when no lane's max grows.
// Shared by tq_decode_* and tq_decode_fast* (the same instructions in both).
template <class Warp>
__device__ __forceinline__ void raise_running_max(Warp &w, const float (&s)[4]) {
    float mx[2];
#pragma unroll
    for (int j = 0; j < 2; j++) {
        mx[j] = fmaxf(s[j], s[2 + j]);
        mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 4));
        mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 8));
        mx[j] = fmaxf(mx[j], __shfl_xor_sync(0xffffffffu, mx[j], 16));
    }
    const bool grow = mx[0] > w.m[0] || mx[1] > w.m[1];
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const float new_m = fmaxf(w.m[j], mx[j]);
            const float corr = new_m == NEG_INF ? 1.0f : fast_exp2(w.m[j] - new_m);
            w.m[j] = new_m;
            w.l[j] *= corr;
#pragma unroll
            for (int mt = 0; mt < D / 16; mt++) {
                w.o[mt][j] *= corr;
                w.o[mt][2 + j] *= corr;
            }
        }
    }
}

// Unnormalised Walsh–Hadamard transform of one vector by one warp (head_dim 32 * E, a power of two):
// lane l holds dimensions [E*l, E*l + E); the butterflies of stride < E run inside the lane, those of
// strides E .. D/2 across lanes (shuffles) — block_fwht's butterflies (combine.cu) in the same stage
// order, so the same floats.
template <int E>
__device__ __forceinline__ void warp_fwht(float (&y)[E], int lane) {
#pragma unroll
    for (int h = 1; h < E; h <<= 1) {
#pragma unroll
        for (int r = 0; r < E; r++) {
            if ((r & h) == 0) {
                const float a = y[r], b = y[r + h];
                y[r] = a + b;
                y[r + h] = a - b;
            }
        }
    }
#pragma unroll
    for (int m = 1; m < 32; m <<= 1) {
        const bool upper = (lane & m) != 0;
#pragma unroll
        for (int r = 0; r < E; r++) {
            const float o = __shfl_xor_sync(0xffffffffu, y[r], m);
            y[r] = upper ? o - y[r] : y[r] + o;
        }
    }
}

// Additive mask value of (row, cell) times log2(e); -inf hides the cell.
__device__ __forceinline__ float mask_value_log2(const u8 *mask, i64 dtype, i64 index) {
    if (mask == nullptr) return 0.0f;
    float v;
    if (dtype == DTYPE_F32) v = reinterpret_cast<const float *>(mask)[index];
    else if (dtype == DTYPE_F16) v = f16_to_float(reinterpret_cast<const u16 *>(mask)[index]);
    else v = bf16_bits_to_float(reinterpret_cast<const u16 *>(mask)[index]);
    return v == NEG_INF ? NEG_INF : v * LOG2E;
}

// The attention arguments shared by the decode and prefill kernels (src/backend/cuda/params.rs).
struct AttendParams {
    // Compressed stores: one pair per sequence. k_stores/v_stores: device arrays of n_seqs pointers.
    const u64 *k_stores;
    const u64 *v_stores;
    // One sequence (k_stores NULL): its stores.
    const u8 *k_store;
    const u8 *v_store;
    // Cells of each sequence: a device array (n_seqs entries), or NULL: all have max_cells.
    const i64 *seq_cells;
    i64 max_cells;
    i64 n_seqs;
    i64 n_q;          // query tokens per sequence
    i64 n_heads;
    i64 n_kv_heads;
    i64 group;
    i64 k_row_bytes, v_row_bytes, k_scale_offset, v_scale_offset;
    // Rotated, normalised queries [seq][n_q][n_heads][D] f32, their coefficients and centering terms
    // (written by tq_rotate_queries).
    const float *q_hat;
    const float *q_coef;  // ||q|| * scale * log2(e)
    const float *q_mu;    // (q . mu_k) * scale * log2(e), or 0
    // Additive mask: element (seq, i, cell) at mask[seq*mask_seq_stride + i*mask_row_stride + cell].
    const u8 *mask;
    i64 mask_dtype, mask_row_stride, mask_seq_stride;
    // Causal by positions (NULL = off): cell j of seq visible to query i iff
    // cell_pos[seq*cell_pos_seq_stride + j] <= query_pos[seq*n_q + i].
    const i64 *cell_pos;
    i64 cell_pos_seq_stride;
    const i64 *query_pos;
    // Split-K: tokens per split, number of splits, warps per kv head in one CTA (decode), partials
    // per (row, head) = n_splits * warps_per_head: [m (log2 domain), l, O[D]] f32 each.
    i64 chunk, n_splits, warps_per_head, heads_per_cta, n_partials;
    // Staged decode: cells per shared-memory stage (a multiple of 16 * warps_per_head).
    i64 stage_cells;
    float *partials;
    // Codebooks (f32 centroids, 2^b entries) of K and V.
    const float *k_centroids;
    const float *v_centroids;
    // The rotated queries again as f16 in fragment order (q16_pos; written by tq_rotate_queries, read by
    // tq_decode_fast*).
    const u16 *q_hat16;
};

// Position (in halves) of dimension d in a row of AttendParams::q_hat16: the fast decode kernel's lane t
// takes dimensions [t*D/4, (t+1)*D/4), four per mma k-tile kt, so a row is stored as [kt][t][4] — the
// four lanes of a fragment row read 32 contiguous bytes per k-tile (one sector), where the f32 row gave
// each lane 16 bytes of a different 128-byte line.
__device__ __forceinline__ int q16_pos(int d) {
    constexpr int Q = D / 4;
    return ((d % Q) / 4 * 4 + d / Q) * 4 + d % 4;
}

__device__ __forceinline__ i64 seq_cells_of(const AttendParams &p, i64 seq) {
    return p.seq_cells ? min(__ldg(p.seq_cells + seq), p.max_cells) : p.max_cells;  // read-only: cached
}

// A partial record: [m, l, 0, 0, O[D]] f32 — O starts PART_HEADER floats (16 bytes) in, so records are
// 16-byte aligned and O can be written with 16-byte stores.
static_assert(PART_HEADER * 4 == 16, "a partial record's output starts 16 bytes in");
constexpr int PART_STRIDE = D + PART_HEADER;
constexpr int PART_O = PART_HEADER;
__device__ __forceinline__ float *partial_at(const AttendParams &p, i64 seq, i64 i, i64 hq, i64 s) {
    return p.partials + (((seq * p.n_q + i) * p.n_heads + hq) * p.n_partials + s) * PART_STRIDE;
}

// Visibility (log2-domain additive term) of cell j for query i of seq (no mask and no positions: 0).
__device__ __forceinline__ float cell_bias(const AttendParams &p, i64 seq, i64 i, i64 j) {
    if (p.mask == nullptr && p.cell_pos == nullptr) return 0.0f;
    float b = mask_value_log2(p.mask, p.mask_dtype, seq * p.mask_seq_stride + i * p.mask_row_stride + j);
    if (p.cell_pos && p.cell_pos[seq * p.cell_pos_seq_stride + j] > p.query_pos[seq * p.n_q + i]) b = NEG_INF;
    return b;
}
