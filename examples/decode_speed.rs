//! Decode attention in llama.cpp's shape on the CPU: one query token over `n` cells of SmolLM2-135M's
//! layer shape (9 query heads, 3 kv heads, d = 64), K/V bits as given (default 4/4) with key centering, the call split
//! over `nth` shares as llama.cpp's graph threads make it (tq_attend_part, shares run one after the
//! other on this thread, so the figure is the total CPU time of a call). Prints the median of the
//! calls' times. Run: `cargo run --release --example decode_speed [cells] [shares] [calls] [bits_k] [bits_v]`.

use std::time::Instant;
use turboquant::ffi::context::*;

#[path = "../tests/common/rng.rs"]
mod rng;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let n = *args.first().unwrap_or(&4096);
    let nth = *args.get(1).unwrap_or(&2) as u32;
    let calls = *args.get(2).unwrap_or(&400);
    let (bits_k, bits_v) = (*args.get(3).unwrap_or(&4) as u32, *args.get(4).unwrap_or(&4) as u32);
    let (nh, nkv, d) = (9usize, 3usize, 64usize);
    let mut rng = rng::Rng::new(1);
    let (k, v, q) = (rng.normals(n * nkv * d), rng.normals(n * nkv * d), rng.normals(nh * d));
    let mut p = tq_context_default_params();
    p.n_heads = nh as u32;
    p.n_kv_heads = nkv as u32;
    p.head_dim = d as u32;
    p.bits_k = bits_k;
    p.bits_v = bits_v;
    p.centering = true;
    let mut ctx = std::ptr::null_mut();
    assert_eq!(unsafe { tq_context_new(&p, &mut ctx) } as u32, 0, "tq_context_new");
    let (mut kr, mut vr) = (0, 0);
    unsafe { tq_context_row_bytes(ctx, &mut kr, &mut vr) };
    let (mut ks, mut vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
    let slots: Vec<i64> = (0..n as i64).collect();
    let st = unsafe {
        tq_append_kv(ctx, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n, k.as_ptr().cast(),
            std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st as u32, 0, "tq_append_kv");
    // llama.cpp's decode mask: one f16 row, 0 for every cell (all visible).
    let mask = vec![0u16; n];
    let mut out = vec![0.0f32; nh * d];
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        for ith in 0..nth {
            let st = unsafe {
                tq_attend_part(ctx, 0, q.as_ptr().cast(), 1, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), n,
                    mask.as_ptr().cast(), 1, n, 0.125, out.as_mut_ptr().cast(), std::ptr::null(), ith, nth)
            };
            assert_eq!(st as u32, 0, "tq_attend_part");
        }
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("K{bits_k}/V{bits_v} cells {n} shares {nth}: median {:.1} us per call ({} calls, min {:.1})", times[calls / 2], calls, times[0]);
    unsafe { tq_context_free(ctx) };
}
