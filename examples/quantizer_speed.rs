//! Quantize / dequantize throughput of the C API (`tq_quantize`, `tq_dequantize`), measured with the
//! same protocol as the seed package's `measure_speed.py` so the two can run side by side
//! (`bench/quantizer/seed_vs_ours.sh`): N Gaussian vectors, one warm-up, `--reps` timed runs, median wall time.
//!
//! Usage: cargo run --release --example quantizer_speed -- [--n 65536] [--dim 128] [--bits 4]
//!        [--threads 1,2] [--rotation hadamard|dense] [--kind mse|prod] [--reps 5]
//! Prints one JSON object per thread count.

use std::time::Instant;

use turboquant::ffi::quantizer::{
    tq_dequantize, tq_quantize, tq_quantizer, tq_quantizer_code_bytes, tq_quantizer_default_params,
    tq_quantizer_free, tq_quantizer_new, tq_quantizer_scale_count,
};
use turboquant::ffi::{tq_quantizer_kind, tq_rotation, tq_status};

#[path = "../tests/common/rng.rs"]
mod rng;

/// Standard normal input data (both Box–Muller outputs of SplitMix64 from state `seed`).
fn gaussians(seed: u64, n: usize) -> Vec<f32> {
    rng::Rng::from_state(seed).normal_pairs(n)
}

/// CPU time of the whole process (all threads), seconds.
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad value for {name}: {v}")))
        .unwrap_or(default)
}

fn check(status: tq_status, what: &str) {
    assert_eq!(status, tq_status::TQ_STATUS_OK, "{what} failed");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = arg(&args, "--n", 65536);
    let dim: u32 = arg(&args, "--dim", 128);
    let bits: u32 = arg(&args, "--bits", 4);
    let reps: usize = arg(&args, "--reps", 5);
    let threads: String = arg(&args, "--threads", "1,2".to_string());
    let rotation_name: String = arg(&args, "--rotation", "hadamard".to_string());
    let kind_name: String = arg(&args, "--kind", "mse".to_string());
    let rotation = match rotation_name.as_str() {
        "hadamard" => tq_rotation::TQ_ROTATION_HADAMARD,
        "dense" => tq_rotation::TQ_ROTATION_DENSE,
        other => panic!("--rotation {other}: expected hadamard or dense"),
    };
    let kind = match kind_name.as_str() {
        "mse" => tq_quantizer_kind::TQ_QUANTIZER_MSE,
        "prod" => tq_quantizer_kind::TQ_QUANTIZER_PROD,
        other => panic!("--kind {other}: expected mse or prod"),
    };
    let x = gaussians(0, n * dim as usize);
    for t in threads.split(',').map(|t| t.trim().parse::<u32>().expect("--threads: list of integers")) {
        let mut params = tq_quantizer_default_params();
        params.dim = dim;
        params.bits = bits;
        params.rotation = rotation as u32;
        params.kind = kind as u32;
        params.n_threads = t;
        let mut q: *mut tq_quantizer = std::ptr::null_mut();
        let (mut code_bytes, mut scale_count) = (0usize, 0usize);
        unsafe {
            check(tq_quantizer_new(&params, &mut q), "tq_quantizer_new");
            check(tq_quantizer_code_bytes(q, &mut code_bytes), "tq_quantizer_code_bytes");
            check(tq_quantizer_scale_count(q, &mut scale_count), "tq_quantizer_scale_count");
        }
        let mut codes = vec![0u8; n * code_bytes];
        let mut scales = vec![0u16; n * scale_count];
        let mut back = vec![0.0f32; n * dim as usize];
        let quantize = |codes: &mut [u8], scales: &mut [u16]| unsafe {
            check(tq_quantize(q, x.as_ptr(), n, codes.as_mut_ptr(), scales.as_mut_ptr()), "tq_quantize");
        };
        let cpu = std::cell::RefCell::new(Vec::new());
        let time = |f: &mut dyn FnMut()| -> Vec<f64> {
            f();
            cpu.borrow_mut().clear();
            (0..reps)
                .map(|_| {
                    let c0 = process_cpu_s();
                    let t0 = Instant::now();
                    f();
                    let wall = t0.elapsed().as_secs_f64();
                    cpu.borrow_mut().push(process_cpu_s() - c0);
                    wall
                })
                .collect()
        };
        let tq = time(&mut || quantize(&mut codes, &mut scales));
        let quant_cpu = median(cpu.borrow().clone());
        let td = if args.iter().any(|a| a == "--quantize-only") {
            vec![f64::NAN]
        } else {
            time(&mut || unsafe {
                check(tq_dequantize(q, codes.as_ptr(), scales.as_ptr(), n, back.as_mut_ptr()), "tq_dequantize");
            })
        };
        unsafe { tq_quantizer_free(q) };
        let mq = median(tq.clone());
        let dequant = if td[0].is_nan() {
            "\"dequant_median_s\": null, \"dequant_vec_per_s\": null, \"dequant_min_s\": null, \"dequant_cpu_median_s\": null".to_string()
        } else {
            let md = median(td.clone());
            format!(
                "\"dequant_median_s\": {md:.6}, \"dequant_vec_per_s\": {:.0}, \"dequant_min_s\": {:.6}, \
                 \"dequant_cpu_median_s\": {:.6}",
                n as f64 / md,
                td.iter().cloned().fold(f64::INFINITY, f64::min),
                median(cpu.borrow().clone())
            )
        };
        println!(
            "{{\"impl\": \"libturboquant\", \"kind\": \"{kind_name}\", \"rotation\": \"{rotation_name}\", \
             \"dim\": {dim}, \"bits\": {bits}, \"threads\": {t}, \"n\": {n}, \"reps\": {reps}, \
             \"quant_median_s\": {mq:.6}, \"quant_vec_per_s\": {:.0}, \"quant_min_s\": {:.6}, \"quant_cpu_median_s\": {quant_cpu:.6}, {dequant}, \
             \"bytes_per_vector_stored\": {}}}",
            n as f64 / mq,
            tq.iter().cloned().fold(f64::INFINITY, f64::min),
            code_bytes + 2 * scale_count,
        );
    }
}
