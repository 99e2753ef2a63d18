// tq_dequant_rows: cells 0..n_cells of one store (K or V) decoded to the vectors attention uses, in
// the original basis: x = Pi^T (s * c[idx]) + mu, written as f32/f16/bf16 under the caller's strides
// (tq_dequantize_rows). One warp per (cell, kv head) row, DQ_WARPS rows per CTA: lane l decodes the
// E = D/32 codes of dimensions [E*l, E*l + E) straight from the row bytes, then the un-rotation runs
// in the warp — warp_fwht between the sign vectors for a Hadamard rotation (as tq_combine does for
// the output), or E outputs of Pi^T y per lane from the row in shared memory for a dense one.

constexpr int DQ_WARPS = 8;

struct DequantParams {
    const u8 *store;
    i64 n_cells, n_kv_heads, row_bytes, code_bytes, scale_offset, bits;
    Rotation rot;
    const float *centroids;  // 2^bits
    const float *mean;       // [n_kv_heads][D] or NULL
    u8 *out;
    i64 out_dtype, token_stride, head_stride;  // strides in bytes
};

extern "C" __global__ void __launch_bounds__(DQ_WARPS * 32) tq_dequant_rows(const DequantParams p) {
    constexpr int E = D / 32;
    __shared__ float ybuf[DQ_WARPS][D];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 row = (i64)blockIdx.x * DQ_WARPS + warp;
    if (row >= p.n_cells * p.n_kv_heads) return;  // whole warps; no CTA barrier below
    const i64 j = row / p.n_kv_heads, h = row % p.n_kv_heads;
    const u8 *r = p.store + j * p.row_bytes;
    const u8 *codes = r + h * p.code_bytes;
    const float s = load_scale(r + p.scale_offset + 2 * h);
    const int bits = (int)p.bits;
    const u32 cmask = (1u << bits) - 1u;
    float y[E];
#pragma unroll
    for (int e = 0; e < E; e++) {
        // Code i at stream bits [i*bits, (i+1)*bits): two bytes hold it (bits <= 8). The byte after
        // the last code's is still inside the row (its scales follow the codes).
        const int i = E * lane + e;
        const int bit = i * bits;
        const u32 two = (u32)codes[bit >> 3] | ((u32)codes[(bit >> 3) + 1] << 8);
        y[e] = s * p.centroids[(two >> (bit & 7)) & cmask];
    }
    float x[E];
    if (ROT_WARP && p.rot.signs_in) {
#pragma unroll
        for (int e = 0; e < E; e++) y[e] *= p.rot.signs_out[E * lane + e];
        warp_fwht<E>(y, lane);
#pragma unroll
        for (int e = 0; e < E; e++) x[e] = y[e] * p.rot.signs_in[E * lane + e];
    } else {
#pragma unroll
        for (int e = 0; e < E; e++) ybuf[warp][E * lane + e] = y[e];
        __syncwarp();
#pragma unroll
        for (int e = 0; e < E; e++) {
            const int c = E * lane + e;
            float acc = 0.0f;
            for (int k = 0; k < D; k++) acc += p.rot.matrix[(i64)k * D + c] * ybuf[warp][k];
            x[e] = acc;
        }
    }
    u8 *o = p.out + j * p.token_stride + h * p.head_stride;
    const i64 esz = p.out_dtype == DTYPE_F32 ? 4 : 2;
#pragma unroll
    for (int e = 0; e < E; e++) {
        const int c = E * lane + e;
        store_elem(o + c * esz, p.out_dtype, x[e] + (p.mean ? p.mean[h * D + c] : 0.0f));
    }
}
