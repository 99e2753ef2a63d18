//! The CPU backend: row encoding and attention over compressed rows in host memory.

pub mod attend;
pub mod encode;
mod simd;
