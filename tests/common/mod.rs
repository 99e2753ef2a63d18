//! Shared helpers of the integration tests: seeded data, FFI wrappers, float64 references.
#![allow(dead_code)]

use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;
use turboquant::codec::layout::RowLayout;
use turboquant::math::quantizer::{MseQuantizer, Quantizer, QuantizerConfig, QuantizerKind, Scratch};
use turboquant::math::rotation::RotationKind;

#[path = "rng.rs"]
mod rng;
pub use rng::Rng;

pub struct Ctx(pub *mut tq_context);

impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe { tq_context_free(self.0) };
    }
}

pub fn last_error() -> String {
    unsafe { std::ffi::CStr::from_ptr(turboquant::ffi::tq_last_error_message()) }.to_string_lossy().into_owned()
}

pub fn context(p: &tq_context_params) -> Ctx {
    let mut ctx = std::ptr::null_mut();
    let st = unsafe { tq_context_new(p, &mut ctx) };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    Ctx(ctx)
}

/// The first `size` bytes of `p` with struct_size = `size`: the params as a caller built against an
/// older header passes them.
pub fn params_prefix(p: &tq_context_params, size: usize) -> Vec<u8> {
    let mut old = vec![0u8; size];
    unsafe { std::ptr::copy_nonoverlapping(p as *const tq_context_params as *const u8, old.as_mut_ptr(), size) };
    old[..std::mem::size_of::<usize>()].copy_from_slice(&size.to_ne_bytes());
    old
}

pub fn row_bytes(ctx: &Ctx) -> (usize, usize) {
    let (mut k, mut v) = (0, 0);
    assert_eq!(unsafe { tq_context_row_bytes(ctx.0, &mut k, &mut v) }, tq_status::TQ_STATUS_OK);
    (k, v)
}

/// Softmax attention in f64: q [n_q][n_heads][d], k/v [n_cells][n_kv][d], mask [n_q][n_cells].
#[allow(clippy::too_many_arguments)]
pub fn reference_attention(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    n_q: usize,
    n_cells: usize,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    scale: f64,
) -> Vec<f64> {
    reference_attention_ext(q, k, v, mask, n_q, n_cells, n_heads, n_kv, d, scale, 0.0, None)
}

/// `reference_attention` with optional soft-capping (c·tanh(s/c) of the scaled score, before the mask;
/// `softcap` 0 = off) and one sink logit per query head (a softmax term whose value vector is zero).
#[allow(clippy::too_many_arguments)]
pub fn reference_attention_ext(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[f64],
    n_q: usize,
    n_cells: usize,
    n_heads: usize,
    n_kv: usize,
    d: usize,
    scale: f64,
    softcap: f64,
    sinks: Option<&[f32]>,
) -> Vec<f64> {
    let group = n_heads / n_kv;
    let mut out = vec![0.0; n_q * n_heads * d];
    for t in 0..n_q {
        for h in 0..n_heads {
            let g = h / group;
            let qv = &q[(t * n_heads + h) * d..(t * n_heads + h + 1) * d];
            let scores: Vec<f64> = (0..n_cells)
                .map(|j| {
                    let kv = &k[(j * n_kv + g) * d..(j * n_kv + g + 1) * d];
                    let s = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f64>() * scale;
                    let s = if softcap > 0.0 { softcap * (s / softcap).tanh() } else { s };
                    s + mask[t * n_cells + j]
                })
                .collect();
            let sink = sinks.map(|s| s[h] as f64);
            let m = scores.iter().copied().chain(sink).fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let l: f64 = w.iter().sum::<f64>() + sink.map_or(0.0, |s| (s - m).exp());
            let o = &mut out[(t * n_heads + h) * d..(t * n_heads + h + 1) * d];
            for j in 0..n_cells {
                let vv = &v[(j * n_kv + g) * d..(j * n_kv + g + 1) * d];
                for i in 0..d {
                    o[i] += w[j] / l * vv[i];
                }
            }
        }
    }
    out
}

/// max over (token, head) rows of ‖a − b‖ / ‖b‖ (rows where b = 0 must match exactly).
pub fn max_row_rel_error(a: &[f32], b: &[f64], d: usize) -> f64 {
    let mut worst = 0.0f64;
    for (ra, rb) in a.chunks(d).zip(b.chunks(d)) {
        let diff: f64 = ra.iter().zip(rb).map(|(x, y)| (*x as f64 - y).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = rb.iter().map(|y| y * y).sum::<f64>().sqrt();
        let e = if norm == 0.0 { diff } else { diff / norm };
        worst = worst.max(e);
    }
    worst
}

/// The key centering means the library freezes from a first append of `n` rows of `width` elements
/// (`x` row-major): the per-element mean over rows 1..n in f64, rounded once to f32 — row 0 (an
/// engine's BOS / sink row) is left out when there are at least two rows (codec::mean_rows).
/// Written out here, independently of the library's code.
#[allow(dead_code)]
pub fn key_means(x: &[f32], n: usize, width: usize) -> Vec<f32> {
    let first = if n >= 2 { 1 } else { 0 };
    let count = (n - first).max(1) as f64;
    (0..width).map(|e| ((first..n).map(|i| x[i * width + e] as f64).sum::<f64>() / count) as f32).collect()
}

/// Dequantize one head of a row independently of the attention code path (math layer only).
pub fn dequant_rows(
    store: &[u8],
    layout: &RowLayout,
    n_cells: usize,
    key: Option<&Quantizer>,
    value: Option<&MseQuantizer>,
    mean: Option<&[f32]>,
) -> Vec<f64> {
    let (d, h) = (layout.head_dim, layout.n_kv_heads);
    let rb = layout.row_bytes();
    let mut out = vec![0.0f64; n_cells * h * d];
    let mut scratch = Scratch::new(d);
    let mut x = vec![0.0f32; d];
    for j in 0..n_cells {
        let row = &store[j * rb..(j + 1) * rb];
        for g in 0..h {
            let sc = u16::from_le_bytes([row[layout.scale_offset(g)], row[layout.scale_offset(g) + 1]]);
            let codes = &row[layout.codes_offset(g)..layout.codes_offset(g) + layout.code_bytes()];
            if let Some(v) = value {
                v.decode(codes, sc, &mut x, &mut scratch);
            } else {
                let key = key.unwrap();
                let mut all = codes.to_vec();
                let mut scales = vec![sc];
                if layout.qjl {
                    all.extend_from_slice(&row[layout.signs_offset(g)..layout.signs_offset(g) + layout.sign_bytes()]);
                    scales.push(u16::from_le_bytes([row[layout.gamma_offset(g)], row[layout.gamma_offset(g) + 1]]));
                }
                key.dequantize_one(&all, &scales, &mut x, &mut scratch);
            }
            for i in 0..d {
                out[(j * h + g) * d + i] = x[i] as f64 + mean.map_or(0.0, |m| m[g * d + i] as f64);
            }
        }
    }
    out
}

/// One layer (index 1 of 2) of `n_cells` random rows appended in one call on a 2-thread CPU context,
/// with the rows' float64 dequantization rebuilt from the math layer.
pub struct Setup {
    pub ctx: Ctx,
    pub n_heads: usize,
    pub n_kv: usize,
    pub d: usize,
    pub n_cells: usize,
    pub k_store: Vec<u8>,
    pub v_store: Vec<u8>,
    /// dequantized rows (cell order), float64, means added back
    pub kd: Vec<f64>,
    pub vd: Vec<f64>,
}

/// The data of a `Setup`: normals, or normals with a constant offset per channel (so that centering
/// matters: keys + 2 + i%3, values + 1 - (i%4)/2).
#[derive(Clone, Copy, PartialEq)]
pub enum Rows {
    Normal,
    Offset,
}

/// A `Setup` of K/V `bits`; `centering` centers K, and V too with `center_values`.
#[allow(clippy::too_many_arguments)]
pub fn setup(d: usize, n_kv: usize, group: usize, bits: u32, centering: bool, center_values: bool, rows: Rows, n_cells: usize, seed: u64) -> Setup {
    let n_heads = n_kv * group;
    let mut p = tq_context_default_params();
    p.n_layers = 2;
    (p.n_heads, p.n_kv_heads, p.head_dim) = (n_heads as u32, n_kv as u32, d as u32);
    (p.bits_k, p.bits_v) = (bits, bits);
    p.centering = centering;
    p.center_values = center_values;
    p.seed = seed;
    p.n_threads = 2;
    let ctx = context(&p);
    let (kr, vr) = row_bytes(&ctx);
    let layer = 1u32;
    let mut rng = Rng::new(seed);
    let mut k = rng.normals(n_cells * n_kv * d);
    if rows == Rows::Offset {
        for (i, x) in k.iter_mut().enumerate() {
            *x += 2.0 + (i % 3) as f32;
        }
    }
    let mut v = rng.normals(n_cells * n_kv * d);
    if rows == Rows::Offset {
        for (i, x) in v.iter_mut().enumerate() {
            *x += 1.0 - (i % 4) as f32 * 0.5;
        }
    }
    let slots: Vec<i64> = (0..n_cells as i64).collect();
    let mut k_store = vec![0u8; n_cells * kr];
    let mut v_store = vec![0u8; n_cells * vr];
    let st = unsafe {
        tq_append_kv(ctx.0, layer, k_store.as_mut_ptr().cast(), v_store.as_mut_ptr().cast(), n_cells, slots.as_ptr(), n_cells,
            k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let rotation = RotationKind::auto(d);
    let key = Quantizer::new_indexed(QuantizerConfig { dim: d, bits, rotation, kind: QuantizerKind::Mse, seed }, 2 * layer as u64, layer as u64)
        .unwrap();
    let value = MseQuantizer::new(d, bits, rotation, seed, 2 * layer as u64 + 1).unwrap();
    let layout = RowLayout { n_kv_heads: n_kv, head_dim: d, mse_bits: bits, qjl: false, split: 0 };
    let mk = key_means(&k, n_cells, n_kv * d);
    let mv = key_means(&v, n_cells, n_kv * d);
    let kd = dequant_rows(&k_store, &layout, n_cells, Some(&key), None, centering.then_some(mk.as_slice()));
    let vd = dequant_rows(&v_store, &layout, n_cells, None, Some(&value), (centering && center_values).then_some(mv.as_slice()));
    Setup { ctx, n_heads, n_kv, d, n_cells, k_store, v_store, kd, vd }
}
