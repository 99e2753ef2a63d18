//! Verification table (`make mse-table`): the measured distortion of the TurboQuant quantizers beside
//! the exact Lloyd–Max values, the paper's figures and its bounds, as Markdown.
//!
//! - MSE: E‖x−x̂‖²/‖x‖² over N Gaussian vectors, for d ∈ {64, 128, 256}, b ∈ {1, 2, 3, 4}, DENSE and
//!   HADAMARD rotations; beside it the exact value of the Lloyd–Max codebook (what the measurement
//!   estimates), the paper's 0.36 / 0.117 / 0.03 / 0.009, the lower bound 4^−b and the upper bound
//!   √3·π/2·4^−b, stored bits per element (codes + the bf16 scale) and compression against fp16.
//! - PROD: d·E[(⟨y,x⟩−⟨y,x̂⟩)²/(‖y‖²‖x‖²)] over N independent Gaussian pairs, beside
//!   (π/2)·D_mse(b−1) (D_mse(0) = 1), and the mean of ⟨y,x̂⟩−⟨y,x⟩ (unbiased: 0 within its error).
//!
//! Usage: cargo run --release --example mse_table [-- --n 50000]

use std::f64::consts::PI;

use turboquant::math::quantizer::{Quantizer, QuantizerConfig, QuantizerKind};
use turboquant::math::rotation::RotationKind;

const PAPER: [f64; 4] = [0.36, 0.117, 0.03, 0.009];

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::gaussians;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// Mean and standard error.
fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Evaluate `per_vector(chunk_index, range)` over `n` items in chunks on every core; concatenated.
fn parallel<F: Fn(usize, std::ops::Range<usize>) -> Vec<T> + Sync, T: Send>(n: usize, per_chunk: F) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(2, |t| t.get());
    let chunk = n.div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &per_chunk;
                s.spawn(move || f(t, t * chunk..((t + 1) * chunk).min(n)))
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("worker")).collect()
    })
}

fn quantizer(dim: usize, bits: u32, rotation: RotationKind, kind: QuantizerKind) -> Quantizer {
    Quantizer::new(QuantizerConfig { dim, bits, rotation, kind, seed: 2026 }).expect("quantizer")
}

/// Per-vector ‖x−x̂‖²/‖x‖² over `x` (rows of q.dim()).
fn mse_errors(q: &Quantizer, x: &[f32]) -> Vec<f64> {
    let (d, cb, sc) = (q.dim(), q.code_bytes(), q.scale_count());
    parallel(x.len() / d, |_, range| {
        let xs = &x[range.start * d..range.end * d];
        let m = range.len();
        let mut scratch = q.scratch();
        let (mut codes, mut scales, mut back) = (vec![0u8; m * cb], vec![0u16; m * sc], vec![0.0f32; d]);
        q.quantize_batch(xs, &mut codes, &mut scales, &mut scratch);
        (0..m)
            .map(|i| {
                let xi = &xs[i * d..(i + 1) * d];
                q.dequantize_one(&codes[i * cb..(i + 1) * cb], &scales[i * sc..(i + 1) * sc], &mut back, &mut scratch);
                xi.iter().zip(&back).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / dot(xi, xi)
            })
            .collect()
    })
}

/// Per pair (normalised squared error d·e²/(‖y‖²‖x‖²), raw error e = ⟨y,x̂⟩−⟨y,x⟩) for PROD.
fn prod_errors(q: &Quantizer, x: &[f32], y: &[f32]) -> Vec<(f64, f64)> {
    let (d, cb, sc) = (q.dim(), q.code_bytes(), q.scale_count());
    parallel(x.len() / d, |_, range| {
        let mut scratch = q.scratch();
        let (mut codes, mut scales) = (vec![0u8; cb], vec![0u16; sc]);
        range
            .map(|i| {
                let (xi, yi) = (&x[i * d..(i + 1) * d], &y[i * d..(i + 1) * d]);
                q.quantize_one(xi, &mut codes, &mut scales, &mut scratch);
                let est = q.inner_product(&q.prepare_query(yi), &codes, &scales, &mut scratch) as f64;
                let e = est - dot(yi, xi);
                (d as f64 * e * e / (dot(yi, yi) * dot(xi, xi)), e)
            })
            .collect()
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .map_or(50_000, |v| v.parse().expect("--n takes a count"));
    let started = std::time::Instant::now();
    let dims = [64usize, 128, 256];
    let rotations = [RotationKind::Dense, RotationKind::Hadamard];

    println!("### MSE quantizer: normalised MSE E‖x−x̂‖²/‖x‖²\n");
    println!(
        "{n} Gaussian vectors per row (`cargo run --release --example mse_table -- --n {n}`). \
         *measured* ± one standard error; *Lloyd–Max* is the exact expectation of the codebook \
         (on the exact coordinate density, solved at run time); bits/element and compression count the \
         bf16 scale.\n"
    );
    println!(
        "| d | b | rotation | measured | Lloyd–Max (exact) | paper | lower 4^-b | upper √3π/2·4^-b | bits/elem | vs fp16 |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for &d in &dims {
        let x = gaussians(d as u64, n * d);
        for b in 1..=4u32 {
            for &rotation in &rotations {
                let q = quantizer(d, b, rotation, QuantizerKind::Mse);
                let (mean, se) = mean_se(&mse_errors(&q, &x));
                let lower = 4f64.powi(-(b as i32));
                let upper = 3f64.sqrt() * PI / 2.0 * lower;
                let bits = (q.bytes_per_vector() * 8) as f64 / d as f64;
                println!(
                    "| {d} | {b} | {} | {mean:.5} ± {se:.5} | {:.5} | {} | {lower:.5} | {upper:.5} | {bits:.3} | {:.2}× |",
                    rotation.name(),
                    q.mse_stage_nmse(),
                    PAPER[b as usize - 1],
                    16.0 / bits
                );
            }
        }
    }

    println!("\n### PROD quantizer: inner-product distortion d·E[(⟨y,x⟩−⟨y,x̂⟩)²/(‖y‖²‖x‖²)]\n");
    println!(
        "{n} independent Gaussian pairs (x, y) per row. PROD stores the (b−1)-bit MSE codes, d sign bits \
         and two bf16 scales. The distortion of the unbiased estimator is (π/2)·D_mse(b−1) (D_mse(0) = 1) \
         up to a −D_mse/d term; *bias* is the mean of ⟨y,x̂⟩−⟨y,x⟩ in units of its standard error.\n"
    );
    println!("| d | b | rotation | measured | (π/2)·D_mse(b−1) | ratio | bias / s.e. | bits/elem | vs fp16 |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for &d in &dims {
        let x = gaussians(10_000 + d as u64, n * d);
        let y = gaussians(20_000 + d as u64, n * d);
        for b in 1..=4u32 {
            for &rotation in &rotations {
                let q = quantizer(d, b, rotation, QuantizerKind::Prod);
                let errs = prod_errors(&q, &x, &y);
                let (dist, dist_se) = mean_se(&errs.iter().map(|e| e.0).collect::<Vec<_>>());
                let (bias, bias_se) = mean_se(&errs.iter().map(|e| e.1).collect::<Vec<_>>());
                let predicted = PI / 2.0 * q.mse_stage_nmse();
                let bits = (q.bytes_per_vector() * 8) as f64 / d as f64;
                println!(
                    "| {d} | {b} | {} | {dist:.4} ± {dist_se:.4} | {predicted:.4} | {:.3} | {:+.2} | {bits:.3} | {:.2}× |",
                    rotation.name(),
                    dist / predicted,
                    bias / bias_se,
                    16.0 / bits
                );
            }
        }
    }
    eprintln!("mse_table: {:.1} s", started.elapsed().as_secs_f64());
}
