//! tq_dequantize_rows / tq_dequantize_rows_part on the CPU backend: the rows against the math
//! layer's own decoding (`common::dequant_rows`, means recomputed here), every output dtype and
//! strided outputs; that softmax attention in float64 over the rows it returns is what tq_attend
//! computes (MSE, PROD and split keys); the threaded, per-share and single-thread forms agree; and
//! bad arguments are refused naming the argument.

mod common;

use common::*;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;

/// Rows of layer 1 of a `Setup` through tq_dequantize_rows as f32 (packed) and as `dtype` under
/// strides with padding, both compared with the float64 rows: f32 to 1e-5 of the row's largest
/// element, f16 / bf16 to their rounding (2^-11 / 2^-8 relative, plus the f32 part).
#[test]
fn dequantized_rows_match_the_math_layer() {
    let cases = [
        (64, 3, 3, 4, true, false, Rows::Offset),
        (128, 2, 4, 3, true, true, Rows::Offset),
        (96, 2, 2, 2, false, false, Rows::Normal),
        (64, 1, 2, 8, true, false, Rows::Offset),
        (32, 4, 1, 5, true, true, Rows::Normal),
    ];
    for (case, &(d, n_kv, group, bits, centering, center_values, rows)) in cases.iter().enumerate() {
        let s = setup(d, n_kv, group, bits, centering, center_values, rows, 77, 900 + case as u64);
        for (part, want) in [(tq_kv_part::TQ_KV_KEYS, &s.kd), (tq_kv_part::TQ_KV_VALUES, &s.vd)] {
            let store = if part == tq_kv_part::TQ_KV_KEYS { &s.k_store } else { &s.v_store };
            let mut out = vec![f32::NAN; s.n_cells * s.n_kv * d];
            let st = unsafe {
                tq_dequantize_rows(s.ctx.0, 1, part as u32, store.as_ptr().cast(), s.n_cells, out.as_mut_ptr().cast(),
                    tq_dtype::TQ_DTYPE_F32 as u32, std::ptr::null(), std::ptr::null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
            for row in 0..s.n_cells * s.n_kv {
                let w = &want[row * d..(row + 1) * d];
                let top = w.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                for i in 0..d {
                    let err = (out[row * d + i] as f64 - w[i]).abs();
                    assert!(err <= 1e-5 * top, "case {case} {part:?} row {row} element {i}: {} vs {}", out[row * d + i], w[i]);
                }
            }
            // Half-precision outputs: head stride d + 8 elements, token stride n_kv·(d + 8) + 4.
            for (dtype, rel) in [(tq_dtype::TQ_DTYPE_F16, 1.0 / 2048.0), (tq_dtype::TQ_DTYPE_BF16, 1.0 / 256.0)] {
                let (hs, ts) = (d + 8, n_kv * (d + 8) + 4);
                let mut half = vec![0xffffu16; s.n_cells * ts];
                let strides = tq_strides { token: 2 * ts, head: 2 * hs };
                let st = unsafe {
                    tq_dequantize_rows(s.ctx.0, 1, part as u32, store.as_ptr().cast(), s.n_cells, half.as_mut_ptr().cast(), dtype as u32,
                        &strides, std::ptr::null_mut())
                };
                assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                for j in 0..s.n_cells {
                    for g in 0..n_kv {
                        let w = &want[(j * n_kv + g) * d..(j * n_kv + g + 1) * d];
                        let top = w.iter().fold(0.0f64, |a, x| a.max(x.abs()));
                        for i in 0..d {
                            let bits = half[j * ts + g * hs + i];
                            let got = if dtype == tq_dtype::TQ_DTYPE_F16 {
                                half::f16::from_bits(bits).to_f64()
                            } else {
                                half::bf16::from_bits(bits).to_f64()
                            };
                            assert!((got - w[i]).abs() <= rel * w[i].abs() + 1e-5 * top, "case {case} {part:?} {dtype:?} ({j}, {g}, {i}): {got} vs {}", w[i]);
                        }
                        // The padding between heads is not written.
                        assert!(half[j * ts + g * hs + d..j * ts + g * hs + hs].iter().all(|&b| b == 0xffff), "padding written");
                    }
                }
            }
        }
    }
}

/// One layer of `n` random rows (keys offset so that centering matters) appended on a context of
/// `p`, then: tq_attend of n_q queries against float64 attention over the rows tq_dequantize_rows
/// returns (≤ 1e-5 relative per output row); the rows from one thread, from tq_dequantize_rows_part
/// in 3 shares and from the threaded call are identical.
fn attend_matches_dequantized(p: &tq_context_params, n: usize, n_q: usize, seed: u64) {
    let ctx = context(p);
    let (kr, vr) = row_bytes(&ctx);
    let (nh, nkv, d) = (p.n_heads as usize, p.n_kv_heads as usize, p.head_dim as usize);
    let mut rng = Rng::new(seed);
    let k: Vec<f32> = rng.normals(n * nkv * d).iter().enumerate().map(|(i, x)| x + 3.0 * ((i % d) % 5) as f32).collect();
    let v = rng.normals(n * nkv * d);
    let q: Vec<f32> = rng.normals(n_q * nh * d).iter().map(|x| 2.0 * x).collect();
    let (mut ks, mut vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
    let slots: Vec<i64> = (0..n as i64).collect();
    let st = unsafe {
        tq_append_kv(ctx.0, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n, k.as_ptr().cast(),
            std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; n_q * nh * d];
    let st = unsafe {
        tq_attend(ctx.0, 0, q.as_ptr().cast(), n_q, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), n, std::ptr::null(), 0, 0,
            scale, out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let rows = |part: tq_kv_part, store: &[u8], shares: Option<u32>| -> Vec<f32> {
        let mut o = vec![f32::NAN; n * nkv * d];
        let st = match shares {
            None => unsafe {
                tq_dequantize_rows(ctx.0, 0, part as u32, store.as_ptr().cast(), n, o.as_mut_ptr().cast(), 0, std::ptr::null(),
                    std::ptr::null_mut())
            },
            Some(nth) => (0..nth)
                .map(|ith| unsafe {
                    tq_dequantize_rows_part(ctx.0, 0, part as u32, store.as_ptr().cast(), n, o.as_mut_ptr().cast(), 0,
                        std::ptr::null(), ith, nth)
                })
                .find(|&st| st != tq_status::TQ_STATUS_OK)
                .unwrap_or(tq_status::TQ_STATUS_OK),
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        o
    };
    let kd = rows(tq_kv_part::TQ_KV_KEYS, &ks, None);
    let vd = rows(tq_kv_part::TQ_KV_VALUES, &vs, None);
    for nth in [1, 3] {
        assert_eq!(rows(tq_kv_part::TQ_KV_KEYS, &ks, Some(nth)).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            kd.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "K rows of {nth} shares differ");
        assert_eq!(rows(tq_kv_part::TQ_KV_VALUES, &vs, Some(nth)).iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            vd.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), "V rows of {nth} shares differ");
    }
    let f64s = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let mask = vec![0.0f64; n_q * n];
    let reference = reference_attention(&f64s(&q), &f64s(&kd), &f64s(&vd), &mask, n_q, n, nh, nkv, d, scale as f64);
    let err = max_row_rel_error(&out, &reference, d);
    assert!(err <= 1e-5, "tq_attend vs attention over the dequantized rows: relative error {err:e}");
}

#[test]
fn attention_over_dequantized_rows_is_tq_attend() {
    let base = tq_context_params { n_layers: 1, n_heads: 8, n_kv_heads: 2, head_dim: 64, n_threads: 2, ..tq_context_default_params() };
    // MSE keys with centering (default), 1 and 20 queries (row-by-row and tiled paths).
    attend_matches_dequantized(&base, 300, 1, 1);
    attend_matches_dequantized(&base, 300, 20, 2);
    // 3-bit keys, 2-bit values, V centering, a dense rotation (head_dim 96).
    attend_matches_dequantized(&tq_context_params { head_dim: 96, bits_k: 3, bits_v: 2, center_values: true, ..base }, 200, 3, 3);
    // PROD keys (MSE at 3 bits plus the QJL sketch).
    attend_matches_dequantized(&tq_context_params { key_mode: tq_key_mode::TQ_KEY_MODE_PROD as u32, ..base }, 250, 2, 4);
    // Split key rows: 16 outlier channels per head at 5 bits, the rest at 4.
    attend_matches_dequantized(&tq_context_params { key_outliers: 16, ..base }, 250, 2, 5);
}

/// Split key rows decode through the layer's channel order, which its first append chooses: before
/// that the keys are refused naming the reason (threaded and per share), while the values decode.
#[test]
fn split_keys_before_the_first_append_are_refused() {
    let p = tq_context_params { n_layers: 1, n_heads: 4, n_kv_heads: 2, head_dim: 64, key_outliers: 16, ..tq_context_default_params() };
    let ctx = context(&p);
    let (kr, vr) = row_bytes(&ctx);
    let n = 5;
    let (ks, vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
    let mut out = vec![f32::NAN; n * 2 * 64];
    let st = unsafe {
        tq_dequantize_rows(ctx.0, 0, tq_kv_part::TQ_KV_KEYS as u32, ks.as_ptr().cast(), n, out.as_mut_ptr().cast(), 0, std::ptr::null(),
            std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("key_outliers") && last_error().contains("channel order"), "{}", last_error());
    assert!(out.iter().all(|x| x.is_nan()), "a refused call wrote its output");
    let st = unsafe {
        tq_dequantize_rows_part(ctx.0, 0, tq_kv_part::TQ_KV_KEYS as u32, ks.as_ptr().cast(), n, out.as_mut_ptr().cast(), 0, std::ptr::null(), 0, 2)
    };
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    // Zeroed value rows decode to zero vectors (scale 0; no means before the first append).
    let st = unsafe {
        tq_dequantize_rows(ctx.0, 0, tq_kv_part::TQ_KV_VALUES as u32, vs.as_ptr().cast(), n, out.as_mut_ptr().cast(), 0, std::ptr::null(),
            std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert!(out.iter().all(|&x| x == 0.0), "zeroed value rows decode to 0");
}

#[test]
fn bad_arguments_are_refused_naming_them() {
    let s = setup(64, 2, 2, 4, true, false, Rows::Normal, 10, 7);
    let mut out = vec![0.0f32; 10 * 2 * 64];
    let call = |layer: u32, part: u32, store: *const u8, n: usize, out: *mut f32, dtype: u32, strides: *const tq_strides| unsafe {
        tq_dequantize_rows(s.ctx.0, layer, part, store.cast(), n, out.cast(), dtype, strides, std::ptr::null_mut())
    };
    let o = out.as_mut_ptr();
    let odd = tq_strides { token: 3, head: 256 };
    let cases: [(u32, u32, *const u8, *mut f32, u32, *const tq_strides, &str, tq_status); 6] = [
        (1, 2, s.k_store.as_ptr(), o, 0, std::ptr::null(), "part is 2", tq_status::TQ_STATUS_INVALID_ARGUMENT),
        (2, 0, s.k_store.as_ptr(), o, 0, std::ptr::null(), "layer is 2", tq_status::TQ_STATUS_INVALID_ARGUMENT),
        (1, 0, std::ptr::null(), o, 0, std::ptr::null(), "store", tq_status::TQ_STATUS_NULL_POINTER),
        (1, 1, s.v_store.as_ptr(), std::ptr::null_mut(), 0, std::ptr::null(), "out", tq_status::TQ_STATUS_NULL_POINTER),
        (1, 0, s.k_store.as_ptr(), o, 9, std::ptr::null(), "out_dtype", tq_status::TQ_STATUS_INVALID_ARGUMENT),
        (1, 0, s.k_store.as_ptr(), o, 0, &odd, "out_strides", tq_status::TQ_STATUS_INVALID_ARGUMENT),
    ];
    for (i, (layer, part, store, out, dtype, strides, what, want)) in cases.into_iter().enumerate() {
        let st = call(layer, part, store, 10, out, dtype, strides);
        assert_eq!(st, want, "case {i}: {}", last_error());
        assert!(last_error().contains(what), "case {i}: '{}' does not name {what}", last_error());
    }
    // No cells: nothing is read or written, whatever the pointers.
    assert_eq!(call(1, 0, std::ptr::null(), 0, std::ptr::null_mut(), 0, std::ptr::null()), tq_status::TQ_STATUS_OK);
    // A share out of range.
    let st = unsafe { tq_dequantize_rows_part(s.ctx.0, 1, 0, s.k_store.as_ptr().cast(), 10, o.cast(), 0, std::ptr::null(), 2, 2) };
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("ith"), "{}", last_error());
    // A NULL context.
    let st = unsafe { tq_dequantize_rows(std::ptr::null(), 0, 0, s.k_store.as_ptr().cast(), 10, o.cast(), 0, std::ptr::null(), std::ptr::null_mut()) };
    assert_eq!(st, tq_status::TQ_STATUS_NULL_POINTER);
}
