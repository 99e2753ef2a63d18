//! Backends: where the codec's loops run. `cpu` is pure Rust over host memory.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
