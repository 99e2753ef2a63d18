//! Pure numerics of TurboQuant: codebooks, rotations, packing, scales and the vector quantizers.
//! No I/O, no threads, no FFI; everything above builds on these.

#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod codebook;
pub mod isa;
pub mod packing;
pub mod quantizer;
pub mod rng;
pub mod rotation;
pub mod scale;
