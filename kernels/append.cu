// Append: encode K/V head vectors into cache rows — rotate, normalise, bucketise, pack — producing the
// same bytes as the CPU backend (math::quantizer::MseQuantizer::encode). One warp per (token, kv
// head, K or V). The arithmetic follows the row-format contract exactly: the norm in f64 over eight
// interleaved partial sums, u = (float)((double)x * (1/norm)), the rotation in f32 with every
// multiply and add rounded separately (__fmul_rn/__fadd_rn: no FMA contraction), codes = number of
// f32 boundaries strictly below y, then the side's scale rule (math::scale::apply_rule: ‖x‖, or ‖x‖
// corrected by ⟨y, ĉ⟩ and ‖ĉ‖², summed in f64 like the norm), scale = bf16(min((float)scale, bf16 max))
// rounded to nearest even.

// Scale rules (src/backend/cuda/params.rs scale_rule_code, math::scale::ScaleRule).
constexpr i64 SCALE_NORM = 0;            // ‖x‖
constexpr i64 SCALE_NORM_CORRECTED = 1;  // ‖x‖ / ‖ĉ‖
constexpr i64 SCALE_LEAST_SQUARES = 2;   // ‖x‖ · ⟨y, ĉ⟩ / ‖ĉ‖²
constexpr i64 SCALE_PROJECTION = 3;      // ‖x‖ / ⟨y, ĉ⟩

struct EncodeSide {
    u8 *store;             // device rows (n_cells * row_bytes)
    const u8 *input;       // [n_tokens][n_kv_heads][D] of dtype with byte strides
    i64 token_stride, head_stride;
    i64 row_bytes, scale_offset;
    const float *boundaries;  // 2^b - 1, ascending
    const float *signs_in;    // Hadamard D1 (NULL for dense)
    const float *signs_out;   // Hadamard D2/sqrt(d)
    const float *matrix_t;    // dense: Pi transposed, row j = column j of Pi (NULL for Hadamard)
    const float *mean;        // centering: [n_kv_heads][D] or NULL
    const float *centroids;   // 2^b, ascending (the scale rules other than SCALE_NORM read them)
    i64 scale_rule;           // SCALE_*
};

struct AppendParams {
    EncodeSide k, v;
    const i64 *slots;  // device: token i -> cell
    i64 n_tokens, n_cells, n_kv_heads, dtype;
};

constexpr int PER_LANE = D / 32;

// Floats of a warp's table in shared memory: the boundaries (2^b - 1) then the centroids (2^b) of the wider side.
constexpr int APPEND_TABLE = 2 << (BITS_K > BITS_V ? BITS_K : BITS_V);

template <int B>
__device__ void encode_vector(const EncodeSide &s, const AppendParams &p, i64 token, i64 head, float *xs,
                              u8 *codes, float *tab) {
    const int lane = threadIdx.x & 31;
    constexpr int NB = (1 << B) - 1;
    // Every load that does not depend on another is issued first, so that a short append (decode: one token)
    // waits for one round trip to memory instead of a chain of them: the cell, the input and the means, the
    // rotation's signs, the boundaries and the centroids (copied to this warp's table in shared memory).
    const i64 cell = p.slots[token];
    const u8 *src = s.input + token * s.token_stride + head * s.head_stride;
    const i64 esz = p.dtype == DTYPE_F32 ? 4 : 2;
    const bool hadamard = s.matrix_t == nullptr;
    float v[PER_LANE], sign_in[PER_LANE], sign_out[PER_LANE];
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        const int e = lane + 32 * k;
        float x = load_elem(src + e * esz, p.dtype);
        if (s.mean) x = __fsub_rn(x, s.mean[head * D + e]);
        v[k] = x;
        sign_in[k] = hadamard ? s.signs_in[e] : 0.0f;
        sign_out[k] = hadamard ? s.signs_out[e] : 0.0f;
    }
    for (int i = lane; i < NB; i += 32) tab[i] = s.boundaries[i];
    if (s.scale_rule != SCALE_NORM) {
        for (int i = lane; i <= NB; i += 32) tab[NB + i] = s.centroids[i];
    }
    if (cell < 0 || cell >= p.n_cells) return;  // validated on the host; never write out of bounds
    u8 *row = s.store + cell * s.row_bytes;
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) xs[lane + 32 * k] = v[k];
    __syncwarp();  // xs and the table
    // Norm: lane l < 8 sums squares of elements l, l+8, l+16, ... in order (squares are exact in f64).
    double acc = 0.0;
    if (lane < 8) {
        for (int j = 0; j < D / 8; j++) {
            double x = (double)xs[lane + 8 * j];
            acc = __dadd_rn(acc, __dmul_rn(x, x));
        }
    }
    double a[8];
#pragma unroll
    for (int l = 0; l < 8; l++) a[l] = __shfl_sync(0xffffffffu, acc, l);
    double norm = __dsqrt_rn(__dadd_rn(__dadd_rn(__dadd_rn(a[0], a[1]), __dadd_rn(a[2], a[3])),
                                       __dadd_rn(__dadd_rn(a[4], a[5]), __dadd_rn(a[6], a[7]))));
    constexpr int CB = Codes<B>::BYTES;
    u8 *out_codes = row + head * CB;
    u16 *out_scale = reinterpret_cast<u16 *>(row + s.scale_offset + 2 * head);
    if (norm == 0.0) {
        for (int i = lane; i < CB; i += 32) out_codes[i] = 0;
        if (lane == 0) *out_scale = 0;
        return;
    }
    const double inv = __ddiv_rn(1.0, norm);
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) v[k] = __double2float_rn(__dmul_rn((double)v[k], inv));

    float y[PER_LANE];
    if (hadamard) {
        // Hadamard: u*D1, butterflies (a, b) -> (a + b, a - b) over strides 1, 2, 4, ..., then *D2/sqrt(d).
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) y[k] = __fmul_rn(v[k], sign_in[k]);
#pragma unroll
        for (int h = 1; h < 32 && h < D; h <<= 1) {
#pragma unroll
            for (int k = 0; k < PER_LANE; k++) {
                float other = __shfl_xor_sync(0xffffffffu, y[k], h);
                y[k] = (lane & h) ? __fsub_rn(other, y[k]) : __fadd_rn(y[k], other);
            }
        }
#pragma unroll
        for (int h = 1; h < PER_LANE; h <<= 1) {
#pragma unroll
            for (int k = 0; k < PER_LANE; k++) {
                if ((k & h) == 0) {
                    float lo = y[k], hi = y[k + h];
                    y[k] = __fadd_rn(lo, hi);
                    y[k + h] = __fsub_rn(lo, hi);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) y[k] = __fmul_rn(y[k], sign_out[k]);
    } else {
        // Dense: y = sum_j Pi[:, j] * u_j in order of j, each product and sum rounded.
        __syncwarp();
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) xs[lane + 32 * k] = v[k];
        __syncwarp();
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) y[k] = 0.0f;
        for (int j = 0; j < D; j++) {
            float uj = xs[j];
            const float *col = s.matrix_t + (i64)j * D;
#pragma unroll
            for (int k = 0; k < PER_LANE; k++) y[k] = __fadd_rn(y[k], __fmul_rn(col[lane + 32 * k], uj));
        }
    }
    // Bucketise: the number of boundaries strictly below y (binary search over the sorted table).
#pragma unroll
    for (int k = 0; k < PER_LANE; k++) {
        int lo = 0, hi = (1 << B) - 1;
        while (lo < hi) {
            int mid = (lo + hi) >> 1;
            if (tab[mid] < y[k]) lo = mid + 1; else hi = mid;
        }
        codes[lane + 32 * k] = (u8)lo;
    }
    __syncwarp();
    // The scale: ⟨y, ĉ⟩ and ‖ĉ‖² with ĉ = centroids[code], lane l < 8 summing the exact f64 products of
    // elements l, l+8, l+16, ... in order, combined as the norm's partial sums are.
    double scale = norm;
    if (s.scale_rule != SCALE_NORM) {
#pragma unroll
        for (int k = 0; k < PER_LANE; k++) xs[lane + 32 * k] = y[k];
        __syncwarp();
        double dot = 0.0, sq = 0.0;
        if (lane < 8) {
            for (int j = 0; j < D / 8; j++) {
                const int e = lane + 8 * j;
                const double yv = (double)xs[e], cv = (double)tab[NB + codes[e]];
                dot = __dadd_rn(dot, __dmul_rn(yv, cv));
                sq = __dadd_rn(sq, __dmul_rn(cv, cv));
            }
        }
        double pd[8], ps[8];
#pragma unroll
        for (int l = 0; l < 8; l++) {
            pd[l] = __shfl_sync(0xffffffffu, dot, l);
            ps[l] = __shfl_sync(0xffffffffu, sq, l);
        }
        dot = __dadd_rn(__dadd_rn(__dadd_rn(pd[0], pd[1]), __dadd_rn(pd[2], pd[3])),
                        __dadd_rn(__dadd_rn(pd[4], pd[5]), __dadd_rn(pd[6], pd[7])));
        sq = __dadd_rn(__dadd_rn(__dadd_rn(ps[0], ps[1]), __dadd_rn(ps[2], ps[3])),
                       __dadd_rn(__dadd_rn(ps[4], ps[5]), __dadd_rn(ps[6], ps[7])));
        if (s.scale_rule == SCALE_NORM_CORRECTED && sq > 0.0) scale = __ddiv_rn(norm, __dsqrt_rn(sq));
        else if (s.scale_rule == SCALE_LEAST_SQUARES && sq > 0.0 && dot > 0.0) scale = __ddiv_rn(__dmul_rn(norm, dot), sq);
        else if (s.scale_rule == SCALE_PROJECTION && dot > 0.0) scale = __ddiv_rn(norm, dot);
    }
    // Pack: byte m holds stream bits [8m, 8m+8), code i at bits [ib, ib+b), LSB first.
    for (int m = lane; m < CB; m += 32) {
        u32 byte = 0;
#pragma unroll
        for (int q = 0; q < 8; q++) {
            int bit = 8 * m + q;
            byte |= (u32)((codes[bit / B] >> (bit % B)) & 1) << q;
        }
        out_codes[m] = (u8)byte;
    }
    if (lane == 0) {
        float f = __double2float_rn(scale);
        const float bf16_max = __uint_as_float(0x7f7f0000u);
        if (f > bf16_max) f = bf16_max;
        u32 bits = __float_as_uint(f);
        bits += 0x7fffu + ((bits >> 16) & 1u);
        *out_scale = (u16)(bits >> 16);
    }
}

extern "C" __global__ void __launch_bounds__(APPEND_WARPS * 32) tq_append(const AppendParams p) {
    __shared__ float xs_all[APPEND_WARPS][D];
    __shared__ u8 codes_all[APPEND_WARPS][D];
    __shared__ float tab_all[APPEND_WARPS][APPEND_TABLE];
    const int warp = threadIdx.x >> 5;
    const i64 item = (i64)blockIdx.x * APPEND_WARPS + warp;  // (token, head, K/V)
    if (item >= p.n_tokens * p.n_kv_heads * 2) return;
    const i64 which = item & 1;
    const i64 th = item >> 1;
    const i64 token = th / p.n_kv_heads, head = th % p.n_kv_heads;
    if (which == 0) encode_vector<BITS_K>(p.k, p, token, head, xs_all[warp], codes_all[warp], tab_all[warp]);
    else encode_vector<BITS_V>(p.v, p, token, head, xs_all[warp], codes_all[warp], tab_all[warp]);
}

// Centering means: the mean over rows [first_token, n_tokens) of the first append (codec::mean_rows: row 0,
// usually the BOS / sink token, left out) of every (kv head, dimension), for K
// (blockIdx.y 0) and V (1; zero without value centering) — KvCodec::estimate_means exactly: elements loaded
// as f32, summed in f64 token by token, divided in f64, rounded to f32. One thread per element.
struct MeansSide {
    const u8 *input;  // [n_tokens][n_kv_heads][D] of dtype with byte strides
    i64 token_stride, head_stride;
    float *out;       // [n_kv_heads][D]
};

struct MeansParams {
    MeansSide k, v;
    i64 first_token, n_tokens, n_kv_heads, dtype;
    i64 center_values;  // 0: the V means are zero
    const unsigned *frozen;  // the layer's flag, set (by a memset after this kernel) once the means exist
};

extern "C" __global__ void __launch_bounds__(256) tq_head_means(const MeansParams p) {
    // a CUDA graph that captured a layer's first append replays this launch: the means stay frozen
    if (*p.frozen != 0) return;
    const MeansSide &s = blockIdx.y == 0 ? p.k : p.v;
    const i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= p.n_kv_heads * D) return;
    const i64 head = idx / D, e = idx % D;
    const i64 esz = p.dtype == DTYPE_F32 ? 4 : 2;
    const u8 *src = s.input + head * s.head_stride + e * esz;
    if (blockIdx.y == 1 && !p.center_values) {
        s.out[idx] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (i64 t = p.first_token; t < p.n_tokens; t++)
        sum = __dadd_rn(sum, (double)load_elem(src + t * s.token_stride, p.dtype));
    const i64 count = p.n_tokens - p.first_token;
    s.out[idx] = __double2float_rn(__ddiv_rn(sum, (double)(count > 0 ? count : 1)));
}
