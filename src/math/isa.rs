//! Which implementation the hot loops of a quantizer use.
//!
//! `Portable` is plain Rust (multiversioned, so the compiler vectorises it for AVX2/AVX-512 where the
//! CPU has them, and it runs anywhere). `Avx512` is the hand-written AVX-512 code in `avx512`, chosen
//! at run time when the CPU has AVX-512F/BW/VL. Both produce bit-identical codes, scales and
//! reconstructions: they perform the same rounded f32/f64 operations in the same order (the row
//! format depends on it; see `rotation` and `scale`), which a test checks.

/// An instruction-set choice for the encode/decode loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    Portable,
    Avx512,
}

impl Isa {
    /// The fastest implementation this CPU runs.
    pub fn detect() -> Self {
        if Self::avx512_available() { Isa::Avx512 } else { Isa::Portable }
    }

    /// Whether the CPU has the AVX-512 subsets `avx512` uses (F, BW, VL).
    pub fn avx512_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}
