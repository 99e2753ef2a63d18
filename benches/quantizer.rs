//! Quantize / dequantize throughput through the C API (`tq_quantize`, `tq_dequantize`, so the
//! quantizer's `n_threads` setting is what runs): d = 128, 4 bits, HADAMARD and DENSE, 1 and 2 threads,
//! 65,536 Gaussian vectors per call. `make bench`; the side-by-side comparison with the seed package
//! is `bench/quantizer/seed_vs_ours.sh`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use turboquant::ffi::quantizer::{
    tq_dequantize, tq_quantize, tq_quantizer, tq_quantizer_code_bytes, tq_quantizer_default_params, tq_quantizer_free,
    tq_quantizer_new,
};
use turboquant::ffi::{tq_rotation, tq_status};

const DIM: usize = 128;
const N: usize = 65_536;

#[path = "../tests/common/rng.rs"]
mod rng;

/// Standard normal input data (SplitMix64 + Box–Muller).
fn gaussians(n: usize) -> Vec<f32> {
    rng::Rng::from_state(0x1234_5678).normals(n)
}

struct Handle(*mut tq_quantizer);

impl Handle {
    fn new(rotation: tq_rotation, threads: u32) -> Self {
        let mut params = tq_quantizer_default_params();
        params.dim = DIM as u32;
        params.bits = 4;
        params.rotation = rotation as u32;
        params.n_threads = threads;
        let mut q = std::ptr::null_mut();
        assert_eq!(unsafe { tq_quantizer_new(&params, &mut q) }, tq_status::TQ_STATUS_OK);
        Self(q)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { tq_quantizer_free(self.0) };
    }
}

fn bench(c: &mut Criterion) {
    let x = gaussians(N * DIM);
    let mut back = vec![0.0f32; N * DIM];
    for rotation in [tq_rotation::TQ_ROTATION_HADAMARD, tq_rotation::TQ_ROTATION_DENSE] {
        let name = match rotation {
            tq_rotation::TQ_ROTATION_DENSE => "dense",
            _ => "hadamard",
        };
        let mut group = c.benchmark_group(format!("d128_b4_{name}"));
        group.throughput(Throughput::Elements(N as u64));
        group.sample_size(15).warm_up_time(std::time::Duration::from_secs(1));
        group.measurement_time(std::time::Duration::from_secs(3));
        for threads in [1u32, 2] {
            let q = Handle::new(rotation, threads);
            let mut code_bytes = 0usize;
            assert_eq!(unsafe { tq_quantizer_code_bytes(q.0, &mut code_bytes) }, tq_status::TQ_STATUS_OK);
            let mut codes = vec![0u8; N * code_bytes];
            let mut scales = vec![0u16; N];
            group.bench_function(BenchmarkId::new("quantize", format!("{threads}t")), |b| {
                b.iter(|| unsafe { tq_quantize(q.0, x.as_ptr(), N, codes.as_mut_ptr(), scales.as_mut_ptr()) })
            });
            group.bench_function(BenchmarkId::new("dequantize", format!("{threads}t")), |b| {
                b.iter(|| unsafe { tq_dequantize(q.0, codes.as_ptr(), scales.as_ptr(), N, back.as_mut_ptr()) })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
