//! libturboquant: TurboQuant (arXiv 2504.19874) compression of LLM KV caches, with attention computed
//! over the compressed cache, behind a C ABI (`include/turboquant.h`) and a safe Rust API.
//!
//! Layers (dependencies point downward):
//!
//! - `ffi` — the C shell, the only `extern "C"` code: decodes pointers into raw request arguments,
//!   runs the panic boundary, maps the crate's [`error::Error`] to `tq_status` in one place
//!   (`ffi::status`). It never branches on the backend.
//! - `cache` — the owned cache (sequences, residual window, sinks, save/load) over a codec; its safe
//!   handle is `cache::handle::Cache`.
//! - `codec` — the engine: `codec::Codec` validates every append/attend once into a backend-neutral
//!   request (`codec::request`), owns the centering means, and hands the request to its backend.
//!   Safe Rust API: `Codec::append`, `Codec::attend` over host slices.
//! - `backend` — one interface (`backend::Backend`: append, attend incl. batched attend, and the
//!   capability query `supports`), one type per backend (`CpuBackend`: threads; `CudaBackend`:
//!   kernels on the caller's stream; a no-values stub without the `cuda` feature) and the enum over
//!   them (`AnyBackend`), whose `require` answers every "not on this backend" question.
//! - `math` — pure numerics (rotations, codebooks, quantizers, packing).
//!
//! `unsafe` is confined to named helpers with `// SAFETY:` comments (pointer decoding in
//! `ffi::error`, request validation in `codec::request`, the kernels of `backend`).
#![deny(clippy::undocumented_unsafe_blocks)]

/// cbindgen:ignore
pub mod backend;
/// cbindgen:ignore
pub mod cache;
/// cbindgen:ignore
pub mod codec;
/// cbindgen:ignore
pub mod error;
pub mod ffi;
/// cbindgen:ignore
pub mod parallel;
/// cbindgen:ignore
pub mod math;
