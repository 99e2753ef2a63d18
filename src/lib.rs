//! libturboquant: TurboQuant (arXiv 2504.19874) compression of LLM KV caches, with attention computed
//! over the compressed cache, behind a C ABI (`include/turboquant.h`).
//!
//! Layers (dependencies point downward): `ffi` (the only `extern "C"` code) → `math` (pure numerics).

pub mod backend;
pub mod cache;
pub mod codec;
pub mod ffi;
pub mod parallel;
/// cbindgen:ignore
pub mod math;
