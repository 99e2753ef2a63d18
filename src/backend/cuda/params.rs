//! Kernel argument structs: `#[repr(C)]` mirrors of the structs in `kernels/*.cu`. Every field is
//! 8 bytes wide (device pointers as u64, integers as i64, floats in pairs), so the layouts agree
//! without padding rules; `layout_asserts` appends `static_assert`s on sizes and field offsets to the
//! kernel source, so a drift fails compilation (also on CI, which compiles every variant).

use std::mem::{offset_of, size_of};

/// A device address (CUdeviceptr); 0 is NULL.
pub type DevPtr = u64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttendParams {
    pub k_stores: DevPtr,
    pub v_stores: DevPtr,
    pub k_store: DevPtr,
    pub v_store: DevPtr,
    pub seq_cells: DevPtr,
    pub max_cells: i64,
    pub n_seqs: i64,
    pub n_q: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    pub group: i64,
    pub k_row_bytes: i64,
    pub v_row_bytes: i64,
    pub k_scale_offset: i64,
    pub v_scale_offset: i64,
    pub q_hat: DevPtr,
    pub q_coef: DevPtr,
    pub q_mu: DevPtr,
    pub mask: DevPtr,
    pub mask_dtype: i64,
    pub mask_row_stride: i64,
    pub mask_seq_stride: i64,
    pub cell_pos: DevPtr,
    pub cell_pos_seq_stride: i64,
    pub query_pos: DevPtr,
    pub chunk: i64,
    pub n_splits: i64,
    pub warps_per_head: i64,
    pub heads_per_cta: i64,
    pub n_partials: i64,
    pub stage_cells: i64,
    pub partials: DevPtr,
    pub k_centroids: DevPtr,
    pub v_centroids: DevPtr,
    pub q_hat16: DevPtr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EncodeSide {
    pub store: DevPtr,
    pub input: DevPtr,
    pub token_stride: i64,
    pub head_stride: i64,
    pub row_bytes: i64,
    pub scale_offset: i64,
    pub boundaries: DevPtr,
    pub signs_in: DevPtr,
    pub signs_out: DevPtr,
    pub matrix_t: DevPtr,
    pub mean: DevPtr,
    pub centroids: DevPtr,
    pub scale_rule: i64,
}

/// The append kernel's code of a scale rule (SCALE_* in kernels/append.cu).
pub fn scale_rule_code(rule: crate::math::scale::ScaleRule) -> i64 {
    use crate::math::scale::ScaleRule;
    match rule {
        ScaleRule::Norm => 0,
        ScaleRule::NormCorrected => 1,
        ScaleRule::LeastSquares => 2,
        ScaleRule::Projection => 3,
    }
}

/// One side (K or V) of tq_head_means.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MeansSide {
    pub input: DevPtr,
    pub token_stride: i64,
    pub head_stride: i64,
    pub out: DevPtr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MeansParams {
    pub k: MeansSide,
    pub v: MeansSide,
    /// The rows [first_token, n_tokens) are averaged (`codec::mean_rows`).
    pub first_token: i64,
    pub n_tokens: i64,
    pub n_kv_heads: i64,
    pub dtype: i64,
    /// 0: the V means are zero (value centering off), 1: they are averaged like K's.
    pub center_values: i64,
    /// The layer's u32 "means frozen" flag: the kernel does nothing once it is set (a graph
    /// replaying a first append must not recompute the means from later rows).
    pub frozen: DevPtr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AppendParams {
    pub k: EncodeSide,
    pub v: EncodeSide,
    pub slots: DevPtr,
    pub n_tokens: i64,
    pub n_cells: i64,
    pub n_kv_heads: i64,
    pub dtype: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Rotation {
    pub signs_in: DevPtr,
    pub signs_out: DevPtr,
    pub matrix: DevPtr,
    pub matrix_t: DevPtr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct QueryTensor {
    pub ptr: DevPtr,
    pub seq_stride: i64,
    pub token_stride: i64,
    pub head_stride: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RotateParams {
    pub q: QueryTensor,
    pub dtype: i64,
    pub n_q: i64,
    pub n_heads: i64,
    pub group: i64,
    pub rot: Rotation,
    pub mean_k: DevPtr,
    pub scale: f32,
    pub pad_: f32,
    pub q_hat: DevPtr,
    pub q_coef: DevPtr,
    pub q_mu: DevPtr,
    pub q_hat16: DevPtr,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CombineParams {
    pub q: QueryTensor,
    pub dtype: i64,
    pub n_q: i64,
    pub n_heads: i64,
    pub group: i64,
    pub n_kv_heads: i64,
    pub rot: Rotation,
    pub mean_v: DevPtr,
    pub partials: DevPtr,
    pub n_partials: i64,
    pub full_k: DevPtr,
    pub full_v: DevPtr,
    pub full_pos: DevPtr,
    pub query_pos: DevPtr,
    pub n_full: i64,
    pub full_seq_stride: i64,
    pub scale: f32,
    pub pad_: f32,
    pub out: DevPtr,
    pub out_seq_stride: i64,
    pub out_token_stride: i64,
    pub out_head_stride: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DequantParams {
    pub store: DevPtr,
    pub n_cells: i64,
    pub n_kv_heads: i64,
    pub row_bytes: i64,
    pub code_bytes: i64,
    pub scale_offset: i64,
    pub bits: i64,
    pub rot: Rotation,
    pub centroids: DevPtr,
    pub mean: DevPtr,
    pub out: DevPtr,
    pub out_dtype: i64,
    pub token_stride: i64,
    pub head_stride: i64,
}

macro_rules! layout {
    ($src:ident, $offsets:ident, $ty:ident, [$($field:ident),*]) => {
        $src.push_str(&format!("static_assert(sizeof({ty}) == {n}, \"{ty} size differs from src/backend/cuda/params.rs\");\n",
            ty = stringify!($ty), n = size_of::<$ty>()));
        $src.push_str(&format!("    {{ {} s; const char *b = reinterpret_cast<const char *>(&s);\n", stringify!($ty)));
        $(
            $src.push_str(&format!("      out[n++] = reinterpret_cast<const char *>(&s.{}) - b;\n", stringify!($field)));
            $offsets.push(offset_of!($ty, $field) as i64);
        )*
        $src.push_str("    }\n");
    };
}

/// The layout checks appended to the kernel source — `static_assert`s on the struct sizes (checked
/// by every compilation, CI included) and the kernel `tq_layout_probe`, which writes every field
/// offset; `CudaBackend::new` runs it once and compares with `layout().1` — and the expected offsets.
pub fn layout() -> (String, Vec<i64>) {
    let mut src = String::from("// Layout checks generated by src/backend/cuda/params.rs\n");
    let mut probe = String::new();
    let mut offsets = Vec::new();
    layout!(probe, offsets, AttendParams, [k_stores, v_stores, k_store, v_store, seq_cells, max_cells, n_seqs, n_q, n_heads,
        n_kv_heads, group, k_row_bytes, v_row_bytes, k_scale_offset, v_scale_offset, q_hat, q_coef, q_mu, mask,
        mask_dtype, mask_row_stride, mask_seq_stride, cell_pos, cell_pos_seq_stride, query_pos, chunk, n_splits,
        warps_per_head, heads_per_cta, n_partials, stage_cells, partials, k_centroids, v_centroids, q_hat16]);
    layout!(probe, offsets, EncodeSide, [store, input, token_stride, head_stride, row_bytes, scale_offset, boundaries, signs_in,
        signs_out, matrix_t, mean, centroids, scale_rule]);
    layout!(probe, offsets, AppendParams, [k, v, slots, n_tokens, n_cells, n_kv_heads, dtype]);
    layout!(probe, offsets, MeansSide, [input, token_stride, head_stride, out]);
    layout!(probe, offsets, MeansParams, [k, v, first_token, n_tokens, n_kv_heads, dtype, center_values]);
    layout!(probe, offsets, Rotation, [signs_in, signs_out, matrix, matrix_t]);
    layout!(probe, offsets, QueryTensor, [ptr, seq_stride, token_stride, head_stride]);
    layout!(probe, offsets, RotateParams, [q, dtype, n_q, n_heads, group, rot, mean_k, scale, q_hat, q_coef, q_mu, q_hat16]);
    layout!(probe, offsets, CombineParams, [q, dtype, n_q, n_heads, group, n_kv_heads, rot, mean_v, partials, n_partials,
        full_k, full_v, full_pos, query_pos, n_full, full_seq_stride, scale, out, out_seq_stride,
        out_token_stride, out_head_stride]);
    layout!(probe, offsets, DequantParams, [store, n_cells, n_kv_heads, row_bytes, code_bytes, scale_offset, bits, rot, centroids,
        mean, out, out_dtype, token_stride, head_stride]);
    // The static_asserts were pushed into `probe` with the field lines; split them out.
    let (asserts, body): (Vec<&str>, Vec<&str>) = probe.lines().partition(|l| l.starts_with("static_assert"));
    for a in asserts {
        src.push_str(a);
        src.push('\n');
    }
    src.push_str("extern \"C\" __global__ void tq_layout_probe(long long *out) {\n    int n = 0;\n");
    for l in body {
        src.push_str(l);
        src.push('\n');
    }
    src.push_str("}\n");
    (src, offsets)
}
