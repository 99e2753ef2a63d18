//! tq_attend_ext / tq_attend_part_ext with full-precision rows standing for cells (an engine's residual
//! window and sinks kept exact, `tq_attend_options.full_of_cell`): against a float64 softmax over the
//! dequantized rows in which those cells' rows are replaced by the full-precision ones (float32
//! rounding is the only difference allowed), on the row-by-row, tiled and split-K paths, with and
//! without a mask; plus the checks of the new options fields.

mod common;

use common::*;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;

const F32: u32 = 0;
const F16: u32 = 1;

/// The call: tq_attend_ext (nth = 0) or tq_attend_part_ext over `nth` shares; `mask` None = no mask.
fn attend(s: &Setup, q: &[f32], n_q: usize, mask: Option<&[f32]>, scale: f32, o: &tq_attend_options, nth: u32) -> (tq_status, Vec<f32>) {
    let mut out = vec![f32::NAN; n_q * s.n_heads * s.d];
    let m = mask.map_or(std::ptr::null(), |m| m.as_ptr().cast());
    let mut st = tq_status::TQ_STATUS_OK;
    if nth == 0 {
        st = unsafe {
            tq_attend_ext(s.ctx.0, 1, q.as_ptr().cast(), n_q, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
                s.n_cells, m, 0, s.n_cells, scale, o, out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
        };
    } else {
        for ith in 0..nth {
            let r = unsafe {
                tq_attend_part_ext(s.ctx.0, 1, q.as_ptr().cast(), n_q, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
                    s.n_cells, m, 0, s.n_cells, scale, o, out.as_mut_ptr().cast(), std::ptr::null(), ith, nth)
            };
            if r != tq_status::TQ_STATUS_OK {
                st = r;
            }
        }
    }
    (st, out)
}

/// Full-precision rows in `dtype` (F32 or F16) with `pad` spare bytes per row, and their float64 values
/// (the f16 rounding applied).
fn full_rows(rng: &mut Rng, n: usize, width: usize, dtype: u32, pad: usize, offset: f32) -> (Vec<u8>, Vec<f64>, usize) {
    let vals: Vec<f32> = rng.normals(n * width).iter().map(|x| x * 1.5 + offset).collect();
    let size = if dtype == F16 { 2 } else { 4 };
    let stride = width * size + pad;
    let mut bytes = vec![0xffu8; n * stride]; // padding bytes are NaN patterns: they must not be read
    let mut exact = vec![0.0f64; n * width];
    for r in 0..n {
        for i in 0..width {
            let x = vals[r * width + i];
            let at = r * stride + i * size;
            if dtype == F16 {
                let h = half::f16::from_f32(x);
                bytes[at..at + 2].copy_from_slice(&h.to_bits().to_le_bytes());
                exact[r * width + i] = h.to_f64();
            } else {
                bytes[at..at + 4].copy_from_slice(&x.to_le_bytes());
                exact[r * width + i] = x as f64;
            }
        }
    }
    (bytes, exact, stride)
}

#[test]
fn full_rows_replace_their_cells_exactly() {
    let mut seed = 40;
    // (d, n_kv, group, n_cells, n_q): decode (row-by-row path, split-K with 3 shares from 600 cells)
    // and a prefill tile (the tiled path for 12 lanes and more)
    for (d, n_kv, group, n_cells, n_q) in [(64usize, 1usize, 3usize, 600usize, 1usize), (64, 2, 3, 150, 12), (128, 1, 4, 700, 5), (128, 2, 2, 160, 16)] {
        for centering in [false, true] {
            for dtype in [F32, F16] {
                seed += 1;
                let s = setup(d, n_kv, group, 3, centering, centering, Rows::Offset, n_cells, seed);
                let mut rng = Rng::new(seed * 17);
                let width = n_kv * d;
                // cells with a full-precision row: 4 sinks, a window of the last 48, and a few scattered;
                // rows in a different order than the cells, some rows unused (NaN: never read)
                let mut cells: Vec<usize> = (0..4).chain(n_cells - 48..n_cells).chain([17, 33, n_cells / 2]).collect();
                cells.sort_unstable();
                cells.dedup();
                let n_full = cells.len() + 5;
                let (mut fk, fk64, stride) = full_rows(&mut rng, n_full, width, dtype, 6, 0.0);
                let (mut fv, fv64, _) = full_rows(&mut rng, n_full, width, dtype, 6, 0.5);
                let mut of_cell = vec![-1i32; n_cells];
                for (i, &j) in cells.iter().enumerate() {
                    of_cell[j] = (n_full - 1 - i) as i32;
                }
                // unused rows 0..5 hold NaN: never read
                let nan: Vec<u8> = if dtype == F16 { half::f16::NAN.to_bits().to_le_bytes().to_vec() } else { f32::NAN.to_le_bytes().to_vec() };
                for b in [&mut fk, &mut fv] {
                    for (i, x) in b[..5 * stride].iter_mut().enumerate() {
                        *x = nan[i % nan.len()];
                    }
                }
                // the reference rows: dequantized, with the full-precision cells replaced
                let (mut kr, mut vr) = (s.kd.clone(), s.vd.clone());
                for (j, &r) in of_cell.iter().enumerate() {
                    if r >= 0 {
                        let r = r as usize;
                        kr[j * width..(j + 1) * width].copy_from_slice(&fk64[r * width..(r + 1) * width]);
                        vr[j * width..(j + 1) * width].copy_from_slice(&fv64[r * width..(r + 1) * width]);
                    }
                }
                let q: Vec<f32> = rng.normals(n_q * s.n_heads * d).iter().map(|x| x * 2.0).collect();
                let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
                let scale = 1.0 / (d as f32).sqrt();
                // mask: query t sees cells 0..=last(t) (the last query all of them); a hidden sink for
                // query 0 shows that a full row takes its cell's mask
                let mut mask = vec![0.0f32; n_q * n_cells];
                for t in 0..n_q {
                    let last = n_cells - 1 - (n_q - 1 - t) * 3;
                    for j in last + 1..n_cells {
                        mask[t * n_cells + j] = f32::NEG_INFINITY;
                    }
                    if t % 2 == 1 {
                        mask[t * n_cells + 5] = -0.75; // a non-zero additive value on a compressed cell
                        mask[t * n_cells + 2] = 0.5; // and on a full-precision one
                    }
                }
                mask[1] = f32::NEG_INFINITY;
                let m64: Vec<f64> = mask.iter().map(|&x| x as f64).collect();
                let ones = vec![0.0f64; n_q * n_cells];
                let mut o = tq_attend_default_options();
                o.full_of_cell = of_cell.as_ptr();
                (o.full_k, o.full_v) = (fk.as_ptr().cast(), fv.as_ptr().cast());
                o.n_full = n_full;
                o.full_row_stride = stride;
                o.full_dtype = dtype;
                let plain = reference_attention(&q64, &s.kd, &s.vd, &m64, n_q, n_cells, s.n_heads, n_kv, d, scale as f64);
                for (mask_arg, m) in [(Some(&mask[..]), &m64), (None, &ones)] {
                    let want = reference_attention(&q64, &kr, &vr, m, n_q, n_cells, s.n_heads, n_kv, d, scale as f64);
                    if mask_arg.is_some() {
                        // the full rows must matter here, or agreement would prove nothing
                        let moved = max_row_rel_error(&want.iter().map(|&x| x as f32).collect::<Vec<_>>(), &plain, d);
                        assert!(moved > 5e-2, "d={d}: the full rows moved the reference only {moved:e}");
                    }
                    for nth in [0u32, 1, 3] {
                        let (st, got) = attend(&s, &q, n_q, mask_arg, scale, &o, nth);
                        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                        let err = max_row_rel_error(&got, &want, d);
                        assert!(
                            err <= 1e-5,
                            "d={d} n_kv={n_kv} n_q={n_q} cells={n_cells} centering={centering} dtype={dtype} mask={} nth={nth}: error {err:e}",
                            mask_arg.is_some()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn no_full_row_named_is_plain_attention() {
    // full_of_cell all -1: bit for bit tq_attend (the rows are never read: NULL k/v with n_full 0)
    let s = setup(64, 1, 2, 4, true, false, Rows::Normal, 300, 8);
    let n_q = 3;
    let q = Rng::new(3).normals(n_q * s.n_heads * s.d);
    let mask = vec![0.0f32; n_q * s.n_cells];
    let of_cell = vec![-1i32; s.n_cells];
    let mut o = tq_attend_default_options();
    o.full_of_cell = of_cell.as_ptr();
    let plain = attend(&s, &q, n_q, Some(&mask), 0.125, &tq_attend_default_options(), 0);
    assert_eq!(plain.0, tq_status::TQ_STATUS_OK);
    for nth in [0u32, 2] {
        let (st, got) = attend(&s, &q, n_q, Some(&mask), 0.125, &o, nth);
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        assert_eq!(got, plain.1, "nth={nth}");
    }
}

#[test]
fn full_row_options_are_checked() {
    let s = setup(64, 1, 2, 4, false, false, Rows::Normal, 20, 5);
    let n_q = 2;
    let q = Rng::new(9).normals(n_q * s.n_heads * s.d);
    let mask = vec![0.0f32; n_q * s.n_cells];
    let width = s.n_kv * s.d;
    let mut rows = vec![0.25f32; 3 * width];
    rows[2 * width + 7] = f32::NAN; // row 2 holds a NaN: fine unless a cell names it
    let mut of_cell = vec![-1i32; s.n_cells];
    of_cell[4] = 1;
    let base = || {
        let mut o = tq_attend_default_options();
        o.full_of_cell = of_cell.as_ptr();
        (o.full_k, o.full_v) = (rows.as_ptr().cast(), rows.as_ptr().cast());
        o.n_full = 3;
        o.full_row_stride = width * 4;
        o
    };
    let expect = |o: &tq_attend_options, st_want: tq_status, msg: &str| {
        for nth in [0u32, 1] {
            let (st, _) = attend(&s, &q, n_q, Some(&mask), 0.125, o, nth);
            assert_eq!(st, st_want, "nth={nth}: {}", last_error());
            let e = last_error();
            assert!(e.contains(msg), "nth={nth}: message '{e}' does not say '{msg}'");
        }
    };
    assert_eq!(attend(&s, &q, n_q, Some(&mask), 0.125, &base(), 0).0, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mut o = base();
    o.full_row_stride = width * 4 - 1;
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->full_row_stride is 255");
    let mut o = base();
    o.full_k = std::ptr::null();
    expect(&o, tq_status::TQ_STATUS_NULL_POINTER, "options->full_k");
    let mut o = base();
    o.full_dtype = 9;
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->full_dtype");
    let mut bad = of_cell.clone();
    bad[7] = 3;
    let mut o = base();
    o.full_of_cell = bad.as_ptr();
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->full_of_cell[7] is 3");
    bad[7] = -2;
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->full_of_cell[7] is -2");
    bad[7] = 2;
    expect(&o, tq_status::TQ_STATUS_NON_FINITE, "options->full_k row 2 (cell 7), element 7 is NaN");
    // an options struct from before the full-precision fields is still accepted (as none)
    let mut o = base();
    o.struct_size = std::mem::offset_of!(tq_attend_options, full_of_cell);
    o.full_of_cell = 8 as *const i32; // beyond the declared size: never read
    let old = attend(&s, &q, n_q, Some(&mask), 0.125, &o, 0);
    assert_eq!(old.0, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert_eq!(old.1, attend(&s, &q, n_q, Some(&mask), 0.125, &tq_attend_default_options(), 0).1);
}

/// Attention where query t attends cell j through full row r = of_cell[j] unless fm(t, r) is −inf (then
/// the dequantized row), adding fm(t, r) to the score; float64.
#[allow(clippy::too_many_arguments)]
fn reference_per_query(s: &Setup, q: &[f64], mask: &[f32], n_q: usize, of_cell: &[i32], fk: &[f64], fv: &[f64], fm: &[f32], fm_stride: usize, scale: f64) -> Vec<f64> {
    let (d, n_kv, n_heads, n_cells) = (s.d, s.n_kv, s.n_heads, s.n_cells);
    let group = n_heads / n_kv;
    let mut out = vec![0.0; n_q * n_heads * d];
    for t in 0..n_q {
        for h in 0..n_heads {
            let g = h / group;
            let qv = &q[(t * n_heads + h) * d..(t * n_heads + h + 1) * d];
            let rows: Vec<(&[f64], &[f64], f64)> = (0..n_cells)
                .map(|j| {
                    let r = of_cell[j];
                    let extra = if r >= 0 { fm[t * fm_stride + r as usize] as f64 } else { f64::NEG_INFINITY };
                    if r >= 0 && extra != f64::NEG_INFINITY {
                        let o = (r as usize * n_kv + g) * d;
                        (&fk[o..o + d], &fv[o..o + d], extra)
                    } else {
                        let o = (j * n_kv + g) * d;
                        (&s.kd[o..o + d], &s.vd[o..o + d], 0.0)
                    }
                })
                .collect();
            let scores: Vec<f64> = rows
                .iter()
                .enumerate()
                .map(|(j, (k, _, extra))| qv.iter().zip(k.iter()).map(|(a, b)| a * b).sum::<f64>() * scale + mask[t * n_cells + j] as f64 + extra)
                .collect();
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = w.iter().sum();
            let o = &mut out[(t * n_heads + h) * d..(t * n_heads + h + 1) * d];
            for (j, (_, v, _)) in rows.iter().enumerate() {
                for i in 0..d {
                    o[i] += w[j] / l * v[i];
                }
            }
        }
    }
    out
}

#[test]
fn full_mask_gives_each_query_its_own_window() {
    // A prompt batch over an engine's cache: cells 0..n_cells hold positions 0..n_cells, the last n_q of them
    // are the batch's own tokens (causal mask), every cell has a full-precision row, and query t (at position
    // p_t) takes a cell's full row only for its sinks (positions < 4) and its own window (p_t − W < p ≤ p_t):
    // the per-query residual window of a decode, for every query of a batch.
    let mut seed = 90;
    for (d, n_kv, group, n_cells, n_q, window) in [(64usize, 1usize, 3usize, 600usize, 1usize, 48usize), (64, 2, 3, 200, 40, 16), (128, 1, 4, 700, 3, 64), (128, 2, 2, 300, 20, 32)] {
        for centering in [false, true] {
            seed += 1;
            let s = setup(d, n_kv, group, 3, centering, false, Rows::Offset, n_cells, seed);
            let mut rng = Rng::new(seed * 7);
            let width = n_kv * d;
            let n_full = n_cells; // row j for cell j
            let (fk, fk64, stride) = full_rows(&mut rng, n_full, width, F16, 0, 0.0);
            let (fv, fv64, _) = full_rows(&mut rng, n_full, width, F16, 0, 0.5);
            let of_cell: Vec<i32> = (0..n_cells as i32).collect();
            let q: Vec<f32> = rng.normals(n_q * s.n_heads * d).iter().map(|x| x * 2.0).collect();
            let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            let scale = 1.0 / (d as f32).sqrt();
            let fm_stride = n_full + 3;
            let mut mask = vec![0.0f32; n_q * n_cells];
            let mut fm = vec![f32::NAN; n_q * fm_stride]; // the padding is never read
            for t in 0..n_q {
                let p_t = n_cells - n_q + t;
                for j in 0..n_cells {
                    if j > p_t {
                        mask[t * n_cells + j] = f32::NEG_INFINITY;
                    }
                    fm[t * fm_stride + j] = if j < 4 || (j + window > p_t && j <= p_t) { 0.0 } else { f32::NEG_INFINITY };
                }
            }
            fm[3] = 0.25; // a finite value adds to the score
            let want = reference_per_query(&s, &q64, &mask, n_q, &of_cell, &fk64, &fv64, &fm, fm_stride, scale as f64);
            let all_full: Vec<f32> = fm.iter().map(|&x| if x.is_nan() { x } else { 0.0 }).collect();
            let everything = reference_per_query(&s, &q64, &mask, n_q, &of_cell, &fk64, &fv64, &all_full, fm_stride, scale as f64);
            let moved = max_row_rel_error(&everything.iter().map(|&x| x as f32).collect::<Vec<_>>(), &want, d);
            assert!(moved > 5e-2, "the per-query choice must matter: moved only {moved:e}");
            let mut o = tq_attend_default_options();
            o.full_of_cell = of_cell.as_ptr();
            (o.full_k, o.full_v) = (fk.as_ptr().cast(), fv.as_ptr().cast());
            (o.n_full, o.full_row_stride, o.full_dtype) = (n_full, stride, F16);
            o.full_mask = fm.as_ptr();
            o.full_mask_row_stride = fm_stride;
            for nth in [0u32, 1, 3] {
                let (st, got) = attend(&s, &q, n_q, Some(&mask), scale, &o, nth);
                assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                let err = max_row_rel_error(&got, &want, d);
                assert!(err <= 1e-5, "d={d} n_kv={n_kv} n_q={n_q} window={window} centering={centering} nth={nth}: error {err:e}");
            }
            // a full mask narrower than n_full is refused
            o.full_mask_row_stride = n_full - 1;
            let (st, _) = attend(&s, &q, n_q, Some(&mask), scale, &o, 0);
            assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
            assert!(last_error().contains("options->full_mask_row_stride"), "{}", last_error());
        }
    }
}
