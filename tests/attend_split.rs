//! Split-K of tq_attend_part / tq_attend_part_ext: a call with few (query tile, kv head) items over
//! many cells is cut over its cells as well, and the last share to arrive merges the partial softmax
//! states. The shares run here on real concurrent threads in random orders, and two consecutive
//! calls (different outputs) interleave across the threads as llama.cpp's callback makes them (one
//! stream after another per thread), against a float64 softmax over the dequantized rows, with a
//! mask, sinks, soft-capping and centering of K and V, for nth 1, 2, 3, 4, 8 and for cell counts
//! where the split is not taken and where it is.

mod common;

use std::sync::Barrier;

use common::*;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;

/// The float64 reference (tests/common) over the setup's dequantized rows.
fn reference(s: &Setup, q: &[f32], n_q: usize, mask: &[f32], scale: f64, softcap: f64, sinks: Option<&[f32]>) -> Vec<f64> {
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    let m64: Vec<f64> = mask.iter().map(|&x| x as f64).collect();
    reference_attention_ext(&q64, &s.kd, &s.vd, &m64, n_q, s.n_cells, s.n_heads, s.n_kv, s.d, scale, softcap, sinks)
}


// SAFETY: attends on one context are thread-safe (the header's contract); the stores are only read.
unsafe impl Sync for Setup {}

/// One call's arguments.
struct Call<'a> {
    q: &'a [f32],
    n_q: usize,
    mask: &'a [f32],
    scale: f32,
    opts: tq_attend_options,
}

/// Share `ith` of `nth` of `call`, writing `out` (shared by every share: raw pointer).
fn share(s: &Setup, call: &Call, out: *mut f32, ith: u32, nth: u32) -> tq_status {
    unsafe {
        tq_attend_part_ext(s.ctx.0, 1, call.q.as_ptr().cast(), call.n_q, std::ptr::null(), s.k_store.as_ptr().cast(),
            s.v_store.as_ptr().cast(), s.n_cells, call.mask.as_ptr().cast(), 0, s.n_cells, call.scale, &call.opts, out.cast(),
            std::ptr::null(), ith, nth)
    }
}

// SAFETY: a call's arguments are read-only host data (the sinks pointer too).
unsafe impl Sync for Call<'_> {}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Run `calls` (each writing its own output) on `nth` real threads: thread i makes share i of every
/// call in order, as llama.cpp's callback does over its streams; the threads start together and each
/// sleeps a random few microseconds before each share (from `seed`), so shares of a call arrive in
/// random orders and threads drift into the next call while others are still in the previous one.
/// Returns the outputs and every status.
fn run_threads(s: &Setup, calls: &[Call], nth: u32, seed: u64) -> (Vec<Vec<f32>>, Vec<tq_status>) {
    let mut outs: Vec<Vec<f32>> = calls.iter().map(|c| vec![f32::NAN; c.n_q * s.n_heads * s.d]).collect();
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let barrier = Barrier::new(nth as usize);
    let statuses = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..nth)
            .map(|ith| {
                let (barrier, ptrs) = (&barrier, &ptrs);
                scope.spawn(move || {
                    let mut rng = Rng::new(seed ^ (ith as u64 + 1) * 0x9e37_79b9);
                    barrier.wait();
                    let mut st = Vec::new();
                    for (c, p) in calls.iter().zip(ptrs.iter()) {
                        let pause = rng.next_u64() % 300;
                        if pause > 0 {
                            std::thread::sleep(std::time::Duration::from_micros(pause));
                        }
                        st.push(share(s, c, p.0, ith, nth));
                    }
                    st
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    (outs, statuses)
}

/// Decode-style mask for query t: cells in `hidden` and every 7th cell hidden, the rest visible.
fn mask_rows(n_q: usize, n_cells: usize, hidden: &[std::ops::Range<usize>]) -> Vec<f32> {
    let mut m = vec![0.0f32; n_q * n_cells];
    for t in 0..n_q {
        for j in 0..n_cells {
            if j % 7 == 3 || hidden.iter().any(|r| r.contains(&j)) || j + t >= n_cells + 3 {
                m[t * n_cells + j] = f32::NEG_INFINITY;
            }
        }
    }
    m
}

#[test]
fn split_shares_on_concurrent_threads_match_float64_reference() {
    let mut seed = 500;
    // (cells, centering, center_values): 200 and 400 cells are too few to split, 2048 and 4100 split.
    for (n_cells, centering, center_values) in [(200usize, true, false), (400, false, false), (2048, true, true), (4100, true, false)] {
        let s = setup(64, 3, 3, 4, centering, center_values, Rows::Offset, n_cells, seed);
        let scale = 1.0 / 8.0;
        let sinks: Vec<f32> = (0..s.n_heads).map(|h| -2.0 + 6.0 * h as f32 / s.n_heads as f32).collect();
        for n_q in [1usize, 2] {
            let mut rng = Rng::new(seed * 7 + n_q as u64);
            let (qa, qb) = (rng.normals(n_q * s.n_heads * s.d), rng.normals(n_q * s.n_heads * s.d));
            // Call A: a mask with a hidden first half (a whole chunk of cells sees nothing for some
            // shares); call B: scattered holes only.
            let ma = mask_rows(n_q, n_cells, &[0..n_cells / 2]);
            let mb = mask_rows(n_q, n_cells, &[]);
            for (softcap, with_sinks) in [(0.0f32, false), (0.0, true), (3.0, true)] {
                let mut opts = tq_attend_default_options();
                opts.logit_softcap = softcap;
                if with_sinks {
                    opts.sinks = sinks.as_ptr();
                }
                let calls = [Call { q: &qa, n_q, mask: &ma, scale, opts }, Call { q: &qb, n_q, mask: &mb, scale, opts }];
                let sk = with_sinks.then_some(sinks.as_slice());
                let want: Vec<Vec<f64>> =
                    calls.iter().map(|c| reference(&s, c.q, c.n_q, c.mask, scale as f64, softcap as f64, sk)).collect();
                for nth in [1u32, 2, 3, 4, 8] {
                    for round in 0..3u64 {
                        let (outs, statuses) = run_threads(&s, &calls, nth, seed * 131 + nth as u64 * 17 + round);
                        assert!(statuses.iter().all(|&st| st == tq_status::TQ_STATUS_OK), "{statuses:?}: {}", last_error());
                        for (i, (got, want)) in outs.iter().zip(&want).enumerate() {
                            let err = max_row_rel_error(got, want, s.d);
                            assert!(
                                err <= 1e-5,
                                "cells {n_cells} n_q {n_q} softcap {softcap} sinks {with_sinks} nth {nth} call {i}: error {err:e}"
                            );
                        }
                    }
                }
            }
            seed += 1;
        }
    }
}

#[test]
fn split_is_taken_only_with_many_cells_and_a_repeated_share_is_reported() {
    // A share made twice before the call completed is detected only where the call is split (its
    // shares meet in the context's table): at 4096 cells over 2 shares (3 items: split), not at 300
    // cells (too few) nor with 3 shares (one item each: balanced already).
    let s = setup(64, 3, 3, 4, true, false, Rows::Offset, 4096, 9);
    let q = Rng::new(3).normals(s.n_heads * s.d);
    let mask = vec![0.0f32; s.n_cells];
    let call = Call { q: &q, n_q: 1, mask: &mask, scale: 0.125, opts: tq_attend_default_options() };
    let mut out = vec![f32::NAN; s.n_heads * s.d];
    let o = out.as_mut_ptr();
    assert_eq!(share(&s, &call, o, 0, 2), tq_status::TQ_STATUS_OK);
    assert!(out.iter().all(|x| x.is_nan()), "a split call writes nothing before its last share");
    assert_eq!(share(&s, &call, o, 0, 2), tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("never completed"), "{}", last_error());
    // The repeated share started the call again: the other share completes it, correctly.
    assert_eq!(share(&s, &call, o, 1, 2), tq_status::TQ_STATUS_OK, "{}", last_error());
    let want = reference(&s, &q, 1, &mask, 0.125, 0.0, None);
    assert!(max_row_rel_error(&out, &want, s.d) <= 1e-5);
    // A later call on the same output finds nothing pending.
    for ith in [1, 0] {
        assert_eq!(share(&s, &call, o, ith, 2), tq_status::TQ_STATUS_OK, "{}", last_error());
    }
    // Three shares of three items: the item split, each share writes its own item at once.
    out.fill(f32::NAN);
    assert_eq!(share(&s, &call, out.as_mut_ptr(), 0, 3), tq_status::TQ_STATUS_OK);
    assert!(out[..3 * s.d].iter().all(|x| x.is_finite()) && out[3 * s.d..].iter().all(|x| x.is_nan()));
    assert!(max_row_rel_error(&out[..3 * s.d], &want[..3 * s.d], s.d) <= 1e-5, "share 0's item against the float64 reference");
    assert_eq!(share(&s, &call, out.as_mut_ptr(), 0, 3), tq_status::TQ_STATUS_OK);

    // 300 cells: never split.
    let small = setup(64, 3, 3, 4, true, false, Rows::Offset, 300, 10);
    let mask = vec![0.0f32; small.n_cells];
    let call = Call { q: &q, n_q: 1, mask: &mask, scale: 0.125, opts: tq_attend_default_options() };
    let mut out = vec![f32::NAN; small.n_heads * small.d];
    for _ in 0..2 {
        assert_eq!(share(&small, &call, out.as_mut_ptr(), 0, 2), tq_status::TQ_STATUS_OK);
    }
    assert!(out[..2 * small.d * 3].iter().all(|x| x.is_finite()), "share 0 of the item split writes its 2 items");
    let want = reference(&small, &q, 1, &mask, 0.125, 0.0, None);
    assert!(max_row_rel_error(&out[..2 * small.d * 3], &want[..2 * small.d * 3], small.d) <= 1e-5, "share 0's items against the float64 reference");
}

#[test]
fn split_tq_attend_matches_the_split_shares_bit_for_bit() {
    // tq_attend on the context's 2 threads splits a decode call the same way as 2 shares of
    // tq_attend_part (same plan, same partials, same merge order): identical bits.
    let s = setup(64, 3, 3, 4, true, true, Rows::Offset, 3000, 12);
    let q = Rng::new(4).normals(s.n_heads * s.d);
    let mask = mask_rows(1, s.n_cells, &[100..900]);
    let mut whole = vec![0.0f32; s.n_heads * s.d];
    let st = unsafe {
        tq_attend(s.ctx.0, 1, q.as_ptr().cast(), 1, std::ptr::null(), s.k_store.as_ptr().cast(), s.v_store.as_ptr().cast(),
            s.n_cells, mask.as_ptr().cast(), 0, s.n_cells, 0.125, whole.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let want = reference(&s, &q, 1, &mask, 0.125, 0.0, None);
    assert!(max_row_rel_error(&whole, &want, s.d) <= 1e-5);
    // The context asks for 2 threads and gets min(2, cores) (parallel::resolve_threads): that many shares.
    let nth = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2) as u32;
    let call = Call { q: &q, n_q: 1, mask: &mask, scale: 0.125, opts: tq_attend_default_options() };
    let (outs, st) = run_threads(&s, &[call], nth, 1);
    assert!(st.iter().all(|&x| x == tq_status::TQ_STATUS_OK));
    assert_eq!(outs[0], whole, "tq_attend against {nth} share(s) of tq_attend_part");
}
