//! Decode attention on the CPU: one query token, 32 query heads / 8 kv heads, d = 128, at 4K and
//! 32K cached tokens — tq_attend over 4- and 3-bit rows against a plain f32 attention over an
//! uncompressed cache (written here: GQA-shared K/V reads, 16-lane dot products, same threads),
//! plus append throughput; and prefill as llama.cpp runs it on SmolLM2-135M (9 query heads / 3 kv
//! heads, d = 64): 512 query tokens over 4,096 cached cells plus their own 512, with an f16 causal
//! mask, in one tq_attend call. Run: `cargo bench --bench attend` (TQ_BENCH_THREADS, default 2).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use turboquant::ffi::context::*;

const NH: usize = 32;
const NKV: usize = 8;
const D: usize = 128;

fn threads() -> usize {
    std::env::var("TQ_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

#[path = "../tests/common/rng.rs"]
mod rng;

/// Input data, uniform in (-1, 1).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rng::Rng::new(seed);
    (0..n).map(|_| (2.0 * r.uniform() - 1.0) as f32).collect()
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    for (x, y) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum()
}

/// Plain f32 decode attention over [n][NKV][D] K/V, threads over kv heads.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
fn f32_head(q: &[f32], k: &[f32], v: &[f32], n: usize, g: usize, out: &mut [f32], scores: &mut [f32]) {
    let group = NH / NKV;
    let scale = 1.0 / (D as f32).sqrt();
    for h in 0..group {
        let qh = &q[(g * group + h) * D..(g * group + h + 1) * D];
        let mut m = f32::NEG_INFINITY;
        for j in 0..n {
            let s = dot(qh, &k[(j * NKV + g) * D..(j * NKV + g + 1) * D]) * scale;
            scores[h * n + j] = s;
            m = m.max(s);
        }
        let mut l = 0.0;
        for s in &mut scores[h * n..(h + 1) * n] {
            *s = (*s - m).exp();
            l += *s;
        }
        let o = &mut out[h * D..(h + 1) * D];
        o.iter_mut().for_each(|x| *x = 0.0);
        for j in 0..n {
            let p = scores[h * n + j] / l;
            for (x, &y) in o.iter_mut().zip(&v[(j * NKV + g) * D..(j * NKV + g + 1) * D]) {
                *x += p * y;
            }
        }
    }
}

fn f32_attend(q: &[f32], k: &[f32], v: &[f32], n: usize, out: &mut [f32], threads: usize) {
    let group = NH / NKV;
    let chunks: Vec<&mut [f32]> = out.chunks_mut(group * D).collect();
    let per = NKV.div_ceil(threads);
    std::thread::scope(|s| {
        let mut rest = chunks;
        let mut g0 = 0;
        while !rest.is_empty() {
            let take = per.min(rest.len());
            let mine: Vec<&mut [f32]> = rest.drain(..take).collect();
            let start = g0;
            g0 += take;
            s.spawn(move || {
                let mut scores = vec![0.0f32; group * n];
                for (i, o) in mine.into_iter().enumerate() {
                    f32_head(q, k, v, n, start + i, o, &mut scores);
                }
            });
        }
    });
}

fn bench(c: &mut Criterion) {
    let th = threads();
    let mut group = c.benchmark_group(format!("decode_attend_{th}threads"));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1));
    for n in [4096usize, 32768] {
        let k = data(n * NKV * D, 1);
        let v = data(n * NKV * D, 2);
        let q = data(NH * D, 3);
        let mut out = vec![0.0f32; NH * D];
        group.bench_with_input(BenchmarkId::new("f32_baseline", n), &n, |b, &n| {
            b.iter(|| f32_attend(black_box(&q), &k, &v, n, &mut out, th))
        });
        for bits in [4u32, 3] {
            let mut p = tq_context_default_params();
            p.n_heads = NH as u32;
            p.n_kv_heads = NKV as u32;
            p.head_dim = D as u32;
            p.bits_k = bits;
            p.bits_v = bits;
            p.n_threads = th as u32;
            let mut ctx = std::ptr::null_mut();
            assert_eq!(unsafe { tq_context_new(&p, &mut ctx) } as u32, 0);
            let (mut kr, mut vr) = (0, 0);
            unsafe { tq_context_row_bytes(ctx, &mut kr, &mut vr) };
            let (mut ks, mut vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
            let slots: Vec<i64> = (0..n as i64).collect();
            let st = unsafe {
                tq_append_kv(ctx, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n,
                    k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
            };
            assert_eq!(st as u32, 0);
            group.bench_with_input(BenchmarkId::new(format!("turboquant_{bits}bit"), n), &n, |b, &n| {
                b.iter(|| unsafe {
                    tq_attend(ctx, 0, q.as_ptr().cast(), 1, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), n,
                        std::ptr::null(), 0, 0, 1.0 / (D as f32).sqrt(), out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
                })
            });
            if n == 4096 {
                group.throughput(Throughput::Elements(n as u64));
                group.bench_function(format!("append_{n}_tokens_{bits}bit"), |b| {
                    b.iter(|| unsafe {
                        tq_append_kv(ctx, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n,
                            k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
                    })
                });
                group.throughput(Throughput::Elements(1));
            }
            unsafe { tq_context_free(ctx) };
        }
    }
    group.finish();
}

/// 512 queries at depth 4,096 (pp512 @ d4096 of llama-bench) through one layer's tq_attend.
fn bench_prefill(c: &mut Criterion) {
    const PNH: usize = 9;
    const PNKV: usize = 3;
    const PD: usize = 64;
    let (depth, n_q) = (4096usize, 512usize);
    let n = depth + n_q;
    let th = threads();
    let mut group = c.benchmark_group(format!("prefill_attend_{th}threads"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(n_q as u64));
    let k = data(n * PNKV * PD, 4);
    let v = data(n * PNKV * PD, 5);
    let q = data(n_q * PNH * PD, 6);
    let mut out = vec![0.0f32; n_q * PNH * PD];
    // llama.cpp's KQ mask: f16, 0 where cell j ≤ the query's position, −inf elsewhere.
    let mask: Vec<u16> = (0..n_q)
        .flat_map(|t| (0..n).map(move |j| if j <= depth + t { 0u16 } else { 0xfc00 }))
        .collect();
    for bits in [4u32, 3] {
        let mut p = tq_context_default_params();
        p.n_heads = PNH as u32;
        p.n_kv_heads = PNKV as u32;
        p.head_dim = PD as u32;
        p.bits_k = bits;
        p.bits_v = bits;
        p.n_threads = th as u32;
        let mut ctx = std::ptr::null_mut();
        assert_eq!(unsafe { tq_context_new(&p, &mut ctx) } as u32, 0);
        let (mut kr, mut vr) = (0, 0);
        unsafe { tq_context_row_bytes(ctx, &mut kr, &mut vr) };
        let (mut ks, mut vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
        let slots: Vec<i64> = (0..n as i64).collect();
        let st = unsafe {
            tq_append_kv(ctx, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n,
                k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
        };
        assert_eq!(st as u32, 0);
        let attend = |out: &mut [f32]| unsafe {
            tq_attend(ctx, 0, q.as_ptr().cast(), n_q, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), n,
                mask.as_ptr().cast(), 1, n, 1.0 / (PD as f32).sqrt(), out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
        };
        assert_eq!(attend(&mut out) as u32, 0);
        group.bench_function(format!("turboquant_{bits}bit_512q_d4096"), |b| b.iter(|| attend(&mut out)));
        unsafe { tq_context_free(ctx) };
    }
    group.finish();
}

criterion_group!(benches, bench, bench_prefill);
criterion_main!(benches);
