// Before and after the attention kernels: tq_rotate_queries turns each query head into the rotated,
// normalised f32 vector the tensor-core kernels read (Pi_k q / ||q||, plus ||q||*scale*log2 e and the
// centering term (q . mu_k)*scale*log2 e); tq_combine merges the split-K partials of one (query,
// head), adds the full-precision rows (owned cache: residual window, sinks) to the same softmax in
// the original basis, un-rotates once (Pi_v^T), adds mu_v and writes the output row.
// tq_rotate_queries: one warp per (query token, query head), ROT_WARPS per CTA, for Hadamard rotations
// (power-of-two head_dim), one CTA of D threads per row for dense ones; tq_combine: one CTA of D to 512
// threads per (query token, query head); grid.y = sequence.

struct Rotation {
    const float *signs_in;   // Hadamard D1, or NULL for dense
    const float *signs_out;  // Hadamard D2/sqrt(d)
    const float *matrix;     // dense Pi, row-major
    const float *matrix_t;   // dense Pi^T, row-major
};

struct QueryTensor {
    const u8 *ptr;
    i64 seq_stride, token_stride, head_stride;  // bytes
};

struct RotateParams {
    QueryTensor q;
    i64 dtype, n_q, n_heads, group;
    Rotation rot;         // K rotation
    const float *mean_k;  // [n_kv_heads][D] or NULL
    float scale;
    float pad_;
    float *q_hat;
    float *q_coef;
    float *q_mu;
    u16 *q_hat16;  // the same vectors as f16 in fragment order (AttendParams::q_hat16)
};

struct CombineParams {
    QueryTensor q;  // original queries (for full-precision rows)
    i64 dtype, n_q, n_heads, group, n_kv_heads;
    Rotation rot;   // V rotation
    const float *mean_v;  // [n_kv_heads][D] or NULL
    const float *partials;
    i64 n_partials;
    // Full-precision rows [seq][n_full][n_kv_heads][D] f32 (row stride n_kv_heads*D), their positions
    // [seq][n_full], and the query positions [seq][n_q]; n_full = 0: none.
    const float *full_k;
    const float *full_v;
    const i64 *full_pos;
    const i64 *query_pos;
    i64 n_full, full_seq_stride;  // rows per sequence slot
    float scale;
    float pad_;
    u8 *out;
    i64 out_seq_stride, out_token_stride, out_head_stride;
};

// Sum / max over a block of NW warps. `red` holds NW floats.
template <int NW>
__device__ __forceinline__ float block_sum(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.0f;
    for (int w = 0; w < NW; w++) s += red[w];
    return s;
}

template <int NW>
__device__ __forceinline__ float block_max(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = NEG_INF;
    for (int w = 0; w < NW; w++) s = fmaxf(s, red[w]);
    return s;
}

// In-place unnormalised Walsh–Hadamard transform of buf[D] by the first D threads of the block.
__device__ __forceinline__ void block_fwht(float *buf) {
    const int i = threadIdx.x;
    for (int h = 1; h < D; h <<= 1) {
        __syncthreads();
        if (i < D && (i & h) == 0) {
            float a = buf[i], b = buf[i + h];
            buf[i] = a + b;
            buf[i + h] = a - b;
        }
    }
    __syncthreads();
}

// Hadamard rotation of one query vector by one warp (head_dim a power of two, >= 32 on CUDA): lane l
// holds dimensions [E*l, E*l + E) (E = D/32), warp_fwht does the butterflies; norms and centering
// terms are summed over the warp by shuffles.
constexpr bool ROT_WARP = (D & (D - 1)) == 0;  // compiled where a Hadamard rotation can occur
// ROT_WARPS rows per CTA in that mode: from the host.

extern "C" __global__ void __launch_bounds__(256) tq_rotate_queries(const RotateParams p) {
    grid_launch_dependents();  // the attention kernel may start its prologue now
    const i64 seq = blockIdx.y;
    const i64 esz = p.dtype == DTYPE_F32 ? 4 : 2;
    if (ROT_WARP && p.rot.signs_in) {
        // One warp per (query token, query head) row: row = blockIdx.x * ROT_WARPS + warp.
        constexpr int E = D / 32;
        const int lane = threadIdx.x & 31;
        const i64 row = (i64)blockIdx.x * ROT_WARPS + (threadIdx.x >> 5);
        if (row >= p.n_q * p.n_heads) return;  // whole warps
        const i64 i = row / p.n_heads, hq = row % p.n_heads, kvh = hq / p.group;
        const u8 *qp = p.q.ptr + seq * p.q.seq_stride + i * p.q.token_stride + hq * p.q.head_stride + (i64)(E * lane) * esz;
        float x[E], y[E];
        float qmu = 0.0f;
#pragma unroll
        for (int r = 0; r < E; r++) {
            x[r] = load_elem(qp + r * esz, p.dtype);
            if (p.mean_k) qmu += x[r] * p.mean_k[kvh * D + E * lane + r];
            y[r] = x[r] * p.rot.signs_in[E * lane + r];
        }
        warp_fwht<E>(y, lane);
        float ss = 0.0f;
#pragma unroll
        for (int r = 0; r < E; r++) {
            y[r] *= p.rot.signs_out[E * lane + r];
            ss += y[r] * y[r];
        }
        const float norm = sqrtf(warp_sum(ss));
        qmu = warp_sum(qmu);
        const i64 out_row = (seq * p.n_q + i) * p.n_heads + hq;
        float *dst = p.q_hat + out_row * D + E * lane;
        u16 *dst16 = p.q_hat16 + out_row * D;
#pragma unroll
        for (int r = 0; r < E; r++) {
            const float qh = norm > 0.0f ? y[r] / norm : 0.0f;
            dst[r] = qh;
            dst16[q16_pos(E * lane + r)] = float_to_f16(qh);
        }
        if (lane == 0) {
            p.q_coef[out_row] = norm * p.scale * LOG2E;
            p.q_mu[out_row] = qmu * p.scale * LOG2E;
        }
        return;
    }
    // One CTA of D threads per row (dense rotations).
    __shared__ float buf[D];
    __shared__ float red[D / 32];
    const int j = threadIdx.x;
    const i64 row = blockIdx.x;  // row = i * n_heads + hq
    const i64 i = row / p.n_heads, hq = row % p.n_heads;
    const float x = load_elem(p.q.ptr + seq * p.q.seq_stride + i * p.q.token_stride + hq * p.q.head_stride + j * esz, p.dtype);
    float y;
    if (p.rot.signs_in) {
        buf[j] = x * p.rot.signs_in[j];
        block_fwht(buf);
        y = buf[j] * p.rot.signs_out[j];
    } else {
        buf[j] = x;
        __syncthreads();
        y = 0.0f;
        for (int k = 0; k < D; k++) y += p.rot.matrix_t[(i64)k * D + j] * buf[k];
    }
    const float norm = sqrtf(block_sum<D / 32>(y * y, red));
    const i64 kvh = hq / p.group;
    const float qmu = p.mean_k ? block_sum<D / 32>(x * p.mean_k[kvh * D + j], red) : 0.0f;
    const i64 out_row = (seq * p.n_q + i) * p.n_heads + hq;
    const float qh = norm > 0.0f ? y / norm : 0.0f;
    p.q_hat[out_row * D + j] = qh;
    p.q_hat16[out_row * D + q16_pos(j)] = float_to_f16(qh);
    if (j == 0) {
        p.q_coef[out_row] = norm * p.scale * LOG2E;
        p.q_mu[out_row] = qmu * p.scale * LOG2E;
    }
}

// CMB_MAX_THREADS, the launch bound, and CMB_BATCH, the partials a warp loads before merging them (loads in
// flight), come from the host (COMBINE_MAX_WARPS * 32 and COMBINE_BATCH).

// One CTA per (query token, query head), of D to CMB_MAX_THREADS threads: more warps where there are
// many partials (fewer dependent load rounds), fewer where there are few (more CTAs resident). Warp w
// of nw merges partials w, w + nw, ... in one pass with its own running maximum (CMB_BATCH partials
// loaded at a time), the warps' results are merged through shared memory, then the first D threads
// finish one output element each — or, with a Hadamard V rotation and no full-precision rows, warp 0
// alone finishes the row: E = D/32 elements per lane, the un-rotation by warp_fwht (shuffles, no CTA
// barriers) with the signs loaded before the dependency wait.
extern "C" __global__ void __launch_bounds__(CMB_MAX_THREADS) tq_combine(const CombineParams p) {
    // [D] rotated accumulator, [nw] warp maxima, [nw] warp sums, [nw][D] warp
    // accumulators, [n_full] logits.
    extern __shared__ float cmb_smem[];
    float *buf = cmb_smem;
    float *red = buf + D;
    const int nw = blockDim.x >> 5;
    float *wl = red + nw;
    float *wsum = wl + nw;
    float *logits = wsum + nw * D;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int j = tid;  // output element of the first D threads
    const i64 row = blockIdx.x, seq = blockIdx.y;
    const i64 i = row / p.n_heads, hq = row % p.n_heads, kvh = hq / p.group;
    const float *part = p.partials + ((seq * p.n_q + i) * p.n_heads + hq) * p.n_partials * PART_STRIDE;
    // Warp 0's tail (see above): the context's signs and mean, read before the wait.
    constexpr int E = D / 32;
    const bool warp_tail = ROT_WARP && p.rot.signs_in != nullptr && p.n_full == 0;
    float so[E], si[E], mu[E];
    if (warp_tail && warp == 0) {
#pragma unroll
        for (int r = 0; r < E; r++) {
            so[r] = p.rot.signs_out[E * lane + r];
            si[r] = p.rot.signs_in[E * lane + r];
            mu[r] = p.mean_v ? p.mean_v[kvh * D + E * lane + r] : 0.0f;
        }
    }
    grid_dependency_wait();  // the partials come from the attention kernel

    {
        float mw = NEG_INF, lw = 0.0f, accw[D / 32];
#pragma unroll
        for (int k = 0; k < D / 32; k++) accw[k] = 0.0f;
        for (i64 s0 = warp; s0 < p.n_partials; s0 += nw * CMB_BATCH) {
            float m[CMB_BATCH], l[CMB_BATCH], o[CMB_BATCH][D / 32];
#pragma unroll
            for (int b = 0; b < CMB_BATCH; b++) {
                const i64 s = s0 + (i64)b * nw;
                const float *ps = part + s * PART_STRIDE;
                const bool in = s < p.n_partials;
                m[b] = in ? ps[0] : NEG_INF;
                l[b] = in ? ps[1] : 0.0f;
#pragma unroll
                for (int k = 0; k < D / 32; k++) o[b][k] = in ? ps[PART_O + lane + 32 * k] : 0.0f;
            }
            float bm = mw;
#pragma unroll
            for (int b = 0; b < CMB_BATCH; b++) bm = fmaxf(bm, m[b]);
            if (bm == NEG_INF) continue;
            const float c = mw == NEG_INF ? 0.0f : fast_exp2(mw - bm);
            lw *= c;
#pragma unroll
            for (int k = 0; k < D / 32; k++) accw[k] *= c;
#pragma unroll
            for (int b = 0; b < CMB_BATCH; b++) {
                const float wgt = m[b] == NEG_INF ? 0.0f : fast_exp2(m[b] - bm);
                lw += wgt * l[b];
#pragma unroll
                for (int k = 0; k < D / 32; k++) accw[k] += wgt * o[b][k];
            }
            mw = bm;
        }
        if (lane == 0) {
            red[warp] = mw;
            wl[warp] = lw;
        }
#pragma unroll
        for (int k = 0; k < D / 32; k++) wsum[warp * D + lane + 32 * k] = accw[k];
    }
    __syncthreads();
    if (warp_tail) {
        if (warp != 0) return;
        float mx = NEG_INF;
        for (int w = 0; w < nw; w++) mx = fmaxf(mx, red[w]);
        float l = 0.0f, y[E];
#pragma unroll
        for (int r = 0; r < E; r++) y[r] = 0.0f;
        if (mx != NEG_INF) {
            for (int w = 0; w < nw; w++) {
                const float c = red[w] == NEG_INF ? 0.0f : fast_exp2(red[w] - mx);
                l += c * wl[w];
#pragma unroll
                for (int r = 0; r < E; r++) y[r] += c * wsum[w * D + E * lane + r];
            }
        }
        // Un-rotate: Pi_v^T acc = D1 H (D2 acc), as block_fwht below.
#pragma unroll
        for (int r = 0; r < E; r++) y[r] *= so[r];
        warp_fwht<E>(y, lane);
        u8 *o = p.out + seq * p.out_seq_stride + i * p.out_token_stride + hq * p.out_head_stride;
        const i64 esz = p.dtype == DTYPE_F32 ? 4 : 2;
#pragma unroll
        for (int r = 0; r < E; r++)
            store_elem(o + (E * lane + r) * esz, p.dtype, l > 0.0f ? (y[r] * si[r] + mu[r] * l) / l : 0.0f);
        return;
    }
    float mmax = NEG_INF;
    for (int w = 0; w < nw; w++) mmax = fmaxf(mmax, red[w]);
    float lc = 0.0f, acc = 0.0f;
    if (mmax != NEG_INF) {
        for (int w = 0; w < nw; w++) {
            const float c = red[w] == NEG_INF ? 0.0f : fast_exp2(red[w] - mmax);
            lc += c * wl[w];
            if (j < D) acc += c * wsum[w * D + j];
        }
    }
    // Full-precision rows (original basis), merged into the same softmax.
    float lf = 0.0f, accf = 0.0f;
    if (p.n_full > 0) {
        const u8 *qp = p.q.ptr + seq * p.q.seq_stride + i * p.q.token_stride + hq * p.q.head_stride;
        const i64 esz = p.dtype == DTYPE_F32 ? 4 : 2;
        const i64 qpos = p.query_pos[seq * p.n_q + i];
        for (i64 r = warp; r < p.n_full; r += nw) {
            const float *k = p.full_k + ((seq * p.full_seq_stride + r) * p.n_kv_heads + kvh) * D;
            float dot = 0.0f;
            for (int e = lane; e < D; e += 32) dot += load_elem(qp + e * esz, p.dtype) * k[e];
            for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
            if (lane == 0) {
                const bool visible = p.full_pos[seq * p.full_seq_stride + r] <= qpos;
                logits[r] = visible ? dot * p.scale * LOG2E : NEG_INF;
            }
        }
        __syncthreads();
        float fmax = NEG_INF;
        for (i64 r = 0; r < p.n_full; r++) fmax = fmaxf(fmax, logits[r]);
        const float new_m = fmaxf(mmax, fmax);
        if (new_m != NEG_INF) {
            const float corr = mmax == NEG_INF ? 0.0f : fast_exp2(mmax - new_m);
            lc *= corr;
            acc *= corr;
            for (i64 r = 0; r < p.n_full; r++) {
                const float pr = fast_exp2(logits[r] - new_m);
                if (pr > 0.0f) {
                    lf += pr;
                    if (j < D) accf += pr * p.full_v[((seq * p.full_seq_stride + r) * p.n_kv_heads + kvh) * D + j];
                }
            }
        }
    }
    // Un-rotate the compressed part once: Pi_v^T acc.
    float val = 0.0f;
    if (p.rot.signs_in) {
        if (j < D) buf[j] = acc * p.rot.signs_out[j];
        block_fwht(buf);
        if (j < D) val = buf[j] * p.rot.signs_in[j];
    } else {
        if (j < D) buf[j] = acc;
        __syncthreads();
        if (j < D)
            for (int k = 0; k < D; k++) val += p.rot.matrix[(i64)k * D + j] * buf[k];
    }
    if (j >= D) return;
    const float total = lc + lf;
    float out = 0.0f;
    if (total > 0.0f) {
        const float mu = p.mean_v ? p.mean_v[kvh * D + j] : 0.0f;
        out = (val + mu * lc + accf) / total;
    }
    store_elem(p.out + seq * p.out_seq_stride + i * p.out_token_stride + hq * p.out_head_stride +
                   j * (p.dtype == DTYPE_F32 ? 4 : 2),
               p.dtype, out);
}
