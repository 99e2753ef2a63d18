//! Helpers of the GPU tests: device detection (with a loud skip), device buffers, f16 data.
#![allow(dead_code)]

use std::ffi::c_void;

use cudarc::driver::{result, sys};
use turboquant::backend::cuda;

/// True when a CUDA device and NVRTC are usable. Otherwise prints a loud SKIPPED line (stdout and
/// stderr) naming the test: a skipped GPU test is NOT a pass. Where a GPU is required
/// (`TQ_REQUIRE_GPU=1`, set on the GPU machine by bench/gpu/run_on_gpu.sh), a skip is a failure.
pub fn gpu_or_skip(test: &str) -> bool {
    let reason = if !cuda::driver_available() {
        Some("no CUDA driver (libcuda.so)")
    } else if !cuda::compile::nvrtc_available() {
        Some("no NVRTC (libnvrtc.so)")
    } else if result::init().is_err() || result::device::get_count().unwrap_or(0) == 0 {
        Some("no CUDA device")
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) => {
            // Written to the process's stderr directly: the test harness captures print!/eprint!, and
            // this line must show even when the (empty) test is reported "ok".
            use std::io::Write;
            let line = format!("\n*** SKIPPED: {test}: {r} — this GPU test did NOT run ***\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            assert!(!gpu_required(), "{test}: {r}, but TQ_REQUIRE_GPU=1: a GPU test must run here");
            false
        }
    }
}

/// Whether the environment requires the GPU tests to run (`TQ_REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    std::env::var("TQ_REQUIRE_GPU").as_deref() == Ok("1")
}

/// Whether to run the reduced set (compute-sanitizer runs).
pub fn quick() -> bool {
    std::env::var("TQ_GPU_QUICK").as_deref() == Ok("1")
}

/// A device allocation (the test's own; freed on drop). The CUDA context must be current.
pub struct Dev {
    pub ptr: u64,
    pub bytes: usize,
}

impl Dev {
    pub fn zeroed(bytes: usize) -> Self {
        let ptr = unsafe { result::malloc_sync(bytes.max(4)) }.expect("cuMemAlloc");
        unsafe { result::memset_d8_sync(ptr, 0, bytes.max(4)) }.expect("cuMemsetD8");
        Dev { ptr, bytes }
    }
    /// Filled with a byte pattern (poison) so that unwritten output shows.
    pub fn filled(bytes: usize, byte: u8) -> Self {
        let d = Self::zeroed(bytes);
        unsafe { result::memset_d8_sync(d.ptr, byte, bytes.max(4)) }.expect("cuMemsetD8");
        d
    }
    pub fn from<T: Copy>(data: &[T]) -> Self {
        let d = Self::zeroed(std::mem::size_of_val(data));
        if !data.is_empty() {
            unsafe { result::memcpy_htod_sync(d.ptr, data) }.expect("cuMemcpyHtoD");
        }
        d
    }
    pub fn write<T: Copy>(&self, data: &[T]) {
        assert!(std::mem::size_of_val(data) <= self.bytes);
        unsafe { result::memcpy_htod_sync(self.ptr, data) }.expect("cuMemcpyHtoD");
    }
    pub fn read<T: Copy + Default>(&self, n: usize) -> Vec<T> {
        let mut v = vec![T::default(); n];
        assert!(std::mem::size_of_val(&v[..]) <= self.bytes);
        sync();
        unsafe { result::memcpy_dtoh_sync(&mut v, self.ptr) }.expect("cuMemcpyDtoH");
        v
    }
    pub fn void(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Wait for all work and fail on an asynchronous kernel error.
pub fn sync() {
    result::ctx::synchronize().expect("kernel failed (cuCtxSynchronize)");
}

pub fn new_stream() -> sys::CUstream {
    result::stream::create(result::stream::StreamKind::NonBlocking).expect("cuStreamCreate")
}

pub fn f16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect()
}

pub fn from_f16_bits(x: &[u16]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_bits(v).to_f32()).collect()
}

#[path = "../common/mod.rs"]
mod common;
pub use common::{Ctx, Rng, context, last_error, row_bytes};

/// ‖a − b‖ / ‖b‖ over the whole tensor, and the worst (token, head) row.
pub fn rel_errors(a: &[f32], b: &[f32], d: usize) -> (f64, f64) {
    let (mut num, mut den, mut worst) = (0.0f64, 0.0f64, 0.0f64);
    for (ra, rb) in a.chunks(d).zip(b.chunks(d)) {
        let n: f64 = ra.iter().zip(rb).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
        let m: f64 = rb.iter().map(|y| (*y as f64).powi(2)).sum();
        num += n;
        den += m;
        let e = if m == 0.0 { n.sqrt() } else { (n / m).sqrt() };
        if !e.is_finite() {
            return (f64::INFINITY, f64::INFINITY);
        }
        worst = worst.max(e);
    }
    let total = if den == 0.0 { num.sqrt() } else { (num / den).sqrt() };
    (if total.is_finite() { total } else { f64::INFINITY }, worst)
}
