//! tq_attend_ext / tq_attend_part_ext: attention sinks and logit soft-capping over compressed rows,
//! against a float64 softmax over the dequantized rows (float32 rounding is the only difference
//! allowed), plus the checks of the options argument.

mod common;

use common::*;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;


/// Causal-style mask over the cells: query t sees cells 0..=visible[t] (none when visible[t] < 0).
fn mask_for(visible: &[i64], n_cells: usize) -> Vec<f32> {
    let mut mask = vec![0.0f32; visible.len() * n_cells];
    for (t, &last) in visible.iter().enumerate() {
        for j in 0..n_cells {
            if j as i64 > last {
                mask[t * n_cells + j] = f32::NEG_INFINITY;
            }
        }
    }
    mask
}

/// tq_attend_ext (nth = 0) or tq_attend_part_ext over `nth` shares.
fn attend(s: &Setup, q: &[f32], n_q: usize, mask: &[f32], scale: f32, opts: Option<&tq_attend_options>, nth: u32) -> (tq_status, Vec<f32>) {
    let mut out = vec![f32::NAN; n_q * s.n_heads * s.d];
    let o = opts.map_or(std::ptr::null(), |o| o as *const tq_attend_options);
    let mut st = tq_status::TQ_STATUS_OK;
    if nth == 0 {
        st = unsafe {
            tq_attend_ext(s.ctx.0, 1, q.as_ptr().cast(), n_q, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
                s.n_cells, mask.as_ptr().cast(), 0, s.n_cells, scale, o, out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
        };
    } else {
        for ith in 0..nth {
            let r = unsafe {
                tq_attend_part_ext(s.ctx.0, 1, q.as_ptr().cast(), n_q, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
                    s.n_cells, mask.as_ptr().cast(), 0, s.n_cells, scale, o, out.as_mut_ptr().cast(), std::ptr::null(), ith, nth)
            };
            if r != tq_status::TQ_STATUS_OK {
                st = r;
            }
        }
    }
    (st, out)
}

#[test]
fn sinks_and_softcap_match_float64_reference() {
    let mut seed = 11;
    for (d, n_kv, group) in [(64usize, 2usize, 3usize), (128, 1, 4), (256, 1, 4)] {
        for centering in [false, true] {
            let s = setup(d, n_kv, group, 4, centering, false, Rows::Normal, 150, seed);
            seed += 1;
            let n_q = 12;
            let mut rng = Rng::new(seed * 31);
            // Scaled up so that soft-capping bites (scores well past the cap).
            let q: Vec<f32> = rng.normals(n_q * s.n_heads * d).iter().map(|x| x * 3.0).collect();
            // Queries that see 0 cells (row 0: nothing), 1, 2, ... and the whole store.
            let visible: Vec<i64> = (0..n_q as i64).map(|t| if t == 0 { -1 } else if t < 6 { t - 1 } else { 149 - t }).collect();
            let mask = mask_for(&visible, s.n_cells);
            // Sinks spread from well below to well above typical scores.
            let sinks: Vec<f32> = (0..s.n_heads).map(|h| -4.0 + 8.0 * h as f32 / s.n_heads as f32).collect();
            let scale = 1.0 / (d as f32).sqrt();
            let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            let m64: Vec<f64> = mask.iter().map(|&x| x as f64).collect();
            let plain = reference_attention_ext(&q64, &s.kd, &s.vd, &m64, n_q, s.n_cells, s.n_heads, s.n_kv, d, scale as f64, 0.0, None);
            for (softcap, with_sinks) in [(0.0f32, true), (2.5, false), (2.5, true)] {
                let mut o = tq_attend_default_options();
                o.logit_softcap = softcap;
                if with_sinks {
                    o.sinks = sinks.as_ptr();
                }
                let want = reference_attention_ext(&q64, &s.kd, &s.vd, &m64, n_q, s.n_cells, s.n_heads, s.n_kv, d, scale as f64, softcap as f64,
                    with_sinks.then_some(sinks.as_slice()));
                // The extras must matter in this case, or agreement would prove nothing.
                let moved = max_row_rel_error(&want.iter().map(|&x| x as f32).collect::<Vec<_>>(), &plain, d);
                assert!(moved > 1e-2, "d={d} softcap={softcap} sinks={with_sinks}: the reference moved only {moved:e}");
                for nth in [0u32, 3] {
                    let (st, got) = attend(&s, &q, n_q, &mask, scale, Some(&o), nth);
                    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                    let err = max_row_rel_error(&got, &want, d);
                    assert!(err <= 1e-5, "d={d} centering={centering} softcap={softcap} sinks={with_sinks} nth={nth}: error {err:e}");
                    // Row 0 sees no cell: a zero row, sinks or not.
                    assert!(got[..s.n_heads * d].iter().all(|&x| x == 0.0), "a query with no visible cell must get zeros");
                }
            }
            // Default options (and NULL) are plain tq_attend, bit for bit.
            let mut plain_out = vec![0.0f32; n_q * s.n_heads * d];
            let st = unsafe {
                tq_attend(s.ctx.0, 1, q.as_ptr().cast(), n_q, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
                    s.n_cells, mask.as_ptr().cast(), 0, s.n_cells, scale, plain_out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK);
            let o = tq_attend_default_options();
            assert_eq!(attend(&s, &q, n_q, &mask, scale, Some(&o), 0).1, plain_out);
            assert_eq!(attend(&s, &q, n_q, &mask, scale, None, 2).1, plain_out);
        }
    }
}

#[test]
fn attend_options_are_checked() {
    let s = setup(64, 1, 2, 4, false, false, Rows::Normal, 20, 5);
    let n_q = 2;
    let q = Rng::new(9).normals(n_q * s.n_heads * s.d);
    let mask = vec![0.0f32; n_q * s.n_cells];
    let expect = |o: &tq_attend_options, st_want: tq_status, msg: &str| {
        for nth in [0u32, 1] {
            let (st, _) = attend(&s, &q, n_q, &mask, 0.125, Some(o), nth);
            assert_eq!(st, st_want, "nth={nth}: {}", last_error());
            let e = last_error();
            assert!(e.contains(msg), "nth={nth}: message '{e}' does not say '{msg}'");
        }
    };
    let mut o = tq_attend_default_options();
    o.logit_softcap = -1.0;
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->logit_softcap is -1");
    o.logit_softcap = f32::NAN;
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->logit_softcap is NaN");
    o.logit_softcap = f32::INFINITY;
    expect(&o, tq_status::TQ_STATUS_INVALID_ARGUMENT, "options->logit_softcap is inf");
    let mut o = tq_attend_default_options();
    let bad = [0.5f32, f32::NAN];
    o.sinks = bad.as_ptr();
    expect(&o, tq_status::TQ_STATUS_NON_FINITE, "options->sinks[1] is NaN");
    let mut o = tq_attend_default_options();
    o.struct_size -= 8;
    expect(&o, tq_status::TQ_STATUS_ABI_MISMATCH, "options->struct_size");
    let mut o = tq_attend_default_options();
    o.abi_version += 1;
    expect(&o, tq_status::TQ_STATUS_ABI_MISMATCH, "options->abi_version");
    // A null context is refused before the options are read.
    let o = tq_attend_default_options();
    let mut out = vec![0.0f32; n_q * s.n_heads * s.d];
    let st = unsafe {
        tq_attend_ext(std::ptr::null(), 1, q.as_ptr().cast(), n_q, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
            s.n_cells, mask.as_ptr().cast(), 0, s.n_cells, 0.125, &o, out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_NULL_POINTER);
}
