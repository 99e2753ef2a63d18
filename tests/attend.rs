//! Slot-mode append + attend through the C ABI, against a float64 softmax over the dequantized rows
//! (which tq_attend must reproduce to float32 rounding) and against exact attention on the
//! uncompressed K/V (the quantization error itself, reported and bounded).

mod common;

use common::*;
use turboquant::codec::layout::RowLayout;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;
use turboquant::math::quantizer::{MseQuantizer, Quantizer, QuantizerConfig, QuantizerKind};
use turboquant::math::rotation::RotationKind;

struct Case {
    d: usize,
    n_kv: usize,
    group: usize,
    bits_k: u32,
    bits_v: u32,
    prod: bool,
    /// None: the library's default.
    centering: Option<bool>,
    rotation: u32,
    key_offset: Offset,
    /// Give bits_k/bits_v to layer 1 (the layer tested) through the per-layer bits arrays, with
    /// params->bits_k/bits_v (and so layer 0) at 8 bits.
    per_layer: bool,
}

/// A constant added to every key (some model families have large key biases).
#[derive(Clone, Copy, PartialEq)]
enum Offset {
    None,
    /// 3..7 per channel.
    Channels,
    /// One fixed random direction of norm 30·√d, 30× the keys' typical norm (k ~ N(0, I)).
    Norm30,
}

/// Returns (error vs dequantized reference, error vs exact attention over the original K/V).
fn run_case(c: &Case, n_q: usize, seed: u64) -> (f64, f64) {
    let n_heads = c.n_kv * c.group;
    let d = c.d;
    let mut p = tq_context_default_params();
    p.n_layers = 2;
    p.n_heads = n_heads as u32;
    p.n_kv_heads = c.n_kv as u32;
    p.head_dim = d as u32;
    p.bits_k = c.bits_k;
    p.bits_v = c.bits_v;
    let (layer_k, layer_v) = ([8, c.bits_k], [8, c.bits_v]);
    if c.per_layer {
        (p.bits_k, p.bits_v) = (8, 8);
        (p.layer_bits_k, p.layer_bits_v, p.n_layer_bits) = (layer_k.as_ptr(), layer_v.as_ptr(), 2);
    }
    p.key_mode = if c.prod { 1 } else { 0 };
    if let Some(on) = c.centering {
        p.centering = on;
    }
    let centering = p.centering;
    p.rotation = c.rotation;
    p.seed = seed;
    p.n_threads = 2;
    let ctx = context(&p);
    let layer = 1u32;
    let (mut kr, mut vr) = (0, 0);
    assert_eq!(unsafe { tq_context_layer_row_bytes(ctx.0, layer, &mut kr, &mut vr) }, tq_status::TQ_STATUS_OK);
    if !c.per_layer {
        assert_eq!(row_bytes(&ctx), (kr, vr));
    }

    // Two sequences interleaved over the cells (slot mode: the engine's mask separates them).
    let n_cells = 300;
    let mut rng = Rng::new(seed);
    let offset: Vec<f32> = match c.key_offset {
        Offset::None => vec![0.0; c.n_kv * d],
        Offset::Channels => (0..c.n_kv * d).map(|i| 3.0 + (i % 5) as f32).collect(),
        Offset::Norm30 => {
            let dir = Rng::new(0x0ff5e7).normals(c.n_kv * d);
            let mut out = Vec::new();
            for h in dir.chunks_exact(d) {
                let n = h.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
                out.extend(h.iter().map(|&x| (x as f64 * 30.0 * (d as f64).sqrt() / n) as f32));
            }
            out
        }
    };
    let mut k = rng.normals(n_cells * c.n_kv * d);
    for (i, x) in k.iter_mut().enumerate() {
        *x += offset[i % (c.n_kv * d)];
    }
    let v = rng.normals(n_cells * c.n_kv * d);
    // Cells written in a scrambled order, in two appends (the first fixes centering means).
    let slots: Vec<i64> = (0..n_cells as i64).map(|i| (i * 7) % n_cells as i64).collect();
    let mut k_store = vec![0u8; n_cells * kr];
    let mut v_store = vec![0u8; n_cells * vr];
    let row_k = |i: usize| k[i * c.n_kv * d..].as_ptr() as *const u8;
    let row_v = |i: usize| v[i * c.n_kv * d..].as_ptr() as *const u8;
    for (start, end) in [(0usize, 200usize), (200, n_cells)] {
        let st = unsafe {
            tq_append_kv(ctx.0, layer, k_store.as_mut_ptr().cast(), v_store.as_mut_ptr().cast(), n_cells, slots[start..].as_ptr(), end - start,
                row_k(start).cast(), std::ptr::null(), row_v(start).cast(), std::ptr::null(), std::ptr::null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    }
    // Cell j holds token i where slots[i] = j; sequence = token parity; position = token index.
    let mut token_of_cell = vec![0usize; n_cells];
    for (i, &s) in slots.iter().enumerate() {
        token_of_cell[s as usize] = i;
    }
    // Queries: the last n_q tokens of sequence 0 (even tokens), causal.
    let q = rng.normals(n_q * n_heads * d);
    let seq_tokens: Vec<usize> = (0..n_cells).filter(|i| i % 2 == 0).collect();
    let query_pos: Vec<usize> = seq_tokens[seq_tokens.len() - n_q..].to_vec();
    let mut mask = vec![0.0f32; n_q * n_cells];
    for t in 0..n_q {
        for j in 0..n_cells {
            let tok = token_of_cell[j];
            if tok % 2 != 0 || tok > query_pos[t] {
                mask[t * n_cells + j] = f32::NEG_INFINITY;
            }
        }
    }
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; n_q * n_heads * d];
    let st = unsafe {
        tq_attend(ctx.0, layer, q.as_ptr().cast(), n_q, std::ptr::null(), k_store.as_ptr().cast(), v_store.as_ptr().cast(), n_cells,
            mask.as_ptr().cast(), 0, n_cells, scale, out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());

    // The same quantizers, rebuilt from the math layer (rotation streams 2L / 2L+1, QJL stream L).
    let rotation = if c.rotation == 1 { RotationKind::Dense } else { RotationKind::auto(d) };
    let key = Quantizer::new_indexed(
        QuantizerConfig { dim: d, bits: c.bits_k, rotation, kind: if c.prod { QuantizerKind::Prod } else { QuantizerKind::Mse }, seed },
        2 * layer as u64,
        layer as u64,
    )
    .unwrap();
    let value = MseQuantizer::new(d, c.bits_v, rotation, seed, 2 * layer as u64 + 1).unwrap();
    let k_layout = RowLayout { n_kv_heads: c.n_kv, head_dim: d, mse_bits: if c.prod { c.bits_k - 1 } else { c.bits_k }, qjl: c.prod, split: 0 };
    let v_layout = RowLayout { n_kv_heads: c.n_kv, head_dim: d, mse_bits: c.bits_v, qjl: false, split: 0 };
    assert_eq!((k_layout.row_bytes(), v_layout.row_bytes()), (kr, vr));
    // Key centering means from the first append's 200 tokens; V is not centered (params->center_values
    // is off by default).
    let mk = key_means(&k[..200 * c.n_kv * d], 200, c.n_kv * d);
    let kd = dequant_rows(&k_store, &k_layout, n_cells, Some(&key), None, centering.then_some(mk.as_slice()));
    let vd = dequant_rows(&v_store, &v_layout, n_cells, None, Some(&value), None);
    // The row format's scale rules (codec::KEY_SCALE_RULE, VALUE_SCALE_RULE), checked on the rows
    // dequantized here: every MSE key head reconstructs with its input's norm, every value head with
    // its input's projection ⟨v̂, v⟩ = ‖v‖², to the bf16 scale's rounding (2^-8, doubled for margin).
    if !centering {
        let tol = 2.0 * 2f64.powi(-8);
        for (i, &cell) in slots.iter().enumerate() {
            for g in 0..c.n_kv {
                let (src, dst) = ((i * c.n_kv + g) * d, (cell as usize * c.n_kv + g) * d);
                let (x, xk) = (&k[src..src + d], &kd[dst..dst + d]);
                let (y, yv) = (&v[src..src + d], &vd[dst..dst + d]);
                let n2 = |a: &[f32]| a.iter().map(|&e| e as f64 * e as f64).sum::<f64>();
                if !c.prod {
                    let nk = xk.iter().map(|e| e * e).sum::<f64>().sqrt();
                    assert!((nk / n2(x).sqrt() - 1.0).abs() <= tol, "token {i} head {g}: ‖k̂‖ {nk} vs ‖k‖ {}", n2(x).sqrt());
                }
                let proj = yv.iter().zip(y).map(|(a, &b)| a * b as f64).sum::<f64>();
                assert!((proj / n2(y) - 1.0).abs() <= tol, "token {i} head {g}: ⟨v̂,v⟩ {proj} vs ‖v‖² {}", n2(y));
            }
        }
    }
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let mask64: Vec<f64> = mask.iter().map(|&x| x as f64).collect();
    let reference = reference_attention(&q64, &kd, &vd, &mask64, n_q, n_cells, n_heads, c.n_kv, d, scale as f64);
    let err_codec = max_row_rel_error(&out, &reference, d);

    // Exact attention over the original rows (cell order).
    let mut k_cells = vec![0.0f64; n_cells * c.n_kv * d];
    let mut v_cells = vec![0.0f64; n_cells * c.n_kv * d];
    for (i, &s) in slots.iter().enumerate() {
        let (src, dst) = (i * c.n_kv * d, s as usize * c.n_kv * d);
        for e in 0..c.n_kv * d {
            k_cells[dst + e] = k[src + e] as f64;
            v_cells[dst + e] = v[src + e] as f64;
        }
    }
    let exact = reference_attention(&q64, &k_cells, &v_cells, &mask64, n_q, n_cells, n_heads, c.n_kv, d, scale as f64);
    (err_codec, max_row_rel_error(&out, &exact, d))
}

#[test]
fn attend_matches_float64_reference_over_dequantized_rows() {
    let mut seed = 1;
    for d in [64usize, 128, 256] {
        for group in [1usize, 4, 8] {
            for n_q in [1usize, 64] {
                let c = Case { d, n_kv: 2, group, bits_k: 4, bits_v: 4, prod: false, centering: Some(false), rotation: 0, key_offset: Offset::None, per_layer: false };
                let (err, _) = run_case(&c, n_q, seed);
                seed += 1;
                assert!(err <= 1e-5, "d={d} group={group} n_q={n_q}: relative error {err:e}");
            }
        }
    }
}

#[test]
fn attend_variants_match_reference() {
    // PROD keys, centering, dense rotation, odd bit widths.
    let cases = [
        Case { d: 64, n_kv: 3, group: 3, bits_k: 3, bits_v: 2, prod: false, centering: Some(true), rotation: 0, key_offset: Offset::Channels, per_layer: false },
        Case { d: 128, n_kv: 2, group: 4, bits_k: 4, bits_v: 3, prod: true, centering: Some(false), rotation: 0, key_offset: Offset::None, per_layer: false },
        Case { d: 96, n_kv: 2, group: 2, bits_k: 5, bits_v: 4, prod: false, centering: Some(true), rotation: 1, key_offset: Offset::None, per_layer: false },
        Case { d: 64, n_kv: 1, group: 8, bits_k: 2, bits_v: 8, prod: true, centering: Some(true), rotation: 1, key_offset: Offset::None, per_layer: false },
    ];
    for (i, c) in cases.iter().enumerate() {
        for n_q in [1, 17] {
            let (err, _) = run_case(c, n_q, 100 + i as u64);
            assert!(err <= 1e-5, "case {i} n_q={n_q}: relative error {err:e}");
        }
    }
}

#[test]
fn quantization_error_against_exact_attention_shrinks_with_bits() {
    // Error vs attention over the uncompressed K/V (random Gaussian data, d=128): it must fall with
    // bits. The V error alone contributes about √D_mse(b) relative (0.096 at 4 bits, 0.18 at 3) to
    // an output that averages the values; K errors perturb the weights on top. Bound: 3·√D_mse(b).
    let mut errs = Vec::new();
    for (bits, d_mse) in [(4u32, 0.0093f64), (3, 0.0340), (2, 0.1160)] {
        let c = Case { d: 128, n_kv: 2, group: 4, bits_k: bits, bits_v: bits, prod: false, centering: Some(false), rotation: 0, key_offset: Offset::None, per_layer: false };
        let (_, err) = run_case(&c, 16, 7);
        assert!(err < 3.0 * d_mse.sqrt(), "{bits}-bit error vs exact attention {err}");
        errs.push(err);
    }
    assert!(errs[0] < errs[1] && errs[1] < errs[2], "{errs:?}");
}

#[test]
fn centering_removes_a_large_constant_key_component() {
    // Keys with a large shared offset dominate ‖k‖ and so the quantization error; centering must
    // bring the error back to that of offset-free keys.
    let plain = Case { d: 64, n_kv: 2, group: 2, bits_k: 3, bits_v: 3, prod: false, centering: Some(false), rotation: 0, key_offset: Offset::None, per_layer: false };
    let offset = Case { key_offset: Offset::Channels, ..plain };
    let offset_centered = Case { key_offset: Offset::Channels, centering: Some(true), ..plain };
    let (_, e_plain) = run_case(&plain, 8, 11);
    let (_, e_offset) = run_case(&offset, 8, 11);
    let (_, e_centered) = run_case(&offset_centered, 8, 11);
    assert!(e_offset > 2.0 * e_plain, "offset keys without centering: {e_offset} vs plain {e_plain}");
    assert!(e_centered < 1.5 * e_plain, "offset keys with centering: {e_centered} vs plain {e_plain}");
}

#[test]
fn default_params_are_immune_to_a_key_offset_of_30_norms() {
    // A constant added to every key changes no attention output (softmax is shift-invariant per
    // query), so exact attention is the same with and without it. With the DEFAULT parameters the
    // compressed cache must not care either: its error against float64 exact attention with keys
    // offset by a constant of 30× their norm stays within 10% of its error on the plain keys (the
    // centered vectors differ only by f32 rounding of the offset, ~2e-6 of an element). Without
    // centering the same offset multiplies the error (checked, so the test can fail).
    for bits in [4u32, 3] {
        let plain = Case { d: 64, n_kv: 3, group: 3, bits_k: bits, bits_v: bits, prod: false, centering: None, rotation: 0, key_offset: Offset::None, per_layer: false };
        let offset = Case { key_offset: Offset::Norm30, ..plain };
        let (_, e_plain) = run_case(&plain, 8, 21);
        let (codec_err, e_offset) = run_case(&offset, 8, 21);
        assert!(codec_err <= 1e-5, "{bits} bits: attend vs its own dequantized rows {codec_err:e}");
        assert!((e_offset / e_plain - 1.0).abs() <= 0.10, "{bits} bits, default params: offset keys {e_offset} vs plain {e_plain}");
        let (_, e_off_uncentered) = run_case(&Case { centering: Some(false), ..offset }, 8, 21);
        assert!(e_off_uncentered > 3.0 * e_plain, "{bits} bits without centering: {e_off_uncentered} vs plain {e_plain}");
    }
}

#[test]
fn per_layer_bits_match_reference_and_are_validated() {
    // Layer 1 at its own widths (layer 0 and params->bits_* at 8): rows of that layer's size,
    // attention over them equal to the float64 softmax over rows dequantized by math-layer
    // quantizers at those widths (1e-5), error vs exact attention as for a uniform context.
    for (bits_k, bits_v, prod) in [(2u32, 4u32, false), (4, 2, false), (3, 3, true)] {
        let c = Case { d: 64, n_kv: 2, group: 2, bits_k, bits_v, prod, centering: Some(false), rotation: 0, key_offset: Offset::None, per_layer: true };
        let (err, exact_err) = run_case(&c, 5, 31);
        assert!(err <= 1e-5, "K{bits_k}/V{bits_v} prod={prod}: relative error {err:e}");
        let uniform = Case { per_layer: false, ..c };
        let (_, exact_uniform) = run_case(&uniform, 5, 31);
        assert!((exact_err / exact_uniform - 1.0).abs() < 1e-9, "per-layer {exact_err} vs uniform {exact_uniform}");
    }

    let mut p = tq_context_default_params();
    p.n_layers = 3;
    (p.n_heads, p.n_kv_heads, p.head_dim) = (4, 2, 64);
    let bits_k = [2u32, 4, 3];
    let bits_v = [4u32, 2, 8];
    p.layer_bits_k = bits_k.as_ptr();
    p.layer_bits_v = bits_v.as_ptr();
    p.n_layer_bits = 3;
    let ctx = context(&p);
    for l in 0..3 {
        let (mut kr, mut vr) = (0, 0);
        assert_eq!(unsafe { tq_context_layer_row_bytes(ctx.0, l, &mut kr, &mut vr) }, tq_status::TQ_STATUS_OK);
        let kl = RowLayout { n_kv_heads: 2, head_dim: 64, mse_bits: bits_k[l as usize], qjl: false, split: 0 };
        let vl = RowLayout { n_kv_heads: 2, head_dim: 64, mse_bits: bits_v[l as usize], qjl: false, split: 0 };
        assert_eq!((kr, vr), (kl.row_bytes(), vl.row_bytes()), "layer {l}");
    }
    let (mut kr, mut vr) = (0, 0);
    assert_eq!(unsafe { tq_context_layer_row_bytes(ctx.0, 3, &mut kr, &mut vr) }, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("layer is 3"), "{}", last_error());
    assert_eq!(unsafe { tq_context_row_bytes(ctx.0, &mut kr, &mut vr) }, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("tq_context_layer_row_bytes"), "{}", last_error());
    // The owned cache keeps one row size: refused.
    let cp = turboquant::ffi::cache::tq_cache_default_params();
    let mut cache = std::ptr::null_mut();
    assert_eq!(unsafe { turboquant::ffi::cache::tq_cache_new(ctx.0, &cp, &mut cache) }, tq_status::TQ_STATUS_UNSUPPORTED);
    assert!(last_error().contains("per-layer bits"), "{}", last_error());

    // Bad arrays name the argument and the reason.
    let refuse = |p: &tq_context_params, needle: &str| {
        let mut out = std::ptr::null_mut();
        assert_eq!(unsafe { tq_context_new(p, &mut out) }, tq_status::TQ_STATUS_INVALID_ARGUMENT);
        assert!(out.is_null());
        assert!(last_error().contains(needle), "{needle}: {}", last_error());
    };
    refuse(&tq_context_params { n_layer_bits: 2, ..p }, "params->n_layer_bits is 2");
    refuse(&tq_context_params { layer_bits_k: std::ptr::null(), layer_bits_v: std::ptr::null(), ..p }, "params->n_layer_bits is 3 but");
    let bad = [2u32, 9, 3];
    refuse(&tq_context_params { layer_bits_k: bad.as_ptr(), ..p }, "params->layer_bits_k[1] is 9");
    let zero = [4u32, 4, 0];
    refuse(&tq_context_params { layer_bits_v: zero.as_ptr(), ..p }, "params->layer_bits_v[2] is 0");
    let one = [1u32, 4, 4];
    refuse(&tq_context_params { layer_bits_k: one.as_ptr(), key_mode: 1, ..p }, "params->layer_bits_k[0] is 1: must be in 2..=8");
    // One array alone: the other tensor keeps params->bits_*.
    let only_k = context(&tq_context_params { layer_bits_v: std::ptr::null(), ..p });
    let (mut kr, mut vr) = (0, 0);
    assert_eq!(unsafe { tq_context_layer_row_bytes(only_k.0, 2, &mut kr, &mut vr) }, tq_status::TQ_STATUS_OK);
    assert_eq!(vr, RowLayout { n_kv_heads: 2, head_dim: 64, mse_bits: p.bits_v, qjl: false, split: 0 }.row_bytes());
}

#[test]
fn params_of_the_first_release_size_are_accepted_with_new_fields_at_default() {
    // A caller built before the per-layer fields existed passes struct_size = the old size and
    // only that many bytes: the library must read no further and use the defaults for the rest.
    let p = tq_context_default_params();
    assert_eq!(TQ_CONTEXT_PARAMS_SIZE_V1, std::mem::offset_of!(tq_context_params, layer_bits_k));
    let mut old = params_prefix(&p, TQ_CONTEXT_PARAMS_SIZE_V1);
    let mut out = std::ptr::null_mut();
    assert_eq!(unsafe { tq_context_new(old.as_ptr().cast(), &mut out) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    let ctx = Ctx(out);
    assert_eq!(row_bytes(&ctx), (RowLayout { n_kv_heads: 8, head_dim: 128, mse_bits: 4, qjl: false, split: 0 }.row_bytes(), 8 * 66));
    // Any other size is refused.
    old[..std::mem::size_of::<usize>()].copy_from_slice(&(TQ_CONTEXT_PARAMS_SIZE_V1 - 8).to_ne_bytes());
    assert_eq!(unsafe { tq_context_new(old.as_ptr().cast(), &mut out) }, tq_status::TQ_STATUS_ABI_MISMATCH);
    assert!(last_error().contains("struct_size"), "{}", last_error());
}

#[test]
fn half_precision_io_and_strided_tensors_match_f32() {
    // The same data through F16 and BF16 contexts (inputs rounded to the dtype first) and through
    // strided (padded) q/k/v/out tensors must give the f32 result to the output dtype's rounding.
    use half::{bf16, f16};
    let (d, n_kv, group, n, n_q) = (64usize, 2usize, 4usize, 96usize, 3usize);
    let n_heads = n_kv * group;
    let mut rng = Rng::new(77);
    let round_f16 = |x: &[f32]| x.iter().map(|&v| f16::from_f32(v).to_f32()).collect::<Vec<f32>>();
    let round_bf16 = |x: &[f32]| x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect::<Vec<f32>>();
    let (k32, v32, q32) = (rng.normals(n * n_kv * d), rng.normals(n * n_kv * d), rng.normals(n_q * n_heads * d));
    let slots: Vec<i64> = (0..n as i64).collect();
    // `round` gives the inputs exactly representable in the dtype under test, so that the codes are
    // the same as on the f32 path and only the output rounding differs.
    let run = |dtype: u32, pad: usize, round: &dyn Fn(&[f32]) -> Vec<f32>| -> Vec<f32> {
        let (k, v, q) = (round(&k32), round(&v32), round(&q32));
        let mut p = tq_context_default_params();
        p.n_heads = n_heads as u32;
        p.n_kv_heads = n_kv as u32;
        p.head_dim = d as u32;
        p.dtype = dtype;
        p.seed = 3;
        let ctx = context(&p);
        let (kr, vr) = row_bytes(&ctx);
        let esize = if dtype == 0 { 4 } else { 2 };
        // Lay a [tokens][heads][d] tensor out with `pad` spare elements after every head and token.
        let lay = |x: &[f32], heads: usize, tokens: usize| -> (Vec<u8>, tq_strides) {
            let head_stride = (d + pad) * esize;
            let token_stride = heads * head_stride + pad * esize;
            let mut buf = vec![0u8; tokens * token_stride];
            for t in 0..tokens {
                for h in 0..heads {
                    for i in 0..d {
                        let val = x[(t * heads + h) * d + i];
                        let at = t * token_stride + h * head_stride + i * esize;
                        match dtype {
                            0 => buf[at..at + 4].copy_from_slice(&val.to_le_bytes()),
                            1 => buf[at..at + 2].copy_from_slice(&f16::from_f32(val).to_bits().to_le_bytes()),
                            _ => buf[at..at + 2].copy_from_slice(&bf16::from_f32(val).to_bits().to_le_bytes()),
                        }
                    }
                }
            }
            (buf, tq_strides { token: token_stride, head: head_stride })
        };
        let (kb, ks) = lay(&k, n_kv, n);
        let (vb, vs) = lay(&v, n_kv, n);
        let (qb, qs) = lay(&q, n_heads, n_q);
        let (mut ob, os) = lay(&vec![0.0; n_q * n_heads * d], n_heads, n_q);
        let (mut kst, mut vst) = (vec![0u8; n * kr], vec![0u8; n * vr]);
        unsafe {
            assert_eq!(tq_append_kv(ctx.0, 0, kst.as_mut_ptr().cast(), vst.as_mut_ptr().cast(), n, slots.as_ptr(), n,
                kb.as_ptr().cast(), &ks, vb.as_ptr().cast(), &vs, std::ptr::null_mut()), tq_status::TQ_STATUS_OK, "{}", last_error());
            assert_eq!(tq_attend(ctx.0, 0, qb.as_ptr().cast(), n_q, &qs, kst.as_ptr().cast(), vst.as_ptr().cast(), n,
                std::ptr::null(), 0, 0, 0.125, ob.as_mut_ptr().cast(), &os, std::ptr::null_mut()), tq_status::TQ_STATUS_OK, "{}", last_error());
        }
        let mut out = Vec::new();
        for t in 0..n_q {
            for h in 0..n_heads {
                for i in 0..d {
                    let at = t * os.token + h * os.head + i * esize;
                    out.push(match dtype {
                        0 => f32::from_le_bytes(ob[at..at + 4].try_into().unwrap()),
                        1 => f16::from_bits(u16::from_le_bytes([ob[at], ob[at + 1]])).to_f32(),
                        _ => bf16::from_bits(u16::from_le_bytes([ob[at], ob[at + 1]])).to_f32(),
                    });
                }
            }
        }
        out
    };
    let as64 = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let reference = run(0, 0, &round_f16);
    assert_eq!(run(0, 5, &round_f16), reference, "strided f32 tensors must give identical results");
    // Same codes; the output is rounded to f16 (2^-11 relative per element).
    let e16 = max_row_rel_error(&run(1, 3, &round_f16), &as64(&reference), d);
    assert!(e16 < 1e-3, "F16 I/O: {e16:e}");
    // Same codes; the output is rounded to bf16 (2^-8 relative per element).
    let ebf = max_row_rel_error(&run(2, 0, &round_bf16), &as64(&run(0, 0, &round_bf16)), d);
    assert!(ebf < 5e-3, "BF16 I/O: {ebf:e}");
}

/// Prefill as an engine runs it: one sequence in cells 0..depth + n_q (plus `pad` never-written,
/// hidden cells, as llama.cpp pads its cache view), n_q query tokens at positions depth.., causal.
/// The tiled path then sees blocks that are all visible (before the depth), mixed (the diagonal)
/// and all hidden (past the last query and the padding), full tiles of 16 query tokens and a partial
/// one. Returns the error against the float64 reference over the dequantized rows.
#[allow(clippy::too_many_arguments)]
fn run_prefill(d: usize, n_kv: usize, group: usize, bits: (u32, u32), centering: bool, depth: usize, n_q: usize, f16_mask: bool, seed: u64) -> f64 {
    let n_heads = n_kv * group;
    let (pad, n) = (40usize, depth + n_q);
    let n_cells = n + pad;
    let mut p = tq_context_default_params();
    p.n_heads = n_heads as u32;
    p.n_kv_heads = n_kv as u32;
    p.head_dim = d as u32;
    p.bits_k = bits.0;
    p.bits_v = bits.1;
    p.centering = centering;
    p.seed = seed;
    p.n_threads = 2;
    let ctx = context(&p);
    let (kr, vr) = row_bytes(&ctx);
    let mut rng = Rng::new(seed);
    let (k, v) = (rng.normals(n * n_kv * d), rng.normals(n * n_kv * d));
    // 3·q gives peaked softmax rows, so that the running maximum moves between blocks.
    let q: Vec<f32> = rng.normals(n_q * n_heads * d).iter().map(|x| 3.0 * x).collect();
    // The padding cells hold bytes no append wrote (0xff: scales that decode to NaN if ever read).
    let (mut k_store, mut v_store) = (vec![0xffu8; n_cells * kr], vec![0xffu8; n_cells * vr]);
    let slots: Vec<i64> = (0..n as i64).collect();
    let st = unsafe {
        tq_append_kv(ctx.0, 0, k_store.as_mut_ptr().cast(), v_store.as_mut_ptr().cast(), n_cells, slots.as_ptr(), n,
            k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mask: Vec<f64> =
        (0..n_q).flat_map(|t| (0..n_cells).map(move |j| if j <= depth + t { 0.0 } else { f64::NEG_INFINITY })).collect();
    let mask32: Vec<f32> = mask.iter().map(|&x| x as f32).collect();
    let mask16: Vec<u16> = mask32.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
    let (mask_ptr, mask_dtype) = if f16_mask { (mask16.as_ptr().cast(), 1) } else { (mask32.as_ptr().cast(), 0) };
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; n_q * n_heads * d];
    let st = unsafe {
        tq_attend(ctx.0, 0, q.as_ptr().cast(), n_q, std::ptr::null(), k_store.as_ptr().cast(), v_store.as_ptr().cast(), n_cells,
            mask_ptr, mask_dtype, n_cells, scale, out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());

    let rotation = RotationKind::auto(d);
    let key = Quantizer::new_indexed(QuantizerConfig { dim: d, bits: bits.0, rotation, kind: QuantizerKind::Mse, seed }, 0, 0).unwrap();
    let value = MseQuantizer::new(d, bits.1, rotation, seed, 1).unwrap();
    let k_layout = RowLayout { n_kv_heads: n_kv, head_dim: d, mse_bits: bits.0, qjl: false, split: 0 };
    let v_layout = RowLayout { n_kv_heads: n_kv, head_dim: d, mse_bits: bits.1, qjl: false, split: 0 };
    // Key centering means: rows 1..n of the first (and only) append (row 0, the engine's BOS / sink
    // row, is left out), in f64; values are not centered by default.
    let mk = key_means(&k, n, n_kv * d);
    let kd = dequant_rows(&k_store[..n * kr], &k_layout, n, Some(&key), None, centering.then_some(mk.as_slice()));
    let vd = dequant_rows(&v_store[..n * vr], &v_layout, n, None, Some(&value), None);
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let mask_n: Vec<f64> = (0..n_q).flat_map(|t| mask[t * n_cells..t * n_cells + n].to_vec()).collect();
    let reference = reference_attention(&q64, &kd, &vd, &mask_n, n_q, n, n_heads, n_kv, d, scale as f64);
    max_row_rel_error(&out, &reference, d)
}

/// The tiled multi-query path (16 query tokens × the group's heads per tile) against the float64
/// reference, ≤ 1e-5 relative: the llama.cpp SmolLM2 shape (3 kv heads, group 3, d 64), one vector
/// of lanes (group 1), two lane chunks (group 8, d 128: 128 lanes), a head size that is no multiple
/// of 16 (DENSE rotation is auto for d 96), 3-bit K / 2-bit V, centering, f16 and f32 masks.
#[test]
fn prefill_tiles_match_float64_reference() {
    let cases = [
        (64, 3, 3, (4, 4), false, 300, 40, true),
        (64, 3, 3, (4, 4), true, 300, 40, false),
        (64, 2, 1, (4, 3), false, 100, 33, true),
        (128, 1, 8, (4, 4), false, 200, 20, true),
        (96, 2, 2, (3, 2), true, 150, 17, false),
        (256, 1, 4, (4, 4), false, 64, 16, true),
    ];
    check_tile_cases(&cases, 300);
}

/// Decode-sized tiles (1 to 3 query tokens, fewer than 16 lanes: the row-by-row path, which reads
/// the codes straight from the rows) against the float64 reference, ≤ 1e-5 relative: SmolLM2's
/// shape, 4-bit codes read in place and codes of 2, 3 and 5 to 8 bits unpacked per block, groups of 2 to
/// 7 heads (15 lanes: a register block of 8 and one of 7), centering, f16 and f32 masks with hidden
/// cells, padding cells of 0xff bytes, and depths long enough for split-K over the call's 2 threads.
#[test]
fn decode_tiles_match_float64_reference() {
    let cases = [
        (64, 3, 3, (4, 4), true, 300, 1, true),
        (64, 3, 3, (4, 4), false, 1500, 1, true),
        (128, 2, 4, (3, 2), false, 200, 2, false),
        (64, 1, 7, (2, 4), true, 700, 1, true),
        (64, 1, 5, (4, 4), false, 100, 3, true),
        (96, 2, 2, (4, 3), true, 150, 1, false),
        (64, 3, 3, (5, 3), true, 600, 1, true),
        (128, 2, 4, (6, 4), false, 300, 2, true),
        (64, 1, 7, (8, 8), true, 200, 1, false),
        (64, 2, 2, (5, 5), false, 900, 1, true),
        (64, 1, 3, (7, 2), true, 100, 2, true),
    ];
    check_tile_cases(&cases, 400);
}

/// (head_dim, n_kv, group, (bits_k, bits_v), centering, depth, n_q, f16 mask) cases through `run_prefill`
/// (seeds `seed0 + i`), each ≤ 1e-5 relative against the float64 reference.
type TileCase = (usize, usize, usize, (u32, u32), bool, usize, usize, bool);
fn check_tile_cases(cases: &[TileCase], seed0: u64) {
    for (i, &(d, n_kv, group, bits, centering, depth, n_q, f16_mask)) in cases.iter().enumerate() {
        let err = run_prefill(d, n_kv, group, bits, centering, depth, n_q, f16_mask, seed0 + i as u64);
        assert!(err <= 1e-5, "case {i} (d {d}, n_kv {n_kv}, group {group}, bits {bits:?}, n_q {n_q}): relative error {err:e}");
    }
}

/// The decode cases through the portable kernels (the row-by-row path that unpacks each row into
/// floats), as for the prefill tiles.
#[test]
fn decode_tiles_match_float64_reference_portable() {
    rerun_portable("decode_tiles_match_float64_reference");
}

/// The same cases through the portable kernels: the test binary runs that test again with
/// TQ_DISABLE_SIMD=1 (read once per process), which turns off every explicit AVX-512 kernel of CPU
/// attention; both paths must meet the same float64 bound, so they agree to 2e-5.
#[test]
fn prefill_tiles_match_float64_reference_portable() {
    rerun_portable("prefill_tiles_match_float64_reference");
}

/// Run test `name` of this binary again with TQ_DISABLE_SIMD=1 (read once per process: every explicit
/// kernel of CPU attention off) and require it to pass.
fn rerun_portable(name: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--test-threads", "1"])
        .env("TQ_DISABLE_SIMD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("1 passed"), "portable run of {name} failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
}
