//! Error of tq_attend against exact attention over the uncompressed K/V, by bit width.
//! Keys and values: i.i.d. Gaussian (no structure to exploit), 32 query / 8 kv heads, d = 128,
//! 2048 cached tokens, 16 query tokens with causal masking; 4 seeds. Reports the relative error of
//! the attention output ‖out − exact‖/‖exact‖ (mean and max over query rows) and the stored bits per
//! element. Run: `make attend-table`.

use turboquant::ffi::context::*;

const NH: usize = 32;
const NKV: usize = 8;
const D: usize = 128;
const N: usize = 2048;
const NQ: usize = 16;

#[path = "../tests/common/rng.rs"]
mod rng;

fn gaussians(n: usize, seed: u64) -> Vec<f32> {
    rng::Rng::new(seed).normals(n)
}

fn exact(q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let group = NH / NKV;
    let mut out = vec![0.0; NQ * NH * D];
    for t in 0..NQ {
        let visible = N - NQ + t + 1;
        for h in 0..NH {
            let g = h / group;
            let qv = &q[(t * NH + h) * D..][..D];
            let s: Vec<f64> = (0..visible)
                .map(|j| qv.iter().zip(&k[(j * NKV + g) * D..][..D]).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (D as f64).sqrt())
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let l: f64 = w.iter().sum();
            for (j, wj) in w.iter().enumerate() {
                for i in 0..D {
                    out[(t * NH + h) * D + i] += wj / l * v[(j * NKV + g) * D + i] as f64;
                }
            }
        }
    }
    out
}

fn main() {
    println!("| K/V bits | key mode | bits/elem (K, V) | rel. error mean | rel. error max |");
    println!("|---|---|---|---|---|");
    for (bk, bv, prod) in [(4u32, 4u32, false), (4, 4, true), (3, 3, false), (4, 2, false), (2, 2, false)] {
        let (mut sum, mut max, mut rows) = (0.0f64, 0.0f64, 0usize);
        let mut bpe = (0.0, 0.0);
        for seed in 0..4u64 {
            let k = gaussians(N * NKV * D, 3 * seed + 1);
            let v = gaussians(N * NKV * D, 3 * seed + 2);
            let q = gaussians(NQ * NH * D, 3 * seed + 3);
            let mut p = tq_context_default_params();
            p.n_heads = NH as u32;
            p.n_kv_heads = NKV as u32;
            p.head_dim = D as u32;
            p.bits_k = bk;
            p.bits_v = bv;
            p.key_mode = prod as u32;
            p.seed = seed;
            let mut ctx = std::ptr::null_mut();
            assert_eq!(unsafe { tq_context_new(&p, &mut ctx) } as u32, 0);
            let (mut kr, mut vr) = (0, 0);
            unsafe { tq_context_row_bytes(ctx, &mut kr, &mut vr) };
            bpe = (kr as f64 * 8.0 / (NKV * D) as f64, vr as f64 * 8.0 / (NKV * D) as f64);
            let (mut ks, mut vs) = (vec![0u8; N * kr], vec![0u8; N * vr]);
            let slots: Vec<i64> = (0..N as i64).collect();
            let mut mask = vec![0.0f32; NQ * N];
            for t in 0..NQ {
                for j in N - NQ + t + 1..N {
                    mask[t * N + j] = f32::NEG_INFINITY;
                }
            }
            let mut out = vec![0.0f32; NQ * NH * D];
            unsafe {
                assert_eq!(tq_append_kv(ctx, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), N, slots.as_ptr(), N,
                    k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut()) as u32, 0);
                assert_eq!(tq_attend(ctx, 0, q.as_ptr().cast(), NQ, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), N,
                    mask.as_ptr().cast(), 0, N, 1.0 / (D as f32).sqrt(), out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut()) as u32, 0);
                tq_context_free(ctx);
            }
            let reference = exact(&q, &k, &v);
            for (a, b) in out.chunks(D).zip(reference.chunks(D)) {
                let diff: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum::<f64>().sqrt();
                let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
                sum += diff / norm;
                max = max.max(diff / norm);
                rows += 1;
            }
        }
        println!("| {bk}/{bv} | {} | {:.2}, {:.2} | {:.4} | {:.4} |", if prod { "PROD" } else { "MSE" }, bpe.0, bpe.1, sum / rows as f64, max);
    }
}
